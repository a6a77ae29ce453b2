//! `orders.*` endpoints and `events.orders.*` events.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::events::StreamSpec;

use crate::Item;
use crate::limits::{ID_MAX, ID_PATTERN, ITEMS_MAX};
use switchboard::contract::EndpointContract;

/// `orders.create`.
pub const CREATE: EndpointContract<CreateOrder, Order> =
    EndpointContract::new("orders.create", "Place an order")
        .http("POST", "/orders", 201)
        .errors("400; 404 unknown user; 409 short of stock; 503 a dependency is down");
/// `orders.get`.
pub const GET: EndpointContract<OrderRef, Order> =
    EndpointContract::new("orders.get", "Look up an order")
        .idempotent()
        .http("GET", "/orders/{id}", 200)
        .errors("400; 404 unknown id");
/// `orders.cancel`.
pub const CANCEL: EndpointContract<OrderRef, Order> =
    EndpointContract::new("orders.cancel", "Cancel an order")
        .idempotent()
        .http("POST", "/orders/{id}/cancel", 200)
        .errors("400; 404 unknown id");
/// `orders.resolve` (internal: inventory asks it when a stock hold
/// expires before the order confirmed it).
pub const RESOLVE: EndpointContract<OrderRef, Resolution> = EndpointContract::new(
    "orders.resolve",
    "Decide an order whose stock hold expired: its status if it was placed, else rejected for good",
)
.idempotent()
.errors("400");
/// The KV bucket of orders by id.
pub const BUCKET: &str = "orders";
/// Published when an order was confirmed.
pub const CREATED: &str = "events.orders.created";
/// Published when an order was cancelled.
pub const CANCELLED: &str = "events.orders.cancelled";

/// The `ce-id` of an order's event (`what`: `created`, `cancelled`): one
/// per fact, so a second commit of it is a duplicate, and a consumer can
/// name the event an order's later one follows.
pub fn event_id(order_id: &str, what: &str) -> String {
    format!("{order_id}-{what}")
}

/// `orders.resolve` reply: where the order stands for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Resolution {
    /// Order id.
    pub id: String,
    /// `confirmed` or `cancelled` if it was placed; `rejected` if it was
    /// not and now never will be.
    pub status: OrderStatus,
}

/// The stream of order events.
pub fn stream() -> StreamSpec {
    StreamSpec::new("ORDERS", ["events.orders.>"])
}

/// `orders.create` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// Who orders.
    #[schemars(length(min = 1, max = ID_MAX), regex(pattern = ID_PATTERN))]
    pub user_id: String,
    /// What.
    #[schemars(length(min = 1, max = ITEMS_MAX))]
    pub items: Vec<Item>,
}

/// `orders.get` and `orders.cancel` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRef {
    /// Order id.
    #[schemars(length(min = 1, max = ID_MAX), regex(pattern = ID_PATTERN))]
    pub id: String,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Order {
    /// Order id.
    pub id: String,
    /// Who ordered.
    pub user_id: String,
    /// What.
    pub items: Vec<Item>,
    /// Where the order stands.
    pub status: OrderStatus,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// Where an order stands (`confirmed`, `cancelled`, `rejected` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Stock reserved, order stored.
    Confirmed,
    /// Cancelled; its stock is released.
    Cancelled,
    /// Never placed: its stock hold expired before the order was stored,
    /// and `orders.resolve` closed the id so it cannot be stored later.
    /// `orders.get` and `orders.cancel` answer 404 for it.
    Rejected,
}

/// `events.orders.created` / `events.orders.cancelled` data.
pub type OrderChanged = Order;
