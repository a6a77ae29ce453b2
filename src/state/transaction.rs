//! Several keys of one bucket and the events their change implies,
//! committed together or not at all.
//!
//! A change that touches two keys with two writes can be cut in half by a
//! crash (stock taken, reservation never written), and a change followed
//! by a publish can lose its event (state written, process killed before
//! the publish). A [`Transaction`] is one write: each key carries its
//! expected revision (compare-and-set), and the events ride on one write's
//! message (`Switchboard-Outbox`: the first key created, else the first
//! key written), with the events any replaced value still carried. One key is one plain compare-and-set publish; more
//! keys are one ADR-50 atomic batch on the bucket's stream (a multi-key
//! compare-and-set checked by the server). The outbox relay publishes the
//! events afterwards (see [`crate::outbox`]). Transactions of a
//! bucket that wait together share one batch (group commit, see
//! `committer.rs`), so a busy bucket is not capped by one disk sync per
//! transaction.
//!
//! ```no_run
//! # async fn demo(stock: switchboard::state::StateStore<u64>, events: switchboard::events::Publisher)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::events::Event;
//! let current = stock.get("sku-1").await?.ok_or("no such sku")?;
//! let mut tx = stock.transaction();
//! tx.update(&stock, "sku-1", &(current.value - 1), &current)?
//!     .publish(&events, "events.stock.taken", &Event::new(1).id("o-1-taken"))?;
//! tx.commit().await?; // a conflict is StateError::Conflict: re-read and decide again
//! # Ok(()) }
//! ```

use async_nats::jetstream::{self, context::PublishErrorKind};
use serde::Serialize;

use super::committer::Committer;
use super::{StateError, StateStore, Versioned, encode, store_err};
use crate::batch::{BatchError, BatchMessage, MAX_ATOMIC_BATCH};
use crate::events::envelope;
use crate::events::{Event, Publisher};
use crate::outbox::{PendingEvent, encode_pending};

/// What one try of [`commit_retrying`] decided.
#[derive(Debug)]
// Lives for one try, on the stack of one call: boxing would cost an
// allocation per try for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Attempt<R> {
    /// Commit this transaction; `R` is the answer if it commits.
    Commit(Transaction, R),
    /// Nothing to write (already done, say): the answer as it is.
    Done(R),
}

/// How often [`commit_retrying`] reads and decides again.
const ATTEMPTS: usize = 16;

/// Most bytes of unpublished events one write may carry: far under the
/// server's 1 MB payload limit, and a few hundred of the reference
/// system's events (see [`StateError::OutboxBehind`]).
pub const MAX_CARRIED_BYTES: usize = 64 * 1024;

/// Read, decide, commit — again from the reading when the commit meets a
/// concurrent write (another instance's, or an identical request's). Each
/// try of `attempt` reads what it needs and returns the transaction to
/// commit with its answer, or an answer without writing.
///
/// # Errors
///
/// The domain error of `attempt`, a 409 naming `what` after repeated
/// conflicts ([`ServiceError::contended`](crate::ServiceError::contended): transient), or the store's failure as a [`ServiceError`](crate::ServiceError).
pub async fn commit_retrying<R, F, Fut>(
    what: &str,
    mut attempt: F,
) -> Result<R, crate::ServiceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Attempt<R>, crate::ServiceError>>,
{
    for _ in 0..ATTEMPTS {
        match attempt().await? {
            Attempt::Done(answer) => return Ok(answer),
            Attempt::Commit(tx, answer) => match tx.commit().await {
                Ok(()) => return Ok(answer),
                Err(StateError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            },
        }
    }
    Err(crate::ServiceError::contended(format!(
        "{what} keeps changing concurrently; try again"
    )))
}

/// Writes and events waiting to be committed together (see the module docs).
#[derive(Debug)]
#[must_use = "nothing is written until commit"]
pub struct Transaction {
    js: jetstream::Context,
    committer: Committer,
    bucket: String,
    writes: Vec<Write>,
    events: Vec<PendingEvent>,
}

#[derive(Debug)]
struct Write {
    key: String,
    subject: String,
    payload: bytes::Bytes,
    /// The revision replaced; 0: the key must not exist.
    expect: u64,
    /// Unpublished events of the value replaced.
    carried: Vec<PendingEvent>,
}

impl Transaction {
    pub(super) fn new(js: jetstream::Context, committer: Committer, bucket: &str) -> Self {
        Transaction {
            js,
            committer,
            bucket: bucket.to_owned(),
            writes: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Writes `value` under `key`, which must not exist yet.
    ///
    /// # Errors
    ///
    /// [`StateError::KeyTooLong`], [`StateError::OtherBucket`], or the value
    /// cannot be encoded.
    pub fn create<U: Serialize>(
        &mut self,
        store: &StateStore<U>,
        key: &str,
        value: &U,
    ) -> Result<&mut Self, StateError> {
        self.write(store, key, value, None)
    }

    /// Replaces `current` (as read) if the key is still at its revision.
    ///
    /// # Errors
    ///
    /// As [`Transaction::create`].
    pub fn update<U: Serialize>(
        &mut self,
        store: &StateStore<U>,
        key: &str,
        value: &U,
        current: &Versioned<U>,
    ) -> Result<&mut Self, StateError> {
        self.write(store, key, value, Some(current))
    }

    /// Writes `value` under `key`: created (`None`) or replacing `current`.
    ///
    /// # Errors
    ///
    /// As [`Transaction::create`].
    pub fn write<U: Serialize>(
        &mut self,
        store: &StateStore<U>,
        key: &str,
        value: &U,
        current: Option<&Versioned<U>>,
    ) -> Result<&mut Self, StateError> {
        if store.bucket != self.bucket {
            return Err(StateError::OtherBucket {
                expected: self.bucket.clone(),
                found: store.bucket.clone(),
            });
        }
        let full = store.key(key)?;
        self.writes.push(Write {
            subject: store.subject(&full),
            key: full,
            payload: encode(key, value)?,
            expect: current.map_or(0, |c| c.revision),
            carried: current.map(|c| c.pending.clone()).unwrap_or_default(),
        });
        Ok(self)
    }

    /// Publishes `event` on `subject` once the transaction is committed —
    /// also if this process dies right after the commit (the bucket's
    /// outbox relay publishes it, with `Nats-Msg-Id` = its `ce-id`).
    ///
    /// # Errors
    ///
    /// [`StateError::Event`] for an invalid event.
    pub fn publish<E: Serialize>(
        &mut self,
        publisher: &Publisher,
        subject: &str,
        event: &Event<E>,
    ) -> Result<&mut Self, StateError> {
        self.events
            .push(PendingEvent::of(publisher, subject, event)?);
        Ok(self)
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.events.is_empty()
    }

    /// Stores everything or nothing.
    ///
    /// # Errors
    ///
    /// [`StateError::Conflict`] when a key is no longer at its expected
    /// revision (or exists, for a create): nothing was written, re-read
    /// and decide again. [`StateError::Store`] when the server refused or
    /// did not answer: then whether it was stored is unknown, and a retry
    /// must re-read first (its expected revisions make a blind repeat fail
    /// rather than apply twice).
    pub async fn commit(self) -> Result<(), StateError> {
        let action = || format!("commit to {}", self.bucket);
        if self.writes.is_empty() {
            if self.events.is_empty() {
                return Ok(());
            }
            return Err(StateError::Store {
                action: action(),
                message: "events need a state write to ride on".to_owned(),
                source: "a transaction with events and no write".into(),
            });
        }
        if self.writes.len() > MAX_ATOMIC_BATCH {
            return Err(StateError::Store {
                action: action(),
                message: format!(
                    "{} writes; one transaction holds at most {MAX_ATOMIC_BATCH}",
                    self.writes.len()
                ),
                source: "transaction too large".into(),
            });
        }
        // The events ride on the first key created (a new record, not a hot
        // one that the next change overwrites at once), else the first write.
        let carrier = self.writes.iter().position(|w| w.expect == 0).unwrap_or(0);
        let mut events = Some(self.events);
        // The keys are named only in an error: no string is built on the
        // way to success.
        let mut keys = Vec::with_capacity(self.writes.len());
        let mut messages: Vec<BatchMessage> = Vec::with_capacity(self.writes.len());
        for (index, write) in self.writes.into_iter().enumerate() {
            let mut riding = write.carried;
            if index == carrier {
                riding.extend(events.take().unwrap_or_default());
            }
            let mut headers = async_nats::HeaderMap::new();
            if !riding.is_empty() {
                let encoded = encode_pending(&riding);
                // Events carried forward pile up on a key rewritten while
                // the relay cannot publish (it is down, or the stream is
                // full): refused here, with a clear 503, rather than as a
                // write the server cannot take once they pass its payload
                // limit.
                if encoded.len() > MAX_CARRIED_BYTES {
                    return Err(StateError::OutboxBehind {
                        key: write.key,
                        events: riding.len(),
                    });
                }
                headers.insert(envelope::OUTBOX, encoded.as_str());
            }
            keys.push(write.key);
            messages.push(
                BatchMessage::new(write.subject, headers, write.payload)
                    .expect_last_subject_sequence(write.expect),
            );
        }
        let bucket = self.bucket;
        let named = || keys.join(", ");
        let conflict = || StateError::Conflict {
            key: crate::limits::truncate(&named(), 200).into_owned(),
        };
        let failed = || format!("commit {} to {bucket}", named());
        if messages.len() == 1
            && let Some(only) = messages.pop()
        {
            // One key: a plain compare-and-set publish, no batch.
            let stored = self
                .js
                .publish_with_headers(only.subject, only.headers, only.payload)
                .await;
            let stored = match stored {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            return match stored {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(conflict()),
                Err(e) => match crate::storage::full_reason(&e) {
                    Some(reason) => Err(StateError::Full {
                        action: failed(),
                        reason,
                    }),
                    None => Err(store_err(failed())(e)),
                },
            };
        }
        match self.committer.commit(messages).await {
            Ok(()) => Ok(()),
            Err(BatchError::WrongLastSequence(_)) => Err(conflict()),
            Err(BatchError::Refused { code, description })
                if crate::storage::is_full_code(code) =>
            {
                Err(StateError::Full {
                    action: failed(),
                    reason: description,
                })
            }
            Err(e) => Err(store_err(failed())(e)),
        }
    }
}
