//! JetStream consuming: a raw async-nats pull consumer with explicit acks
//! (the baseline) against a Switchboard consumer with 64, 16 (the default)
//! and 256 handlers,
//! and with the idempotency helper (one KV claim and one record per event)
//! beside the same two KV writes made raw, and one write alone (what any
//! single-write design would cost at best).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use switchboard::events::{
    self, ConsumerSpec, Event, HandlerError, Publisher, ReceivedEvent, StreamSpec,
};
use switchboard::testing::TestServer;
use tokio::sync::Notify;

use crate::Settings;
use crate::report::{CpuClock, Report, Run};
use crate::rounds;

/// `ConsumerSpec`'s default concurrency.
const DEFAULT_HANDLERS: usize = 16;

#[derive(serde::Serialize, serde::Deserialize)]
struct Sample {
    data: String,
}

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    // Consuming runs at ~100k/s: 10x the publish count keeps a run long
    // enough to measure.
    let n = settings.messages * 10;
    let scenario = "consume";
    println!(
        "{scenario} ({n} events of {} bytes, fast profile)",
        settings.payload
    );
    let server = TestServer::start().await?;
    let js = jetstream::new(server.client().await?);
    StreamSpec::new("BENCH", ["events.bench.>"])
        .atomic_batches(true)
        .ensure(&js)
        .await?;
    let publisher = Publisher::new(js.clone(), "bench");
    let events: Vec<_> = (0..n)
        .map(|_| {
            Event::new(Sample {
                data: "x".repeat(settings.payload),
            })
        })
        .collect();
    publisher
        .publish_atomic("events.bench.sampled", &events)
        .await?;

    // Every variant reads all n events from the start with a durable of
    // its own per round, in interleaved rounds (see `rounds`).
    println!("  {} bracketed rounds", settings.rounds);
    let names = [
        "raw pull consumer",
        // The consumer pulls only as many events as it has free handlers
        // (so nothing waits in a local buffer): more handlers, fewer pulls.
        "switchboard consumer",
        "switchboard consumer, default 16 handlers",
        "switchboard consumer, 256 handlers",
        "switchboard consumer + idempotency",
        // What two KV writes per event cost with no kit at all: the floor
        // under the idempotent consumer's ratio.
        "part: raw pull consumer + KV create and put per event, 64 at once",
        // Half of it: the ceiling of any scheme with one write per event.
        "part: raw pull consumer + one KV create per event, 64 at once",
    ];
    let pass = AtomicU64::new(0);
    let pid = server.pid();
    let measured = rounds::interleave(settings.rounds, names.len(), |i| {
        let durable = format!("d{}", pass.fetch_add(1, Ordering::Relaxed));
        let js = js.clone();
        async move {
            let run = match i {
                0 => raw_pass(&js, &durable, n, pid).await,
                1 => kit_pass(&js, &durable, 64, false, n, pid).await,
                2 => kit_pass(&js, &durable, DEFAULT_HANDLERS, false, n, pid).await,
                3 => kit_pass(&js, &durable, 256, false, n, pid).await,
                4 => kit_pass(&js, &durable, 64, true, n, pid).await,
                5 => raw_kv_pass(&js, &durable, n, pid, Writes::CreateAndPut).await,
                _ => raw_kv_pass(&js, &durable, n, pid, Writes::Create).await,
            }?;
            // Each pass leaves the server as it found it: its consumer
            // gone, and (idempotency) its claims with it.
            js.delete_consumer_from_stream(&durable, "BENCH").await?;
            if i >= 4 {
                js.delete_key_value(events::Idempotency::bucket_for(&durable))
                    .await?;
            }
            Ok(run)
        }
    })
    .await?;
    rounds::report(report, scenario, &names, &measured);
    Ok(())
}

/// A raw durable pull consumer with explicit acks on the bench stream.
async fn raw_consumer(
    js: &jetstream::Context,
    durable: &str,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    Ok(js
        .get_stream("BENCH")
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(durable.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?)
}

/// A raw pull consumer with an explicit ack per message reads all `n`.
async fn raw_pass(
    js: &jetstream::Context,
    durable: &str,
    n: usize,
    pid: Option<u32>,
) -> anyhow::Result<Run> {
    let raw = raw_consumer(js, durable).await?;
    let cpu = CpuClock::start(pid);
    let started = Instant::now();
    let mut messages = raw.messages().await?;
    let mut seen = 0;
    while seen < n {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        seen += 1;
    }
    Ok(cpu.run(seen as u64, started))
}

/// The KV writes a raw pass makes per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// What the idempotency helper does on the happy path: create a
    /// record, put it again as done.
    CreateAndPut,
    /// The create alone.
    Create,
}

/// A raw pull consumer reads all `n` and, for each, 64 at a time, makes
/// `writes` to a KV bucket before the ack; the bucket is made as the kit
/// makes it.
async fn raw_kv_pass(
    js: &jetstream::Context,
    durable: &str,
    n: usize,
    pid: Option<u32>,
    writes: Writes,
) -> anyhow::Result<Run> {
    let kv = js
        .create_key_value(jetstream::kv::Config {
            bucket: events::Idempotency::bucket_for(durable),
            history: 1,
            max_age: Duration::from_secs(600),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let raw = raw_consumer(js, durable).await?;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let done = Arc::new(AtomicU64::new(0));
    let cpu = CpuClock::start(pid);
    let started = Instant::now();
    let mut messages = raw.messages().await?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let permit = in_flight.clone().acquire_owned().await?;
        let (kv, done) = (kv.clone(), done.clone());
        tasks.spawn(async move {
            let key = message
                .headers
                .as_ref()
                .and_then(|h| h.get("ce-id"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            if kv.create(&key, "p".into()).await.is_ok()
                && (writes == Writes::Create || kv.put(&key, "d".into()).await.is_ok())
                && message.ack().await.is_ok()
            {
                done.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(cpu.run(done.load(Ordering::Relaxed), started))
}

/// A Switchboard consumer with `handlers` handlers reads all `n`.
async fn kit_pass(
    js: &jetstream::Context,
    durable: &str,
    handlers: usize,
    idempotent: bool,
    n: usize,
    pid: Option<u32>,
) -> anyhow::Result<Run> {
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let stop = Arc::new(Notify::new());
    let mut spec = ConsumerSpec::new("BENCH", durable).concurrency(handlers);
    if idempotent {
        spec = spec.idempotent(Duration::from_secs(600));
    }
    let (counted, finished) = (count.clone(), done.clone());
    let total = n as u64;
    let cpu = CpuClock::start(pid);
    let started = Instant::now();
    let stopped = stop.clone();
    let task = tokio::spawn(events::consumer::run(
        js.clone(),
        spec,
        move |_event: ReceivedEvent<Sample>| {
            let (counted, finished) = (counted.clone(), finished.clone());
            async move {
                if counted.fetch_add(1, Ordering::Relaxed) + 1 == total {
                    finished.notify_one();
                }
                Ok::<(), HandlerError>(())
            }
        },
        async move { stopped.notified().await },
    ));
    tokio::time::timeout(Duration::from_secs(120), done.notified()).await?;
    let run = cpu.run(count.load(Ordering::Relaxed), started);
    stop.notify_one();
    task.await??;
    Ok(run)
}
