//! JetStream publishing: raw async-nats, acked one by one and with a window
//! of acks in flight (the baselines), against Switchboard's publisher doing
//! the same (CloudEvents headers, `Nats-Msg-Id` de-duplication, typed JSON)
//! and its atomic batches (one fsync per batch); on the durable profile
//! (`sync_interval: always`, the default of nats.conf) and on the fast
//! profile (the server's lazy fsync).

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

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
    for (profile, config) in [
        ("durable", "jetstream { sync_interval: always }"),
        ("fast", ""),
    ] {
        let scenario = format!("publish {profile}");
        println!(
            "{scenario} ({} bytes, {} bracketed rounds)",
            settings.payload, settings.rounds
        );
        let server = TestServer::with_config(TestServerConfig::default().config(config)).await?;
        let js = async_nats::jetstream::new(server.client().await?);
        StreamSpec::new("BENCH", ["events.bench.>"])
            .atomic_batches(true)
            .ensure(&js)
            .await?;
        let publisher = Publisher::new(js.clone(), "bench");
        let payload = settings.payload;
        let raw_body = bytes::Bytes::from(serde_json::to_vec(&sample(payload))?);
        let pid = server.pid();
        let duration = settings.duration;

        // Against raw one-by-one, then against the raw window: two groups of
        // bracketed rounds (see `rounds`), each with its own baseline.
        let names = [
            "raw one-by-one acked",
            "switchboard one-by-one",
            "switchboard atomic batches of 1000",
        ];
        let measured = rounds::interleave(settings.rounds, names.len(), |i| {
            let (js, publisher, raw_body) = (js.clone(), publisher.clone(), raw_body.clone());
            let stream = js.clone();
            fresh(stream, pid, duration, move |deadline| async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    match i {
                        0 => {
                            js.publish("events.bench.raw", raw_body.clone())
                                .await?
                                .await?;
                            n += 1;
                        }
                        1 => {
                            let event = Event::new(sample(payload));
                            publisher.publish("events.bench.sampled", &event).await?;
                            n += 1;
                        }
                        _ => {
                            let events: Vec<_> =
                                (0..1000).map(|_| Event::new(sample(payload))).collect();
                            publisher
                                .publish_atomic("events.bench.sampled", &events)
                                .await?;
                            n += 1000;
                        }
                    }
                }
                Ok(n)
            })
        })
        .await?;
        rounds::report(report, &scenario, &names, &measured);

        let window = format!("raw window {WINDOW}");
        let names = [
            window.as_str(),
            // Part of the difference: the server's de-duplication by message
            // id (every Switchboard event has one, so a retried publish is
            // stored once).
            "part: raw window + Nats-Msg-Id",
            "switchboard window (BatchPublisher)",
        ];
        let measured = rounds::interleave(settings.rounds, names.len(), |i| {
            let (js, publisher, raw_body) = (js.clone(), publisher.clone(), raw_body.clone());
            let stream = js.clone();
            fresh(stream, pid, duration, move |deadline| async move {
                match i {
                    0 => raw_window(&js, &raw_body, deadline, false).await,
                    1 => raw_window(&js, &raw_body, deadline, true).await,
                    _ => {
                        let mut batch = publisher.batch(WINDOW);
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            let event = Event::new(sample(payload));
                            batch.publish("events.bench.sampled", &event).await?;
                            n += 1;
                        }
                        let failed = batch
                            .finish()
                            .await
                            .into_iter()
                            .filter(Result::is_err)
                            .count();
                        anyhow::ensure!(failed == 0, "{failed} publishes failed");
                        Ok(n)
                    }
                }
            })
        })
        .await?;
        rounds::report(report, &scenario, &names, &measured);
    }
    grouped(settings, report).await
}

fn sample(payload: usize) -> Sample {
    Sample {
        data: "x".repeat(payload),
    }
}

/// Publishers in the kit's group commit: `PUBLISHERS` concurrent callers of
/// the ordinary `publish` on the durable profile, against raw one-by-one on
/// the same server, then against the raw window on a fast-profile server
/// (two groups of bracketed rounds).
async fn grouped(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    const PUBLISHERS: usize = 64;
    let scenario = "publish grouped";
    println!(
        "{scenario} ({} bytes, {PUBLISHERS} concurrent publishers, {} bracketed rounds)",
        settings.payload, settings.rounds
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
    let payload = settings.payload;
    let raw_body = bytes::Bytes::from(serde_json::to_vec(&sample(payload))?);
    let duration = settings.duration;
    let grouped = "switchboard publish, 64 concurrent callers (durable, grouped)";
    for (baseline, fast_baseline) in [
        ("raw one-by-one acked (durable)", false),
        ("raw window 256 (fast profile)", true),
    ] {
        let names = [
            baseline,
            if fast_baseline {
                "grouped (durable) vs raw window 256 (fast profile)"
            } else {
                grouped
            },
        ];
        let measured = rounds::interleave(settings.rounds, names.len(), |i| {
            let (durable_js, fast_js, publisher, raw_body) = (
                durable_js.clone(),
                fast_js.clone(),
                publisher.clone(),
                raw_body.clone(),
            );
            // CPU of the server the variant publishes to.
            let pid = if i == 0 && fast_baseline {
                fast.pid()
            } else {
                durable.pid()
            };
            let stream = if i == 0 && fast_baseline {
                fast_js.clone()
            } else {
                durable_js.clone()
            };
            fresh(stream, pid, duration, move |deadline| async move {
                match (i, fast_baseline) {
                    (0, false) => {
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            durable_js
                                .publish("events.bench.raw", raw_body.clone())
                                .await?
                                .await?;
                            n += 1;
                        }
                        Ok(n)
                    }
                    (0, true) => raw_window(&fast_js, &raw_body, deadline, false).await,
                    _ => {
                        let callers: Vec<_> = (0..PUBLISHERS)
                            .map(|_| {
                                let publisher = publisher.clone();
                                tokio::spawn(async move {
                                    let mut n = 0u64;
                                    while Instant::now() < deadline {
                                        let event = Event::new(sample(payload));
                                        publisher.publish("events.bench.sampled", &event).await?;
                                        n += 1;
                                    }
                                    anyhow::Ok(n)
                                })
                            })
                            .collect();
                        let mut n = 0;
                        for caller in callers {
                            n += caller.await??;
                        }
                        Ok(n)
                    }
                }
            })
        })
        .await?;
        rounds::report(report, scenario, &names, &measured);
    }
    Ok(())
}

/// Purges the stream `BENCH` (so no run pays for the ones before it, and
/// the disk does not fill), then runs [`timed`].
async fn fresh<W, Fut>(
    js: async_nats::jetstream::Context,
    pid: Option<u32>,
    duration: Duration,
    work: W,
) -> anyhow::Result<Run>
where
    W: FnOnce(Instant) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    js.get_stream("BENCH").await?.purge().await?;
    timed(pid, duration, work).await
}

/// Runs `work` until the deadline it is given (`duration` from now) and
/// times it, with CPU per event; `work` returns the events it published.
async fn timed<W, Fut>(pid: Option<u32>, duration: Duration, work: W) -> anyhow::Result<Run>
where
    W: FnOnce(Instant) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    let cpu = CpuClock::start(pid);
    let started = Instant::now();
    let n = work(started + duration).await?;
    Ok(cpu.run(n, started))
}

/// Publishes raw messages until `deadline` with up to [`WINDOW`] acks
/// outstanding (each with a fresh `Nats-Msg-Id` if `message_ids`), then
/// waits for the last acks; returns how many.
async fn raw_window(
    js: &async_nats::jetstream::Context,
    body: &bytes::Bytes,
    deadline: Instant,
    message_ids: bool,
) -> anyhow::Result<u64> {
    let mut acks = VecDeque::with_capacity(WINDOW);
    let mut n = 0u64;
    while Instant::now() < deadline {
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
        n += 1;
    }
    for ack in acks {
        ack.await?;
    }
    Ok(n)
}
