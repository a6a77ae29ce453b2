//! How the CLI's own commands connect: flags, then the environment, then
//! the `switchboard` nats context that `switchboard up` wrote.

use crate::nats_context::{self, CONTEXT_NAME, NatsContext};
use anyhow::Context as _;
use switchboard::connect::ConnectConfig;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// NATS server URL(s) [default: the `switchboard` nats context, else nats://127.0.0.1:4222]
    #[arg(long, env = "NATS_URL", global = true)]
    server: Option<String>,
    /// NATS user
    #[arg(long, env = "NATS_USER", global = true)]
    user: Option<String>,
    /// NATS password
    #[arg(long, env = "NATS_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
}

impl ConnectionArgs {
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let mut config = ConnectConfig {
            name: "switchboard-cli".to_owned(),
            ..ConnectConfig::default()
        };
        let context = nats_context::context_dir()
            .map(|dir| dir.join(format!("{CONTEXT_NAME}.json")))
            .filter(|path| path.is_file())
            .and_then(|path| NatsContext::read(&path).ok());
        match (&self.server, context) {
            (Some(url), _) => config.url = url.clone(),
            (None, Some(context)) => {
                config.url = context.url;
                if !context.user.is_empty() {
                    config = config.user_and_password(context.user, context.password);
                }
            }
            (None, None) => {}
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            config = config.user_and_password(user.clone(), password.clone());
        }
        config
            .connect()
            .await
            .context("is `switchboard up` running? (or set NATS_URL / --server)")
    }
}
