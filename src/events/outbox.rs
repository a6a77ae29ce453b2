//! The transactional outbox: events committed with the state that implies
//! them, published afterwards until the server has them — exactly once in
//! effect, whatever crashes in between.
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
//! consumers that declare [`idempotent`](super::ConsumerSpec::idempotent)
//! handling key their effect by `ce-id`.
//!
//! Order: events are published in commit order; a publish that fails is
//! retried later, after events committed after it (events of one record
//! that must be seen in order are ordered by their consumers' lanes).

use std::future::Future;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::EventError;
use super::envelope::{self, OUTBOX};
use super::group_commit::{GroupCommit, GroupCommitConfig};
use super::publisher::{producer_span, settled};

/// The durable name of every bucket's relay consumer.
pub const RELAY_DURABLE: &str = "outbox";
/// How long a write may stay unacknowledged before another relay takes it.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// Most writes handled as one round (their publishes in flight together).
const ROUND: usize = 256;
/// Wait before a failed publish is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// One event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingEvent {
    subject: String,
    headers: Vec<(String, String)>,
    data: String,
}

impl PendingEvent {
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

/// Publishes the events committed in `bucket` until `shutdown` (see the
/// module docs). Every instance of the owning service runs one; they share
/// the durable consumer.
///
/// # Errors
///
/// When the bucket or the relay consumer cannot be opened.
pub async fn relay(
    js: jetstream::Context,
    bucket: String,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EventError> {
    tokio::pin!(shutdown);
    // The events of a round's writes, grouped into atomic batches.
    let group = GroupCommit::new(js.clone(), GroupCommitConfig::default());
    let kv = js
        .get_key_value(&bucket)
        .await
        .map_err(|e| EventError::js(format!("open bucket {bucket}"))(e))?;
    let consumer = kv
        .stream
        .create_consumer(pull::Config {
            durable_name: Some(RELAY_DURABLE.to_owned()),
            description: Some(format!("publishes the events committed in {bucket}")),
            filter_subject: format!("$KV.{bucket}.>"),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: 4 * ROUND as i64,
            // The events are in the header; the value is not needed here.
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| EventError::js(format!("create the outbox relay of {bucket}"))(e))?;
    loop {
        let messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%bucket, %error, "outbox relay cannot fetch; retrying");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        let mut rounds = messages.ready_chunks(ROUND);
        loop {
            let round = tokio::select! {
                () = &mut shutdown => return Ok(()),
                round = rounds.next() => round,
            };
            let Some(round) = round else { break };
            let mut writes = Vec::with_capacity(round.len());
            let mut broken = false;
            for message in round {
                match message {
                    Ok(message) => writes.push(message),
                    Err(error) => {
                        tracing::warn!(%bucket, %error, "outbox relay stream broke; fetching again");
                        broken = true;
                    }
                }
            }
            publish_round(&group, writes).await;
            if broken {
                break;
            }
        }
    }
}

/// Publishes the events of a round of writes (all in flight together,
/// handed to the group commit's one lane in commit order, so the events of
/// many writes are stored as one batch, in order), then acks each write
/// whose events the streams stored.
async fn publish_round(group: &GroupCommit, writes: Vec<jetstream::Message>) {
    let settled = writes.into_iter().map(|message| async move {
        let events = match decode_pending(message.headers.as_ref()) {
            Ok(events) => events,
            Err(reason) => {
                // Only a hand-written header can be malformed: keep what can
                // never be published from blocking the rest.
                tracing::error!(subject = %message.subject, %reason, "dropping malformed outbox events");
                ack(&message, AckKind::Term).await;
                return;
            }
        };
        let published = events.into_iter().map(|event| publish(group, event));
        for stored in futures::future::join_all(published).await {
            if let Err(error) = stored {
                tracing::warn!(subject = %message.subject, %error, "outbox event not stored; retrying");
                ack(&message, AckKind::Nak(Some(RETRY))).await;
                return;
            }
        }
        // Lost, the ack means a redelivery: published again, dropped by
        // JetStream as duplicates.
        ack(&message, AckKind::Ack).await;
    });
    futures::future::join_all(settled).await;
}

async fn publish(group: &GroupCommit, event: PendingEvent) -> Result<(), EventError> {
    let Some(id) = event.id().map(str::to_owned) else {
        return Err(EventError::JetStream {
            action: format!("publish to {}", event.subject),
            message: "an outbox event without ce-id".to_owned(),
            source: None,
        });
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &event.headers {
        headers.append(name.as_str(), value.as_str());
    }
    // Last, so it replaces any id the stored headers carried.
    envelope::set_message_id(&mut headers, &id);
    // Child of the handler that committed the event (its stored traceparent).
    let parent = crate::codec::read_trace(Some(&headers));
    let hop = producer_span("publish", &event.subject, &id, &mut headers, parent);
    // One lane for the whole relay: events are stored in commit order,
    // whatever their subjects.
    let published = group
        .publish_in(
            RELAY_DURABLE,
            &event.subject,
            &id,
            headers,
            event.data.into(),
        )
        .await;
    settled(hop.as_ref(), &published);
    published.map(drop)
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        // Unacked: the write comes back after the ack wait.
        tracing::debug!(subject = %message.subject, %error, "outbox ack failed");
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
