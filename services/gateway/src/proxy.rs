//! Forwarding an HTTP request to the endpoint its route names.
//!
//! The JSON body, the query parameters and the path parameters merge into
//! the NATS request (the path wins, then the query; a query value is typed
//! by the request schema's field: `?limit=20` is the number 20); the
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
    let response = answer(&gateway, lookup, uri.query(), body, &hop.trace)
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
    query: Option<&str>,
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

    let fields = match query_fields(query.unwrap_or_default(), route.request_schema.as_ref()) {
        Ok(fields) => fields,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message, &trace),
    };
    match request_body(&body, fields, params) {
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

/// Longest query string read (fields have their own, smaller limits).
const MAX_QUERY: usize = 4096;

/// The query parameters as request fields, each typed by its field in the
/// request `schema` (integer, number, boolean; else a string). A name given
/// twice, or a value that is not of its field's type, is a 400.
fn query_fields(query: &str, schema: Option<&Value>) -> Result<Map<String, Value>, String> {
    if query.len() > MAX_QUERY {
        return Err(format!(
            "the query string is {} bytes; the limit is {MAX_QUERY}",
            query.len()
        ));
    }
    let mut fields = Map::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let types = schema
            .and_then(|s| s["properties"].get(name.as_ref()))
            .map(|field| match &field["type"] {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            })
            .unwrap_or_default();
        let typed = if types.contains(&"integer") {
            value
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| value.parse::<u64>().map(Value::from))
                .map_err(|_| format!("query parameter {name} must be a whole number"))?
        } else if types.contains(&"number") {
            value
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("query parameter {name} must be a number"))?
        } else if types.contains(&"boolean") {
            value
                .parse::<bool>()
                .map(Value::Bool)
                .map_err(|_| format!("query parameter {name} must be true or false"))?
        } else {
            Value::String(value.into_owned())
        };
        if fields.insert(name.to_string(), typed).is_some() {
            return Err(format!("query parameter {name} is given more than once"));
        }
    }
    Ok(fields)
}

/// The body (an object, or nothing) with the query fields and the path
/// parameters merged in. Without either, a body is passed on as it came:
/// checked to be one JSON object, not parsed into a tree and encoded again.
fn request_body(
    body: &Bytes,
    query: Map<String, Value>,
    params: std::collections::BTreeMap<String, String>,
) -> Result<Bytes, String> {
    let empty = body.iter().all(u8::is_ascii_whitespace);
    if params.is_empty() && query.is_empty() {
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
    object.extend(query);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({ "type": "object", "properties": {
            "user_id": { "type": "string" },
            "limit": { "type": ["integer", "null"], "minimum": 1 },
            "ratio": { "type": "number" },
            "all": { "type": "boolean" },
        }})
    }

    #[test]
    fn query_values_take_their_fields_types() -> Result<(), String> {
        let fields = query_fields(
            "limit=20&cursor=123&ratio=0.5&all=true&name=a%20b",
            Some(&schema()),
        )?;
        assert_eq!(fields["limit"], json!(20));
        assert_eq!(
            fields["cursor"],
            json!("123"),
            "not in the schema: a string"
        );
        assert_eq!(fields["ratio"], json!(0.5));
        assert_eq!(fields["all"], json!(true));
        assert_eq!(fields["name"], json!("a b"));
        assert!(query_fields("", Some(&schema()))?.is_empty());
        Ok(())
    }

    #[test]
    fn a_query_value_of_the_wrong_type_or_given_twice_is_refused() {
        for (query, words) in [
            ("limit=ten", "whole number"),
            ("ratio=x", "a number"),
            ("all=yes", "true or false"),
            ("limit=1&limit=2", "more than once"),
        ] {
            match query_fields(query, Some(&schema())) {
                Err(message) => assert!(message.contains(words), "{query}: {message}"),
                Ok(fields) => panic!("{query} accepted: {fields:?}"),
            }
        }
        assert!(
            query_fields(&"a=b&".repeat(2000), None).is_err(),
            "too long"
        );
    }

    #[test]
    fn the_path_wins_over_the_query_which_wins_over_the_body() -> Result<(), String> {
        let query = query_fields("id=q&limit=5", Some(&schema()))?;
        let params = [("id".to_owned(), "p".to_owned())].into_iter().collect();
        let merged = request_body(
            &Bytes::from_static(br#"{"id":"b","limit":1,"x":1}"#),
            query,
            params,
        )?;
        let merged: Value = serde_json::from_slice(&merged).map_err(|e| e.to_string())?;
        assert_eq!(merged, json!({"id": "p", "limit": 5, "x": 1}));
        Ok(())
    }
}
