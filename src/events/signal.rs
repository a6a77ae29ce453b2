//! Fire-and-forget signals: core NATS pub-sub with the CloudEvents envelope.
//!
//! No stream, no ack, no redelivery: for things that matter only now (a
//! cache hint, a progress tick). Anything that must not be lost is an event
//! on a stream instead.

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::EventError;
use super::event::{Event, ReceivedEvent};

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
    let (headers, payload) = event.encode(source, subject)?;
    nats.publish_with_headers(subject.to_owned(), headers, payload)
        .await
        .map_err(|e| EventError::js(format!("publish signal to {subject}"))(e))
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
        .map_err(|e| EventError::js(format!("subscribe to {subject}"))(e))?;
    Ok(subscriber.map(|message| ReceivedEvent::decode(&message)))
}
