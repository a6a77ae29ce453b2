//! Per-call settings.

use std::time::Duration;

use tokio::time::Instant;

use crate::codec::Encoding;
use crate::trace_context::TraceContext;

/// How one call behaves; `Default` is a 5 s timeout, not idempotent, up to
/// two retries where safe.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOptions {
    /// Longest wait for a reply, over all attempts.
    pub timeout: Duration,
    /// An absolute deadline (e.g. the caller's caller's); the earlier of
    /// this and `timeout` wins.
    pub deadline: Option<Instant>,
    /// Longest wait of one attempt (default: all the time left). Shorter
    /// attempts leave room for retries of idempotent calls.
    pub attempt_timeout: Option<Duration>,
    /// Safe to repeat: timeouts are retried too (otherwise only no-responders
    /// and transport failures are, where the request surely did nothing).
    pub idempotent: bool,
    /// Retries after the first attempt (each also needs the retry budget).
    pub max_retries: u32,
    /// First retry delay (exponential with jitter after that).
    pub retry_min_delay: Duration,
    /// Longest retry delay.
    pub retry_max_delay: Duration,
    /// The trace this call belongs to; `None` starts a new one.
    pub trace: Option<TraceContext>,
    /// The encoding of the request and the one asked for the reply
    /// (default JSON; see [`Encoding`]).
    pub encoding: Encoding,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            timeout: Duration::from_secs(5),
            deadline: None,
            attempt_timeout: None,
            idempotent: false,
            max_retries: 2,
            retry_min_delay: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(500),
            trace: None,
            encoding: Encoding::Json,
        }
    }
}

impl CallOptions {
    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Sets an absolute deadline.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
    /// Caps each attempt.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }
    /// Marks the call idempotent.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }
    /// Sets the retry count.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }
    /// Continues a trace.
    pub fn trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }
    /// Sends the request in `encoding`; the reply comes in it too (a
    /// service may still answer JSON, e.g. an error: the reply's
    /// `Content-Type` decides how it is read).
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    pub(crate) fn effective_deadline(&self, now: Instant) -> Instant {
        let by_timeout = now + self.timeout;
        self.deadline.map_or(by_timeout, |d| d.min(by_timeout))
    }
}
