//! Several keys of one bucket and the events their change implies,
//! committed together or not at all.
//!
//! A change that touches two keys with two writes can be cut in half by a
//! crash (stock taken, reservation never written), and a change followed
//! by a publish can lose its event (state written, process killed before
//! the publish). A [`Transaction`] is one ADR-50 atomic batch on the
//! bucket's stream: each key carries its expected revision (a multi-key
//! compare-and-set, checked by the server inside the batch), and each
//! event is an outbox entry under `outbox.<ce-id>` in the same bucket. The
//! server stores all of it or none of it; the outbox relay publishes the
//! entries afterwards (see [`crate::events::Consumers::relay`]).
//! Transactions of a bucket that wait together share one batch (group
//! commit, see `committer.rs`), so a busy bucket is not capped by one disk
//! sync per transaction.
//!
//! ```no_run
//! # async fn demo(stock: switchboard::state::StateStore<u64>, events: switchboard::events::Publisher)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::events::Event;
//! let current = stock.get("sku-1").await?.ok_or("no such sku")?;
//! let mut tx = stock.transaction();
//! tx.update(&stock, "sku-1", &(current.value - 1), current.revision)?
//!     .publish(&events, "events.stock.taken", &Event::new(1).id("o-1-taken"))?;
//! tx.commit().await?; // a conflict is StateError::Conflict: re-read and decide again
//! # Ok(()) }
//! ```

use serde::Serialize;

use super::committer::Committer;
use super::{StateError, StateStore, checked_key, encode, store_err};
use crate::batch::{BatchError, BatchMessage, MAX_ATOMIC_BATCH};
use crate::events::{Event, Publisher};

/// The key prefix of outbox entries in a bucket.
pub(crate) const OUTBOX: &str = "outbox";

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

/// Read, decide, commit — again from the reading when the commit meets a
/// concurrent write (another instance's, or an identical request's). Each
/// try of `attempt` reads what it needs and returns the transaction to
/// commit with its answer, or an answer without writing.
///
/// # Errors
///
/// The domain error of `attempt`, a 409 naming `what` after repeated
/// conflicts, or the store's failure as a [`ServiceError`].
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
    Err(crate::ServiceError::conflict(format!(
        "{what} keeps changing concurrently; try again"
    )))
}

/// Writes and events waiting to be committed together (see the module docs).
#[derive(Debug)]
#[must_use = "nothing is written until commit"]
pub struct Transaction {
    committer: Committer,
    bucket: String,
    keys: Vec<String>,
    messages: Vec<BatchMessage>,
}

impl Transaction {
    pub(super) fn new(committer: Committer, bucket: &str) -> Self {
        Transaction {
            committer,
            bucket: bucket.to_owned(),
            keys: Vec::new(),
            messages: Vec::new(),
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
        self.write(store, key, value, 0)
    }

    /// Replaces the value of `key` if it is still at `revision`.
    ///
    /// # Errors
    ///
    /// As [`Transaction::create`].
    pub fn update<U: Serialize>(
        &mut self,
        store: &StateStore<U>,
        key: &str,
        value: &U,
        revision: u64,
    ) -> Result<&mut Self, StateError> {
        self.write(store, key, value, revision)
    }

    /// Writes `value` under `key`, created (`None`) or at a revision.
    ///
    /// # Errors
    ///
    /// As [`Transaction::create`].
    pub fn write<U: Serialize>(
        &mut self,
        store: &StateStore<U>,
        key: &str,
        value: &U,
        revision: impl Into<Option<u64>>,
    ) -> Result<&mut Self, StateError> {
        if store.bucket != self.bucket {
            return Err(StateError::OtherBucket {
                expected: self.bucket.clone(),
                found: store.bucket.clone(),
            });
        }
        let full = store.key(key)?;
        let message = BatchMessage::new(
            store.subject(&full),
            async_nats::HeaderMap::new(),
            encode(key, value)?,
        )
        .expect_last_subject_sequence(revision.into().unwrap_or(0));
        self.keys.push(full);
        self.messages.push(message);
        Ok(self)
    }

    /// Publishes `event` on `subject` once the transaction is committed —
    /// also if this process dies right after the commit (the outbox relay
    /// of the bucket publishes it, with `Nats-Msg-Id` = its `ce-id`).
    ///
    /// # Errors
    ///
    /// [`StateError::Event`] for an invalid event, or an id too long to be
    /// a key.
    pub fn publish<E: Serialize>(
        &mut self,
        publisher: &Publisher,
        subject: &str,
        event: &Event<E>,
    ) -> Result<&mut Self, StateError> {
        let (headers, payload) = publisher.outbox_entry(subject, event)?;
        let key = format!("{OUTBOX}.{}", checked_key(event.event_id())?);
        let prefix = format!("$KV.{}.", self.bucket);
        self.messages.push(BatchMessage::new(
            format!("{prefix}{key}"),
            headers,
            payload,
        ));
        Ok(self)
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
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
        if self.messages.is_empty() {
            return Ok(());
        }
        if self.messages.len() > MAX_ATOMIC_BATCH {
            return Err(StateError::Store {
                action: format!("commit to {}", self.bucket),
                message: format!(
                    "{} writes; one transaction holds at most {MAX_ATOMIC_BATCH}",
                    self.messages.len()
                ),
                source: "transaction too large".into(),
            });
        }
        let keys = self.keys.join(", ");
        let action = format!("commit {keys} to {}", self.bucket);
        match self.committer.commit(self.messages).await {
            Ok(()) => Ok(()),
            Err(BatchError::WrongLastSequence(_)) => Err(StateError::Conflict {
                key: crate::limits::truncate(&keys, 200).into_owned(),
            }),
            Err(e) => Err(store_err(action)(e)),
        }
    }
}
