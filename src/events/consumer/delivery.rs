//! One delivery, step by step: decode → claim (idempotency) → run the
//! handler (with in-progress signals, retried in place on an ordered lane)
//! → settle: ack, nak with the next backoff delay, or dead-letter.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::FutureExt;
use serde::de::DeserializeOwned;

use super::{ConsumerSpec, HandlerError, Shared, Slot};
use crate::codec;
use crate::events::EventError;
use crate::events::envelope::{self, DeadLetterInfo};
use crate::events::event::{Delivery, ReceivedEvent};
use crate::events::idempotency::{Claim, Idempotency};
use crate::telemetry::Hop;

/// Handles one event, in handler slot `slot`. `in_place`: retry a
/// retryable failure here (ordered lanes) instead of nak-ing it for a later
/// redelivery. Whether the event was settled for good (acknowledged, or
/// dead-lettered), not handed back.
///
/// The slot is freed just *before* the event's fate is sent: a slot taken
/// is an event certainly not yet settled, which is what a keyed partition's
/// settling counts as its own (an acknowledged event still counted would
/// let it release a later event while the server still waits for an
/// earlier one elsewhere).
pub(super) async fn handle<T, F, Fut>(
    shared: &Shared<F>,
    message: jetstream::Message,
    in_place: bool,
    slot: Slot,
) -> bool
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(ReceivedEvent<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let spec = &shared.spec;
    let mut slot = Some(slot);
    let (delivery, subject) = match message.info() {
        Ok(info) => (
            Delivery {
                stream: info.stream.to_owned(),
                consumer: info.consumer.to_owned(),
                stream_sequence: info.stream_sequence,
                delivered: u64::try_from(info.delivered).unwrap_or(1),
            },
            message.subject.as_str().to_owned(),
        ),
        Err(error) => {
            tracing::error!(%error, "a message without JetStream metadata; ignoring it");
            return false;
        }
    };
    // One span for the whole delivery: in-place retries and a
    // dead-lettering are events and children of it.
    let hop = Hop::consumer(
        &subject,
        &spec.durable,
        // Borrowed: no copy of the id per delivery.
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(codec::static_name(envelope::CE_ID)))
            .map_or("", |id| id.as_str()),
        delivery.delivered,
        codec::read_trace(message.headers.as_ref()),
    );
    let event = match ReceivedEvent::<T>::decode(&message) {
        Ok(mut event) => {
            event.delivery = Some(delivery.clone());
            event
        }
        Err(error) => {
            // Nothing a retry could fix.
            hop.fail("undecodable", &error.to_string());
            return Box::pin(dead_letter(
                shared,
                &mut slot,
                &message,
                &delivery,
                &subject,
                format!("undecodable: {error}"),
                &hop,
            ))
            .await;
        }
    };
    let event_id = event.attributes.id.clone();
    if let Some(idempotency) = &shared.idempotency {
        let mut claimed = Box::pin(idempotency.claim(&event_id)).await;
        // On an ordered lane the event's later ones wait behind it, so a
        // claim held elsewhere (an instance that died or stalled handling
        // it: its lease runs out, or it finishes) is waited for here; a nak
        // would let them overtake it.
        // Likewise an unavailable record (retried, not nak-ed).
        while in_place
            && match &claimed {
                Ok(claim) => *claim == Claim::InProgress,
                Err(EventError::InvalidAttribute { .. }) => false,
                Err(error) => {
                    tracing::warn!(%event_id, %error, "idempotency record unavailable; retrying in place");
                    true
                }
            }
        {
            let wait = tokio::time::sleep(crate::events::idempotency::CLAIM_LEASE / 5);
            Box::pin(keep_alive(&message, spec, None, wait)).await;
            claimed = Box::pin(idempotency.claim(&event_id)).await;
        }
        match claimed {
            Ok(Claim::New) => {}
            Ok(Claim::AlreadyDone) => {
                tracing::debug!(%event_id, "already processed; acknowledging");
                return finish(&mut slot, &message, AckKind::Ack).await;
            }
            Ok(Claim::InProgress) => {
                return finish(&mut slot, &message, AckKind::Nak(Some(spec.delay_after(1)))).await;
            }
            Err(error @ EventError::InvalidAttribute { .. }) => {
                // No retry makes the id shorter.
                hop.fail(error.kind_name(), &error.to_string());
                return Box::pin(dead_letter(
                    shared,
                    &mut slot,
                    &message,
                    &delivery,
                    &subject,
                    error.to_string(),
                    &hop,
                ))
                .await;
            }
            Err(error) => {
                tracing::warn!(%event_id, %error, "idempotency record unavailable; retrying later");
                return finish(
                    &mut slot,
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
    // Retries in place while the platform had no space (not failures).
    let mut waited = 0u64;
    let outcome = loop {
        let mut current = match event.take() {
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
        if crate::telemetry::exporting() {
            // The handler's calls and publishes are children of this span.
            current.trace = Some(hop.trace);
        }
        let work = AssertUnwindSafe((shared.handler)(current)).catch_unwind();
        let outcome = keep_alive(
            &message,
            spec,
            claim,
            tracing::Instrument::instrument(work, hop.span.clone()),
        )
        .await
        .unwrap_or_else(|_| Err(HandlerError::retry("handler panicked")));
        match outcome {
            // The platform cannot take it now (no space): wait in place,
            // uncounted, the claim and the ack timer kept alive.
            Err(HandlerError::Unavailable(reason)) => {
                waited += 1;
                let delay = spec.delay_after(waited);
                if waited == 1 || waited.is_power_of_two() {
                    tracing::warn!(%event_id, %reason, ?delay, waited, "the platform cannot take the event's effect now; retrying in place (not counted as a failure)");
                }
                hop.event("unavailable", &[("exception.message", reason.clone())]);
                Box::pin(keep_alive(&message, spec, claim, tokio::time::sleep(delay))).await;
            }
            Err(HandlerError::Retryable(reason)) if in_place => {
                let failed = shared.failures.record(delivery.stream_sequence);
                if failed >= spec.max_deliver {
                    break Err(HandlerError::Retryable(reason));
                }
                let delay = spec.delay_after(failed);
                tracing::info!(%event_id, %reason, ?delay, "retrying in place (ordered)");
                hop.event("retry", &[("exception.message", reason.clone())]);
                Box::pin(keep_alive(&message, spec, claim, tokio::time::sleep(delay))).await;
                delivery.delivered += 1;
            }
            other => break other,
        }
    };

    match outcome {
        Ok(()) => {
            shared.failures.forget(delivery.stream_sequence);
            if let Some(idempotency) = &shared.idempotency
                && let Err(error) = Box::pin(idempotency.done(&event_id)).await
            {
                tracing::warn!(%event_id, %error, "cannot record the event as processed");
            }
            finish(&mut slot, &message, AckKind::Ack).await
        }
        Err(error) => {
            hop.fail(
                match &error {
                    HandlerError::Retryable(_) => "retryable",
                    HandlerError::Unavailable(_) => "unavailable",
                    HandlerError::Permanent(_) => "permanent",
                },
                error.reason(),
            );
            if let Some(idempotency) = &shared.idempotency
                && let Err(e) = Box::pin(idempotency.release(&event_id)).await
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
                // Never leaves the loop above; were it to, it is no failure.
                HandlerError::Unavailable(reason) => {
                    tracing::info!(%event_id, %reason, "retrying later (not counted)");
                    finish(&mut slot, &message, AckKind::Nak(Some(spec.delay_after(1)))).await
                }
                HandlerError::Retryable(reason) if failed < spec.max_deliver => {
                    let delay = spec.delay_after(failed);
                    tracing::info!(%event_id, %reason, ?delay, "retrying later");
                    finish(&mut slot, &message, AckKind::Nak(Some(delay))).await
                }
                HandlerError::Retryable(reason) | HandlerError::Permanent(reason) => {
                    shared.failures.forget(delivery.stream_sequence);
                    Box::pin(dead_letter(
                        shared, &mut slot, &message, &delivery, &subject, reason, &hop,
                    ))
                    .await
                }
            }
        }
    }
}

/// Runs `work` while telling the server the event is still being worked on
/// (if enabled) and renewing the idempotency claim (so a long handler's
/// claim is never taken over by a redelivery).
pub(super) async fn keep_alive<O>(
    message: &jetstream::Message,
    spec: &ConsumerSpec,
    claim: Option<(&Idempotency, &str)>,
    work: impl Future<Output = O>,
) -> O {
    if !spec.progress && claim.is_none() {
        return work.await;
    }
    tokio::pin!(work);
    // A handler that finishes without waiting needs no ticker (a timer
    // registered and cancelled per event).
    if let std::task::Poll::Ready(out) = futures::poll!(&mut work) {
        return out;
    }
    // Often enough for both: the ack wait and, with a claim, its lease.
    let mut every = spec.ack_wait / 3;
    if claim.is_some() {
        every = every.min(crate::events::idempotency::CLAIM_LEASE / 3);
    }
    let every = every.max(Duration::from_millis(50));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => {
                // Boxed, here and below: a tick is rare, and these futures
                // inline would grow every delivery's future (see `handle`).
                if spec.progress
                    && let Err(error) = Box::pin(message.ack_with(AckKind::Progress)).await
                {
                    tracing::debug!(%error, "in-progress signal failed");
                }
                if let Some((idempotency, id)) = claim
                    && let Err(error) = Box::pin(idempotency.renew(id)).await
                {
                    tracing::debug!(%error, "claim renewal failed");
                }
            }
        }
    }
}

async fn dead_letter<F>(
    shared: &Shared<F>,
    slot: &mut Option<Slot>,
    message: &jetstream::Message,
    delivery: &Delivery,
    subject: &str,
    error: String,
    hop: &Hop,
) -> bool {
    hop.event("dead_letter", &[("exception.message", error.clone())]);
    let info = DeadLetterInfo {
        subject: subject.to_owned(),
        stream: delivery.stream.clone(),
        // The consumer as declared: a keyed one's partitions share its
        // dead letters (and its user may write only that subject).
        consumer: shared.spec.durable.clone(),
        stream_sequence: delivery.stream_sequence,
        deliveries: delivery.delivered,
        error,
        failed_at: crate::events::now_rfc3339(),
    };
    let put = shared.dead_letters.put(
        &info,
        message.headers.as_ref(),
        message.payload.clone(),
        crate::telemetry::exporting().then_some(hop.trace),
    );
    match put.await {
        Ok(()) => finish(slot, message, AckKind::Term).await,
        Err(e) => {
            // Not stored as a dead letter: keep it in the stream and retry.
            tracing::error!(error = %e, "cannot write the dead letter; retrying the event later");
            finish(
                slot,
                message,
                AckKind::Nak(Some(shared.spec.delay_after(delivery.delivered))),
            )
            .await
        }
    }
}

/// Frees the event's handler slot, then sends its fate (see [`handle`]).
async fn finish(slot: &mut Option<Slot>, message: &jetstream::Message, kind: AckKind) -> bool {
    drop(slot.take());
    settle(message, kind).await
}

/// Sends the event's fate; whether it is settled for good (ack or term:
/// its handling is over, even if the acknowledgement is lost on the way).
pub(super) async fn settle(message: &jetstream::Message, kind: AckKind) -> bool {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, ?kind, "acknowledgement failed; the event may be redelivered");
    }
    matches!(kind, AckKind::Ack | AckKind::Term)
}
