//! The trace view: spans the services export to the dashboard itself
//! (`switchboard up --traces` points their OTLP exporter here), kept in
//! memory (the newest only) and looked up by trace id. With traces sent
//! elsewhere (`OTEL_EXPORTER_OTLP_ENDPOINT`), that collector is the place
//! to look, and the page says so.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State as Extract};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::api::State;
use switchboard::telemetry::collector;

/// `POST /v1/traces`: an OTLP/HTTP export (protobuf).
pub(super) async fn export(Extract(state): Extract<State>, body: Bytes) -> Response {
    match collector::decode(&body) {
        Ok(spans) => {
            state.spans.extend(spans);
            (
                [(header::CONTENT_TYPE, collector::PROTOBUF)],
                collector::accepted(),
            )
                .into_response()
        }
        Err(error) => (
            StatusCode::BAD_REQUEST,
            format!("not an OTLP trace export: {error}"),
        )
            .into_response(),
    }
}

/// `GET /api/traces`: whether spans arrive here at all.
pub(super) async fn status(Extract(state): Extract<State>) -> Json<serde_json::Value> {
    Json(json!({ "spans": state.spans.len() }))
}

/// `GET /api/traces/{trace_id}`: the trace's spans by start time.
pub(super) async fn trace(
    Extract(state): Extract<State>,
    Path(trace_id): Path<String>,
) -> Response {
    let valid = trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "a trace id is 32 hex digits" })),
        )
            .into_response();
    }
    Json(state.spans.trace(&trace_id)).into_response()
}
