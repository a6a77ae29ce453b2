//! Fetching as slots free up, without a round trip per batch.
//!
//! A consumer must not pull far more events than it has free handler
//! slots: an event waiting in a local buffer has its ack timer running, and
//! a buffer that outlives the ack wait turns into redeliveries (how far
//! ahead is safe is `prefetch`'s business). Pulling exactly what
//! is free with one fetch at a time (a subscription, a request, the batch,
//! the unsubscribe) keeps that promise but leaves the consumer idle for a
//! round trip after every batch — at 64 fast handlers, a third of the time.
//!
//! So one subscription lives as long as the consumer, and pull requests are
//! *pipelined*: the puller knows how many events it has asked for and not
//! yet received, and asks for more the moment enough room is free that no
//! request covers — in requests of at least a quarter of what the consumer
//! may hold (its slots, plus the prefetch while handlers are fast: fewer,
//! larger pulls, each of which costs the server a wake-up), or whatever is
//! free when nothing is asked for at all.
//! Asked-for events never exceed what the consumer says it can take (its
//! free slots, plus the short wait `prefetch` allows).
//!
//! A partition of a keyed consumer is pulled in a priority group with the
//! `pinned_client` policy (ADR-42): the server delivers to one puller at a
//! time and names it in `Nats-Pin-Id`, which every later request repeats.
//! A new pin is reported ([`Puller::take_new_pin`]): the events another
//! puller left unacknowledged must be handled before those that follow
//! them (see `settling`).
//!
//! A request the server forgets (a restart, a leader change, a reconnect)
//! would leave the count stuck: each request expires after [`EXPIRES`] with
//! a status saying how many of it were not filled, and if nothing at all is
//! heard for longer than that, the count is reset.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull::BatchConfig};
use async_nats::{StatusCode, Subscriber};
use futures::StreamExt;
use tokio::time::Instant;

/// How long the server keeps a pull request that is not filled.
pub(super) const EXPIRES: Duration = Duration::from_secs(1);

/// Silence after which outstanding requests are taken as lost.
pub(super) const LOST_AFTER: Duration = Duration::from_secs(3);

/// JetStream's header with how many events of an ended request were not
/// delivered.
const PENDING_MESSAGES: &str = "Nats-Pending-Messages";

/// The header naming the pinned puller of a priority group (ADR-42).
const PIN_ID: &str = "Nats-Pin-Id";

/// A pull request as JetStream reads it (`$JS.API.CONSUMER.MSG.NEXT`),
/// with the priority group and pin that async-nats' own `BatchConfig`
/// cannot carry.
#[derive(serde::Serialize)]
struct PullRequest<'a> {
    batch: usize,
    /// Nanoseconds.
    expires: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(rename = "id", skip_serializing_if = "Option::is_none")]
    pin: Option<&'a str>,
}

/// The priority group a puller pulls in, and its pin.
#[derive(Debug, Default)]
pub(super) struct Pinning {
    group: String,
    /// The `Nats-Pin-Id` the server gave this puller, if it is pinned.
    pin: Option<String>,
    /// A pin arrived that [`Puller::take_new_pin`] has not reported yet.
    new_pin: bool,
}

impl Pinning {
    pub(super) fn group(group: impl Into<String>) -> Self {
        Pinning {
            group: group.into(),
            ..Pinning::default()
        }
    }
}

/// What [`Puller::next`] brings.
pub(super) enum Pulled {
    /// An event.
    Event(Box<jetstream::Message>),
    /// Requests ended or were lost: slots may be free that no request
    /// covers (ask again).
    Uncovered,
    /// The server answered the requests with an error (logged); wait a
    /// little before asking again.
    Refused,
    /// The connection closed.
    Closed,
}

/// One consumer's pull requests and the subscription they are answered on.
pub(super) struct Puller {
    consumer: PullConsumer,
    context: jetstream::Context,
    inbox: String,
    answers: Subscriber,
    /// Events asked for and not yet received (nor expired).
    asked: usize,
    /// Smallest request worth sending while others are outstanding, at
    /// the least (see [`Puller::ask`]).
    least: usize,
    heard: Instant,
    /// Pulled in a priority group (a keyed consumer's partition).
    pinning: Option<Pinning>,
}

impl Puller {
    pub(super) async fn start(
        js: &jetstream::Context,
        consumer: PullConsumer,
        slots: usize,
        pinning: Option<Pinning>,
    ) -> Result<Self, async_nats::SubscribeError> {
        let nats = js.client();
        let inbox = nats.new_inbox();
        let answers = nats.subscribe(inbox.clone()).await?;
        Ok(Puller {
            consumer,
            context: js.clone(),
            inbox,
            answers,
            asked: 0,
            least: (slots / 4).max(1),
            heard: Instant::now(),
            pinning,
        })
    }

    /// The pin this puller holds, if any.
    pub(super) fn pin(&self) -> Option<&str> {
        self.pinning.as_ref().and_then(|p| p.pin.as_deref())
    }

    /// Whether the server pinned this puller since the last call (a
    /// takeover: other pullers' unacknowledged events may be out).
    pub(super) fn take_new_pin(&mut self) -> bool {
        self.pinning
            .as_mut()
            .is_some_and(|p| std::mem::take(&mut p.new_pin))
    }

    async fn request(&self, batch: usize) -> Result<(), async_nats::Error> {
        let Some(pinning) = &self.pinning else {
            let request = BatchConfig {
                batch,
                expires: Some(EXPIRES),
                ..Default::default()
            };
            self.consumer
                .request_batch(request, self.inbox.clone().into())
                .await?;
            return Ok(());
        };
        let info = self.consumer.cached_info();
        let subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            info.stream_name, info.name
        );
        let request = PullRequest {
            batch,
            expires: u64::try_from(EXPIRES.as_nanos()).unwrap_or(u64::MAX),
            group: Some(&pinning.group),
            pin: pinning.pin.as_deref(),
        };
        let payload = serde_json::to_vec(&request)?;
        self.context
            .client()
            .publish_with_reply(subject, self.inbox.clone(), payload.into())
            .await?;
        Ok(())
    }

    /// Notes the pin an event arrived with.
    fn pinned_by(&mut self, message: &async_nats::Message) {
        let Some(pinning) = &mut self.pinning else {
            return;
        };
        let pin = message
            .headers
            .as_ref()
            .and_then(|h| h.get(PIN_ID))
            .map(|v| v.as_str());
        if let Some(pin) = pin
            && pinning.pin.as_deref() != Some(pin)
        {
            pinning.pin = Some(pin.to_owned());
            pinning.new_pin = true;
        }
    }

    /// Events asked for and not yet received nor expired.
    pub(super) fn asked(&self) -> usize {
        self.asked
    }

    /// Asks for the room (`wanted`: free slots and prefetch) no request
    /// covers yet, if that is worth a request.
    ///
    /// # Errors
    ///
    /// The request could not be sent (the connection).
    pub(super) async fn ask(&mut self, wanted: usize) -> Result<(), async_nats::Error> {
        let uncovered = wanted.saturating_sub(self.asked);
        // A quarter of the slots, or of all the consumer may hold when the
        // prefetch adds to them: 16 fast handlers with 256 prefetched
        // would otherwise send a request per 4 events (measured: 0.84× →
        // 0.87× a raw pull consumer with the cap at 128).
        let least = self.least.max(wanted / 4);
        if uncovered == 0 || (self.asked > 0 && uncovered < least) {
            return Ok(());
        }
        if self.asked == 0 {
            self.heard = Instant::now();
        }
        self.request(uncovered).await?;
        self.asked += uncovered;
        Ok(())
    }

    /// The next event, or why there is none now.
    pub(super) async fn next(&mut self) -> Pulled {
        loop {
            let answer = if self.asked == 0 {
                self.answers.next().await
            } else {
                match tokio::time::timeout_at(self.heard + LOST_AFTER, self.answers.next()).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        tracing::debug!(
                            asked = self.asked,
                            "pull requests lost (no answer); asking again"
                        );
                        self.asked = 0;
                        return Pulled::Uncovered;
                    }
                }
            };
            let Some(message) = answer else {
                return Pulled::Closed;
            };
            self.heard = Instant::now();
            match message.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    self.asked = self.asked.saturating_sub(1);
                    self.pinned_by(&message);
                    return Pulled::Event(Box::new(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    }));
                }
                StatusCode::IDLE_HEARTBEAT => {}
                // Another puller holds the pin now (it was moved, or ours
                // lapsed): ask again without one; the server pins whoever
                // it pins next.
                StatusCode::PIN_ID_MISMATCH => {
                    if let Some(pinning) = &mut self.pinning {
                        pinning.pin = None;
                    }
                    self.asked = 0;
                    return Pulled::Uncovered;
                }
                // A request ended (expired, or cut short by the server):
                // the header says how much of it was not filled.
                StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED => {
                    let unfilled = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(PENDING_MESSAGES))
                        .and_then(|v| v.as_str().parse::<usize>().ok());
                    match unfilled {
                        Some(unfilled) => self.asked = self.asked.saturating_sub(unfilled),
                        // A bare refusal (say, a limit exceeded) for a
                        // request of unknown size: start the count afresh.
                        None => {
                            tracing::warn!(status = %message.status.unwrap_or(StatusCode::OK), description = ?message.description, "pull request refused");
                            self.asked = 0;
                            return Pulled::Refused;
                        }
                    }
                    return Pulled::Uncovered;
                }
                status => {
                    tracing::warn!(%status, description = ?message.description, "pull request failed");
                    self.asked = 0;
                    return Pulled::Refused;
                }
            }
        }
    }
}
