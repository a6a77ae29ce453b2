//! Running a service on the NATS Services API (ADR-32).
//!
//! A service announces itself under `$SRV.PING|INFO|STATS` so that `switchboard
//! ls`, the gateway and the `nats` CLI find it by name, without a registry.
//! This module runs a service from its [`ServiceSpec`] until the shutdown
//! future resolves, then leaves discovery and drains the connection so that
//! nothing already accepted is lost.

use std::future::Future;

/// Who a service is: what discovery reports about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service name, `^[A-Za-z0-9_-]+$` (ADR-32).
    pub name: String,
    /// SemVer version.
    pub version: String,
    /// One line for `nats micro ls`.
    pub description: String,
}

impl ServiceSpec {
    /// A spec with the given name, version and description.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        ServiceSpec {
            name: name.into(),
            version: version.into(),
            description: description.into(),
        }
    }
}

/// Errors of [`run_until`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The service could not connect to NATS.
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    /// The Services API refused the service (bad name or version, or no connection).
    #[error("cannot start service {name}: {message}")]
    Start {
        /// The service.
        name: String,
        /// Why.
        message: String,
    },
    /// Stopping or draining failed; some replies may not have been sent.
    #[error("service {name} did not stop cleanly: {message}")]
    Stop {
        /// The service.
        name: String,
        /// Why.
        message: String,
    },
}

/// Registers the service, serves until `shutdown` resolves, then stops it and
/// drains the client.
///
/// # Errors
///
/// [`ServiceError::Start`] when registration fails, [`ServiceError::Stop`]
/// when the connection cannot be drained.
pub async fn run_until(
    client: async_nats::Client,
    spec: &ServiceSpec,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    use async_nats::service::ServiceExt;

    let start_err = |e: &dyn std::fmt::Display| ServiceError::Start {
        name: spec.name.clone(),
        message: e.to_string(),
    };
    let service = client
        .service_builder()
        .description(&spec.description)
        .start(&spec.name, &spec.version)
        .await
        .map_err(|e| start_err(&e))?;
    // Flush so that the `$SRV` subscriptions exist on the server before we
    // report the service as started.
    client.flush().await.map_err(|e| start_err(&e))?;
    tracing::info!(service = %spec.name, version = %spec.version, "service started");

    shutdown.await;

    let stop_err = |e: &dyn std::fmt::Display| ServiceError::Stop {
        name: spec.name.clone(),
        message: e.to_string(),
    };
    service.stop().await.map_err(|e| stop_err(&e))?;
    client.drain().await.map_err(|e| stop_err(&e))?;
    tracing::info!(service = %spec.name, "service stopped");
    Ok(())
}

/// Connects with [`ConnectConfig::from_env`](crate::connect::ConnectConfig::from_env)
/// (the connection is named after the service) and runs until `shutdown`.
///
/// # Errors
///
/// As [`run_until`], plus [`ServiceError::Connect`].
pub async fn serve_from_env(
    spec: &ServiceSpec,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let client = crate::connect::ConnectConfig::from_env(&spec.name)
        .connect()
        .await?;
    run_until(client, spec, shutdown).await
}
