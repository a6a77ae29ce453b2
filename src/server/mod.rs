//! The embedded `nats-server`: find it, start it, know when it is ready, stop it.
//!
//! `switchboard up` and the test harness both run the real server through
//! [`NatsServer`], so what the tests exercise is what people run. The server
//! is started in its own process group, so a Ctrl-C in the terminal reaches
//! only the supervisor, which then stops services first and the server last.
//! Dropping a [`NatsServer`] kills the process (also while a panic unwinds).
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard::server::ServerError> {
//! use switchboard::server::{NatsServer, ServerOptions};
//!
//! let mut server = NatsServer::start(ServerOptions::default().port(14222).monitor_port(18222)).await?;
//! println!("clients connect to {}", server.client_url());
//! server.stop().await?;
//! # Ok(()) }
//! ```

mod error;
mod health;
mod locate;
mod log;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::process::{self, Stopped};

pub use error::ServerError;
pub use locate::{LocatedBinary, Locator, MINIMUM_VERSION, NATS_SERVER_ENV, TOOLS_DIR_ENV};

/// How to run a `nats-server`. Built with `Default` plus the setters below;
/// command-line flags derived from these fields override the config file.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Name used in log lines (`server` field); default `nats-server`.
    pub name: String,
    /// The binary; `None` searches with [`Locator::from_env`].
    pub binary: Option<PathBuf>,
    /// A configuration file (`-c`); `None` runs on flags alone.
    pub config_file: Option<PathBuf>,
    /// Address clients and monitoring listen on; default `127.0.0.1`.
    pub host: String,
    /// Client port; default 4222.
    pub port: u16,
    /// Monitoring port (serves `/healthz`, used for readiness); default 8222.
    pub monitor_port: u16,
    /// JetStream store directory (`-sd`); `None` keeps the config's choice.
    pub store_dir: Option<PathBuf>,
    /// Pass `-js` to enable JetStream even without a config file; default on.
    pub jetstream: bool,
    /// Extra environment for the server (e.g. `SB_*_PASSWORD` read by the config).
    pub env: Vec<(String, String)>,
    /// Further command-line arguments.
    pub extra_args: Vec<String>,
    /// A command that runs the binary (it must exec it, so that the PID
    /// is the server's): e.g. `ip netns exec <namespace>` for a node in its
    /// own network namespace (the test harness's partitions). Empty: the
    /// binary runs directly.
    pub launcher: Vec<String>,
    /// How long to wait for `/healthz` to answer 200; default 15 s.
    pub ready_timeout: Duration,
    /// How long SIGTERM may take before SIGKILL; default 10 s.
    pub stop_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            name: "nats-server".to_owned(),
            binary: None,
            config_file: None,
            host: "127.0.0.1".to_owned(),
            port: 4222,
            monitor_port: 8222,
            store_dir: None,
            jetstream: true,
            env: Vec::new(),
            extra_args: Vec::new(),
            launcher: Vec::new(),
            ready_timeout: Duration::from_secs(15),
            stop_grace: Duration::from_secs(10),
        }
    }
}

impl ServerOptions {
    /// Sets the log name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Uses this binary instead of searching.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }
    /// Runs with this configuration file.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }
    /// Listens for clients and monitoring on `host` (default `127.0.0.1`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }
    /// Runs the binary through `launcher` (see [`ServerOptions::launcher`]).
    pub fn launcher(mut self, launcher: Vec<String>) -> Self {
        self.launcher = launcher;
        self
    }
    /// Sets the client port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Sets the monitoring port.
    pub fn monitor_port(mut self, port: u16) -> Self {
        self.monitor_port = port;
        self
    }
    /// Sets the JetStream store directory.
    pub fn store_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store_dir = Some(dir.into());
        self
    }
    /// Adds an environment variable for the server process.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Adds a raw command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    fn command(&self, binary: &PathBuf) -> Command {
        let mut cmd = match self.launcher.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        if let Some(config) = &self.config_file {
            cmd.arg("-c").arg(config);
        }
        cmd.args(["-a", &self.host])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()]);
        if self.jetstream {
            cmd.arg("-js");
        }
        if let Some(dir) = &self.store_dir {
            cmd.arg("-sd").arg(dir);
        }
        cmd.args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a terminal's Ctrl-C goes to the supervisor,
            // which stops the server after the services have drained.
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }
}

/// A running `nats-server` child process.
#[derive(Debug)]
pub struct NatsServer {
    options: ServerOptions,
    binary: LocatedBinary,
    child: Child,
    recent: log::RecentLines,
    readers: Vec<JoinHandle<()>>,
}

impl NatsServer {
    /// Starts the server and returns once `/healthz` answers 200.
    ///
    /// # Errors
    ///
    /// A missing or too old binary, a busy port, a refused configuration, an
    /// early exit or a server that never became ready; each is a distinct
    /// [`ServerError`] variant with a one-line explanation.
    pub async fn start(options: ServerOptions) -> Result<NatsServer, ServerError> {
        let binary = match &options.binary {
            Some(path) => Locator {
                explicit: Some(path.clone()),
                ..Locator::default()
            }
            .locate()?,
            None => Locator::from_env().locate()?,
        };
        if let Some(dir) = &options.store_dir {
            std::fs::create_dir_all(dir).map_err(ServerError::io(format!(
                "cannot create the JetStream store {}",
                dir.display()
            )))?;
        }
        let mut child =
            options
                .command(&binary.path)
                .spawn()
                .map_err(|source| ServerError::Spawn {
                    binary: binary.path.clone(),
                    source,
                })?;
        let recent = log::RecentLines::default();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(log::forward(
                out,
                options.name.clone(),
                recent.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(log::forward(
                err,
                options.name.clone(),
                recent.clone(),
            )));
        }
        tracing::info!(
            server = %options.name,
            pid = child.id(),
            version = %binary.version,
            binary = %binary.path.display(),
            "started nats-server"
        );
        let mut server = NatsServer {
            options,
            binary,
            child,
            recent,
            readers,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), ServerError> {
        let deadline = tokio::time::Instant::now() + self.options.ready_timeout;
        let addr = self.monitor_addr();
        let mut last_answer;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(ServerError::io("cannot wait for nats-server"))?
            {
                // Let the readers drain what the server printed before dying.
                for reader in self.readers.drain(..) {
                    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
                }
                let config = self
                    .options
                    .config_file
                    .as_ref()
                    .map(|p| p.display().to_string());
                return Err(log::classify_early_exit(
                    status.to_string(),
                    &self.recent.snapshot(),
                    config.as_deref(),
                ));
            }
            match health::probe(&addr).await {
                Ok(()) => return Ok(()),
                Err(answer) => last_answer = answer,
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = process::stop(&mut self.child, Duration::from_secs(1)).await;
                return Err(ServerError::NotReady {
                    timeout: self.options.ready_timeout,
                    last_answer,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `nats://host:port` for clients.
    pub fn client_url(&self) -> String {
        format!("nats://{}:{}", self.options.host, self.options.port)
    }

    /// `host:port` of the monitoring endpoint.
    pub fn monitor_addr(&self) -> String {
        format!("{}:{}", self.options.host, self.options.monitor_port)
    }

    /// The OS process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The binary and version that is running.
    pub fn binary(&self) -> &LocatedBinary {
        &self.binary
    }

    /// The options it was started with (with the located binary pinned).
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            binary: Some(self.binary.path.clone()),
            ..self.options.clone()
        }
    }

    /// Waits until the process exits by itself (cancel-safe), for supervisors.
    ///
    /// # Errors
    ///
    /// Only when the OS cannot wait on the child.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Graceful stop: SIGTERM, then SIGKILL after the grace period.
    ///
    /// # Errors
    ///
    /// Only when the OS cannot wait on the child.
    pub async fn stop(&mut self) -> Result<Stopped, ServerError> {
        let stopped = process::stop(&mut self.child, self.options.stop_grace)
            .await
            .map_err(ServerError::io("cannot stop nats-server"))?;
        tracing::info!(server = %self.options.name, ?stopped, "nats-server stopped");
        Ok(stopped)
    }

    /// Hard stop with SIGKILL, as a crash would; the store is left as it is.
    ///
    /// # Errors
    ///
    /// Only when the OS cannot kill or wait on the child.
    pub async fn kill(&mut self) -> Result<(), ServerError> {
        self.child
            .kill()
            .await
            .map_err(ServerError::io("cannot kill nats-server"))
    }

    /// Starts the same server again (same ports, same store) after it stopped.
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`].
    pub async fn restart(&mut self) -> Result<(), ServerError> {
        if self
            .child
            .try_wait()
            .map_err(ServerError::io("cannot wait for nats-server"))?
            .is_none()
        {
            self.stop().await?;
        }
        *self = NatsServer::start(self.options()).await?;
        Ok(())
    }
}
