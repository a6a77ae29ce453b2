//! The typed call every scenario makes: a JSON `Payload` echoed back.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::service::{Context, Endpoint, RunningService, Service};

/// The request and the reply.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Payload {
    /// `bytes` of filler.
    pub data: String,
}

impl Payload {
    /// A payload of `bytes` characters.
    pub fn of(bytes: usize) -> Self {
        Payload {
            data: "x".repeat(bytes),
        }
    }
}

/// The Switchboard endpoint `echo` (POST /echo through the gateway).
pub fn endpoint() -> Endpoint {
    Endpoint::new("echo", |_ctx: Context, req: Payload| async move {
        Ok::<_, ServiceError>(req)
    })
    .http("POST", "/echo")
}

/// The service `bench` with only [`endpoint`], on `nats`, subscribed when
/// this returns.
pub async fn start_service(nats: &async_nats::Client) -> anyhow::Result<RunningService> {
    let service = Service::builder("bench", "1.0.0")
        .endpoint(endpoint())
        .start(nats.clone())
        .await?;
    nats.flush().await?;
    Ok(service)
}
