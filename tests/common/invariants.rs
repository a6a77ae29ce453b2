//! The reference system under load, and its invariants checked after
//! (shared by the chaos and partition tests; see `tests/chaos.rs` for the
//! list I1–I8).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use switchboard::client::{CallOptions, Client};

pub const SKUS: [&str; 3] = ["red", "green", "blue"];
pub const RESTOCKED: u64 = 100_000;

/// Longest wait after the load for the system to settle: restarts, ack
/// waits of redeliveries, expired holds (`inventory::HOLD`).
pub const SETTLE: Duration = Duration::from_secs(90);
/// The stock hold of the run.
pub const HOLD: Duration = Duration::from_secs(3);

/// What callers were told.
#[derive(Debug, Default)]
pub struct Told {
    pub created: BTreeSet<String>,
    pub cancelled: BTreeSet<String>,
    pub refused: usize,
    /// When each refusal was told (the error window of a fault).
    pub refused_at: Vec<Instant>,
    /// When each success was told.
    pub answered_at: Vec<Instant>,
    /// What the refusals said, by how often.
    pub reasons: BTreeMap<String, usize>,
}

impl Told {
    /// Adds what `other` was told.
    pub fn merge(&mut self, other: Told) {
        self.created.extend(other.created);
        self.cancelled.extend(other.cancelled);
        self.refused += other.refused;
        self.refused_at.extend(other.refused_at);
        self.answered_at.extend(other.answered_at);
        for (reason, count) in other.reasons {
            *self.reasons.entry(reason).or_default() += count;
        }
    }

    /// Counts a refusal and what it said.
    pub fn refusal(&mut self, reason: String) {
        self.refused += 1;
        self.refused_at.push(Instant::now());
        *self.reasons.entry(reason).or_default() += 1;
    }

    /// The `n` refusals said most often, with their counts (for a run's
    /// report: a refusal count alone cannot tell an outage from a 409).
    pub fn most_said(&self, n: usize) -> Vec<(&str, usize)> {
        let mut reasons: Vec<(&str, usize)> = self
            .reasons
            .iter()
            .map(|(reason, count)| (reason.as_str(), *count))
            .collect();
        reasons.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        reasons.truncate(n);
        reasons
    }
}

pub async fn call(client: &Client, subject: &str, body: Value) -> Option<Value> {
    try_call(client, subject, body).await.ok()
}

/// [`call`] with the failure's words (its first 60 characters).
pub async fn try_call(client: &Client, subject: &str, body: Value) -> Result<Value, String> {
    let options = CallOptions::default()
        .timeout(Duration::from_secs(3))
        .max_retries(0);
    let reply = client.call_with(subject, &body, options).await;
    reply.map_err(|error| in_words(&error.to_string()))
}

/// An error's first 60 characters, its numbers made `#` so that the same
/// failure is counted as one reason ("no reply within #.#s").
fn in_words(error: &str) -> String {
    let mut words = String::new();
    for c in error.chars().take(60) {
        if c.is_ascii_digit() {
            if !words.ends_with('#') {
                words.push('#');
            }
        } else {
            words.push(c);
        }
    }
    words
}

/// Four users (named after `label`) and every sku restocked: what the
/// load needs. The users' ids.
pub async fn prepare(client: &Client, label: &str) -> Result<Vec<String>, String> {
    let mut users = Vec::new();
    for n in 0..4 {
        let user = call(
            client,
            "users.create",
            json!({"name": format!("{label} {n}"), "email": format!("{}{n}@example.com", label.to_lowercase())}),
        )
        .await
        .ok_or("cannot create a user")?;
        users.extend(user["id"].as_str().map(str::to_owned));
    }
    for sku in SKUS {
        restock(client, sku).await?;
    }
    Ok(users)
}

/// Restocks a fresh `sku` with [`RESTOCKED`] units on a system that just
/// started, where a first write can meet a stream still settling its
/// leader (CI once saw the single try fail). A restock adds, so before a
/// retry the stock is read: a try that failed to answer may have applied.
pub async fn restock(client: &Client, sku: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..10 {
        let options = CallOptions::default()
            .timeout(Duration::from_secs(3))
            .max_retries(0);
        let body = json!({"sku": sku, "quantity": RESTOCKED});
        match client
            .call_with::<_, Value>("inventory.restock", &body, options)
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) => last = error.to_string(),
        }
        // Past the try's own deadline, so a handler it started has ended.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(stock) = call(client, "inventory.stock", json!({"sku": sku})).await {
            match stock["available"].as_u64() {
                Some(RESTOCKED) => return Ok(()),
                Some(0) => {}
                other => return Err(format!("{sku}: {other:?} in stock after a failed restock")),
            }
        }
    }
    Err(format!("cannot restock {sku}: {last}"))
}

pub async fn load(client: Client, users: Vec<String>, told: Arc<Mutex<Told>>, until: Instant) {
    let mut mine: Vec<String> = Vec::new();
    while Instant::now() < until {
        if !mine.is_empty() && fastrand::u8(0..4) == 0 {
            let id = mine.swap_remove(fastrand::usize(0..mine.len()));
            let reply = try_call(&client, "orders.cancel", json!({ "id": id })).await;
            let refused = reply.is_err();
            if let Ok(mut told) = told.lock() {
                match reply {
                    Ok(_) => {
                        told.cancelled.insert(id);
                        told.answered_at.push(Instant::now());
                    }
                    Err(reason) => told.refusal(reason),
                }
            }
            if refused {
                // A caller that was refused (a service or the server is
                // down) waits a little, as a real one would.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        }
        let user = &users[fastrand::usize(0..users.len())];
        let items: Vec<Value> = (0..fastrand::usize(1..3))
            .map(|_| json!({ "sku": SKUS[fastrand::usize(0..SKUS.len())], "quantity": fastrand::u32(1..4) }))
            .collect();
        let reply = try_call(
            &client,
            "orders.create",
            json!({ "user_id": user, "items": items }),
        )
        .await;
        let id = match reply {
            Ok(order) => order["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("no id in {order}")),
            Err(reason) => Err(reason),
        };
        let refused = id.is_err();
        if let Ok(mut told) = told.lock() {
            match &id {
                Ok(id) => {
                    told.created.insert(id.clone());
                    told.answered_at.push(Instant::now());
                }
                Err(reason) => told.refusal(reason.clone()),
            }
        }
        if refused {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        mine.extend(id.ok());
    }
}

/// The records of a KV bucket whose key is plain (`view` = `None`) or in
/// a view (`reservation.<id>`), by their `id_field`; other views are left
/// out.
pub async fn records(
    js: &jetstream::Context,
    name: &str,
    view: Option<&str>,
    id_field: &str,
) -> Result<BTreeMap<String, Value>, Box<dyn std::error::Error>> {
    let kv = js.get_key_value(name).await?;
    let mut keys = kv.keys().await?;
    let mut values = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        let wanted = match view {
            Some(view) => key.starts_with(&format!("{view}.")),
            None => !key.contains('.'),
        };
        if !wanted {
            continue;
        }
        if let Some(bytes) = kv.get(&key).await? {
            let value: Value = serde_json::from_slice(&bytes)?;
            let id = value[id_field].as_str().unwrap_or_default().to_owned();
            values.insert(id, value);
        }
    }
    Ok(values)
}

/// Messages in a stream (0 if it does not exist).
pub async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// How often each `ce-id` is stored in `stream`, and where first.
pub async fn event_ids(
    js: &jetstream::Context,
    stream: &str,
) -> Result<BTreeMap<String, (usize, u64)>, Box<dyn std::error::Error>> {
    let mut stream = js.get_stream(stream).await?;
    let state = stream.info().await?.state.clone();
    let mut ids: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    if state.messages == 0 {
        return Ok(ids);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await
            && let Some(id) = message.headers.get("ce-id")
        {
            ids.entry(id.as_str().to_owned()).or_insert((0, sequence)).0 += 1;
        }
    }
    Ok(ids)
}

/// Every notification of `user`, newest first, page by page (an empty
/// list if a page cannot be read: the invariants then say what is missing).
pub async fn all_notifications(client: &Client, user: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = json!({"user_id": user, "limit": 200});
        if let Some(cursor) = &cursor {
            request["cursor"] = json!(cursor);
        }
        let Some(page) = call(client, "notifications.list", request).await else {
            return Vec::new();
        };
        all.extend(
            page["notifications"]
                .as_array()
                .into_iter()
                .flatten()
                .cloned(),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

/// The event ids a stored order must have: created, and cancelled if it is.
pub fn expected_events(id: &str, order: &Value) -> Vec<String> {
    let mut wanted = vec![format!("{id}-created")];
    if order["status"] == "cancelled" {
        wanted.push(format!("{id}-cancelled"));
    }
    wanted
}

pub fn check(broken: &mut Vec<String>, invariant: &str, failures: Vec<String>) {
    if !failures.is_empty() {
        broken.push(format!(
            "{invariant}: {} violations, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        ));
    }
}

/// The invariants as they stand now: what is broken, and a summary line.
pub async fn evaluate(
    client: &Client,
    users: &[String],
    told: &Told,
) -> Result<(Vec<String>, String), Box<dyn std::error::Error>> {
    let js = jetstream::new(client.nats().clone());
    // Ids closed as never placed (`rejected`) are not orders.
    let orders: BTreeMap<String, Value> = records(&js, "orders", None, "id")
        .await?
        .into_iter()
        .filter(|(_, o)| o["status"] != "rejected")
        .collect();
    let reservations = records(&js, "inventory", Some("reservation"), "order_id").await?;
    let order_events = event_ids(&js, "ORDERS").await?;
    let status = |order: &Value| order["status"].as_str().unwrap_or_default().to_owned();
    let live_status = |r: &Value| r["status"] == "reserved" || r["status"] == "held";
    let mut broken = Vec::new();

    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    for reservation in reservations.values().filter(|r| live_status(r)) {
        for item in reservation["items"].as_array().into_iter().flatten() {
            *live
                .entry(item["sku"].as_str().unwrap_or_default().to_owned())
                .or_default() += item["quantity"].as_u64().unwrap_or_default();
        }
    }
    let (mut i1, mut i2) = (Vec::new(), Vec::new());
    for sku in SKUS {
        let stock = call(client, "inventory.stock", json!({"sku": sku}))
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
        .filter(|r| live_status(r))
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
                _ => held.as_deref() == Some("released"),
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
            let stored = order_events.get(&event).map_or(0, |(n, _)| *n);
            if stored != 1 {
                i6.push(format!("{event} stored {stored} times"));
            }
        }
    }
    check(&mut broken, "I6 each order's events exactly once", i6);
    let (mut i7, mut i8) = (Vec::new(), Vec::new());
    for user in users {
        let list = all_notifications(client, user).await;
        let mut per_event: BTreeMap<String, usize> = BTreeMap::new();
        // Where each event's notification stands in the user's history
        // (recorded in the order they were handled), oldest first.
        let mut position: BTreeMap<String, usize> = BTreeMap::new();
        for (at, n) in list.iter().rev().enumerate() {
            let id = n["event_id"].as_str().unwrap_or_default().to_owned();
            *per_event.entry(id.clone()).or_default() += 1;
            position.entry(id).or_insert(at);
        }
        for id in orders.keys() {
            let (created, cancelled) = (format!("{id}-created"), format!("{id}-cancelled"));
            if let (Some(c), Some(x)) = (position.get(&created), position.get(&cancelled))
                && x < c
            {
                // Where the stream has them tells a publisher's fault (the
                // stream's order already wrong) from a consumer's.
                let at = |event: &String| order_events.get(event).map(|(_, seq)| *seq);
                i8.push(format!(
                    "{id}: cancelled listed before created (stream sequences {:?} and {:?})",
                    at(&created),
                    at(&cancelled)
                ));
            }
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
    check(&mut broken, "I8 each order's notifications in order", i8);
    let dead = stream_messages(&js, "DLQ").await;
    if dead > 0 {
        // What they died of: the first few, by consumer and error.
        let letters = switchboard::events::DeadLetters::open(&js)
            .await?
            .list()
            .await?;
        let causes: Vec<String> = letters
            .iter()
            .take(3)
            .map(|l| {
                format!(
                    "{} {} after {} deliveries: {}",
                    l.info.consumer, l.info.subject, l.info.deliveries, l.info.error
                )
            })
            .collect();
        broken.push(format!(
            "DLQ: {dead} dead letters, though no reference handler fails: {causes:?}"
        ));
    }
    let mut summary = format!(
        "{} orders stored ({} cancelled), {} reservations, {} order events",
        orders.len(),
        orders
            .values()
            .filter(|o| o["status"] == "cancelled")
            .count(),
        reservations.len(),
        order_events.values().map(|(n, _)| n).sum::<usize>()
    );
    if !broken.is_empty() {
        // Where the consumers stand: what a broken I4/I7 usually comes from.
        let partitions = (0..8).flat_map(|p| {
            [
                format!("notifications-orders-p{p}"),
                format!("inventory-orders-p{p}"),
            ]
        });
        for durable in partitions {
            if let Ok(stream) = js.get_stream("ORDERS").await
                && let Ok(info) = stream.consumer_info(&durable).await
                && (info.num_pending > 0 || info.num_ack_pending > 0)
            {
                summary.push_str(&format!(
                    "; {durable}: pending {}, ack pending {}, redelivered {}, waiting {}, leader {:?}",
                    info.num_pending,
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.num_waiting,
                    info.cluster.and_then(|c| c.leader)
                ));
            }
        }
    }
    Ok((broken, summary))
}

/// The invariants once the system has settled: restarts, redeliveries,
/// expired holds and compensations finish — checked until everything holds
/// or [`SETTLE`] is up.
pub async fn settled(
    client: &Client,
    users: &[String],
    told: &Told,
) -> Result<(Vec<String>, String), Box<dyn std::error::Error>> {
    let settle_by = Instant::now() + SETTLE;
    loop {
        // A read that fails (a stream still electing its leader after a
        // fault) is a check that cannot pass yet, not the end of the test.
        let (broken, summary) = match evaluate(client, users, told).await {
            Ok(verdict) => verdict,
            Err(error) => (
                vec![format!("the state cannot be read: {error}")],
                String::new(),
            ),
        };
        if broken.is_empty() || Instant::now() > settle_by {
            return Ok((broken, summary));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
