//! `users.*` endpoints and `events.users.*` events.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::events::StreamSpec;

/// `users.create`.
pub const CREATE: &str = "users.create";
/// `users.get`.
pub const GET: &str = "users.get";
/// Published when a user was created.
pub const CREATED: &str = "events.users.created";

/// The stream of user events.
pub fn stream() -> StreamSpec {
    StreamSpec::new("USERS", ["events.users.>"])
}

/// `users.create` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Display name (not empty).
    pub name: String,
    /// E-mail address (unique).
    pub email: String,
}

/// `users.get` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetUser {
    /// User id.
    pub id: String,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct User {
    /// User id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// `events.users.created` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserCreated {
    /// The new user's id.
    pub user_id: String,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
}
