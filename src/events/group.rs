//! Consumers that run beside a service and stop with it: event consumers,
//! outbox relays and deadline watchers.
//!
//! A service that also consumes events starts its consumers, serves its
//! endpoints until shutdown, drains them, and only then stops the
//! consumers (so a request in flight can still rely on what they do) and
//! reports the first consumer that failed. [`Consumers`] is that lifecycle,
//! once, for every service.
//!
//! ```no_run
//! # async fn demo(js: async_nats::jetstream::Context) -> Result<(), switchboard::app::AppError> {
//! use switchboard::events::{ConsumerSpec, Consumers, ReceivedEvent};
//!
//! let mut consumers = Consumers::new(js);
//! consumers.spawn(
//!     ConsumerSpec::new("ORDERS", "mailer-orders"),
//!     |event: ReceivedEvent<serde_json::Value>| async move { Ok(()) },
//! );
//! // … serve the service until shutdown …
//! consumers.stop().await?;
//! # Ok(()) }
//! ```

use std::future::Future;

use async_nats::jetstream;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ConsumerSpec, EventError, HandlerError, ReceivedEvent, consumer};
use crate::app::AppError;
use crate::state::{Deadline, StateStore, watch_deadlines};

/// Durable consumers sharing one stop signal.
#[derive(Debug)]
pub struct Consumers {
    js: jetstream::Context,
    stop: CancellationToken,
    running: Vec<JoinHandle<Result<(), EventError>>>,
}

impl Consumers {
    /// No consumers yet, on this JetStream context.
    pub fn new(js: jetstream::Context) -> Self {
        Consumers {
            js,
            stop: CancellationToken::new(),
            running: Vec::new(),
        }
    }

    /// Starts [`consumer::run`] for `spec` with `handler`, until [`Consumers::stop`].
    pub fn spawn<T, F, Fut>(&mut self, spec: ConsumerSpec, handler: F)
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(ReceivedEvent<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.running.push(tokio::spawn(consumer::run(
            self.js.clone(),
            spec,
            handler,
            self.stop.clone().cancelled_owned(),
        )));
    }

    /// Starts the outbox relay of `store`'s bucket (see
    /// [`outbox`](super::outbox)): the events its transactions commit get
    /// published, also those a crashed instance committed.
    pub fn relay<S>(&mut self, store: &StateStore<S>) {
        self.running.push(tokio::spawn(super::outbox::relay(
            self.js.clone(),
            store.bucket().to_owned(),
            self.stop.clone().cancelled_owned(),
        )));
    }

    /// Settles the records of `store` (a view) whose deadline passed, with
    /// `on_expired` (see [`watch_deadlines`]).
    pub fn deadlines<T, F, Fut>(&mut self, store: StateStore<T>, on_expired: F)
    where
        T: Deadline + DeserializeOwned + Clone + Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), crate::ServiceError>> + Send + 'static,
    {
        let stop = self.stop.clone().cancelled_owned();
        self.running.push(tokio::spawn(async move {
            watch_deadlines(store, on_expired, stop).await;
            Ok(())
        }));
    }

    /// Stops every consumer (each finishes the events it holds) and waits.
    ///
    /// # Errors
    ///
    /// The first consumer's failure, or [`AppError::Task`] for one that
    /// panicked.
    pub async fn stop(self) -> Result<(), AppError> {
        self.stop.cancel();
        let mut first = None;
        for running in self.running {
            let outcome = match running.await {
                Ok(result) => result.map_err(AppError::from),
                Err(join) => Err(AppError::from(join)),
            };
            if let Err(error) = outcome {
                tracing::error!(%error, "a consumer failed");
                first.get_or_insert(error);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
