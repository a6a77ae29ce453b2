//! The `inventory` service: stock levels and all-or-nothing reservations.
//!
//! State: KV `inventory` (sku → levels) and `inventory-reservations`
//! (order id → reservation). Stock changes are compare-and-set, so racing
//! reservations cannot oversell; a reservation that cannot be completed
//! gives back what it took. Releases on `events.orders.cancelled`
//! (compensation through an event, not a call).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use contracts::inventory::{
    self, GetStock, Release, Reservation, ReservationStatus, Reserve, Restock, Stock,
};
use contracts::orders::OrderChanged;
use contracts::{Item, canonical_items};
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::app::AppError;
use switchboard::events::{Consumers, Event, HandlerError, Publisher, ReceivedEvent};
use switchboard::service::Context;
use switchboard::shutdown::Shutdown;
use switchboard::state::{StateError, StateStore, Transition};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Levels {
    available: u64,
    reserved: u64,
}

struct Inventory {
    events: Publisher,
    stock: StateStore<Levels>,
    reservations: StateStore<Reservation>,
}

impl Inventory {
    async fn open(nats: &async_nats::Client) -> Result<Self, AppError> {
        let js = jetstream::new(nats.clone());
        Ok(Inventory {
            stock: StateStore::open(&js, inventory::BUCKET, 1).await?,
            reservations: StateStore::open(&js, inventory::RESERVATIONS_BUCKET, 1).await?,
            events: Publisher::new(js, "inventory"),
        })
    }
}

/// Serves and consumes until `shutdown`, then drains.
///
/// # Errors
///
/// When its stream, buckets, endpoints or consumer cannot be set up.
pub async fn run(nats: async_nats::Client, shutdown: Shutdown) -> Result<(), AppError> {
    let state = Arc::new(Inventory::open(&nats).await?);
    // Compensation through an event, not a call: a cancelled order's stock
    // comes back even if orders never calls.
    let mut consumers = Consumers::new(state.events.jetstream().clone());
    let spec = contracts::access::declared_consumer("inventory-orders-cancelled")?
        .idempotent(Duration::from_secs(24 * 3600));
    let on_cancel = state.clone();
    consumers.spawn(spec, move |event: ReceivedEvent<OrderChanged>| {
        let state = on_cancel.clone();
        async move {
            match release_order(&state, &event.data.id, event.trace).await {
                Ok(_) => Ok(()),
                Err(e) if e.code == 404 => Ok(()), // nothing was reserved
                Err(e) if e.is_server_error() => Err(HandlerError::retry(e.message)),
                Err(e) => Err(HandlerError::permanent(e.message)),
            }
        }
    });
    inventory::service(env!("CARGO_PKG_VERSION"))
        .endpoint(inventory::RESTOCK.bind(state.clone(), restock))
        .endpoint(inventory::STOCK.bind(state.clone(), stock))
        .endpoint(inventory::RESERVE.bind(state.clone(), reserve))
        .endpoint(inventory::RELEASE.bind(state, release))
        .serve(nats, shutdown)
        .await?;
    consumers.stop().await
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

async fn reserve(
    inv: Arc<Inventory>,
    ctx: Context,
    req: Reserve,
) -> Result<Reservation, ServiceError> {
    let items = canonical_items(&req.items);
    if let Some(existing) = inv.reservations.get(&req.order_id).await? {
        return same_reservation(existing.value, &items);
    }
    // Take each sku in turn; on the first shortage give back what was taken.
    let mut taken: Vec<&Item> = Vec::new();
    for item in &items {
        let quantity = u64::from(item.quantity);
        let result = inv
            .stock
            .modify(&item.sku, |current| {
                let mut levels = current.unwrap_or_default();
                if levels.available < quantity {
                    return Err(ServiceError::conflict(format!(
                        "{}: {} available, {} requested",
                        item.sku, levels.available, quantity
                    ))
                    .with_details(serde_json::json!({
                        "sku": item.sku, "available": levels.available, "requested": quantity
                    })));
                }
                levels.available -= quantity;
                levels.reserved += quantity;
                Ok(levels)
            })
            .await;
        if let Err(error) = result {
            give_back(&inv, &taken).await;
            return Err(error);
        }
        taken.push(item);
    }
    let reservation = Reservation {
        order_id: req.order_id.clone(),
        items: items.clone(),
        status: ReservationStatus::Reserved,
    };
    match inv.reservations.create(&req.order_id, &reservation).await {
        Ok(_) => {}
        Err(StateError::AlreadyExists { .. }) => {
            // A concurrent identical request won: keep its reservation, not ours.
            give_back(&inv, &taken).await;
            let existing = inv.reservations.get(&req.order_id).await?;
            return existing
                .map(|e| same_reservation(e.value, &items))
                .unwrap_or_else(|| {
                    Err(ServiceError::conflict("reservation changed concurrently"))
                });
        }
        Err(e) => {
            give_back(&inv, &taken).await;
            return Err(e.into());
        }
    }
    let event = Event::new(reservation.clone())
        .id(format!("{}-reserved", req.order_id))
        .subject(req.order_id.clone())
        .trace(*ctx.trace());
    inv.events.publish(inventory::RESERVED, &event).await?;
    Ok(reservation)
}

async fn release(
    inv: Arc<Inventory>,
    ctx: Context,
    req: Release,
) -> Result<Reservation, ServiceError> {
    release_order(&inv, &req.order_id, Some(*ctx.trace())).await
}

/// Marks the reservation released (compare-and-set, so it happens once),
/// returns its stock and publishes `events.inventory.released`.
async fn release_order(
    inv: &Inventory,
    order_id: &str,
    trace: Option<switchboard::trace_context::TraceContext>,
) -> Result<Reservation, ServiceError> {
    let outcome = inv
        .reservations
        .transition(order_id, |reservation| {
            Ok(
                (reservation.status != ReservationStatus::Released).then(|| Reservation {
                    status: ReservationStatus::Released,
                    ..reservation.clone()
                }),
            )
        })
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("no reservation for {order_id}")))?;
    let released = match outcome {
        Transition::Unchanged(reservation) => return Ok(reservation),
        Transition::Changed(released) => released,
    };
    let items: Vec<&Item> = released.items.iter().collect();
    give_back(inv, &items).await;
    let mut event = Event::new(released.clone())
        .id(format!("{order_id}-released"))
        .subject(order_id.to_owned());
    if let Some(trace) = trace {
        event = event.trace(trace);
    }
    inv.events.publish(inventory::RELEASED, &event).await?;
    Ok(released)
}

async fn give_back(inv: &Inventory, items: &[&Item]) {
    for item in items {
        let quantity = u64::from(item.quantity);
        let result = inv
            .stock
            .modify(&item.sku, |current| {
                let mut levels = current.unwrap_or_default();
                levels.reserved = levels.reserved.saturating_sub(quantity);
                levels.available += quantity;
                Ok(levels)
            })
            .await;
        if let Err(error) = result {
            tracing::error!(sku = %item.sku, quantity, %error, "cannot give back reserved stock");
        }
    }
}

/// The same order asked twice gets the same answer; other items are a conflict.
fn same_reservation(existing: Reservation, items: &[Item]) -> Result<Reservation, ServiceError> {
    if existing.status == ReservationStatus::Reserved && existing.items == items {
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
