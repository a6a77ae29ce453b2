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
use crate::report::{Report, median};

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
    let rounds = if settings.quick { 3 } else { 5 };
    let (mut off_ratios, mut on_ratios, mut on_off, mut cpu_ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let run = drive(pid, IN_FLIGHT, settings.duration, raw.clone()).await?;
        let baseline = report.add_run(&scenario, "raw async-nats", &run, None);
        // Off and on alternate which goes first.
        let mut rates = [0.0f64; 2];
        let mut cpu = [0.0f64; 2];
        for step in 0..2 {
            let on = (round + step) % 2 == 1;
            exporter.set_exporting(on);
            let variant = if on {
                "switchboard, export on"
            } else {
                "switchboard, export off"
            };
            let run = drive(pid, IN_FLIGHT, settings.duration, typed.clone()).await?;
            rates[usize::from(on)] = report.add_run(&scenario, variant, &run, Some(baseline));
            cpu[usize::from(on)] = run.cpu.map_or(0.0, |c| c.process + c.server);
            // Spans of this round are sent before the next round starts.
            exporter.flush();
        }
        exporter.set_exporting(false);
        off_ratios.push(rates[0] / baseline.max(1e-9));
        on_ratios.push(rates[1] / baseline.max(1e-9));
        on_off.push(rates[1] / rates[0].max(1e-9));
        cpu_ratios.push(cpu[0] / cpu[1].max(1e-9));
    }
    let (exports, bytes) = sink.received();
    println!(
        "  per round: off/raw {off_ratios:.2?}, on/raw {on_ratios:.2?}, on/off {on_off:.2?}, \
         cpu/op off÷on {cpu_ratios:.2?}; {exports} exports, {bytes} bytes received"
    );
    if exports == 0 {
        anyhow::bail!("export was on, yet the sink got nothing");
    }
    report.compare(
        &scenario,
        "export off vs raw (median of rounds)",
        median(&mut off_ratios),
    );
    report.compare(
        &scenario,
        "export on vs raw (median of rounds)",
        median(&mut on_ratios),
    );
    report.compare(
        &scenario,
        "export on vs off (median of rounds)",
        median(&mut on_off),
    );
    report.compare(
        "trace export cpu/op",
        "off ÷ on (median of rounds)",
        median(&mut cpu_ratios),
    );
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
