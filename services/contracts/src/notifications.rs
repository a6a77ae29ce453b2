//! `notifications.*` endpoints.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits::{ID_MAX, ID_PATTERN};
use switchboard::contract::EndpointContract;

/// `notifications.list`.
pub const LIST: EndpointContract<ListNotifications, Notifications> =
    EndpointContract::new("notifications.list", "A user's notifications, oldest first")
        .idempotent()
        .http("GET", "/users/{user_id}/notifications", 200)
        .errors("400 breaks the limits");
/// The KV bucket of notifications by user id.
pub const BUCKET: &str = "notifications";

/// `notifications.list` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListNotifications {
    /// Whose notifications.
    #[schemars(length(min = 1, max = ID_MAX), regex(pattern = ID_PATTERN))]
    pub user_id: String,
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
    /// Oldest first.
    pub notifications: Vec<Notification>,
}
