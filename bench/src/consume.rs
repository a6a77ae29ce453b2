//! JetStream consuming: a raw async-nats pull consumer with explicit acks
//! (the baseline) against a Switchboard consumer with 64 and 256 handlers,
//! and with the idempotency helper (one KV claim and one record per event).

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

    // Baseline: raw pull consumer, explicit ack per message.
    let stream = js.get_stream("BENCH").await?;
    let raw = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let cpu = CpuClock::start(server.pid());
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
    let run = Run {
        ops: seen as u64,
        took: started.elapsed(),
        latency_us: None,
        cpu: cpu.per_op(seen as u64),
    };
    let baseline = report.add_run(scenario, "raw pull consumer", &run, None);

    // The consumer pulls only as many events as it has free handlers (so
    // nothing waits in a local buffer): more handlers, fewer pull requests.
    for (variant, durable, handlers, idempotent) in [
        ("switchboard consumer", "plain", 64, false),
        ("switchboard consumer, 256 handlers", "wide", 256, false),
        ("switchboard consumer + idempotency", "idem", 64, true),
    ] {
        let count = Arc::new(AtomicU64::new(0));
        let done = Arc::new(Notify::new());
        let stop = Arc::new(Notify::new());
        let mut spec = ConsumerSpec::new("BENCH", durable).concurrency(handlers);
        if idempotent {
            spec = spec.idempotent(Duration::from_secs(600));
        }
        let (counted, finished) = (count.clone(), done.clone());
        let total = n as u64;
        let cpu = CpuClock::start(server.pid());
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
        let took = started.elapsed();
        let ops = count.load(Ordering::Relaxed);
        let run = Run {
            ops,
            took,
            latency_us: None,
            cpu: cpu.per_op(ops),
        };
        stop.notify_one();
        task.await??;
        report.add_run(scenario, variant, &run, Some(baseline));
    }
    Ok(())
}
