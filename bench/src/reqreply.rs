//! Request-reply: raw async-nats responder and requester (the baseline)
//! against a Switchboard endpoint and client (typed JSON, deadline header,
//! trace context, circuit breaker on), at several numbers in flight; and a
//! handler awaiting 5 ms of simulated I/O against the ideal (in flight ÷ 5 ms)
//! and against a raw responder awaiting the same 5 ms.
//!
//! At the in-flight point nearest 64 (the target) it also splits
//! the gap: what the two request headers alone cost, what the endpoint side
//! costs, and what the client side costs — each against the same baseline.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use switchboard::ServiceError;
use switchboard::client::Client;
use switchboard::service::{Context, Endpoint, Service};
use switchboard::testing::TestServer;

use crate::Settings;
use crate::drive::{Headers, RawCall, TypedCall, drive};
use crate::echo::{self, Payload};
use crate::report::Report;
use crate::rounds;

/// One variant's call.
#[derive(Debug, Clone)]
enum Call {
    Raw(RawCall),
    Typed(TypedCall),
}

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

    let raw = |subject: &'static str, body: &Bytes, headers: Headers| RawCall {
        nats: requester.clone(),
        subject,
        body: body.clone(),
        headers,
    };
    let client = Client::new(requester.clone());
    let typed = |subject: &'static str| TypedCall {
        client: client.clone(),
        subject,
        payload: Payload::of(settings.payload),
    };
    let json = Bytes::from(serde_json::to_vec(&Payload::of(settings.payload))?);
    let split_at = settings.target_in_flight();

    for &in_flight in &settings.in_flight {
        let scenario = format!("request-reply c={in_flight}");
        println!(
            "{scenario} ({} bytes, {} bracketed rounds)",
            settings.payload, settings.rounds
        );
        // Baseline first; at the split point also the parts of the gap, each
        // between two runs of the baseline (see `rounds`).
        let mut variants: Vec<(&str, Call)> = vec![
            (
                "raw async-nats",
                Call::Raw(raw("bench.raw", &payload, Headers::None)),
            ),
            (
                "switchboard endpoint + client",
                Call::Typed(typed("bench.echo")),
            ),
        ];
        if in_flight == split_at {
            variants.extend([
                (
                    "part: raw + deadline/trace headers",
                    Call::Raw(raw("bench.raw", &payload, Headers::Ours)),
                ),
                (
                    "part: raw + same-size neutral headers",
                    Call::Raw(raw("bench.raw", &payload, Headers::Neutral)),
                ),
                (
                    "part: raw + one header carrying both",
                    Call::Raw(raw("bench.raw", &payload, Headers::Single)),
                ),
                (
                    "part: raw → switchboard endpoint",
                    Call::Raw(raw("bench.echo", &json, Headers::None)),
                ),
                (
                    "part: switchboard client → raw",
                    Call::Typed(typed("bench.raw")),
                ),
            ]);
        }
        let measured = rounds::interleave(settings.rounds, variants.len(), |i| {
            let call = variants[i].1.clone();
            async move {
                match call {
                    Call::Raw(c) => drive(pid, in_flight, settings.duration, c).await,
                    Call::Typed(c) => drive(pid, in_flight, settings.duration, c).await,
                }
            }
        })
        .await?;
        let names: Vec<&str> = variants.iter().map(|(name, _)| *name).collect();
        rounds::report(report, &scenario, &names, &measured);
    }

    let in_flight = settings.in_flight.iter().copied().max().unwrap_or(64);
    let scenario = format!("5ms handler c={in_flight}");
    println!("{scenario}");
    let ideal = in_flight as f64 / IO.as_secs_f64();
    println!("  {:<38} {ideal:>11.0} ops/s  (in flight ÷ 5 ms)", "ideal");
    let names = ["raw responder, same 5 ms", "switchboard 5 ms handler"];
    let measured = rounds::interleave(settings.rounds, names.len(), |i| {
        let call = if i == 0 {
            Call::Raw(raw("bench.raw-io", &payload, Headers::None))
        } else {
            Call::Typed(typed("bench.io"))
        };
        async move {
            match call {
                Call::Raw(c) => drive(pid, in_flight, settings.duration, c).await,
                Call::Typed(c) => drive(pid, in_flight, settings.duration, c).await,
            }
        }
    })
    .await?;
    rounds::report(report, &scenario, &names, &measured);
    let of_ideal = |runs: Vec<&crate::report::Run>| {
        let mut rates: Vec<f64> = runs
            .into_iter()
            .map(crate::report::Run::throughput)
            .collect();
        crate::report::median(&mut rates) / ideal
    };
    report.compare(
        &scenario,
        "raw responder, same 5 ms vs ideal",
        of_ideal(measured.baseline.iter().collect()),
    );
    report.compare(
        &scenario,
        "switchboard 5 ms handler vs ideal",
        of_ideal(measured.variants[0].iter().map(|b| &b.run).collect()),
    );
    Ok(())
}

/// A raw async-nats echo responder; with `io`, each request waits that long
/// in a task of its own (as any concurrent service must), else it is
/// answered inline.
pub(crate) async fn spawn_raw_responder(
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
