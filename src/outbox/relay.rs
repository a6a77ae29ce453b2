//! The relay: a durable pull consumer on a bucket's stream that publishes
//! the events each write carries, then acknowledges the write (see the
//! module above for what a crash at each step leaves).

use std::future::Future;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;

use super::{ACK_WAIT, PendingEvent, RELAY_DURABLE, decode_pending};
use crate::events::EventError;
use crate::events::ack::{producer_span, settled};
use crate::events::envelope;
use crate::events::group_commit::{GroupCommit, GroupCommitConfig};

/// Most writes handled as one round (their publishes in flight together).
const ROUND: usize = 256;
/// Wait before a failed publish is tried again.
const RETRY: Duration = Duration::from_secs(1);

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
                if matches!(error, EventError::StorageFull { .. }) {
                    tracing::warn!(subject = %message.subject, %error, "no space for outbox events; they stay in the outbox until space returns");
                } else {
                    tracing::warn!(subject = %message.subject, %error, "outbox event not stored; retrying");
                }
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
