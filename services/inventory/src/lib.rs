//! The `inventory` service of the reference system: Stock levels: restock, reserve and release items.
//!
//! For now it joins discovery (`$SRV.PING|INFO|STATS`) and waits for
//! shutdown; its endpoints and events arrive with the request-reply kit.

use std::future::Future;

use switchboard::service::{self, ServiceError, ServiceSpec};

/// What discovery reports about this service.
pub fn spec() -> ServiceSpec {
    ServiceSpec::new(
        "inventory",
        env!("CARGO_PKG_VERSION"),
        "Stock levels: restock, reserve and release items",
    )
}

/// Runs the service with the connection settings from the environment until
/// `shutdown` resolves.
///
/// # Errors
///
/// When NATS cannot be reached or the service cannot register.
pub async fn run(shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    service::serve_from_env(&spec(), shutdown).await
}
