//! Service state in JetStream KV buckets, with optimistic concurrency.
//!
//! Each service owns its buckets (no other database). Values are JSON;
//! every read returns the revision, and writes can require it, so two
//! requests that race on the same key (a stock level, an order status)
//! cannot both win: [`StateStore::modify`] re-reads and retries on conflict.
//!
//! A change that spans several keys of one bucket, or that implies events,
//! is one [`Transaction`]: every key with its expected revision, the events
//! riding on the write, committed all or nothing (one compare-and-set
//! publish, or an ADR-50 atomic batch for several keys); the outbox relay
//! ([`ServiceBuilder::relay`](crate::service::ServiceBuilder::relay)) then publishes the events. Records of different types share a bucket through
//! [`StateStore::view`] (stock levels and reservations, say), so that they
//! can change together.
//!
//! What grows with a user's activity (the messages they receive, say) is a
//! [`History`]: one key per entry, paged newest first, so no write grows
//! with it.
//!
//! Keys come from requests (an id, an e-mail address), and a key becomes
//! part of a subject, so every key is bounded: longer than
//! [`MAX_KEY_LEN`] bytes after encoding is [`StateError::KeyTooLong`] (a 400
//! for the caller), checked before anything is written — never a subject
//! the server would refuse by closing the connection.

use std::marker::PhantomData;
use std::sync::Arc;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, kv};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ServiceError;
pub use crate::limits::MAX_KEY_LEN;

mod committer;
mod deadlines;
mod floor;
mod history;
mod key_lock;
mod transaction;

use crate::outbox::{PendingEvent, decode_pending};
use committer::Committer;
pub use deadlines::{Deadline, deadline_after, parse_time, watch_deadlines};
use floor::RelayFloor;
pub use history::{Appended, History, Page};
pub use key_lock::KeyGuard;
use key_lock::KeyLocks;
pub use transaction::{Attempt, MAX_CARRIED_BYTES, Transaction, commit_retrying};

/// How often [`StateStore::modify`] retries a conflicting write.
const MODIFY_ATTEMPTS: usize = 16;

/// A value and the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its revision in the bucket.
    pub revision: u64,
    /// Events committed with this revision that the relay may not have
    /// published yet: a write replacing it carries them forward.
    pub(crate) pending: Vec<PendingEvent>,
}

/// Errors of the state store; match on the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// `create` found the key taken.
    #[error("{key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The key changed since it was read.
    #[error("{key} was changed concurrently")]
    Conflict {
        /// The key.
        key: String,
    },
    /// A stored value is not the expected type.
    #[error("{key} holds an unreadable value: {source}")]
    Decode {
        /// The key.
        key: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The key is longer than [`MAX_KEY_LEN`] bytes once encoded (or
    /// empty): nothing was read or written.
    #[error("key {preview:?} is too long: {length} bytes or more once encoded; the limit is {max}")]
    KeyTooLong {
        /// The key's first characters.
        preview: String,
        /// Its encoded length.
        length: usize,
        /// [`MAX_KEY_LEN`].
        max: usize,
    },
    /// A transaction mixes stores of different buckets (a programming
    /// error: one atomic batch writes one stream).
    #[error("a transaction on bucket {expected} cannot write to bucket {found}")]
    OtherBucket {
        /// The transaction's bucket.
        expected: String,
        /// The store's bucket.
        found: String,
    },
    /// An event of a transaction is not valid (its id, subject, payload).
    #[error(transparent)]
    Event(#[from] crate::events::EventError),
    /// The key's value carries more unpublished events than one write may
    /// ([`MAX_CARRIED_BYTES`]): the outbox relay has not published for a
    /// while (it is down, or the stream refuses them). Nothing was written;
    /// a 503 for the caller, who retries once the relay has caught up.
    #[error(
        "{key} carries {events} events the outbox relay has not published yet; try again once it has caught up"
    )]
    OutboxBehind {
        /// The key.
        key: String,
        /// Events it would carry.
        events: usize,
    },
    /// The server refused the write for want of space (its storage is
    /// full, or the bucket is at its limits): nothing was written (a
    /// transaction fails whole); the same write can succeed once space
    /// returns. A 503 for the caller ([`ServiceError::storage_full`]).
    #[error(
        "{action}: the server's storage is full ({reason}); nothing was written, try again later"
    )]
    Full {
        /// What was being done.
        action: String,
        /// The server's words.
        reason: String,
    },
    /// The bucket or the server failed.
    #[error("{action}: {message}")]
    Store {
        /// What was being done.
        action: String,
        /// The client's words.
        message: String,
        /// The client's error (its kind and chain).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<StateError> for ServiceError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::AlreadyExists { .. } | StateError::Conflict { .. } => {
                ServiceError::conflict(e.to_string())
            }
            StateError::Event(e) => e.into(),
            StateError::Decode { .. } | StateError::OtherBucket { .. } => {
                tracing::error!(error = %e, "corrupt state");
                ServiceError::internal("internal error")
            }
            StateError::KeyTooLong { length, max, .. } => ServiceError::bad_request(e.to_string())
                .with_details(serde_json::json!({ "key_length": length, "max_key_length": max })),
            StateError::Full { .. } => ServiceError::storage_full(e.to_string()),
            StateError::Store { .. } | StateError::OutboxBehind { .. } => {
                ServiceError::unavailable(e.to_string())
            }
        }
    }
}

fn store_err<E>(action: impl Into<String>) -> impl FnOnce(E) -> StateError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let action = action.into();
    move |e| StateError::Store {
        action,
        message: e.to_string(),
        source: Box::new(e),
    }
}

/// Typed access to one KV bucket. Clones share the bucket and the
/// per-key writer queue of [`StateStore::modify`] and
/// [`StateStore::transition`].
#[derive(Debug)]
pub struct StateStore<T> {
    js: jetstream::Context,
    kv: kv::Store,
    bucket: String,
    /// Keys of this view start with `<namespace>.` (see [`StateStore::view`]).
    namespace: Option<String>,
    writers: Arc<KeyLocks>,
    committer: Committer,
    floor: Arc<RelayFloor>,
    value: PhantomData<fn() -> T>,
}

impl<T> Clone for StateStore<T> {
    fn clone(&self) -> Self {
        self.view_as(self.namespace.clone())
    }
}

impl<T> StateStore<T> {
    /// Records of another type in the same bucket, under keys
    /// `<namespace>.<key>`: a [`Transaction`] can change them together
    /// with this store's. Encoded keys never contain a dot (see
    /// [`key_for`]), so a namespace cannot collide with a plain key.
    pub fn view<U>(&self, namespace: &str) -> StateStore<U> {
        self.view_as(Some(namespace.to_owned()))
    }

    fn view_as<U>(&self, namespace: Option<String>) -> StateStore<U> {
        StateStore {
            js: self.js.clone(),
            kv: self.kv.clone(),
            bucket: self.bucket.clone(),
            namespace,
            writers: self.writers.clone(),
            committer: self.committer.clone(),
            floor: self.floor.clone(),
            value: PhantomData,
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full, bounded key of `key` in the bucket.
    fn key(&self, key: &str) -> Result<String, StateError> {
        let encoded = checked_key(key)?;
        let Some(namespace) = &self.namespace else {
            return Ok(encoded);
        };
        let full = format!("{namespace}.{encoded}");
        if full.len() > MAX_KEY_LEN {
            return Err(StateError::KeyTooLong {
                preview: crate::limits::preview(key),
                length: full.len(),
                max: MAX_KEY_LEN,
            });
        }
        Ok(full)
    }

    /// The subject a write of `full_key` goes to.
    fn subject(&self, full_key: &str) -> String {
        let prefix = self.kv.put_prefix.as_ref().unwrap_or(&self.kv.prefix);
        format!("{prefix}{full_key}")
    }

    /// A transaction on this store's bucket.
    pub fn transaction(&self) -> Transaction {
        Transaction::new(self.js.clone(), self.committer.clone(), &self.bucket)
    }

    /// Waits until this task is the only writer of each of `keys` in the
    /// process (in key order, so two multi-key writers cannot deadlock).
    pub async fn lock_keys<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<Vec<KeyGuard<'_>>, StateError> {
        let mut full = keys
            .into_iter()
            .map(|k| self.key(k))
            .collect::<Result<Vec<_>, _>>()?;
        full.sort();
        full.dedup();
        let mut guards = Vec::with_capacity(full.len());
        for key in full {
            guards.push(self.writers.lock(&key).await);
        }
        Ok(guards)
    }
}

impl<T: Serialize + DeserializeOwned> StateStore<T> {
    /// Opens the bucket, creating it (file storage, `replicas`) if missing
    /// or changing its replica count in place if it differs (see
    /// [`crate::replication`]), and lets its stream take atomic batches
    /// (transactions of several keys).
    ///
    /// # Errors
    ///
    /// [`StateError::Store`] when the bucket cannot be opened, created or
    /// prepared.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<Self, StateError> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => match js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    history: 1,
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
            {
                Ok(kv) => kv,
                // Another instance starting at the same time created it and
                // prepared it for transactions (below) in between: its config
                // is no longer the plain one we asked for. Open theirs.
                Err(e) if bucket_created_meanwhile(&e) => js
                    .get_key_value(bucket)
                    .await
                    .map_err(|e| store_err(format!("open bucket {bucket}"))(e))?,
                Err(e) => return Err(store_err(format!("create bucket {bucket}"))(e)),
            },
        };
        prepare_stream(js, &kv.stream_name, replicas).await?;
        let floor = Arc::new(RelayFloor::new(kv.stream.clone()));
        Ok(StateStore {
            js: js.clone(),
            kv,
            bucket: bucket.to_owned(),
            namespace: None,
            writers: Arc::default(),
            committer: Committer::start(js.client()),
            floor,
            value: PhantomData,
        })
    }

    /// Reads a key.
    ///
    /// # Errors
    ///
    /// [`StateError::Decode`] or [`StateError::Store`].
    pub async fn get(&self, key: &str) -> Result<Option<Versioned<T>>, StateError> {
        let full = self.key(key)?;
        let read = || format!("read {}/{key}", self.bucket);
        // The raw message, not `kv::Store::entry`: its headers hold the
        // events a write carries (see `outbox`). And from the
        // stream's leader, not a direct get that any replica may answer: a
        // read that decides a compare-and-set must see the last write, and
        // a lagging replica would turn every retry into the same conflict.
        let subject = format!("{}{full}", self.kv.prefix);
        let message = match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(store_err(read())(e)),
        };
        let operation = crate::events::envelope::header(Some(&message.headers), KV_OPERATION);
        if operation.is_some_and(|op| op != "PUT") {
            return Ok(None);
        }
        let value =
            serde_json::from_slice(&message.payload).map_err(|source| StateError::Decode {
                key: key.to_owned(),
                source,
            })?;
        let mut pending = decode_pending(Some(&message.headers)).unwrap_or_else(|reason| {
            tracing::error!(key = %full, %reason, "unreadable outbox events; not carried");
            Vec::new()
        });
        if !pending.is_empty() && self.floor.covers(message.sequence).await {
            pending.clear();
        }
        Ok(Some(Versioned {
            value,
            revision: message.sequence,
            pending,
        }))
    }

    /// The value of a key, or the error `missing` makes (a 404, usually):
    /// what a "get by id" endpoint answers.
    ///
    /// # Errors
    ///
    /// `missing()` when there is no value; the store's failure as a
    /// [`ServiceError`].
    pub async fn fetch(
        &self,
        key: &str,
        missing: impl FnOnce() -> ServiceError,
    ) -> Result<T, ServiceError> {
        self.get(key).await?.map(|v| v.value).ok_or_else(missing)
    }

    /// Stores a value under a key that must not exist yet.
    ///
    /// # Errors
    ///
    /// [`StateError::AlreadyExists`], or [`StateError::Store`].
    pub async fn create(&self, key: &str, value: &T) -> Result<(), StateError> {
        let mut tx = self.transaction();
        tx.create(self, key, value)?;
        tx.commit().await.map_err(|e| match e {
            StateError::Conflict { .. } => StateError::AlreadyExists {
                key: key.to_owned(),
            },
            other => other,
        })
    }

    /// Replaces `current` (as read), if the key is still at its revision;
    /// events the old value still carries go with the new one.
    ///
    /// # Errors
    ///
    /// [`StateError::Conflict`], or [`StateError::Store`].
    pub async fn update(
        &self,
        key: &str,
        value: &T,
        current: &Versioned<T>,
    ) -> Result<(), StateError> {
        let mut tx = self.transaction();
        tx.update(self, key, value, current)?;
        tx.commit().await
    }

    /// Read-modify-write with optimistic concurrency: `change` gets the
    /// current value (or `None`) and returns the new one, or a domain error
    /// that aborts without writing. Writers of one key in this process take
    /// turns (so a hot key does not turn into conflicts); a writer in
    /// another process that gets in between is retried.
    ///
    /// # Errors
    ///
    /// The domain error of `change`, or a 409 after repeated conflicts, or
    /// the store's failure as a [`ServiceError`].
    pub async fn modify(
        &self,
        key: &str,
        mut change: impl FnMut(Option<T>) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError>
    where
        T: Clone,
    {
        let _turn = self.writers.lock(&self.key(key)?).await;
        for _ in 0..MODIFY_ATTEMPTS {
            let current = self.get(key).await?;
            let next = change(current.as_ref().map(|c| c.value.clone()))?;
            let written = match &current {
                Some(current) => self.update(key, &next, current).await,
                None => self.create(key, &next).await,
            };
            match written {
                Ok(_) => return Ok(next),
                Err(StateError::Conflict { .. } | StateError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::contended(format!(
            "{key} keeps changing concurrently; try again"
        )))
    }
}

/// What [`StateStore::transition`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition<T> {
    /// The value was changed to this (the caller's side effects follow).
    Changed(T),
    /// Nothing was to be done; the value as it is.
    Unchanged(T),
}

impl<T: Serialize + DeserializeOwned + Clone> StateStore<T> {
    /// Read, change, compare-and-set, retry — for a change that may find
    /// nothing to do (cancelling what is already cancelled): `change` gets
    /// the current value and returns `Some(new)` to write it, `None` to leave
    /// it. A conflicting writer makes it read and decide again, so exactly
    /// one of two racing callers sees [`Transition::Changed`]. `Ok(None)`
    /// when the key does not exist.
    ///
    /// # Errors
    ///
    /// The domain error of `change`, a 409 after repeated conflicts, or the
    /// store's failure as a [`ServiceError`].
    pub async fn transition(
        &self,
        key: &str,
        change: impl FnMut(&T) -> Result<Option<T>, ServiceError>,
    ) -> Result<Option<Transition<T>>, ServiceError> {
        self.transition_with(key, change, |_, _| Ok(())).await
    }

    /// [`StateStore::transition`] whose change commits together with what
    /// `effects` adds to the same [`Transaction`] — the events the change
    /// implies (published by the outbox relay, also after a crash), other
    /// keys of the bucket. `effects` gets the new value; it runs again if
    /// the commit conflicts.
    ///
    /// # Errors
    ///
    /// As [`StateStore::transition`], and what `effects` returns.
    pub async fn transition_with(
        &self,
        key: &str,
        mut change: impl FnMut(&T) -> Result<Option<T>, ServiceError>,
        mut effects: impl FnMut(&T, &mut Transaction) -> Result<(), StateError>,
    ) -> Result<Option<Transition<T>>, ServiceError> {
        let _turn = self.writers.lock(&self.key(key)?).await;
        for _ in 0..MODIFY_ATTEMPTS {
            let Some(current) = self.get(key).await? else {
                return Ok(None);
            };
            let Some(next) = change(&current.value)? else {
                return Ok(Some(Transition::Unchanged(current.value)));
            };
            let mut tx = self.transaction();
            tx.update(self, key, &next, &current)?;
            effects(&next, &mut tx)?;
            match tx.commit().await {
                Ok(()) => return Ok(Some(Transition::Changed(next))),
                Err(StateError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::contended(format!(
            "{key} keeps changing concurrently; try again"
        )))
    }
}

/// Brings the bucket's stream in line, with one read and at most one
/// update: atomic batches allowed (transactions of several keys) and the
/// configured replica count (changed in place; see [`crate::replication`]).
/// Nothing else of the bucket's configuration changes.
async fn prepare_stream(
    js: &jetstream::Context,
    stream: &str,
    replicas: usize,
) -> Result<(), StateError> {
    let read = || format!("read stream {stream}");
    let mut handle = js.get_stream(stream).await.map_err(store_err(read()))?;
    let mut config = handle
        .info()
        .await
        .map_err(store_err(read()))?
        .config
        .clone();
    if config.allow_atomic_publish && config.num_replicas == replicas {
        return Ok(());
    }
    if config.num_replicas != replicas {
        tracing::warn!(%stream, from = config.num_replicas, to = replicas, "replicas changed");
    }
    config.allow_atomic_publish = true;
    config.num_replicas = replicas;
    js.update_stream(config)
        .await
        .map_err(store_err(format!("prepare stream {stream}")))?;
    Ok(())
}

/// Whether creating a bucket failed because its stream exists already
/// with another configuration (created, and prepared, by someone else).
fn bucket_created_meanwhile(e: &jetstream::context::CreateKeyValueError) -> bool {
    use std::error::Error as _;
    e.kind() == jetstream::context::CreateKeyValueErrorKind::BucketCreate
        && e.source()
            .and_then(|s| s.downcast_ref::<jetstream::context::CreateStreamError>())
            .is_some_and(|s| {
                matches!(
                    s.kind(),
                    jetstream::context::CreateStreamErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
                )
            })
}

/// The KV header that marks a delete or purge.
const KV_OPERATION: &str = "KV-Operation";

fn encode<T: Serialize>(key: &str, value: &T) -> Result<bytes::Bytes, StateError> {
    serde_json::to_vec(value)
        .map(Into::into)
        .map_err(|source| StateError::Decode {
            key: key.to_owned(),
            source,
        })
}

/// A new unique id such as `o-Xn3Qm…`, valid as a KV key and in subjects.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", nuid::next())
}

/// [`key_for`], bounded: the encoded key, or [`StateError::KeyTooLong`]
/// when it is longer than [`MAX_KEY_LEN`] bytes.
///
/// # Errors
///
/// [`StateError::KeyTooLong`].
pub fn checked_key(text: &str) -> Result<String, StateError> {
    let too_long = |length| StateError::KeyTooLong {
        preview: crate::limits::preview(text),
        length,
        max: MAX_KEY_LEN,
    };
    // Encoding never shortens a key: what is too long as text stays too long.
    if text.len() > MAX_KEY_LEN {
        return Err(too_long(text.len()));
    }
    let key = key_for(text);
    if key.len() > MAX_KEY_LEN {
        return Err(too_long(key.len()));
    }
    Ok(key)
}

/// A KV key for any text: KV keys allow `[-/_=.a-zA-Z0-9]`, other text
/// (an e-mail address, say) is hex-encoded. Unbounded: stores use
/// [`checked_key`].
pub fn key_for(text: &str) -> String {
    let plain = !text.is_empty()
        && !text.starts_with('.')
        && !text.ends_with('.')
        && !text.contains("..")
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='));
    if plain {
        text.to_owned()
    } else {
        let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x_{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_KEY_LEN, StateError, checked_key, key_for};

    #[test]
    fn any_text_becomes_a_valid_key() {
        assert_eq!(key_for("order-o1_created"), "order-o1_created");
        assert_eq!(key_for("a b"), "x_612062");
        assert_eq!(
            key_for("ann@example.com"),
            "x_616e6e406578616d706c652e636f6d"
        );
    }

    #[test]
    fn keys_are_bounded_after_encoding() {
        let plain = "a".repeat(MAX_KEY_LEN);
        assert_eq!(checked_key(&plain).ok(), Some(plain.clone()));
        // Fits as text, not once hex-encoded.
        let encoded = "@".repeat(MAX_KEY_LEN / 2);
        assert!(matches!(
            checked_key(&encoded),
            Err(StateError::KeyTooLong { length, max: MAX_KEY_LEN, .. }) if length == MAX_KEY_LEN + 2
        ));
        let huge = "z".repeat(5000);
        let error = checked_key(&huge)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("limit is 1024") && error.len() < 200,
            "{error}"
        );
        let reply = switchboard_error(StateError::KeyTooLong {
            preview: String::new(),
            length: 5000,
            max: MAX_KEY_LEN,
        });
        assert_eq!(reply.code, 400);
    }

    #[test]
    fn store_failures_keep_their_cause() {
        let cause = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer");
        let error = super::store_err("read accounts/a-1")(cause);
        assert_eq!(error.to_string(), "read accounts/a-1: no answer");
        let source = std::error::Error::source(&error).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("no answer"));
        assert_eq!(switchboard_error(error).code, 503);
    }

    fn switchboard_error(e: StateError) -> crate::ServiceError {
        e.into()
    }
}
