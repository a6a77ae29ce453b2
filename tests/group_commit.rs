//! Group commit against a real nats-server: concurrent `publish` calls are
//! stored as atomic batches, yet each caller gets its own acknowledgement
//! (its own sequence, its own duplicate flag) or its own error.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard::events::{
    Event, EventError, GroupCommitConfig, Published, Publisher, StreamSpec, envelope,
};
use switchboard::testing::{TestServer, TestServerConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sampled {
    n: usize,
    data: String,
}

fn sample(n: usize, bytes: usize) -> Event<Sampled> {
    Event::new(Sampled {
        n,
        data: "x".repeat(bytes),
    })
    .id(format!("sample-{n}"))
}

/// A connection to `server` and its `SAMPLES` stream (`events.samples.>`).
async fn samples_stream(
    server: &TestServer,
) -> Result<(async_nats::Client, jetstream::Context), Box<dyn std::error::Error>> {
    let nats = server.client().await?;
    let js = jetstream::new(nats.clone());
    StreamSpec::new("SAMPLES", ["events.samples.>"])
        .ensure(&js)
        .await?;
    Ok((nats, js))
}

/// Publishes `events` all at once, from as many tasks (as many handlers
/// would), and returns each one's verdict by event number.
async fn publish_at_once(
    publisher: &Publisher,
    subject: &str,
    events: Vec<Event<Sampled>>,
) -> Result<BTreeMap<usize, Result<Published, EventError>>, Box<dyn std::error::Error>> {
    let tasks: Vec<_> = events
        .into_iter()
        .enumerate()
        .map(|(n, event)| {
            let (publisher, subject) = (publisher.clone(), subject.to_owned());
            tokio::spawn(async move {
                let verdict = publisher.publish(&subject, &event).await;
                (n, verdict)
            })
        })
        .collect();
    let mut verdicts = BTreeMap::new();
    for task in tasks {
        let (n, verdict) = task.await?;
        verdicts.insert(n, verdict);
    }
    Ok(verdicts)
}

/// Watches the subject on the wire: how many messages went in batches.
struct Tap {
    messages: async_nats::Subscriber,
}

impl Tap {
    async fn start(
        nats: &async_nats::Client,
        subject: &str,
    ) -> Result<Tap, Box<dyn std::error::Error>> {
        let messages = nats.subscribe(subject.to_owned()).await?;
        nats.flush().await?;
        Ok(Tap { messages })
    }

    /// (messages seen, distinct batches among them) once `expected` came.
    async fn batches(mut self, expected: usize) -> (usize, usize) {
        let (mut seen, mut batches) = (0, BTreeSet::new());
        while seen < expected {
            let next = tokio::time::timeout(Duration::from_secs(5), self.messages.next()).await;
            let Ok(Some(message)) = next else { break };
            seen += 1;
            let batch = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Batch-Id"))
                .map(|v| v.as_str().to_owned());
            if let Some(batch) = batch {
                batches.insert(batch);
            }
        }
        (seen, batches.len())
    }
}

/// The id of the event stored at `sequence`.
async fn stored_id(
    stream: &jetstream::stream::Stream,
    sequence: u64,
) -> Result<String, Box<dyn std::error::Error>> {
    let message = stream.get_raw_message(sequence).await?;
    Ok(envelope::header(Some(&message.headers), envelope::CE_ID)
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_are_grouped_and_each_caller_gets_its_own_ack() -> TestResult {
    // The durable profile, where grouping pays: a sync per stored message.
    let server = TestServer::with_config(
        TestServerConfig::default().config("jetstream { sync_interval: always }"),
    )
    .await?;
    let (nats, js) = samples_stream(&server).await?;
    let publisher = Publisher::new(js.clone(), "bench");
    let tap = Tap::start(&nats, "events.samples.taken.*").await?;
    const N: usize = 300;
    let verdicts = publish_at_once(
        &publisher,
        "events.samples.taken",
        (0..N).map(|n| sample(n, 64)).collect(),
    )
    .await?;

    let (seen, batches) = tap.batches(N).await;
    assert_eq!(seen, N, "every event sent once");
    assert!(
        batches > 0 && batches < N / 2,
        "{N} concurrent publishes went in {batches} batches"
    );
    // Each caller's sequence is its own event's.
    let stream = js.get_stream("SAMPLES").await?;
    let mut sequences = BTreeSet::new();
    for (n, verdict) in &verdicts {
        let published = verdict.as_ref().map_err(|e| format!("event {n}: {e}"))?;
        assert!(!published.duplicate);
        assert_eq!(published.id, format!("sample-{n}"));
        assert_eq!(published.stream, "SAMPLES");
        assert_eq!(stored_id(&stream, published.sequence).await?, published.id);
        sequences.insert(published.sequence);
    }
    assert_eq!(sequences, (1..=N as u64).collect(), "one sequence each");

    // Published again (retries) among new events, in the same groups:
    // every retry is told it is a duplicate, every new event gets its own
    // sequence, nothing is stored twice.
    let again = publish_at_once(
        &publisher,
        "events.samples.taken",
        (0..2 * N).map(|n| sample(n, 64)).collect(),
    )
    .await?;
    for (n, verdict) in &again {
        let published = verdict.as_ref().map_err(|e| format!("event {n}: {e}"))?;
        assert_eq!(published.duplicate, *n < N, "event {n}: {published:?}");
        if *n >= N {
            assert_eq!(stored_id(&stream, published.sequence).await?, published.id);
        }
    }
    assert_eq!(stream.clone().info().await?.state.messages, 2 * N as u64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_event_in_a_group_fails_alone() -> TestResult {
    let server = TestServer::start().await?;
    let (_, js) = samples_stream(&server).await?;
    let publisher = Publisher::new(js.clone(), "bench");
    // Event 7 is larger than the server takes (max_payload, 1 MiB).
    let events = (0..64)
        .map(|n| sample(n, if n == 7 { 2 << 20 } else { 64 }))
        .collect();
    let verdicts = publish_at_once(&publisher, "events.samples.taken", events).await?;
    for (n, verdict) in &verdicts {
        match (n, verdict) {
            (7, Err(_)) => {}
            (7, Ok(published)) => return Err(format!("too large, yet {published:?}").into()),
            (n, Err(error)) => {
                return Err(format!("event {n} failed with its neighbour: {error}").into());
            }
            (_, Ok(_)) => {}
        }
    }
    let stored = js.get_stream("SAMPLES").await?.info().await?.state.messages;
    assert_eq!(stored, 63, "all but the bad one");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_without_atomic_batches_still_takes_every_event() -> TestResult {
    let server = TestServer::start().await?;
    let js = jetstream::new(server.client().await?);
    StreamSpec::new("PLAIN", ["events.plain.>"])
        .atomic_batches(false)
        .ensure(&js)
        .await?;
    let publisher = Publisher::new(js.clone(), "bench");
    for round in 0..3 {
        let events = (0..50).map(|n| sample(round * 50 + n, 64)).collect();
        let verdicts = publish_at_once(&publisher, "events.plain.taken", events).await?;
        for (n, verdict) in verdicts {
            verdict.map_err(|e| format!("event {n}: {e}"))?;
        }
    }
    let stored = js.get_stream("PLAIN").await?.info().await?.state.messages;
    assert_eq!(stored, 150);
    // Nor does a subject no stream captures lose anything silently.
    let lost = publish_at_once(
        &publisher,
        "events.nowhere.taken",
        (0..10).map(|n| sample(n, 8)).collect(),
    )
    .await?;
    assert!(
        lost.values()
            .all(|v| matches!(v, Err(EventError::NoStream { .. }))),
        "{lost:?}"
    );
    Ok(())
}

#[tokio::test]
async fn grouping_can_be_turned_off() -> TestResult {
    let server = TestServer::start().await?;
    let (nats, js) = samples_stream(&server).await?;
    let publisher =
        Publisher::with_group_commit(js.clone(), "bench", GroupCommitConfig::disabled());
    let tap = Tap::start(&nats, "events.samples.taken.*").await?;
    let verdicts = publish_at_once(
        &publisher,
        "events.samples.taken",
        (0..40).map(|n| sample(n, 8)).collect(),
    )
    .await?;
    assert!(verdicts.values().all(Result::is_ok));
    assert_eq!(tap.batches(40).await, (40, 0));
    Ok(())
}
