//! Keyed consuming: what order across instances costs. A keyed consumer
//! (8 partitions, 2 handlers per partition: 16 in all) run by 1, 2 and 3
//! instances, each on its own connection, against the unkeyed consumer
//! with the same 16 handlers (the baseline), and the single-process
//! ordered one (`ordered_by_subject`, 16 lanes); and one keyed instance
//! with per-event idempotency records against one with a watermark per
//! partition.
//!
//! Each pass reads the same `n` events (1,000 keys) with durables of its
//! own. The clock runs from the first event handled: a keyed instance
//! listens for the others for 1.5 s before it claims partitions, a fixed
//! start-up cost that is not throughput.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use switchboard::events::{
    self, ConsumerSpec, Event, HandlerError, Publisher, ReceivedEvent, StreamSpec,
};
use switchboard::testing::TestServer;
use tokio::sync::Notify;

use crate::Settings;
use crate::report::{CpuClock, Report, Run};
use crate::rounds;

const SUBJECT: &str = "events.keyed.sampled";
const PARTITIONS: u32 = 8;
const HANDLERS: usize = 16;
const KEYS: usize = 1000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Sample {
    data: String,
}

/// How a pass consumes.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Unkeyed,
    Ordered,
    Keyed {
        instances: usize,
    },
    /// One instance, with per-event idempotency records (two KV writes).
    KeyedIdempotent,
    /// One instance, with a watermark per partition.
    KeyedWatermark,
}

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let n = settings.messages * 10;
    let scenario = "keyed";
    println!(
        "{scenario} ({n} events of {} bytes over {KEYS} keys, fast profile)",
        settings.payload
    );
    let server = TestServer::start().await?;
    let js = jetstream::new(server.client().await?);
    StreamSpec::new("KEYED", ["events.keyed.>"])
        .atomic_batches(true)
        .ensure(&js)
        .await?;
    let publisher = Publisher::new(js.clone(), "bench");
    let events: Vec<_> = (0..n)
        .map(|i| {
            Event::new(Sample {
                data: "x".repeat(settings.payload),
            })
            .subject(format!("k-{}", i % KEYS))
        })
        .collect();
    publisher.publish_atomic(SUBJECT, &events).await?;
    // One connection per instance, as separate processes would have.
    let mut connections = Vec::new();
    for _ in 0..3 {
        connections.push(jetstream::new(server.client().await?));
    }

    println!("  {} bracketed rounds", settings.rounds);
    let names = [
        "unkeyed consumer, 16 handlers",
        "ordered by subject, 16 lanes, one process",
        "keyed, 8 partitions x 2 handlers, 1 instance",
        "keyed, 8 partitions x 2 handlers, 2 instances",
        "keyed, 8 partitions x 2 handlers, 3 instances",
        "keyed, 1 instance + idempotency records (2 KV writes per event)",
        "keyed, 1 instance + watermark (1 KV write per partition per 100 ms)",
    ];
    let shapes = [
        Shape::Unkeyed,
        Shape::Ordered,
        Shape::Keyed { instances: 1 },
        Shape::Keyed { instances: 2 },
        Shape::Keyed { instances: 3 },
        Shape::KeyedIdempotent,
        Shape::KeyedWatermark,
    ];
    let pass = AtomicU64::new(0);
    let pid = server.pid();
    let measured = rounds::interleave(settings.rounds, names.len(), |i| {
        let durable = format!("k{}", pass.fetch_add(1, Ordering::Relaxed));
        let (js, connections) = (js.clone(), connections.clone());
        let shape = shapes.get(i).copied().unwrap_or(Shape::Unkeyed);
        async move {
            let run = consume(&connections, &durable, shape, n, pid).await?;
            let stream = js.get_stream("KEYED").await?;
            match shape {
                Shape::Unkeyed | Shape::Ordered => {
                    stream.delete_consumer(&durable).await?;
                }
                _ => {
                    for p in 0..PARTITIONS {
                        let name = events::partition::partition_durable(&durable, p);
                        stream.delete_consumer(&name).await?;
                    }
                }
            }
            match shape {
                Shape::KeyedIdempotent => {
                    js.delete_key_value(events::Idempotency::bucket_for(&durable))
                        .await?;
                }
                Shape::KeyedWatermark => {
                    js.delete_key_value(events::consumer::watermark::bucket_for(&durable))
                        .await?;
                }
                _ => {}
            }
            Ok(run)
        }
    })
    .await?;
    rounds::report(report, scenario, &names, &measured);
    Ok(())
}

/// Reads all `n` events in `shape`, timed from the first event handled.
async fn consume(
    connections: &[jetstream::Context],
    durable: &str,
    shape: Shape,
    n: usize,
    pid: Option<u32>,
) -> anyhow::Result<Run> {
    let base = ConsumerSpec::new("KEYED", durable).filter([SUBJECT]);
    let keyed = base
        .clone()
        .keyed(PARTITIONS)
        .concurrency(HANDLERS / PARTITIONS as usize);
    let (spec, instances) = match shape {
        Shape::Unkeyed => (base.concurrency(HANDLERS), 1),
        Shape::Ordered => (base.concurrency(HANDLERS).ordered_by_subject(), 1),
        Shape::Keyed { instances } => (keyed, instances),
        Shape::KeyedIdempotent => (keyed.idempotent(Duration::from_secs(600)), 1),
        Shape::KeyedWatermark => (keyed.watermarked(), 1),
    };
    let count = Arc::new(AtomicU64::new(0));
    let first = Arc::new(OnceLock::<(Instant, CpuClock)>::new());
    let done = Arc::new(Notify::new());
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let total = n as u64;
    let mut tasks = Vec::new();
    for js in connections.iter().take(instances) {
        let (counted, first, finished, mut stopped) =
            (count.clone(), first.clone(), done.clone(), stopping.clone());
        tasks.push(tokio::spawn(events::consumer::run(
            js.clone(),
            spec.clone(),
            move |_event: ReceivedEvent<Sample>| {
                let (counted, first, finished) = (counted.clone(), first.clone(), finished.clone());
                async move {
                    first.get_or_init(|| (Instant::now(), CpuClock::start(pid)));
                    if counted.fetch_add(1, Ordering::Relaxed) + 1 == total {
                        finished.notify_one();
                    }
                    Ok::<(), HandlerError>(())
                }
            },
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        )));
    }
    tokio::time::timeout(Duration::from_secs(120), done.notified()).await?;
    let run = match first.get() {
        Some((started, cpu)) => cpu.run(count.load(Ordering::Relaxed), *started),
        None => anyhow::bail!("no event handled"),
    };
    let _ = stop.send(true);
    for task in tasks {
        task.await??;
    }
    Ok(run)
}
