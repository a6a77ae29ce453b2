//! The one place that knows bytes, header names and content types.
//!
//! Handlers and callers deal in typed values, [`ServiceError`]s, deadlines
//! and [`TraceContext`]s; this module turns them into NATS payloads and
//! headers and back — for request and reply. (Events have their own wire
//! format: `events::envelope`.) Payloads are JSON. Errors travel as the ADR-32 headers
//! `Nats-Service-Error` / `Nats-Service-Error-Code` plus a JSON body
//! `{"error":{"code":…,"message":…,"details":…}}`, so the `nats` CLI shows
//! them and a plain client can read them.
//!
//! Payloads are JSON unless the message says otherwise: a request may be
//! MessagePack (`Content-Type`), answered in kind unless `Accept` asks for
//! another, see [`encoding`]. A JSON call carries neither header, so the default
//! path costs nothing for the choice.

pub mod encoding;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ServiceError;
use crate::trace_context::TraceContext;

pub use encoding::{CodecError, Encoding};

/// ADR-32 error description header.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
/// ADR-32 error code header.
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
/// The caller's remaining time in milliseconds: each hop uses what is left.
pub const TIMEOUT_MS: &str = "Switchboard-Timeout-Ms";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The payload's encoding, when not JSON (absent: JSON).
pub const CONTENT_TYPE: &str = "Content-Type";
/// The encoding a caller wants its reply in, when not JSON.
pub const ACCEPT: &str = "Accept";
/// The status code of a request in an encoding this kit does not speak.
pub const UNSUPPORTED_MEDIA_TYPE: u16 = 415;
/// A header name known at compile time, without the validation and copy
/// that a `&str` name costs on every insert and lookup.
pub(crate) fn static_name(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// Content type of every payload.
pub const CONTENT_TYPE_JSON: &str = "application/json";

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

/// Parses a JSON request; malformed or mistyped JSON becomes a 400 whose
/// message is serde's (it names the line, column and field).
///
/// # Errors
///
/// A 400 [`ServiceError`].
pub fn decode_request<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ServiceError> {
    decode_request_as(payload, Encoding::Json)
}

/// Parses a request in `encoding`; malformed or mistyped input becomes a
/// 400 whose message is serde's (for JSON it names line and column).
///
/// # Errors
///
/// A 400 [`ServiceError`].
pub fn decode_request_as<T: DeserializeOwned>(
    payload: &[u8],
    encoding: Encoding,
) -> Result<T, ServiceError> {
    match encoding {
        Encoding::MessagePack => {
            // An empty request means "no fields", as for JSON below.
            let payload: &[u8] = if payload.is_empty() { &[0x80] } else { payload };
            encoding
                .decode(payload)
                .map_err(|e| ServiceError::bad_request(format!("invalid request: {e}")))
        }
        Encoding::Json => {
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
    }
}

/// The encoding of a request's payload: JSON without `Content-Type`; a
/// 415 for one this kit does not speak (nothing is guessed).
///
/// # Errors
///
/// A 415 [`ServiceError`] naming the content type and the ones spoken.
pub fn request_encoding(headers: Option<&HeaderMap>) -> Result<Encoding, ServiceError> {
    payload_encoding(headers).map_err(|error| {
        ServiceError::new(
            UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{error}; send {} or {}",
                encoding::JSON,
                encoding::MESSAGE_PACK
            ),
        )
        .with_details(serde_json::json!({ "header": CONTENT_TYPE }))
    })
}

/// The encoding a reply goes in: what `Accept` asks for; without it, the
/// request's own (`request`) — an RPC answers in kind, so a MessagePack
/// caller sends one header, not two.
pub fn reply_encoding(headers: Option<&HeaderMap>, request: Encoding) -> Encoding {
    headers
        .and_then(|h| h.get(static_name(ACCEPT)))
        .map_or(request, |v| Encoding::from_accept(v.as_str()))
}

/// Headers of a successful reply in `encoding`: none for JSON.
pub fn reply_headers(encoding: Encoding) -> Option<HeaderMap> {
    (encoding != Encoding::Json).then(|| {
        let mut headers = HeaderMap::new();
        headers.insert(static_name(CONTENT_TYPE), encoding.content_type());
        headers
    })
}

/// The encoding of a reply's payload (JSON without `Content-Type`).
///
/// # Errors
///
/// [`CodecError::UnknownContentType`], when it is not one this kit speaks.
pub fn payload_encoding(headers: Option<&HeaderMap>) -> Result<Encoding, CodecError> {
    match headers.and_then(|h| h.get(static_name(CONTENT_TYPE))) {
        None => Ok(Encoding::Json),
        Some(value) => Encoding::from_content_type(value.as_str())
            .ok_or_else(|| CodecError::UnknownContentType(crate::limits::preview(value.as_str()))),
    }
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

/// Request headers for a JSON call: remaining time and trace context.
pub fn request_headers(remaining: Duration, trace: &TraceContext) -> HeaderMap {
    request_headers_as(remaining, trace, Encoding::Json)
}

/// Request headers for a call in `encoding`: remaining time and trace
/// context, and for a non-JSON call its `Content-Type` (the reply comes in
/// the same encoding: see [`reply_encoding`]).
pub fn request_headers_as(
    remaining: Duration,
    trace: &TraceContext,
    encoding: Encoding,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // Round up: "1 ms left" must not become "0 ms, already expired".
    let millis = remaining.as_micros().div_ceil(1000);
    headers.insert(static_name(TIMEOUT_MS), millis.to_string());
    headers.insert(static_name(TRACEPARENT), trace.traceparent());
    if encoding != Encoding::Json {
        headers.insert(static_name(CONTENT_TYPE), encoding.content_type());
    }
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
