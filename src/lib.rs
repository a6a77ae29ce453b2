//! Switchboard: wire Rust microservices together on NATS.
//!
//! Services talk only through NATS — request-reply for calls that need an
//! answer, publish-subscribe for events, JetStream so events survive crashes —
//! and find each other through the NATS Services API (`$SRV.PING|INFO|STATS`),
//! so there is no registry and no hard-coded address. This crate is the kit
//! every service builds on, plus the `switchboard` CLI.
//!
//! | module | why it exists |
//! |---|---|
//! | [`server`] | find, start, probe and stop the embedded `nats-server` |
//! | [`up`] | `switchboard up`: server, credentials, services, readiness, ordered stop |
//! | [`supervisor`] | keep service processes alive with backoff; stop them politely |
//! | [`service`] | run a service on the NATS Services API until shutdown |
//! | [`discovery`] | gather every instance's `$SRV` answer |
//! | [`connect`] | connect from `NATS_URL`/`NATS_USER`/`NATS_PASSWORD` |
//! | [`credentials`] | per-run passwords handed to server and services |
//! | [`nats_context`] | the `nats` CLI context for operators |
//! | [`shutdown`] | the shutdown future processes are given |
//! | [`process`] | SIGTERM-then-SIGKILL stop of child processes |
//! | [`telemetry`] | logging set-up |
//! | `testing` | real throw-away servers and clusters for tests (feature `testing`) |
//!
//! A service binary is a few lines:
//!
//! ```no_run
//! use switchboard::{connect::ConnectConfig, service::{self, ServiceSpec}, shutdown, telemetry};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     telemetry::init();
//!     let client = ConnectConfig::from_env("hello").connect().await?;
//!     let spec = ServiceSpec::new("hello", "0.1.0", "Says hello");
//!     service::run_until(client, &spec, shutdown::signal()).await?;
//!     Ok(())
//! }
//! ```
#![warn(missing_docs)]

pub mod connect;
pub mod credentials;
pub mod discovery;
pub mod nats_context;
pub mod process;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod supervisor;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod up;
