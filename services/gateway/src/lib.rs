//! The `gateway` service of the reference system: HTTP gateway: REST in front of the NATS services.
//!
//! For now it joins discovery (`$SRV.PING|INFO|STATS`) and waits for
//! shutdown; its endpoints and events arrive with the reference system.

use std::future::Future;

use switchboard::service::{DrainReport, ServeError, Service, ServiceBuilder};

/// The service as discovery reports it.
pub fn service() -> ServiceBuilder {
    Service::builder("gateway", env!("CARGO_PKG_VERSION"))
        .description("HTTP gateway: REST in front of the NATS services")
}

/// Runs the service with the connection settings from the environment until
/// `shutdown` resolves, then drains it.
///
/// # Errors
///
/// When NATS cannot be reached or the service cannot register.
pub async fn run(shutdown: impl Future<Output = ()>) -> Result<DrainReport, ServeError> {
    service().serve_from_env(shutdown).await
}
