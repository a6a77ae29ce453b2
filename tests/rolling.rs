//! Rolling deploys drop nothing: service instances restarted one after the
//! other (SIGTERM, start again) in the middle of traffic, and not one call
//! fails, times out or happens twice; a consumer restarted while events
//! flow acknowledges every event once, none waiting for its ack wait.
//!
//! What makes it hold: an instance drains (stops taking requests, answers
//! what it accepted) and its subscription is removed only after the server
//! confirmed the UNSUB (`tests/drain.rs`, `vendor/async-nats/PATCH.md`), so a
//! request routed to it while it leaves is still answered; a consumer
//! handles and acks every event it pulled before it stops, and asks only
//! for as many as it has free slots.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use switchboard::client::Client;
use switchboard::discovery::{self, Target};
use switchboard::testing::free_port;

use common::{Instance, admin};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Callers in flight, as in the issue.
const CALLERS: usize = 32;
/// Restarts, alternating between the two `orders` instances.
const RESTARTS: usize = 10;

/// Waits until `service` has `count` instances answering discovery; when
/// they do not, the error carries the end of the instances' logs (an
/// instance that exited at start says why there).
async fn instances_logged(
    client: &Client,
    service: &str,
    count: usize,
    logs: &[std::path::PathBuf],
) -> TestResult {
    let Err(error) = instances(client, service, count).await else {
        return Ok(());
    };
    let mut message = error.to_string();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        message.push_str(&format!("\n--- {} (last lines)\n{tail}", log.display()));
    }
    Err(message.into())
}

/// Waits until the one `notifications` instance holds every partition of
/// its order consumer.
async fn consuming(client: &Client) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held =
            common::partitions_by_pid(client, "notifications", "notifications-orders").await?;
        if held.len() == 1 && held.values().all(|p| p.len() == 8) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("notifications never took its partitions: {held:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `service` has `count` instances answering discovery.
async fn instances(client: &Client, service: &str, count: usize) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = discovery::ping(
            client.nats(),
            Target::service(service),
            Duration::from_millis(200),
        )
        .await?
        .len();
        if found == count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{service}: {found} instances, wanted {count}").into());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restarts_of_orders_and_notifications_drop_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    // `up` runs the rest; the instances under test are the test's own.
    let _system = common::start_system_with(
        dir.path(),
        port,
        free_port()?,
        &[],
        &["--services", "users,inventory"],
    );
    let client = admin(dir.path()).await?;
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let mut orders = [
        Instance::start("orders", port, &log("orders-0"))?,
        Instance::start("orders", port, &log("orders-1"))?,
    ];
    let mut notifications = Instance::start("notifications", port, &log("notifications"))?;
    let order_logs = [log("orders-0"), log("orders-1")];
    instances_logged(&client, "orders", 2, &order_logs).await?;
    instances_logged(&client, "notifications", 1, &[log("notifications")]).await?;

    // A user per caller: one user's notifications are one growing record,
    // and a single user placing every order would measure that instead.
    let mut users = Vec::new();
    for n in 0..CALLERS {
        let user: Value = client
            .call(
                "users.create",
                &json!({"name": format!("Roll {n}"), "email": format!("roll{n}@example.com")}),
            )
            .await?;
        users.push(user["id"].as_str().ok_or("no user id")?.to_owned());
    }
    const STOCK: u64 = 1_000_000;
    let _: Value = client
        .call(
            "inventory.restock",
            &json!({"sku": "roller", "quantity": STOCK}),
        )
        .await?;

    // Non-idempotent creates, 32 in flight, for as long as the restarts take.
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = users
        .iter()
        .map(|user_id| {
            let (client, stop, user_id) = (client.clone(), stop.clone(), user_id.clone());
            tokio::spawn(async move {
                let (mut ids, mut failures) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let order: Result<Value, _> = client
                        .call(
                            "orders.create",
                            &json!({"user_id": user_id, "items": [{"sku": "roller", "quantity": 1}]}),
                        )
                        .await;
                    match order {
                        Ok(order) => ids.push(order["id"].as_str().unwrap_or_default().to_owned()),
                        Err(error) => failures.push(error.to_string()),
                    }
                }
                (ids, failures)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..RESTARTS {
        let which = round % 2;
        orders[which].stop()?;
        orders[which] = Instance::start("orders", port, &log(&format!("orders-{which}")))?;
        instances_logged(&client, "orders", 2, &order_logs).await?;
        // The consumer too, every other round, while events flow.
        if round % 2 == 1 {
            notifications.stop()?;
            notifications = Instance::start("notifications", port, &log("notifications"))?;
            instances_logged(&client, "notifications", 1, &[log("notifications")]).await?;
            // Ready as a rolling deploy means it: answering discovery is not
            // yet consuming — its keyed consumer claims partitions after
            // hearing from the others (~1.5 s). Stopped before, it could
            // only hand back what it had pulled (redeliveries).
            consuming(&client).await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ids, mut failures) = (Vec::new(), Vec::new());
    for caller in callers {
        let (placed, failed) = caller.await?;
        ids.extend(placed);
        failures.extend(failed);
    }
    let calls = ids.len() + failures.len();
    println!(
        "rolling deploy: {calls} calls, {} failed, {RESTARTS} orders restarts",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ids.len() > 100, "traffic flowed: {} orders", ids.len());
    let placed = ids.len() as u64;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, placed, "an order id answered twice");

    // Each call placed one order: one event, one reserved unit.
    let js = jetstream::new(client.nats().clone());
    let stock: Value = client
        .call("inventory.stock", &json!({"sku": "roller"}))
        .await?;
    assert_eq!(stock["available"].as_u64(), Some(STOCK - placed), "{stock}");
    let deadline = Instant::now() + Duration::from_secs(20);
    // notifications-orders is keyed: one durable per partition.
    let (events, partitions) = loop {
        let stream = js.get_stream("ORDERS").await?;
        let mut subjects = stream.info_with_subjects("events.orders.created.*").await?;
        let mut events = 0u64;
        while let Some(entry) = subjects.next().await {
            events += entry?.1 as u64;
        }
        let mut partitions = Vec::new();
        for p in 0..8 {
            let name = switchboard::events::partition::partition_durable("notifications-orders", p);
            partitions.push(stream.consumer_info(name).await?.clone());
        }
        let settled = events >= placed
            && partitions
                .iter()
                .all(|c| c.num_pending == 0 && c.num_ack_pending == 0);
        if settled || Instant::now() > deadline {
            break (events, partitions);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let left: Vec<_> = partitions
        .iter()
        .filter(|c| c.num_pending > 0 || c.num_ack_pending > 0)
        .collect();
    // Deliveries, redeliveries included: one per event when none was
    // delivered twice.
    let deliveries: u64 = partitions
        .iter()
        .map(|c| c.delivered.consumer_sequence)
        .sum();
    if !left.is_empty() || deliveries != placed {
        let path = log("notifications");
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("notifications log, last lines first:\n{}", tail.join("\n"));
    }
    assert_eq!(events, placed, "one created event per order");
    // Settled well within the consumer's ack wait, and nothing was
    // delivered twice: every event was acked by the instance it went to.
    assert!(
        left.is_empty(),
        "notifications-orders left events behind: {left:?}"
    );
    assert_eq!(deliveries, placed, "redeliveries: {partitions:?}");
    for instance in &mut orders {
        instance.stop()?;
    }
    notifications.stop()?;
    Ok(())
}
