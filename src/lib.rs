//! Switchboard: wire Rust microservices together on NATS.
//!
//! Services talk only through NATS — request-reply for calls that need an
//! answer, publish-subscribe for events, JetStream so events survive crashes —
//! and find each other through the NATS Services API (`$SRV.PING|INFO|STATS`),
//! so there is no registry and no hard-coded address. This crate is the kit
//! every service builds on; the `switchboard` command (`up`, its supervisor
//! and dashboard, the scaffold) is the `switchboard-cli` crate, so a service
//! depends on none of it.
//!
//! | module | why it exists |
//! |---|---|
//! | [`server`] | find, start, probe and stop the embedded `nats-server` |
//! | [`app`] | a service binary's `main` in one call; its one error type |
//! | [`contract`] | a service's declaration of itself: endpoints, events, streams, buckets, consumers, calls; its permissions |
//! | [`service`] | typed endpoints on the NATS Services API; concurrency, errors, drain |
//! | [`client`] | typed calls: deadlines, retries with a budget, circuit breakers |
//! | [`codec`] | the request/reply wire format: bytes, header names, content types (events: `events::envelope`) |
//! | [`http`] | HTTP pieces every HTTP front end shares (live events as SSE) |
//! | [`limits`] | the server's limits (control line, payload) checked before writing |
//! | [`micro`] | ADR-32 wire types of `$SRV` answers |
//! | [`trace_context`] | W3C `traceparent` across calls |
//! | [`discovery`] | gather every instance's `$SRV` answer |
//! | [`connect`] | connect from `NATS_URL`/`NATS_USER`/`NATS_PASSWORD` |
//! | [`state`] | typed KV state with optimistic concurrency; multi-key transactions with an outbox |
//! | `batch` | ADR-50 atomic batches: all-or-nothing writes into one stream |
//! | [`outbox`] | events committed with state, published by a relay: between `state` and `events` |
//! | [`replication`] | how many copies of streams and buckets: configuration, migrated in place |
//! | [`shutdown`] | the shutdown future processes are given |
//! | [`process`] | SIGTERM-then-SIGKILL stop of child processes |
//! | [`refusals`] | the server's permission refusals, as errors within a round trip instead of timeouts |
//! | [`user_info`] | what the server lets this connection's user publish (`$SYS.REQ.USER.INFO`) |
//! | [`telemetry`] | logs, and OpenTelemetry spans of every hop when the OTLP variables ask |
//! | `testing` | real throw-away servers and clusters for tests (feature `testing`) |
//!
//! A service and a call, end to end:
//!
//! ```
//! use switchboard::{ServiceError, client::Client, service::{Context, Endpoint, Service}};
//!
//! #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! struct Add { a: i64, b: i64 }
//! #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! struct Sum { sum: i64 }
//!
//! async fn add(_ctx: Context, req: Add) -> Result<Sum, ServiceError> {
//!     req.a.checked_add(req.b)
//!         .map(|sum| Sum { sum })
//!         .ok_or_else(|| ServiceError::unprocessable("overflow"))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #   // The doc test runs against a throw-away server of the test harness.
//! #   let server = switchboard::testing::TestServer::start().await?;
//!     // Where and who: NATS_URL, NATS_USER and NATS_PASSWORD.
//!     let config = switchboard::connect::ConnectConfig::from_env("calc");
//! #   let config = switchboard::connect::ConnectConfig { url: server.url(), ..config };
//!     let nats = config.connect().await?;
//!     let service = Service::builder("calc", "1.0.0")
//!         .description("Arithmetic")
//!         .endpoint(Endpoint::new("add", add).description("Adds two numbers").idempotent(true))
//!         .start(nats.clone())
//!         .await?;
//!
//!     let client = Client::new(nats);
//!     let reply: Sum = client.call("calc.add", &Add { a: 2, b: 3 }).await?;
//!     assert_eq!(reply.sum, 5);
//!
//!     service.drain().await;
//!     Ok(())
//! }
//! ```
#![warn(missing_docs)]

pub mod app;
mod batch;
pub mod client;
pub mod codec;
pub mod connect;
pub mod contract;
pub mod discovery;
mod error;
pub mod events;
pub mod http;
pub mod limits;
pub mod micro;
pub mod outbox;
pub mod process;
pub mod refusals;
pub mod replication;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod state;
mod storage;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace_context;
pub mod user_info;

pub use error::ServiceError;

/// The global allocator our binaries use (feature `mimalloc`, on by
/// default): a request allocates a few dozen small blocks, freed on other
/// threads than they were made, which glibc's malloc serialises and mimalloc
/// does not (see BENCHMARKS.md). In a binary:
///
/// ```no_run
/// #[global_allocator]
/// static ALLOCATOR: switchboard::Allocator = switchboard::Allocator;
///
/// fn main() {}
/// ```
#[cfg(feature = "mimalloc")]
pub use mimalloc::MiMalloc as Allocator;
/// Without the `mimalloc` feature: the system allocator.
#[cfg(not(feature = "mimalloc"))]
pub use std::alloc::System as Allocator;
