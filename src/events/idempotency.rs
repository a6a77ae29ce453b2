//! Exactly-once effect for at-least-once delivery.
//!
//! JetStream delivers at least once: a redelivery, a replayed dead letter or
//! a second publisher can hand the same event (same `ce-id`) to a handler
//! again. This helper keeps a record per processed id in a JetStream KV
//! bucket (with a TTL of at least the duplicate window) and is consulted
//! before the handler runs.
//!
//! The record is a claim first (`pending`, created atomically, so two
//! concurrent deliveries of one event cannot both run) and becomes `done`
//! only after the handler succeeded; a failed handler releases it. The
//! consumer renews a claim every third of its lease while the handler runs;
//! a claim left behind by a crashed process is taken over once it has gone
//! unrenewed for the lease ([`CLAIM_LEASE`], 10 s by default) — seconds, not
//! the record's TTL, so a crash delays its events by that much at most.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::EventError;
use crate::state::checked_key;

/// How long an unrenewed claim holds off other deliveries of its event. The
/// consumer renews every third of it, so a live handler keeps its claim
/// through two missed renewals (a slow KV write, say).
pub const CLAIM_LEASE: Duration = Duration::from_secs(10);

/// What to do with an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Not seen before (or a stale claim was taken over): handle it.
    New,
    /// Already handled successfully: acknowledge without handling.
    AlreadyDone,
    /// Another delivery is handling it right now: try again later.
    InProgress,
}

const DONE: &str = "done";
const PENDING: &str = "pending:";

/// Processed-event records in one KV bucket.
#[derive(Debug, Clone)]
pub struct Idempotency {
    kv: kv::Store,
    stale_after: Duration,
}

impl Idempotency {
    /// The bucket of a consumer's records: `processed-<durable>` (the
    /// permissions of its user name it too).
    pub fn bucket_for(durable: &str) -> String {
        format!("processed-{durable}")
    }

    /// Opens (or creates) the bucket; records expire after `ttl`.
    ///
    /// # Errors
    ///
    /// JetStream API failures.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        ttl: Duration,
        stale_after: Duration,
    ) -> Result<Self, EventError> {
        let replicas = crate::replication::replicas().unwrap_or(1);
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => {
                crate::replication::migrate(js, &kv.stream_name, replicas)
                    .await
                    .map_err(|e| EventError::JetStream {
                        action: format!("set the replicas of bucket {bucket}"),
                        message: e.to_string(),
                        source: Some(e),
                    })?;
                kv
            }
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    description: "Switchboard processed-event records".to_owned(),
                    history: 1,
                    max_age: ttl,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| EventError::js(format!("create KV bucket {bucket}"))(e))?,
        };
        Ok(Idempotency { kv, stale_after })
    }

    /// Claims `id` for handling.
    ///
    /// # Errors
    ///
    /// [`EventError::InvalidAttribute`] for an id too long to be a key;
    /// JetStream API failures.
    pub async fn claim(&self, id: &str) -> Result<Claim, EventError> {
        let key = key(id)?;
        let pending = format!("{PENDING}{}", now_millis());
        if self.kv.create(&key, pending.clone().into()).await.is_ok() {
            return Ok(Claim::New);
        }
        let entry = self
            .kv
            .entry(&key)
            .await
            .map_err(|e| EventError::js(format!("read record {key}"))(e))?;
        let Some(entry) = entry else {
            // Deleted between our create and read: claim again next time.
            return Ok(Claim::InProgress);
        };
        let value = String::from_utf8_lossy(&entry.value);
        if value == DONE {
            return Ok(Claim::AlreadyDone);
        }
        let since = value
            .strip_prefix(PENDING)
            .and_then(|t| t.parse::<u128>().ok())
            .unwrap_or(0);
        let stale = now_millis().saturating_sub(since) > self.stale_after.as_millis();
        // A deleted record (released claim) also shows up here with an empty value.
        if (stale || value.is_empty())
            && self
                .kv
                .update(&key, pending.into(), entry.revision)
                .await
                .is_ok()
        {
            return Ok(Claim::New);
        }
        Ok(Claim::InProgress)
    }

    /// Renews a claim while its handler still runs, so it never looks stale.
    ///
    /// # Errors
    ///
    /// JetStream API failures.
    pub async fn renew(&self, id: &str) -> Result<(), EventError> {
        let key = key(id)?;
        self.kv
            .put(&key, format!("{PENDING}{}", now_millis()).into())
            .await
            .map_err(|e| EventError::js(format!("renew {key}"))(e))?;
        Ok(())
    }

    /// Marks `id` as handled.
    ///
    /// # Errors
    ///
    /// JetStream API failures.
    pub async fn done(&self, id: &str) -> Result<(), EventError> {
        let key = key(id)?;
        self.kv
            .put(&key, DONE.into())
            .await
            .map_err(|e| EventError::js(format!("record {key}"))(e))?;
        Ok(())
    }

    /// Releases a claim after a failed handler, so a redelivery may retry.
    ///
    /// # Errors
    ///
    /// JetStream API failures.
    pub async fn release(&self, id: &str) -> Result<(), EventError> {
        let key = key(id)?;
        self.kv
            .delete(&key)
            .await
            .map_err(|e| EventError::js(format!("release {key}"))(e))
    }
}

/// The record's key: an id too long to be a key (a publisher outside the
/// kit may send any `ce-id`) is refused before it becomes a subject.
fn key(id: &str) -> Result<String, EventError> {
    checked_key(id).map_err(|_| EventError::InvalidAttribute {
        name: crate::events::envelope::CE_ID,
        value: crate::limits::preview(id),
        reason: "too long to be recorded",
    })
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
