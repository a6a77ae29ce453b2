//! The `inventory` service: stock levels and all-or-nothing reservations.
//!
//! State: KV `inventory`: levels by sku, reservations by order id under
//! `reservation.<order id>`. Every change of stock is one transaction with
//! the reservation it belongs to and its event, so `reserved` is always the
//! sum of the live reservations — also when this process dies between any
//! two lines (there is no "between two skus" any more).
//!
//! A reservation is a hold first (`held`, with `expires_at`):
//! - `events.orders.created` makes it permanent (`reserved`);
//! - `events.orders.cancelled` releases it (compensation through an event,
//!   not a call);
//! - a hold past its expiry makes inventory ask `orders.resolve`: a placed
//!   order confirms it, an order never placed (now closed as `rejected`)
//!   releases it. So no stock stays held for an order that does not exist.
//!
//! Writers of one sku in this process take turns (see
//! `switchboard::state::StateStore::lock_keys`): a popular sku is a queue,
//! not a storm of conflicts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use contracts::inventory::{
    self, GetStock, Release, Reservation, ReservationStatus, Reserve, Restock, Stock,
};
use contracts::orders::{self, OrderChanged, OrderRef, OrderStatus, Resolution};
use contracts::{Item, canonical_items};
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::app::AppError;
use switchboard::client::Client;
use switchboard::contract::Contract;
use switchboard::events::{ConsumerSpec, Event, HandlerError, Publisher, ReceivedEvent};
use switchboard::service::Context;
use switchboard::shutdown::Shutdown;
use switchboard::state::{
    Attempt, StateError, StateStore, Transaction, Versioned, commit_retrying,
};
use switchboard::trace_context::TraceContext;

/// Overrides [`inventory::HOLD`] (milliseconds): tests settle faster.
const HOLD_ENV: &str = "INVENTORY_HOLD_MS";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Levels {
    available: u64,
    reserved: u64,
}

struct Inventory {
    events: Publisher,
    stock: StateStore<Levels>,
    reservations: StateStore<Reservation>,
    client: Client,
    hold: Duration,
}

impl Inventory {
    async fn open(nats: &async_nats::Client, hold: Duration) -> Result<Self, AppError> {
        let js = jetstream::new(nats.clone());
        let stock = StateStore::open(
            &js,
            inventory::BUCKET,
            switchboard::replication::replicas()?,
        )
        .await?;
        Ok(Inventory {
            reservations: stock.view(inventory::RESERVATIONS),
            stock,
            events: Publisher::new(js, "inventory"),
            client: Client::new(nats.clone()),
            hold,
        })
    }
}

/// How long processed order events are remembered (idempotency).
const REMEMBER: Duration = Duration::from_secs(24 * 3600);

/// Partitions of the order events (see `notifications`).
const ORDER_PARTITIONS: u32 = 8;
/// Handlers per partition: 16 for an instance holding all 8, as an
/// unkeyed consumer's default (more only contend for the same skus).
const HANDLERS_PER_PARTITION: usize = 2;

/// The consumer of order events, keyed by order: a confirmation makes the
/// order's hold permanent, a cancellation releases it — in that order for
/// each order, however many instances run (a cancellation handled first
/// would release the hold, and the late confirmation find nothing to keep).
fn orders_consumer() -> ConsumerSpec {
    ConsumerSpec::new(orders::stream().name, "inventory-orders")
        .filter([orders::CREATED, orders::CANCELLED])
        .keyed(ORDER_PARTITIONS)
        .concurrency(HANDLERS_PER_PARTITION)
        .ack_wait(Duration::from_secs(5))
        .idempotent(REMEMBER)
}

/// What the inventory service is and needs: its one declaration.
pub fn contract() -> Contract {
    Contract::new("inventory", env!("CARGO_PKG_VERSION"))
        .description("Stock levels: restock, reserve and release items")
        .endpoint(&inventory::RESTOCK)
        .endpoint(&inventory::STOCK)
        .endpoint(&inventory::RESERVE)
        .endpoint(&inventory::RELEASE)
        .stream(inventory::stream())
        .publishes::<Reservation>(inventory::RESERVED, "An order's items were reserved")
        .publishes::<Reservation>(inventory::RELEASED, "An order's reservation was released")
        .bucket(inventory::BUCKET)
        .consumer(&orders_consumer())
        .calls(orders::RESOLVE.subject)
}

/// Serves and consumes until `shutdown`, then drains; holds last
/// [`inventory::HOLD`] (or `INVENTORY_HOLD_MS`).
///
/// # Errors
///
/// When its stream, buckets, endpoints or consumers cannot be set up.
pub async fn run(nats: async_nats::Client, shutdown: Shutdown) -> Result<(), AppError> {
    let hold = std::env::var(HOLD_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(inventory::HOLD, Duration::from_millis);
    run_with_hold(nats, shutdown, hold).await
}

/// [`run`] with holds that last `hold`.
///
/// # Errors
///
/// As [`run`].
pub async fn run_with_hold(
    nats: async_nats::Client,
    shutdown: Shutdown,
    hold: Duration,
) -> Result<(), AppError> {
    let state = Arc::new(Inventory::open(&nats, hold).await?);
    let on_order = state.clone();
    let on_expired = state.clone();
    contract()
        .service()
        .relay(&state.stock)
        .consumer(
            orders_consumer(),
            move |event: ReceivedEvent<OrderChanged>| {
                let state = on_order.clone();
                async move {
                    match event.data.status {
                        OrderStatus::Confirmed => handled(confirm(&state, &event.data.id).await),
                        OrderStatus::Cancelled => {
                            handled(release_order(&state, &event.data.id, event.trace).await)
                        }
                        // Orders publishes no event for an order it never placed.
                        OrderStatus::Rejected => Err(HandlerError::permanent(format!(
                            "order {} was never placed; no event expected",
                            event.data.id
                        ))),
                    }
                }
            },
        )
        .deadlines(state.reservations.clone(), move |hold: Reservation| {
            let state = on_expired.clone();
            async move { expire(&state, hold).await }
        })
        .endpoint(inventory::RESTOCK.bind(state.clone(), restock))
        .endpoint(inventory::STOCK.bind(state.clone(), stock))
        .endpoint(inventory::RESERVE.bind(state.clone(), reserve))
        .endpoint(inventory::RELEASE.bind(state, release))
        .serve(nats, shutdown)
        .await?;
    Ok(())
}

/// A handler's result as the consumer's verdict: 404 means nothing was
/// reserved; otherwise the kit's reading of the error (a full store waits
/// in place, a transient failure — the server's, or stock contended by
/// concurrent writers — is retried, anything else is permanent).
fn handled<T>(result: Result<T, ServiceError>) -> Result<(), HandlerError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(HandlerError::from(e)),
    }
}

async fn restock(inv: Arc<Inventory>, _ctx: Context, req: Restock) -> Result<Stock, ServiceError> {
    let levels = inv
        .stock
        .modify(&req.sku, |current| {
            let mut levels = current.unwrap_or_default();
            levels.available += u64::from(req.quantity);
            Ok(levels)
        })
        .await?;
    Ok(to_stock(&req.sku, &levels))
}

async fn stock(inv: Arc<Inventory>, _ctx: Context, req: GetStock) -> Result<Stock, ServiceError> {
    let missing = || ServiceError::not_found(format!("no stock of {}", req.sku));
    let levels = inv.stock.fetch(&req.sku, missing).await?;
    Ok(to_stock(&req.sku, &levels))
}

/// Holds every item of the order or none: levels, hold and `reserved`
/// event in one transaction.
async fn reserve(
    inv: Arc<Inventory>,
    ctx: Context,
    req: Reserve,
) -> Result<Reservation, ServiceError> {
    let items = canonical_items(&req.items);
    let wanted = per_sku(&items);
    let _turns = inv.stock.lock_keys(wanted.keys().copied()).await?;
    let (inv, req, items, wanted) = (&inv, &req, &items, &wanted);
    let trace = Some(*ctx.trace());
    commit_retrying("stock", || async move {
        if let Some(existing) = inv.reservations.get(&req.order_id).await? {
            return same_reservation(existing.value, items).map(Attempt::Done);
        }
        let mut tx = inv.stock.transaction();
        for (sku, levels) in read_levels(inv, wanted.keys().copied()).await? {
            let quantity = wanted.get(sku).copied().unwrap_or_default();
            let mut next = levels.as_ref().map(|v| v.value.clone()).unwrap_or_default();
            if next.available < quantity {
                return Err(ServiceError::conflict(format!(
                    "{sku}: {} available, {quantity} requested",
                    next.available
                ))
                .with_details(serde_json::json!({
                    "sku": sku, "available": next.available, "requested": quantity
                })));
            }
            next.available -= quantity;
            next.reserved += quantity;
            tx.write(&inv.stock, sku, &next, levels.as_ref())?;
        }
        let hold = Reservation {
            order_id: req.order_id.clone(),
            items: items.clone(),
            status: ReservationStatus::Held,
            expires_at: Some(switchboard::state::deadline_after(inv.hold)),
        };
        tx.create(&inv.reservations, &req.order_id, &hold)?;
        announce(inv, &mut tx, inventory::RESERVED, "reserved", &hold, trace)?;
        // A conflict (another instance changed a level, an identical
        // request stored the hold first) reads and decides again.
        Ok(Attempt::Commit(tx, hold))
    })
    .await
}

async fn release(
    inv: Arc<Inventory>,
    ctx: Context,
    req: Release,
) -> Result<Reservation, ServiceError> {
    release_order(&inv, &req.order_id, Some(*ctx.trace())).await
}

/// Makes a hold permanent (its order was placed). Already reserved or
/// released: nothing to do (the hold expired and was resolved first, or
/// this is a redelivery).
async fn confirm(inv: &Inventory, order_id: &str) -> Result<(), ServiceError> {
    inv.reservations
        .transition(order_id, |reservation| {
            Ok(
                (reservation.status == ReservationStatus::Held).then(|| Reservation {
                    status: ReservationStatus::Reserved,
                    expires_at: None,
                    ..reservation.clone()
                }),
            )
        })
        .await?;
    Ok(())
}

/// Releases the reservation and gives its stock back, with the `released`
/// event, in one transaction (so it happens once, and whole).
async fn release_order(
    inv: &Inventory,
    order_id: &str,
    trace: Option<TraceContext>,
) -> Result<Reservation, ServiceError> {
    let missing = || ServiceError::not_found(format!("no reservation for {order_id}"));
    let first = inv.reservations.get(order_id).await?.ok_or_else(missing)?;
    if first.value.status == ReservationStatus::Released {
        return Ok(first.value);
    }
    let given_back = per_sku(&first.value.items);
    let _turns = inv.stock.lock_keys(given_back.keys().copied()).await?;
    let given_back = &given_back;
    commit_retrying("stock", || async move {
        let current = inv.reservations.get(order_id).await?.ok_or_else(missing)?;
        if current.value.status == ReservationStatus::Released {
            return Ok(Attempt::Done(current.value));
        }
        let released = Reservation {
            status: ReservationStatus::Released,
            expires_at: None,
            ..current.value.clone()
        };
        let mut tx = inv.stock.transaction();
        tx.update(&inv.reservations, order_id, &released, &current)?;
        for (sku, levels) in read_levels(inv, given_back.keys().copied()).await? {
            let quantity = given_back.get(sku).copied().unwrap_or_default();
            let mut next = levels.as_ref().map(|v| v.value.clone()).unwrap_or_default();
            next.reserved = next.reserved.saturating_sub(quantity);
            next.available += quantity;
            tx.write(&inv.stock, sku, &next, levels.as_ref())?;
        }
        announce(
            inv,
            &mut tx,
            inventory::RELEASED,
            "released",
            &released,
            trace,
        )?;
        Ok(Attempt::Commit(tx, released))
    })
    .await
}

/// A hold expired unconfirmed: orders decides (a placed order keeps it, an
/// order never placed is closed for good and the hold released).
async fn expire(inv: &Inventory, hold: Reservation) -> Result<(), ServiceError> {
    let order = OrderRef {
        id: hold.order_id.clone(),
    };
    let resolution: Resolution = inv.client.call(orders::RESOLVE.subject, &order).await?;
    tracing::info!(order = %hold.order_id, status = ?resolution.status, "hold expired; resolved");
    match resolution.status {
        OrderStatus::Confirmed => confirm(inv, &hold.order_id).await,
        OrderStatus::Cancelled | OrderStatus::Rejected => {
            match release_order(inv, &hold.order_id, None).await {
                Ok(_) => Ok(()),
                Err(e) if e.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// Adds a reservation event to `tx` (id `<order>-<what>`: committed twice,
/// published once).
fn announce(
    inv: &Inventory,
    tx: &mut Transaction,
    subject: &str,
    what: &str,
    reservation: &Reservation,
    trace: Option<TraceContext>,
) -> Result<(), StateError> {
    let mut event = Event::new(reservation.clone())
        .id(format!("{}-{what}", reservation.order_id))
        .subject(reservation.order_id.clone());
    if let Some(trace) = trace {
        event = event.trace(trace);
    }
    tx.publish(&inv.events, subject, &event)?;
    Ok(())
}

/// Quantities by sku (an order may name a sku twice).
fn per_sku(items: &[Item]) -> BTreeMap<&str, u64> {
    let mut wanted = BTreeMap::new();
    for item in items {
        *wanted.entry(item.sku.as_str()).or_default() += u64::from(item.quantity);
    }
    wanted
}

/// The levels of each sku, read together.
async fn read_levels<'s>(
    inv: &Inventory,
    skus: impl Iterator<Item = &'s str>,
) -> Result<Vec<(&'s str, Option<Versioned<Levels>>)>, StateError> {
    let reads = skus.map(|sku| async move { inv.stock.get(sku).await.map(|l| (sku, l)) });
    futures::future::try_join_all(reads).await
}

/// The same order asked twice gets the same answer; other items, or a
/// released reservation, are a conflict.
fn same_reservation(existing: Reservation, items: &[Item]) -> Result<Reservation, ServiceError> {
    if existing.status != ReservationStatus::Released && existing.items == items {
        Ok(existing)
    } else {
        Err(ServiceError::conflict(format!(
            "order {} already has a reservation ({:?}) for other items",
            existing.order_id, existing.status
        )))
    }
}

fn to_stock(sku: &str, levels: &Levels) -> Stock {
    Stock {
        sku: sku.to_owned(),
        available: levels.available,
        reserved: levels.reserved,
    }
}
