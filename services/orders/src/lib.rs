//! The `orders` service: create (checks the user, holds stock), look up
//! and cancel orders. Publishes `events.orders.created` and
//! `events.orders.cancelled` through the bucket's outbox: an order and its
//! event are one transaction, so neither exists without the other. State:
//! KV `orders`.
//!
//! Placing an order is a saga: `users.get` → `inventory.reserve` (a hold
//! that expires) → the order and its `created` event, committed together.
//! Inventory makes the hold permanent when it sees `created`; a hold whose
//! order never appears (this service died, the caller gave up) expires, and
//! inventory asks `orders.resolve`, which closes the id as `rejected` with
//! a compare-and-set — so either the order was stored first (the hold is
//! confirmed) or it never will be (the hold is released). Nothing is left
//! half done.

use std::sync::Arc;

use async_nats::jetstream;
use contracts::inventory::{self, Reservation, Reserve};
use contracts::orders::{self, CreateOrder, Order, OrderRef, OrderStatus, Resolution};
use contracts::users::{self, GetUser, User};
use switchboard::ServiceError;
use switchboard::app::AppError;
use switchboard::client::CallError;
use switchboard::contract::Contract;
use switchboard::events::{Event, Publisher};
use switchboard::service::Context;
use switchboard::shutdown::Shutdown;
use switchboard::state::{StateError, StateStore, Transaction, Transition};

struct Orders {
    by_id: StateStore<Order>,
    events: Publisher,
}

/// What the orders service is and needs: its one declaration.
pub fn contract() -> Contract {
    Contract::new("orders", env!("CARGO_PKG_VERSION"))
        .description("Orders: create, look up and cancel orders")
        .endpoint(&orders::CREATE)
        .endpoint(&orders::GET)
        .endpoint(&orders::CANCEL)
        .endpoint(&orders::RESOLVE)
        .stream(orders::stream())
        .publishes::<Order>(orders::CREATED, "An order was confirmed")
        .publishes::<Order>(orders::CANCELLED, "An order was cancelled")
        .bucket(orders::BUCKET)
        .calls(users::GET.subject)
        .calls(inventory::RESERVE.subject)
}

/// Serves until `shutdown`, then drains.
///
/// # Errors
///
/// When its stream, bucket or endpoints cannot be set up.
pub async fn run(nats: async_nats::Client, shutdown: Shutdown) -> Result<(), AppError> {
    let js = jetstream::new(nats.clone());
    let state = Arc::new(Orders {
        events: Publisher::new(js.clone(), "orders"),
        by_id: StateStore::open(&js, orders::BUCKET, switchboard::replication::replicas()?).await?,
    });
    contract()
        .service()
        .relay(&state.by_id)
        .endpoint(orders::CREATE.bind(state.clone(), create))
        .endpoint(orders::GET.bind(state.clone(), get))
        .endpoint(orders::CANCEL.bind(state.clone(), cancel))
        .endpoint(orders::RESOLVE.bind(state, resolve))
        .serve(nats, shutdown)
        .await?;
    Ok(())
}

async fn create(
    orders: Arc<Orders>,
    ctx: Context,
    req: CreateOrder,
) -> Result<Order, ServiceError> {
    let user: Result<User, CallError> = ctx
        .call(
            users::GET.subject,
            &GetUser {
                id: req.user_id.clone(),
            },
        )
        .await;
    match user {
        Ok(_) => {}
        Err(CallError::Rejected(e)) if e.code == 404 => {
            return Err(ServiceError::not_found(format!(
                "unknown user {}",
                req.user_id
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let id = switchboard::state::new_id("o");
    let reservation: Reservation = ctx
        .call(
            inventory::RESERVE.subject,
            &Reserve {
                order_id: id.clone(),
                items: req.items.clone(),
            },
        )
        .await?;
    let order = Order {
        id: id.clone(),
        user_id: req.user_id,
        items: reservation.items,
        status: OrderStatus::Confirmed,
        created_at: switchboard::events::now_rfc3339(),
    };
    let mut tx = orders.by_id.transaction();
    tx.create(&orders.by_id, &id, &order)?;
    event(&orders, &ctx, orders::CREATED, "created", &order, &mut tx)?;
    match tx.commit().await {
        Ok(()) => Ok(order),
        // The id is new: only orders.resolve can have taken it, because the
        // hold expired first. The hold is released; nothing was placed.
        Err(StateError::Conflict { .. }) => Err(ServiceError::unavailable(format!(
            "order {id} took too long to place and was given up; try again"
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn get(orders: Arc<Orders>, _ctx: Context, req: OrderRef) -> Result<Order, ServiceError> {
    let missing = || ServiceError::not_found(format!("no order {}", req.id));
    let order = orders.by_id.fetch(&req.id, missing).await?;
    if order.status == OrderStatus::Rejected {
        return Err(missing());
    }
    Ok(order)
}

async fn cancel(orders: Arc<Orders>, ctx: Context, req: OrderRef) -> Result<Order, ServiceError> {
    let missing = || ServiceError::not_found(format!("no order {}", req.id));
    // The new status and its event are one transaction: a cancel that
    // returned (or died after committing) has its compensation on the way.
    let outcome = orders
        .by_id
        .transition_with(
            &req.id,
            |order| match order.status {
                OrderStatus::Rejected => Err(missing()),
                OrderStatus::Cancelled => Ok(None),
                OrderStatus::Confirmed => Ok(Some(Order {
                    status: OrderStatus::Cancelled,
                    ..order.clone()
                })),
            },
            |order, tx| event(&orders, &ctx, orders::CANCELLED, "cancelled", order, tx),
        )
        .await?
        .ok_or_else(missing)?;
    match outcome {
        Transition::Changed(order) | Transition::Unchanged(order) => Ok(order),
    }
}

/// Where an order stands for good; an id never stored becomes `rejected`
/// (compare-and-set create, so `create` cannot store it afterwards).
async fn resolve(
    orders: Arc<Orders>,
    _ctx: Context,
    req: OrderRef,
) -> Result<Resolution, ServiceError> {
    loop {
        if let Some(order) = orders.by_id.get(&req.id).await? {
            return Ok(Resolution {
                id: req.id,
                status: order.value.status,
            });
        }
        let rejected = Order {
            id: req.id.clone(),
            user_id: String::new(),
            items: Vec::new(),
            status: OrderStatus::Rejected,
            created_at: switchboard::events::now_rfc3339(),
        };
        match orders.by_id.create(&req.id, &rejected).await {
            Ok(_) => {
                tracing::info!(order = %req.id, "order never placed; its id is closed");
                return Ok(Resolution {
                    id: req.id,
                    status: OrderStatus::Rejected,
                });
            }
            // Stored meanwhile: read what it is.
            Err(StateError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Adds the order's event to `tx`, with an id derived from the order (a
/// second commit of the same fact is a duplicate, never a second event).
fn event(
    orders: &Orders,
    ctx: &Context,
    subject: &str,
    what: &str,
    order: &Order,
    tx: &mut Transaction,
) -> Result<(), StateError> {
    let event = Event::new(order.clone())
        .id(orders::event_id(&order.id, what))
        .subject(order.id.clone())
        .trace(*ctx.trace());
    tx.publish(&orders.events, subject, &event)?;
    Ok(())
}
