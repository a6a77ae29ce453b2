//! `users.*` endpoints and `events.users.*` events.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::events::StreamSpec;
use switchboard::service::{Service, ServiceBuilder};

use crate::endpoint::{EndpointContract, HttpRoute};
use crate::limits::{EMAIL_MAX, EMAIL_PATTERN, ID_MAX, ID_PATTERN, NAME_MAX, NAME_PATTERN};

/// `users.create`.
pub const CREATE: EndpointContract = EndpointContract {
    subject: "users.create",
    description: "Create a user (unique e-mail)",
    idempotent: false,
    http: Some(HttpRoute {
        method: "POST",
        path: "/users",
        status: 201,
    }),
    errors: "400 breaks the limits; 409 e-mail already used",
};
/// `users.get`.
pub const GET: EndpointContract = EndpointContract {
    subject: "users.get",
    description: "Look up a user by id",
    idempotent: true,
    http: Some(HttpRoute {
        method: "GET",
        path: "/users/{id}",
        status: 200,
    }),
    errors: "400; 404 unknown id",
};
/// The KV bucket of users by id.
pub const BUCKET: &str = "users";
/// Published when a user was created.
pub const CREATED: &str = "events.users.created";

/// The users service as declared: name, description, stream and events
/// (its endpoints are bound by the service: [`CREATE`], [`GET`]).
pub fn service(version: &str) -> ServiceBuilder {
    Service::builder("users", version)
        .description("User accounts: create and look up users")
        .stream(stream())
        .publishes::<UserCreated>(CREATED, "A user was created")
}

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
