//! The `inventory` binary: configuration from `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`.

#[global_allocator]
static ALLOCATOR: switchboard::Allocator = switchboard::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchboard::telemetry::init();
    let nats = switchboard::connect::ConnectConfig::from_env("inventory")
        .connect()
        .await?;
    inventory::run(nats.clone(), switchboard::shutdown::signal()).await?;
    nats.drain().await?;
    Ok(())
}
