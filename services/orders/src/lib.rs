//! The `orders` service: create (checks the user, reserves stock), look up
//! and cancel orders. Publishes `events.orders.created` and
//! `events.orders.cancelled`, with ids derived from the order id so a
//! retried publish is a duplicate. State: KV `orders`.

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use contracts::inventory::{self, Reservation, Reserve};
use contracts::orders::{self, CreateOrder, Order, OrderRef, OrderStatus};
use contracts::users::{self, GetUser, User};
use switchboard::ServiceError;
use switchboard::app::AppError;
use switchboard::client::CallError;
use switchboard::events::{Event, Publisher};
use switchboard::service::{Context, Endpoint, Service};
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
pub async fn run(
    nats: async_nats::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let js = jetstream::new(nats.clone());
    orders::stream().ensure(&js).await?;
    let state = Arc::new(Orders {
        by_id: StateStore::open(&js, "orders", 1).await?,
        events: Publisher::new(js, "orders"),
    });
    Service::builder("orders", env!("CARGO_PKG_VERSION"))
        .description("Orders: create, look up and cancel orders")
        .publishes::<Order>(orders::CREATED, "An order was confirmed")
        .publishes::<Order>(orders::CANCELLED, "An order was cancelled")
        .endpoint(
            Endpoint::with_state("create", state.clone(), create)
                .http("POST", "/orders")
                .http_status(201)
                .description("Place an order"),
        )
        .endpoint(
            Endpoint::with_state("get", state.clone(), get)
                .http("GET", "/orders/{id}")
                .description("Look up an order")
                .idempotent(true),
        )
        .endpoint(
            Endpoint::with_state("cancel", state, cancel)
                .http("POST", "/orders/{id}/cancel")
                .description("Cancel an order")
                .idempotent(true),
        )
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
            users::GET,
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
            inventory::RESERVE,
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
    orders
        .by_id
        .get(&req.id)
        .await?
        .map(|v| v.value)
        .ok_or_else(|| ServiceError::not_found(format!("no order {}", req.id)))
}

async fn cancel(orders: Arc<Orders>, ctx: Context, req: OrderRef) -> Result<Order, ServiceError> {
    let outcome = orders
        .by_id
        .transition(&req.id, |order| {
            // Cancelling twice is fine and publishes once.
            Ok((order.status != OrderStatus::Cancelled).then(|| Order {
                status: OrderStatus::Cancelled,
                ..order.clone()
            }))
        })
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("no order {}", req.id)))?;
    match outcome {
        Transition::Unchanged(order) => Ok(order),
        Transition::Changed(order) => {
            publish(&orders, &ctx, orders::CANCELLED, "cancelled", &order).await?;
            Ok(order)
        }
    }
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
