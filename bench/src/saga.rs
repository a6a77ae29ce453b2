//! What crash safety costs, and what a hot key does.
//!
//! - **outbox**: an `orders.create`-shaped endpoint (store a new record,
//!   publish its event) as it was before issue 13 — a KV create, then a
//!   publish that waits for the ack — against the same endpoint on a
//!   transaction (record + outbox entry in one atomic batch) with the
//!   bucket's relay publishing the events. Two ratios: requests answered,
//!   and events stored in the stream per second until the last one is
//!   there (the relay's lag included). Only the changed part is measured:
//!   the real `orders.create` also calls users and inventory, which would
//!   dilute the difference.
//! - **hot sku**: the inventory service's `inventory.reserve` with every
//!   caller on one sku, against every caller on a sku of its own (the
//!   baseline): what queueing writers of one key costs, and that none of
//!   them is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use contracts::Item;
use contracts::inventory::{self, Reservation, Reserve, Restock, Stock};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::client::Client;
use switchboard::events::{Event, Publisher, StreamSpec};
use switchboard::service::Consumers;
use switchboard::service::{Context, Endpoint, Service};
use switchboard::shutdown::Shutdown;
use switchboard::state::StateStore;
use switchboard::testing::TestServer;
use tokio::sync::Notify;

use crate::Settings;
use crate::drive::{Caller, drive};
use crate::report::{CpuClock, Report, median};
use crate::rounds;

/// Callers in flight, as in the hot-sku target.
const CALLERS: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct NewOrder {
    user_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Placed {
    id: String,
    user_id: String,
    created_at: String,
}

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    outbox(settings, report).await?;
    hot_sku(settings, report).await
}

#[derive(Clone)]
struct Create {
    client: Client,
    subject: &'static str,
}

impl Caller for Create {
    async fn call(&self) -> bool {
        let order = NewOrder {
            user_id: "u-bench".into(),
        };
        self.client
            .call::<_, Placed>(self.subject, &order)
            .await
            .is_ok()
    }
}

async fn outbox(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let scenario = "outbox";
    println!("{scenario} (orders.create-shaped: store + event, {CALLERS} in flight)");
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let js = jetstream::new(nats.clone());
    StreamSpec::new("DIRECT", ["events.direct.>"])
        .ensure(&js)
        .await?;
    StreamSpec::new("OUTBOX", ["events.outbox.>"])
        .ensure(&js)
        .await?;
    let direct: StateStore<Placed> = StateStore::open(&js, "direct", 1).await?;
    let outboxed: StateStore<Placed> = StateStore::open(&js, "outboxed", 1).await?;
    let mut relay = Consumers::new(js.clone());
    relay.relay(&outboxed);
    let (to_direct, to_outbox) = (
        (direct, Publisher::new(js.clone(), "orders")),
        (outboxed, Publisher::new(js.clone(), "orders")),
    );
    let _service = Service::builder("bench", "1.0.0")
        .endpoint(
            Endpoint::new("direct", move |_ctx: Context, req: NewOrder| {
                let (store, events) = to_direct.clone();
                async move {
                    let order = placed(req);
                    store.create(&order.id, &order).await?;
                    let event = Event::new(order.clone()).id(format!("{}-created", order.id));
                    events.publish("events.direct.created", &event).await?;
                    Ok::<_, ServiceError>(order)
                }
            })
            .max_in_flight(1024),
        )
        .endpoint(
            Endpoint::new("outbox", move |_ctx: Context, req: NewOrder| {
                let (store, events) = to_outbox.clone();
                async move {
                    let order = placed(req);
                    let event = Event::new(order.clone()).id(format!("{}-created", order.id));
                    let mut tx = store.transaction();
                    tx.create(&store, &order.id, &order)?.publish(
                        &events,
                        "events.outbox.created",
                        &event,
                    )?;
                    tx.commit().await?;
                    Ok::<_, ServiceError>(order)
                }
            })
            .max_in_flight(1024),
        )
        .start(nats.clone())
        .await?;
    nats.flush().await?;
    let client = Client::new(server.client().await?);
    let pid = server.pid();
    let call = |subject| Create {
        client: client.clone(),
        subject,
    };
    // Alternating, repeated pairs (the order flips each round), and the
    // median of the rounds' ratios: one pair moved between 0.64x and 1.03x
    // from run to run.
    let rounds = settings.rounds;
    let variants = [
        ("KV create, then publish (before)", "bench.direct", "DIRECT"),
        ("transaction + outbox relay", "bench.outbox", "OUTBOX"),
    ];
    let (mut request_ratios, mut stored_ratios, mut cpu_ratios) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut stored_before = [0u64; 2];
    for round in 0..rounds {
        let mut rates = [0.0f64; 2];
        let mut stored_rates = [0.0f64; 2];
        let mut cpu = [0.0f64; 2];
        for step in 0..2 {
            let index = if round % 2 == 0 { step } else { 1 - step };
            let (variant, subject, stream) = variants[index];
            let started = Instant::now();
            // CPU until the last event is stored: the relay's work after the
            // callers stop belongs to the variant too.
            let clock = CpuClock::start(pid);
            let run = drive(pid, CALLERS, settings.duration, call(subject)).await?;
            rates[index] = report.add_run(scenario, variant, &run, None);
            // Events are "done" when the stream has one per answered request.
            let deadline = Instant::now() + Duration::from_secs(60);
            let wanted = stored_before[index] + run.ops;
            let mut stored = stored_before[index];
            while Instant::now() < deadline {
                stored = js.get_stream(stream).await?.info().await?.state.messages;
                if stored >= wanted {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let took = started.elapsed().as_secs_f64().max(1e-9);
            stored_rates[index] = (stored - stored_before[index]) as f64 / took;
            stored_before[index] = stored;
            if let Some(per_op) = clock.per_op(run.ops) {
                cpu[index] = per_op.process + per_op.server;
                println!(
                    "    until stored: cpu/op {:.1}µs + server {:.1}µs",
                    per_op.process, per_op.server
                );
            }
        }
        request_ratios.push(rates[1] / rates[0].max(1e-9));
        stored_ratios.push(stored_rates[1] / stored_rates[0].max(1e-9));
        // Baseline over variant: above 1 the variant costs less per request.
        cpu_ratios.push(cpu[0] / cpu[1].max(1e-9));
    }
    println!(
        "  ratios per round: requests {request_ratios:.2?}, events stored {stored_ratios:.2?}, \
         cpu/op (before ÷ outbox) {cpu_ratios:.2?}"
    );
    report.compare(
        scenario,
        "transaction + outbox relay (median of rounds)",
        median(&mut request_ratios),
    );
    report.compare(
        "outbox events stored",
        "transaction + outbox relay (median of rounds)",
        median(&mut stored_ratios),
    );
    report.compare(
        "outbox cpu/op",
        "before ÷ transaction + outbox relay (median of rounds)",
        median(&mut cpu_ratios),
    );
    relay.stop().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn placed(req: NewOrder) -> Placed {
    Placed {
        id: switchboard::state::new_id("o"),
        user_id: req.user_id,
        created_at: switchboard::events::now_rfc3339(),
    }
}

#[derive(Clone)]
struct ReserveOne {
    client: Client,
    /// `None`: one sku for everyone; else each call takes the next of these.
    skus: Option<Arc<Vec<String>>>,
    next: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Caller for ReserveOne {
    async fn call(&self) -> bool {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let sku = match &self.skus {
            Some(skus) => skus[(n as usize) % skus.len()].clone(),
            None => "hot".to_owned(),
        };
        let request = Reserve {
            order_id: format!("o-{}", nuid::next()),
            items: vec![Item { sku, quantity: 1 }],
        };
        let reply: Result<Reservation, _> =
            self.client.call(inventory::RESERVE.subject, &request).await;
        if reply.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        reply.is_ok()
    }
}

async fn hot_sku(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let scenario = "hot sku";
    println!("{scenario} (inventory.reserve, {CALLERS} in flight, 1 unit each)");
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    // Holds outlive the run: nobody confirms them here (no orders service),
    // and expiring ones would be work the measurement does not want.
    let service = tokio::spawn(::inventory::run_with_hold(
        nats.clone(),
        Shutdown::new(async move { stopped.notified().await }),
        Duration::from_secs(3600),
    ));
    let client = Client::new(server.client().await?);
    let spread: Vec<String> = (0..CALLERS).map(|i| format!("sku-{i}")).collect();
    // The service needs a moment to subscribe; restocking waits for it.
    for sku in spread.iter().map(String::as_str).chain(["hot"]) {
        let restock = Restock {
            sku: sku.to_owned(),
            quantity: 1_000_000,
        };
        let mut stocked: Result<Stock, _> = client.call(inventory::RESTOCK.subject, &restock).await;
        for _ in 0..50 {
            if stocked.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            stocked = client.call(inventory::RESTOCK.subject, &restock).await;
        }
        stocked?;
    }
    let callers = [
        ("a sku per caller (baseline)", Some(Arc::new(spread))),
        ("every caller on one sku", None),
    ]
    .map(|(variant, skus)| {
        (
            variant,
            ReserveOne {
                client: client.clone(),
                skus,
                next: Arc::default(),
                refused: Arc::default(),
            },
        )
    });
    let measured = rounds::interleave(settings.rounds, callers.len(), |i| {
        let caller = callers[i].1.clone();
        drive(server.pid(), CALLERS, settings.duration, caller)
    })
    .await?;
    let names = callers.each_ref().map(|(variant, _)| *variant);
    rounds::report(report, scenario, &names, &measured);
    for (variant, caller) in &callers {
        println!(
            "  {variant}: {} refused",
            caller.refused.load(Ordering::Relaxed)
        );
    }
    stop.notify_one();
    service.await??;
    Ok(())
}
