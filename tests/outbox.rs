//! The transactional outbox against a real nats-server: state and events
//! commit together, and each event is published exactly once whatever
//! stops between the steps (see `switchboard::outbox` for the
//! crash table these tests walk through).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use switchboard::events::{self, Event, Publisher, StreamSpec, envelope};
use switchboard::outbox;
use switchboard::state::{StateError, StateStore};
use switchboard::testing::TestServer;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: String,
    status: String,
}

struct Fixture {
    _server: TestServer,
    js: jetstream::Context,
    orders: StateStore<Order>,
    events: Publisher,
}

async fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
    let server = TestServer::start().await?;
    let js = jetstream::new(server.client().await?);
    StreamSpec::new("ORDERS", ["events.orders.>"])
        .ensure(&js)
        .await?;
    let orders = StateStore::open(&js, "orders", 1).await?;
    Ok(Fixture {
        _server: server,
        events: Publisher::new(js.clone(), "orders"),
        js,
        orders,
    })
}

fn created(id: &str) -> Event<Order> {
    Event::new(Order {
        id: id.to_owned(),
        status: "confirmed".into(),
    })
    .id(format!("{id}-created"))
    .subject(id)
}

/// Commits order `id` and its `created` event in one transaction.
async fn place(f: &Fixture, id: &str) -> Result<(), StateError> {
    let event = created(id);
    let mut tx = f.orders.transaction();
    tx.create(&f.orders, id, &event_data(&event))?.publish(
        &f.events,
        "events.orders.created",
        &event,
    )?;
    tx.commit().await
}

fn event_data(event: &Event<Order>) -> Order {
    Order {
        id: event.event_id().trim_end_matches("-created").to_owned(),
        status: "confirmed".into(),
    }
}

/// A relay that runs until the token is cancelled (a clean stop) or its
/// task is aborted (a crash: whatever it holds stays unacknowledged).
fn start_relay(f: &Fixture) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let js = f.js.clone();
    let until = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        if let Err(error) = outbox::relay(js, "orders".into(), until).await {
            panic!("relay failed: {error}");
        }
    });
    (stop, task)
}

async fn stored_events(f: &Fixture) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(f.js
        .get_stream("ORDERS")
        .await?
        .info()
        .await?
        .state
        .messages)
}

/// Waits until the stream holds `expected` events and then stays there
/// for a moment (a late duplicate would show).
async fn settle_at(f: &Fixture, expected: u64, within: Duration) -> TestResult {
    let deadline = Instant::now() + within;
    while stored_events(f).await? < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored_events(f).await?, expected, "events in the stream");
    Ok(())
}

/// The outbox header of a key's latest write, if any.
async fn riding(f: &Fixture, key: &str) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let message =
        f.js.get_stream("KV_orders")
            .await?
            .direct_get_last_for_subject(format!("$KV.orders.{key}"))
            .await?;
    Ok(envelope::header(Some(&message.headers), envelope::OUTBOX))
}

/// Waits until the relay has acknowledged every write of the bucket (its
/// ack floor is the bucket's last sequence).
async fn relayed(f: &Fixture, within: Duration) -> TestResult {
    let deadline = Instant::now() + within;
    loop {
        let mut stream = f.js.get_stream("KV_orders").await?;
        let last = stream.info().await?.state.last_sequence;
        let floor = stream
            .consumer_info(outbox::RELAY_DURABLE)
            .await
            .map(|i| i.ack_floor.stream_sequence)
            .unwrap_or(0);
        if floor >= last {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("relay at {floor} of {last}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn crash_between_commit_and_publish_publishes_once_when_a_relay_runs() -> TestResult {
    let f = fixture().await?;
    // The process "dies" right after the commit: no relay ran.
    place(&f, "o-1").await?;
    assert_eq!(
        f.orders.get("o-1").await?.map(|v| v.value.status),
        Some("confirmed".into())
    );
    assert_eq!(stored_events(&f).await?, 0);
    let waiting = riding(&f, "o-1").await?.unwrap_or_default();
    assert!(
        waiting.contains("o-1-created"),
        "the event rides on the write: {waiting}"
    );
    // Any instance's relay finishes it.
    let (stop, task) = start_relay(&f);
    settle_at(&f, 1, Duration::from_secs(10)).await?;
    let message = f.js.get_stream("ORDERS").await?.get_raw_message(1).await?;
    assert_eq!(
        events::partition::shard_of_subject(&message.subject)
            .map(|_| message.subject.rsplit_once('.').map(|(s, _)| s)),
        Some(Some("events.orders.created")),
        "published to the declared subject with its shard: {}",
        message.subject
    );
    let headers = Some(&message.headers);
    assert_eq!(
        envelope::header(headers, envelope::CE_ID).as_deref(),
        Some("o-1-created")
    );
    assert_eq!(
        envelope::header(headers, envelope::NATS_MSG_ID).as_deref(),
        Some("o-1-created")
    );
    assert_eq!(
        envelope::header(headers, envelope::OUTBOX),
        None,
        "outbox bookkeeping stays in the bucket"
    );
    assert_eq!(envelope::header(headers, "Nats-Batch-Id"), None);
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn crash_between_publish_and_ack_publishes_once() -> TestResult {
    let f = fixture().await?;
    place(&f, "o-2").await?;
    // A relay published the event, then died before clearing and acking
    // its entry: the stream has it, the outbox still has it too.
    f.events
        .publish("events.orders.created", &created("o-2"))
        .await?;
    assert_eq!(stored_events(&f).await?, 1);
    // The next relay publishes it again; JetStream drops the copy.
    let (stop, task) = start_relay(&f);
    relayed(&f, Duration::from_secs(10)).await?;
    settle_at(&f, 1, Duration::from_secs(1)).await?;
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn relay_killed_mid_round_and_a_second_relay_publish_each_event_once() -> TestResult {
    let f = fixture().await?;
    const ORDERS: u64 = 300;
    for i in 0..ORDERS {
        place(&f, &format!("o-{i}")).await?;
    }
    // Two relays at once (two instances), one of them killed mid-way: what
    // it held unacknowledged is redelivered after the ack wait.
    let (_stop_a, crashing) = start_relay(&f);
    let (stop_b, task_b) = start_relay(&f);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_events(&f).await? == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    crashing.abort();
    settle_at(&f, ORDERS, outbox::ACK_WAIT + Duration::from_secs(15)).await?;
    relayed(&f, outbox::ACK_WAIT + Duration::from_secs(5)).await?;
    assert_eq!(stored_events(&f).await?, ORDERS, "each event exactly once");
    stop_b.cancel();
    task_b.await?;
    Ok(())
}

#[tokio::test]
async fn a_conflicting_transaction_writes_neither_state_nor_events() -> TestResult {
    let f = fixture().await?;
    place(&f, "o-3").await?;
    // The same order again: the create conflicts, and its event must not
    // be stored either.
    let event = Event::new(Order {
        id: "o-3".into(),
        status: "other".into(),
    })
    .id("o-3-other");
    let mut tx = f.orders.transaction();
    tx.create(&f.orders, "o-3", &event_data(&created("o-3")))?
        .publish(&f.events, "events.orders.created", &event)?;
    assert!(matches!(
        tx.commit().await,
        Err(StateError::Conflict { .. })
    ));
    let waiting = riding(&f, "o-3").await?.unwrap_or_default();
    assert!(
        !waiting.contains("o-3-other"),
        "the refused event is not kept: {waiting}"
    );
    // A stale read conflicts too; the current one commits.
    let stale = f.orders.get("o-3").await?.ok_or("o-3 missing")?;
    let noted = Order {
        status: "noted".into(),
        ..stale.value.clone()
    };
    f.orders.update("o-3", &noted, &stale).await?;
    let cancelled = Order {
        status: "cancelled".into(),
        ..stale.value.clone()
    };
    let mut late = f.orders.transaction();
    late.update(&f.orders, "o-3", &cancelled, &stale)?;
    assert!(matches!(
        late.commit().await,
        Err(StateError::Conflict { .. })
    ));
    let current = f.orders.get("o-3").await?.ok_or("o-3 missing")?;
    let mut fresh = f.orders.transaction();
    fresh.update(&f.orders, "o-3", &cancelled, &current)?;
    fresh.commit().await?;
    assert_eq!(
        f.orders.get("o-3").await?.map(|v| v.value.status),
        Some("cancelled".into())
    );
    Ok(())
}

#[tokio::test]
async fn views_share_a_bucket_and_change_together() -> TestResult {
    let f = fixture().await?;
    let notes: StateStore<String> = f.orders.view("note");
    let mut tx = f.orders.transaction();
    tx.create(&f.orders, "o-4", &event_data(&created("o-4")))?
        .create(&notes, "o-4", &"gift wrap".to_owned())?;
    tx.commit().await?;
    assert_eq!(
        notes.get("o-4").await?.map(|v| v.value),
        Some("gift wrap".into())
    );
    // A store of another bucket cannot join the transaction.
    let other: StateStore<String> = StateStore::open(&f.js, "other", 1).await?;
    let mut tx = f.orders.transaction();
    assert!(matches!(
        tx.create(&other, "k", &"v".to_owned()),
        Err(StateError::OtherBucket { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn transactions_committed_together_keep_their_own_verdicts() -> TestResult {
    let f = fixture().await?;
    place(&f, "o-taken").await?;
    // Many at once, so the bucket's committer groups them into shared
    // batches; one of them conflicts (its key exists) and must fail alone.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let id = if i == 17 {
            "o-taken".to_owned()
        } else {
            format!("o-new-{i}")
        };
        let (orders, events) = (f.orders.clone(), f.events.clone());
        tasks.push(tokio::spawn(async move {
            let event = created(&id);
            let mut tx = orders.transaction();
            tx.create(&orders, &id, &event_data(&event))?.publish(
                &events,
                "events.orders.created",
                &event,
            )?;
            tx.commit().await.map(|()| id)
        }));
    }
    let mut committed = 0;
    for task in tasks {
        match task.await? {
            Ok(id) => {
                assert_ne!(id, "o-taken");
                committed += 1;
            }
            Err(StateError::Conflict { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    assert_eq!(committed, 63, "every transaction but the conflicting one");
    let (stop, task) = start_relay(&f);
    settle_at(&f, 64, Duration::from_secs(10)).await?;
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn an_overwrite_before_the_relay_carries_the_events_forward() -> TestResult {
    let f = fixture().await?;
    // Created and cancelled before any relay ran: the bucket keeps one
    // revision per key, so the created write's message is gone — its event
    // must ride on the cancel's.
    place(&f, "o-5").await?;
    let current = f.orders.get("o-5").await?.ok_or("o-5 missing")?;
    let cancelled = Order {
        status: "cancelled".into(),
        ..current.value.clone()
    };
    let event = Event::new(cancelled.clone())
        .id("o-5-cancelled")
        .subject("o-5");
    let mut tx = f.orders.transaction();
    tx.update(&f.orders, "o-5", &cancelled, &current)?.publish(
        &f.events,
        "events.orders.cancelled",
        &event,
    )?;
    tx.commit().await?;
    let waiting = riding(&f, "o-5").await?.unwrap_or_default();
    assert!(
        waiting.contains("o-5-created") && waiting.contains("o-5-cancelled"),
        "both ride on the last write: {waiting}"
    );
    let (stop, task) = start_relay(&f);
    settle_at(&f, 2, Duration::from_secs(10)).await?;
    relayed(&f, Duration::from_secs(10)).await?;
    stop.cancel();
    task.await?;
    // Published events are not carried any further.
    let current = f.orders.get("o-5").await?.ok_or("o-5 missing")?;
    let noted = Order {
        status: "archived".into(),
        ..current.value.clone()
    };
    f.orders.update("o-5", &noted, &current).await?;
    assert_eq!(riding(&f, "o-5").await?, None, "nothing left to publish");
    Ok(())
}

#[tokio::test]
async fn a_relay_consumer_made_by_an_earlier_version_is_taken_over() -> TestResult {
    let f = fixture().await?;
    // Earlier versions received whole messages; the relay now asks for
    // headers only, and must update the durable in place rather than fail
    // (a relay that cannot start publishes nothing).
    let stream = f.js.get_stream("KV_orders").await?;
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(outbox::RELAY_DURABLE.to_owned()),
            filter_subject: "$KV.orders.>".into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: outbox::ACK_WAIT,
            max_ack_pending: 1024,
            ..Default::default()
        })
        .await?;
    place(&f, "o-old").await?;
    let (stop, task) = start_relay(&f);
    settle_at(&f, 1, Duration::from_secs(10)).await?;
    let stream = f.js.get_stream("KV_orders").await?;
    assert!(
        stream
            .consumer_info(outbox::RELAY_DURABLE)
            .await?
            .config
            .headers_only
    );
    stop.cancel();
    task.await?;
    Ok(())
}

/// Instances of a service started together (a deploy, `tests/rolling.rs`)
/// all open the bucket on a fresh server: whoever creates it first, the
/// others must open it — not fail because its stream was already prepared
/// for transactions in between (a config that no longer matches theirs).
#[tokio::test]
async fn instances_opening_a_new_bucket_at_once_all_start() -> TestResult {
    let server = TestServer::start().await?;
    // A connection each, as separate processes have: one connection's
    // requests would reach the server in order and never interleave.
    let mut instances = Vec::new();
    for _ in 0..16 {
        instances.push(jetstream::new(server.client().await?));
    }
    for round in 0..50 {
        let bucket = format!("together{round}");
        let opened = futures::future::join_all(instances.iter().enumerate().map(|(n, js)| {
            let bucket = bucket.clone();
            async move {
                // Spread over the few milliseconds a create and a prepare take.
                tokio::time::sleep(Duration::from_micros(
                    ((n * 7919 + round * 104_729) % 40) as u64 * 100,
                ))
                .await;
                StateStore::<Order>::open(js, &bucket, 1).await
            }
        }))
        .await;
        let failed: Vec<String> = opened
            .iter()
            .filter_map(|o| o.as_ref().err().map(|e| e.to_string()))
            .collect();
        assert!(failed.is_empty(), "round {round}: {failed:?}");
    }
    Ok(())
}

/// The relay stores events in commit order across subjects: an order's
/// `created` and its `shipped` (another subject, carried forward onto the
/// same write here) are never swapped, though the relay groups events into
/// batches. (With a lane per subject this can swap them, but only when two
/// lanes' batches race — this test did not catch that in two runs: it
/// guards the order, it does not prove the race.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_stores_events_in_commit_order_across_subjects() -> TestResult {
    let f = fixture().await?;
    // Committed before the relay starts, so its first rounds are full.
    const ORDERS: usize = 100;
    let mut committed = Vec::new();
    for n in 0..ORDERS {
        let id = format!("seq{n}");
        place(&f, &id).await?;
        committed.push(format!("{id}-created"));
        let shipped = Event::new(Order {
            id: id.clone(),
            status: "shipped".into(),
        })
        .id(format!("{id}-shipped"))
        .subject(id.as_str());
        let current = f.orders.get(&id).await?.ok_or("placed order missing")?;
        let mut tx = f.orders.transaction();
        tx.update(&f.orders, &id, &event_data(&shipped), &current)?
            .publish(&f.events, "events.orders.shipped", &shipped)?;
        tx.commit().await?;
        committed.push(format!("{id}-shipped"));
    }
    let (stop, relay) = start_relay(&f);
    settle_at(&f, 2 * ORDERS as u64, Duration::from_secs(20)).await?;
    let stream = f.js.get_stream("ORDERS").await?;
    let mut stored = Vec::new();
    for sequence in 1..=2 * ORDERS as u64 {
        let message = stream.get_raw_message(sequence).await?;
        stored.push(envelope::header(Some(&message.headers), envelope::CE_ID).unwrap_or_default());
    }
    assert_eq!(stored, committed);
    stop.cancel();
    relay.await?;
    Ok(())
}

/// A key rewritten while no relay publishes carries every unpublished event
/// forward; past `MAX_CARRIED_BYTES` the write is refused whole
/// (`OutboxBehind`, a 503) instead of growing toward the server's payload
/// limit — and once a relay has published them, the key takes writes again
/// and every event is in the stream once.
#[tokio::test]
async fn a_key_whose_events_wait_too_long_refuses_writes_until_the_relay_catches_up() -> TestResult
{
    let f = fixture().await?;
    let mut written = 0u64;
    let refused = loop {
        let current = f.orders.get("hot").await?;
        let event = created(&format!("o-{written}"));
        let mut tx = f.orders.transaction();
        tx.write(&f.orders, "hot", &event_data(&event), current.as_ref())?
            .publish(&f.events, "events.orders.created", &event)?;
        match tx.commit().await {
            Ok(()) => written += 1,
            Err(error) => break error,
        }
        assert!(written < 10_000, "never refused");
    };
    let StateError::OutboxBehind { events, .. } = refused else {
        return Err(format!("refused with {refused}").into());
    };
    assert_eq!(events as u64, written + 1, "every unpublished event rides");
    let carried = riding(&f, "hot").await?.unwrap_or_default().len();
    assert!(
        carried <= switchboard::state::MAX_CARRIED_BYTES,
        "the last write carried {carried} bytes"
    );
    assert_eq!(
        stored_events(&f).await?,
        0,
        "nothing published without a relay"
    );

    let (stop, task) = start_relay(&f);
    relayed(&f, Duration::from_secs(10)).await?;
    let current = f.orders.get("hot").await?;
    let event = created(&format!("o-{written}"));
    let mut tx = f.orders.transaction();
    tx.write(&f.orders, "hot", &event_data(&event), current.as_ref())?
        .publish(&f.events, "events.orders.created", &event)?;
    tx.commit().await?;
    settle_at(&f, written + 1, Duration::from_secs(10)).await?;
    stop.cancel();
    task.await?;
    Ok(())
}
