//! The `orders` binary: configuration from `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchboard::telemetry::init();
    orders::run(switchboard::shutdown::signal()).await?;
    Ok(())
}
