//! Fire-and-forget signals: core NATS pub-sub with the CloudEvents envelope.
//!
//! No stream, no ack, no redelivery: for things that matter only now (a
//! cache hint, a progress tick). Anything that must not be lost is an event
//! on a stream instead.

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::EventError;
use super::event::{Event, ReceivedEvent, type_for};
use super::publisher::now_rfc3339;
use crate::codec::{self, EventAttributes};

/// Publishes a signal; returns once it is handed to the connection.
///
/// # Errors
///
/// Payload or connection failures.
pub async fn publish<T: Serialize>(
    nats: &async_nats::Client,
    source: &str,
    subject: &str,
    event: &Event<T>,
) -> Result<(), EventError> {
    let attributes = EventAttributes {
        id: event.id.clone(),
        source: source.to_owned(),
        event_type: event
            .event_type
            .clone()
            .unwrap_or_else(|| type_for(subject)),
        time: now_rfc3339(),
        subject: event.subject.clone(),
    };
    let headers = codec::event_headers(&attributes, event.trace.as_ref());
    let payload = codec::encode(&event.data)?;
    nats.publish_with_headers(subject.to_owned(), headers, payload)
        .await
        .map_err(|e| EventError::js(format!("publish signal to {subject}"))(&e))
}

/// Subscribes to signals; messages that are not CloudEvents of type `T`
/// are yielded as errors (never silently dropped).
///
/// # Errors
///
/// When the subscription fails.
pub async fn subscribe<T: DeserializeOwned>(
    nats: &async_nats::Client,
    subject: &str,
) -> Result<impl Stream<Item = Result<ReceivedEvent<T>, EventError>> + use<T>, EventError> {
    let subscriber = nats
        .subscribe(subject.to_owned())
        .await
        .map_err(|e| EventError::js(format!("subscribe to {subject}"))(&e))?;
    Ok(subscriber.map(|message| ReceivedEvent::decode(&message)))
}
