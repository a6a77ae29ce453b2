//! What becomes of one publish: the stream's acknowledgement (or the error
//! it became) and the producer span that records it. Shared by every way
//! the kit publishes — one by one, grouped, replayed, relayed from an
//! outbox — so each reports the same.

use async_nats::jetstream::{self, context::PublishErrorKind};

use super::EventError;
use super::envelope;
use crate::telemetry::Hop;
use crate::trace_context::TraceContext;

/// A stored event's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event id.
    pub id: String,
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// Dropped as a duplicate of an earlier publish with the same id.
    pub duplicate: bool,
}

/// Starts the producer span of a message about to be sent (when spans are
/// exported) and points the message's `traceparent` at it; `parent` is
/// the span the send belongs to (a handler's, a consumer's).
pub(crate) fn producer_span(
    operation: &'static str,
    subject: &str,
    message_id: &str,
    headers: &mut async_nats::HeaderMap,
    parent: Option<TraceContext>,
) -> Option<Hop> {
    let hop = Hop::producer(operation, subject, message_id, parent)?;
    envelope::set_trace(headers, &hop.trace);
    Some(hop)
}

/// Records how a send ended on its producer span.
pub(crate) fn settled(hop: Option<&Hop>, result: &Result<Published, EventError>) {
    let Some(hop) = hop else { return };
    match result {
        Ok(published) => {
            hop.attribute(
                "messaging.nats.stream.sequence",
                i64::try_from(published.sequence).unwrap_or(i64::MAX),
            );
        }
        Err(error) => hop.fail(error.kind_name(), &error.to_string()),
    }
}

/// Waits for the stream's acknowledgement of event `id` sent to `subject`.
pub(crate) async fn confirm(
    subject: &str,
    id: &str,
    ack: jetstream::context::PublishAckFuture,
) -> Result<Published, EventError> {
    let ack = ack.await.map_err(|e| publish_error(subject, e))?;
    Ok(Published {
        id: id.to_owned(),
        stream: ack.stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// The kit's error for a failed publish to `subject`.
pub(crate) fn publish_error(subject: &str, e: jetstream::context::PublishError) -> EventError {
    match e.kind() {
        PublishErrorKind::StreamNotFound => EventError::NoStream {
            subject: subject.to_owned(),
        },
        PublishErrorKind::TimedOut => EventError::AckTimeout {
            subject: subject.to_owned(),
        },
        _ => match crate::storage::full_reason(&e) {
            Some(reason) => EventError::StorageFull {
                subject: subject.to_owned(),
                reason,
            },
            None => EventError::js(format!("publish to {subject}"))(e),
        },
    }
}
