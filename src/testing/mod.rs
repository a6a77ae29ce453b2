//! Real, throw-away NATS servers for tests (feature `testing`).
//!
//! Tests never mock NATS. [`TestServer::start`] runs the same
//! [`NatsServer`](crate::server::NatsServer) that `switchboard up` runs, on
//! free loopback ports with a temporary JetStream store; it is killed when
//! dropped — also when the test panics — and its folder removed. Each test
//! gets its own server, so tests run in parallel.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::testing::TestServer;
//!
//! let mut server = TestServer::start().await?;
//! let client = server.client().await?;
//! client.publish("greeting", "hello".into()).await?;
//! server.restart().await?; // same port, same store
//! # Ok(()) }
//! ```

mod cluster;
mod netns;
mod otlp;
mod ports;

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::server::{NatsServer, ServerError, ServerOptions};

pub use cluster::TestCluster;
pub use netns::{Network, NetworkError};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use ports::{free_port, free_port_block};

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestServerError {
    /// The server failed to start, stop or restart.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Connecting a client failed.
    #[error("cannot connect to the test server: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// Temporary files could not be prepared.
    #[error("test server set-up: {0}")]
    Io(#[from] std::io::Error),
    /// The namespaces of a partitionable cluster could not be made.
    #[error(transparent)]
    Network(#[from] NetworkError),
}

/// How to configure a test server: extra config text and environment.
#[derive(Debug, Clone, Default)]
pub struct TestServerConfig {
    /// Config file text (nats.conf syntax) written to the server's temp folder,
    /// e.g. an `accounts { … }` block for auth tests. Ports, host and store
    /// are set by the harness and override what this text says.
    pub config: String,
    /// A config file to use as it is (e.g. the project's `nats.conf`),
    /// instead of `config`.
    pub config_file: Option<PathBuf>,
    /// Environment for the server (e.g. `SB_ADMIN_PASSWORD`).
    pub env: Vec<(String, String)>,
}

impl TestServerConfig {
    /// Adds config text.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config.push_str(&text.into());
        self.config.push('\n');
        self
    }
    /// Uses an existing config file.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }
    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A nats-server with JetStream on free ports and a temporary store.
#[derive(Debug)]
pub struct TestServer {
    server: NatsServer,
    // Dropped after `server` (field order), so the process is gone before
    // its store is deleted.
    dir: TempDir,
}

impl TestServer {
    /// Starts a plain server (no auth) with JetStream.
    ///
    /// # Errors
    ///
    /// When no nats-server is installed or it fails to start.
    pub async fn start() -> Result<TestServer, TestServerError> {
        TestServer::with_config(TestServerConfig::default()).await
    }

    /// Starts a server with extra configuration (the config hook).
    ///
    /// # Errors
    ///
    /// As [`TestServer::start`], plus a refused configuration.
    pub async fn with_config(config: TestServerConfig) -> Result<TestServer, TestServerError> {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-test-")
            .tempdir()?;
        let config_file = match &config.config_file {
            Some(path) => path.clone(),
            None => {
                let path = dir.path().join("nats.conf");
                std::fs::write(&path, &config.config)?;
                path
            }
        };
        let mut options = ServerOptions::default()
            .name(format!("test-nats-{}", dir.path().display()))
            .config_file(config_file)
            .store_dir(dir.path().join("jetstream"));
        options.env = config.env;
        let server = start_on_free_ports(options).await?;
        Ok(TestServer { server, dir })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.client_url()
    }

    /// The monitoring `host:port`.
    pub fn monitor_addr(&self) -> String {
        self.server.monitor_addr()
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// The temporary folder (config, store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An anonymous client (for servers without auth).
    ///
    /// # Errors
    ///
    /// When the server refuses or cannot be reached.
    pub async fn client(&self) -> Result<async_nats::Client, TestServerError> {
        Ok(async_nats::connect(self.url()).await?)
    }

    /// Graceful stop (SIGTERM).
    ///
    /// # Errors
    ///
    /// When the OS cannot stop the process.
    pub async fn stop(&mut self) -> Result<(), TestServerError> {
        self.server.stop().await?;
        Ok(())
    }

    /// Hard stop (SIGKILL), as a crash.
    ///
    /// # Errors
    ///
    /// When the OS cannot kill the process.
    pub async fn kill(&mut self) -> Result<(), TestServerError> {
        self.server.kill().await?;
        Ok(())
    }

    /// Starts it again on the same ports with the same store (stopping it
    /// first if it still runs); stored JetStream data survives.
    ///
    /// # Errors
    ///
    /// When it fails to start again.
    pub async fn restart(&mut self) -> Result<(), TestServerError> {
        self.server.restart().await?;
        Ok(())
    }
}

/// Picks free ports and starts; if another test grabbed a port between the
/// pick and the bind, tries again with new ports.
pub(crate) async fn start_on_free_ports(options: ServerOptions) -> Result<NatsServer, ServerError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let options = options
            .clone()
            .port(free_port()?)
            .monitor_port(free_port()?);
        match NatsServer::start(options).await {
            Err(ServerError::PortInUse { .. }) if attempt < 5 => continue,
            other => return other,
        }
    }
}
