//! JetStream publishing: raw async-nats, acked one by one and with a window
//! of acks in flight (the baselines), against Switchboard's publisher doing
//! the same (CloudEvents headers, `Nats-Msg-Id` de-duplication, typed JSON)
//! and its atomic batches (one fsync per batch); on the durable profile
//! (`sync_interval: always`, the default of nats.conf) and on the fast
//! profile (the server's lazy fsync).

use std::collections::VecDeque;
use std::future::Future;
use std::time::Instant;

use switchboard::events::{Event, Publisher, StreamSpec};
use switchboard::testing::{TestServer, TestServerConfig};

use crate::Settings;
use crate::report::{CpuClock, Report, Run};
use crate::rounds;

/// Acks in flight for the windowed publisher.
const WINDOW: usize = 256;

#[derive(serde::Serialize)]
struct Sample {
    data: String,
}

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    // The fast profile publishes ~25x faster: more events keep its
    // measurements long enough to mean something.
    for (profile, config, n) in [
        (
            "durable",
            "jetstream { sync_interval: always }",
            settings.messages,
        ),
        ("fast", "", settings.messages * 10),
    ] {
        let scenario = format!("publish {profile}");
        println!("{scenario} ({n} events of {} bytes)", settings.payload);
        let server = TestServer::with_config(TestServerConfig::default().config(config)).await?;
        let js = async_nats::jetstream::new(server.client().await?);
        StreamSpec::new("BENCH", ["events.bench.>"])
            .atomic_batches(true)
            .ensure(&js)
            .await?;
        let publisher = Publisher::new(js.clone(), "bench");
        let sample = || Sample {
            data: "x".repeat(settings.payload),
        };
        let event = || Event::new(sample());
        let raw_body = bytes::Bytes::from(serde_json::to_vec(&sample())?);

        let pid = server.pid();

        // Against raw one-by-one, then against the raw window: two groups of
        // interleaved rounds (see `rounds`), each with its own baseline.
        let names = [
            "raw one-by-one acked",
            "switchboard one-by-one",
            "switchboard atomic batches of 1000",
        ];
        let runs = rounds::interleave(settings.rounds, names.len(), |i| {
            let (js, publisher, raw_body) = (js.clone(), publisher.clone(), raw_body.clone());
            let events: Vec<_> = if i == 2 {
                (0..n).map(|_| event()).collect()
            } else {
                Vec::new()
            };
            timed(pid, n, async move {
                match i {
                    0 => {
                        for _ in 0..n {
                            js.publish("events.bench.raw", raw_body.clone())
                                .await?
                                .await?;
                        }
                    }
                    1 => {
                        for _ in 0..n {
                            publisher.publish("events.bench.sampled", &event()).await?;
                        }
                    }
                    _ => {
                        publisher
                            .publish_atomic("events.bench.sampled", &events)
                            .await?;
                    }
                }
                Ok(())
            })
        })
        .await?;
        rounds::report(report, &scenario, &names, &runs);

        let window = format!("raw window {WINDOW}");
        let names = [
            window.as_str(),
            // Part of the difference: the server's de-duplication by message
            // id (every Switchboard event has one, so a retried publish is
            // stored once).
            "part: raw window + Nats-Msg-Id",
            "switchboard window (BatchPublisher)",
        ];
        let runs = rounds::interleave(settings.rounds, names.len(), |i| {
            let (js, publisher, raw_body) = (js.clone(), publisher.clone(), raw_body.clone());
            timed(pid, n, async move {
                match i {
                    0 => raw_window(&js, &raw_body, n, false).await?,
                    1 => raw_window(&js, &raw_body, n, true).await?,
                    _ => {
                        let mut batch = publisher.batch(WINDOW);
                        for _ in 0..n {
                            batch.publish("events.bench.sampled", &event()).await?;
                        }
                        let failed = batch
                            .finish()
                            .await
                            .into_iter()
                            .filter(Result::is_err)
                            .count();
                        anyhow::ensure!(failed == 0, "{failed} publishes failed");
                    }
                }
                Ok(())
            })
        })
        .await?;
        rounds::report(report, &scenario, &names, &runs);
    }
    grouped(settings, report).await
}

/// Publishers in the kit's group commit: `PUBLISHERS` concurrent callers of
/// the ordinary `publish` on the durable profile, against raw one-by-one on
/// the same server and the raw window on a fast-profile server, all in the
/// same rounds.
async fn grouped(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    const PUBLISHERS: usize = 64;
    let n = settings.messages;
    let scenario = "publish grouped";
    println!(
        "{scenario} ({n} events of {} bytes, {PUBLISHERS} concurrent publishers)",
        settings.payload
    );
    let durable = TestServer::with_config(
        TestServerConfig::default().config("jetstream { sync_interval: always }"),
    )
    .await?;
    let fast = TestServer::start().await?;
    let mut contexts = Vec::new();
    for server in [&durable, &fast] {
        let js = async_nats::jetstream::new(server.client().await?);
        StreamSpec::new("BENCH", ["events.bench.>"])
            .ensure(&js)
            .await?;
        contexts.push(js);
    }
    let (durable_js, fast_js) = (contexts[0].clone(), contexts[1].clone());
    let publisher = Publisher::new(durable_js.clone(), "bench");
    let body = serde_json::to_vec(&Sample {
        data: "x".repeat(settings.payload),
    })?;
    let raw_body = bytes::Bytes::from(body);
    let names = [
        "raw one-by-one acked (durable)",
        "switchboard publish, 64 concurrent callers (durable, grouped)",
        "raw window 256 (fast profile)",
    ];
    let payload = settings.payload;
    let runs = rounds::interleave(settings.rounds, names.len(), |i| {
        let (durable_js, fast_js, publisher, raw_body) = (
            durable_js.clone(),
            fast_js.clone(),
            publisher.clone(),
            raw_body.clone(),
        );
        let pid = if i == 2 { fast.pid() } else { durable.pid() };
        timed(pid, n, async move {
            match i {
                0 => {
                    for _ in 0..n {
                        durable_js
                            .publish("events.bench.raw", raw_body.clone())
                            .await?
                            .await?;
                    }
                }
                1 => {
                    let callers: Vec<_> = (0..PUBLISHERS)
                        .map(|caller| {
                            let publisher = publisher.clone();
                            let count = n / PUBLISHERS + usize::from(caller < n % PUBLISHERS);
                            tokio::spawn(async move {
                                for _ in 0..count {
                                    let event = Event::new(Sample {
                                        data: "x".repeat(payload),
                                    });
                                    publisher.publish("events.bench.sampled", &event).await?;
                                }
                                anyhow::Ok(())
                            })
                        })
                        .collect();
                    for caller in callers {
                        caller.await??;
                    }
                }
                _ => raw_window(&fast_js, &raw_body, n, false).await?,
            }
            Ok(())
        })
    })
    .await?;
    rounds::report(report, scenario, &names[..2], &runs[..2]);
    rounds::compare(
        report,
        scenario,
        "grouped (durable) vs raw window 256 (fast profile)",
        &runs[1],
        &runs[2],
    );
    Ok(())
}

/// Runs `work` (publishing `n` events) and times it, with CPU per event.
async fn timed(
    pid: Option<u32>,
    n: usize,
    work: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<Run> {
    let cpu = CpuClock::start(pid);
    let started = Instant::now();
    work.await?;
    Ok(Run {
        ops: n as u64,
        took: started.elapsed(),
        latency_us: None,
        cpu: cpu.per_op(n as u64),
    })
}

/// Publishes `n` raw messages with up to [`WINDOW`] acks outstanding (each
/// with a fresh `Nats-Msg-Id` if `message_ids`).
async fn raw_window(
    js: &async_nats::jetstream::Context,
    body: &bytes::Bytes,
    n: usize,
    message_ids: bool,
) -> anyhow::Result<()> {
    let mut acks = VecDeque::with_capacity(WINDOW);
    for _ in 0..n {
        if acks.len() >= WINDOW
            && let Some(ack) = acks.pop_front()
        {
            ack.await?;
        }
        let ack = if message_ids {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", nuid::next().as_str());
            js.publish_with_headers("events.bench.raw", headers, body.clone())
                .await?
        } else {
            js.publish("events.bench.raw", body.clone()).await?
        };
        acks.push_back(ack);
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}
