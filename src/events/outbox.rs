//! The transactional outbox: events committed with the state that implies
//! them, published afterwards until the server has them — exactly once in
//! effect, whatever crashes in between.
//!
//! # What is written, in which order
//!
//! 1. **Commit** ([`Transaction`](crate::state::Transaction)): one ADR-50
//!    atomic batch on the bucket's stream holds the state writes (each
//!    with its expected revision) and, per event, an outbox entry: key
//!    `outbox.<ce-id>`, the event's payload, its CloudEvents headers and
//!    the subject to publish to (`Switchboard-Outbox-Subject`). All or
//!    nothing: there is no state without its events, no event without its
//!    state.
//! 2. **Publish** ([`relay`]): a durable pull consumer `outbox` on the
//!    bucket's stream, filtered to `outbox.>`, receives the entry and
//!    publishes it to its subject with `Nats-Msg-Id` = `ce-id`, waiting for
//!    the stream's ack.
//! 3. **Clear**: the entry is purged (a purge marker that expires after a
//!    minute, so the bucket does not grow with every event ever published).
//! 4. **Ack** the entry to the relay consumer.
//!
//! # What a crash at each step leaves, and how it is finished
//!
//! | crash | left behind | finished by |
//! |---|---|---|
//! | before 1 completes | nothing (the batch is not committed) | the caller's retry, if any |
//! | between 1 and 2 | the entry, unacked | redelivery to any relay instance after [`ACK_WAIT`] |
//! | during 2 (sent, ack lost) | the event stored, the entry unacked | redelivery: published again, dropped by JetStream as a duplicate (same `Nats-Msg-Id`) |
//! | between 2 and 3 | as above | as above, then purged |
//! | between 3 and 4 | nothing to publish: the entry is gone | the server never redelivers a purged message |
//!
//! The duplicate window of the event stream (2 minutes by default) covers a
//! relay restart; a re-publish later than that is still one effect, because
//! consumers that declare [`idempotent`](super::ConsumerSpec::idempotent)
//! handling key their effect by `ce-id`.
//!
//! Order: entries are published in commit order; a publish that fails is
//! retried later, after entries committed after it (events of one record
//! that must be seen in order are ordered by their consumers' lanes).

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, kv};
use futures::StreamExt;

use super::EventError;
use super::envelope::{self, CE_ID, NATS_MSG_ID, OUTBOX_SUBJECT};
use crate::codec::static_name;

/// The durable name of every bucket's relay consumer.
pub const RELAY_DURABLE: &str = "outbox";
/// How long an entry may stay unacknowledged before another relay takes it.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long a purge marker stays before the server removes it.
const MARKER_TTL: Duration = Duration::from_secs(60);
/// Most entries handled as one round (publishes in flight together).
const ROUND: usize = 256;
/// Wait before a failed publish is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The KV operation header (a purge marker is not an entry).
const KV_OPERATION: &str = "KV-Operation";

/// Publishes the outbox entries of `bucket` until `shutdown` (see the
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
    let kv = js
        .get_key_value(&bucket)
        .await
        .map_err(|e| EventError::js(format!("open bucket {bucket}"))(e))?;
    let prefix = format!("$KV.{bucket}.");
    let consumer = kv
        .stream
        .create_consumer(pull::Config {
            durable_name: Some(RELAY_DURABLE.to_owned()),
            description: Some(format!("publishes the outbox entries of {bucket}")),
            filter_subject: format!("{prefix}{}.>", crate::state::OUTBOX),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: 4 * ROUND as i64,
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
            let mut entries = Vec::with_capacity(round.len());
            let mut broken = false;
            for message in round {
                match message {
                    Ok(message) => entries.push(message),
                    Err(error) => {
                        tracing::warn!(%bucket, %error, "outbox relay stream broke; fetching again");
                        broken = true;
                    }
                }
            }
            publish_round(&js, &kv, &prefix, entries).await;
            if broken {
                break;
            }
        }
    }
}

/// Publishes a round of entries (all in flight together, in order), then
/// purges and acks those the stream stored.
async fn publish_round(
    js: &jetstream::Context,
    kv: &kv::Store,
    prefix: &str,
    entries: Vec<jetstream::Message>,
) {
    let mut in_flight = Vec::with_capacity(entries.len());
    for message in entries {
        match send(js, &message).await {
            Sent::Marker => ack(&message, AckKind::Ack).await,
            Sent::Invalid(reason) => {
                // Only a hand-written entry can be malformed: keep nothing
                // that can never be published from blocking the rest.
                tracing::error!(subject = %message.subject, %reason, "dropping a malformed outbox entry");
                ack(&message, AckKind::Term).await;
            }
            Sent::Failed(error) => {
                tracing::warn!(subject = %message.subject, %error, "outbox publish failed; retrying");
                ack(&message, AckKind::Nak(Some(RETRY))).await;
            }
            Sent::Publishing(ack) => in_flight.push((message, ack)),
        }
    }
    let acks = futures::future::join_all(in_flight.into_iter().map(|(message, ack)| async move {
        let stored = ack.await;
        (message, stored)
    }))
    .await;
    let settled = acks.into_iter().map(|(message, stored)| async move {
        if let Err(error) = stored {
            tracing::warn!(subject = %message.subject, %error, "outbox event not acknowledged; retrying");
            ack(&message, AckKind::Nak(Some(RETRY))).await;
            return;
        }
        let key = message.subject.strip_prefix(prefix).unwrap_or_default();
        if let Err(error) = kv.purge_with_ttl(key, MARKER_TTL).await {
            // Published but not cleared: a redelivery publishes it again,
            // which JetStream drops as a duplicate.
            tracing::warn!(%key, %error, "cannot clear a published outbox entry");
            ack(&message, AckKind::Nak(Some(RETRY))).await;
            return;
        }
        ack(&message, AckKind::Ack).await;
    });
    futures::future::join_all(settled).await;
}

enum Sent {
    Marker,
    Invalid(&'static str),
    Failed(EventError),
    Publishing(jetstream::context::PublishAckFuture),
}

async fn send(js: &jetstream::Context, message: &jetstream::Message) -> Sent {
    let headers = message.headers.as_ref();
    if envelope::header(headers, KV_OPERATION).is_some_and(|op| op != "PUT") {
        return Sent::Marker;
    }
    let (Some(headers), Some(subject)) = (headers, envelope::header(headers, OUTBOX_SUBJECT))
    else {
        return Sent::Invalid("no Switchboard-Outbox-Subject");
    };
    let Some(id) = envelope::header(Some(headers), CE_ID) else {
        return Sent::Invalid("no ce-id");
    };
    let mut event_headers = async_nats::HeaderMap::new();
    for (name, values) in headers.iter() {
        let name = name.to_string();
        if name == OUTBOX_SUBJECT || name.starts_with("Nats-") {
            continue;
        }
        for value in values {
            event_headers.append(name.as_str(), value.as_str());
        }
    }
    event_headers.insert(static_name(NATS_MSG_ID), id.as_str());
    match js
        .publish_with_headers(subject.clone(), event_headers, message.payload.clone())
        .await
    {
        Ok(ack) => Sent::Publishing(ack),
        Err(e) => Sent::Failed(EventError::js(format!("publish to {subject}"))(e)),
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        // Unacked: the entry comes back after the ack wait.
        tracing::debug!(subject = %message.subject, %error, "outbox ack failed");
    }
}
