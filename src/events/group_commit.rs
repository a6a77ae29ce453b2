//! Group commit: concurrent publishes to one subject stored as one atomic
//! batch, so one disk sync covers many events.
//!
//! With `sync_interval: always` (nats.conf's default: an ack means the
//! event is on disk) the server syncs once per stored message, and a
//! publish one by one costs a sync each — the disk sets the rate, not the
//! network. An ADR-50 atomic batch is synced once. Callers should not have
//! to collect their events into batches (a handler publishes one event; a
//! hundred handlers run at once), so the kit does it for them, as databases
//! do with their log: while one batch is being committed, the publishes
//! that arrive queue up, and the moment it is acknowledged they all go as
//! the next batch. A lone publish goes at once, alone, as a plain publish —
//! nobody waits for company that is not coming — and under load batches
//! grow by themselves, up to [`GroupCommitConfig::max_batch`]: a batch
//! waits (at most [`GroupCommitConfig::linger`]) only for as many events as
//! the previous one held, whose callers are publishing their next.
//!
//! Each caller still gets its own acknowledgement (its own stream
//! sequence) and its own error: a batch the server refuses is split into
//! plain publishes, so a bad event fails alone and its neighbours are
//! stored. A batch whose answer was lost is sent again the same way; every
//! event carries a `Nats-Msg-Id`, so one that was stored the first time is
//! acknowledged as a duplicate, never stored twice.
//!
//! One lane (a queue and a task) per declared subject: an atomic batch
//! must fall into one stream, and one subject with any shard token
//! (`events.parcels.shipped.*`, see `partition`) always does. Events that must be stored
//! in the order they were handed over whatever their subjects (the outbox
//! relay's, in commit order) share a lane of their own: its batches commit
//! one after the other, each in order. A lane whose stream does
//! not take atomic batches (nats-server before 2.12, or a stream declared
//! without [`atomic_batches`](super::StreamSpec::atomic_batches)) learns it
//! from the first refusal and publishes plainly from then on. An idle lane
//! ends, so subjects with ids in them do not accumulate tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::EventError;
use super::ack::{Published, confirm, publish_error};
use crate::batch::{self, BatchError, BatchMessage, MAX_ATOMIC_BATCH};

/// JetStream's error code for a stream that does not allow atomic batches.
const ATOMIC_DISABLED: u64 = 10174;

/// How long a lane with nothing to publish stays before its task ends.
const IDLE: Duration = Duration::from_secs(5);

/// How publishes are grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Whether concurrent publishes are grouped at all (off: each is a
    /// plain publish, as before the kit grouped them).
    pub enabled: bool,
    /// Most events in one batch (at most [`MAX_ATOMIC_BATCH`]).
    pub max_batch: usize,
    /// Longest a batch waits for more events after its first. It waits
    /// only while fewer have arrived than the previous batch held — the
    /// callers of that batch, woken by its ack, are on their way with their
    /// next events — so a lone publisher never waits, and under load the
    /// batches stay whole instead of splitting into whoever was quickest.
    pub linger: Duration,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            enabled: true,
            max_batch: 256,
            linger: Duration::from_millis(1),
        }
    }
}

impl GroupCommitConfig {
    /// Grouping off: every publish is a plain one.
    pub fn disabled() -> Self {
        GroupCommitConfig {
            enabled: false,
            ..GroupCommitConfig::default()
        }
    }

    /// Sets [`GroupCommitConfig::max_batch`] (clamped to 1..=1000).
    pub fn max_batch(mut self, events: usize) -> Self {
        self.max_batch = events.clamp(1, MAX_ATOMIC_BATCH);
        self
    }

    /// Sets [`GroupCommitConfig::linger`] (at most 10 ms; zero: a batch
    /// takes only what is queued when it goes).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger.min(Duration::from_millis(10));
        self
    }
}

/// One event waiting in a lane, and where its verdict goes.
struct Queued {
    subject: String,
    id: String,
    headers: HeaderMap,
    payload: Bytes,
    verdict: oneshot::Sender<Result<Published, EventError>>,
}

type Lanes = Mutex<HashMap<String, mpsc::UnboundedSender<Queued>>>;

/// The lanes of one publisher (shared by its clones).
#[derive(Debug)]
pub(crate) struct GroupCommit {
    js: jetstream::Context,
    config: GroupCommitConfig,
    lanes: Arc<Lanes>,
}

impl GroupCommit {
    pub(crate) fn new(js: jetstream::Context, config: GroupCommitConfig) -> Self {
        GroupCommit {
            js,
            config,
            lanes: Arc::default(),
        }
    }

    /// Stores one event (its headers carry `Nats-Msg-Id` = `id`) at
    /// `subject`, grouped with whatever else is being published in the lane
    /// named `lane` right now: events of one lane are stored in the order
    /// they were handed over, whatever their subjects.
    pub(crate) async fn publish_in(
        &self,
        lane: &str,
        subject: &str,
        id: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Published, EventError> {
        if !self.config.enabled {
            let ack = self
                .js
                .publish_with_headers(subject.to_owned(), headers, payload)
                .await
                .map_err(|e| publish_error(subject, e))?;
            return confirm(subject, id, ack).await;
        }
        let (verdict, answer) = oneshot::channel();
        let queued = Queued {
            subject: subject.to_owned(),
            id: id.to_owned(),
            headers,
            payload,
            verdict,
        };
        self.enqueue(lane, queued);
        answer.await.unwrap_or_else(|_| {
            Err(EventError::JetStream {
                action: format!("publish to {subject}"),
                message: "the publisher stopped before the event was acknowledged".to_owned(),
                source: None,
            })
        })
    }

    fn enqueue(&self, key: &str, queued: Queued) {
        // Sent under the lock: a lane ending for idleness checks its queue
        // under the same lock, so nothing is sent to a lane that has gone.
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let queued = match lanes.get(key) {
            Some(lane) => match lane.send(queued) {
                Ok(()) => return,
                Err(mpsc::error::SendError(queued)) => queued,
            },
            None => queued,
        };
        let (lane, queue) = mpsc::unbounded_channel();
        // A new channel's receiver is alive: the send cannot fail.
        let _ = lane.send(queued);
        lanes.insert(key.to_owned(), lane);
        tokio::spawn(
            Lane {
                js: self.js.clone(),
                key: key.to_owned(),
                config: self.config.clone(),
                atomic: true,
                lanes: Arc::downgrade(&self.lanes),
            }
            .run(queue),
        );
    }
}

/// One lane's queue, committed batch after batch.
struct Lane {
    js: jetstream::Context,
    /// The subject, or the name of a lane of several subjects.
    key: String,
    config: GroupCommitConfig,
    /// Whether the stream takes atomic batches (until it refuses one).
    atomic: bool,
    lanes: Weak<Lanes>,
}

impl Lane {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Queued>) {
        let mut previous = 1;
        loop {
            let first = match tokio::time::timeout(IDLE, queue.recv()).await {
                Ok(Some(first)) => first,
                // Every sender gone: the publisher was dropped.
                Ok(None) => return,
                Err(_) if self.retire(&queue) => return,
                Err(_) => continue,
            };
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            // The last batch's callers are likely publishing again: wait a
            // little for as many, never longer than the linger.
            let expected = previous.min(self.config.max_batch);
            if batch.len() < expected && !self.config.linger.is_zero() {
                let until = tokio::time::Instant::now() + self.config.linger;
                while batch.len() < expected {
                    match tokio::time::timeout_at(until, queue.recv()).await {
                        Ok(Some(next)) => batch.push(next),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            previous = batch.len();
            self.commit(batch).await;
        }
    }

    /// Ends the lane if nothing is queued (under the lanes' lock, which
    /// senders hold while they send).
    fn retire(&self, queue: &mpsc::UnboundedReceiver<Queued>) -> bool {
        let Some(lanes) = self.lanes.upgrade() else {
            return true;
        };
        let mut lanes = lanes.lock().unwrap_or_else(|e| e.into_inner());
        if !queue.is_empty() {
            return false;
        }
        lanes.remove(&self.key);
        true
    }

    async fn commit(&mut self, batch: Vec<Queued>) {
        if batch.len() == 1 || !self.atomic {
            return self.one_by_one(batch).await;
        }
        let messages = batch
            .iter()
            .map(|q| BatchMessage::new(q.subject.clone(), q.headers.clone(), q.payload.clone()))
            .collect();
        match batch::commit(&self.js.client(), messages).await {
            Ok(ack) => {
                // The server's figure: never trusted to be large enough.
                let first = (ack.last_sequence + 1).saturating_sub(batch.len() as u64);
                for (index, queued) in batch.into_iter().enumerate() {
                    let _ = queued.verdict.send(Ok(Published {
                        id: queued.id,
                        stream: ack.stream.clone(),
                        sequence: first.saturating_add(index as u64),
                        duplicate: false,
                    }));
                }
            }
            Err(error) => {
                if matches!(error, BatchError::Refused { code, .. } if code == ATOMIC_DISABLED) {
                    tracing::info!(lane = %self.key, "the stream takes no atomic batches; publishing one by one");
                    self.atomic = false;
                } else {
                    // Refused (one event may be bad, or lack a stream) or
                    // unanswered (it may be stored: the message ids make a
                    // repeat a duplicate): each event on its own.
                    tracing::debug!(lane = %self.key, %error, events = batch.len(), "batch not committed; publishing its events one by one");
                }
                self.one_by_one(batch).await;
            }
        }
    }

    /// Plain publishes, sent in order and all in flight together, each
    /// with its own verdict.
    async fn one_by_one(&self, batch: Vec<Queued>) {
        let mut sent = Vec::with_capacity(batch.len());
        for queued in batch {
            let ack = self
                .js
                .publish_with_headers(queued.subject.clone(), queued.headers, queued.payload)
                .await
                .map_err(|e| publish_error(&queued.subject, e));
            sent.push((queued.subject, queued.id, queued.verdict, ack));
        }
        let settled = sent
            .into_iter()
            .map(|(subject, id, verdict, ack)| async move {
                let verdict_of = match ack {
                    Ok(ack) => confirm(&subject, &id, ack).await,
                    Err(error) => Err(error),
                };
                let _ = verdict.send(verdict_of);
            });
        futures::future::join_all(settled).await;
    }
}
