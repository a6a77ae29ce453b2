//! The HTTP gateway: REST in front of the NATS services.
//!
//! It knows no service address and almost no route: the routing table is
//! built from discovery (`$SRV.INFO` endpoint metadata `http_method` and
//! `http_path`) and refreshed periodically, so a new endpoint with HTTP
//! metadata is reachable without touching or restarting the gateway; if
//! discovery briefly fails, the last known table keeps serving.
//!
//! Its own routes: `GET /services` (live discovery), `/healthz`, `/readyz`,
//! `/metrics` (Prometheus), `/openapi.json` and `/asyncapi.json` (generated),
//! `/events` (SSE).
//! [`app`] returns the `Router`, so it is testable without sockets.

mod asyncapi;
mod live;
mod metrics;
mod openapi;
mod proxy;
pub mod routes;
mod schema;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use switchboard::app::AppError;
use switchboard::client::Client;
use switchboard::discovery::{self, Target};
use switchboard::http::{ConnectionStats, HttpLimits};

pub use proxy::DEFAULT_TIMEOUT;
pub use routes::{RefusedClaim, Route, RouteOwners, RouteTable};

/// Largest request body accepted (larger: 413).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Settings; `Default` reads nothing, [`GatewayConfig::from_env`] reads
/// `SWITCHBOARD_HTTP_ADDR`, `SWITCHBOARD_HTTP_TIMEOUT_MS`,
/// `SWITCHBOARD_ROUTED_SERVICES` (comma-separated services; `switchboard
/// up` sets it to the services it runs that have HTTP routes) and
/// `SWITCHBOARD_ROUTE_OWNERS` (the declared owner of each route, also set
/// by `up`).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Deadline of one HTTP request, propagated to the services.
    pub request_timeout: Duration,
    /// How often the routing table is rebuilt from discovery.
    pub refresh_every: Duration,
    /// Services that must be discoverable for `/readyz`, and routed before
    /// the gateway joins discovery (see [`run`]).
    pub required_services: Vec<String>,
    /// Longest wait for the required services before the gateway joins
    /// discovery anyway (a service that never comes must not hide the
    /// gateway; `/readyz` still says what is missing).
    pub join_wait: Duration,
    /// Header read and idle timeouts, connection cap
    /// (`SWITCHBOARD_HTTP_HEADER_TIMEOUT_MS`, `SWITCHBOARD_HTTP_IDLE_TIMEOUT_MS`,
    /// `SWITCHBOARD_HTTP_MAX_CONNECTIONS`).
    pub http_limits: HttpLimits,
    /// The declared owner of each route: a route declared here is taken
    /// from its owner only (see [`routes`](crate::RouteTable::resolve)).
    pub route_owners: RouteOwners,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout: DEFAULT_TIMEOUT,
            refresh_every: Duration::from_secs(2),
            // Run alone, the gateway waits for nobody: it routes what
            // discovery finds. `switchboard up` names what it runs.
            required_services: Vec::new(),
            join_wait: Duration::from_secs(20),
            route_owners: RouteOwners::default(),
            http_limits: HttpLimits::default(),
        }
    }
}

impl GatewayConfig {
    /// Defaults overridden by the environment.
    ///
    /// # Errors
    ///
    /// A message naming a variable that does not parse.
    pub fn from_env() -> Result<Self, String> {
        let mut config = GatewayConfig {
            http_limits: HttpLimits::from_env()?,
            ..GatewayConfig::default()
        };
        if let Ok(addr) = std::env::var(switchboard::app::HTTP_ADDR_ENV) {
            config.addr = addr
                .parse()
                .map_err(|e| format!("SWITCHBOARD_HTTP_ADDR={addr:?}: {e}"))?;
        }
        if let Ok(ms) = std::env::var("SWITCHBOARD_HTTP_TIMEOUT_MS") {
            let ms: u64 = ms
                .parse()
                .map_err(|e| format!("SWITCHBOARD_HTTP_TIMEOUT_MS={ms:?}: {e}"))?;
            config.request_timeout = Duration::from_millis(ms);
        }
        if let Ok(services) = std::env::var(switchboard::app::ROUTED_SERVICES_ENV) {
            config.required_services = services
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Ok(owners) = std::env::var(switchboard::app::ROUTE_OWNERS_ENV) {
            config.route_owners = RouteOwners::from_json(&owners)
                .map_err(|e| format!("{}: {e}", switchboard::app::ROUTE_OWNERS_ENV))?;
        }
        Ok(config)
    }
}

/// What the gateway is and needs: it serves no endpoint of its own (its
/// routes are HTTP), calls every endpoint that has an HTTP route, asks
/// discovery and watches events (`/events`).
pub fn contract() -> switchboard::contract::Contract {
    switchboard::contract::Contract::new("gateway", env!("CARGO_PKG_VERSION"))
        .description("HTTP gateway: REST in front of the NATS services")
        .calls_routed_endpoints()
        .discovers()
        .watches_events()
}

/// The gateway's shared state; cheap to clone (axum clones it for every
/// request: one reference count).
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    nats: async_nats::Client,
    client: Client,
    routes: RwLock<Arc<RouteTable>>,
    known_services: RwLock<Vec<String>>,
    /// What the HTTP server did with its connections (for `/metrics`).
    connections: Arc<ConnectionStats>,
    /// Route claims already logged as refused (each is logged once).
    refused_logged: std::sync::Mutex<std::collections::BTreeSet<RefusedClaim>>,
    config: GatewayConfig,
}

impl Gateway {
    /// A gateway on this connection, with an empty routing table.
    pub fn new(nats: async_nats::Client, config: GatewayConfig) -> Self {
        Gateway {
            shared: Arc::new(Shared {
                client: Client::new(nats.clone()),
                nats,
                routes: RwLock::default(),
                known_services: RwLock::default(),
                refused_logged: std::sync::Mutex::default(),
                connections: Arc::default(),
                config,
            }),
        }
    }

    /// The current routing table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.shared
            .routes
            .read()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The required services that discovery has not shown yet.
    pub fn missing_services(&self) -> Vec<String> {
        let known = self
            .shared
            .known_services
            .read()
            .map(|k| k.clone())
            .unwrap_or_default();
        self.shared
            .config
            .required_services
            .iter()
            .filter(|s| !known.contains(s))
            .cloned()
            .collect()
    }

    /// What the server lets the gateway's user publish: a route it lists,
    /// it can serve. `None` when the server cannot say (before 2.10, or the
    /// user may not ask): then every route stays and a refused call is a
    /// 500 naming the permission.
    async fn call_rules(&self) -> Option<switchboard::user_info::Rules> {
        match switchboard::user_info::ask(&self.shared.nats, Duration::from_millis(500)).await {
            Ok(info) => Some(info.publish),
            Err(error) => {
                tracing::debug!(%error, "the server does not say what the gateway may call");
                None
            }
        }
    }

    /// Rebuilds the routing table from discovery; returns the route count.
    ///
    /// # Errors
    ///
    /// When discovery cannot be asked; the previous table stays.
    pub async fn refresh(&self) -> Result<usize, discovery::DiscoveryError> {
        let instances =
            discovery::info(&self.shared.nats, None, Duration::from_millis(300)).await?;
        let rules = self.call_rules().await;
        let (table, refused) = RouteTable::resolve(
            &instances,
            &self.shared.config.route_owners,
            &self.routes(),
            |subject| rules.as_ref().is_none_or(|r| r.permits(subject)),
        );
        if let Ok(mut logged) = self.shared.refused_logged.lock() {
            for claim in refused {
                if logged.insert(claim.clone()) {
                    tracing::warn!(
                        service = %claim.service,
                        route = %format!("{} {}", claim.method, claim.path),
                        subject = %claim.subject,
                        "not routing this claim: {}",
                        claim.reason
                    );
                }
            }
        }
        let count = table.routes().len();
        if let Ok(mut routes) = self.shared.routes.write() {
            if **routes != table {
                tracing::info!(routes = count, "routing table updated from discovery");
            }
            *routes = Arc::new(table);
        }
        if let Ok(mut known) = self.shared.known_services.write() {
            *known = discovery::summarize(&instances)
                .into_iter()
                .map(|s| s.name)
                .collect();
        }
        Ok(count)
    }
}

/// The HTTP application.
pub fn app(gateway: Gateway) -> Router {
    // Install the recorder before the first request is counted.
    let _ = metrics::handle();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/services", get(services))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .route("/asyncapi.json", get(asyncapi_json))
        .route("/events", get(live::events))
        .fallback(proxy::forward)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(gateway)
}

/// Every error leaves as the JSON error object, also those axum answers
/// itself (a 405 of a built-in route, an extractor's rejection), which are
/// plain text: their words are kept, in our shape, with their headers
/// (`Allow`, `Retry-After`).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        words => words.to_owned(),
    };
    let trace = switchboard::trace_context::TraceContext::new_root();
    let mut json = proxy::error(status, &message, &trace);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

async fn readyz(State(gateway): State<Gateway>) -> Response {
    let connected =
        gateway.shared.nats.connection_state() == async_nats::connection::State::Connected;
    metrics::connection_state(connected);
    let missing = gateway.missing_services();
    let ready = connected && missing.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(
            json!({ "ready": ready, "nats_connected": connected, "missing_services": missing }),
        ),
    )
        .into_response()
}

async fn services(State(gateway): State<Gateway>) -> Response {
    let window = Duration::from_millis(300);
    let (info, stats) = tokio::join!(
        discovery::info(&gateway.shared.nats, None, window),
        discovery::stats(&gateway.shared.nats, Target::all(), window)
    );
    match (info, stats) {
        (Ok(info), Ok(stats)) => axum::Json(json!({
            "services": discovery::summarize(&info).into_iter().map(|s| json!({
                "name": s.name, "versions": s.versions, "instances": s.instances, "endpoints": s.endpoints,
            })).collect::<Vec<_>>(),
            "instances": info,
            "stats": stats,
        }))
        .into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "error": { "code": 503, "message": "discovery unavailable" } }))).into_response(),
    }
}

async fn metrics_text(State(gateway): State<Gateway>) -> Response {
    metrics::connection_state(
        gateway.shared.nats.connection_state() == async_nats::connection::State::Connected,
    );
    metrics::http_connections(&gateway.shared.connections.counts());
    if let Ok(stats) = discovery::stats(
        &gateway.shared.nats,
        Target::all(),
        Duration::from_millis(200),
    )
    .await
    {
        metrics::service_stats(&stats);
    }
    match metrics::handle() {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics recorder unavailable",
        )
            .into_response(),
    }
}

async fn openapi_json(State(gateway): State<Gateway>) -> Response {
    axum::Json(openapi::document(&gateway.routes())).into_response()
}

async fn asyncapi_json(State(gateway): State<Gateway>) -> Response {
    match discovery::info(&gateway.shared.nats, None, Duration::from_millis(300)).await {
        Ok(instances) => axum::Json(asyncapi::document(&instances)).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": { "code": 503, "message": "discovery unavailable" } })),
        )
            .into_response(),
    }
}

/// Errors of [`run`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {addr}: {source} (set SWITCHBOARD_HTTP_ADDR to another address)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Serving HTTP failed.
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// Joining discovery failed.
    #[error(transparent)]
    App(#[from] AppError),
    /// An environment variable does not parse.
    #[error("{0}")]
    Config(String),
}

/// [`run`] with [`GatewayConfig::from_env`]: the gateway binary's `run`.
///
/// # Errors
///
/// [`GatewayError::Config`] for a variable that does not parse, else as [`run`].
pub async fn run_from_env(
    nats: async_nats::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let config = GatewayConfig::from_env().map_err(GatewayError::Config)?;
    run(nats, config, shutdown).await
}

/// Joining discovery is the gateway's "ready": `switchboard up` prints
/// ready once every service answers `$SRV.INFO`, and a request sent at that
/// moment must find its route — so the gateway joins only once its table
/// routes every required service (or after `wait`, with a warning).
async fn wait_for_routes(gateway: &Gateway, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Err(error) = gateway.refresh().await {
            tracing::warn!(%error, "discovery failed; no routes yet");
        }
        let missing = gateway.missing_services();
        if missing.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(missing = %missing.join(", "), "joining discovery without routes for these services");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves HTTP and refreshes routes until `shutdown`; in-flight HTTP
/// requests finish before it returns.
///
/// # Errors
///
/// [`GatewayError`] when the address cannot be bound or the gateway cannot
/// join discovery.
pub async fn run(
    nats: async_nats::Client,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let addr = config.addr;
    let refresh_every = config.refresh_every;
    let join_wait = config.join_wait;
    let gateway = Gateway::new(nats.clone(), config);
    let listener = switchboard::http::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })?;
    tracing::info!(%addr, "HTTP gateway listening");
    // HTTP is served from now on (`/readyz` tells what is missing); the
    // gateway joins discovery once it routes every required service.
    let serving = tokio::spawn(
        switchboard::http::Server::new(listener, app(gateway.clone()))
            .limits(gateway.shared.config.http_limits.clone())
            .with_stats(gateway.shared.connections.clone())
            .run(shutdown),
    );
    wait_for_routes(&gateway, join_wait).await;
    let service = contract()
        .service()
        .metadata("http_addr", addr.to_string())
        .start(nats)
        .await
        .map_err(AppError::from)?;

    let refresher = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh_every);
            loop {
                tick.tick().await;
                if let Err(error) = gateway.refresh().await {
                    tracing::warn!(%error, "discovery failed; keeping the last routing table");
                }
            }
        })
    };
    let served = match serving.await {
        Ok(result) => result.map_err(GatewayError::Serve),
        Err(join) => Err(GatewayError::Serve(std::io::Error::other(join))),
    };
    refresher.abort();
    service.drain().await;
    served
}
