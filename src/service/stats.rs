//! Per-endpoint counters behind `$SRV.STATS`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::ServiceError;

/// Counters of one endpoint; updated by request tasks, read by STATS.
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    totals: Mutex<Totals>,
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
        if let Ok(mut t) = self.totals.lock() {
            t.requests += 1;
            t.processing += took;
            if let Some(e) = error {
                t.errors += 1;
                t.last_error = format!("{}:{}", e.code, e.message);
            }
        }
    }

    pub(crate) fn totals(&self) -> Totals {
        self.totals.lock().map(|t| t.clone()).unwrap_or_default()
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
