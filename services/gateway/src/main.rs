//! The `gateway` binary: NATS from `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`;
//! HTTP on `SWITCHBOARD_HTTP_ADDR` (default 127.0.0.1:8080).

#[global_allocator]
static ALLOCATOR: switchboard::Allocator = switchboard::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchboard::telemetry::init();
    let config = gateway::GatewayConfig::from_env().map_err(anyhow::Error::msg)?;
    let nats = switchboard::connect::ConnectConfig::from_env("gateway")
        .connect()
        .await?;
    gateway::run(nats.clone(), config, switchboard::shutdown::signal()).await?;
    nats.drain().await?;
    Ok(())
}
