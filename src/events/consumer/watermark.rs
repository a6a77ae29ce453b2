//! Idempotency by watermark: a keyed partition's "already handled", one
//! KV write per many events instead of two per event.
//!
//! A partition has one owner and arrives in stream order, so what it has
//! handled is, apart from the events still in its hands, a *prefix* of its
//! stream sequences: the watermark is the highest sequence at or below
//! which every event the partition received was settled for good (acked,
//! or dead-lettered). Keys finish out of order (one lane each), so the
//! mark is the oldest event still open, less one — not the latest done.
//! It is kept in memory as events settle and written to the KV bucket
//! `watermarks-<durable>` (key `p<n>`) at most every [`WRITE_EVERY`], when
//! it moved.
//!
//! A redelivery at or below the mark — an ack that was lost, an ack wait
//! that ran out on a slow handler that did finish, an owner that died
//! after handling but before its ack reached the server — is acknowledged
//! without running the handler; a new owner starts from the mark its
//! predecessor wrote.
//!
//! The crash argument: a SIGKILL between handling and the next mark write
//! leaves the events handled since the last write unmarked; those not yet
//! acknowledged are redelivered and handled again — at most the
//! unacknowledged events, as with the per-event records. What a watermark
//! does not see is a re-publish of the same `ce-id` past the stream's
//! duplicate window: a new sequence, a new event to it (the per-event
//! records of [`ConsumerSpec::idempotent`](super::ConsumerSpec::idempotent)
//! catch that, at two KV writes per event).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv};

use crate::events::EventError;

/// How often a moved mark is written.
pub(super) const WRITE_EVERY: Duration = Duration::from_millis(100);

/// The bucket of a keyed consumer's watermarks.
pub fn bucket_for(durable: &str) -> String {
    format!("watermarks-{durable}")
}

/// One partition's mark.
pub(super) struct Watermark {
    kv: kv::Store,
    key: String,
    marks: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    /// Received and not settled for good (handled, waiting, held, or
    /// handed back to come again).
    open: BTreeSet<u64>,
    /// The highest sequence received.
    highest: u64,
    /// Every event at or below it is settled.
    mark: u64,
    /// The mark as last written.
    written: u64,
}

impl Marks {
    fn receive(&mut self, sequence: u64) -> bool {
        if sequence <= self.mark {
            return false;
        }
        self.open.insert(sequence);
        self.highest = self.highest.max(sequence);
        true
    }

    fn settle(&mut self, sequence: u64) {
        self.open.remove(&sequence);
        let mark = match self.open.first() {
            Some(oldest) => oldest.saturating_sub(1),
            None => self.highest,
        };
        self.mark = self.mark.max(mark);
    }
}

impl Watermark {
    /// Opens partition `partition`'s mark of `durable` (the bucket is made
    /// if missing).
    ///
    /// # Errors
    ///
    /// JetStream API failures.
    pub(super) async fn open(
        js: &jetstream::Context,
        durable: &str,
        partition: u32,
    ) -> Result<Self, EventError> {
        let bucket = bucket_for(durable);
        let replicas = crate::replication::replicas().unwrap_or(1);
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "Switchboard keyed-consumer watermarks".to_owned(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| EventError::js(format!("create KV bucket {bucket}"))(e))?,
        };
        let key = format!("p{partition}");
        let written = kv
            .get(&key)
            .await
            .map_err(|e| EventError::js(format!("read watermark {bucket}/{key}"))(e))?
            .and_then(|value| std::str::from_utf8(&value).ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Watermark {
            kv,
            key,
            marks: Mutex::new(Marks {
                mark: written,
                written,
                highest: written,
                ..Marks::default()
            }),
        })
    }

    /// Takes in an event as it arrives; `false` when it is at or below the
    /// mark (handled already: acknowledge it, do not handle it).
    pub(super) fn received(&self, sequence: u64) -> bool {
        self.marks
            .lock()
            .map_or(true, |mut marks| marks.receive(sequence))
    }

    /// An event left this process: settled for good (`done`: acked or
    /// dead-lettered) moves the mark; handed back keeps it below.
    pub(super) fn finished(&self, sequence: u64, done: bool) {
        if done && let Ok(mut marks) = self.marks.lock() {
            marks.settle(sequence);
        }
    }

    /// Writes the mark if it moved since the last write.
    pub(super) async fn write(&self) {
        let mark = match self.marks.lock() {
            Ok(marks) if marks.mark > marks.written => marks.mark,
            _ => return,
        };
        match self.kv.put(&self.key, mark.to_string().into()).await {
            Ok(_) => {
                if let Ok(mut marks) = self.marks.lock() {
                    marks.written = marks.written.max(mark);
                }
            }
            Err(error) => {
                tracing::debug!(%error, key = %self.key, "watermark not written; next time")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Marks;

    #[test]
    fn the_mark_is_the_oldest_open_event_less_one() {
        let mut marks = Marks::default();
        for s in [3, 7, 9] {
            assert!(marks.receive(s));
        }
        marks.settle(7); // a later key finished first
        assert_eq!(marks.mark, 2);
        marks.settle(3);
        assert_eq!(marks.mark, 8);
        marks.settle(9);
        assert_eq!(marks.mark, 9);
        assert!(!marks.receive(7), "a redelivery below the mark");
        assert!(marks.receive(12));
    }
}
