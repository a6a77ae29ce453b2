//! JetStream publishing: Switchboard's publisher one event at a time (each
//! waits for its ack; the baseline) against its batch publisher with a
//! window of acks in flight and its atomic batches (one fsync per batch), on
//! the durable profile (`sync_interval: always`, the default of nats.conf)
//! and on the fast profile (the server's lazy fsync).

use std::time::Instant;

use switchboard::events::{Event, Publisher, StreamSpec};
use switchboard::testing::{TestServer, TestServerConfig};

use crate::Settings;
use crate::report::Report;

/// Acks in flight for the windowed publisher.
const WINDOW: usize = 256;

#[derive(serde::Serialize)]
struct Sample {
    data: String,
}

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let n = settings.messages;
    for (profile, config) in [
        ("durable", "jetstream { sync_interval: always }"),
        ("fast", ""),
    ] {
        let scenario = format!("publish {profile}");
        println!("{scenario} ({n} events of {} bytes)", settings.payload);
        let server = TestServer::with_config(TestServerConfig::default().config(config)).await?;
        let js = async_nats::jetstream::new(server.client().await?);
        StreamSpec::new("BENCH", ["events.bench.>"])
            .atomic_batches(true)
            .ensure(&js)
            .await?;
        let publisher = Publisher::new(js, "bench");
        let event = || {
            Event::new(Sample {
                data: "x".repeat(settings.payload),
            })
        };

        let started = Instant::now();
        for _ in 0..n {
            publisher.publish("events.bench.sampled", &event()).await?;
        }
        let baseline = report.add(
            &scenario,
            "one-by-one acked",
            n as u64,
            started.elapsed(),
            None,
            None,
        );

        let started = Instant::now();
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
        report.add(
            &scenario,
            &format!("window {WINDOW}"),
            n as u64,
            started.elapsed(),
            None,
            Some(baseline),
        );

        let events: Vec<_> = (0..n).map(|_| event()).collect();
        let started = Instant::now();
        publisher
            .publish_atomic("events.bench.sampled", &events)
            .await?;
        report.add(
            &scenario,
            "atomic batches of 1000",
            n as u64,
            started.elapsed(),
            None,
            Some(baseline),
        );
    }
    Ok(())
}
