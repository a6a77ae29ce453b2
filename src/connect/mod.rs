//! Connecting a process to NATS from its environment.
//!
//! Every Switchboard process is configured the same way, so that `up`, a
//! shell and a container orchestrator can all start it: `NATS_URL` (one or
//! more comma-separated server URLs), `NATS_USER` and `NATS_PASSWORD`.
//! In a cluster, a process on a node that lost the others moves to one that
//! did not (`quorum`).

pub mod quorum;

use std::time::Duration;

pub use quorum::QuorumWatch;

/// The server URL(s); comma-separated for a cluster.
pub const NATS_URL_ENV: &str = "NATS_URL";
/// The NATS user name.
pub const NATS_USER_ENV: &str = "NATS_USER";
/// The NATS user's password.
pub const NATS_PASSWORD_ENV: &str = "NATS_PASSWORD";
/// Where a server started by `switchboard up` listens.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How to connect; `Default` is the local `switchboard up` server without auth.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// User name, if the server requires one.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<String>,
    /// Connection name shown by `nats server report connections`.
    pub name: String,
}

impl std::fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .finish()
    }
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            url: DEFAULT_URL.to_owned(),
            user: None,
            password: None,
            name: "switchboard".to_owned(),
        }
    }
}

/// Connecting failed; the message names the server and the likely cause.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {url} as {user}: {source}{}", hint(source.kind(), user))]
pub struct ConnectError {
    /// The URL(s) tried.
    pub url: String,
    /// The user (or `anonymous`).
    pub user: String,
    /// The client's error; match on `source.kind()`.
    #[source]
    pub source: async_nats::ConnectError,
}

/// What to set when the server refused or could not be reached: the error
/// alone ("authorization violation", "connection refused") does not say.
fn hint(kind: async_nats::ConnectErrorKind, user: &str) -> String {
    use async_nats::ConnectErrorKind as Kind;
    match kind {
        Kind::AuthorizationViolation => format!(
            " (the server does not know user {user} with this password: set \
             {NATS_USER_ENV} and {NATS_PASSWORD_ENV}; under `switchboard up` a service's \
             password is SB_<NAME>_PASSWORD, generated when unset, and its user is \
             derived from its contract)"
        ),
        Kind::Io | Kind::TimedOut => format!(
            " (is a nats-server running there? set {NATS_URL_ENV}, or start one with \
             `switchboard up`)"
        ),
        _ => String::new(),
    }
}

impl ConnectConfig {
    /// Reads `NATS_URL`, `NATS_USER` and `NATS_PASSWORD`; `name` labels the
    /// connection on the server.
    pub fn from_env(name: impl Into<String>) -> Self {
        let var = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        ConnectConfig {
            url: var(NATS_URL_ENV).unwrap_or_else(|| DEFAULT_URL.to_owned()),
            user: var(NATS_USER_ENV),
            password: var(NATS_PASSWORD_ENV),
            name: name.into(),
        }
    }

    /// Sets user and password.
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Connects. The first connection must succeed (a wrong URL or password
    /// fails fast); after that the client reconnects on its own forever.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] when the server cannot be reached or refuses the user.
    pub async fn connect(&self) -> Result<async_nats::Client, ConnectError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.name)
            .connection_timeout(Duration::from_secs(5));
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        // The server tells a connection its refused publishes out of band:
        // recorded so a call waiting for a reply fails at once (`refusals`).
        let user = self.user.clone().unwrap_or_else(|| "anonymous".to_owned());
        options = options.event_callback(move |event| {
            if let async_nats::Event::ServerError(async_nats::ServerError::Other(message)) = &event
            {
                match crate::refusals::report(&user, message) {
                    Some(refusal) => tracing::warn!(%refusal, "refused by the server"),
                    None => tracing::warn!(error = %message, "server error"),
                }
            }
            async {}
        });
        // A move off a node that lost its cluster goes where `quorum`
        // chose; every other reconnect is the library's choice.
        options = options.reconnect_to_server_callback(|pool, left| async move {
            quorum::reconnect_to(pool, left)
        });
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        options
            .connect(urls.as_slice())
            .await
            .map_err(|source| ConnectError {
                url: self.url.clone(),
                user: self.user.clone().unwrap_or_else(|| "anonymous".to_owned()),
                source,
            })
    }
}
