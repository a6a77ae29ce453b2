//! The one place that knows bytes, header names and content types.
//!
//! Handlers and callers deal in typed values, [`ServiceError`]s, deadlines
//! and [`TraceContext`]s; this module turns them into NATS payloads and
//! headers and back. Payloads are JSON. Errors travel as the ADR-32 headers
//! `Nats-Service-Error` / `Nats-Service-Error-Code` plus a JSON body
//! `{"error":{"code":…,"message":…,"details":…}}`, so the `nats` CLI shows
//! them and a plain client can read them.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ServiceError;
use crate::trace_context::TraceContext;

/// ADR-32 error description header.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
/// ADR-32 error code header.
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
/// The caller's remaining time in milliseconds: each hop uses what is left.
pub const TIMEOUT_MS: &str = "Switchboard-Timeout-Ms";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// A header name known at compile time, without the validation and copy
/// that a `&str` name costs on every insert and lookup.
fn static_name(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// Content type of every payload.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// CloudEvents 1.0 binary-mode attribute headers (NATS protocol binding).
pub const CE_SPECVERSION: &str = "ce-specversion";
/// Event id; also the JetStream de-duplication id.
pub const CE_ID: &str = "ce-id";
/// Who published the event (the service).
pub const CE_SOURCE: &str = "ce-source";
/// What happened, e.g. `orders.created`.
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

/// Headers of an event in binary content mode; `Nats-Msg-Id` = `ce-id` so
/// JetStream drops a re-publish of the same fact.
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
    headers.insert(static_name(NATS_MSG_ID), attributes.id.as_str());
    if let Some(trace) = trace {
        headers.insert(static_name(TRACEPARENT), trace.to_string().as_str());
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
    let get = |name: &'static str| {
        headers
            .get(static_name(name))
            .map(|v| v.as_str().to_owned())
    };
    let required =
        |name: &'static str| get(name).ok_or_else(|| EnvelopeError(format!("no {name}")));
    let version = required(CE_SPECVERSION)?;
    if version != SPEC_VERSION {
        return Err(EnvelopeError(format!(
            "{CE_SPECVERSION} {version}, expected {SPEC_VERSION}"
        )));
    }
    Ok(EventAttributes {
        id: required(CE_ID)?,
        source: required(CE_SOURCE)?,
        event_type: required(CE_TYPE)?,
        time: required(CE_TIME)?,
        subject: get(CE_SUBJECT),
    })
}

/// Overrides the de-duplication id (a replay must not be mistaken for the
/// original inside the duplicate window).
pub fn set_message_id(headers: &mut HeaderMap, id: &str) {
    headers.insert(static_name(NATS_MSG_ID), id);
}

/// Reads a header as text (for code that must pass headers through, such
/// as dead letters).
pub fn header(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers?.get(name).map(|v| v.as_str().to_owned())
}

/// Marks a message as part of an atomic batch (ADR-50); the last one commits.
pub fn mark_batch(headers: &mut HeaderMap, batch_id: &str, sequence: usize, commit: bool) {
    headers.insert(static_name("Nats-Batch-Id"), batch_id);
    headers.insert(
        static_name("Nats-Batch-Sequence"),
        sequence.to_string().as_str(),
    );
    if commit {
        headers.insert(static_name("Nats-Batch-Commit"), "1");
    }
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
/// id per (stream, consumer, sequence) so a dead letter written twice (by the
/// handler and by the max-deliveries advisory) is stored once.
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

#[derive(Serialize, serde::Deserialize)]
struct ErrorBody {
    error: ServiceError,
}

/// Serializes a value as JSON.
///
/// # Errors
///
/// When the value's `Serialize` implementation fails (e.g. a map with
/// non-string keys) — a bug of the caller's type, not of the input.
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(value).map(Bytes::from)
}

/// Parses a request; malformed or mistyped JSON becomes a 400 whose message
/// is serde's (it names the line, column and field).
///
/// # Errors
///
/// A 400 [`ServiceError`].
pub fn decode_request<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ServiceError> {
    // An empty request means "no fields", so `{}`-shaped types accept it.
    let payload: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        payload
    };
    serde_json::from_slice(payload).map_err(|e| {
        ServiceError::bad_request(format!("invalid request: {e}"))
            .with_details(serde_json::json!({ "line": e.line(), "column": e.column() }))
    })
}

/// Parses a response.
///
/// # Errors
///
/// serde's error when the body does not match the expected type.
pub fn decode_response<T: DeserializeOwned>(payload: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// Headers and body of an error reply.
///
/// The message is cut to [`MAX_ERROR_MESSAGE`](crate::limits::MAX_ERROR_MESSAGE)
/// bytes (it may quote the request), and the header carries it on one line.
pub fn error_reply(error: &ServiceError) -> (HeaderMap, Bytes) {
    use crate::limits::{MAX_ERROR_MESSAGE, truncate};
    let message = truncate(&error.message, MAX_ERROR_MESSAGE);
    let mut headers = HeaderMap::new();
    // Header values cannot hold line breaks.
    let description: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(static_name(SERVICE_ERROR), description);
    headers.insert(static_name(SERVICE_ERROR_CODE), error.code.to_string());
    let body = encode(&ErrorBody {
        error: ServiceError {
            code: error.code,
            message: message.into_owned(),
            details: error.details.clone(),
        },
    })
    .unwrap_or_else(|_| {
        Bytes::from_static(b"{\"error\":{\"code\":500,\"message\":\"unencodable error\"}}")
    });
    (headers, body)
}

/// The error a reply carries, if it is an error reply. The JSON body is
/// preferred (it has details); the headers alone are enough (other NATS
/// services send only those).
pub fn read_error(headers: Option<&HeaderMap>, payload: &[u8]) -> Option<ServiceError> {
    let headers = headers?;
    let code = headers
        .get(static_name(SERVICE_ERROR_CODE))?
        .as_str()
        .trim()
        .parse::<u16>()
        .ok()?;
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(payload) {
        return Some(ServiceError { code, ..error });
    }
    let message = headers
        .get(static_name(SERVICE_ERROR))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    Some(ServiceError::new(code, message))
}

/// Longest deadline a caller may send: one day. Anything longer is a bug
/// of the caller (or garbage), and would overflow a clock on the way.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// The caller's remaining time: `None` when it sent none (no deadline).
/// The rule: a whole number of milliseconds from 0 to [`MAX_TIMEOUT_MS`];
/// `0` means the deadline has already passed (the request is answered 504
/// without running). Anything else — negative, fractional, non-numeric,
/// larger — is a 400, because a caller that sends a deadline relies on it.
///
/// # Errors
///
/// A 400 [`ServiceError`] naming the header and the rule.
pub fn read_timeout(headers: Option<&HeaderMap>) -> Result<Option<Duration>, ServiceError> {
    let Some(value) = headers.and_then(|h| h.get(static_name(TIMEOUT_MS))) else {
        return Ok(None);
    };
    let text = value.as_str().trim();
    match text.parse::<u64>() {
        Ok(millis) if millis <= MAX_TIMEOUT_MS && text.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(Duration::from_millis(millis)))
        }
        _ => Err(ServiceError::bad_request(format!(
            "header {TIMEOUT_MS} must be a whole number of milliseconds from 0 to {MAX_TIMEOUT_MS}, got {:?}",
            crate::limits::preview(text)
        ))
        .with_details(serde_json::json!({ "header": TIMEOUT_MS }))),
    }
}

/// The caller's trace context, if valid.
pub fn read_trace(headers: Option<&HeaderMap>) -> Option<TraceContext> {
    TraceContext::parse(headers?.get(static_name(TRACEPARENT))?.as_str())
}

/// Request headers for a call: remaining time and trace context.
pub fn request_headers(remaining: Duration, trace: &TraceContext) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // Round up: "1 ms left" must not become "0 ms, already expired".
    let millis = remaining.as_micros().div_ceil(1000);
    headers.insert(static_name(TIMEOUT_MS), millis.to_string());
    headers.insert(static_name(TRACEPARENT), trace.to_string());
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_round_trips_with_details() {
        let error = ServiceError::conflict("short of stock\non sku-1")
            .with_details(serde_json::json!({"sku": "sku-1"}));
        let (headers, body) = error_reply(&error);
        assert_eq!(
            headers.get(SERVICE_ERROR_CODE).map(|v| v.as_str()),
            Some("409")
        );
        assert_eq!(
            headers.get(SERVICE_ERROR).map(|v| v.as_str()),
            Some("short of stock on sku-1")
        );
        assert_eq!(read_error(Some(&headers), &body), Some(error));
    }

    #[test]
    fn header_only_errors_are_understood() {
        let mut headers = HeaderMap::new();
        headers.insert(SERVICE_ERROR, "nope");
        headers.insert(SERVICE_ERROR_CODE, "503");
        assert_eq!(
            read_error(Some(&headers), b""),
            Some(ServiceError::unavailable("nope"))
        );
        assert_eq!(read_error(None, b"{}"), None);
    }

    #[test]
    fn malformed_json_is_a_400_naming_the_position() {
        #[derive(serde::Deserialize, Debug)]
        struct Req {
            #[allow(dead_code)]
            id: u64,
        }
        let err = decode_request::<Req>(b"{\"id\": ").err();
        let err = err.unwrap_or_else(|| ServiceError::internal("decoded"));
        assert_eq!(err.code, 400);
        assert!(err.message.contains("line 1"), "{}", err.message);
        let err = decode_request::<Req>(b"{\"id\": \"x\"}").err();
        assert!(err.is_some_and(|e| e.code == 400 && e.message.contains("invalid type")));
    }

    #[test]
    fn timeout_rounds_up() {
        let trace = TraceContext::new_root();
        let headers = request_headers(Duration::from_micros(1), &trace);
        assert_eq!(
            read_timeout(Some(&headers)),
            Ok(Some(Duration::from_millis(1)))
        );
        assert_eq!(read_trace(Some(&headers)), Some(trace));
    }

    #[test]
    fn timeout_garbage_is_a_400_and_never_overflows() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(TIMEOUT_MS, value);
            read_timeout(Some(&headers))
        };
        assert_eq!(read_timeout(None), Ok(None));
        assert_eq!(with("0"), Ok(Some(Duration::ZERO)));
        assert_eq!(with(" 250 "), Ok(Some(Duration::from_millis(250))));
        assert_eq!(
            with(&MAX_TIMEOUT_MS.to_string()),
            Ok(Some(Duration::from_millis(MAX_TIMEOUT_MS)))
        );
        let huge = "9".repeat(5000);
        for bad in ["-1", "+5", "1.5", "abc", "", "18446744073709551615", &huge] {
            let error = with(bad).err();
            assert!(
                error
                    .as_ref()
                    .is_some_and(|e| e.code == 400 && e.message.len() < 300),
                "{bad:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn long_error_messages_are_cut_in_header_and_body() {
        let error = ServiceError::bad_request(format!("invalid: {}", "z".repeat(5000)));
        let (headers, body) = error_reply(&error);
        let header = headers.get(SERVICE_ERROR).map(|v| v.as_str().len());
        assert!(header.is_some_and(|l| l <= crate::limits::MAX_ERROR_MESSAGE));
        let read = read_error(Some(&headers), &body);
        assert!(
            read.is_some_and(|e| e.code == 400
                && e.message.len() <= 1024
                && e.message.ends_with('…'))
        );
    }
}
