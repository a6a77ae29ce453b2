//! Consumers that run beside a service and stop with it.
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
