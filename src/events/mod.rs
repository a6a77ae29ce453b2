//! Durable events on JetStream, with the safe path as the default path.
//!
//! Events are CloudEvents 1.0 in binary content mode: the attributes travel
//! as `ce-*` headers, the body is the JSON data, and `Nats-Msg-Id` = `ce-id`
//! so JetStream drops a repeated publish of the same fact. Streams are
//! declared in code ([`StreamSpec`]) and never silently changed.
//! [`Publisher::publish`] returns after the stream acknowledged the event.
//! Consumers ([`consumer::run`]) ack, nak with backoff, or dead-letter
//! according to the handler's result, and can make the effect exactly-once
//! per event id ([`Idempotency`]). Dead letters keep everything needed to
//! understand and replay them ([`DeadLetters`]). Events that must not exist
//! without a state change (or the change without them) are committed with
//! it in a [`Transaction`](crate::state::Transaction) and published by the
//! bucket's [`outbox`] relay.
//!
//! ```no_run
//! use std::time::Duration;
//! use switchboard::events::{self, ConsumerSpec, Event, HandlerError, Publisher, ReceivedEvent, StreamSpec};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderCreated { order_id: String }
//!
//! # async fn demo(nats: async_nats::Client) -> Result<(), events::EventError> {
//! let js = async_nats::jetstream::new(nats);
//! StreamSpec::new("INVOICES", ["events.invoices.>"]).ensure(&js).await?;
//!
//! let publisher = Publisher::new(js.clone(), "invoices");
//! let event = Event::new(OrderCreated { order_id: "o-1".into() }).id("o-1-created");
//! let stored = publisher.publish("events.invoices.created", &event).await?;
//! assert!(!stored.duplicate);
//!
//! let spec = ConsumerSpec::new("INVOICES", "mailer-invoices").idempotent(Duration::from_secs(600));
//! events::consumer::run(js, spec, |event: ReceivedEvent<OrderCreated>| async move {
//!     if event.data.order_id.is_empty() {
//!         return Err(HandlerError::permanent("order without id"));
//!     }
//!     Ok(())
//! }, switchboard::shutdown::signal()).await?;
//! # Ok(()) }
//! ```

pub(crate) mod ack;
pub mod consumer;
mod dead_letter;
pub mod envelope;
mod error;
mod event;
pub(crate) mod group_commit;
mod idempotency;
pub mod live;
pub mod partition;
mod publisher;
pub mod signal;
mod stream;

pub use consumer::{ConsumerSpec, HandlerError};
pub use dead_letter::{DLQ_STREAM, DeadLetter, DeadLetters, dead_letter_subject};
pub use error::EventError;
pub use event::{Delivery, Event, ReceivedEvent};
pub use group_commit::GroupCommitConfig;
pub use idempotency::{CLAIM_LEASE, Claim, Idempotency};
pub use publisher::{
    AtomicBatch, BatchPublisher, MAX_ATOMIC_BATCH, Published, Publisher, now_rfc3339,
};
pub use stream::{StreamSpec, StreamStatus};
