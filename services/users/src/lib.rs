//! The `users` service: create users (unique e-mail) and look them up.
//! Publishes `events.users.created`. State: KV bucket `users`: users by id,
//! and `email.<address>` → id. A user, its address and its event are one
//! transaction, so two requests cannot take one address and a crash cannot
//! leave an address taken by nobody or a user without its event.

use std::sync::Arc;

use async_nats::jetstream;
use contracts::users::{self, CreateUser, GetUser, User, UserCreated};
use switchboard::ServiceError;
use switchboard::app::AppError;
use switchboard::contract::Contract;
use switchboard::events::{Event, Publisher};
use switchboard::service::Context;
use switchboard::shutdown::Shutdown;
use switchboard::state::{StateError, StateStore};

/// The view of addresses in the users bucket.
const EMAILS: &str = "email";

struct Users {
    events: Publisher,
    by_id: StateStore<User>,
    emails: StateStore<String>,
}

/// What the users service is and needs: its one declaration.
pub fn contract() -> Contract {
    Contract::new("users", env!("CARGO_PKG_VERSION"))
        .description("User accounts: create and look up users")
        .endpoint(&users::CREATE)
        .endpoint(&users::GET)
        .stream(users::stream())
        .publishes::<UserCreated>(users::CREATED, "A user was created")
        .bucket(users::BUCKET)
}

/// Serves until `shutdown`, then drains.
///
/// # Errors
///
/// When its stream, buckets or endpoints cannot be set up.
pub async fn run(nats: async_nats::Client, shutdown: Shutdown) -> Result<(), AppError> {
    let js = jetstream::new(nats.clone());
    let by_id = StateStore::open(&js, users::BUCKET, switchboard::replication::replicas()?).await?;
    let state = Arc::new(Users {
        events: Publisher::new(js.clone(), "users"),
        emails: by_id.view(EMAILS),
        by_id,
    });
    contract()
        .service()
        .relay(&state.by_id)
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
    let user = User {
        id: id.clone(),
        name: req.name,
        email: email.clone(),
        created_at: now(),
    };
    let event = Event::new(UserCreated {
        user_id: id.clone(),
        name: user.name.clone(),
        email: email.clone(),
    })
    .id(format!("{id}-created"))
    .subject(id.clone())
    .trace(*ctx.trace());
    let mut tx = users.by_id.transaction();
    tx.create(&users.by_id, &id, &user)?
        .create(&users.emails, &email, &id)?
        .publish(&users.events, users::CREATED, &event)?;
    match tx.commit().await {
        Ok(()) => Ok(user),
        // The id is new, so the address is what is taken.
        Err(StateError::Conflict { .. }) => {
            Err(ServiceError::conflict(format!("{email} is already used")))
        }
        Err(e) => Err(e.into()),
    }
}

async fn get(users: Arc<Users>, _ctx: Context, req: GetUser) -> Result<User, ServiceError> {
    let missing = || ServiceError::not_found(format!("no user {}", req.id));
    users.by_id.fetch(&req.id, missing).await
}

fn now() -> String {
    switchboard::events::now_rfc3339()
}
