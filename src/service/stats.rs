//! Per-endpoint counters behind `$SRV.STATS`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::ServiceError;

/// Counters of one endpoint; updated by request tasks, read by STATS.
/// Atomics, so answering a request never waits on a lock; only the text
/// of the last error sits behind one.
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_nanos: AtomicU64,
    last_error: Mutex<String>,
    /// How long answering took, by bucket.
    pub(crate) latency: super::latency::Latency,
    pub(crate) queued: AtomicUsize,
    pub(crate) rejected: AtomicU64,
    /// Requests taken off the subscription that expect a reply.
    pub(crate) accepted: AtomicU64,
    /// Replies handed to the connection.
    pub(crate) answered: AtomicU64,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Totals {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) last_error: String,
    pub(crate) processing: Duration,
}

impl EndpointCounters {
    /// Records one answered request.
    pub(crate) fn record(&self, took: Duration, error: Option<&ServiceError>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latency.record(took);
        self.processing_nanos
            .fetch_add(nanos(took), Ordering::Relaxed);
        if let Some(e) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = format!("{}:{}", e.code, e.message);
            }
        }
    }

    pub(crate) fn totals(&self) -> Totals {
        Totals {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default(),
            processing: Duration::from_nanos(self.processing_nanos.load(Ordering::Relaxed)),
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// Nanoseconds as ADR-32 wants them (saturating).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
