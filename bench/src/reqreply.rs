//! Request-reply: raw async-nats responder and requester (the baseline)
//! against a Switchboard endpoint and client (typed JSON, deadline header,
//! trace context, circuit breaker on), at several numbers in flight; and a
//! handler awaiting 5 ms of simulated I/O against the ideal (in flight ÷ 5 ms).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::client::Client;
use switchboard::service::{Context, Endpoint, Service};
use switchboard::testing::TestServer;

use crate::Settings;
use crate::report::{self, Report};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Payload {
    data: String,
}

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let responder = server.client().await?;
    let requester = server.client().await?;
    let payload = "x".repeat(settings.payload);

    // Raw responder: echo.
    let mut raw = responder.subscribe("bench.raw").await?;
    let raw_replies = responder.clone();
    tokio::spawn(async move {
        while let Some(message) = raw.next().await {
            if let Some(reply) = message.reply {
                let _ = raw_replies.publish(reply, message.payload).await;
            }
        }
    });
    let _echo = Service::builder("bench", "1.0.0")
        .endpoint(Endpoint::new(
            "echo",
            |_ctx: Context, req: Payload| async move { Ok::<_, ServiceError>(req) },
        ))
        .endpoint(
            Endpoint::new("io", |_ctx: Context, req: Payload| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, ServiceError>(req)
            })
            .max_in_flight(1024),
        )
        .start(responder.clone())
        .await?;
    responder.flush().await?;
    let client = Client::new(requester.clone());

    for &in_flight in &settings.in_flight {
        let scenario = format!("request-reply c={in_flight}");
        println!("{scenario} ({} bytes)", settings.payload);
        let raw_body = payload.clone();
        let raw_requester = requester.clone();
        let (ops, took, hist) = drive(in_flight, settings.duration, move || {
            let requester = raw_requester.clone();
            let body = raw_body.clone();
            async move { requester.request("bench.raw", body.into()).await.is_ok() }
        })
        .await?;
        let baseline = report.add(&scenario, "raw async-nats", ops, took, Some(&hist), None);
        let request = Payload {
            data: payload.clone(),
        };
        let typed_client = client.clone();
        let (ops, took, hist) = drive(in_flight, settings.duration, move || {
            let client = typed_client.clone();
            let request = request.clone();
            async move {
                client
                    .call::<_, Payload>("bench.echo", &request)
                    .await
                    .is_ok()
            }
        })
        .await?;
        report.add(
            &scenario,
            "switchboard endpoint + client",
            ops,
            took,
            Some(&hist),
            Some(baseline),
        );
    }

    let in_flight = settings.in_flight.iter().copied().max().unwrap_or(64);
    let scenario = format!("5ms handler c={in_flight}");
    println!("{scenario}");
    let ideal = in_flight as f64 / 0.005;
    println!("  {:<34} {ideal:>11.0} ops/s  (in flight ÷ 5 ms)", "ideal");
    let request = Payload {
        data: payload.clone(),
    };
    let io_client = client.clone();
    let (ops, took, hist) = drive(in_flight, settings.duration, move || {
        let client = io_client.clone();
        let request = request.clone();
        async move {
            client
                .call::<_, Payload>("bench.io", &request)
                .await
                .is_ok()
        }
    })
    .await?;
    report.add(
        &scenario,
        "switchboard 5 ms handler",
        ops,
        took,
        Some(&hist),
        Some(ideal),
    );
    Ok(())
}

/// Runs `in_flight` loops of `call` for `duration`; counts successes and
/// records each call's latency.
pub async fn drive<F, Fut>(
    in_flight: usize,
    duration: Duration,
    call: F,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)>
where
    F: Fn() -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
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
    Ok((done.load(Ordering::Relaxed), started.elapsed(), merged))
}
