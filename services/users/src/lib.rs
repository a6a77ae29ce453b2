//! The `users` service: create users (unique e-mail) and look them up.
//! Publishes `events.users.created`. State: KV buckets `users` (by id) and
//! `users-emails` (e-mail → id, created atomically so two requests cannot
//! take one address).

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use contracts::users::{self, CreateUser, GetUser, User, UserCreated};
use switchboard::ServiceError;
use switchboard::app::AppError;
use switchboard::events::{Event, Publisher};
use switchboard::service::{Context, Endpoint, Service};
use switchboard::state::{StateError, StateStore};

struct Users {
    by_id: StateStore<User>,
    emails: StateStore<String>,
    events: Publisher,
}

/// Serves until `shutdown`, then drains.
///
/// # Errors
///
/// When its stream, buckets or endpoints cannot be set up.
pub async fn run(
    nats: async_nats::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let js = jetstream::new(nats.clone());
    users::stream().ensure(&js).await?;
    let state = Arc::new(Users {
        by_id: StateStore::open(&js, "users", 1).await?,
        emails: StateStore::open(&js, "users-emails", 1).await?,
        events: Publisher::new(js, "users"),
    });
    let service = Service::builder("users", env!("CARGO_PKG_VERSION"))
        .description("User accounts: create and look up users")
        .publishes::<UserCreated>(users::CREATED, "A user was created")
        .endpoint(
            Endpoint::with_state("create", state.clone(), create)
                .http("POST", "/users")
                .http_status(201)
                .description("Create a user (unique e-mail)"),
        )
        .endpoint(
            Endpoint::with_state("get", state, get)
                .http("GET", "/users/{id}")
                .description("Look up a user by id")
                .idempotent(true),
        )
        .start(nats)
        .await?;
    shutdown.await;
    service.drain().await;
    Ok(())
}

async fn create(users: Arc<Users>, ctx: Context, req: CreateUser) -> Result<User, ServiceError> {
    let name = req.name.trim();
    if name.is_empty() {
        return Err(ServiceError::bad_request("name must not be empty"));
    }
    let email = req.email.trim().to_lowercase();
    if !is_email(&email) {
        return Err(ServiceError::bad_request(format!(
            "{:?} is not an e-mail address",
            req.email
        )));
    }
    let id = switchboard::state::new_id("u");
    match users.emails.create(&email, &id).await {
        Ok(_) => {}
        Err(StateError::AlreadyExists { .. }) => {
            return Err(ServiceError::conflict(format!("{email} is already used")));
        }
        Err(e) => return Err(e.into()),
    }
    let user = User {
        id: id.clone(),
        name: name.to_owned(),
        email: email.clone(),
        created_at: now(),
    };
    users.by_id.create(&id, &user).await?;
    let event = Event::new(UserCreated {
        user_id: id.clone(),
        name: user.name.clone(),
        email,
    })
    .id(format!("{id}-created"))
    .subject(id)
    .trace(*ctx.trace());
    users
        .events
        .publish(users::CREATED, &event)
        .await
        .map_err(|e| ServiceError::unavailable(e.to_string()))?;
    Ok(user)
}

async fn get(users: Arc<Users>, _ctx: Context, req: GetUser) -> Result<User, ServiceError> {
    users
        .by_id
        .get(&req.id)
        .await?
        .map(|v| v.value)
        .ok_or_else(|| ServiceError::not_found(format!("no user {}", req.id)))
}

/// A pragmatic check: one `@`, something before it, a dotted domain after
/// it, no spaces, at most 254 characters.
fn is_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    email.len() <= 254
        && !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

fn now() -> String {
    switchboard::events::now_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::is_email;

    #[test]
    fn emails() {
        assert!(is_email("ann@example.com"));
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "ann@example",
            "ann@@example.com",
            "a nn@example.com",
            "ann@.com",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }
}
