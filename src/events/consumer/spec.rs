//! What a consumer is declared as, and what a handler may answer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};

/// A handler's failure: retry later, wait for the platform, or give up now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// A transient failure (dependency down, conflict): retry with backoff;
    /// counts toward [`ConsumerSpec::max_deliver`].
    #[error("retryable: {0}")]
    Retryable(String),
    /// The platform cannot take the event's effect now — the server's
    /// storage is full ([`crate::storage`]'s kinds): retried in place with
    /// backoff (the event keeps its place and its claim), never counted as
    /// a failure, never dead-lettered. A full disk delays events; it does
    /// not lose them.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The event can never succeed (invalid, unknown reference): dead-letter it.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    /// The handler's words.
    pub fn reason(&self) -> &str {
        match self {
            HandlerError::Retryable(reason)
            | HandlerError::Unavailable(reason)
            | HandlerError::Permanent(reason) => reason,
        }
    }

    /// A retryable failure.
    pub fn retry(message: impl Into<String>) -> Self {
        HandlerError::Retryable(message.into())
    }
    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent(message.into())
    }
}

impl From<crate::ServiceError> for HandlerError {
    /// A failed call or state change, by what it says: no space →
    /// [`HandlerError::Unavailable`]; transient
    /// ([`ServiceError::is_transient`](crate::ServiceError::is_transient))
    /// → retryable; else permanent.
    fn from(e: crate::ServiceError) -> Self {
        if e.is_storage_full() {
            HandlerError::Unavailable(e.message)
        } else if e.is_transient() {
            HandlerError::Retryable(e.message)
        } else {
            HandlerError::Permanent(e.message)
        }
    }
}

impl From<crate::state::StateError> for HandlerError {
    /// As the [`ServiceError`](crate::ServiceError) the state error is for
    /// a caller.
    fn from(e: crate::state::StateError) -> Self {
        crate::ServiceError::from(e).into()
    }
}

impl From<super::super::EventError> for HandlerError {
    /// As the [`ServiceError`](crate::ServiceError) the event error is for
    /// a caller.
    fn from(e: super::super::EventError) -> Self {
        crate::ServiceError::from(e).into()
    }
}

/// A durable consumer as declared in code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The stream to consume.
    pub stream: String,
    /// Durable name (also the queue that instances share).
    pub durable: String,
    /// Subjects of the stream to receive (empty: all).
    pub filter_subjects: Vec<String>,
    /// How long a delivery may go unacknowledged before redelivery.
    pub ack_wait: Duration,
    /// Handler failures before an event is dead-lettered (deliveries lost
    /// to outages and crashes do not count).
    pub max_deliver: u64,
    /// Delays before the 1st, 2nd, … retry (the last repeats).
    pub backoff: Vec<Duration>,
    /// Unacknowledged events the server allows in flight.
    pub max_ack_pending: usize,
    /// Handlers running at once in this process.
    pub concurrency: usize,
    /// Send in-progress signals while a handler runs (every `ack_wait / 3`).
    pub progress: bool,
    /// How long an event may be expected to wait here for a free handler:
    /// the consumer pulls ahead of its handlers by as many events as they
    /// finish in this time (at most twice `concurrency`, or 256 if that
    /// is more; the server still stops at `max_ack_pending`
    /// unacknowledged). Zero: pull only
    /// for free handlers. See `consumer::prefetch`.
    pub prefetch: Duration,
    /// One effect per `ce-id`, recorded for this long (≥ the duplicate window).
    pub idempotency_ttl: Option<Duration>,
    /// Handle events with the same `ce-subject` (e.g. one order) one at a
    /// time, in stream order; retryable failures are then retried in place.
    pub ordered_by_subject: bool,
    /// Keyed: this many partitions, shared among the instances running
    /// the consumer (see [`ConsumerSpec::keyed`]).
    pub partitions: Option<u32>,
    /// Keyed: redeliveries of handled events recognized by each
    /// partition's watermark (see [`ConsumerSpec::watermarked`]).
    pub watermark: bool,
}

/// The priority group every partition of a keyed consumer is pulled in.
pub(super) const OWNER_GROUP: &str = "owner";

/// How long a partition's pinned puller may go without a pull request
/// before the server lets another puller have it (ADR-42's
/// `priority_timeout`). A dead owner's partitions are normally taken
/// sooner: the instance that takes one unpins it (see `keyed`).
pub const PIN_TIMEOUT: Duration = Duration::from_secs(5);

impl ConsumerSpec {
    /// A consumer `durable` on `stream`, with defaults: ack wait 30 s, 5
    /// deliveries, backoff 1 s, 5 s, 30 s, 16 handlers, 256 pending, a
    /// prefetch of 20 ms of the handlers' pace.
    pub fn new(stream: impl Into<String>, durable: impl Into<String>) -> Self {
        ConsumerSpec {
            stream: stream.into(),
            durable: durable.into(),
            filter_subjects: Vec::new(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
            max_ack_pending: 256,
            concurrency: 16,
            progress: true,
            prefetch: Duration::from_millis(20),
            idempotency_ttl: None,
            ordered_by_subject: false,
            partitions: None,
            watermark: false,
        }
    }
    /// Receives only these subjects.
    pub fn filter<S: Into<String>>(mut self, subjects: impl IntoIterator<Item = S>) -> Self {
        self.filter_subjects = subjects.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the ack wait.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }
    /// Sets the deliveries before dead-lettering.
    pub fn max_deliver(mut self, max_deliver: u64) -> Self {
        self.max_deliver = max_deliver.max(1);
        self
    }
    /// Sets the retry delays.
    pub fn backoff(mut self, backoff: Vec<Duration>) -> Self {
        self.backoff = backoff;
        self
    }
    /// Sets handlers in flight (at least 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }
    /// Turns in-progress signals on or off.
    pub fn progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }
    /// Sets how far ahead of its handlers the consumer pulls, as the
    /// wait for a free handler it accepts (`Duration::ZERO`: only for
    /// free handlers).
    pub fn prefetch(mut self, wait: Duration) -> Self {
        self.prefetch = wait;
        self
    }

    /// Events about the same thing (same `ce-subject`) are handled in order,
    /// one at a time; different subjects still run concurrently. A retryable
    /// failure is retried in place (after the backoff delay) so that later
    /// events of that subject wait for it.
    pub fn ordered_by_subject(mut self) -> Self {
        self.ordered_by_subject = true;
        self
    }

    /// Keyed consumption that scales out: the events of one key (the
    /// event's `ce-subject`, e.g. one order) are handled in stream order,
    /// one at a time, by one instance at a time, while the keys are spread
    /// over `partitions` partitions that the running instances share
    /// fairly — one that joins takes its share, one that stops or dies
    /// hands its partitions over, and the new owner handles what the old
    /// one left unacknowledged first. Implies
    /// [`ordered_by_subject`](ConsumerSpec::ordered_by_subject) within a
    /// partition; [`concurrency`](ConsumerSpec::concurrency) is per
    /// partition held.
    ///
    /// `partitions` (1 to [`SHARDS`](crate::events::partition::SHARDS))
    /// is fixed for the durable: more instances than partitions leave the
    /// extra ones idle (standbys). Each partition is a durable of its own,
    /// `<durable>-p<n>`; the filter must name event subjects (no `>`).
    pub fn keyed(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self.ordered_by_subject = true;
        self
    }

    /// A keyed consumer's cheaper idempotency: each partition keeps a
    /// watermark — the stream sequence at or below which it has handled
    /// every event — in KV bucket `watermarks-<durable>`, written at most
    /// every 100 ms, and acknowledges a redelivery at or below it without
    /// handling it (a lost ack, an expired ack wait, an owner that died
    /// after handling). One KV write per partition per 100 ms instead of
    /// two per event; a crash leaves at most the unacknowledged events
    /// handled again, as with [`idempotent`](ConsumerSpec::idempotent).
    /// Unlike it, a re-publish of the same `ce-id` past the stream's
    /// duplicate window is a new event to a watermark. See
    /// `consumer::watermark`; only with [`keyed`](ConsumerSpec::keyed).
    pub fn watermarked(mut self) -> Self {
        self.watermark = true;
        self
    }

    /// One effect per event id, remembered for `ttl`.
    pub fn idempotent(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = Some(ttl);
        self
    }

    pub(super) fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            filter_subjects: crate::events::partition::delivery_filters(&self.filter_subjects),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            // Unlimited: only the handler's own failures count (attempts.rs).
            max_deliver: -1,
            max_ack_pending: i64::try_from(self.max_ack_pending.max(self.concurrency))
                .unwrap_or(i64::MAX),
            ..Default::default()
        }
    }

    /// The durable of partition `partition` of a keyed consumer: its
    /// shards only, pulled by one pinned instance at a time.
    ///
    /// # Errors
    ///
    /// [`EventError::InvalidConsumer`](crate::events::EventError::InvalidConsumer)
    /// when the declaration cannot be partitioned.
    pub(super) fn partition_config(
        &self,
        partition: u32,
        partitions: u32,
    ) -> Result<pull::Config, crate::events::EventError> {
        use crate::events::partition;
        Ok(pull::Config {
            durable_name: Some(partition::partition_durable(&self.durable, partition)),
            filter_subjects: partition::partition_filters(
                &self.durable,
                &self.filter_subjects,
                partition,
                partitions,
            )?,
            priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
            priority_groups: vec![OWNER_GROUP.to_owned()],
            priority_timeout: PIN_TIMEOUT,
            ..self.config()
        })
    }

    pub(super) fn delay_after(&self, delivered: u64) -> Duration {
        let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}
