//! What trace export costs on the request path: the same echo endpoint and
//! client, in alternating rounds, with span export off and on, against a
//! raw async-nats responder measured in the same rounds. Export goes over
//! OTLP/HTTP to a real receiver in this process (the test harness's), so
//! the cost includes making, batching, encoding and sending every span.
//!
//! Export off is the path of a process without the OTLP variables (no span
//! is made); whether that path changed since before the feature is checked
//! by comparing `request-reply`'s own ratio across builds (BENCHMARKS.md).

use bytes::Bytes;
use switchboard::client::Client;
use switchboard::telemetry::{self, ExportSettings};
use switchboard::testing::{OtlpReceiver, TestServer};

use crate::Settings;
use crate::drive::{RawCall, TypedCall, drive};
use crate::echo::{self, Payload};
use crate::report::{Report, median};

/// In flight: the request-reply scenario's target point.
const IN_FLIGHT: usize = 64;

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    // Installed once for the process; switched off and on between rounds.
    let exporter = telemetry::init_with(
        "bench",
        "warn",
        Some(ExportSettings::to(format!(
            "{}/v1/traces",
            receiver.endpoint()
        ))),
    );
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
        with_headers: false,
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
    let spans = receiver.spans().len();
    println!(
        "  per round: off/raw {off_ratios:.2?}, on/raw {on_ratios:.2?}, on/off {on_off:.2?}, \
         cpu/op off÷on {cpu_ratios:.2?}; {spans} spans received"
    );
    if spans == 0 {
        anyhow::bail!("export was on, yet the receiver got no span");
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
