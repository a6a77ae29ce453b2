//! The JSON (and SSE) the page reads: what is running, from discovery and
//! JetStream; dead letters, from the `DLQ` stream. Every answer is fresh
//! (the page polls); when NATS is unreachable every answer is a 503 with
//! the reason, which the page shows.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use axum::Json;
use axum::extract::{Path, Query, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::json;

use switchboard::events::{DeadLetter, DeadLetters, EventError};
use switchboard::micro::{InfoResponse, StatsResponse};
use switchboard::telemetry::collector::SpanStore;

/// How long discovery waits for answers (instances answer in
/// milliseconds on a healthy system).
const DISCOVERY_WINDOW: Duration = Duration::from_millis(300);
/// Longest any answer takes before it is a 503.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// Spans kept for the trace view (the newest; a few minutes of a busy
/// system).
const SPANS_KEPT: usize = 50_000;

/// What the handlers share: the operator's connection, and the spans
/// exported to the dashboard.
#[derive(Debug, Clone)]
pub(super) struct State {
    nats: async_nats::Client,
    pub(super) spans: Arc<SpanStore>,
    /// Opened (the stream ensured) once, not on every poll.
    dlq: Arc<tokio::sync::OnceCell<DeadLetters>>,
}

impl State {
    pub(super) fn new(nats: async_nats::Client) -> Self {
        State {
            nats,
            spans: Arc::new(SpanStore::new(SPANS_KEPT)),
            dlq: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.nats.clone())
    }

    /// `Err(503)` while the connection is down: nothing asked of NATS now
    /// would be answered.
    fn connected(&self) -> Result<(), ApiError> {
        match self.nats.connection_state() {
            ConnectionState::Connected => Ok(()),
            state => Err(ApiError::Unavailable(format!(
                "NATS is unreachable ({state})"
            ))),
        }
    }
}

/// Why an answer is not what was asked: the page shows the text.
#[derive(Debug)]
pub(super) enum ApiError {
    /// NATS (or JetStream) cannot answer now: 503.
    Unavailable(String),
    /// No such dead letter: 404.
    NotFound(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            ApiError::Unavailable(text) => (StatusCode::SERVICE_UNAVAILABLE, text),
            ApiError::NotFound(text) => (StatusCode::NOT_FOUND, text),
        };
        (status, Json(json!({ "error": text }))).into_response()
    }
}

impl From<EventError> for ApiError {
    fn from(error: EventError) -> Self {
        match error {
            EventError::UnknownDeadLetter(_) => ApiError::NotFound(error.to_string()),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl From<switchboard::discovery::DiscoveryError> for ApiError {
    fn from(error: switchboard::discovery::DiscoveryError) -> Self {
        ApiError::Unavailable(error.to_string())
    }
}

/// Runs `work` with the answer timeout; a timeout is a 503.
async fn bounded<T>(work: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
    tokio::time::timeout(ANSWER_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::Unavailable(
                "NATS did not answer in time".to_owned(),
            ))
        })
}

#[derive(Debug, Serialize)]
pub(super) struct Overview {
    /// The server the dashboard is connected to.
    server: String,
    /// Every instance's `$SRV.INFO` answer.
    info: Vec<InfoResponse>,
    /// Every instance's `$SRV.STATS` answer (the page joins them by id).
    stats: Vec<StatsResponse>,
    streams: Vec<StreamView>,
}

#[derive(Debug, Serialize)]
struct StreamView {
    name: String,
    subjects: Vec<String>,
    messages: u64,
    bytes: u64,
    replicas: usize,
    consumers: Vec<ConsumerView>,
}

#[derive(Debug, Serialize)]
struct ConsumerView {
    name: String,
    /// Messages not yet delivered.
    pending: u64,
    /// Delivered, not yet acknowledged.
    ack_pending: usize,
    redelivered: usize,
    waiting: usize,
    /// A keyed consumer's partition: the instance holding it (`$SRV.STATS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    held_by: Option<String>,
}

pub(super) async fn overview(Extract(state): Extract<State>) -> Result<Json<Overview>, ApiError> {
    state.connected()?;
    let js = state.js();
    bounded(async {
        let (info, stats, streams) = tokio::join!(
            switchboard::discovery::info(&state.nats, None, DISCOVERY_WINDOW),
            switchboard::discovery::stats(
                &state.nats,
                switchboard::discovery::Target::all(),
                DISCOVERY_WINDOW
            ),
            streams(&js),
        );
        let server = state.nats.server_info();
        let stats = stats?;
        let mut streams = streams.map_err(ApiError::Unavailable)?;
        let holders = switchboard::discovery::partition_holders(&stats);
        for consumer in streams.iter_mut().flat_map(|s| s.consumers.iter_mut()) {
            consumer.held_by = holders.get(&consumer.name).map(|h| h.join(", "));
        }
        Ok(Json(Overview {
            server: format!("{}:{}", server.host, server.port),
            info: info?,
            stats,
            streams,
        }))
    })
    .await
}

async fn streams(js: &async_nats::jetstream::Context) -> Result<Vec<StreamView>, String> {
    let infos: Vec<_> = js
        .streams()
        .try_collect()
        .await
        .map_err(|e| format!("cannot list streams: {e}"))?;
    let mut views = Vec::with_capacity(infos.len());
    for info in infos {
        let name = info.config.name.clone();
        let consumers: Vec<_> = match js.get_stream_no_info(&name).await {
            Ok(stream) => stream.consumers().try_collect().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        views.push(StreamView {
            subjects: info.config.subjects.clone(),
            messages: info.state.messages,
            bytes: info.state.bytes,
            replicas: info.config.num_replicas,
            consumers: consumers
                .into_iter()
                .map(|c| ConsumerView {
                    name: c.name,
                    pending: c.num_pending,
                    ack_pending: c.num_ack_pending,
                    redelivered: c.num_redelivered,
                    waiting: c.num_waiting,
                    held_by: None,
                })
                .collect(),
            name,
        });
    }
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(views)
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Filter {
    subject: Option<String>,
}

/// The live feed: `events.>` or the subject asked for, as SSE.
pub(super) async fn events(
    Extract(state): Extract<State>,
    Query(filter): Query<Filter>,
) -> Response {
    match switchboard::http::watch_events(&state.nats, filter.subject).await {
        Ok(feed) => feed,
        Err(e @ switchboard::http::LiveError::BadFilter) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e) => ApiError::Unavailable(e.to_string()).into_response(),
    }
}

async fn open_dlq(state: &State) -> Result<&DeadLetters, ApiError> {
    state.connected()?;
    // Until it succeeds (NATS may be down at first), every call tries.
    let js = state.js();
    Ok(state.dlq.get_or_try_init(|| DeadLetters::open(&js)).await?)
}

pub(super) async fn dead_letters(
    Extract(state): Extract<State>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    bounded(async { Ok(Json(open_dlq(&state).await?.list().await?)) }).await
}

pub(super) async fn dead_letter(
    Extract(state): Extract<State>,
    Path(id): Path<u64>,
) -> Result<Json<DeadLetter>, ApiError> {
    bounded(async { Ok(Json(open_dlq(&state).await?.get(id).await?)) }).await
}

pub(super) async fn replay(
    Extract(state): Extract<State>,
    Path(id): Path<u64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let published = bounded(async { Ok(open_dlq(&state).await?.replay(id).await?) }).await?;
    tracing::info!(id, stream = %published.stream, sequence = published.sequence, "dead letter replayed from the dashboard");
    Ok(Json(json!({
        "replayed": id,
        "stream": published.stream,
        "sequence": published.sequence,
    })))
}

pub(super) async fn purge(
    Extract(state): Extract<State>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let purged = bounded(async { Ok(open_dlq(&state).await?.purge().await?) }).await?;
    tracing::warn!(purged, "dead letters purged from the dashboard");
    Ok(Json(json!({ "purged": purged })))
}
