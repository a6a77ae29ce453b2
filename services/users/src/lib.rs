//! The `users` service: create users (unique e-mail) and look them up.
//! Publishes `events.users.created`. State: KV buckets `users` (by id) and
//! `users-emails` (e-mail → id, created atomically so two requests cannot
//! take one address).

use std::sync::Arc;

use async_nats::jetstream;
use contracts::users::{self, CreateUser, GetUser, User, UserCreated};
use switchboard::ServiceError;
use switchboard::app::AppError;
use switchboard::events::{Event, Publisher};
use switchboard::service::Context;
use switchboard::shutdown::Shutdown;
use switchboard::state::{StateError, StateStore};

struct Users {
    events: Publisher,
    by_id: StateStore<User>,
    emails: StateStore<String>,
}

/// Serves until `shutdown`, then drains.
///
/// # Errors
///
/// When its stream, buckets or endpoints cannot be set up.
pub async fn run(nats: async_nats::Client, shutdown: Shutdown) -> Result<(), AppError> {
    let js = jetstream::new(nats.clone());
    let state = Arc::new(Users {
        events: Publisher::new(js.clone(), "users"),
        by_id: StateStore::open(&js, users::BUCKET, 1).await?,
        emails: StateStore::open(&js, users::EMAILS_BUCKET, 1).await?,
    });
    users::service(env!("CARGO_PKG_VERSION"))
        .endpoint(users::CREATE.bind(state.clone(), create))
        .endpoint(users::GET.bind(state, get))
        .serve(nats, shutdown)
        .await?;
    Ok(())
}

async fn create(users: Arc<Users>, ctx: Context, req: CreateUser) -> Result<User, ServiceError> {
    // The limits (lengths, a name that is not blank, the shape of an
    // address) are the request schema's, checked before this runs.
    // Addresses are compared in lower case; the schema admits only ASCII.
    let email = req.email.to_ascii_lowercase();
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
        name: req.name,
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
    users.events.publish(users::CREATED, &event).await?;
    Ok(user)
}

async fn get(users: Arc<Users>, _ctx: Context, req: GetUser) -> Result<User, ServiceError> {
    let missing = || ServiceError::not_found(format!("no user {}", req.id));
    users.by_id.fetch(&req.id, missing).await
}

fn now() -> String {
    switchboard::events::now_rfc3339()
}
