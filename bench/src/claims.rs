//! The lead for idempotent consuming: are a KV bucket's writes cheaper per
//! key in ADR-50 atomic batches than one by one, on the fast profile (where
//! no disk sync is saved, only per-message work)?
//!
//! The idempotent consumer makes two KV writes per event (a claim created
//! only if the key is absent, then a put marking it done), and a raw pull
//! consumer making the same two writes is its floor. Raw, against raw
//! creates one by one with 64 in flight (what 64 handlers make): atomic
//! batches of 64 creates, one batch at a time and two in flight; batches of
//! 64 plain puts; and a create then a put per key one by one (the helper's
//! two writes without a consumer).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use switchboard::testing::TestServer;

use crate::Settings;
use crate::report::{CpuClock, Report};
use crate::rounds;

/// Keys per batch, and writes in flight one by one: what 64 handlers make.
const BATCH: usize = 64;

const BUCKET: &str = "claims";

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let scenario = "kv claims";
    println!(
        "{scenario} (batches of {BATCH}, fast profile, {} bracketed rounds)",
        settings.rounds
    );
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let js = jetstream::new(nats.clone());
    let store = js
        .create_key_value(kv::Config {
            bucket: BUCKET.into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let stream_name = format!("KV_{BUCKET}");
    let mut config = js
        .get_stream(&stream_name)
        .await?
        .info()
        .await?
        .config
        .clone();
    config.allow_atomic_publish = true;
    js.update_stream(config).await?;

    // Every write is to a key never written before.
    let keys = Arc::new(AtomicU64::new(0));
    let pid = server.pid();
    let duration = settings.duration;
    let names = [
        "raw KV creates, 64 in flight",
        "atomic batches of 64 creates",
        "atomic batches of 64 creates, 2 in flight",
        "atomic batches of 64 puts",
        "KV create then put per key, 64 keys in flight (ops = keys)",
    ];
    let measured = rounds::interleave(settings.rounds, names.len(), |i| {
        let (nats, js, store, keys) = (nats.clone(), js.clone(), store.clone(), keys.clone());
        let stream_name = stream_name.clone();
        async move {
            js.get_stream(&stream_name).await?.purge().await?;
            let cpu = CpuClock::start(pid);
            let started = Instant::now();
            let deadline = started + duration;
            let loops: Vec<_> = match i {
                0 | 4 => (0..BATCH)
                    .map(|_| {
                        let (store, keys) = (store.clone(), keys.clone());
                        let put_too = i == 4;
                        tokio::spawn(async move {
                            let mut n = 0u64;
                            while Instant::now() < deadline {
                                let key = format!("k{}", keys.fetch_add(1, Ordering::Relaxed));
                                store.create(&key, Bytes::from_static(b"p")).await?;
                                if put_too {
                                    store.put(&key, Bytes::from_static(b"d")).await?;
                                }
                                n += 1;
                            }
                            anyhow::Ok(n)
                        })
                    })
                    .collect(),
                _ => {
                    let in_flight = if i == 2 { 2 } else { 1 };
                    (0..in_flight)
                        .map(|_| {
                            let (nats, keys) = (nats.clone(), keys.clone());
                            let create = i != 3;
                            tokio::spawn(async move {
                                let mut n = 0u64;
                                while Instant::now() < deadline {
                                    atomic_batch(&nats, &keys, create).await?;
                                    n += BATCH as u64;
                                }
                                anyhow::Ok(n)
                            })
                        })
                        .collect()
                }
            };
            let mut n = 0;
            for done in futures::future::join_all(loops).await {
                n += done??;
            }
            anyhow::Ok(cpu.run(n, started))
        }
    })
    .await?;
    rounds::report(report, scenario, &names, &measured);
    Ok(())
}

/// One atomic batch of [`BATCH`] new keys, each created only if absent
/// (`create`) or put plainly.
async fn atomic_batch(
    nats: &async_nats::Client,
    keys: &AtomicU64,
    create: bool,
) -> anyhow::Result<()> {
    let messages = (0..BATCH)
        .map(|_| {
            let key = keys.fetch_add(1, Ordering::Relaxed);
            let mut headers = async_nats::HeaderMap::new();
            if create {
                headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
            }
            (
                format!("$KV.{BUCKET}.k{key}"),
                headers,
                Bytes::from_static(b"p"),
            )
        })
        .collect();
    crate::atomic::send(nats, messages).await
}
