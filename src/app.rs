//! A service process: its `main` in one call, and what it can fail with.
//!
//! A service's `run(nats, shutdown)` sets up state, streams, endpoints and
//! consumers; each part has its own error kind, and [`AppError`] carries
//! whichever happened. Everything around `run` — the allocator, telemetry,
//! the connection from the environment, the shutdown signal, draining the
//! connection, a one-line error and the exit code — is the same for every
//! service, so it is here, once: a service's `main.rs` is
//!
//! ```ignore
//! switchboard::service_main!(greeter::contract, greeter::run);
//! ```
//!
//! The same binary answers `--contract` with its contract as JSON (how
//! `switchboard up` learns what it serves and needs, wherever it was built).

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use crate::contract::{CONTRACT_FLAG, Contract};
use crate::shutdown::Shutdown;

/// The address a service that serves HTTP listens on; `switchboard up`
/// sets it from `--http-addr`.
pub const HTTP_ADDR_ENV: &str = "SWITCHBOARD_HTTP_ADDR";
/// The services `switchboard up` runs that have HTTP routes in their
/// contracts (comma-separated): an HTTP front end routes them before it
/// joins discovery, so `up`'s "ready" means "routed".
pub const ROUTED_SERVICES_ENV: &str = "SWITCHBOARD_ROUTED_SERVICES";
/// Who owns each HTTP route the contracts `switchboard up` read declare,
/// as a JSON object `{"METHOD /path": "service", …}`: an HTTP front end
/// takes a declared route from its owner only, whatever else claims it in
/// discovery.
pub const ROUTE_OWNERS_ENV: &str = "SWITCHBOARD_ROUTE_OWNERS";

/// Whether the async-nats this kit was built against removes a draining
/// subscription only when the server confirmed its UNSUB
/// (`vendor/async-nats/PATCH.md`). Without it a service that shuts down
/// can drop requests in flight to it; [`main`] says so at start. A crate
/// outside this repository gets it with
/// `[patch.crates-io] async-nats = { path = "<switchboard>/vendor/async-nats" }`
/// (`switchboard new --standalone` writes it).
pub const DRAIN_CONFIRMED: bool = !cfg!(switchboard_unpatched_async_nats);

/// Start-up or run failure of a service process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// Connecting to NATS failed.
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    /// The service could not start.
    #[error(transparent)]
    Serve(#[from] crate::service::ServeError),
    /// A stream, publisher or consumer failed.
    #[error(transparent)]
    Events(#[from] crate::events::EventError),
    /// A state bucket failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The configuration is invalid (e.g. `SWITCHBOARD_REPLICAS`).
    #[error(transparent)]
    Replicas(#[from] crate::replication::ReplicasError),
    /// A background task panicked or was cancelled.
    #[error("a background task failed: {0}")]
    Task(String),
}

impl From<tokio::task::JoinError> for AppError {
    fn from(e: tokio::task::JoinError) -> Self {
        AppError::Task(e.to_string())
    }
}

/// The body of a service binary's `main`: `--contract` prints the
/// service's contract and exits; otherwise a multi-threaded runtime,
/// telemetry, a connection named after the service from `NATS_URL`/
/// `NATS_USER`/`NATS_PASSWORD`, `run` until SIGINT/SIGTERM (or the
/// supervisor's end), then the connection drained. A failure is one line on
/// stderr and exit code 1. Use it through [`service_main!`](crate::service_main).
pub fn main<F, Fut, E>(contract: fn() -> Contract, run: F) -> ExitCode
where
    F: FnOnce(async_nats::Client, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let contract = contract();
    let name = contract.name.clone();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some(CONTRACT_FLAG) if args.len() == 1 => {
            println!("{}", contract.to_json());
            return ExitCode::SUCCESS;
        }
        Some("-h" | "--help") => {
            println!(
                "{name} {}: {}\n\nRuns the service against NATS_URL as NATS_USER/NATS_PASSWORD \
                 until SIGINT/SIGTERM.\n  {CONTRACT_FLAG}  print the service's contract (JSON) and exit",
                contract.version, contract.description
            );
            return ExitCode::SUCCESS;
        }
        Some(_) => {
            eprintln!(
                "{name}: unexpected arguments {args:?}; it takes none (configuration is its \
                 environment), or {CONTRACT_FLAG}"
            );
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telemetry = crate::telemetry::init(&name);
        if !DRAIN_CONFIRMED {
            let warning = "built against an async-nats without Switchboard's confirmed-drain fix: \
                           a shutdown can drop requests in flight to this instance. Add \
                           `[patch.crates-io] async-nats = { path = \"<switchboard>/vendor/async-nats\" }` \
                           to the workspace's Cargo.toml (vendor/async-nats/PATCH.md)";
            tracing::warn!("{warning}");
            eprintln!("{name}: WARNING: {warning}");
        }
        let nats = match crate::connect::ConnectConfig::from_env(name.clone())
            .connect()
            .await
        {
            Ok(nats) => nats,
            Err(error) => {
                tracing::error!(%error, "cannot connect");
                eprintln!("{name}: {error}");
                return ExitCode::FAILURE;
            }
        };
        crate::replication::warn_if_under_replicated(&nats);
        let watching = tokio_util::sync::CancellationToken::new();
        if crate::connect::quorum::enabled() {
            tokio::spawn(crate::connect::quorum::watch(
                nats.clone(),
                crate::connect::QuorumWatch::default(),
                watching.clone().cancelled_owned(),
            ));
        }
        let result = run(nats.clone(), Shutdown::new(crate::shutdown::signal())).await;
        watching.cancel();
        if let Err(error) = nats.drain().await {
            tracing::warn!(%error, "cannot drain the connection");
        }
        // The last spans (the drain's requests among them) go out now.
        drop(telemetry);
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "stopped with an error");
                eprintln!("{name}: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// A service binary's whole `main.rs`: the kit's allocator and
/// [`app::main`](crate::app::main) around the service's `contract()` and
/// `run(nats, shutdown)`.
///
/// ```ignore
/// switchboard::service_main!(greeter::contract, greeter::run);
/// ```
#[macro_export]
macro_rules! service_main {
    ($contract:path, $run:path) => {
        #[global_allocator]
        static ALLOCATOR: $crate::Allocator = $crate::Allocator;

        fn main() -> ::std::process::ExitCode {
            $crate::app::main($contract, $run)
        }
    };
}
