//! The `switchboard` command and what it is made of: the tools around the
//! kit, kept out of it so a service depends on none of this.
//!
//! | module | why it exists |
//! |---|---|
//! | `commands` | the command line: parsing, and one file per command |
//! | [`system`] | the whole system `switchboard up` runs: server, credentials, services, readiness, ordered stop |
//! | [`supervisor`] | keep service processes alive with backoff; stop them politely |
//! | [`dashboard`] | the live page `up` serves on loopback: services, rates, events, dead letters |
//! | [`credentials`] | per-run passwords handed to server and services |
//! | [`nats_context`] | the `nats` CLI context for operators |
//! | [`manifest`] | `switchboard.toml`: the services `up` runs |
//! | [`contracts`] | a service's contract, read from its binary (`--contract`) |
//! | [`permissions`] | the server's users, derived from the contracts |
//! | [`documents`] | `subjects.md` and the README's limits, derived from the contracts |
//! | [`scaffold`] | `switchboard new`: a service that builds, tests and runs under `up` at once |
//! | [`generated`] | the marker-delimited blocks those are written into |
#![warn(missing_docs)]

mod commands;
pub mod contracts;
pub mod credentials;
pub mod dashboard;
pub mod documents;
pub mod generated;
pub mod manifest;
pub mod nats_context;
pub mod permissions;
pub mod scaffold;
pub mod supervisor;
pub mod system;

pub use commands::main;

/// The README's code, compiled as doctests: the service of "Build your own
/// service" is a whole one, so a change of the kit that breaks it fails
/// here (the other Rust snippets are marked `ignore`: they are excerpts).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
