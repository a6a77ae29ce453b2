//! Consumers that run beside a service and stop with it: event consumers,
//! outbox relays and deadline watchers.
//!
//! Here, with the service, because it joins the parts a service runs —
//! `events`' consumers, `outbox`'s relays, `state`'s deadline watches —
//! none of which should import the others for it. [`ServiceBuilder`]
//! (`consumer`, `relay`, `deadlines`) runs one for every service that
//! needs it; use it directly only without a service.
//!
//! [`ServiceBuilder`]: super::ServiceBuilder
//!
//! A service that also consumes events starts its consumers, serves its
//! endpoints until shutdown, drains them, and only then stops the
//! consumers (so a request in flight can still rely on what they do) and
//! reports the first consumer that failed. [`Consumers`] is that lifecycle,
//! once, for every service.
//!
//! A consumer or relay that ends with an error before shutdown (its set-up
//! met a leader election, a timeout, a stream another instance was still
//! creating) is logged at once and started again with a growing, jittered
//! delay: a service whose consumer silently stopped would look healthy
//! while its events pile up.
//!
//! ```no_run
//! # async fn demo(js: async_nats::jetstream::Context) -> Result<(), switchboard::app::AppError> {
//! use switchboard::events::{ConsumerSpec, ReceivedEvent};
//! use switchboard::service::Consumers;
//!
//! let mut consumers = Consumers::new(js);
//! consumers.spawn(
//!     ConsumerSpec::new("INVOICES", "mailer-invoices"),
//!     |event: ReceivedEvent<serde_json::Value>| async move { Ok(()) },
//! );
//! // … serve the service until shutdown …
//! consumers.stop().await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::AppError;
use crate::events::{ConsumerSpec, EventError, HandlerError, ReceivedEvent, consumer};
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
        let (js, handler) = (self.js.clone(), Arc::new(handler));
        let name = spec.durable.clone();
        self.running.push(tokio::spawn(restarting(
            name,
            self.stop.clone(),
            move |stop| {
                let handler = handler.clone();
                consumer::run(js.clone(), spec.clone(), move |event| handler(event), stop)
            },
        )));
    }

    /// Starts the outbox relay of `store`'s bucket (see
    /// [`outbox`](super::outbox)): the events its transactions commit get
    /// published, also those a crashed instance committed.
    pub fn relay<S>(&mut self, store: &StateStore<S>) {
        let (js, bucket) = (self.js.clone(), store.bucket().to_owned());
        self.running.push(tokio::spawn(restarting(
            format!("outbox relay of {bucket}"),
            self.stop.clone(),
            move |stop| crate::outbox::relay(js.clone(), bucket.clone(), stop),
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

/// Runs `start` until it ends without an error or `stop` is cancelled,
/// starting it again after each error (logged when it happens). The error
/// returned is the last one, if the consumer never ran cleanly to the end.
async fn restarting<F, Fut>(
    name: String,
    stop: CancellationToken,
    mut start: F,
) -> Result<(), EventError>
where
    F: FnMut(tokio_util::sync::WaitForCancellationFutureOwned) -> Fut,
    Fut: Future<Output = Result<(), EventError>>,
{
    // Exponential with jitter, 250 ms to 30 s, without end.
    let restart_delays = || {
        backon::BackoffBuilder::build(
            backon::ExponentialBuilder::new()
                .with_min_delay(std::time::Duration::from_millis(250))
                .with_max_delay(std::time::Duration::from_secs(30))
                .with_jitter()
                .without_max_times(),
        )
    };
    // Uptime after which an error counts as new (the delays start over).
    let stable_after = std::time::Duration::from_secs(30);
    let mut delays = restart_delays();
    loop {
        let started = tokio::time::Instant::now();
        let error = match start(stop.clone().cancelled_owned()).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if stop.is_cancelled() {
            return Err(error);
        }
        // A consumer that ran well for a while starts over with short delays.
        if started.elapsed() >= stable_after {
            delays = restart_delays();
        }
        let delay = delays.next().unwrap_or(std::time::Duration::from_secs(30));
        tracing::error!(consumer = %name, %error, ?delay, "consumer stopped with an error; starting it again");
        tokio::select! {
            () = stop.cancelled() => return Err(error),
            () = tokio::time::sleep(delay) => {}
        }
    }
}
