//! The live dashboard `switchboard up` serves on loopback: one page that
//! shows what the system is doing (services and instances, request and
//! error rates per endpoint, breakers, streams and consumers, live events,
//! dead letters) and can replay and purge dead letters.
//!
//! It runs with the operator's connection (it can change the DLQ), so it
//! is never exposed: it listens on loopback only, answers only requests
//! addressed to a loopback host (a DNS-rebinding page cannot reach it) and
//! takes a change only with the `X-Switchboard-Dashboard` header (a
//! cross-site form cannot set it, and a cross-site `fetch` with it needs a
//! CORS preflight, which is never granted).
//!
//! The page is plain HTML, CSS and JavaScript compiled into the binary
//! (`assets/`): no CDN, works offline. When NATS is unreachable the API
//! answers 503 and the page says so until the connection is back.

mod api;
mod assets;
mod traces;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use switchboard::telemetry::collector;

/// The header a change must carry.
pub const CHANGE_HEADER: &str = "x-switchboard-dashboard";

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// The address is not a loopback address: the dashboard has operator
    /// rights and no authentication.
    #[error("the dashboard listens on loopback only, not {0}")]
    NotLoopback(SocketAddr),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The dashboard bound to its address, not yet serving.
#[derive(Debug)]
pub struct Dashboard {
    listener: tokio::net::TcpListener,
}

impl Dashboard {
    /// Binds `addr` (loopback only). Bound first and served later, so its
    /// address (with port 0, the one picked) can be handed to the services
    /// before they start (`up --traces`).
    ///
    /// # Errors
    ///
    /// [`DashboardError`]: not loopback, or the port is taken.
    pub async fn bind(addr: SocketAddr) -> Result<Self, DashboardError> {
        if !addr.ip().is_loopback() {
            return Err(DashboardError::NotLoopback(addr));
        }
        let listener = switchboard::http::bind(addr)
            .await
            .map_err(|source| DashboardError::Bind { addr, source })?;
        Ok(Dashboard { listener })
    }

    /// The address it listens on (the port, when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves the page over `nats` (an operator's connection) until
    /// `shutdown` completes.
    pub async fn serve(
        self,
        nats: async_nats::Client,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        // The gateway's limits (the same variables): a browser tab left
        // open or a slow client cannot pile up connections here either.
        let limits = switchboard::http::HttpLimits::from_env().unwrap_or_else(|error| {
            tracing::warn!(%error, "using the default HTTP limits");
            switchboard::http::HttpLimits::default()
        });
        if let Err(error) =
            switchboard::http::serve(self.listener, router(nats), limits, shutdown).await
        {
            tracing::error!(%error, "the dashboard stopped");
        }
    }
}

/// The page and its API.
pub fn router(nats: async_nats::Client) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/style.css", get(assets::style))
        .route("/api/overview", get(api::overview))
        .route("/api/events", get(api::events))
        .route("/api/dlq", get(api::dead_letters))
        .route("/api/dlq/{id}", get(api::dead_letter))
        .route("/api/dlq/{id}/replay", post(api::replay))
        .route("/api/dlq/purge", post(api::purge))
        .route("/api/traces", get(traces::status))
        .route("/api/traces/{trace_id}", get(traces::trace))
        .route(collector::TRACES_PATH, post(traces::export))
        .layer(middleware::from_fn(guard))
        .with_state(api::State::new(nats))
}

/// Loopback hosts only; changes only with [`CHANGE_HEADER`].
async fn guard(request: Request, next: Next) -> Response {
    // Exactly one Host, and a loopback one.
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().unwrap_or_default(),
        _ => "",
    };
    if !is_loopback_host(host) {
        return (
            StatusCode::FORBIDDEN,
            "the dashboard answers on loopback only",
        )
            .into_response();
    }
    // Spans from the services' exporters: they send no header of ours,
    // but a protobuf body, which no cross-site form can and no cross-site
    // `fetch` may without a (never granted) preflight.
    let export = request.uri().path() == collector::TRACES_PATH
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(collector::PROTOBUF.as_bytes()));
    if request.method() != Method::GET && !export && !request.headers().contains_key(CHANGE_HEADER)
    {
        return (
            StatusCode::FORBIDDEN,
            "a change needs the x-switchboard-dashboard header",
        )
            .into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    response
}

/// `127.0.0.1:8081`, `localhost:8081`, `[::1]:8081` (port optional).
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_hosts_pass() {
        for host in [
            "127.0.0.1:8081",
            "localhost:8081",
            "LOCALHOST",
            "[::1]:8081",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example:8081",
            "10.0.0.1:8081",
            "[::2]:80",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
