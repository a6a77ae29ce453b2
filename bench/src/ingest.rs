//! The lead for grouped publishing: is nats-server's *fast ingest*
//! (ADR-50's flow-controlled batches, `allow_batched`, nats-server 2.14+)
//! cheaper per event than an atomic batch on the durable profile
//! (`sync_interval: always`)? An atomic batch costs the server a fixed
//! ~1.1–1.3 ms whatever its size, which caps the kit's group commit.
//!
//! Raw, on one durable server, each against raw one-by-one publishing in
//! bracketed rounds: atomic batches of 64 (what 64 concurrent callers make),
//! one at a time and four in flight at once (whether the server's fixed
//! cost per batch overlaps), and fast-ingest batches of 64 (each message a plain publish whose reply
//! subject `<inbox>.<flow>.<gap>.<seq>.<op>.$FI` carries the batch; the
//! server answers flow acks on the inbox and a pub ack for the commit).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;
use switchboard::testing::{TestServer, TestServerConfig};

use crate::Settings;
use crate::report::{CpuClock, Report};
use crate::rounds;

/// Events per batch: what 64 concurrent callers hand a lane.
const BATCH: usize = 64;

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let scenario = "ingest durable";
    println!(
        "{scenario} (batches of {BATCH}, {} bytes, {} bracketed rounds)",
        settings.payload, settings.rounds
    );
    let server = TestServer::with_config(
        TestServerConfig::default().config("jetstream { sync_interval: always }"),
    )
    .await?;
    let nats = server.client().await?;
    let js = jetstream::new(nats.clone());
    js.create_stream(stream::Config {
        name: "INGEST".into(),
        subjects: vec!["ingest.>".into()],
        allow_atomic_publish: true,
        allow_batch_publish: true,
        ..Default::default()
    })
    .await?;
    let body = Bytes::from(vec![b'x'; settings.payload]);
    let pid = server.pid();
    let duration = settings.duration;
    let names = [
        "raw one-by-one acked",
        "atomic batches of 64",
        "atomic batches of 64, 4 in flight",
        "fast-ingest batches of 64",
    ];
    let measured = rounds::interleave(settings.rounds, names.len(), |i| {
        let (nats, js, body) = (nats.clone(), js.clone(), body.clone());
        async move {
            js.get_stream("INGEST").await?.purge().await?;
            let cpu = CpuClock::start(pid);
            let started = Instant::now();
            let deadline = started + duration;
            let mut n = 0u64;
            while Instant::now() < deadline {
                match i {
                    0 => {
                        js.publish("ingest.one", body.clone()).await?.await?;
                        n += 1;
                    }
                    1 => {
                        atomic_batch(&nats, &body).await?;
                        n += BATCH as u64;
                    }
                    2 => {
                        let four = (0..4).map(|_| atomic_batch(&nats, &body));
                        for done in futures::future::join_all(four).await {
                            done?;
                        }
                        n += 4 * BATCH as u64;
                    }
                    _ => {
                        fast_batch(&nats, &body).await?;
                        n += BATCH as u64;
                    }
                }
            }
            anyhow::Ok(cpu.run(n, started))
        }
    })
    .await?;
    rounds::report(report, scenario, &names, &measured);
    Ok(())
}

/// One ADR-50 atomic batch of [`BATCH`] messages.
async fn atomic_batch(nats: &async_nats::Client, body: &Bytes) -> anyhow::Result<()> {
    let messages = (0..BATCH)
        .map(|_| {
            (
                "ingest.atomic".to_owned(),
                async_nats::HeaderMap::new(),
                body.clone(),
            )
        })
        .collect();
    crate::atomic::send(nats, messages).await
}

/// One fast-ingest batch of [`BATCH`] messages, the last one committing;
/// returns when the server's pub ack for the commit arrives.
async fn fast_batch(nats: &async_nats::Client, body: &Bytes) -> anyhow::Result<()> {
    // The inbox must be exactly two tokens.
    let inbox = format!("_INBOX.{}", nuid::next());
    let mut replies = nats.subscribe(format!("{inbox}.>")).await?;
    let flow = BATCH;
    for seq in 1..=BATCH {
        let op = match seq {
            1 => 0,
            s if s == BATCH => 2,
            _ => 1,
        };
        let reply = format!("{inbox}.{flow}.fail.{seq}.{op}.$FI");
        nats.publish_with_reply("ingest.fast", reply, body.clone())
            .await?;
    }
    // Flow acks carry `"type"`; the commit's pub ack does not.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(until, replies.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("inbox closed"))?;
        let value: serde_json::Value = serde_json::from_slice(&message.payload)?;
        if let Some(error) = value.get("error") {
            anyhow::bail!("fast batch refused: {error}");
        }
        if value.get("type").is_none() {
            return Ok(());
        }
    }
}
