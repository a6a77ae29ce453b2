//! Switchboard benchmarks. Each scenario starts its own nats-server and
//! measures the baseline in the same run, printing ratios, never lone
//! absolute numbers (machines here are shared and noisy).
//!
//! `cargo run --release -p switchboard-bench -- publish`

mod publish;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Switchboard benchmarks (ratios against a same-run baseline)")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// JetStream publishing: one-by-one acked vs a window of acks in flight.
    Publish(publish::PublishArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().scenario {
        Scenario::Publish(args) => publish::run(args).await,
    }
}
