//! The transactional outbox against a real nats-server: state and events
//! commit together, and each event is published exactly once whatever
//! stops between the steps (see `switchboard::events::outbox` for the
//! crash table these tests walk through).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use switchboard::events::{Event, Publisher, StreamSpec, envelope, outbox};
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

async fn outbox_entries(f: &Fixture) -> Result<usize, Box<dyn std::error::Error>> {
    let kv = f.js.get_key_value("orders").await?;
    let mut keys = kv.keys().await?;
    let mut count = 0;
    while let Some(key) = futures::StreamExt::next(&mut keys).await {
        if key?.starts_with("outbox.") {
            count += 1;
        }
    }
    Ok(count)
}

/// Waits until every outbox entry was published and cleared.
async fn outbox_cleared(f: &Fixture, within: Duration) -> TestResult {
    let deadline = Instant::now() + within;
    while outbox_entries(f).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(outbox_entries(f).await?, 0, "outbox entries left");
    Ok(())
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
    assert_eq!(
        outbox_entries(&f).await?,
        1,
        "the event waits in the outbox"
    );
    // Any instance's relay finishes it.
    let (stop, task) = start_relay(&f);
    settle_at(&f, 1, Duration::from_secs(10)).await?;
    let message = f.js.get_stream("ORDERS").await?.get_raw_message(1).await?;
    assert_eq!(message.subject.as_str(), "events.orders.created");
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
        envelope::header(headers, envelope::OUTBOX_SUBJECT),
        None,
        "relay bookkeeping stays in the outbox"
    );
    assert_eq!(envelope::header(headers, "Nats-Batch-Id"), None);
    stop.cancel();
    task.await?;
    assert_eq!(
        outbox_entries(&f).await?,
        0,
        "published entries are cleared"
    );
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
    assert_eq!(outbox_entries(&f).await?, 1);
    // The next relay publishes it again; JetStream drops the copy.
    let (stop, task) = start_relay(&f);
    outbox_cleared(&f, Duration::from_secs(10)).await?;
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
    outbox_cleared(&f, outbox::ACK_WAIT + Duration::from_secs(5)).await?;
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
    assert_eq!(outbox_entries(&f).await?, 1, "only the first order's entry");
    // A stale revision conflicts too; the current one commits.
    let current = f.orders.get("o-3").await?.ok_or("o-3 missing")?;
    let cancelled = Order {
        status: "cancelled".into(),
        ..current.value.clone()
    };
    let mut stale = f.orders.transaction();
    stale.update(&f.orders, "o-3", &cancelled, current.revision + 7)?;
    assert!(matches!(
        stale.commit().await,
        Err(StateError::Conflict { .. })
    ));
    let mut fresh = f.orders.transaction();
    fresh.update(&f.orders, "o-3", &cancelled, current.revision)?;
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
    assert_eq!(
        outbox_entries(&f).await?,
        64,
        "63 new events and the first order's"
    );
    Ok(())
}
