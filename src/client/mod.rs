//! Typed calls that fail fast and predictably.
//!
//! [`Client::call`] sends a typed request to a subject and returns the typed
//! reply or a [`CallError`] whose kind says what happened. Every call has a
//! deadline that travels with the request (each hop uses what is left), a
//! `traceparent`, retries only where they are safe (no responders and
//! transport failures always; timeouts only for idempotent calls) with
//! exponential, jittered backoff bounded by a shared [`RetryBudget`], and a
//! circuit breaker per subject. A subject the connection's user may not
//! publish to fails at once as [`CallError::PermissionDenied`] (see
//! [`refusals`](crate::refusals)), not as a timeout.
//!
//! ```no_run
//! # async fn demo(nats: async_nats::Client) -> Result<(), switchboard::client::CallError> {
//! use switchboard::client::{Client, CallOptions};
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize)]
//! struct GetUser { id: String }
//! #[derive(serde::Deserialize)]
//! struct User { id: String, name: String }
//!
//! let client = Client::new(nats);
//! let user: User = client.call("accounts.get", &GetUser { id: "u1".into() }).await?;
//! let again: User = client
//!     .call_with("accounts.get", &GetUser { id: "u1".into() },
//!                CallOptions::default().timeout(Duration::from_millis(200)).idempotent(true))
//!     .await?;
//! # Ok(()) }
//! ```

mod breaker;
mod budget;
mod error;
mod options;

use std::sync::Arc;

use async_nats::RequestErrorKind;
use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::codec::{self, Encoding};
use crate::refusals::Operation;
use crate::telemetry::Hop;
use crate::trace_context::TraceContext;

pub use breaker::{BreakerConfig, BreakerSnapshot, BreakerState, Breakers};
pub use budget::{RetryBudget, RetryBudgetConfig};
pub use error::CallError;
pub use options::CallOptions;

/// A NATS client with deadlines, retries, a retry budget and breakers.
/// Cheap to clone (one reference count: every request handler gets one);
/// clones share the connection, breakers and budget.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    defaults: CallOptions,
}

#[derive(Debug)]
struct Shared {
    nats: async_nats::Client,
    breakers: Breakers,
    budget: RetryBudget,
}

impl Client {
    /// Wraps a connection with default settings.
    pub fn new(nats: async_nats::Client) -> Self {
        Client::with_config(nats, BreakerConfig::default(), RetryBudgetConfig::default())
    }

    /// Wraps a connection with the given breaker and budget settings.
    pub fn with_config(
        nats: async_nats::Client,
        breaker: BreakerConfig,
        budget: RetryBudgetConfig,
    ) -> Self {
        Client {
            shared: Arc::new(Shared {
                nats,
                breakers: Breakers::new(breaker),
                budget: RetryBudget::new(budget),
            }),
            defaults: CallOptions::default(),
        }
    }

    /// Replaces the options [`Client::call`] uses.
    pub fn with_defaults(mut self, defaults: CallOptions) -> Self {
        self.defaults = defaults;
        self
    }

    /// The underlying connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.shared.nats
    }

    /// The circuit breakers.
    pub fn breakers(&self) -> &Breakers {
        &self.shared.breakers
    }

    /// The retry budget.
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.shared.budget
    }

    /// Calls `subject` with the default options.
    ///
    /// # Errors
    ///
    /// A [`CallError`] naming what failed.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        self.call_with(subject, request, self.defaults.clone())
            .await
    }

    /// Calls `subject` with explicit options.
    ///
    /// # Errors
    ///
    /// A [`CallError`] naming what failed.
    pub async fn call_with<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        request: &Req,
        options: CallOptions,
    ) -> Result<Resp, CallError> {
        let decode_error = |source| CallError::Decode {
            subject: subject.to_owned(),
            source,
        };
        let payload = options.encoding.encode(request).map_err(decode_error)?;
        let (reply, encoding) = self.call_encoded(subject, payload, options).await?;
        encoding.decode(&reply).map_err(decode_error)
    }

    /// [`Client::call_with`] for a body that is already JSON, returning the
    /// reply's body as it came: for code that passes JSON through without
    /// looking inside (an HTTP front end), which saves a parse and a
    /// re-encode each way. Deadline, trace, retries and breaker as for
    /// typed calls.
    ///
    /// # Errors
    ///
    /// A [`CallError`] naming what failed (`Decode` only for a reply whose
    /// `Content-Type` names an encoding this kit does not speak: nothing
    /// is decoded; no `Accept` is sent, so services answer JSON).
    pub async fn call_bytes(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        options: CallOptions,
    ) -> Result<bytes::Bytes, CallError> {
        let options = CallOptions {
            encoding: Encoding::Json,
            ..options
        };
        self.call_encoded(subject, payload, options)
            .await
            .map(|(reply, _)| reply)
    }

    /// A call with a payload already in `options.encoding`: the reply's
    /// payload and its encoding.
    async fn call_encoded(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        options: CallOptions,
    ) -> Result<(bytes::Bytes, Encoding), CallError> {
        // A subject the server would refuse by closing the connection
        // (taking every other call on it along) is this call's error alone.
        if let Err(e) = crate::limits::check_subject(subject) {
            return Err(CallError::Invalid {
                subject: crate::limits::preview(subject),
                message: e.to_string(),
            });
        }
        let started = Instant::now();
        let deadline = options.effective_deadline(started);
        let hop = Hop::client(subject, options.trace);
        let result = self
            .call_traced(subject, payload, &options, deadline, &hop.trace, &hop)
            .await;
        if let Err(error) = &result {
            hop.fail(&error.error_type(), &error.to_string());
        }
        result
    }

    /// [`Client::call_bytes`]'s attempts and retries, within the call's span.
    async fn call_traced(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        options: &CallOptions,
        deadline: Instant,
        trace: &TraceContext,
        hop: &Hop,
    ) -> Result<(bytes::Bytes, Encoding), CallError> {
        // Built on the first failure: most calls never need it.
        let mut delays = None;
        let breakers = &self.shared.breakers;
        let budget = &self.shared.budget;
        budget.deposit();
        loop {
            // Each attempt may be capped so an idempotent call has time to retry.
            let attempt_deadline = options
                .attempt_timeout
                .map_or(deadline, |t| deadline.min(Instant::now() + t));
            let outcome = self
                .attempt(
                    subject,
                    payload.clone(),
                    attempt_deadline,
                    trace,
                    options.encoding,
                )
                .await;
            let error = match outcome {
                Ok(reply) => {
                    breakers.record(subject, true);
                    return Ok(reply);
                }
                Err(error) => error,
            };
            if !matches!(error, CallError::CircuitOpen { .. }) {
                breakers.record(subject, !error.is_target_failure());
            }
            let retryable = match &error {
                CallError::NoResponders { .. } | CallError::Transport { .. } => true,
                CallError::TimedOut { .. } => options.idempotent,
                _ => false,
            };
            if !retryable {
                return Err(error);
            }
            let delays = delays.get_or_insert_with(|| {
                ExponentialBuilder::new()
                    .with_min_delay(options.retry_min_delay)
                    .with_max_delay(options.retry_max_delay)
                    .with_jitter()
                    .with_max_times(options.max_retries as usize)
                    .build()
            });
            let Some(delay) = delays.next() else {
                return Err(error);
            };
            if Instant::now() + delay >= deadline || !budget.try_withdraw() {
                return Err(error);
            }
            tracing::debug!(%subject, ?delay, %error, "retrying");
            hop.event(
                "retry",
                &[
                    ("error.type", error.error_type().into_owned()),
                    ("exception.message", error.to_string()),
                    ("switchboard.retry.delay_ms", delay.as_millis().to_string()),
                ],
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One request; the reply's payload and its encoding, or the
    /// classified failure.
    async fn attempt(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        deadline: Instant,
        trace: &TraceContext,
        encoding: Encoding,
    ) -> Result<(bytes::Bytes, Encoding), CallError> {
        if !self.shared.breakers.allow(subject) {
            return Err(CallError::CircuitOpen {
                subject: subject.to_owned(),
            });
        }
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        let timed_out = || CallError::TimedOut {
            subject: subject.to_owned(),
            waited: remaining,
        };
        if remaining.is_zero() {
            return Err(timed_out());
        }
        let request = async_nats::Request::new()
            .payload(payload)
            .headers(codec::request_headers_as(remaining, trace, encoding))
            .timeout(Some(remaining));
        // The patched async-nats fails a request whose publish the server
        // refused at once, with the server's words; with the crates.io
        // one, the call watches the connection's error events.
        // Made before the publish: the refusal the server reports for this
        // call can only be one reported after it.
        let refusals = crate::refusals::watch();
        #[cfg(not(switchboard_unpatched_async_nats))]
        let reply = self
            .shared
            .nats
            .send_request(subject.to_owned(), request)
            .await;
        #[cfg(switchboard_unpatched_async_nats)]
        let reply = {
            // Made before the publish: a refusal cannot come earlier.
            let mut refusals = crate::refusals::watch();
            tokio::select! {
                biased;
                reply = self.shared.nats.send_request(subject.to_owned(), request) => reply,
                refusal = refusals.refused(Operation::Publish, subject) => {
                    return Err(CallError::PermissionDenied {
                        subject: subject.to_owned(),
                        refusal,
                    });
                }
            }
        };
        match reply {
            Err(e)
                if e.kind() == RequestErrorKind::Other
                    && crate::refusals::is_publish_refusal(&e.to_string(), subject) =>
            {
                Err(CallError::PermissionDenied {
                    subject: subject.to_owned(),
                    refusal: crate::refusals::refusal_of(refusals, Operation::Publish, subject)
                        .await,
                })
            }
            Ok(message) => {
                let headers = message.headers.as_ref();
                if let Some(rejection) = codec::read_error(headers, &message.payload) {
                    return Err(CallError::Rejected(rejection));
                }
                match codec::payload_encoding(headers) {
                    Ok(encoding) => Ok((message.payload, encoding)),
                    Err(source) => Err(CallError::Decode {
                        subject: subject.to_owned(),
                        source,
                    }),
                }
            }
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => CallError::NoResponders {
                    subject: subject.to_owned(),
                },
                RequestErrorKind::TimedOut => timed_out(),
                RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                    CallError::Invalid {
                        subject: subject.to_owned(),
                        message: e.to_string(),
                    }
                }
                RequestErrorKind::Other => CallError::Transport {
                    subject: subject.to_owned(),
                    message: e.to_string(),
                    source: e,
                },
            }),
        }
    }
}
