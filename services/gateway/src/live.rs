//! `GET /events`: the live event stream as Server-Sent Events.
//!
//! Each client has its own bounded buffer. A client that reads too slowly
//! loses events, never slows the gateway or other clients, and is told how
//! many it missed (an SSE event `dropped`).

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::response::sse::{Event as Sse, KeepAlive, Sse as SseResponse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use switchboard::events::envelope;
use tokio::sync::mpsc;

use crate::Gateway;

/// Events buffered per client before it starts losing them.
const BUFFER: usize = 256;

#[derive(Debug, serde::Deserialize)]
pub(crate) struct Filter {
    subject: Option<String>,
}

pub(crate) async fn events(
    State(gateway): State<Gateway>,
    Query(filter): Query<Filter>,
) -> Response {
    let subject = filter.subject.unwrap_or_else(|| "events.>".to_owned());
    let trace = switchboard::trace_context::TraceContext::new_root();
    // Bounded: a SUB line the server refuses would close the gateway's connection.
    let valid = (subject == "events.>" || subject.starts_with("events."))
        && switchboard::limits::check_subject(&subject).is_ok()
        && !subject.chars().any(|c| c.is_whitespace() || c.is_control())
        && !subject.split('.').any(str::is_empty);
    if !valid {
        return crate::proxy::error(
            axum::http::StatusCode::BAD_REQUEST,
            "subject must be events.> or start with events.",
            &trace,
        );
    }
    let mut subscription = match gateway.shared.nats.subscribe(subject).await {
        Ok(subscription) => subscription,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe for SSE");
            return crate::proxy::error(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "events unavailable",
                &trace,
            );
        }
    };
    let (tx, rx) = mpsc::channel::<Sse>(BUFFER);
    tokio::spawn(async move {
        let mut dropped: u64 = 0;
        while let Some(message) = subscription.next().await {
            if tx.is_closed() {
                break; // the client went away
            }
            if dropped > 0 {
                let notice = Sse::default()
                    .event("dropped")
                    .data(json!({ "dropped": dropped }).to_string());
                if tx.try_send(notice).is_ok() {
                    dropped = 0;
                }
            }
            if tx.try_send(to_sse(&message)).is_err() {
                dropped += 1;
            }
        }
        let _ = subscription.unsubscribe().await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    });
    SseResponse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn to_sse(message: &async_nats::Message) -> Sse {
    let attributes = envelope::read_event_attributes(message.headers.as_ref()).ok();
    let data: serde_json::Value = serde_json::from_slice(&message.payload)
        .unwrap_or_else(|_| json!(String::from_utf8_lossy(&message.payload)));
    let body = json!({
        "subject": message.subject.as_str(),
        "attributes": attributes,
        "data": data,
    });
    let mut event = Sse::default().event("event").data(body.to_string());
    if let Some(a) = attributes {
        event = event.id(a.id);
    }
    event
}
