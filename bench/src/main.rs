//! Switchboard benchmarks. Each scenario starts its own nats-server and
//! measures its baseline in the same run, printing ratios, never lone
//! absolute numbers (machines here are shared and noisy).
//!
//! `bench/run [--quick] [--json FILE] [scenario…]`

// The allocator of the services: measured as they ship.
#[global_allocator]
static ALLOCATOR: switchboard::Allocator = switchboard::Allocator;

mod atomic;
mod claims;
mod consume;
mod drive;
mod echo;
mod encoding;
mod failover;
mod footprint;
mod http;
mod ingest;
mod keyed;
mod machine;
mod peers;
mod publish;
mod replicas;
mod report;
mod reqreply;
mod rounds;
mod saga;
mod traces;

use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Request-reply: raw async-nats vs Switchboard, and a 5 ms handler vs ideal.
    RequestReply,
    /// JetStream publishing: one-by-one vs window vs atomic batches, both profiles.
    Publish,
    /// JetStream consuming: raw pull consumer vs Switchboard consumer (± idempotency).
    Consume,
    /// Against HTTP: direct axum + hyper vs Switchboard over NATS vs the gateway path.
    Http,
    /// Against peers: Express, Moleculer (NATS transporter), @nats-io/services.
    Peers,
    /// Resident memory of idle processes and time from `up` to ready.
    Footprint,
    /// Crash safety's cost: store + publish vs transaction + outbox; one hot sku vs spread.
    Saga,
    /// Replication's cost on a 3-node cluster: R3 vs R1 publishing and state writes.
    Replicas,
    /// Trace export's cost: the echo endpoint with OTLP export off and on vs raw.
    Traces,
    /// The compact encoding: MessagePack vs JSON calls, 128 B and 4 KiB records.
    Encoding,
    /// Keyed consuming: 1, 2, 3 instances sharing 8 partitions vs the unkeyed consumer.
    Keyed,
    /// A keyed consumer's failover after SIGKILL of an instance: times, not ratios.
    Failover,
    /// The grouping lead: fast-ingest vs atomic batches, durable (not in the default run).
    Ingest,
    /// The idempotency lead: KV creates one by one vs in atomic batches (not in the default run).
    Claims,
}

#[derive(Debug, Parser)]
#[command(about = "Switchboard benchmarks (ratios against a same-run baseline)")]
struct Args {
    /// Scenarios to run [default: all].
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// A ~1-minute smoke run (shorter measurements, fewer points).
    #[arg(long)]
    quick: bool,
    /// Save every measurement as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Requests in flight (comma-separated) [default: 1,16,64,256].
    #[arg(long, value_delimiter = ',')]
    in_flight: Option<Vec<usize>>,
    /// Bracketed rounds per comparison [default: 15; --quick 5].
    #[arg(long)]
    rounds: Option<usize>,
}

/// What every scenario is told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Payload size in bytes.
    pub payload: usize,
    /// Numbers in flight to measure.
    pub in_flight: Vec<usize>,
    /// Length of one timed measurement.
    pub duration: Duration,
    /// Events per publish measurement.
    pub messages: usize,
    /// Smoke run.
    pub quick: bool,
    /// Bracketed rounds per comparison (see `rounds`).
    pub rounds: usize,
}

impl Settings {
    /// The measured in-flight figure nearest 64, where the targets are set:
    /// single-point comparisons (request-reply parts, peers) run there.
    pub fn target_in_flight(&self) -> usize {
        self.in_flight
            .iter()
            .copied()
            .min_by_key(|n| n.abs_diff(64))
            .unwrap_or(64)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The failover scenario's instances are this binary again.
    if let Ok(url) = std::env::var(failover::INSTANCE_ENV) {
        return failover::instance(&url).await;
    }
    let args = Args::parse();
    let settings = Settings {
        payload: args.payload,
        in_flight: args.in_flight.unwrap_or_else(|| {
            if args.quick {
                vec![1, 64]
            } else {
                vec![1, 16, 64, 256]
            }
        }),
        // Short measurements, many rounds: see `rounds`.
        duration: Duration::from_millis(if args.quick { 500 } else { 1000 }),
        messages: if args.quick { 2000 } else { 5000 },
        quick: args.quick,
        rounds: args
            .rounds
            .unwrap_or(if args.quick { 5 } else { 15 })
            .max(1),
    };
    let scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::RequestReply,
            Scenario::Publish,
            Scenario::Consume,
            Scenario::Keyed,
            Scenario::Failover,
            Scenario::Http,
            Scenario::Peers,
            Scenario::Footprint,
            Scenario::Saga,
            Scenario::Replicas,
            Scenario::Traces,
            Scenario::Encoding,
        ]
    } else {
        args.scenarios
    };
    let mut report = report::Report::default();
    println!("machine: {}", machine::describe());
    for scenario in scenarios {
        let steal = machine::Steal::start();
        match scenario {
            Scenario::RequestReply => reqreply::run(&settings, &mut report).await?,
            Scenario::Publish => publish::run(&settings, &mut report).await?,
            Scenario::Consume => consume::run(&settings, &mut report).await?,
            Scenario::Keyed => keyed::run(&settings, &mut report).await?,
            Scenario::Failover => failover::run(settings.rounds.min(9), &mut report).await?,
            Scenario::Http => http::run(&settings, &mut report).await?,
            Scenario::Peers => peers::run(&settings, &mut report).await?,
            Scenario::Footprint => footprint::run(&mut report).await?,
            Scenario::Saga => saga::run(&settings, &mut report).await?,
            Scenario::Replicas => replicas::run(&settings, &mut report).await?,
            Scenario::Traces => traces::run(&settings, &mut report).await?,
            Scenario::Encoding => encoding::run(&settings, &mut report).await?,
            Scenario::Ingest => ingest::run(&settings, &mut report).await?,
            Scenario::Claims => claims::run(&settings, &mut report).await?,
        }
        // A run the hypervisor starved is not comparable with a quiet one.
        if let Some(percent) = steal.percent() {
            println!(
                "steal time during {scenario:?}: {percent:.1} % of CPU over {:.0} s",
                steal.seconds()
            );
        }
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report.measurements)?)?;
        println!("saved {}", path.display());
    }
    Ok(())
}
