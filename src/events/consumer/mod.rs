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
//! did not fail (see `attempts.rs`). Events are fetched as handler slots
//! free up, and ahead of them only by what the handlers finish in a few
//! milliseconds (`prefetch`), so nothing waits long in a local buffer while
//! its ack timer runs (over-pulling is what causes spurious redeliveries);
//! an event kept waiting by stalled handlers is handed back (kept alive on
//! an ordered consumer, where it must keep its place). A long handler
//! sends in-progress signals. With [`ConsumerSpec::idempotent`], a
//! redelivered or re-published event (same `ce-id`) has one effect.
//!
//! A keyed consumer ([`ConsumerSpec::keyed`]) keeps each key's events in
//! order while the instances running it share its partitions: `keyed`
//! (the design, and who pulls which partition), `group` (who the
//! instances are) and `settling` (a takeover handles what the previous
//! owner left first).
//!
//! One concept per file, along the steps of a delivery: `spec` (what a
//! consumer is declared as), this module (the loop: a slot per event),
//! `puller` (pull requests pipelined, never beyond what `prefetch` allows),
//! `prefetch` (how far ahead of the handlers, by their pace),
//! `delivery` (decode → claim → run with retries → settle or dead-letter),
//! `ordered` (one lane per subject) and `attempts` (the handler's own
//! failures).

mod attempts;
mod delivery;
mod group;
mod keyed;
mod ordered;
mod prefetch;
mod puller;
mod settling;
mod spec;
pub mod watermark;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use super::EventError;
use super::dead_letter::DeadLetters;
use super::event::ReceivedEvent;
use super::idempotency::Idempotency;
use attempts::HandlerFailures;
use delivery::{handle, settle};
pub use group::subject as group_subject;
pub use keyed::partitions_held;
use ordered::{lane, lane_of};
use prefetch::Waiting;
use puller::{Pinning, Pulled, Puller};
use settling::Settling;
pub use spec::{ConsumerSpec, HandlerError, PIN_TIMEOUT};
use watermark::Watermark;

/// Everything a running consumer shares between its tasks.
struct Shared<F> {
    spec: ConsumerSpec,
    handler: F,
    dead_letters: DeadLetters,
    idempotency: Option<Idempotency>,
    failures: HandlerFailures,
}

/// Consumes events with `handler` until `shutdown`, then lets running
/// handlers finish (bounded by the ack wait) and returns. A keyed consumer
/// ([`ConsumerSpec::keyed`]) shares its partitions with the other
/// instances running it (see `keyed`).
///
/// # Errors
///
/// When the consumer, the `DLQ` stream or the idempotency bucket cannot be
/// set up, or a keyed declaration cannot be partitioned. Per-event failures
/// never end the loop.
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
    if spec.partitions.is_some() {
        return keyed::run(js, spec, handler, shutdown).await;
    }
    if spec.watermark {
        return Err(EventError::InvalidConsumer {
            durable: spec.durable,
            reason: "a watermark is a keyed consumer's (one owner per partition, in order): add .keyed(partitions), or use .idempotent(ttl)".to_owned(),
        });
    }
    tokio::pin!(shutdown);
    let Some(stream) = wait_for_stream(&js, &spec, &mut shutdown).await? else {
        return Ok(());
    };
    // Create or update: a consumer left by an older declaration (say, a
    // server-side delivery limit) is brought in line, not kept.
    let consumer = stream
        .create_consumer(spec.config())
        .await
        .map_err(|e| EventError::js(format!("create consumer {}", spec.durable))(e))?;
    let shared = Arc::new(Shared::open(&js, spec, handler).await?);
    pump(&js, &shared, consumer, None, None, shutdown).await?;
    Ok(())
}

/// The stream `spec` consumes, once it exists (`None`: shut down first).
/// It belongs to the publishing service, which may start later.
async fn wait_for_stream(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<jetstream::stream::Stream>, EventError> {
    loop {
        match js.get_stream(&spec.stream).await {
            Ok(stream) => return Ok(Some(stream)),
            Err(e) if super::stream::is_not_found(&e) => {
                tracing::info!(stream = %spec.stream, consumer = %spec.durable, "waiting for the stream to be declared");
                tokio::select! {
                    () = &mut *shutdown => return Ok(None),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => return Err(EventError::js(format!("open stream {}", spec.stream))(e)),
        }
    }
}

impl<F> Shared<F> {
    /// Opens what the handlers share: dead letters and the idempotency
    /// bucket, if any.
    async fn open(
        js: &jetstream::Context,
        spec: ConsumerSpec,
        handler: F,
    ) -> Result<Self, EventError> {
        let dead_letters = DeadLetters::open(js).await?;
        let idempotency = match spec.idempotency_ttl {
            Some(ttl) => Some(
                Idempotency::open(
                    js,
                    &Idempotency::bucket_for(&spec.durable),
                    ttl,
                    super::idempotency::CLAIM_LEASE,
                )
                .await?,
            ),
            None => None,
        };
        Ok(Shared {
            spec,
            handler,
            dead_letters,
            idempotency,
            failures: HandlerFailures::default(),
        })
    }
}

/// Pulls from `consumer` and hands each event to a handler slot until
/// `shutdown`, then finishes what it holds. With `pinning` (a keyed
/// consumer's partition) it pulls in the priority group and settles after
/// each new pin (see `settling`); with a `watermark` it acknowledges
/// what the partition handled already without handling it (see
/// `watermark`). Returns the pin it held last.
async fn pump<T, F, Fut>(
    js: &jetstream::Context,
    shared: &Arc<Shared<F>>,
    consumer: PullConsumer,
    pinning: Option<Pinning>,
    watermark: Option<Arc<Watermark>>,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<String>, EventError>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(ReceivedEvent<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    tokio::pin!(shutdown);
    let durable = consumer.cached_info().name.clone();
    let slots = Slots::new(shared.spec.concurrency);
    let mut puller = Puller::start(js, consumer.clone(), shared.spec.concurrency, pinning)
        .await
        .map_err(|e| EventError::js(format!("subscribe for consumer {durable}"))(e))?;
    let tasks = TaskTracker::new();
    // Ordered mode: one lane per slot; a subject always maps to the same lane.
    let lanes: Vec<mpsc::UnboundedSender<(jetstream::Message, Slot)>> =
        if shared.spec.ordered_by_subject {
            (0..shared.spec.concurrency)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tasks.spawn(lane(shared.clone(), rx, watermark.clone()));
                    tx
                })
                .collect()
        } else {
            Vec::new()
        };
    // An event to its handler: on its subject's lane in ordered mode, else
    // a task of its own.
    let dispatch = |message: jetstream::Message, slot: Slot| {
        if !lanes.is_empty() {
            let index = lane_of(&message, lanes.len());
            if let Some(lane) = lanes.get(index)
                && let Err(error) = lane.send((message, slot))
            {
                tracing::error!(%error, "an ordered lane is gone; the event will be redelivered");
            }
            return;
        }
        let shared = shared.clone();
        tasks.spawn(async move {
            let _settled = handle(&shared, message, false, slot).await;
        });
    };
    let mut waiting = Waiting::new(
        shared.spec.prefetch,
        shared.spec.concurrency,
        shared.spec.ack_wait,
    );
    let mut overdue_check = tokio::time::interval(waiting.check_every());
    overdue_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut settling: Option<Settling> = None;
    // Reconnects of this consumer's connection (a node killed, the quorum
    // watch moving it): what the server had sent to the old connection is
    // lost and comes back only after its ack wait, so a partition settles
    // then as after a new pin — else its key's later events, delivered on
    // the new connection, would be handled first.
    let statistics = js.client().statistics();
    let mut connects = statistics.connects.load(Ordering::Relaxed);
    let mut settle_check = tokio::time::interval(settling::CHECK_EVERY);
    settle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mark_write = tokio::time::interval(watermark::WRITE_EVERY);
    mark_write.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Handled already (at or below the watermark): acknowledged, not handled.
    let handled_already = |message: &jetstream::Message| {
        let (Some(watermark), Ok(info)) = (&watermark, message.info()) else {
            return false;
        };
        !watermark.received(info.stream_sequence)
    };
    loop {
        // Waiting events first, in arrival order, as slots allow.
        while !waiting.is_empty()
            && let Some(slot) = slots.try_take()
            && let Some(message) = waiting.pop()
        {
            dispatch(message, slot);
        }
        let wanted = slots.free() + waiting.room(slots.finished());
        if let Err(error) = puller.ask(wanted).await {
            tracing::warn!(consumer = %durable, %error, "pull request failed; retrying");
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
        }
        let pulled = tokio::select! {
            () = &mut shutdown => break,
            // A handler finished: its slot may take a waiting event or be
            // worth a request.
            () = slots.freed() => continue,
            _ = overdue_check.tick(), if !waiting.is_empty() => {
                // Kept in order, not handed back (see `prefetch`).
                if shared.spec.ordered_by_subject {
                    for message in waiting.due_for_progress() {
                        if let Err(error) = message.ack_with(AckKind::Progress).await {
                            tracing::debug!(%error, "in-progress signal for a waiting event failed");
                        }
                    }
                } else {
                    give_back(waiting.overdue()).await;
                }
                continue;
            }
            _ = settle_check.tick(), if settling.is_some() => {
                if let Some(current) = &mut settling {
                    current.keep_alive(shared.spec.ack_wait).await;
                    let ours = slots.taken() + waiting.len() + current.len();
                    if current.settled(&consumer, ours).await
                        && let Some(done) = settling.take()
                    {
                        tracing::info!(consumer = %durable, held = done.len(), after = ?done.elapsed(), "settled: the events out before (a previous owner's, or lost in a reconnect) are done");
                        for message in done.release() {
                            waiting.push(message);
                        }
                    }
                }
                continue;
            }
            _ = mark_write.tick(), if watermark.is_some() => {
                if let Some(watermark) = &watermark {
                    watermark.write().await;
                }
                continue;
            }
            pulled = puller.next() => pulled,
        };
        let new_pin = puller.take_new_pin();
        let now_connects = statistics.connects.load(Ordering::Relaxed);
        let reconnected = std::mem::replace(&mut connects, now_connects) != now_connects;
        if (new_pin || (reconnected && puller.pin().is_some())) && settling.is_none() {
            tracing::debug!(consumer = %durable, new_pin, reconnected, "settling");
            settling = Some(Settling::new());
        }
        match pulled {
            Pulled::Event(message) if handled_already(&message) => {
                settle(&message, AckKind::Ack).await;
            }
            Pulled::Event(message) => match &mut settling {
                Some(current) => current.hold(*message),
                None => waiting.push(*message),
            },
            Pulled::Uncovered => {}
            Pulled::Refused => {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Pulled::Closed => break,
        }
    }
    // Events already here, and those that requests still out would deliver
    // to a subscription about to go (where they would wait out their ack
    // wait), are handled as slots free. A request's expiry runs from when
    // the server *read* it, which under load can be well after we sent
    // it, so the bound is generous; normally the last request's end
    // arrives within `EXPIRES`, and a silent server ends the wait after
    // `LOST_AFTER` (see `Puller::next`). What has no slot by then is
    // handed back.
    let until = tokio::time::Instant::now() + puller::EXPIRES + puller::LOST_AFTER;
    // Stopped while settling: what it holds is finished here too if the
    // previous owner's events are done by now (a restart right after a
    // takeover would otherwise hand every held event back for redelivery).
    if let Some(current) = &settling {
        let ours = slots.taken() + waiting.len() + current.len();
        if current.settled(&consumer, ours).await
            && let Some(done) = settling.take()
        {
            for message in done.release() {
                waiting.push(message);
            }
        }
    }
    let mut late = 0usize;
    loop {
        while let Some(message) = waiting.pop() {
            match tokio::time::timeout_at(until, slots.take()).await {
                Ok(Some(slot)) => dispatch(message, slot),
                _ => {
                    late += 1;
                    give_back(vec![message]).await;
                }
            }
        }
        if puller.asked() == 0 {
            break;
        }
        match tokio::time::timeout_at(until, puller.next()).await {
            Ok(Pulled::Event(message)) if handled_already(&message) => {
                settle(&message, AckKind::Ack).await;
            }
            Ok(Pulled::Event(message)) => match &mut settling {
                Some(current) => current.hold(*message),
                None => waiting.push(*message),
            },
            Ok(Pulled::Uncovered | Pulled::Refused) => {}
            Ok(Pulled::Closed) | Err(_) => break,
        }
    }
    let left: Vec<_> = std::iter::from_fn(|| waiting.pop()).collect();
    late += left.len();
    give_back(left).await;
    if late > 0 {
        tracing::info!(consumer = %durable, handed_back = late, "stopping: events no handler started in time handed back for redelivery");
    }
    if let Some(unsettled) = settling {
        // Handed back in stream order: the next owner settles too.
        tracing::info!(consumer = %durable, held = unsettled.len(), "stopped while settling; held events handed back");
        give_back(unsettled.release()).await;
    }
    drop(lanes); // lanes finish what they hold, then end
    tasks.close();
    if tokio::time::timeout(shared.spec.ack_wait, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(consumer = %durable, "handlers still running at shutdown; they will be redelivered");
    }
    if let Some(watermark) = &watermark {
        watermark.write().await;
    }
    Ok(puller.pin().map(str::to_owned))
}

/// Hands events back to the server for redelivery (no delay): they waited
/// for a slot too long, or the consumer is stopping. Not a handler
/// failure, so nothing is counted towards a dead letter.
async fn give_back(messages: Vec<jetstream::Message>) {
    for message in messages {
        settle(&message, AckKind::Nak(None)).await;
    }
}

/// The handler slots: an event is pulled only for a free one (or one
/// expected to be free shortly: see `prefetch`).
struct Slots {
    size: usize,
    free: Arc<Semaphore>,
    freed: Arc<Freed>,
}

/// Told when a slot is freed; counts the handlers finished (their pace is
/// what the prefetch allowance follows).
#[derive(Default)]
struct Freed {
    notify: Notify,
    finished: AtomicU64,
}

/// A taken slot; dropping it frees the slot and says so.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Freed>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Freed first, then told: whoever wakes sees the slot free.
        drop(self.permit.take());
        self.freed.finished.fetch_add(1, Ordering::Relaxed);
        self.freed.notify.notify_one();
    }
}

impl Slots {
    fn new(slots: usize) -> Self {
        Slots {
            size: slots,
            free: Arc::new(Semaphore::new(slots)),
            freed: Arc::new(Freed::default()),
        }
    }

    /// Handlers finished so far.
    fn finished(&self) -> u64 {
        self.freed.finished.load(Ordering::Relaxed)
    }

    fn free(&self) -> usize {
        self.free.available_permits()
    }

    /// Slots taken: events handed to handlers (or queued on a lane) and
    /// not yet settled.
    fn taken(&self) -> usize {
        self.size - self.free()
    }

    /// Until a slot is freed (or was, since the last call).
    async fn freed(&self) {
        self.freed.notify.notified().await;
    }

    /// A free slot, if there is one now.
    fn try_take(&self) -> Option<Slot> {
        let permit = self.free.clone().try_acquire_owned().ok()?;
        Some(Slot {
            permit: Some(permit),
            freed: self.freed.clone(),
        })
    }

    /// A slot, waiting for one.
    async fn take(&self) -> Option<Slot> {
        let permit = self.free.clone().acquire_owned().await.ok()?;
        Some(Slot {
            permit: Some(permit),
            freed: self.freed.clone(),
        })
    }
}
