//! Chaos against the reference system, and its invariants checked after.
//!
//! Concurrent order creates and cancels from many callers while random
//! service processes are SIGKILLed every few seconds (and nats-server
//! once); `switchboard up` restarts what dies. After the load stops and the
//! system settles, the state, the streams and the notifications must agree:
//!
//! - I1 per sku, available + reserved = everything restocked;
//! - I2 per sku, reserved = the sum of live reservations;
//! - I3 no live reservation without a confirmed order;
//! - I4 every confirmed order has its reservation, every cancelled order's
//!   reservation is released;
//! - I5 every create and cancel a caller was told succeeded is in the state;
//! - I6 every stored order has its `created` event, every cancelled one its
//!   `cancelled` event, each exactly once;
//! - I7 exactly one notification per such event.
//!
//! Not yet in `make test`: the outbox and expiring holds of issue 13 are
//! what make these hold under kills; until then `make chaos` runs it and
//! prints which invariants break, with examples
//! (`SWITCHBOARD_CHAOS_SECONDS`, default 30).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use switchboard::client::{CallOptions, Client};
use switchboard::testing::free_port;

use common::{Signal, admin, exe_name, start_system};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SKUS: [&str; 3] = ["red", "green", "blue"];
const RESTOCKED: u64 = 100_000;
const VICTIMS: [&str; 4] = ["users", "inventory", "orders", "notifications"];

/// What callers were told.
#[derive(Debug, Default)]
struct Told {
    created: BTreeSet<String>,
    cancelled: BTreeSet<String>,
    refused: usize,
}

async fn call(client: &Client, subject: &str, body: Value) -> Option<Value> {
    let options = CallOptions::default()
        .timeout(Duration::from_secs(3))
        .max_retries(0);
    let reply = client.call_with(subject, &body, options).await.ok();
    if reply.is_none() {
        // A caller that was refused (a service or the server is down) waits
        // a little, as a real one would, instead of spinning.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reply
}

async fn load(client: Client, users: Vec<String>, told: Arc<Mutex<Told>>, until: Instant) {
    let mut mine: Vec<String> = Vec::new();
    while Instant::now() < until {
        if !mine.is_empty() && fastrand::u8(0..4) == 0 {
            let id = mine.swap_remove(fastrand::usize(0..mine.len()));
            let reply = call(&client, "orders.cancel", json!({ "id": id })).await;
            if let Ok(mut told) = told.lock() {
                match reply {
                    Some(_) => {
                        told.cancelled.insert(id);
                    }
                    None => told.refused += 1,
                }
            }
            continue;
        }
        let user = &users[fastrand::usize(0..users.len())];
        let items: Vec<Value> = (0..fastrand::usize(1..3))
            .map(|_| json!({ "sku": SKUS[fastrand::usize(0..SKUS.len())], "quantity": fastrand::u32(1..4) }))
            .collect();
        let reply = call(
            &client,
            "orders.create",
            json!({ "user_id": user, "items": items }),
        )
        .await;
        let id = reply.and_then(|o| o["id"].as_str().map(str::to_owned));
        if let Ok(mut told) = told.lock() {
            match &id {
                Some(id) => {
                    told.created.insert(id.clone());
                }
                None => told.refused += 1,
            }
        }
        mine.extend(id);
    }
}

/// Every value of a KV bucket, by key.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
) -> Result<BTreeMap<String, Value>, Box<dyn std::error::Error>> {
    let kv = js.get_key_value(name).await?;
    let mut keys = kv.keys().await?;
    let mut values = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        if let Some(bytes) = kv.get(&key).await? {
            values.insert(key, serde_json::from_slice(&bytes)?);
        }
    }
    Ok(values)
}

/// How often each `ce-id` is stored in `stream`.
async fn event_ids(
    js: &jetstream::Context,
    stream: &str,
) -> Result<BTreeMap<String, usize>, Box<dyn std::error::Error>> {
    let mut stream = js.get_stream(stream).await?;
    let state = stream.info().await?.state.clone();
    let mut ids = BTreeMap::new();
    if state.messages == 0 {
        return Ok(ids);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await
            && let Some(id) = message.headers.get("ce-id")
        {
            *ids.entry(id.as_str().to_owned()).or_default() += 1;
        }
    }
    Ok(ids)
}

/// The event ids a stored order must have: created, and cancelled if it is.
fn expected_events(id: &str, order: &Value) -> Vec<String> {
    let mut wanted = vec![format!("{id}-created")];
    if order["status"] == "cancelled" {
        wanted.push(format!("{id}-cancelled"));
    }
    wanted
}

fn check(broken: &mut Vec<String>, invariant: &str, failures: Vec<String>) {
    if !failures.is_empty() {
        broken.push(format!(
            "{invariant}: {} violations, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long; run by `make chaos` until issue 13's outbox and holds make it pass under kills"]
async fn invariants_hold_after_kills_under_load() -> TestResult {
    let seconds: u64 = std::env::var("SWITCHBOARD_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir()?;
    let mut system = start_system(dir.path(), free_port()?, free_port()?);
    let client = admin(dir.path()).await?;
    let mut users = Vec::new();
    for n in 0..4 {
        let user = call(
            &client,
            "users.create",
            json!({"name": format!("Chaos {n}"), "email": format!("chaos{n}@example.com")}),
        )
        .await
        .ok_or("cannot create a user")?;
        users.extend(user["id"].as_str().map(str::to_owned));
    }
    for sku in SKUS {
        call(
            &client,
            "inventory.restock",
            json!({"sku": sku, "quantity": RESTOCKED}),
        )
        .await
        .ok_or("cannot restock")?;
    }

    let told = Arc::new(Mutex::new(Told::default()));
    let until = Instant::now() + Duration::from_secs(seconds);
    let callers: Vec<_> = (0..16)
        .map(|_| tokio::spawn(load(client.clone(), users.clone(), told.clone(), until)))
        .collect();
    let (mut kills, mut server_killed) = (Vec::new(), false);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let processes: Vec<(u32, String)> = system
            .up
            .descendants()
            .into_iter()
            .filter_map(|pid| exe_name(pid).map(|name| (pid, name)))
            .collect();
        let want_server =
            !server_killed && Instant::now() + Duration::from_secs(seconds / 2) > until;
        let victim = processes.iter().find(|(_, name)| {
            if want_server {
                name == "nats-server"
            } else {
                VICTIMS[fastrand::usize(0..VICTIMS.len())] == name
            }
        });
        if let Some((pid, name)) = victim {
            switchboard::process::send(*pid, Signal::SIGKILL);
            server_killed |= name == "nats-server";
            kills.push(name.clone());
        }
    }
    for caller in callers {
        caller.await?;
    }
    // Let restarts, redeliveries and compensations finish.
    tokio::time::sleep(Duration::from_secs(15)).await;

    let js = jetstream::new(client.nats().clone());
    let orders = bucket(&js, "orders").await?;
    let reservations = bucket(&js, "inventory-reservations").await?;
    let order_events = event_ids(&js, "ORDERS").await?;
    let told = match told.lock() {
        Ok(mut told) => std::mem::take(&mut *told),
        Err(_) => return Err("poisoned".into()),
    };
    let status = |order: &Value| order["status"].as_str().unwrap_or_default().to_owned();
    let mut broken = Vec::new();

    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    for reservation in reservations.values() {
        if reservation["status"] == "reserved" {
            for item in reservation["items"].as_array().into_iter().flatten() {
                *live
                    .entry(item["sku"].as_str().unwrap_or_default().to_owned())
                    .or_default() += item["quantity"].as_u64().unwrap_or_default();
            }
        }
    }
    let (mut i1, mut i2) = (Vec::new(), Vec::new());
    for sku in SKUS {
        let stock = call(&client, "inventory.stock", json!({"sku": sku}))
            .await
            .unwrap_or(Value::Null);
        let (available, reserved) = (
            stock["available"].as_u64().unwrap_or(0),
            stock["reserved"].as_u64().unwrap_or(0),
        );
        if available + reserved != RESTOCKED {
            i1.push(format!("{sku}: {available} + {reserved} != {RESTOCKED}"));
        }
        let held = live.get(sku).copied().unwrap_or(0);
        if reserved != held {
            i2.push(format!(
                "{sku}: reserved {reserved}, live reservations {held}"
            ));
        }
    }
    check(&mut broken, "I1 stock adds up", i1);
    check(&mut broken, "I2 reserved = live reservations", i2);
    let i3 = reservations
        .values()
        .filter(|r| r["status"] == "reserved")
        .filter_map(|r| r["order_id"].as_str())
        .filter(|id| orders.get(*id).is_none_or(|o| status(o) != "confirmed"))
        .map(str::to_owned)
        .collect();
    check(
        &mut broken,
        "I3 no reservation without a confirmed order",
        i3,
    );
    let i4 = orders
        .values()
        .filter_map(|o| {
            let id = o["id"].as_str()?;
            let held = reservations
                .get(id)
                .map(|r| r["status"].as_str().unwrap_or_default().to_owned());
            let good = match status(o).as_str() {
                "confirmed" => held.as_deref() == Some("reserved"),
                _ => held.as_deref() != Some("reserved"),
            };
            (!good).then(|| format!("{id}: {} with reservation {held:?}", status(o)))
        })
        .collect();
    check(&mut broken, "I4 orders and reservations agree", i4);
    let mut i5: Vec<String> = told
        .created
        .iter()
        .filter(|id| !orders.contains_key(*id))
        .map(|id| format!("created {id} missing"))
        .collect();
    i5.extend(
        told.cancelled
            .iter()
            .filter(|id| orders.get(*id).is_none_or(|o| status(o) != "cancelled"))
            .map(|id| format!("cancelled {id} not cancelled")),
    );
    check(&mut broken, "I5 what callers were told is in the state", i5);
    let mut i6 = Vec::new();
    for (id, order) in &orders {
        for event in expected_events(id, order) {
            let stored = order_events.get(&event).copied().unwrap_or(0);
            if stored != 1 {
                i6.push(format!("{event} stored {stored} times"));
            }
        }
    }
    check(&mut broken, "I6 each order's events exactly once", i6);
    let mut i7 = Vec::new();
    for user in &users {
        let list = call(&client, "notifications.list", json!({"user_id": user}))
            .await
            .unwrap_or(Value::Null);
        let mut per_event: BTreeMap<String, usize> = BTreeMap::new();
        for n in list["notifications"].as_array().into_iter().flatten() {
            *per_event
                .entry(n["event_id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
        for (id, order) in orders.iter().filter(|(_, o)| o["user_id"] == json!(user)) {
            for event in expected_events(id, order) {
                let count = per_event.get(&event).copied().unwrap_or(0);
                if count != 1 {
                    i7.push(format!("{event}: {count} notifications"));
                }
            }
        }
    }
    check(&mut broken, "I7 one notification per event", i7);

    println!(
        "chaos: {seconds} s, {} kills ({}), {} creates and {} cancels told ok, {} refused; {} orders stored",
        kills.len(),
        kills.join(", "),
        told.created.len(),
        told.cancelled.len(),
        told.refused,
        orders.len()
    );
    assert!(
        broken.is_empty(),
        "invariants broken:\n{}",
        broken.join("\n")
    );
    Ok(())
}
