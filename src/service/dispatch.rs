//! Taking requests off an endpoint's subscription and answering each.
//!
//! Requests run concurrently, up to the endpoint's `max_in_flight`; up to
//! `max_queued` more wait for a slot; beyond that the answer is 429 at once,
//! so memory stays bounded under overload and a slow endpoint never holds up
//! a sibling (each endpoint has its own loop and limits). Every accepted
//! request gets exactly one reply: its result, a 400 for bad input, a 504
//! when its deadline passed, or a 500 when the handler panicked.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::Message;
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Context;
use super::endpoint::Endpoint;
use super::stats::EndpointCounters;
use crate::client::Client;
use crate::codec::{self, Encoding};
use crate::error::ServiceError;
use crate::telemetry::Hop;

/// An endpoint while it serves.
#[derive(Debug)]
pub(crate) struct LiveEndpoint {
    pub(crate) endpoint: Endpoint,
    pub(crate) name: Arc<str>,
    pub(crate) service: Arc<str>,
    pub(crate) subject: String,
    pub(crate) queue_group: String,
    pub(crate) counters: EndpointCounters,
    pub(crate) slots: Arc<Semaphore>,
    /// The connection replies go out on.
    pub(crate) nats: async_nats::Client,
    /// The client handlers call other endpoints with.
    pub(crate) client: Client,
}

impl LiveEndpoint {
    pub(crate) fn in_flight(&self) -> usize {
        self.endpoint
            .max_in_flight
            .saturating_sub(self.slots.available_permits())
    }
}

/// Serves `subscription` until `stop` is cancelled; then drains it (stops
/// taking new requests, still answers those already delivered) and returns.
/// Request tasks are spawned on `tracker`, which the caller waits on.
pub(crate) async fn serve(
    live: Arc<LiveEndpoint>,
    mut subscription: async_nats::Subscriber,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            message = subscription.next() => match message {
                Some(message) => accept(&live, message, &tracker).await,
                None => return,
            },
        }
    }
    // Unsubscribe, and answer everything the server routed here before it
    // processed the UNSUB: the subscription ends only when the server has
    // confirmed it (a PING after the UNSUB, answered; the workspace's
    // patched async-nats, vendor/async-nats/PATCH.md), so no request sent
    // to this instance is dropped on the way out.
    if let Err(error) = subscription.drain().await {
        tracing::warn!(endpoint = %live.name, %error, "cannot drain the subscription");
        return;
    }
    while let Some(message) = subscription.next().await {
        accept(&live, message, &tracker).await;
    }
}

async fn accept(live: &Arc<LiveEndpoint>, mut message: Message, tracker: &TaskTracker) {
    let received = Instant::now();
    let Some(reply) = message.reply.take() else {
        // Nobody waits for an answer: nothing to reply to, but count it.
        let error = ServiceError::bad_request("request without a reply subject");
        tracing::warn!(endpoint = %live.name, "dropping a request without a reply subject");
        live.counters.record(received.elapsed(), Some(&error));
        return;
    };
    live.counters.accepted.fetch_add(1, Ordering::Relaxed);
    let deadline = codec::read_timeout(message.headers.as_ref());
    let mut request = Request {
        live: live.clone(),
        message,
        reply,
        deadline: None,
        received,
        reply_encoding: Encoding::Json,
    };
    match deadline {
        // Bounded by codec::MAX_TIMEOUT_MS, so the addition cannot overflow.
        Ok(timeout) => request.deadline = timeout.map(|t| received + t),
        Err(error) => return request.answer(Err(error)).await,
    }
    match live.slots.clone().try_acquire_owned() {
        Ok(permit) => {
            // The first poll runs here, on the endpoint's loop: a handler
            // that finishes without waiting (most do) is answered without
            // a task, and the replies of a burst of requests leave in one
            // write instead of one write each. Only a handler that has to
            // wait becomes a task of its own; boxed first, so the future
            // may move after it was polled.
            let mut work = Box::pin(request.run(permit));
            if futures::poll!(work.as_mut()).is_pending() {
                tracker.spawn(work);
            }
        }
        Err(_) if live.counters.queued() < live.endpoint.max_queued => {
            live.counters.queued.fetch_add(1, Ordering::Relaxed);
            let slots = live.slots.clone();
            tracker.spawn(async move {
                let permit = slots.acquire_owned().await;
                request.live.counters.queued.fetch_sub(1, Ordering::Relaxed);
                match permit {
                    Ok(permit) => request.run(permit).await,
                    Err(_) => {
                        request
                            .answer(Err(ServiceError::unavailable("shutting down")))
                            .await
                    }
                }
            });
        }
        Err(_) => {
            live.counters.rejected.fetch_add(1, Ordering::Relaxed);
            let error = ServiceError::overloaded(format!(
                "{} has {} requests in flight and {} queued; retry later",
                live.subject, live.endpoint.max_in_flight, live.endpoint.max_queued
            ));
            request.answer(Err(error)).await;
        }
    }
}

/// One accepted request: all it owns besides the message is a reference
/// to its endpoint, so accepting costs one reference count.
struct Request {
    live: Arc<LiveEndpoint>,
    message: Message,
    reply: async_nats::Subject,
    deadline: Option<Instant>,
    received: Instant,
    /// What a successful reply is encoded in (errors are always JSON).
    reply_encoding: Encoding,
}

impl Request {
    async fn run(mut self, _slot: OwnedSemaphorePermit) {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            let error = ServiceError::deadline_exceeded(
                "the caller's deadline passed before the request was worked on",
            );
            return self.answer(Err(error)).await;
        }
        let headers = self.message.headers.as_ref();
        let encoding = match codec::request_encoding(headers) {
            Ok(encoding) => encoding,
            Err(error) => return self.answer(Err(error)).await,
        };
        self.reply_encoding = codec::reply_encoding(headers, encoding);
        let hop = Hop::server(
            &self.live.service,
            &self.live.name,
            &self.message.subject,
            codec::read_trace(self.message.headers.as_ref()),
        );
        let ctx = Context {
            endpoint: self.live.name.clone(),
            subject: self.message.subject.clone(),
            deadline: self.deadline,
            trace: hop.trace,
            headers: self.message.headers.take(),
            client: self.live.client.clone(),
            encoding,
            accept: self.reply_encoding,
        };
        let span = hop.span.clone();
        let work = (self.live.endpoint.handler)(ctx, self.message.payload.clone());
        let work = AssertUnwindSafe(work)
            .catch_unwind()
            .instrument(span.clone());
        let outcome = match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, work).await.ok(),
            None => Some(work.await),
        };
        let result = match outcome {
            None => Err(ServiceError::deadline_exceeded(
                "the caller's deadline passed while the request was worked on",
            )),
            Some(Ok(result)) => result,
            Some(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                span.in_scope(|| tracing::error!(panic = %what, "handler panicked"));
                // The panic's text stays in the log: it may hold internals.
                Err(ServiceError::internal("internal error"))
            }
        };
        if let Err(error) = &result {
            hop.fail(&error.code.to_string(), &error.message);
        }
        self.answer(result).await;
    }

    async fn answer(self, mut result: Result<bytes::Bytes, ServiceError>) {
        let max_payload = crate::limits::max_payload(&self.live.nats);
        if let Ok(body) = &result
            && body.len() > max_payload
        {
            // Sent as it is, it would be refused and the caller would wait
            // for nothing; a 500 tells it at once.
            tracing::error!(endpoint = %self.live.name, size = body.len(), max_payload, "reply larger than the server's max_payload");
            result = Err(ServiceError::internal(
                "the reply is larger than the server accepts",
            ));
        }
        let published = match &result {
            Ok(body) => match codec::reply_headers(self.reply_encoding) {
                None => self.live.nats.publish(self.reply, body.clone()).await,
                Some(headers) => {
                    self.live
                        .nats
                        .publish_with_headers(self.reply, headers, body.clone())
                        .await
                }
            },
            Err(error) => {
                let (headers, body) = codec::error_reply(error);
                self.live
                    .nats
                    .publish_with_headers(self.reply, headers, body)
                    .await
            }
        };
        match published {
            Ok(()) => {
                self.live.counters.answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(endpoint = %self.live.name, %error, "cannot send the reply");
            }
        }
        self.live
            .counters
            .record(self.received.elapsed(), result.as_ref().err());
    }
}
