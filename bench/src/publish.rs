//! JetStream publishing throughput: Switchboard's publisher one event at a
//! time (each waits for its ack) against its batch publisher with a window
//! of acks in flight and its atomic batches (one fsync per batch), on the
//! durable profile (`sync_interval: always`, the
//! default of nats.conf) and on the fast profile (the server's lazy fsync).

use std::time::{Duration, Instant};

use switchboard::events::{Event, Publisher, StreamSpec};
use switchboard::testing::{TestServer, TestServerConfig};

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Events per measurement.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Acks in flight for the batch publisher.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    payload: usize,
}

#[derive(serde::Serialize)]
struct Sample {
    data: String,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    println!(
        "publish: {} events of {} bytes, window {}",
        args.messages, args.payload, args.window
    );
    for (profile, config) in [
        (
            "durable (sync_interval: always)",
            "jetstream { sync_interval: always }",
        ),
        ("fast (server default fsync)", ""),
    ] {
        let server = TestServer::with_config(TestServerConfig::default().config(config)).await?;
        let js = async_nats::jetstream::new(server.client().await?);
        StreamSpec::new("BENCH", ["events.bench.>"])
            .atomic_batches(true)
            .ensure(&js)
            .await?;
        let publisher = Publisher::new(js, "bench");
        let data = "x".repeat(args.payload);

        let one_by_one = measure(args.messages, || async {
            for _ in 0..args.messages {
                publisher
                    .publish(
                        "events.bench.sampled",
                        &Event::new(Sample { data: data.clone() }),
                    )
                    .await?;
            }
            Ok(())
        })
        .await?;
        let windowed = measure(args.messages, || async {
            let mut batch = publisher.batch(args.window);
            for _ in 0..args.messages {
                batch
                    .publish(
                        "events.bench.sampled",
                        &Event::new(Sample { data: data.clone() }),
                    )
                    .await?;
            }
            let failed = batch
                .finish()
                .await
                .into_iter()
                .filter(Result::is_err)
                .count();
            anyhow::ensure!(failed == 0, "{failed} publishes failed");
            Ok(())
        })
        .await?;
        let atomic = measure(args.messages, || async {
            let events: Vec<_> = (0..args.messages)
                .map(|_| Event::new(Sample { data: data.clone() }))
                .collect();
            publisher
                .publish_atomic("events.bench.sampled", &events)
                .await?;
            Ok(())
        })
        .await?;
        println!("{profile}");
        println!("  one-by-one acked  {one_by_one:>10.0} events/s  (baseline)");
        println!(
            "  window {:<4}       {windowed:>10.0} events/s",
            args.window
        );
        println!("  atomic batches    {atomic:>10.0} events/s");
        println!("  ratio window/one-by-one {:.2}x", windowed / one_by_one);
        println!("  ratio atomic/one-by-one {:.2}x", atomic / one_by_one);
    }
    Ok(())
}

async fn measure<F, Fut>(messages: usize, run: F) -> anyhow::Result<f64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    run().await?;
    let took = started.elapsed().max(Duration::from_micros(1));
    Ok(messages as f64 / took.as_secs_f64())
}
