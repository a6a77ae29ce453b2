//! `switchboard call <subject> [json]`: one request with the kit's client,
//! like `nats req`, but with typed errors and a proper exit code.

use std::time::Duration;

use switchboard::client::{CallError, CallOptions, Client};

use super::connection::ConnectionArgs;

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// Subject, e.g. `orders.get`.
    subject: String,
    /// JSON request body (default `{}`; `-` reads standard input).
    #[arg(default_value = "{}")]
    body: String,
    /// Timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

pub async fn run(connection: &ConnectionArgs, args: CallArgs) -> anyhow::Result<()> {
    let body = if args.body == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        args.body
    };
    let request: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("the request is not JSON: {e}"))?;
    let client = Client::new(connection.connect().await?);
    let options = CallOptions::default()
        .timeout(Duration::from_millis(args.timeout_ms))
        .max_retries(0);
    match client
        .call_with::<_, serde_json::Value>(&args.subject, &request, options)
        .await
    {
        Ok(reply) => {
            println!("{}", serde_json::to_string_pretty(&reply)?);
            Ok(())
        }
        Err(CallError::Rejected(error)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "error": error }))?
            );
            anyhow::bail!("{} answered {} {}", args.subject, error.code, error.message)
        }
        Err(other) => Err(other.into()),
    }
}
