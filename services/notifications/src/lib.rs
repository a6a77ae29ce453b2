//! The `notifications` service: one notification per user and order event,
//! recorded exactly once (the kit's idempotency helper, and the event id as
//! the entry's id), listed per user newest first, a page at a time.
//! State: KV `notifications`, a `state::History` per user — one key per
//! notification, so a busy user's history never makes a write grow.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use contracts::notifications::{self, ListNotifications, Notification, Notifications};
use contracts::orders::{self, OrderChanged, OrderStatus};
use contracts::users::{self, UserCreated};
use switchboard::ServiceError;

mod legacy;
use switchboard::app::AppError;
use switchboard::contract::Contract;
use switchboard::events::{ConsumerSpec, HandlerError, ReceivedEvent};
use switchboard::service::Context;
use switchboard::shutdown::Shutdown;
use switchboard::state::{History, StateStore};

type Store = History<Notification>;

/// How long processed event ids are remembered.
const REMEMBER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The consumer of new users (a welcome per user).
fn users_consumer() -> ConsumerSpec {
    ConsumerSpec::new(users::stream().name, "notifications-users")
        .filter([users::CREATED])
        .idempotent(REMEMBER)
}

/// Partitions of the order events: each instance of notifications holds
/// some (more instances than this stand by).
const ORDER_PARTITIONS: u32 = 8;
/// Handlers per partition: 16 for an instance holding all 8, as an
/// unkeyed consumer's default.
const HANDLERS_PER_PARTITION: usize = 2;

/// The consumer of order events, keyed by order: an order's "confirmed"
/// is never listed after its "cancelled", however many instances run. A
/// short ack wait (kept alive while a handler runs) bounds how long a
/// crashed instance's partitions wait for its unfinished events.
fn orders_consumer() -> ConsumerSpec {
    ConsumerSpec::new(orders::stream().name, "notifications-orders")
        .filter([orders::CREATED, orders::CANCELLED])
        .keyed(ORDER_PARTITIONS)
        .concurrency(HANDLERS_PER_PARTITION)
        .ack_wait(Duration::from_secs(5))
        .idempotent(REMEMBER)
}

/// What the notifications service is and needs: its one declaration.
pub fn contract() -> Contract {
    Contract::new("notifications", env!("CARGO_PKG_VERSION"))
        .description("Notifications recorded from user and order events")
        .endpoint(&notifications::LIST)
        .bucket(notifications::BUCKET)
        .consumer(&users_consumer())
        .consumer(&orders_consumer())
}

/// Consumes and serves until `shutdown`, then drains.
///
/// # Errors
///
/// When its bucket, consumers or endpoints cannot be set up.
pub async fn run(nats: async_nats::Client, shutdown: Shutdown) -> Result<(), AppError> {
    let js = jetstream::new(nats.clone());
    let bucket: StateStore<serde_json::Value> = StateStore::open(
        &js,
        notifications::BUCKET,
        switchboard::replication::replicas()?,
    )
    .await?;
    let store: Arc<Store> = Arc::new(History::new(&bucket, notifications::HISTORY));
    legacy::migrate(&js, &store).await?;
    let on_users = store.clone();
    let on_orders = store.clone();
    contract()
        .service()
        .consumer(
            users_consumer(),
            move |event: ReceivedEvent<UserCreated>| {
                let store = on_users.clone();
                async move {
                    let text = format!("Welcome, {}!", event.data.name);
                    record(&store, &event, &event.data.user_id, text).await
                }
            },
        )
        .consumer(
            orders_consumer(),
            move |event: ReceivedEvent<OrderChanged>| {
                let store = on_orders.clone();
                async move {
                    let order = &event.data;
                    let text = match order.status {
                        OrderStatus::Cancelled => format!("Order {} was cancelled", order.id),
                        OrderStatus::Confirmed => format!(
                            "Order {} is confirmed ({} items)",
                            order.id,
                            order.items.len()
                        ),
                        // Orders never publishes an event for an id it closed
                        // without placing an order.
                        OrderStatus::Rejected => {
                            return Err(HandlerError::permanent(format!(
                                "order {} was never placed; no event expected",
                                order.id
                            )));
                        }
                    };
                    record(&store, &event, &order.user_id, text).await
                }
            },
        )
        .endpoint(notifications::LIST.bind(store, list))
        .serve(nats, shutdown)
        .await?;
    Ok(())
}

async fn record<T>(
    store: &Store,
    event: &ReceivedEvent<T>,
    user_id: &str,
    text: String,
) -> Result<(), HandlerError> {
    let notification = Notification {
        event_id: event.attributes.id.clone(),
        kind: event.attributes.event_type.clone(),
        user_id: user_id.to_owned(),
        text,
        at: event.attributes.time.clone(),
    };
    // The event id is the entry's id: an event handled twice (its handler
    // crashed before its idempotency record said done) adds nothing.
    store
        .append(user_id, &notification.event_id, &notification)
        .await
        .map(|_| ())
        // A full store waits in place; a conflict that kept losing retries.
        .map_err(HandlerError::from)
}

async fn list(
    store: Arc<Store>,
    _ctx: Context,
    req: ListNotifications,
) -> Result<Notifications, ServiceError> {
    // The schema bounds both (the kit validated them); a cursor of 19
    // digits can still overflow.
    let before = match &req.cursor {
        Some(cursor) => Some(cursor.parse::<u64>().map_err(|_| {
            ServiceError::bad_request(format!("cursor {cursor:?} is not one of ours"))
        })?),
        None => None,
    };
    let limit = req.limit.unwrap_or(notifications::PAGE_DEFAULT);
    let page = store.page(&req.user_id, before, limit as usize).await?;
    Ok(Notifications {
        notifications: page.entries,
        next_cursor: page.next.map(|n| n.to_string()),
        total: page.total,
    })
}
