//! A full store (issue 27): a nats-server with a small `max_file_store`
//! is filled to the brim, then space is freed.
//!
//! While full: a transaction (one key, and several at once) fails whole
//! with `StateError::Full` — a 503 `storage_full` for callers — and writes
//! nothing; a publish fails with `EventError::StorageFull`; the outbox relay
//! keeps the events it cannot publish; a consumer whose handler cannot write
//! waits in place without burning its attempts (max 2 here). Once space
//! returns: every pending event is published exactly once, every consumed
//! event handled, nothing dead-lettered, and writes succeed again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::events::{
    self, ConsumerSpec, Event, EventError, Publisher, ReceivedEvent, StreamSpec,
};
use switchboard::outbox;
use switchboard::state::{StateError, StateStore};
use switchboard::testing::{TestServer, TestServerConfig};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: String,
}

async fn messages(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check().await
}

/// Commits order `id` with its `created` event.
async fn place(store: &StateStore<Order>, events: &Publisher, id: &str) -> Result<(), StateError> {
    let event = Event::new(Order { id: id.to_owned() })
        .id(format!("{id}-created"))
        .subject(id);
    let mut tx = store.transaction();
    tx.create(store, id, &Order { id: id.to_owned() })?
        .publish(events, "events.orders.created", &event)?;
    tx.commit().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_store_fails_writes_whole_and_loses_nothing_once_space_returns() -> TestResult {
    let server = TestServer::with_config(
        TestServerConfig::default().config("jetstream { max_file_store: 8MB }"),
    )
    .await?;
    let js = jetstream::new(server.client().await?);
    StreamSpec::new("ORDERS", ["events.orders.>"])
        .ensure(&js)
        .await?;
    StreamSpec::new("TASKS", ["events.tasks.>"])
        .ensure(&js)
        .await?;
    let orders: StateStore<Order> = StateStore::open(&js, "orders", 1).await?;
    let notes: StateStore<String> = StateStore::open(&js, "notes", 1).await?;
    let publisher = Publisher::new(js.clone(), "orders");

    // Before: orders committed while no relay runs (their events wait in
    // the outbox), and tasks for a consumer whose handlers wait for a gate.
    for n in 0..20 {
        place(&orders, &publisher, &format!("o-{n}")).await?;
    }
    let tasks = Publisher::new(js.clone(), "tasks");
    for n in 0..10 {
        tasks
            .publish(
                "events.tasks.due",
                &Event::new(Order {
                    id: format!("t-{n}"),
                })
                .id(format!("t-{n}")),
            )
            .await?;
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    // The most deliveries any task had: a wait in place is not one.
    let redelivered = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(events::consumer::run(
        js.clone(),
        ConsumerSpec::new("TASKS", "tasks-notes").max_deliver(2),
        {
            let (gate, calls, notes, redelivered) = (
                gate.clone(),
                calls.clone(),
                notes.clone(),
                redelivered.clone(),
            );
            move |event: ReceivedEvent<Order>| {
                let (gate, calls, notes, redelivered) = (
                    gate.clone(),
                    calls.clone(),
                    notes.clone(),
                    redelivered.clone(),
                );
                async move {
                    drop(gate.acquire().await);
                    calls.fetch_add(1, Ordering::Relaxed);
                    let delivered = event.delivery.as_ref().map_or(0, |d| d.delivered);
                    redelivered
                        .fetch_max((delivered as usize).saturating_sub(1), Ordering::Relaxed);
                    notes
                        .modify(&event.data.id, |_| Ok("noted".to_owned()))
                        .await
                        .map(|_| ())
                        .map_err(switchboard::events::HandlerError::from)
                }
            }
        },
        stop.clone().cancelled_owned(),
    ));

    // Fill the store to the brim.
    StreamSpec::new("FILL", ["fill.>"]).ensure(&js).await?;
    let chunk = bytes::Bytes::from(vec![b'x'; 16 * 1024]);
    let mut filled = 0usize;
    let full_reply = loop {
        match js.publish("fill.x", chunk.clone()).await?.await {
            Ok(_) => filled += chunk.len(),
            Err(error) => break error.to_string(),
        }
        assert!(filled < 64 * 1024 * 1024, "the store never filled");
    };
    assert!(
        full_reply.contains("insufficient resources"),
        "{full_reply}"
    );

    // A transaction fails whole, with a kind and a 503 that say so.
    match place(&orders, &publisher, "o-full").await {
        Err(error @ StateError::Full { .. }) => {
            let answer = ServiceError::from(error);
            assert_eq!(answer.code, 503);
            assert!(answer.is_storage_full(), "{answer:?}");
        }
        other => return Err(format!("a commit on a full store: {other:?}").into()),
    }
    assert!(
        orders.get("o-full").await?.is_none(),
        "nothing half-written"
    );
    let mut two_keys = orders.transaction();
    two_keys
        .create(&orders, "o-a", &Order { id: "o-a".into() })?
        .create(&orders, "o-b", &Order { id: "o-b".into() })?;
    assert!(
        matches!(two_keys.commit().await, Err(StateError::Full { .. })),
        "an atomic batch on a full store"
    );
    assert!(orders.get("o-a").await?.is_none() && orders.get("o-b").await?.is_none());
    match publisher
        .publish(
            "events.orders.created",
            &Event::new(Order { id: "x".into() }),
        )
        .await
    {
        Err(EventError::StorageFull { .. }) => {}
        other => return Err(format!("a publish on a full store: {other:?}").into()),
    }

    // The relay cannot publish: the events stay in the outbox. The
    // consumer's handlers cannot write: they wait, uncounted.
    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn(outbox::relay(
        js.clone(),
        "orders".into(),
        relay_stop.clone().cancelled_owned(),
    ));
    gate.add_permits(1_000);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(messages(&js, "ORDERS").await, 0, "published while full");
    let tried = calls.load(Ordering::Relaxed);
    assert!(
        tried > 10,
        "the handlers kept trying: {tried} calls for 10 tasks"
    );
    assert_eq!(messages(&js, "DLQ").await, 0, "dead-lettered while full");
    assert_eq!(
        redelivered.load(Ordering::Relaxed),
        0,
        "a task was redelivered: its attempts were counted"
    );

    // Space returns.
    js.delete_stream("FILL").await?;
    assert!(
        eventually(Duration::from_secs(20), async || messages(&js, "ORDERS")
            .await
            == 20)
        .await,
        "the outbox's events were not all published: {}",
        messages(&js, "ORDERS").await
    );
    let mut all_noted = false;
    for _ in 0..200 {
        let mut noted = 0;
        for n in 0..10 {
            noted += usize::from(notes.get(&format!("t-{n}")).await?.is_some());
        }
        if noted == 10 {
            all_noted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(all_noted, "not every task was handled once space returned");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        messages(&js, "ORDERS").await,
        20,
        "each event published once"
    );
    assert_eq!(messages(&js, "DLQ").await, 0, "nothing dead-lettered");
    place(&orders, &publisher, "o-after").await?;
    println!(
        "storage: filled {} KiB; {tried} handler calls for 10 tasks while full, none counted; 20 outbox events published once space returned",
        filled / 1024
    );
    stop.cancel();
    relay_stop.cancel();
    consumer.await??;
    relay.await??;
    Ok(())
}
