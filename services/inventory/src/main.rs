//! The `inventory` binary: configuration from `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchboard::telemetry::init();
    inventory::run(switchboard::shutdown::signal()).await?;
    Ok(())
}
