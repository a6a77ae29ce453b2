//! The `users` binary: configuration from `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchboard::telemetry::init();
    users::run(switchboard::shutdown::signal()).await?;
    Ok(())
}
