//! Durable pull consumers whose handler's result decides each event's fate.
//!
//! - `Ok` → ack.
//! - [`HandlerError::Retryable`] → nak with the next delay of the backoff
//!   schedule (never an immediate redelivery storm).
//! - [`HandlerError::Permanent`], or the handler's
//!   [`max_deliver`](ConsumerSpec::max_deliver)-th failure → dead letter
//!   (payload, headers, error, deliveries), then term.
//!
//! Only the handler's own failures count towards a dead letter: the server
//! redelivers without limit, so a server restart, a consumer crash, a KV
//! timeout or an expired ack wait never dead-letters an event whose handler
//! did not fail (see `attempts.rs`). Events are fetched only as fast as
//! handler slots free up, so nothing waits in a local buffer while its ack
//! timer runs (over-pulling is what causes spurious redeliveries). A long
//! handler sends in-progress signals. With [`ConsumerSpec::idempotent`], a
//! redelivered or re-published event (same `ce-id`) has one effect.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use super::EventError;
use super::attempts::HandlerFailures;
use super::dead_letter::DeadLetters;
use super::envelope;
use super::envelope::DeadLetterInfo;
use super::event::{Delivery, ReceivedEvent};
use super::idempotency::{Claim, Idempotency};

/// A handler's failure: retry later, or give up now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A transient failure (dependency down, conflict): retry with backoff.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The event can never succeed (invalid, unknown reference): dead-letter it.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    /// A retryable failure.
    pub fn retry(message: impl Into<String>) -> Self {
        HandlerError::Retryable(message.into())
    }
    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent(message.into())
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
    /// One effect per `ce-id`, recorded for this long (≥ the duplicate window).
    pub idempotency_ttl: Option<Duration>,
    /// Handle events with the same `ce-subject` (e.g. one order) one at a
    /// time, in stream order; retryable failures are then retried in place.
    pub ordered_by_subject: bool,
}

impl ConsumerSpec {
    /// A consumer `durable` on `stream`, with defaults: ack wait 30 s, 5
    /// deliveries, backoff 1 s, 5 s, 30 s, 16 handlers, 256 pending.
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
            idempotency_ttl: None,
            ordered_by_subject: false,
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
    /// Events about the same thing (same `ce-subject`) are handled in order,
    /// one at a time; different subjects still run concurrently. A retryable
    /// failure is retried in place (after the backoff delay) so that later
    /// events of that subject wait for it.
    pub fn ordered_by_subject(mut self) -> Self {
        self.ordered_by_subject = true;
        self
    }

    /// One effect per event id, remembered for `ttl`.
    pub fn idempotent(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = Some(ttl);
        self
    }

    fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            filter_subjects: self.filter_subjects.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            // Unlimited: only the handler's own failures count (attempts.rs).
            max_deliver: -1,
            max_ack_pending: i64::try_from(self.max_ack_pending.max(self.concurrency))
                .unwrap_or(i64::MAX),
            ..Default::default()
        }
    }

    fn delay_after(&self, delivered: u64) -> Duration {
        let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// Everything a running consumer shares between its tasks.
struct Shared<F> {
    spec: ConsumerSpec,
    handler: F,
    dead_letters: DeadLetters,
    idempotency: Option<Idempotency>,
    failures: HandlerFailures,
}

/// Consumes events with `handler` until `shutdown`, then lets running
/// handlers finish (bounded by the ack wait) and returns.
///
/// # Errors
///
/// When the consumer, the `DLQ` stream or the idempotency bucket cannot be
/// set up. Per-event failures never end the loop.
pub async fn run<T, F, Fut>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EventError>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(ReceivedEvent<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    tokio::pin!(shutdown);
    // The stream belongs to the publishing service, which may start later.
    let stream = loop {
        match js.get_stream(&spec.stream).await {
            Ok(stream) => break stream,
            Err(e) if super::stream::is_not_found(&e) => {
                tracing::info!(stream = %spec.stream, consumer = %spec.durable, "waiting for the stream to be declared");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => return Err(EventError::js(format!("open stream {}", spec.stream))(e)),
        }
    };
    // Create or update: a consumer left by an older declaration (say, a
    // server-side delivery limit) is brought in line, not kept.
    let consumer = stream
        .create_consumer(spec.config())
        .await
        .map_err(|e| EventError::js(format!("create consumer {}", spec.durable))(e))?;
    let dead_letters = DeadLetters::open(&js).await?;
    let idempotency = match spec.idempotency_ttl {
        Some(ttl) => Some(
            Idempotency::open(
                &js,
                &Idempotency::bucket_for(&spec.durable),
                ttl,
                super::idempotency::CLAIM_LEASE,
            )
            .await?,
        ),
        None => None,
    };
    let shared = Arc::new(Shared {
        spec,
        handler,
        dead_letters,
        idempotency,
        failures: HandlerFailures::default(),
    });

    let slots = Arc::new(Semaphore::new(shared.spec.concurrency));
    let tasks = TaskTracker::new();
    // Ordered mode: one lane per slot; a subject always maps to the same lane.
    let lanes: Vec<mpsc::UnboundedSender<(jetstream::Message, OwnedSemaphorePermit)>> =
        if shared.spec.ordered_by_subject {
            (0..shared.spec.concurrency)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tasks.spawn(lane(shared.clone(), rx));
                    tx
                })
                .collect()
        } else {
            Vec::new()
        };
    loop {
        let first = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Ask only for as many events as there are free slots.
        let free = 1 + slots.available_permits();
        let batch = consumer
            .batch()
            .max_messages(free)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(consumer = %shared.spec.durable, %error, "fetch failed; retrying");
                drop(first);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let mut permit = Some(first);
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::debug!(%error, "batch ended");
                    break;
                }
            };
            let slot = match permit.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if !lanes.is_empty() {
                let index = lane_of(&message, lanes.len());
                if let Some(lane) = lanes.get(index)
                    && let Err(error) = lane.send((message, slot))
                {
                    tracing::error!(%error, "an ordered lane is gone; the event will be redelivered");
                }
                continue;
            }
            let shared = shared.clone();
            tasks.spawn(async move {
                handle(&shared, message, false).await;
                drop(slot);
            });
        }
    }
    drop(lanes); // lanes finish what they hold, then end
    tasks.close();
    if tokio::time::timeout(shared.spec.ack_wait, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(consumer = %shared.spec.durable, "handlers still running at shutdown; they will be redelivered");
    }
    Ok(())
}

/// Handles one event. `in_place`: retry a retryable failure here (ordered
/// lanes) instead of nak-ing it for a later redelivery.
async fn handle<T, F, Fut>(shared: &Shared<F>, message: jetstream::Message, in_place: bool)
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(ReceivedEvent<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let spec = &shared.spec;
    let (delivery, subject) = match message.info() {
        Ok(info) => (
            Delivery {
                stream: info.stream.to_owned(),
                consumer: info.consumer.to_owned(),
                stream_sequence: info.stream_sequence,
                delivered: u64::try_from(info.delivered).unwrap_or(1),
            },
            message.subject.to_string(),
        ),
        Err(error) => {
            tracing::error!(%error, "a message without JetStream metadata; ignoring it");
            return;
        }
    };
    let event = match ReceivedEvent::<T>::decode(&message) {
        Ok(mut event) => {
            event.delivery = Some(delivery.clone());
            event
        }
        Err(error) => {
            // Nothing a retry could fix.
            dead_letter(
                shared,
                &message,
                &delivery,
                &subject,
                format!("undecodable: {error}"),
            )
            .await;
            return;
        }
    };
    let event_id = event.attributes.id.clone();
    if let Some(idempotency) = &shared.idempotency {
        match idempotency.claim(&event_id).await {
            Ok(Claim::New) => {}
            Ok(Claim::AlreadyDone) => {
                tracing::debug!(%event_id, "already processed; acknowledging");
                return settle(&message, AckKind::Ack).await;
            }
            Ok(Claim::InProgress) => {
                return settle(&message, AckKind::Nak(Some(spec.delay_after(1)))).await;
            }
            Err(error @ EventError::InvalidAttribute { .. }) => {
                // No retry makes the id shorter.
                dead_letter(shared, &message, &delivery, &subject, error.to_string()).await;
                return;
            }
            Err(error) => {
                tracing::warn!(%event_id, %error, "idempotency record unavailable; retrying later");
                return settle(
                    &message,
                    AckKind::Nak(Some(spec.delay_after(delivery.delivered))),
                )
                .await;
            }
        }
    }

    let claim = shared.idempotency.as_ref().map(|i| (i, event_id.as_str()));
    let mut delivery = delivery;
    let mut event = Some(event);
    let outcome = loop {
        let current = match event.take() {
            Some(current) => current,
            // A retry in place: the same message, decoded again.
            None => match ReceivedEvent::<T>::decode(&message) {
                Ok(mut again) => {
                    again.delivery = Some(delivery.clone());
                    again
                }
                Err(error) => break Err(HandlerError::permanent(error.to_string())),
            },
        };
        let span = tracing::info_span!(
            "event",
            consumer = %spec.durable,
            subject = %subject,
            event_id = %event_id,
            delivered = delivery.delivered,
            trace_id = current.trace.map(|t| t.trace_id()).unwrap_or_default(),
        );
        let work = AssertUnwindSafe((shared.handler)(current)).catch_unwind();
        let outcome = keep_alive(
            &message,
            spec,
            claim,
            tracing::Instrument::instrument(work, span),
        )
        .await
        .unwrap_or_else(|_| Err(HandlerError::retry("handler panicked")));
        match outcome {
            Err(HandlerError::Retryable(reason)) if in_place => {
                let failed = shared.failures.record(delivery.stream_sequence);
                if failed >= spec.max_deliver {
                    break Err(HandlerError::Retryable(reason));
                }
                let delay = spec.delay_after(failed);
                tracing::info!(%event_id, %reason, ?delay, "retrying in place (ordered)");
                keep_alive(&message, spec, claim, tokio::time::sleep(delay)).await;
                delivery.delivered += 1;
            }
            other => break other,
        }
    };

    match outcome {
        Ok(()) => {
            shared.failures.forget(delivery.stream_sequence);
            if let Some(idempotency) = &shared.idempotency
                && let Err(error) = idempotency.done(&event_id).await
            {
                tracing::warn!(%event_id, %error, "cannot record the event as processed");
            }
            settle(&message, AckKind::Ack).await;
        }
        Err(error) => {
            if let Some(idempotency) = &shared.idempotency
                && let Err(e) = idempotency.release(&event_id).await
            {
                tracing::warn!(%event_id, error = %e, "cannot release the claim");
            }
            // Only the handler's own failures count (see attempts.rs); an
            // ordered lane has already counted its in-place retries.
            let failed = match (&error, in_place) {
                (HandlerError::Retryable(_), false) => {
                    shared.failures.record(delivery.stream_sequence)
                }
                _ => spec.max_deliver,
            };
            match error {
                HandlerError::Retryable(reason) if failed < spec.max_deliver => {
                    let delay = spec.delay_after(failed);
                    tracing::info!(%event_id, %reason, ?delay, "retrying later");
                    settle(&message, AckKind::Nak(Some(delay))).await;
                }
                HandlerError::Retryable(reason) | HandlerError::Permanent(reason) => {
                    shared.failures.forget(delivery.stream_sequence);
                    dead_letter(shared, &message, &delivery, &subject, reason).await;
                }
            }
        }
    }
}

/// The lane of an event in ordered mode: by `ce-subject`, else NATS subject.
fn lane_of(message: &jetstream::Message, lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let key = envelope::header(message.headers.as_ref(), envelope::CE_SUBJECT)
        .unwrap_or_else(|| message.subject.to_string());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    usize::try_from(hasher.finish() % lanes.max(1) as u64).unwrap_or(0)
}

/// An ordered lane: handles its events one at a time, in arrival order,
/// and keeps the queued ones alive (in-progress) while they wait.
async fn lane<T, F, Fut>(
    shared: Arc<Shared<F>>,
    mut arrivals: mpsc::UnboundedReceiver<(jetstream::Message, OwnedSemaphorePermit)>,
) where
    T: DeserializeOwned + Send + 'static,
    F: Fn(ReceivedEvent<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let mut queue = VecDeque::new();
    let mut open = true;
    let every = (shared.spec.ack_wait / 3).max(Duration::from_millis(50));
    loop {
        if queue.is_empty() {
            match arrivals.recv().await {
                Some(arrival) => queue.push_back(arrival),
                None => return,
            }
        }
        let Some((message, slot)) = queue.pop_front() else {
            continue;
        };
        let work = handle(&shared, message, true);
        tokio::pin!(work);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                () = &mut work => break,
                _ = ticker.tick() => {
                    for (waiting, _) in &queue {
                        let _ = waiting.ack_with(AckKind::Progress).await;
                    }
                }
                arrival = arrivals.recv(), if open => match arrival {
                    Some(arrival) => queue.push_back(arrival),
                    None => open = false,
                },
            }
        }
        drop(slot);
        if !open && queue.is_empty() {
            return;
        }
    }
}

/// Runs `work` while telling the server the event is still being worked on
/// (if enabled) and renewing the idempotency claim (so a long handler's
/// claim is never taken over by a redelivery).
async fn keep_alive<O>(
    message: &jetstream::Message,
    spec: &ConsumerSpec,
    claim: Option<(&Idempotency, &str)>,
    work: impl Future<Output = O>,
) -> O {
    if !spec.progress && claim.is_none() {
        return work.await;
    }
    tokio::pin!(work);
    // Often enough for both: the ack wait and, with a claim, its lease.
    let mut every = spec.ack_wait / 3;
    if claim.is_some() {
        every = every.min(super::idempotency::CLAIM_LEASE / 3);
    }
    let every = every.max(Duration::from_millis(50));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => {
                if spec.progress
                    && let Err(error) = message.ack_with(AckKind::Progress).await
                {
                    tracing::debug!(%error, "in-progress signal failed");
                }
                if let Some((idempotency, id)) = claim
                    && let Err(error) = idempotency.renew(id).await
                {
                    tracing::debug!(%error, "claim renewal failed");
                }
            }
        }
    }
}

async fn dead_letter<F>(
    shared: &Shared<F>,
    message: &jetstream::Message,
    delivery: &Delivery,
    subject: &str,
    error: String,
) {
    let info = DeadLetterInfo {
        subject: subject.to_owned(),
        stream: delivery.stream.clone(),
        consumer: delivery.consumer.clone(),
        stream_sequence: delivery.stream_sequence,
        deliveries: delivery.delivered,
        error,
        failed_at: super::now_rfc3339(),
    };
    let put = shared
        .dead_letters
        .put(&info, message.headers.as_ref(), message.payload.clone());
    match put.await {
        Ok(()) => settle(message, AckKind::Term).await,
        Err(e) => {
            // Not stored as a dead letter: keep it in the stream and retry.
            tracing::error!(error = %e, "cannot write the dead letter; retrying the event later");
            settle(
                message,
                AckKind::Nak(Some(shared.spec.delay_after(delivery.delivered))),
            )
            .await;
        }
    }
}

async fn settle(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, ?kind, "acknowledgement failed; the event may be redelivered");
    }
}
