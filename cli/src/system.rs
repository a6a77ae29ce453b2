//! The whole system on one machine: what `switchboard up` runs.
//!
//! Order matters and is kept in both directions. Start: each service's
//! contract (from its binary), passwords, the server's users derived from
//! the contracts, the embedded nats-server (unless `NATS_URL` names one),
//! the `nats` CLI context, then each service as its own supervised process. Stop: services
//! in reverse order (each drains), then the server. A crashed service or
//! server is restarted with backoff; the caller's shutdown future ends it.
//!
//! The CLI composes [`System::start`], [`System::wait_ready`] and
//! [`System::run_until`]; tests do the same with their own ports and folders.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::contracts::ContractError;
use crate::credentials::{Credentials, RandomSourceError};
use crate::manifest::Manifest;
use crate::nats_context::{self, CONTEXT_NAME, NatsContext};
use switchboard::app::{ROUTE_OWNERS_ENV, ROUTED_SERVICES_ENV};
use switchboard::connect::{
    ConnectConfig, ConnectError, NATS_PASSWORD_ENV, NATS_URL_ENV, NATS_USER_ENV,
};
use switchboard::contract::Contract;
use switchboard::discovery::{self, DiscoveryError, ServiceSummary};
use switchboard::server::{NatsServer, ServerError, ServerOptions};

mod cluster;
use crate::supervisor::{LineSink, ProcessSpec, RestartPolicy, Supervised};
pub use cluster::CLUSTER_NAME;
use switchboard::telemetry::LOG_ANSI_ENV;

/// The operators' NATS user.
pub const ADMIN_USER: &str = "admin";
/// The configuration compiled in, used when no `nats.conf` is at hand.
pub const BUILTIN_CONFIG: &str = include_str!("../../nats.conf");

/// Where the server comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerChoice {
    /// Start and supervise a nats-server (the default).
    Embedded {
        /// Config file; `None` uses `./nats.conf` or the built-in copy.
        config_file: Option<PathBuf>,
        /// Client port.
        port: u16,
        /// Monitoring port.
        monitor_port: u16,
        /// Servers: 1, or a cluster on loopback (see `cluster.rs`).
        nodes: usize,
        /// With `nodes` > 1: the first node's route port.
        cluster_port: u16,
    },
    /// Use this server or cluster (`NATS_URL`); start none.
    External {
        /// Server URL(s), comma separated.
        url: String,
    },
}

/// Everything `up` needs to know; `Default` is `switchboard up` with no flags.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// Embedded or external server.
    pub server: ServerChoice,
    /// Project-local data folder (JetStream store, built-in config copy).
    pub data_dir: PathBuf,
    /// Folder holding the service binaries; default: next to this executable.
    pub bin_dir: PathBuf,
    /// Services to run, in start order: names of binaries in `bin_dir`, or
    /// paths of binaries built elsewhere (see `switchboard.toml`).
    pub services: Vec<String>,
    /// Services of the system that `up` does not start but whose users the
    /// embedded server should know (they run elsewhere, or later): the rest
    /// of `switchboard.toml`. A binary that is not built is left out.
    pub also_declared: Vec<String>,
    /// The folder relative service paths are read from.
    pub services_base: PathBuf,
    /// Where to write the `nats` CLI context; `None` writes none.
    pub context_dir: Option<PathBuf>,
    /// Restart and stop behaviour of services.
    pub restart: RestartPolicy,
    /// Extra environment for every service (e.g. `SWITCHBOARD_HTTP_ADDR`).
    pub service_env: Vec<(String, String)>,
    /// Processes per service, by name (default one): instances share its
    /// queue groups and its keyed consumers' partitions.
    pub instances: BTreeMap<String, usize>,
}

/// Where the service binaries are by default: beside this executable
/// (cargo builds every binary of a workspace into one folder).
pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Default for UpConfig {
    fn default() -> Self {
        let bin_dir = default_bin_dir();
        UpConfig {
            server: ServerChoice::Embedded {
                config_file: None,
                port: 4222,
                monitor_port: 8222,
                nodes: 1,
                cluster_port: 6222,
            },
            data_dir: PathBuf::from("data"),
            bin_dir,
            services: Manifest::discover().map(|m| m.services).unwrap_or_default(),
            also_declared: Vec::new(),
            services_base: PathBuf::from("."),
            context_dir: nats_context::context_dir(),
            restart: RestartPolicy::default(),
            service_env: Vec::new(),
            instances: BTreeMap::new(),
        }
    }
}

/// Why `up` could not start or become ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpError {
    /// The embedded server could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Passwords could not be generated.
    #[error(transparent)]
    Credentials(#[from] RandomSourceError),
    /// The supervisor's own connection failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Discovery requests could not be sent.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// A service's contract could not be read from its binary (missing,
    /// failing, not a service of the kit).
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// A configuration of the user's own (no generated block) has no user
    /// for a service, so the service could not connect.
    #[error(
        "{} has no user {service}, and no generated block to put it in: add the lines \
         `{}` and `{}` inside its `authorization {{ users: [ … ] }}` and `up` fills them \
         from the contracts (or add the user yourself: `switchboard permissions` prints it)",
        config.display(), crate::permissions::BEGIN.trim(), crate::permissions::END.trim()
    )]
    NoUser {
        /// The service.
        service: String,
        /// The configuration file.
        config: PathBuf,
    },
    /// Some services never answered `$SRV.PING`.
    #[error("not ready after {timeout:?}: no answer from {}{}", missing.join(", "), waiting_words(waiting))]
    NotReady {
        /// Services without an instance, but those only waiting for them.
        missing: Vec<String>,
        /// Services without an instance that wait for the missing ones
        /// (a front end routes every service before it joins discovery).
        waiting: Vec<String>,
        /// How long we waited.
        timeout: Duration,
    },
    /// Preparing the data folder or the context file failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn waiting_words(waiting: &[String]) -> String {
    if waiting.is_empty() {
        String::new()
    } else {
        format!(" ({} waiting for them)", waiting.join(", "))
    }
}

fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpError {
    let action = action.into();
    move |source| UpError::Io { action, source }
}

/// The running system.
#[derive(Debug)]
pub struct System {
    /// The embedded server, or the nodes of the embedded cluster; none
    /// for an external server.
    servers: Vec<NatsServer>,
    services: Vec<Supervised>,
    admin: async_nats::Client,
    url: String,
    context_file: Option<PathBuf>,
    /// The contracts of the services it starts, in start order.
    contracts: Vec<Contract>,
}

impl System {
    /// Starts the server (if embedded) and every service; returns once all
    /// processes are launched. Service output goes to `sink`.
    ///
    /// # Errors
    ///
    /// A server that cannot start, a missing service binary, or a failing
    /// admin connection. Anything already started is stopped again.
    pub async fn start(config: UpConfig, sink: LineSink) -> Result<System, UpError> {
        // Every contract before starting anything: failing later would mean
        // a half-started system.
        let binary = |entry: &String| {
            crate::manifest::resolve(entry, &config.services_base, &config.bin_dir)
        };
        let specs: Vec<(String, PathBuf)> = config.services.iter().map(binary).collect();
        let contracts = crate::contracts::read_all(&specs).await?;
        // The users of the whole system: those started, and the others
        // declared that are built (a service not built cannot connect).
        let mut system = contracts.clone();
        for (name, path) in config.also_declared.iter().map(binary) {
            if system.iter().any(|c| c.name == name) {
                continue;
            }
            match crate::contracts::read(&name, &path).await {
                Ok(contract) => system.push(contract),
                Err(ContractError::Missing { .. }) => {
                    tracing::info!(service = %name, "not built; the server gets no user for it")
                }
                Err(error) => return Err(error.into()),
            }
        }

        let users = std::iter::once(ADMIN_USER).chain(system.iter().map(|c| c.name.as_str()));
        let (servers, url, credentials) = match &config.server {
            ServerChoice::Embedded {
                config_file,
                port,
                monitor_port,
                nodes,
                cluster_port,
            } => {
                let credentials = Credentials::from_env_or_generate(users)?;
                let config_file =
                    effective_config(config_file.as_deref(), &config.data_dir, &system)?;
                let servers = if *nodes > 1 {
                    let base = std::fs::read_to_string(&config_file)
                        .map_err(io_err(format!("cannot read {}", config_file.display())))?;
                    let plan = cluster::plan(
                        *nodes,
                        *port,
                        *monitor_port,
                        *cluster_port,
                        &config.data_dir,
                    );
                    cluster::start(&base, &plan, &credentials.server_env()).await?
                } else {
                    let mut options = ServerOptions::default()
                        .config_file(config_file)
                        .port(*port)
                        .monitor_port(*monitor_port)
                        // nats-server keeps its files in `<store>/jetstream`.
                        .store_dir(&config.data_dir);
                    options.env = credentials.server_env();
                    vec![NatsServer::start(options).await?]
                };
                let url = servers
                    .iter()
                    .map(NatsServer::client_url)
                    .collect::<Vec<_>>()
                    .join(",");
                (servers, url, credentials)
            }
            ServerChoice::External { url } => {
                tracing::info!(%url, "using the existing NATS server; starting none");
                (Vec::new(), url.clone(), Credentials::from_env(users))
            }
        };

        let mut admin_config = ConnectConfig {
            url: url.clone(),
            name: "switchboard-up".to_owned(),
            ..ConnectConfig::default()
        };
        if let Some(password) = credentials.password(ADMIN_USER) {
            admin_config = admin_config.user_and_password(ADMIN_USER, password);
        }
        let admin = admin_config.connect().await?;

        let context_file = match &config.context_dir {
            Some(dir) => Some(write_context(dir, &url, &credentials)?),
            None => None,
        };

        // Service output is re-printed on our stdout: colours if that is a terminal.
        let ansi = if std::io::stdout().is_terminal() {
            "1"
        } else {
            "0"
        };
        // A front end routes these before it joins discovery (so `ready`
        // means routed); it waits for no service that `up` does not run.
        let routed: Vec<&str> = contracts
            .iter()
            .filter(|c| c.endpoints.iter().any(|e| e.http.is_some()))
            .map(|c| c.name.as_str())
            .collect();
        let routed = routed.join(",");
        // Who owns each declared route (of every service declared, started
        // here or not): a claim on it from anyone else (a service joined by
        // hand, say) is never routed.
        let owners: std::collections::BTreeMap<String, &str> = system
            .iter()
            .flat_map(|c| {
                c.endpoints.iter().filter_map(|e| {
                    let http = e.http.as_ref()?;
                    Some((format!("{} {}", http.method, http.path), c.name.as_str()))
                })
            })
            .collect();
        // A map of strings always serializes.
        let owners = serde_json::to_string(&owners).unwrap_or_else(|_| "{}".to_owned());
        // Each instance its own process, named `<service>.<n>` in the
        // logs when there are several.
        let specs: Vec<(String, String, PathBuf)> = specs
            .into_iter()
            .flat_map(|(name, program)| {
                let count = config.instances.get(&name).copied().unwrap_or(1).max(1);
                (0..count).map(move |i| {
                    let label = if count > 1 {
                        format!("{name}.{i}")
                    } else {
                        name.clone()
                    };
                    (label, name.clone(), program.clone())
                })
            })
            .collect();
        let services = specs
            .into_iter()
            .map(|(label, name, program)| {
                let mut env = vec![
                    (NATS_URL_ENV.to_owned(), url.clone()),
                    (LOG_ANSI_ENV.to_owned(), ansi.to_owned()),
                    (ROUTED_SERVICES_ENV.to_owned(), routed.clone()),
                    (ROUTE_OWNERS_ENV.to_owned(), owners.clone()),
                ];
                env.extend(config.service_env.iter().cloned());
                // Every OTEL_* variable reaches the service (it inherits
                // ours) but the name: each service exports as itself.
                env.push(("OTEL_SERVICE_NAME".to_owned(), name.clone()));
                if let Some(password) = credentials.password(&name) {
                    env.push((NATS_USER_ENV.to_owned(), name.clone()));
                    env.push((NATS_PASSWORD_ENV.to_owned(), password.to_owned()));
                }
                let spec = ProcessSpec {
                    name: label,
                    program,
                    args: Vec::new(),
                    env,
                };
                Supervised::spawn(spec, config.restart, sink.clone())
            })
            .collect();

        Ok(System {
            servers,
            services,
            admin,
            url,
            context_file,
            contracts,
        })
    }

    /// The operator's connection (`admin`).
    pub fn admin(&self) -> &async_nats::Client {
        &self.admin
    }

    /// Client URL of the server in use.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The contracts of the services it runs, in start order.
    pub fn contracts(&self) -> &[Contract] {
        &self.contracts
    }

    /// The `nats` CLI context file written, if any.
    pub fn context_file(&self) -> Option<&Path> {
        self.context_file.as_deref()
    }

    /// PID of the embedded server (the first node of a cluster), if one runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.servers.first().and_then(NatsServer::pid)
    }

    /// PIDs of every embedded server (one, or each node of the cluster).
    pub fn server_pids(&self) -> Vec<Option<u32>> {
        self.servers.iter().map(NatsServer::pid).collect()
    }

    /// `(name, pid)` of each service process currently running.
    pub fn service_pids(&self) -> Vec<(String, Option<u32>)> {
        self.services
            .iter()
            .map(|s| (s.name().to_owned(), s.pid()))
            .collect()
    }

    /// Waits until every service answers discovery; returns what answered.
    ///
    /// # Errors
    ///
    /// [`UpError::NotReady`] naming the silent services after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Vec<ServiceSummary>, UpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let missing = |answers: &[discovery::InstanceInfo]| -> Vec<String> {
            self.contracts
                .iter()
                .map(|c| &c.name)
                .filter(|name| !answers.iter().any(|a| &a.name == *name))
                .cloned()
                .collect()
        };
        loop {
            // Returns as soon as every expected service has answered; a
            // short window when some have not yet subscribed.
            let answers =
                discovery::info_until(&self.admin, None, Duration::from_millis(100), |answers| {
                    missing(answers).is_empty()
                })
                .await?;
            let missing = missing(&answers);
            let summaries = discovery::summarize(&answers);
            if missing.is_empty() {
                return Ok(summaries
                    .into_iter()
                    .filter(|s| self.contracts.iter().any(|c| c.name == s.name))
                    .collect());
            }
            if tokio::time::Instant::now() >= deadline {
                // A front end that routes the others waits for them: the
                // ones it waits for are the ones to blame.
                let (waiting, missing): (Vec<String>, Vec<String>) =
                    missing.into_iter().partition(|name| {
                        self.contracts
                            .iter()
                            .any(|c| &c.name == name && c.calls_routed)
                    });
                let (missing, waiting) = if missing.is_empty() {
                    (waiting, Vec::new())
                } else {
                    (missing, waiting)
                };
                return Err(UpError::NotReady {
                    missing,
                    waiting,
                    timeout,
                });
            }
        }
    }

    /// Runs until `shutdown` resolves, restarting an embedded server (or
    /// cluster node) that dies; then stops services in reverse order and
    /// the servers last.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let restart = RestartPolicy::default();
        loop {
            if self.servers.is_empty() {
                shutdown.as_mut().await;
                break;
            }
            let (status, index) = {
                let exits = self
                    .servers
                    .iter_mut()
                    .map(|server| Box::pin(server.exited()));
                tokio::select! {
                    () = shutdown.as_mut() => break,
                    (status, index, _) = futures::future::select_all(exits) => (status, index),
                }
            };
            let status = status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            tracing::error!(%status, node = index, "nats-server exited unexpectedly; restarting it");
            // The same policy as the services': exponential with jitter.
            let mut delays = restart.delays();
            loop {
                let delay = delays.next().unwrap_or(restart.max_delay);
                let Some(server) = self.servers.get_mut(index) else {
                    break;
                };
                match server.restart().await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::error!(%error, ?delay, "nats-server restart failed; retrying")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.as_mut() => { self.stop().await; return; }
                }
            }
        }
        self.stop().await;
    }

    /// Stops services in reverse start order, then the servers.
    pub async fn stop(mut self) {
        while let Some(service) = self.services.pop() {
            service.stop().await;
        }
        let _ = self.admin.drain().await;
        for server in &mut self.servers {
            if let Err(error) = server.stop().await {
                tracing::error!(%error, "stopping nats-server failed");
            }
        }
    }
}

/// The server's configuration for this run: the named file, else
/// `./nats.conf`, else the built-in copy — with its generated block of users
/// derived from `contracts`, written into the data folder. A configuration
/// without the block is used as it is, if it names every service's user.
fn effective_config(
    named: Option<&Path>,
    data_dir: &Path,
    contracts: &[Contract],
) -> Result<PathBuf, UpError> {
    let source = match named {
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from("nats.conf")).filter(|p| p.is_file()),
    };
    let text = match &source {
        Some(path) => std::fs::read_to_string(path)
            .map_err(io_err(format!("cannot read {}", path.display())))?,
        None => BUILTIN_CONFIG.to_owned(),
    };
    let Some(derived) = crate::permissions::with_block(&text, contracts) else {
        let path = source.unwrap_or_else(|| PathBuf::from("nats.conf"));
        if let Some(service) = contracts
            .iter()
            .find(|c| !crate::permissions::names_user(&text, &c.name))
        {
            return Err(UpError::NoUser {
                service: service.name.clone(),
                config: path,
            });
        }
        return Ok(path);
    };
    std::fs::create_dir_all(data_dir)
        .map_err(io_err(format!("cannot create {}", data_dir.display())))?;
    let copy = data_dir.join("nats.conf");
    std::fs::write(&copy, derived).map_err(io_err(format!("cannot write {}", copy.display())))?;
    tracing::info!(
        config = %copy.display(),
        services = contracts.len(),
        "the server's users are derived from the services' contracts"
    );
    Ok(copy)
}

fn write_context(dir: &Path, url: &str, credentials: &Credentials) -> Result<PathBuf, UpError> {
    let context = NatsContext {
        description: "Switchboard (written by `switchboard up`)".to_owned(),
        url: url.to_owned(),
        user: credentials
            .password(ADMIN_USER)
            .map(|_| ADMIN_USER.to_owned())
            .unwrap_or_default(),
        password: credentials
            .password(ADMIN_USER)
            .unwrap_or_default()
            .to_owned(),
    };
    context.write(dir, CONTEXT_NAME).map_err(io_err(format!(
        "cannot write the nats context in {}",
        dir.display()
    )))
}
