//! `GET /events`: the live event stream as Server-Sent Events (the kit's
//! [`live`](switchboard::events::live) watcher: a bounded buffer per
//! client; a slow client loses events and is told how many, as an SSE
//! event `dropped`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use switchboard::http::LiveError;

use crate::Gateway;

#[derive(Debug, serde::Deserialize)]
pub(crate) struct Filter {
    subject: Option<String>,
}

pub(crate) async fn events(
    State(gateway): State<Gateway>,
    Query(filter): Query<Filter>,
) -> Response {
    match switchboard::http::watch_events(&gateway.shared.nats, filter.subject).await {
        Ok(feed) => feed,
        Err(e) => {
            let status = match e {
                LiveError::BadFilter => StatusCode::BAD_REQUEST,
                _ => {
                    tracing::error!(error = %e, "cannot subscribe for SSE");
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            let trace = switchboard::trace_context::TraceContext::new_root();
            crate::proxy::error(status, &e.to_string(), &trace)
        }
    }
}
