//! The transactional outbox: events committed with the state that implies
//! them, published afterwards until the server has them — exactly once in
//! effect, whatever crashes in between.
//!
//! A module of its own because it sits between the two it joins: `state`
//! writes pending events onto its KV messages (this module's format), and
//! the [`relay`] publishes them through `events`; neither of those imports
//! the other through it.
//!
//! # What is written, in which order
//!
//! 1. **Commit** ([`Transaction`](crate::state::Transaction)): the events
//!    ride on the KV message of the state write itself, in the
//!    `Switchboard-Outbox` header (subject, CloudEvents headers and data of
//!    each). One message — one compare-and-set write, as fast as a plain
//!    update — or, for a change of several keys, one ADR-50 atomic batch.
//!    There is no state without its events and no event without its state.
//! 2. **Publish** ([`relay`]): a durable pull consumer `outbox` on the
//!    bucket's stream receives every write; one that carries events has
//!    them published with `Nats-Msg-Id` = `ce-id`, waiting for the acks.
//! 3. **Ack** the write to the relay consumer: its ack floor is how far
//!    the bucket's events are published.
//!
//! A write that replaces a value whose events are not yet published (its
//! revision is above the relay's ack floor) carries them forward onto the
//! new message, so an overwrite never loses them — the bucket keeps one
//! revision per key, and the server drops the old message. A repeat
//! publish is a duplicate (below).
//!
//! # What a crash at each step leaves, and how it is finished
//!
//! | crash | left behind | finished by |
//! |---|---|---|
//! | before 1 completes | nothing (the write is not stored) | the caller's retry, if any |
//! | between 1 and 2 | the write with its events, unacked | redelivery to any relay instance after [`ACK_WAIT`] |
//! | during 2 (sent, acks lost) | events stored, the write unacked | redelivery: published again, dropped by JetStream as duplicates (same `Nats-Msg-Id`) |
//! | between 2 and 3 | as above | as above |
//! | anywhere, then the key is written again | the new write carries the events forward | the relay, from the new write |
//!
//! The duplicate window of the event stream (2 minutes by default) covers a
//! relay restart; a re-publish later than that is still one effect, because
//! consumers that declare [`idempotent`](crate::events::ConsumerSpec::idempotent)
//! handling key their effect by `ce-id`.
//!
//! Order: events are published in commit order; a publish that fails is
//! retried later, after events committed after it (events of one record
//! that must be seen in order are ordered by their consumers' lanes).

mod relay;

use std::time::Duration;

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::events::envelope::{self, OUTBOX};
use crate::events::{Event, EventError, Publisher};

pub use relay::relay;

/// The durable name of every bucket's relay consumer.
pub const RELAY_DURABLE: &str = "outbox";
/// How long a write may stay unacknowledged before another relay takes it.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// One event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingEvent {
    subject: String,
    headers: Vec<(String, String)>,
    data: String,
}

impl PendingEvent {
    /// `event` as `publisher` would publish it to `subject`: its
    /// CloudEvents headers (without `Nats-Msg-Id`: the relay adds it when it
    /// publishes) and data.
    pub(crate) fn of<T: serde::Serialize>(
        publisher: &Publisher,
        subject: &str,
        event: &Event<T>,
    ) -> Result<Self, EventError> {
        let (headers, payload) = event.encode(publisher.source(), subject)?;
        let subject = crate::events::partition::keyed_subject(subject, event.key());
        PendingEvent::new(&subject, &headers, &payload)
    }

    pub(crate) fn new(
        subject: &str,
        headers: &HeaderMap,
        payload: &[u8],
    ) -> Result<Self, EventError> {
        let mut pairs = Vec::new();
        for (name, values) in headers.iter() {
            for value in values {
                pairs.push((name.to_string(), value.as_str().to_owned()));
            }
        }
        let data = String::from_utf8(payload.to_vec()).map_err(|e| EventError::JetStream {
            action: format!("keep an event for {subject} in the outbox"),
            message: "the event's data is not UTF-8 JSON".to_owned(),
            source: Some(Box::new(e)),
        })?;
        Ok(PendingEvent {
            subject: subject.to_owned(),
            headers: pairs,
            data,
        })
    }

    fn id(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name == envelope::CE_ID)
            .map(|(_, value)| value.as_str())
    }
}

/// The `Switchboard-Outbox` header value for `events` (compact JSON: one
/// line, as a header must be).
pub(crate) fn encode_pending(events: &[PendingEvent]) -> String {
    serde_json::to_string(events).unwrap_or_default()
}

/// The events a message carries (none without the header).
///
/// # Errors
///
/// A header that is not a list of events (written by hand).
pub(crate) fn decode_pending(headers: Option<&HeaderMap>) -> Result<Vec<PendingEvent>, String> {
    match headers.and_then(|h| h.get(OUTBOX)) {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text.as_str()).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_events_survive_the_header() {
        let mut headers = HeaderMap::new();
        headers.insert(envelope::CE_ID, "o-1-created");
        headers.insert(envelope::CE_TYPE, "invoices.created");
        let event = PendingEvent::new(
            "events.invoices.created",
            &headers,
            br#"{"id":"o-1","note":"line\nbreak"}"#,
        );
        let Ok(event) = event else {
            panic!("not kept: {event:?}");
        };
        let text = encode_pending(std::slice::from_ref(&event));
        assert!(!text.contains(['\r', '\n']), "one header line: {text}");
        let mut carried = HeaderMap::new();
        carried.insert(OUTBOX, text.as_str());
        assert_eq!(decode_pending(Some(&carried)), Ok(vec![event.clone()]));
        assert_eq!(event.id(), Some("o-1-created"));
        assert_eq!(decode_pending(None), Ok(Vec::new()));
        let mut broken = HeaderMap::new();
        broken.insert(OUTBOX, "[{");
        assert!(decode_pending(Some(&broken)).is_err());
    }
}
