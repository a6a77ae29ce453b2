//! Durable events against a real nats-server: envelope, duplicates, retries
//! with backoff, dead letters and replay, exactly-once effect, crashes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use switchboard::events::{
    self, ConsumerSpec, DeadLetters, Event, EventError, HandlerError, Publisher, ReceivedEvent,
    StreamSpec, StreamStatus,
};
use switchboard::service::Consumers;
use switchboard::testing::TestServer;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct OrderCreated {
    order_id: String,
}

fn order(id: &str) -> Event<OrderCreated> {
    Event::new(OrderCreated {
        order_id: id.to_owned(),
    })
    .id(format!("{id}-created"))
    .subject(id)
}

async fn setup(
    server: &TestServer,
) -> Result<(jetstream::Context, Publisher), Box<dyn std::error::Error>> {
    let js = jetstream::new(server.client().await?);
    StreamSpec::new("ORDERS", ["events.orders.>"])
        .ensure(&js)
        .await?;
    Ok((js.clone(), Publisher::new(js, "orders")))
}

/// Runs a consumer in the background until the returned token is cancelled.
fn consume<F, Fut>(
    js: &jetstream::Context,
    spec: ConsumerSpec,
    handler: F,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), EventError>>,
)
where
    F: Fn(ReceivedEvent<OrderCreated>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let stop = CancellationToken::new();
    let task = tokio::spawn(events::consumer::run(
        js.clone(),
        spec,
        handler,
        stop.clone().cancelled_owned(),
    ));
    (stop, task)
}

async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    check()
}

#[tokio::test]
async fn stored_events_carry_exactly_the_cloudevents_headers_and_duplicates_are_dropped()
-> TestResult {
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let first = publisher
        .publish("events.orders.created", &order("o-1"))
        .await?;
    assert!(!first.duplicate);
    let again = publisher
        .publish("events.orders.created", &order("o-1"))
        .await?;
    assert!(again.duplicate, "same id within the window is a duplicate");
    assert_eq!(again.sequence, first.sequence);

    let stream = js.get_stream("ORDERS").await?;
    let mut info = stream.clone();
    assert_eq!(info.info().await?.state.messages, 1, "stored once");
    let stored = stream.get_raw_message(first.sequence).await?;
    let mut names: Vec<String> = stored.headers.iter().map(|(k, _)| k.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Nats-Msg-Id",
            "ce-id",
            "ce-source",
            "ce-specversion",
            "ce-subject",
            "ce-time",
            "ce-type",
            "content-type"
        ]
    );
    let header = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(header("ce-id").as_deref(), Some("o-1-created"));
    assert_eq!(header("Nats-Msg-Id"), header("ce-id"));
    assert_eq!(header("ce-source").as_deref(), Some("orders"));
    assert_eq!(header("ce-type").as_deref(), Some("orders.created"));
    assert_eq!(header("ce-subject").as_deref(), Some("o-1"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    let time = header("ce-time").unwrap_or_default();
    assert!(
        time::OffsetDateTime::parse(&time, &time::format_description::well_known::Rfc3339).is_ok(),
        "{time}"
    );
    let body: OrderCreated = serde_json::from_slice(&stored.payload)?;
    assert_eq!(body.order_id, "o-1");
    Ok(())
}

#[tokio::test]
async fn publishing_where_no_stream_listens_is_an_error_and_drift_is_reported() -> TestResult {
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let lost = publisher
        .publish("events.nowhere.happened", &order("x"))
        .await;
    assert!(matches!(lost, Err(EventError::NoStream { .. })), "{lost:?}");

    assert_eq!(
        StreamSpec::new("ORDERS", ["events.orders.>"])
            .ensure(&js)
            .await?,
        StreamStatus::Unchanged
    );
    let drifted = StreamSpec::new("ORDERS", ["events.orders.>"])
        .duplicate_window(Duration::from_secs(30))
        .ensure(&js)
        .await;
    match drifted {
        Err(EventError::StreamDrift { differences, .. }) => {
            assert!(
                differences
                    .iter()
                    .any(|d| d.starts_with("duplicate_window")),
                "{differences:?}"
            )
        }
        other => panic!("expected drift, got {other:?}"),
    }
    let mut spec =
        StreamSpec::new("ORDERS", ["events.orders.>"]).duplicate_window(Duration::from_secs(30));
    spec.update_on_drift = true;
    assert_eq!(spec.ensure(&js).await?, StreamStatus::Updated);
    Ok(())
}

#[tokio::test]
async fn retryable_failures_are_redelivered_after_the_backoff_then_processed_once() -> TestResult {
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    publisher
        .publish("events.orders.created", &order("o-2"))
        .await?;

    let deliveries = Arc::new(Mutex::new(Vec::<(u64, Instant)>::new()));
    let processed = Arc::new(AtomicUsize::new(0));
    let (seen, done) = (deliveries.clone(), processed.clone());
    let spec = ConsumerSpec::new("ORDERS", "retrying")
        .backoff(vec![Duration::from_millis(300), Duration::from_millis(600)])
        .max_deliver(5);
    let (stop, task) = consume(&js, spec, move |event| {
        let (seen, done) = (seen.clone(), done.clone());
        async move {
            let delivered = event.delivery.map_or(0, |d| d.delivered);
            if let Ok(mut s) = seen.lock() {
                s.push((delivered, Instant::now()));
            }
            if delivered <= 2 {
                return Err(HandlerError::retry("dependency down"));
            }
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    assert!(
        eventually(Duration::from_secs(10), || processed.load(Ordering::SeqCst)
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    task.await??;
    let seen = deliveries.lock().map(|d| d.clone()).unwrap_or_default();
    assert_eq!(
        seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 2, 3],
        "three deliveries, no more"
    );
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(
        gaps[0] >= Duration::from_millis(300),
        "first retry after {:?}",
        gaps[0]
    );
    assert!(
        gaps[1] >= Duration::from_millis(600),
        "second retry after {:?}",
        gaps[1]
    );
    assert_eq!(processed.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_whole_and_replay_processes_it_once_fixed() -> TestResult {
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let poison = publisher
        .publish("events.orders.created", &order("poison"))
        .await?;

    let fixed = Arc::new(AtomicBool::new(false));
    let processed = Arc::new(Mutex::new(Vec::<String>::new()));
    let (is_fixed, done) = (fixed.clone(), processed.clone());
    let spec = ConsumerSpec::new("ORDERS", "poisoned")
        .backoff(vec![Duration::from_millis(50)])
        .max_deliver(3)
        .idempotent(Duration::from_secs(600));
    let (stop, task) = consume(&js, spec, move |event| {
        let (is_fixed, done) = (is_fixed.clone(), done.clone());
        async move {
            if !is_fixed.load(Ordering::SeqCst) {
                return Err(HandlerError::retry(format!(
                    "cannot handle {}",
                    event.data.order_id
                )));
            }
            if let Ok(mut d) = done.lock() {
                d.push(event.attributes.id);
            }
            Ok(())
        }
    });

    let dlq = DeadLetters::open(&js).await?;
    let mut letters = Vec::new();
    for _ in 0..100 {
        letters = dlq.list().await?;
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(letters.len(), 1, "one dead letter");
    let letter = &letters[0];
    // The subject as published: with the shard of the event's key.
    assert_eq!(
        letter.info.subject,
        events::partition::keyed_subject("events.orders.created", "poison")
    );
    assert_eq!(letter.info.stream, "ORDERS");
    assert_eq!(letter.info.consumer, "poisoned");
    assert_eq!(letter.info.stream_sequence, poison.sequence);
    assert_eq!(letter.info.deliveries, 3);
    assert_eq!(letter.info.error, "cannot handle poison");
    assert_eq!(letter.event_id(), Some("poison-created"));
    assert!(
        letter
            .headers
            .iter()
            .any(|(k, v)| k == "ce-source" && v == "orders")
    );
    let payload: OrderCreated = serde_json::from_slice(letter.raw_payload())?;
    assert_eq!(payload.order_id, "poison");

    fixed.store(true, Ordering::SeqCst);
    dlq.replay(letter.id).await?;
    assert!(
        eventually(Duration::from_secs(5), || processed
            .lock()
            .map(|p| p.len())
            .unwrap_or(0)
            == 1)
        .await
    );
    assert!(
        dlq.list().await?.is_empty(),
        "a replayed dead letter leaves the DLQ"
    );
    assert!(matches!(
        dlq.replay(letter.id).await,
        Err(EventError::UnknownDeadLetter(_))
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        processed.lock().map(|p| p.clone()).unwrap_or_default(),
        ["poison-created"]
    );
    stop.cancel();
    task.await??;
    Ok(())
}

#[tokio::test]
async fn duplicates_and_redeliveries_have_one_effect_per_event() -> TestResult {
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let ids: Vec<String> = (0..20).map(|i| format!("o-{i}")).collect();
    for id in &ids {
        publisher
            .publish("events.orders.created", &order(id))
            .await?;
        // The same fact again, past the stream's de-duplication (as a second
        // publisher or a replay would): same ce-id, other message id.
        let stream = js.get_stream("ORDERS").await?;
        let last = stream
            .get_last_raw_message_by_subject(&events::partition::keyed_subject(
                "events.orders.created",
                id,
            ))
            .await?;
        let mut headers = last.headers.clone();
        headers.insert("Nats-Msg-Id", format!("{id}-again").as_str());
        js.publish_with_headers("events.orders.created", headers, last.payload.clone())
            .await?
            .await?;
    }
    assert_eq!(
        js.get_stream("ORDERS").await?.info().await?.state.messages,
        40
    );

    let effects = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let slow_once = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let (counted, slowed) = (effects.clone(), slow_once.clone());
    // A short ack wait without progress signals: slow first deliveries are
    // redelivered while they still run.
    let spec = ConsumerSpec::new("ORDERS", "effects")
        .ack_wait(Duration::from_millis(300))
        .progress(false)
        .backoff(vec![Duration::from_millis(100)])
        .max_deliver(20)
        .concurrency(8)
        .idempotent(Duration::from_secs(600));
    let (stop, task) = consume(&js, spec, move |event| {
        let (counted, slowed) = (counted.clone(), slowed.clone());
        async move {
            let first_time = slowed
                .lock()
                .map(|mut s| s.insert(event.data.order_id.clone()))
                .unwrap_or(false);
            if first_time && event.data.order_id.ends_with('3') {
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            if let Ok(mut c) = counted.lock() {
                *c.entry(event.data.order_id.clone()).or_default() += 1;
            }
            Ok(())
        }
    });
    assert!(
        eventually(Duration::from_secs(15), || effects
            .lock()
            .map(|e| e.len())
            .unwrap_or(0)
            == ids.len())
        .await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // room for stray redeliveries
    stop.cancel();
    task.await??;
    let effects = effects.lock().map(|e| e.clone()).unwrap_or_default();
    assert!(
        effects.values().all(|n| *n == 1),
        "one effect per event: {effects:?}"
    );
    assert_eq!(effects.len(), ids.len());
    Ok(())
}

#[tokio::test]
async fn deliveries_lost_without_a_handler_result_never_dead_letter_an_event() -> TestResult {
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    publisher
        .publish("events.orders.created", &order("stuck"))
        .await?;
    // A consumer that never answers, no progress signals: the server
    // redelivers after each ack wait, as after a crash — many more times
    // than max_deliver. None of that is the handler failing.
    let spec = || {
        ConsumerSpec::new("ORDERS", "stuck")
            .ack_wait(Duration::from_millis(200))
            .progress(false)
            .max_deliver(2)
            .concurrency(4)
    };
    let (stop, task) = consume(&js, spec(), |_event| std::future::pending());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    task.abort();
    let info = js
        .get_stream("ORDERS")
        .await?
        .consumer_info("stuck")
        .await?
        .clone();
    assert!(
        info.num_redelivered > 0 || info.num_ack_pending > 0,
        "the event was redelivered: {info:?}"
    );
    let dlq = DeadLetters::open(&js).await?;
    assert!(
        dlq.list().await?.is_empty(),
        "no dead letter for an event whose handler never failed"
    );

    // A working consumer on the same durable handles it.
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = handled.clone();
    let (stop, task) = consume(&js, spec(), move |event| {
        let seen = seen.clone();
        async move {
            if let Ok(mut seen) = seen.lock() {
                seen.push(event.data.order_id);
            }
            Ok(())
        }
    });
    let mut done = false;
    for _ in 0..100 {
        if handled.lock().map(|h| h.len()).unwrap_or(0) > 0 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = task.await;
    assert!(done, "the event was never handled");
    assert!(dlq.list().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn no_acknowledged_event_is_lost_when_the_server_is_killed_mid_stream() -> TestResult {
    let mut server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let consumed = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let seen = consumed.clone();
    let spec = ConsumerSpec::new("ORDERS", "survivor").backoff(vec![Duration::from_millis(100)]);
    let (stop, task) = consume(&js, spec, move |event| {
        let seen = seen.clone();
        async move {
            if let Ok(mut s) = seen.lock() {
                s.insert(event.data.order_id);
            }
            Ok(())
        }
    });

    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let record = acked.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..300 {
            let id = format!("o-{i}");
            // Failures while the server is down are fine: only acked events count.
            if publisher
                .publish("events.orders.created", &order(&id))
                .await
                .is_ok()
                && let Ok(mut a) = record.lock()
            {
                a.insert(id);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await?;
    publishing.await?;

    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(
        acked.len() > 50,
        "some events were acknowledged ({})",
        acked.len()
    );
    let all_consumed = eventually(Duration::from_secs(30), || {
        consumed
            .lock()
            .map(|c| acked.is_subset(&c))
            .unwrap_or(false)
    })
    .await;
    let missing: Vec<String> = consumed
        .lock()
        .map(|c| acked.difference(&c).cloned().collect())
        .unwrap_or_default();
    assert!(all_consumed, "acknowledged but never consumed: {missing:?}");
    stop.cancel();
    task.await??;
    Ok(())
}

#[tokio::test]
async fn batch_publishing_reports_every_result() -> TestResult {
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let mut batch = publisher.batch(64);
    for i in 0..500 {
        batch
            .publish("events.orders.created", &order(&format!("b-{i}")))
            .await?;
    }
    batch
        .publish("events.orders.created", &order("b-0"))
        .await?; // a duplicate
    let results = batch.finish().await;
    assert_eq!(results.len(), 501);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        results
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|p| p.duplicate))
            .count(),
        1
    );
    assert_eq!(
        js.get_stream("ORDERS").await?.info().await?.state.messages,
        500
    );
    Ok(())
}

#[tokio::test]
async fn signals_use_the_same_envelope_without_a_stream() -> TestResult {
    use futures::StreamExt;
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let mut signals = events::signal::subscribe::<OrderCreated>(&nats, "signals.orders.>").await?;
    nats.flush().await?;
    events::signal::publish(&nats, "orders", "signals.orders.hint", &order("s-1")).await?;
    let received = tokio::time::timeout(Duration::from_secs(2), signals.next())
        .await?
        .ok_or("no signal")??;
    assert_eq!(received.attributes.source, "orders");
    assert_eq!(received.attributes.event_type, "signals.orders.hint");
    assert_eq!(received.data.order_id, "s-1");
    assert!(received.delivery.is_none());
    Ok(())
}

#[tokio::test]
async fn atomic_batches_store_all_events_and_need_a_stream_that_allows_them() -> TestResult {
    let server = TestServer::start().await?;
    let js = jetstream::new(server.client().await?);
    StreamSpec::new("ATOMIC", ["events.atomic.>"])
        .atomic_batches(true)
        .ensure(&js)
        .await?;
    StreamSpec::new("PLAIN", ["events.plain.>"])
        .atomic_batches(false)
        .ensure(&js)
        .await?;
    let publisher = Publisher::new(js.clone(), "orders");
    let events: Vec<_> = (0..1500).map(|i| order(&format!("a-{i}"))).collect();
    let acks = publisher
        .publish_atomic("events.atomic.created", &events)
        .await?;
    assert_eq!(
        acks.iter().map(|a| a.count).collect::<Vec<_>>(),
        [1000, 500]
    );
    assert_eq!(acks.last().map(|a| a.last_sequence), Some(1500));
    assert_eq!(
        js.get_stream("ATOMIC").await?.info().await?.state.messages,
        1500
    );

    let refused = publisher
        .publish_atomic("events.plain.created", &events[..3])
        .await;
    assert!(
        matches!(refused, Err(EventError::JetStream { .. })),
        "{refused:?}"
    );
    assert_eq!(
        js.get_stream("PLAIN").await?.info().await?.state.messages,
        0,
        "nothing of a refused batch is stored"
    );
    Ok(())
}

#[tokio::test]
async fn ordered_consumers_keep_each_subjects_events_in_order_even_across_retries() -> TestResult {
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Step {
        key: String,
        n: usize,
    }
    let server = TestServer::start().await?;
    let js = jetstream::new(server.client().await?);
    StreamSpec::new("STEPS", ["events.steps.>"])
        .ensure(&js)
        .await?;
    let publisher = Publisher::new(js.clone(), "steps");
    let mut batch = publisher.batch(64);
    for n in 0..10 {
        for key in ["k0", "k1", "k2"] {
            let event = Event::new(Step { key: key.into(), n }).subject(key);
            batch.publish("events.steps.taken", &event).await?;
        }
    }
    assert!(batch.finish().await.iter().all(Result::is_ok));

    let seen = Arc::new(Mutex::new(BTreeMap::<String, Vec<usize>>::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let (record, failed) = (seen.clone(), failures.clone());
    let spec = ConsumerSpec::new("STEPS", "ordered")
        .ordered_by_subject()
        .concurrency(4)
        .backoff(vec![Duration::from_millis(50)]);
    let stop = CancellationToken::new();
    let task = tokio::spawn(events::consumer::run(
        js.clone(),
        spec,
        move |event: ReceivedEvent<Step>| {
            let (record, failed) = (record.clone(), failed.clone());
            async move {
                let Step { key, n } = event.data;
                // Step 3 of k1 fails twice before it succeeds.
                if key == "k1" && n == 3 && failed.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(HandlerError::retry("not yet"));
                }
                tokio::time::sleep(Duration::from_millis(((n * 7) % 5) as u64)).await;
                if let Ok(mut r) = record.lock() {
                    r.entry(key).or_default().push(n);
                }
                Ok(())
            }
        },
        stop.clone().cancelled_owned(),
    ));
    assert!(
        eventually(Duration::from_secs(10), || {
            seen.lock()
                .map(|s| s.values().map(Vec::len).sum::<usize>() == 30)
                .unwrap_or(false)
        })
        .await
    );
    stop.cancel();
    task.await??;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    for (key, steps) in &seen {
        assert_eq!(steps, &(0..10).collect::<Vec<_>>(), "{key} out of order");
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    Ok(())
}

#[tokio::test]
async fn a_claim_left_by_a_crashed_handler_is_taken_over_after_its_lease() -> TestResult {
    use switchboard::events::{Claim, Idempotency};
    let server = TestServer::start().await?;
    let js = jetstream::new(server.client().await?);
    let lease = Duration::from_millis(400);
    let records = Idempotency::open(&js, "processed-test", Duration::from_secs(600), lease).await?;
    assert_eq!(records.claim("e-1").await?, Claim::New);
    // Another delivery while the first handler (here: a crashed one) holds it.
    assert_eq!(records.claim("e-1").await?, Claim::InProgress);
    // A live handler renews; this one does not, and loses it after the lease.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert_eq!(records.claim("e-1").await?, Claim::New, "taken over");
    records.done("e-1").await?;
    assert_eq!(records.claim("e-1").await?, Claim::AlreadyDone);
    // Renewed claims are not taken over.
    assert_eq!(records.claim("e-2").await?, Claim::New);
    for _ in 0..4 {
        tokio::time::sleep(lease / 3).await;
        records.renew("e-2").await?;
    }
    assert_eq!(records.claim("e-2").await?, Claim::InProgress);
    Ok(())
}

#[tokio::test]
async fn a_consumer_whose_set_up_fails_is_started_again_until_it_runs() -> TestResult {
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    // A durable of that name already exists with a delivery policy that
    // cannot be changed in place: the consumer's set-up fails.
    js.get_stream("ORDERS")
        .await?
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("mailer".into()),
            deliver_policy: jetstream::consumer::DeliverPolicy::New,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    publisher
        .publish("events.orders.created", &order("o-1"))
        .await?;
    let handled = Arc::new(AtomicUsize::new(0));
    let mut consumers = Consumers::new(js.clone());
    let counter = handled.clone();
    consumers.spawn(
        ConsumerSpec::new("ORDERS", "mailer"),
        move |_event: ReceivedEvent<OrderCreated>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        },
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "set up against the old durable"
    );
    // The operator removes the stale durable; the consumer comes up by itself.
    js.get_stream("ORDERS")
        .await?
        .delete_consumer("mailer")
        .await?;
    assert!(
        eventually(Duration::from_secs(15), || handled.load(Ordering::SeqCst)
            == 1)
        .await,
        "the consumer was not started again"
    );
    consumers.stop().await?;
    Ok(())
}

/// Handlers that finish nothing earn no prefetch: with every handler busy
/// from the start, the server has handed out exactly as many events as
/// there are slots — none wait in a local buffer with their ack timer
/// running — and as slots free up, the rest follow, each delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_never_holds_more_events_than_it_has_free_handlers() -> TestResult {
    const SLOTS: usize = 4;
    const EVENTS: usize = 200;
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let mut batch = publisher.batch(64);
    for n in 0..EVENTS {
        batch
            .publish("events.orders.created", &order(&format!("h-{n}")))
            .await?;
    }
    assert!(batch.finish().await.iter().all(Result::is_ok));

    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (started, handled) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop, task) = consume(
        &js,
        ConsumerSpec::new("ORDERS", "held").concurrency(SLOTS),
        {
            let (gate, started, handled) = (gate.clone(), started.clone(), handled.clone());
            move |_event| {
                let (gate, started, handled) = (gate.clone(), started.clone(), handled.clone());
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        },
    );
    assert!(
        eventually(Duration::from_secs(5), || started.load(Ordering::SeqCst)
            == SLOTS)
        .await
    );
    // Long enough for a consumer that over-pulls to have done so.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut consumer = js
        .get_stream("ORDERS")
        .await?
        .get_consumer::<jetstream::consumer::pull::Config>("held")
        .await
        .map_err(|e| e.to_string())?;
    let info = consumer.info().await?.clone();
    assert_eq!(
        (info.num_ack_pending, started.load(Ordering::SeqCst)),
        (SLOTS, SLOTS),
        "handed out beyond the free slots: {info:?}"
    );
    // One slot freed at a time, then all: every event follows, once.
    gate.add_permits(1);
    assert!(
        eventually(Duration::from_secs(5), || started.load(Ordering::SeqCst)
            == SLOTS + 1)
        .await
    );
    gate.add_permits(EVENTS);
    assert!(
        eventually(Duration::from_secs(20), || handled.load(Ordering::SeqCst)
            == EVENTS)
        .await,
        "handled {} of {EVENTS}",
        handled.load(Ordering::SeqCst)
    );
    let info = consumer.info().await?.clone();
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    assert_eq!(started.load(Ordering::SeqCst), EVENTS);
    stop.cancel();
    task.await??;
    Ok(())
}

/// Fast handlers let the consumer pull ahead of them (its prefetch); when
/// they then stall, the events waiting for a slot are handed back within a
/// third of the ack wait, so that another instance takes them long before
/// their ack timers would have run out; every event is handled exactly
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_waiting_behind_stalled_handlers_are_handed_back() -> TestResult {
    const SLOTS: usize = 4;
    const FAST: usize = 1500;
    const EVENTS: usize = 2000;
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let mut batch = publisher.batch(256);
    for n in 0..EVENTS {
        batch
            .publish("events.orders.created", &order(&format!("s-{n}")))
            .await?;
    }
    assert!(batch.finish().await.iter().all(Result::is_ok));

    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let record = |seen: &Mutex<BTreeMap<String, usize>>, event: ReceivedEvent<OrderCreated>| {
        if let Ok(mut seen) = seen.lock() {
            *seen.entry(event.data.order_id).or_default() += 1;
        }
    };
    let ack_wait = Duration::from_secs(9);
    let spec = ConsumerSpec::new("ORDERS", "stalled")
        .concurrency(SLOTS)
        .ack_wait(ack_wait);
    let (stop, task) = consume(&js, spec.clone(), {
        let (gate, started, seen) = (gate.clone(), started.clone(), seen.clone());
        move |event| {
            let (gate, started, seen) = (gate.clone(), started.clone(), seen.clone());
            async move {
                // The first FAST go through at once; then every handler
                // stalls until the gate opens.
                if started.fetch_add(1, Ordering::SeqCst) >= FAST
                    && let Ok(permit) = gate.acquire().await
                {
                    permit.forget();
                }
                record(&seen, event);
                Ok(())
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(20), || started.load(Ordering::SeqCst)
            == FAST + SLOTS)
        .await,
        "started {}",
        started.load(Ordering::SeqCst)
    );
    let stalled = Instant::now();
    let mut consumer = js
        .get_stream("ORDERS")
        .await?
        .get_consumer::<jetstream::consumer::pull::Config>("stalled")
        .await
        .map_err(|e| e.to_string())?;
    let held = consumer.info().await?.num_ack_pending;
    assert!(
        held > SLOTS,
        "fast handlers earned no prefetch: {held} held for {SLOTS} slots"
    );

    // A second instance with free handlers: it takes the rest of the
    // stream and, once handed back, what waited behind the stall.
    let (stop_other, other) = consume(&js, spec, {
        let seen = seen.clone();
        move |event| {
            let seen = seen.clone();
            async move {
                record(&seen, event);
                Ok(())
            }
        }
    });
    let everything_but_the_stalled = || seen.lock().map_or(0, |s| s.len()) == EVENTS - SLOTS;
    assert!(
        eventually(ack_wait * 2 / 3, everything_but_the_stalled).await,
        "{} of {} handled {:?} after the stall (ack wait {ack_wait:?}; {held} held)",
        seen.lock().map_or(0, |s| s.len()),
        EVENTS - SLOTS,
        stalled.elapsed()
    );
    assert_eq!(started.load(Ordering::SeqCst), FAST + SLOTS);

    gate.add_permits(SLOTS);
    assert!(
        eventually(Duration::from_secs(10), || seen
            .lock()
            .map_or(0, |s| s.len())
            == EVENTS)
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().map_err(|e| e.to_string())?.clone();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(started.load(Ordering::SeqCst), FAST + SLOTS);
    stop.cancel();
    stop_other.cancel();
    task.await??;
    other.await??;
    Ok(())
}
