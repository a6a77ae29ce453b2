//! The reference system's wire types: what each endpoint takes and
//! returns, what each event carries, and which stream keeps it — shared by
//! the services that serve and the services that call or consume them,
//! like a package of `.proto` files (inventory and orders call each other,
//! so the types cannot live in either crate).
//!
//! Callers and consumers use these types, so a field renamed in one service
//! is a compile error in the others rather than a runtime surprise. The
//! JSON field names are the public contract (`subjects.md`, the gateway).
//! What each service serves, calls, publishes, consumes and owns — its
//! `Contract` — is declared in the service's own crate.

pub mod inventory;
pub mod notifications;
pub mod orders;
pub mod users;

/// The limits of request fields, declared once. The contract types name
/// these in schemars attributes, so each limit is in the JSON Schema that
/// discovery, the gateway's OpenAPI document and `subjects.md` publish —
/// and the kit validates every request against that same schema before a
/// handler runs. Every id and sku stays far below the kit's KV key limit
/// (`switchboard::state::MAX_KEY_LEN`) even when encoded.
pub mod limits {
    /// Longest id (users, orders) and sku, in characters.
    pub const ID_MAX: u32 = 64;
    /// Ids and skus: letters, digits, `.`, `_`, `-`, starting with a letter
    /// or digit — safe in a URL path, a KV key and a subject token.
    pub const ID_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]*$";
    /// Longest display name, in characters.
    pub const NAME_MAX: u32 = 100;
    /// A name has no control characters and is not blank.
    pub const NAME_PATTERN: &str = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$";
    /// Longest e-mail address (RFC 5321's path limit).
    pub const EMAIL_MAX: u32 = 254;
    /// Printable ASCII, one `@`, a dotted domain that neither starts nor
    /// ends with a dot (`\x2d\x2f` keep `.` out of the domain's labels).
    pub const EMAIL_PATTERN: &str = r"^[!-?A-~]+@[!-\x2d\x2f-?A-~]+(\.[!-\x2d\x2f-?A-~]+)+$";
    /// Largest quantity of one line (restock or order).
    pub const QUANTITY_MAX: u32 = 1_000_000;
    /// Most lines in one order or reservation.
    pub const ITEMS_MAX: u32 = 100;
}

use limits::{ID_MAX, ID_PATTERN, QUANTITY_MAX};

/// One line of an order or a reservation.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Stock keeping unit.
    #[schemars(length(min = 1, max = ID_MAX), regex(pattern = ID_PATTERN))]
    pub sku: String,
    /// How many.
    #[schemars(range(min = 1, max = QUANTITY_MAX))]
    pub quantity: u32,
}

/// Order or reservation lines in one canonical order (by sku, then
/// quantity), so a retried request compares equal to the first.
pub fn canonical_items(items: &[Item]) -> Vec<Item> {
    let mut items = items.to_vec();
    items.sort_by(|a, b| (&a.sku, a.quantity).cmp(&(&b.sku, b.quantity)));
    items
}
