//! What trace export costs on the request path: the same echo endpoint and
//! client, in alternating rounds, with span export off and on, against a
//! raw async-nats responder measured in the same rounds. Export goes over
//! OTLP/HTTP on loopback to a sink in this process that reads each body and
//! drops it (a collector's decoding is the collector's cost, elsewhere), so
//! the cost is making, batching, encoding and sending every span.
//!
//! Export off is the path of a process without the OTLP variables (no span
//! is made); whether that path changed since before the feature is checked
//! by comparing `request-reply`'s own ratio across builds (BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use switchboard::client::Client;
use switchboard::telemetry::{self, ExportSettings};
use switchboard::testing::TestServer;

use crate::Settings;
use crate::drive::{RawCall, TypedCall, drive};
use crate::echo::{self, Payload};
use crate::report::Report;
use crate::rounds;

/// In flight: the request-reply scenario's target point.
const IN_FLIGHT: usize = 64;

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let sink = Sink::start().await?;
    // Installed once for the process; switched off and on between rounds.
    let endpoint = format!("http://{}/v1/traces", sink.addr);
    let exporter = telemetry::init_with("bench", "warn", Some(ExportSettings::to(endpoint)));
    if !exporter.exporting() {
        anyhow::bail!("the exporter did not start (another subscriber was installed first?)");
    }
    let server = TestServer::start().await?;
    let pid = server.pid();
    let responder = server.client().await?;
    let requester = server.client().await?;
    crate::reqreply::spawn_raw_responder(&responder, "bench.raw", None).await?;
    let _service = switchboard::service::Service::builder("bench", "1.0.0")
        .endpoint(echo::endpoint())
        .start(responder.clone())
        .await?;
    responder.flush().await?;
    let raw = RawCall {
        nats: requester.clone(),
        subject: "bench.raw",
        body: Bytes::from("x".repeat(settings.payload)),
        headers: crate::drive::Headers::None,
    };
    let typed = TypedCall {
        client: Client::new(requester.clone()),
        subject: "bench.echo",
        payload: Payload::of(settings.payload),
    };

    let scenario = format!("trace export c={IN_FLIGHT}");
    println!("{scenario} ({} bytes)", settings.payload);
    // Raw, export off and export on, each variant between two raw runs.
    let names = [
        "raw async-nats",
        "switchboard, export off",
        "switchboard, export on",
    ];
    let measured = rounds::interleave(settings.rounds, names.len(), |i| {
        let (raw, typed, exporter) = (raw.clone(), typed.clone(), &exporter);
        async move {
            if i == 0 {
                return drive(pid, IN_FLIGHT, settings.duration, raw).await;
            }
            exporter.set_exporting(i == 2);
            let run = drive(pid, IN_FLIGHT, settings.duration, typed).await;
            exporter.set_exporting(false);
            // This run's spans are sent before the next run starts.
            exporter.flush();
            run
        }
    })
    .await?;
    rounds::report(report, &scenario, &names, &measured);
    // On against off: their ratios to the same bracketing raw runs.
    let pairs = |of: fn(&rounds::Measured, usize) -> Vec<f64>| -> Vec<f64> {
        of(&measured, 1)
            .iter()
            .zip(of(&measured, 0))
            .map(|(on, off)| on / off.max(1e-9))
            .collect()
    };
    rounds::record(
        report,
        &scenario,
        "export on vs off",
        &pairs(rounds::Measured::throughput_ratios),
        &pairs(rounds::Measured::cpu_ratios),
    );
    let (exports, bytes) = sink.received();
    println!("  {exports} exports, {bytes} bytes received");
    if exports == 0 {
        anyhow::bail!("export was on, yet the sink got nothing");
    }
    Ok(())
}

/// An OTLP/HTTP endpoint that reads and drops what it gets.
struct Sink {
    addr: std::net::SocketAddr,
    received: Arc<(AtomicU64, AtomicU64)>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    async fn start() -> anyhow::Result<Sink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let counts = received.clone();
        // An empty body is an empty ExportTraceServiceResponse: all accepted.
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                counts.0.fetch_add(1, Ordering::Relaxed);
                counts.1.fetch_add(body.len() as u64, Ordering::Relaxed);
                async { "" }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink {
            addr,
            received,
            task,
        })
    }

    /// Exports and bytes received.
    fn received(&self) -> (u64, u64) {
        (
            self.received.0.load(Ordering::Relaxed),
            self.received.1.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
