//! Forwarding an HTTP request to the endpoint its route names.
//!
//! The JSON body and the path parameters merge into the NATS request; the
//! call carries a deadline and the caller's trace; the service's error code
//! becomes the HTTP status. 500s never carry internals: the details are
//! logged with the trace id, which the response also carries.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use switchboard::ServiceError;
use switchboard::client::{CallError, CallOptions};
use switchboard::codec;
use switchboard::telemetry::Hop;
use switchboard::trace_context::TraceContext;
use tracing::Instrument;

use crate::Gateway;
use crate::routes::Lookup;

/// Longest path parameter forwarded (the request schema has the field's
/// own, smaller limit; this keeps an absurd URL from travelling at all).
const MAX_PATH_PARAMETER: usize = 1024;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: &str = "1";

pub(crate) async fn forward(
    State(gateway): State<Gateway>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    // A malformed traceparent starts a new trace (as W3C asks), never a 400.
    let parent = headers
        .get(codec::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let table = gateway.routes();
    let lookup = table.find(method.as_str(), uri.path());
    let route = match &lookup {
        Lookup::Found(route, _) => Some(route.path.as_str()),
        _ => None,
    };
    let hop = Hop::http_server(method.as_str(), route, uri.path(), parent);
    let response = answer(&gateway, lookup, body, &hop.trace)
        .instrument(hop.span.clone())
        .await;
    let status = response.status();
    hop.attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        hop.fail(
            status.as_str(),
            status.canonical_reason().unwrap_or("server error"),
        );
    }
    if let Some(route) = route {
        let label = format!("{method} {route}");
        crate::metrics::record(&label, status.as_u16(), started.elapsed());
    }
    response
}

/// The response to a request whose route was looked up.
async fn answer(
    gateway: &Gateway,
    lookup: Lookup<'_>,
    body: Body,
    trace: &TraceContext,
) -> Response {
    let trace = *trace;
    let (route, params) = match lookup {
        Lookup::Found(route, params) => (route, params),
        Lookup::MethodNotAllowed(allowed) => {
            let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", &trace);
            if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            return response;
        }
        Lookup::NotFound => return error(StatusCode::NOT_FOUND, "no such route", &trace),
    };
    if let Some((name, value)) = params.iter().find(|(_, v)| v.len() > MAX_PATH_PARAMETER) {
        let message = format!(
            "path parameter {name} is {} bytes; the limit is {MAX_PATH_PARAMETER}",
            value.len()
        );
        return error(StatusCode::BAD_REQUEST, &message, &trace);
    }
    // Read here rather than by an extractor, so that a body over the limit
    // is our JSON 413 and not a plain-text rejection.
    let body = match axum::body::to_bytes(body, crate::BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                let message = format!("the body is larger than {} bytes", crate::BODY_LIMIT);
                error(StatusCode::PAYLOAD_TOO_LARGE, &message, &trace)
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    "the body could not be read",
                    &trace,
                )
            };
        }
    };

    match request_body(&body, params) {
        Err(message) => error(StatusCode::BAD_REQUEST, &message, &trace),
        Ok(request) => {
            let options = CallOptions::default()
                .timeout(gateway.shared.config.request_timeout)
                .trace(trace)
                .max_retries(0);
            let result = gateway
                .shared
                .client
                .call_bytes(&route.subject, request, options)
                .await;
            match result {
                // Passed through as it came, once checked to be JSON.
                Ok(reply) if is_json(&reply) => {
                    let status = StatusCode::from_u16(route.status).unwrap_or(StatusCode::OK);
                    let content_type = [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )];
                    with_trace((status, content_type, reply).into_response(), &trace)
                }
                Ok(_) => {
                    tracing::error!(trace_id = %trace.trace_id(), subject = %route.subject, "the service's reply is not JSON");
                    error(StatusCode::BAD_GATEWAY, "internal error", &trace)
                }
                Err(e) => call_error(&e, &trace),
            }
        }
    }
}

/// The body (an object, or nothing) with the path parameters merged in.
/// Without parameters a body is passed on as it came: checked to be one JSON
/// object, not parsed into a tree and encoded again.
fn request_body(
    body: &Bytes,
    params: std::collections::BTreeMap<String, String>,
) -> Result<Bytes, String> {
    let empty = body.iter().all(u8::is_ascii_whitespace);
    if params.is_empty() {
        if empty {
            return Ok(Bytes::from_static(b"{}"));
        }
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err("the body must be a JSON object".to_owned());
        }
        return match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => Ok(body.clone()),
            Err(e) => Err(format!("the body is not JSON: {e}")),
        };
    }
    let mut object = if empty {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err("the body must be a JSON object".to_owned()),
            Err(e) => return Err(format!("the body is not JSON: {e}")),
        }
    };
    for (name, value) in params {
        // The path wins: `/orders/o-1` with `{"id":"o-2"}` is about o-1.
        object.insert(name, Value::String(value));
    }
    serde_json::to_vec(&Value::Object(object))
        .map(Bytes::from)
        .map_err(|e| format!("the body cannot be encoded: {e}"))
}

/// Whether `bytes` are one JSON value (validated without building it).
fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
}

fn call_error(e: &CallError, trace: &TraceContext) -> Response {
    if let CallError::Rejected(rejection) = e {
        return rejected(rejection, trace);
    }
    // The kit's one mapping from call failures to statuses.
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match status {
        StatusCode::GATEWAY_TIMEOUT => "the service did not answer in time",
        StatusCode::SERVICE_UNAVAILABLE => "the service is unavailable; retry later",
        _ => {
            tracing::error!(trace_id = %trace.trace_id(), error = %e, "call failed");
            "internal error"
        }
    };
    let mut response = error(status, message, trace);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
    }
    response
}

fn rejected(rejection: &ServiceError, trace: &TraceContext) -> Response {
    let status = StatusCode::from_u16(rejection.code)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    if status.is_server_error()
        && status != StatusCode::SERVICE_UNAVAILABLE
        && status != StatusCode::GATEWAY_TIMEOUT
    {
        // Internals stay in the log.
        tracing::error!(trace_id = %trace.trace_id(), code = rejection.code, message = %rejection.message, "service error");
        return error(status, "internal error", trace);
    }
    let mut response = with_trace(
        (status, axum::Json(json!({ "error": rejection }))).into_response(),
        trace,
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
    }
    response
}

/// A JSON error in the same shape services use.
pub(crate) fn error(status: StatusCode, message: &str, trace: &TraceContext) -> Response {
    let body = json!({ "error": { "code": status.as_u16(), "message": message, "trace_id": trace.trace_id() } });
    with_trace((status, axum::Json(body)).into_response(), trace)
}

fn with_trace(mut response: Response, trace: &TraceContext) -> Response {
    if let Ok(value) = HeaderValue::from_str(&trace.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(codec::TRACEPARENT), value);
    }
    if let Ok(value) = HeaderValue::from_str(&trace.trace_id()) {
        response.headers_mut().insert("x-trace-id", value);
    }
    response
}

/// Default deadline of one HTTP request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
