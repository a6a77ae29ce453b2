//! Live events as Server-Sent Events, for every HTTP front end.

use std::convert::Infallible;

use axum::response::sse::{Event as Sse, KeepAlive, Sse as SseResponse};
use futures::{Stream, StreamExt};
use serde_json::json;

use crate::events::live::{self, LiveItem};

/// Why a live feed cannot be watched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// The subject is not `events.>` or one under `events.` (400).
    #[error("subject must be events.> or start with events.")]
    BadFilter,
    /// The subscription cannot be made (503).
    #[error("events unavailable: {0}")]
    Unavailable(#[from] async_nats::SubscribeError),
}

/// `GET …/events[?subject=]`: watches `subject` (default `events.>`) as
/// [`live_events`].
///
/// # Errors
///
/// [`LiveError`]: a subject that may not be watched, or no subscription.
pub async fn watch_events(
    nats: &async_nats::Client,
    subject: Option<String>,
) -> Result<axum::response::Response, LiveError> {
    let subject = subject.unwrap_or_else(|| "events.>".to_owned());
    if !live::valid_filter(&subject) {
        return Err(LiveError::BadFilter);
    }
    let items = live::watch(nats, subject).await?;
    Ok(axum::response::IntoResponse::into_response(live_events(
        items,
    )))
}

/// Live events as Server-Sent Events: each an SSE event `event` (id: the
/// event's `ce-id`; data: [`LiveEvent`](crate::events::live::LiveEvent)
/// as JSON), losses as an SSE event `dropped` (`{"dropped": n}`).
pub fn live_events(
    items: impl Stream<Item = LiveItem> + Send + 'static,
) -> SseResponse<impl Stream<Item = Result<Sse, Infallible>>> {
    let events = items.map(|item| {
        Ok(match item {
            LiveItem::Event(event) => {
                let id = event.attributes.as_ref().map(|a| a.id.clone());
                let mut sse = Sse::default()
                    .event("event")
                    .data(serde_json::to_string(&event).unwrap_or_default());
                if let Some(id) = id {
                    sse = sse.id(id);
                }
                sse
            }
            LiveItem::Dropped(dropped) => Sse::default()
                .event("dropped")
                .data(json!({ "dropped": dropped }).to_string()),
        })
    });
    SseResponse::new(events).keep_alive(KeepAlive::default())
}
