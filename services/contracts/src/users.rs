//! `users.*` endpoints and `events.users.*` events.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::events::StreamSpec;

use crate::limits::{EMAIL_MAX, EMAIL_PATTERN, ID_MAX, ID_PATTERN, NAME_MAX, NAME_PATTERN};
use switchboard::contract::EndpointContract;

/// `users.create`.
pub const CREATE: EndpointContract<CreateUser, User> =
    EndpointContract::new("users.create", "Create a user (unique e-mail)")
        .http("POST", "/users", 201)
        .errors("400 breaks the limits; 409 e-mail already used");
/// `users.get`.
pub const GET: EndpointContract<GetUser, User> =
    EndpointContract::new("users.get", "Look up a user by id")
        .idempotent()
        .http("GET", "/users/{id}", 200)
        .errors("400; 404 unknown id");
/// The KV bucket of users by id.
pub const BUCKET: &str = "users";
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
    /// Display name (not blank).
    #[schemars(length(min = 1, max = NAME_MAX), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// E-mail address (unique, compared in lower case).
    #[schemars(length(min = 3, max = EMAIL_MAX), regex(pattern = EMAIL_PATTERN))]
    pub email: String,
}

/// `users.get` request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetUser {
    /// User id.
    #[schemars(length(min = 1, max = ID_MAX), regex(pattern = ID_PATTERN))]
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
