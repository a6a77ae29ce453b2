//! `notifications.*` endpoints.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits::{ID_MAX, ID_PATTERN};
use switchboard::contract::EndpointContract;

/// `notifications.list`.
pub const LIST: EndpointContract<ListNotifications, Notifications> = EndpointContract::new(
    "notifications.list",
    "A user's notifications, newest first, a page at a time",
)
.idempotent()
.http("GET", "/users/{user_id}/notifications", 200)
.errors("400 breaks the limits");
/// The KV bucket of notifications (a `state::History` per user).
pub const BUCKET: &str = "notifications";
/// The history's name in the bucket.
pub const HISTORY: &str = "by-user";

/// Notifications in one page unless the request asks for fewer or more.
pub const PAGE_DEFAULT: u32 = 50;
/// Most notifications in one page.
pub const PAGE_MAX: u32 = 200;
/// A cursor: the position to continue below, as `next_cursor` gave it.
pub const CURSOR_PATTERN: &str = r"^[0-9]{1,19}$";

/// `notifications.list` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListNotifications {
    /// Whose notifications.
    #[schemars(length(min = 1, max = ID_MAX), regex(pattern = ID_PATTERN))]
    pub user_id: String,
    /// How many at most (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = PAGE_MAX))]
    pub limit: Option<u32>,
    /// Continue after the page that gave this `next_cursor` (default: from
    /// the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 19), regex(pattern = CURSOR_PATTERN))]
    pub cursor: Option<String>,
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Notification {
    /// The event it was made from (one notification per event).
    pub event_id: String,
    /// The event type, e.g. `orders.created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whom it is for.
    pub user_id: String,
    /// What it says.
    pub text: String,
    /// RFC 3339 time of the event.
    pub at: String,
}

/// `notifications.list` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Notifications {
    /// Newest first.
    pub notifications: Vec<Notification>,
    /// The `cursor` of the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The user's notifications in all.
    pub total: u64,
}
