//! Request-reply: raw async-nats responder and requester (the baseline)
//! against a Switchboard endpoint and client (typed JSON, deadline header,
//! trace context, circuit breaker on), at several numbers in flight; and a
//! handler awaiting 5 ms of simulated I/O against the ideal (in flight ÷ 5 ms)
//! and against a raw responder awaiting the same 5 ms.
//!
//! At the in-flight point nearest 64 (the target) it also splits
//! the gap: what the two request headers alone cost, what the endpoint side
//! costs, and what the client side costs — each against the same baseline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use switchboard::ServiceError;
use switchboard::client::Client;
use switchboard::codec;
use switchboard::service::{Context, Endpoint, Service};
use switchboard::testing::TestServer;
use switchboard::trace_context::TraceContext;

use crate::Settings;
use crate::echo::{self, Payload};
use crate::report::{self, CpuClock, Report, Run};

/// The simulated I/O of the slow handler.
const IO: Duration = Duration::from_millis(5);

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pid = server.pid();
    let responder = server.client().await?;
    let requester = server.client().await?;
    let payload = Bytes::from("x".repeat(settings.payload));

    spawn_raw_responder(&responder, "bench.raw", None).await?;
    spawn_raw_responder(&responder, "bench.raw-io", Some(IO)).await?;
    let _service = Service::builder("bench", "1.0.0")
        .endpoint(echo::endpoint())
        .endpoint(
            Endpoint::new("io", |_ctx: Context, req: Payload| async move {
                tokio::time::sleep(IO).await;
                Ok::<_, ServiceError>(req)
            })
            .max_in_flight(1024),
        )
        .start(responder.clone())
        .await?;
    responder.flush().await?;

    // Both sides share one handle per connection across their loops, so
    // neither is charged for cloning a connection per call.
    let raw = Arc::new(requester.clone());
    let client = Client::new(requester.clone());
    let typed = Payload::of(settings.payload);
    let json = Bytes::from(serde_json::to_vec(&typed)?);
    let split_at = settings
        .in_flight
        .iter()
        .copied()
        .min_by_key(|n| n.abs_diff(64))
        .unwrap_or(64);

    for &in_flight in &settings.in_flight {
        let scenario = format!("request-reply c={in_flight}");
        println!("{scenario} ({} bytes)", settings.payload);
        let run = drive(pid, in_flight, settings.duration, {
            let (raw, body) = (raw.clone(), payload.clone());
            move || {
                let (raw, body) = (raw.clone(), body.clone());
                async move { raw.request("bench.raw", body).await.is_ok() }
            }
        })
        .await?;
        let baseline = report.add_run(&scenario, "raw async-nats", &run, None);
        let run = drive(pid, in_flight, settings.duration, {
            let (client, typed) = (client.clone(), typed.clone());
            move || {
                let (client, typed) = (client.clone(), typed.clone());
                async move {
                    client
                        .call::<_, Payload>("bench.echo", &typed)
                        .await
                        .is_ok()
                }
            }
        })
        .await?;
        report.add_run(
            &scenario,
            "switchboard endpoint + client",
            &run,
            Some(baseline),
        );
        if in_flight != split_at {
            continue;
        }
        // Where the difference goes, each part against the same baseline.
        let run = drive(pid, in_flight, settings.duration, {
            let (raw, body) = (raw.clone(), payload.clone());
            move || {
                let (raw, body) = (raw.clone(), body.clone());
                async move {
                    let headers =
                        codec::request_headers(Duration::from_secs(5), &TraceContext::new_root());
                    let request = async_nats::Request::new().payload(body).headers(headers);
                    raw.send_request("bench.raw", request).await.is_ok()
                }
            }
        })
        .await?;
        report.add_run(
            &scenario,
            "part: raw + deadline/trace headers",
            &run,
            Some(baseline),
        );
        let run = drive(pid, in_flight, settings.duration, {
            let (raw, body) = (raw.clone(), json.clone());
            move || {
                let (raw, body) = (raw.clone(), body.clone());
                async move { raw.request("bench.echo", body).await.is_ok() }
            }
        })
        .await?;
        report.add_run(
            &scenario,
            "part: raw → switchboard endpoint",
            &run,
            Some(baseline),
        );
        let run = drive(pid, in_flight, settings.duration, {
            let (client, typed) = (client.clone(), typed.clone());
            move || {
                let (client, typed) = (client.clone(), typed.clone());
                async move { client.call::<_, Payload>("bench.raw", &typed).await.is_ok() }
            }
        })
        .await?;
        report.add_run(
            &scenario,
            "part: switchboard client → raw",
            &run,
            Some(baseline),
        );
    }

    let in_flight = settings.in_flight.iter().copied().max().unwrap_or(64);
    let scenario = format!("5ms handler c={in_flight}");
    println!("{scenario}");
    let ideal = in_flight as f64 / IO.as_secs_f64();
    println!("  {:<38} {ideal:>11.0} ops/s  (in flight ÷ 5 ms)", "ideal");
    let run = drive(pid, in_flight, settings.duration, {
        let (raw, body) = (raw.clone(), payload.clone());
        move || {
            let (raw, body) = (raw.clone(), body.clone());
            async move { raw.request("bench.raw-io", body).await.is_ok() }
        }
    })
    .await?;
    let raw_io = report.add_run(&scenario, "raw responder, same 5 ms", &run, Some(ideal));
    let run = drive(pid, in_flight, settings.duration, {
        let (client, typed) = (client.clone(), typed.clone());
        move || {
            let (client, typed) = (client.clone(), typed.clone());
            async move { client.call::<_, Payload>("bench.io", &typed).await.is_ok() }
        }
    })
    .await?;
    let switchboard_io = report.add_run(&scenario, "switchboard 5 ms handler", &run, Some(ideal));
    report.compare(
        &scenario,
        "switchboard 5 ms handler vs raw responder, same 5 ms",
        switchboard_io / raw_io.max(1e-9),
    );
    Ok(())
}

/// A raw async-nats echo responder; with `io`, each request waits that long
/// in a task of its own (as any concurrent service must), else it is
/// answered inline.
async fn spawn_raw_responder(
    nats: &async_nats::Client,
    subject: &'static str,
    io: Option<Duration>,
) -> anyhow::Result<()> {
    let mut requests = nats.subscribe(subject).await?;
    let replies = nats.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply else { continue };
            match io {
                None => {
                    let _ = replies.publish(reply, message.payload).await;
                }
                Some(io) => {
                    let replies = replies.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(io).await;
                        let _ = replies.publish(reply, message.payload).await;
                    });
                }
            }
        }
    });
    Ok(())
}

/// Runs `in_flight` loops of `call` for `duration`; counts successes and
/// records each call's latency and the CPU spent (here and in the server
/// `server_pid`).
pub async fn drive<F, Fut>(
    server_pid: Option<u32>,
    in_flight: usize,
    duration: Duration,
    call: F,
) -> anyhow::Result<Run>
where
    F: Fn() -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let cpu = CpuClock::start(server_pid);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let call = call.clone();
        let done = done.clone();
        let mut hist = report::histogram()?;
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let asked = Instant::now();
                if call().await {
                    report::record(&mut hist, asked.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let mut merged = report::histogram()?;
    for task in tasks {
        let hist = task.await?;
        let _ = merged.add(&hist);
    }
    let took = started.elapsed();
    let ops = done.load(Ordering::Relaxed);
    Ok(Run {
        ops,
        took,
        latency_us: report::percentiles(&merged),
        cpu: cpu.per_op(ops),
    })
}
