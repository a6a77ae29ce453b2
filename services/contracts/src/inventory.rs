//! `inventory.*` endpoints and `events.inventory.*` events.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::events::StreamSpec;

use crate::Item;
use crate::limits::{ID_MAX, ID_PATTERN, ITEMS_MAX, QUANTITY_MAX};
use switchboard::contract::EndpointContract;

/// `inventory.restock`.
pub const RESTOCK: EndpointContract<Restock, Stock> =
    EndpointContract::new("inventory.restock", "Add stock of a sku")
        .http("POST", "/inventory/{sku}/restock", 200)
        .errors("400 breaks the limits");
/// `inventory.stock`.
pub const STOCK: EndpointContract<GetStock, Stock> =
    EndpointContract::new("inventory.stock", "Stock of a sku")
        .idempotent()
        .http("GET", "/inventory/{sku}", 200)
        .errors("400; 404 unknown sku");
/// `inventory.reserve` (internal: orders calls it).
pub const RESERVE: EndpointContract<Reserve, Reservation> = EndpointContract::new(
    "inventory.reserve",
    "Hold all items of an order, or none, until the order is confirmed",
)
.idempotent()
.errors("400; 409 an item is short (nothing reserved)");
/// `inventory.release` (internal: compensation).
pub const RELEASE: EndpointContract<Release, Reservation> =
    EndpointContract::new("inventory.release", "Give an order's reservation back")
        .idempotent()
        .errors("400; 404 no reservation");
/// The KV bucket of stock levels by sku, and of reservations by order id
/// under `reservation.<order id>` (one bucket, so that stock and
/// reservation change in one transaction).
pub const BUCKET: &str = "inventory";
/// The view of reservations in [`BUCKET`].
pub const RESERVATIONS: &str = "reservation";
/// How long a reservation is held for an order that has not been
/// confirmed (`events.orders.created`) before inventory asks orders to
/// resolve it (`INVENTORY_HOLD_MS` overrides).
pub const HOLD: std::time::Duration = std::time::Duration::from_secs(10);
/// Published when an order's items were reserved.
pub const RESERVED: &str = "events.inventory.reserved";
/// Published when an order's reservation was released.
pub const RELEASED: &str = "events.inventory.released";

/// The stream of inventory events.
pub fn stream() -> StreamSpec {
    StreamSpec::new("INVENTORY", ["events.inventory.>"])
}

/// `inventory.restock` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    /// Stock keeping unit.
    #[schemars(length(min = 1, max = ID_MAX), regex(pattern = ID_PATTERN))]
    pub sku: String,
    /// Units added.
    #[schemars(range(min = 1, max = QUANTITY_MAX))]
    pub quantity: u32,
}

/// `inventory.stock` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetStock {
    /// Stock keeping unit.
    #[schemars(length(min = 1, max = ID_MAX), regex(pattern = ID_PATTERN))]
    pub sku: String,
}

/// Stock of one sku.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Stock {
    /// Stock keeping unit.
    pub sku: String,
    /// Units free to reserve.
    pub available: u64,
    /// Units held by reservations.
    pub reserved: u64,
}

/// `inventory.reserve` request: all items or none.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// The order the reservation is for (idempotency key).
    #[schemars(length(min = 1, max = ID_MAX), regex(pattern = ID_PATTERN))]
    pub order_id: String,
    /// What to reserve.
    #[schemars(length(min = 1, max = ITEMS_MAX))]
    pub items: Vec<Item>,
}

/// `inventory.release` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The order whose reservation to release.
    #[schemars(length(min = 1, max = ID_MAX), regex(pattern = ID_PATTERN))]
    pub order_id: String,
}

/// A reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Reservation {
    /// The order.
    pub order_id: String,
    /// What is (or was) reserved.
    pub items: Vec<Item>,
    /// Held, reserved for good, or given back.
    pub status: ReservationStatus,
    /// While `held`: when the hold expires (RFC 3339) unless the order is
    /// confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Whether a reservation holds its stock (`held`, `reserved`, `released`
/// on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReservationStatus {
    /// The stock is held for an order being placed, until `expires_at`.
    Held,
    /// The stock is held for a confirmed order.
    Reserved,
    /// The stock was given back.
    Released,
}

impl switchboard::state::Deadline for Reservation {
    /// A hold must be confirmed or released by `expires_at`; a reserved or
    /// released reservation is settled. An unreadable time counts as
    /// expired (inventory then asks orders, which is always safe).
    fn deadline(&self) -> Option<std::time::SystemTime> {
        if self.status != ReservationStatus::Held {
            return None;
        }
        let at = self
            .expires_at
            .as_deref()
            .and_then(switchboard::state::parse_time);
        Some(at.unwrap_or(std::time::UNIX_EPOCH))
    }
}

/// `events.inventory.reserved` / `events.inventory.released` data.
pub type ReservationChanged = Reservation;
