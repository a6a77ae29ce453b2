//! The events' wire format: CloudEvents 1.0 in binary mode over NATS
//! headers, and the dead-letter facts added to a dead event's headers.
//!
//! The one place that knows these header names (request/reply headers are
//! [`crate::codec`]'s). Publishers, consumers, dead letters, `switchboard
//! tail` and an HTTP front end's live view all read and write events through it.

use async_nats::HeaderMap;
use serde::Serialize;

use crate::codec::{CONTENT_TYPE_JSON, TRACEPARENT, static_name};
use crate::trace_context::TraceContext;

/// CloudEvents 1.0 binary-mode attribute headers (NATS protocol binding).
pub const CE_SPECVERSION: &str = "ce-specversion";
/// Event id; also the JetStream de-duplication id.
pub const CE_ID: &str = "ce-id";
/// Who published the event (the service).
pub const CE_SOURCE: &str = "ce-source";
/// What happened, e.g. `invoices.created`.
pub const CE_TYPE: &str = "ce-type";
/// When it happened (RFC 3339).
pub const CE_TIME: &str = "ce-time";
/// What it is about (optional), e.g. an order id.
pub const CE_SUBJECT: &str = "ce-subject";
/// Content type header of events.
pub const CONTENT_TYPE: &str = "content-type";
/// JetStream's de-duplication header.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// The CloudEvents version written.
pub const SPEC_VERSION: &str = "1.0";

/// The CloudEvents attributes of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EventAttributes {
    /// `ce-id`.
    pub id: String,
    /// `ce-source`.
    pub source: String,
    /// `ce-type`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `ce-time`, RFC 3339.
    pub time: String,
    /// `ce-subject`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A message is not a well-formed CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a CloudEvent: {0}")]
pub struct EnvelopeError(pub String);

/// Headers of an event in binary content mode. Publishing adds
/// `Nats-Msg-Id` = `ce-id` ([`set_message_id`]) so JetStream drops a
/// re-publish of the same fact; an event waiting in the outbox is kept
/// without it.
pub fn event_headers(attributes: &EventAttributes, trace: Option<&TraceContext>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(static_name(CE_SPECVERSION), SPEC_VERSION);
    headers.insert(static_name(CE_ID), attributes.id.as_str());
    headers.insert(static_name(CE_SOURCE), attributes.source.as_str());
    headers.insert(static_name(CE_TYPE), attributes.event_type.as_str());
    headers.insert(static_name(CE_TIME), attributes.time.as_str());
    if let Some(subject) = &attributes.subject {
        headers.insert(static_name(CE_SUBJECT), subject.as_str());
    }
    headers.insert(static_name(CONTENT_TYPE), CONTENT_TYPE_JSON);
    if let Some(trace) = trace {
        headers.insert(static_name(TRACEPARENT), trace.traceparent());
    }
    headers
}

/// Reads the CloudEvents attributes of a message.
///
/// # Errors
///
/// [`EnvelopeError`] when a required attribute is missing or the version
/// is not 1.0.
pub fn read_event_attributes(
    headers: Option<&HeaderMap>,
) -> Result<EventAttributes, EnvelopeError> {
    let headers = headers.ok_or_else(|| EnvelopeError("no headers".into()))?;
    // One pass over the headers, not a hashed lookup per attribute: this
    // runs for every delivery.
    let (mut version, mut id, mut source, mut event_type, mut time, mut subject) =
        (None, None, None, None, None, None);
    for (name, values) in headers.iter() {
        let attribute = match AsRef::<str>::as_ref(name) {
            CE_SPECVERSION => &mut version,
            CE_ID => &mut id,
            CE_SOURCE => &mut source,
            CE_TYPE => &mut event_type,
            CE_TIME => &mut time,
            CE_SUBJECT => &mut subject,
            _ => continue,
        };
        *attribute = values.first().map(|value| value.as_str());
    }
    let required = |value: Option<&str>, name: &str| {
        value
            .map(str::to_owned)
            .ok_or_else(|| EnvelopeError(format!("no {name}")))
    };
    let version = required(version, CE_SPECVERSION)?;
    if version != SPEC_VERSION {
        return Err(EnvelopeError(format!(
            "{CE_SPECVERSION} {version}, expected {SPEC_VERSION}"
        )));
    }
    Ok(EventAttributes {
        id: required(id, CE_ID)?,
        source: required(source, CE_SOURCE)?,
        event_type: required(event_type, CE_TYPE)?,
        time: required(time, CE_TIME)?,
        subject: subject.map(str::to_owned),
    })
}

/// Overrides the de-duplication id (a replay must not be mistaken for the
/// original inside the duplicate window).
pub fn set_message_id(headers: &mut HeaderMap, id: &str) {
    headers.insert(static_name(NATS_MSG_ID), id);
}

/// Points the event's `traceparent` at the span that sends it, so its
/// consumers' spans are that span's children.
pub fn set_trace(headers: &mut HeaderMap, trace: &TraceContext) {
    headers.insert(static_name(TRACEPARENT), trace.traceparent());
}

/// The events a state write implies, on the KV message of that write
/// until the bucket's outbox relay has published them (a JSON array of
/// `{subject, headers, data}`; see `outbox`).
pub const OUTBOX: &str = "Switchboard-Outbox";

/// Reads a header as text (for code that must pass headers through, such
/// as dead letters).
pub fn header(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers?.get(name).map(|v| v.as_str().to_owned())
}

/// Dead-letter headers, added to the original event's headers.
const DLQ_PREFIX: &str = "Switchboard-Dlq-";
const DLQ_SUBJECT: &str = "Switchboard-Dlq-Subject";
const DLQ_STREAM: &str = "Switchboard-Dlq-Stream";
const DLQ_CONSUMER: &str = "Switchboard-Dlq-Consumer";
const DLQ_SEQUENCE: &str = "Switchboard-Dlq-Sequence";
const DLQ_DELIVERIES: &str = "Switchboard-Dlq-Deliveries";
const DLQ_ERROR: &str = "Switchboard-Dlq-Error";
const DLQ_FAILED_AT: &str = "Switchboard-Dlq-Failed-At";

/// Why and where an event died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DeadLetterInfo {
    /// The subject the event was published on.
    pub subject: String,
    /// The stream it was stored in.
    pub stream: String,
    /// The consumer that gave up.
    pub consumer: String,
    /// Its sequence in that stream.
    pub stream_sequence: u64,
    /// How often it was delivered.
    pub deliveries: u64,
    /// The last error.
    pub error: String,
    /// When it was dead-lettered (RFC 3339).
    pub failed_at: String,
}

/// The original headers plus the dead-letter facts, with a de-duplication
/// id per (stream, consumer, sequence) so a dead letter written twice (two
/// instances, or a retry after a lost ack) is stored once.
pub fn dead_letter_headers(original: Option<&HeaderMap>, info: &DeadLetterInfo) -> HeaderMap {
    let mut headers = original.cloned().unwrap_or_default();
    headers.insert(static_name(DLQ_SUBJECT), info.subject.as_str());
    headers.insert(static_name(DLQ_STREAM), info.stream.as_str());
    headers.insert(static_name(DLQ_CONSUMER), info.consumer.as_str());
    headers.insert(
        static_name(DLQ_SEQUENCE),
        info.stream_sequence.to_string().as_str(),
    );
    headers.insert(
        static_name(DLQ_DELIVERIES),
        info.deliveries.to_string().as_str(),
    );
    let error: String = info
        .error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(static_name(DLQ_ERROR), error.as_str());
    headers.insert(static_name(DLQ_FAILED_AT), info.failed_at.as_str());
    headers.insert(
        static_name(NATS_MSG_ID),
        format!(
            "dlq:{}:{}:{}",
            info.stream, info.consumer, info.stream_sequence
        )
        .as_str(),
    );
    headers
}

/// Splits a stored dead letter's headers into its facts and the original
/// event's headers (without the de-duplication id, which replay sets anew).
///
/// # Errors
///
/// [`EnvelopeError`] when the message is not a dead letter.
pub fn read_dead_letter(
    headers: &HeaderMap,
) -> Result<(DeadLetterInfo, Vec<(String, String)>), EnvelopeError> {
    let get = |name: &'static str| {
        headers
            .get(static_name(name))
            .map(|v| v.as_str().to_owned())
            .ok_or_else(|| EnvelopeError(format!("not a dead letter: no {name}")))
    };
    let number = |name: &'static str| -> Result<u64, EnvelopeError> {
        get(name)?
            .parse()
            .map_err(|_| EnvelopeError(format!("{name} is not a number")))
    };
    let info = DeadLetterInfo {
        subject: get(DLQ_SUBJECT)?,
        stream: get(DLQ_STREAM)?,
        consumer: get(DLQ_CONSUMER)?,
        stream_sequence: number(DLQ_SEQUENCE)?,
        deliveries: number(DLQ_DELIVERIES)?,
        error: get(DLQ_ERROR)?,
        failed_at: get(DLQ_FAILED_AT)?,
    };
    let mut original = Vec::new();
    for (name, values) in headers.iter() {
        let name = name.to_string();
        if name.starts_with(DLQ_PREFIX) || name.eq_ignore_ascii_case(NATS_MSG_ID) {
            continue;
        }
        for value in values {
            original.push((name.clone(), value.as_str().to_owned()));
        }
    }
    original.sort();
    Ok((info, original))
}

/// Headers from name/value pairs (to re-publish a dead letter's original).
pub fn headers_from_pairs(pairs: &[(String, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(name.as_str(), value.as_str());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(subject: Option<&str>) -> EventAttributes {
        EventAttributes {
            id: "o-1-created".into(),
            source: "invoices".into(),
            event_type: "invoices.created".into(),
            time: "2026-12-02T09:00:00Z".into(),
            subject: subject.map(str::to_owned),
        }
    }

    #[test]
    fn attributes_read_back_as_written_with_other_headers_beside_them() {
        for subject in [Some("o-1"), None] {
            let mut headers = event_headers(&attributes(subject), Some(&TraceContext::new_root()));
            headers.insert("Nats-Msg-Id", "o-1-created");
            assert_eq!(
                read_event_attributes(Some(&headers)).ok(),
                Some(attributes(subject))
            );
        }
    }

    #[test]
    fn a_missing_attribute_or_another_version_is_named() {
        assert!(read_event_attributes(None).is_err());
        let full = event_headers(&attributes(None), None);
        for (name, _) in full.iter() {
            let name: &str = name.as_ref();
            let mut headers = HeaderMap::new();
            for (other, values) in full.iter() {
                if AsRef::<str>::as_ref(other) != name {
                    for value in values {
                        headers.append(other.clone(), value.clone());
                    }
                }
            }
            match read_event_attributes(Some(&headers)) {
                Err(EnvelopeError(message)) if name.starts_with("ce-") => {
                    assert_eq!(message, format!("no {name}"));
                }
                // Content-Type is not an attribute.
                other => assert!(other.is_ok(), "{name}: {other:?}"),
            }
        }
        let mut headers = event_headers(&attributes(None), None);
        headers.insert(static_name(CE_SPECVERSION), "0.3");
        let Err(EnvelopeError(message)) = read_event_attributes(Some(&headers)) else {
            panic!("version 0.3 accepted");
        };
        assert!(message.contains("0.3"), "{message}");
    }
}
