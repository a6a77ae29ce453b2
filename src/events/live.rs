//! Events as they are published, for people watching (an HTTP front end's
//! `/events`, the dashboard's feed): a plain subscription, no durable
//! consumer, nothing acknowledged — watching never changes what services
//! receive.
//!
//! Each watcher has its own bounded buffer. A watcher that reads too slowly
//! loses events, never slows the connection or other watchers, and is told
//! how many it missed ([`LiveItem::Dropped`]).

use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use super::envelope::{self, EventAttributes};

/// Events buffered per watcher before it starts losing them.
pub const BUFFER: usize = 256;

/// One event as watchers see it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    /// The event's subject as declared (`events.parcels.shipped`), without
    /// the shard token the publisher adds (see `events::partition`).
    pub subject: String,
    /// The shard it was published in (the subject's last token), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// Its CloudEvents attributes (`None` for a message that is not one).
    pub attributes: Option<EventAttributes>,
    /// The data: JSON as it came, else the payload as text.
    pub data: serde_json::Value,
    /// The trace it belongs to (from its `traceparent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl LiveEvent {
    /// Reads a published message.
    pub fn from_message(message: &async_nats::Message) -> Self {
        LiveEvent {
            subject: super::partition::declared_subject(&message.subject).to_owned(),
            shard: super::partition::shard_of_subject(&message.subject),
            attributes: envelope::read_event_attributes(message.headers.as_ref()).ok(),
            data: serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned())
            }),
            trace_id: crate::codec::read_trace(message.headers.as_ref()).map(|t| t.trace_id()),
        }
    }
}

/// What a watcher receives.
#[derive(Debug, Clone)]
pub enum LiveItem {
    /// An event.
    Event(Box<LiveEvent>),
    /// This many events were lost since the last item (the watcher was slow).
    Dropped(u64),
}

/// Whether `subject` may be watched: `events.>` or a subject (or wildcard)
/// under `events.`, and one the server accepts (a SUB line it refused
/// would close the connection, every other watcher's too).
pub fn valid_filter(subject: &str) -> bool {
    (subject == "events.>" || subject.starts_with("events."))
        && crate::limits::check_subject(subject).is_ok()
        && !subject.chars().any(|c| c.is_whitespace() || c.is_control())
        && !subject.split('.').any(str::is_empty)
}

/// Watches `subject` (checked with [`valid_filter`] by the caller): the
/// events published to it, with any shard token. The stream ends when the
/// connection does; dropping it unsubscribes.
///
/// # Errors
///
/// The subscription cannot be made (connection closed).
pub async fn watch(
    nats: &async_nats::Client,
    subject: String,
) -> Result<impl Stream<Item = LiveItem> + Send + 'static, async_nats::SubscribeError> {
    let mut subscription = match crate::events::partition::delivery_filters(&[subject]).as_slice() {
        [bare, sharded] => futures::stream::select(
            nats.subscribe(bare.clone()).await?,
            nats.subscribe(sharded.clone()).await?,
        )
        .boxed(),
        [all] => nats.subscribe(all.clone()).await?.boxed(),
        _ => futures::stream::empty().boxed(),
    };
    let (tx, rx) = mpsc::channel::<LiveItem>(BUFFER);
    tokio::spawn(async move {
        let mut dropped: u64 = 0;
        loop {
            let message = tokio::select! {
                message = subscription.next() => message,
                () = tx.closed() => None, // the watcher went away
            };
            let Some(message) = message else { break };
            if dropped > 0 && tx.try_send(LiveItem::Dropped(dropped)).is_ok() {
                dropped = 0;
            }
            if tx
                .try_send(LiveItem::Event(Box::new(LiveEvent::from_message(&message))))
                .is_err()
            {
                dropped += 1;
            }
        }
        // Dropping the subscriptions unsubscribes.
        drop(subscription);
    });
    Ok(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}
