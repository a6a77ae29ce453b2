//! Publishing events that are stored before `publish` returns.
//!
//! [`Publisher::publish`] returns only after JetStream acknowledged the
//! event (its stream sequence, and whether it was a duplicate). For
//! throughput, [`BatchPublisher`] keeps a bounded window of acknowledgements
//! in flight and reports every one that failed. Publishing to a subject that
//! no stream captures is an error, never a silent drop.

use std::collections::VecDeque;

use async_nats::jetstream;
use serde::Serialize;

use std::sync::Arc;

use super::EventError;
pub use super::ack::Published;
use super::ack::{confirm, producer_span, publish_error, settled};
use super::envelope;
use super::event::Event;
use super::group_commit::{GroupCommit, GroupCommitConfig};
use super::partition;
use crate::batch::{self, BatchError, BatchMessage};
pub use crate::batch::{AtomicBatch, MAX_ATOMIC_BATCH};
use crate::telemetry::Hop;

/// Publishes events on behalf of one source (the service).
///
/// Concurrent [`publish`](Publisher::publish) calls to one subject — from
/// the clones handed to many handlers — are stored as atomic batches, one
/// disk sync each (see [`GroupCommitConfig`]); each call still gets its own
/// acknowledgement or error.
#[derive(Debug, Clone)]
pub struct Publisher {
    js: jetstream::Context,
    source: String,
    group: Arc<GroupCommit>,
}

impl Publisher {
    /// A publisher whose events carry `ce-source: source`, grouping
    /// concurrent publishes ([`GroupCommitConfig::default`]).
    pub fn new(js: jetstream::Context, source: impl Into<String>) -> Self {
        Publisher::with_group_commit(js, source, GroupCommitConfig::default())
    }

    /// As [`Publisher::new`], grouping publishes as `config` says.
    pub fn with_group_commit(
        js: jetstream::Context,
        source: impl Into<String>,
        config: GroupCommitConfig,
    ) -> Self {
        Publisher {
            group: Arc::new(GroupCommit::new(js.clone(), config)),
            js,
            source: source.into(),
        }
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// `event` as it goes on the wire to `subject`: the subject with its
    /// key's shard (see [`partition`](super::partition)), headers, body,
    /// and the producer span (named by the declared subject).
    fn message<T: Serialize>(
        &self,
        subject: &str,
        event: &Event<T>,
    ) -> Result<Outgoing, EventError> {
        let (mut headers, payload) = event.encode(&self.source, subject)?;
        envelope::set_message_id(&mut headers, &event.id);
        let hop = producer_span("publish", subject, &event.id, &mut headers, event.trace);
        Ok(Outgoing {
            subject: partition::keyed_subject(subject, event.key()),
            headers,
            payload,
            hop,
        })
    }

    /// The source events are published for (`ce-source`).
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    async fn send(
        &self,
        subject: &str,
        headers: async_nats::HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<jetstream::context::PublishAckFuture, EventError> {
        self.js
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(|e| publish_error(subject, e))
    }

    /// Publishes and waits for the stream's acknowledgement (grouped with
    /// the publishes to `subject` in flight at the same moment).
    ///
    /// # Errors
    ///
    /// [`EventError::NoStream`] when no stream captures `subject`,
    /// [`EventError::AckTimeout`] when the ack does not come, and others.
    pub async fn publish<T: Serialize>(
        &self,
        subject: &str,
        event: &Event<T>,
    ) -> Result<Published, EventError> {
        let out = self.message(subject, event)?;
        // One lane per declared subject: the shards of one subject batch
        // together.
        let published = self
            .group
            .publish_in(subject, &out.subject, &event.id, out.headers, out.payload)
            .await;
        settled(out.hop.as_ref(), &published);
        published
    }

    /// Re-publishes a stored message as it was (headers and payload), with
    /// its own de-duplication id: used by dead-letter replay.
    pub(crate) async fn republish(
        &self,
        subject: &str,
        mut headers: async_nats::HeaderMap,
        payload: bytes::Bytes,
        message_id: &str,
    ) -> Result<Published, EventError> {
        envelope::set_message_id(&mut headers, message_id);
        let parent = crate::codec::read_trace(Some(&headers));
        let hop = producer_span("replay", subject, message_id, &mut headers, parent);
        let published = match self.send(subject, headers, payload).await {
            Ok(ack) => confirm(subject, message_id, ack).await,
            Err(error) => Err(error),
        };
        settled(hop.as_ref(), &published);
        published
    }

    /// Stores `events` atomically (ADR-50 batch publish, nats-server 2.12+,
    /// a stream declared with [`StreamSpec::atomic_batches`](super::StreamSpec::atomic_batches)):
    /// each chunk of up to 1000 events is stored entirely or not at all, and
    /// the server syncs it to disk once, which is how durable publishing
    /// gets fast. Returns one acknowledgement per chunk.
    ///
    /// # Errors
    ///
    /// [`EventError::NoStream`], or the server refusing the batch (atomic
    /// publishing not allowed on the stream, a chunk too large); events of a
    /// refused chunk are not stored.
    pub async fn publish_atomic<T: Serialize>(
        &self,
        subject: &str,
        events: &[Event<T>],
    ) -> Result<Vec<AtomicBatch>, EventError> {
        let mut acks = Vec::new();
        for chunk in events.chunks(MAX_ATOMIC_BATCH) {
            acks.push(self.atomic_chunk(subject, chunk).await?);
        }
        Ok(acks)
    }

    async fn atomic_chunk<T: Serialize>(
        &self,
        subject: &str,
        events: &[Event<T>],
    ) -> Result<AtomicBatch, EventError> {
        let mut messages = Vec::with_capacity(events.len());
        for event in events {
            let out = self.message(subject, event)?;
            messages.push(BatchMessage::new(out.subject, out.headers, out.payload));
        }
        batch::commit(&self.js.client(), messages)
            .await
            .map_err(|e| match e {
                BatchError::NoStream(subject) => EventError::NoStream { subject },
                other => EventError::JetStream {
                    action: format!("atomic publish to {subject}"),
                    message: other.to_string(),
                    source: Some(Box::new(other)),
                },
            })
    }

    /// A batch publisher with up to `window` acknowledgements in flight.
    pub fn batch(&self, window: usize) -> BatchPublisher {
        BatchPublisher {
            publisher: self.clone(),
            window: window.max(1),
            in_flight: VecDeque::new(),
            done: Vec::new(),
        }
    }
}

/// An event ready to send.
struct Outgoing {
    /// The subject with the shard token.
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
    hop: Option<Hop>,
}

/// Publishes many events with a bounded window of outstanding acks.
///
/// ```no_run
/// # async fn demo(publisher: switchboard::events::Publisher) -> Result<(), switchboard::events::EventError> {
/// use switchboard::events::Event;
/// let mut batch = publisher.batch(256);
/// for i in 0..10_000 {
///     batch.publish("events.metrics.sampled", &Event::new(i)).await?;
/// }
/// for failure in batch.finish().await.into_iter().filter_map(Result::err) {
///     eprintln!("not stored: {failure}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BatchPublisher {
    publisher: Publisher,
    window: usize,
    in_flight: VecDeque<(String, String, jetstream::context::PublishAckFuture)>,
    done: Vec<Result<Published, EventError>>,
}

impl BatchPublisher {
    /// Sends an event; waits for the oldest ack first when the window is full.
    ///
    /// # Errors
    ///
    /// Only when the event cannot even be sent (payload, connection); ack
    /// failures are reported by [`BatchPublisher::finish`].
    pub async fn publish<T: Serialize>(
        &mut self,
        subject: &str,
        event: &Event<T>,
    ) -> Result<(), EventError> {
        while self.in_flight.len() >= self.window {
            self.settle_oldest().await;
        }
        let out = self.publisher.message(subject, event)?;
        let ack = self
            .publisher
            .send(&out.subject, out.headers, out.payload)
            .await?;
        self.in_flight
            .push_back((out.subject, event.id.clone(), ack));
        Ok(())
    }

    async fn settle_oldest(&mut self) {
        if let Some((subject, id, ack)) = self.in_flight.pop_front() {
            self.done.push(confirm(&subject, &id, ack).await);
        }
    }

    /// Waits for every outstanding ack; one result per event, in order.
    pub async fn finish(mut self) -> Vec<Result<Published, EventError>> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await;
        }
        self.done
    }
}

/// The current time as RFC 3339 UTC (CloudEvents `ce-time`, `created_at`).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
