//! `notifications.*` endpoints.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `notifications.list`.
pub const LIST: &str = "notifications.list";

/// `notifications.list` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListNotifications {
    /// Whose notifications.
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
