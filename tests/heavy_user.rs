//! One busy user (issue 27): a user whose orders produce many thousands
//! of events still gets every notification, listed page by page, and no
//! write grows with their history.
//!
//! The events are published straight into `ORDERS` as `orders` publishes
//! them (created and cancelled per order, keyed by order), to the real
//! `notifications` service `switchboard up` runs (alone with `users`: no
//! `inventory` to react to orders that were never placed). Then: the list's
//! `total` and every page, each event's notification exactly once, each
//! order's `created` listed before its `cancelled` (the backlog is what
//! once let a waiting event be overtaken), no message in the bucket's
//! stream above 64 KB, and an empty DLQ.
//!
//! `make test` runs 2,600 orders (5,200 events: more than one value per
//! user could hold, ~5,000); `make heavy` the 20,000 events
//! (`SWITCHBOARD_HEAVY_ORDERS=10000`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use contracts::orders::{Order, OrderStatus};
use futures::StreamExt;
use serde_json::{Value, json};
use switchboard::client::{CallOptions, Client};
use switchboard::events::{Event, Publisher};

use common::{admin, start_system_on_free_ports};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const USER: &str = "u-heavy";
const LARGEST_WRITE: usize = 64 * 1024;

fn orders() -> usize {
    std::env::var("SWITCHBOARD_HEAVY_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_600)
}

async fn list(client: &Client, cursor: Option<&str>) -> Result<Value, Box<dyn std::error::Error>> {
    let mut request = json!({"user_id": USER, "limit": 200});
    if let Some(cursor) = cursor {
        request["cursor"] = json!(cursor);
    }
    let options = CallOptions::default().timeout(Duration::from_secs(5));
    Ok(client
        .call_with("notifications.list", &request, options)
        .await?)
}

/// The largest message payload in `stream` now (every key's value).
async fn largest_message(
    js: &jetstream::Context,
    stream: &str,
) -> Result<(usize, u64), Box<dyn std::error::Error>> {
    let stream = js.get_stream(stream).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            ..Default::default()
        })
        .await?;
    let total = stream.cached_info().state.messages;
    let mut messages = consumer.messages().await?;
    let (mut largest, mut seen) = (0, 0);
    while seen < total {
        let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await?
        else {
            break;
        };
        largest = largest.max(message?.payload.len());
        seen += 1;
    }
    Ok((largest, seen))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_with_thousands_of_events_gets_every_notification_listed_once() -> TestResult {
    let orders = orders();
    let dir = tempfile::tempdir()?;
    let _system =
        start_system_on_free_ports(dir.path(), &[], &["--services", "users,notifications"]);
    let client = admin(dir.path()).await?;
    let js = jetstream::new(client.nats().clone());

    // The stream `orders` would declare, and its events as it publishes
    // them: created, then cancelled, keyed by the order.
    contracts::orders::stream().ensure(&js).await?;
    let published = Instant::now();
    let publisher = Publisher::new(js.clone(), "orders");
    let mut batch = publisher.batch(512);
    for n in 0..orders {
        let id = format!("o-heavy-{n}");
        for (status, kind) in [
            (OrderStatus::Confirmed, "created"),
            (OrderStatus::Cancelled, "cancelled"),
        ] {
            let order = Order {
                id: id.clone(),
                user_id: USER.to_owned(),
                items: vec![contracts::Item {
                    sku: "widget".to_owned(),
                    quantity: 1,
                }],
                status,
                created_at: switchboard::events::now_rfc3339(),
            };
            let event = Event::new(order)
                .id(format!("{id}-{kind}"))
                .subject(id.clone());
            batch
                .publish(&format!("events.orders.{kind}"), &event)
                .await?;
        }
    }
    let failed: Vec<String> = batch
        .finish()
        .await
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "not published: {:?}",
        &failed[..failed.len().min(3)]
    );
    let published = published.elapsed();

    // Handled: the list's total reaches every event.
    let events = orders * 2;
    let handling = Instant::now();
    let mut total = 0;
    while handling.elapsed() < Duration::from_secs(600) {
        total = list(&client, None).await?["total"].as_u64().unwrap_or(0);
        if total as usize >= events {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let handled = handling.elapsed();
    assert_eq!(total as usize, events, "notifications recorded");

    // Every page, newest first.
    let mut listed: Vec<String> = Vec::new();
    let (mut pages, mut cursor) = (0, None::<String>);
    loop {
        let page = list(&client, cursor.as_deref()).await?;
        pages += 1;
        listed.extend(
            page["notifications"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["event_id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &listed {
        *times.entry(id.as_str()).or_default() += 1;
    }
    let position: BTreeMap<&str, usize> = listed
        .iter()
        .enumerate()
        .map(|(at, id)| (id.as_str(), at))
        .collect();
    let mut missing = Vec::new();
    let mut out_of_order = Vec::new();
    for n in 0..orders {
        let (created, cancelled) = (
            format!("o-heavy-{n}-created"),
            format!("o-heavy-{n}-cancelled"),
        );
        for id in [&created, &cancelled] {
            if times.get(id.as_str()) != Some(&1) {
                missing.push(format!("{id}: {:?}", times.get(id.as_str())));
            }
        }
        if let (Some(c), Some(x)) = (
            position.get(created.as_str()),
            position.get(cancelled.as_str()),
        ) && x > c
        {
            out_of_order.push(n);
        }
    }
    let (largest, messages) = largest_message(&js, "KV_notifications").await?;
    let dead = match js.get_stream("DLQ").await {
        Ok(mut stream) => stream.info().await?.state.messages,
        Err(_) => 0,
    };
    println!(
        "heavy user: {events} events published in {published:?}, all handled {handled:?} later ({:.0}/s); {} listed in {pages} pages of ≤ 200; {} orders listed cancelled-before-created {:?}; largest of {messages} messages in the bucket {largest} B; {dead} dead letters",
        events as f64 / handled.as_secs_f64().max(0.001),
        listed.len(),
        out_of_order.len(),
        &out_of_order[..out_of_order.len().min(5)],
    );
    assert_eq!(listed.len(), events, "listed once each");
    assert!(
        missing.is_empty(),
        "not listed exactly once: {:?}",
        &missing[..missing.len().min(5)]
    );
    assert!(
        out_of_order.is_empty(),
        "orders listed cancelled-before-created: {:?}",
        &out_of_order[..out_of_order.len().min(5)]
    );
    assert!(largest <= LARGEST_WRITE, "a value of {largest} bytes");
    assert_eq!(dead, 0, "dead letters");
    Ok(())
}
