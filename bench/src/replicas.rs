//! What replication costs: the same work on R1 and on R3, on one 3-node
//! cluster, in alternating rounds (the order flips each round; the median
//! of the rounds' ratios is reported, with the CPU per operation of this
//! process and all three servers beside it).
//!
//! - **publish**: a durable publish that waits for the stream's ack, 32 in
//!   flight — every event the system publishes.
//! - **request + state write**: an endpoint that stores a new record (KV
//!   create) before it answers, called through the kit's client, 32 in
//!   flight — the request-reply path of every command endpoint.
//!
//! The cluster runs nats-server's defaults (fsync every 2 minutes); with
//! `sync_interval: always` every replica syncs, and R3 costs more.

use async_nats::jetstream;
use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::client::Client;
use switchboard::events::StreamSpec;
use switchboard::service::{Context, Endpoint, Service};
use switchboard::state::StateStore;
use switchboard::testing::TestCluster;

use crate::Settings;
use crate::drive::{Caller, drive};
use crate::report::{CpuClock, Report, median};

/// Operations in flight.
const IN_FLIGHT: usize = 32;

#[derive(Clone)]
struct Publish {
    js: jetstream::Context,
    subject: &'static str,
    body: Bytes,
}

impl Caller for Publish {
    async fn call(&self) -> bool {
        match self.js.publish(self.subject, self.body.clone()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Record {
    note: String,
}

#[derive(Clone)]
struct Store {
    client: Client,
    subject: &'static str,
}

impl Caller for Store {
    async fn call(&self) -> bool {
        let record = Record {
            note: "replicated".into(),
        };
        self.client
            .call::<_, Record>(self.subject, &record)
            .await
            .is_ok()
    }
}

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    println!("replicas (3-node cluster, {IN_FLIGHT} in flight, R1 vs R3 in alternating rounds)");
    let cluster = TestCluster::start(3).await?;
    let nats = cluster.client().await?;
    let js = jetstream::new(nats.clone());
    StreamSpec::new("R1", ["bench.r1.>"])
        .replicas(1)
        .ensure(&js)
        .await?;
    StreamSpec::new("R3", ["bench.r3.>"])
        .replicas(3)
        .ensure(&js)
        .await?;
    let elsewhere = same_leader_elsewhere(&cluster, &js, ["R1", "R3"]).await?;
    let publisher = jetstream::new(elsewhere.clone());
    where_they_live(&elsewhere, &publisher, ["R1", "R3"]).await?;
    let body = Bytes::from(vec![b'x'; settings.payload]);
    let publish = |subject| Publish {
        js: publisher.clone(),
        subject,
        body: body.clone(),
    };
    compare(
        settings,
        report,
        &cluster,
        "replicas publish",
        [publish("bench.r1.event"), publish("bench.r3.event")],
    )
    .await?;

    let one: StateStore<Record> = StateStore::open(&js, "records-r1", 1).await?;
    let three: StateStore<Record> = StateStore::open(&js, "records-r3", 3).await?;
    let endpoint = |name: &str, store: StateStore<Record>| {
        Endpoint::new(name, move |_ctx: Context, record: Record| {
            let store = store.clone();
            async move {
                store
                    .create(&switchboard::state::new_id("r"), &record)
                    .await?;
                Ok::<_, ServiceError>(record)
            }
        })
        .max_in_flight(1024)
    };
    let elsewhere =
        same_leader_elsewhere(&cluster, &js, ["KV_records-r1", "KV_records-r3"]).await?;
    where_they_live(&elsewhere, &js, ["KV_records-r1", "KV_records-r3"]).await?;
    let _service = Service::builder("bench", "1.0.0")
        .endpoint(endpoint("r1", one))
        .endpoint(endpoint("r3", three))
        .start(elsewhere.clone())
        .await?;
    elsewhere.flush().await?;
    let client = Client::new(elsewhere);
    let store = |subject| Store {
        client: client.clone(),
        subject,
    };
    compare(
        settings,
        report,
        &cluster,
        "replicas request + state write",
        [store("bench.r1"), store("bench.r3")],
    )
    .await
}

/// Moves the R3 stream's leader to the R1 stream's node and returns a
/// connection to another node, so both are one hop away and the ratio is
/// replication's cost alone. (Left to the server, placement differs from
/// run to run — an R1 leader on the client's own node one run, remote the
/// next — and moved this ratio by 0.1–0.2 between runs.)
async fn same_leader_elsewhere(
    cluster: &TestCluster,
    js: &jetstream::Context,
    [one, three]: [&str; 2],
) -> anyhow::Result<async_nats::Client> {
    let target = leader_of(js, one).await?;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while leader_of(js, three).await? != target {
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "{three}'s leader would not move to {target}"
        );
        let request = serde_json::json!({ "placement": { "preferred": target } });
        let _ = js
            .client()
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{three}"),
                serde_json::to_vec(&request)?.into(),
            )
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    for node in 0..cluster.len() {
        let Some(url) = cluster.node_url(node) else {
            continue;
        };
        let nats = async_nats::connect(url).await?;
        if nats.server_info().server_name != target {
            return Ok(nats);
        }
    }
    anyhow::bail!("no node other than {target}")
}

/// The server name of the stream's leader (empty if none yet).
async fn leader_of(js: &jetstream::Context, stream: &str) -> anyhow::Result<String> {
    let info = js.get_stream(stream).await?.info().await?.clone();
    Ok(info.cluster.and_then(|c| c.leader).unwrap_or_default())
}

/// Prints which node leads each stream and which node this process talks
/// to: an R1 stream on the client's own node saves a hop that one on
/// another node pays, and the placement is the server's choice.
async fn where_they_live(
    nats: &async_nats::Client,
    js: &jetstream::Context,
    streams: [&str; 2],
) -> anyhow::Result<()> {
    let mut leaders = Vec::new();
    for name in streams {
        let leader = leader_of(js, name).await?;
        leaders.push(format!("{name} led by {leader}"));
    }
    println!(
        "  {}; the client is on {}",
        leaders.join(", "),
        nats.server_info().server_name
    );
    Ok(())
}

/// Alternating rounds of `[R1, R3]`; prints the median ratio R3 ÷ R1 of
/// throughput and of CPU per operation (R1's CPU ÷ R3's: below 1, R3 costs
/// more).
async fn compare<C: Caller>(
    settings: &Settings,
    report: &mut Report,
    cluster: &TestCluster,
    scenario: &str,
    callers: [C; 2],
) -> anyhow::Result<()> {
    let rounds = settings.rounds;
    let names = ["R1", "R3"];
    // A stream or bucket just created may still be electing its leader; a
    // caller's first failures would open its circuit breaker and measure
    // that instead.
    for (caller, name) in callers.iter().zip(names) {
        let ready = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !caller.call().await {
            anyhow::ensure!(
                std::time::Instant::now() < ready,
                "{scenario}: {name} never answered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let (mut rates, mut cpus) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut rate = [0.0f64; 2];
        let mut cpu = [0.0f64; 2];
        for step in 0..2 {
            let index = if round % 2 == 0 { step } else { 1 - step };
            let clocks: Vec<CpuClock> = cluster
                .pids()
                .into_iter()
                .map(|pid| CpuClock::start(Some(pid)))
                .collect();
            let run = drive(None, IN_FLIGHT, settings.duration, callers[index].clone()).await?;
            rate[index] = report.add_run(scenario, names[index], &run, None);
            let per_op: Vec<_> = clocks.iter().filter_map(|c| c.per_op(run.ops)).collect();
            let process = per_op.first().map_or(0.0, |c| c.process);
            let servers: f64 = per_op.iter().map(|c| c.server).sum();
            println!("    cpu/op {process:.1}µs + servers {servers:.1}µs");
            cpu[index] = process + servers;
        }
        rates.push(rate[1] / rate[0].max(1e-9));
        cpus.push(cpu[0] / cpu[1].max(1e-9));
    }
    println!("  ratios per round: throughput {rates:.2?}, cpu/op {cpus:.2?}");
    report.compare(scenario, "R3 vs R1 (median of rounds)", median(&mut rates));
    report.compare(
        &format!("{scenario} cpu/op"),
        "R1 ÷ R3 (median of rounds)",
        median(&mut cpus),
    );
    Ok(())
}
