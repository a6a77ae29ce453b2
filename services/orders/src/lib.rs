//! The `orders` service: create (checks the user, reserves stock), look up
//! and cancel orders. Publishes `events.orders.created` and
//! `events.orders.cancelled`, with ids derived from the order id so a
//! retried publish is a duplicate. State: KV `orders`.

use std::sync::Arc;

use async_nats::jetstream;
use contracts::inventory::{self, Reservation, Reserve};
use contracts::orders::{self, CreateOrder, Order, OrderRef, OrderStatus};
use contracts::users::{self, GetUser, User};
use switchboard::ServiceError;
use switchboard::app::AppError;
use switchboard::client::CallError;
use switchboard::events::{Event, Publisher};
use switchboard::service::Context;
use switchboard::shutdown::Shutdown;
use switchboard::state::{StateStore, Transition};

struct Orders {
    by_id: StateStore<Order>,
    events: Publisher,
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
        by_id: StateStore::open(&js, orders::BUCKET, 1).await?,
    });
    orders::service(env!("CARGO_PKG_VERSION"))
        .endpoint(orders::CREATE.bind(state.clone(), create))
        .endpoint(orders::GET.bind(state.clone(), get))
        .endpoint(orders::CANCEL.bind(state, cancel))
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
    orders.by_id.create(&id, &order).await?;
    publish(&orders, &ctx, orders::CREATED, "created", &order).await?;
    Ok(order)
}

async fn get(orders: Arc<Orders>, _ctx: Context, req: OrderRef) -> Result<Order, ServiceError> {
    let missing = || ServiceError::not_found(format!("no order {}", req.id));
    orders.by_id.fetch(&req.id, missing).await
}

async fn cancel(orders: Arc<Orders>, ctx: Context, req: OrderRef) -> Result<Order, ServiceError> {
    let outcome = orders
        .by_id
        .transition(&req.id, |order| {
            Ok((order.status != OrderStatus::Cancelled).then(|| Order {
                status: OrderStatus::Cancelled,
                ..order.clone()
            }))
        })
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("no order {}", req.id)))?;
    let order = match outcome {
        Transition::Changed(order) | Transition::Unchanged(order) => order,
    };
    // Also when it was already cancelled: the call that cancelled it may have
    // died before its event was stored, and this retry must not skip the
    // compensation. The event id is the same (`<order>-cancelled`), so
    // JetStream drops the copy within its duplicate window and the
    // consumers' idempotency after it: one effect either way.
    publish(&orders, &ctx, orders::CANCELLED, "cancelled", &order).await?;
    Ok(order)
}

async fn publish(
    orders: &Orders,
    ctx: &Context,
    subject: &str,
    what: &str,
    order: &Order,
) -> Result<(), ServiceError> {
    let event = Event::new(order.clone())
        .id(format!("{}-{what}", order.id))
        .subject(order.id.clone())
        .trace(*ctx.trace());
    orders
        .events
        .publish(subject, &event)
        .await
        .map(|_| ())
        .map_err(ServiceError::from)
}
