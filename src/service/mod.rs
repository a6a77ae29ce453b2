//! Services on the NATS Services API (ADR-32), with typed endpoints.
//!
//! A service is a name, a SemVer version, a description and endpoints. Each
//! endpoint listens on `<service>.<endpoint>` in queue group `q`, so running
//! more instances shares the load; each instance answers `$SRV.PING|INFO|STATS`
//! so `switchboard ls`, an HTTP front end and `nats micro ls` find it. Handlers are
//! `async fn(Context, Request) -> Result<Response, ServiceError>`: they never
//! see bytes or header names. A request is checked against its type's JSON
//! Schema (the one discovery publishes, limits included) before the handler
//! runs, so a handler only ever sees requests its contract allows.
//!
//! This is ADR-32 implemented here rather than `async_nats::service`, whose
//! handling is sequential per endpoint, whose `stop()` does not drain, and
//! whose STATS omit service metadata.
//!
//! Shutdown drains: endpoints stop taking requests, every accepted request
//! is answered (bounded by the drain timeout), and only then does the
//! instance leave discovery.
//!
//! ```no_run
//! use switchboard::{ServiceError, service::{Context, Endpoint, Service}};
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Hello { name: String }
//! #[derive(serde::Serialize, schemars::JsonSchema)]
//! struct Greeting { text: String }
//!
//! async fn hello(_ctx: Context, req: Hello) -> Result<Greeting, ServiceError> {
//!     if req.name.is_empty() {
//!         return Err(ServiceError::bad_request("name is empty"));
//!     }
//!     Ok(Greeting { text: format!("Hello, {}!", req.name) })
//! }
//!
//! # async fn demo(nats: async_nats::Client) -> Result<(), switchboard::service::ServeError> {
//! Service::builder("greeter", "1.0.0")
//!     .description("Greets people")
//!     .endpoint(Endpoint::new("hello", hello).description("Say hello").idempotent(true))
//!     .serve(nats, switchboard::shutdown::signal())
//!     .await?;
//! # Ok(()) }
//! ```

mod background;
mod context;
mod dispatch;
mod endpoint;
mod latency;
mod schema;
mod srv;
mod stats;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::Client;
use crate::micro::Metadata;

pub use background::Consumers;
pub use context::Context;
pub use endpoint::{
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_QUEUED, DESCRIPTION, Endpoint, HTTP_METHOD, HTTP_PATH,
    HTTP_STATUS, IDEMPOTENT, MAX_IN_FLIGHT, REQUEST_SCHEMA, RESPONSE_SCHEMA,
};
pub use latency::quantile;
pub use schema::schema_of;

/// How long a starting service listens for the server's refusal of one of
/// its subscriptions after the server confirmed them all.
const REFUSAL_GRACE: Duration = Duration::from_millis(20);

/// Queue group shared by all instances of an endpoint.
pub const QUEUE_GROUP: &str = "q";

/// Why a service could not be built, started or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Service or endpoint name breaks the naming rules.
    #[error("invalid {what} name {name:?}: use lowercase letters, digits, '_' and '-'")]
    InvalidName {
        /// "service" or "endpoint".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The version is not SemVer.
    #[error("invalid version {version:?} of service {service}: {reason}")]
    InvalidVersion {
        /// The service.
        service: String,
        /// The version given.
        version: String,
        /// Why.
        reason: String,
    },
    /// An endpoint is bound that the service's contract does not declare.
    #[error(
        "service {service} binds endpoint {endpoint:?}, which its contract does not declare; \
         add it to the contract (`.endpoint(&…)`) so its permissions and documents include it"
    )]
    UndeclaredEndpoint {
        /// The service.
        service: String,
        /// The endpoint.
        endpoint: String,
    },
    /// The contract declares an endpoint the service never bound.
    #[error(
        "service {service} declares endpoint {endpoint:?} in its contract but binds no handler to it"
    )]
    UnboundEndpoint {
        /// The service.
        service: String,
        /// The endpoint.
        endpoint: String,
    },
    /// Two endpoints share a name.
    #[error("service {service} declares endpoint {endpoint:?} twice")]
    DuplicateEndpoint {
        /// The service.
        service: String,
        /// The endpoint.
        endpoint: String,
    },
    /// The service could not connect to NATS.
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    /// `SWITCHBOARD_REPLICAS` is invalid.
    #[error(transparent)]
    Replicas(#[from] crate::replication::ReplicasError),
    /// Subscribing failed.
    #[error("service {service} cannot subscribe: {source}")]
    Subscribe {
        /// The service.
        service: String,
        /// The client's error.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// A stream the service owns could not be declared (or differs).
    #[error("service {service} cannot declare its stream: {source}")]
    Stream {
        /// The service.
        service: String,
        /// Why.
        #[source]
        source: crate::events::EventError,
    },
    /// The server refused the service's NATS user a subscription it needs:
    /// its permissions lack the service's own subjects.
    #[error(
        "service {service}: {refusal}; its NATS user's permissions do not match its contract \
         (under `switchboard up` they are derived from the contract: is this binary the one \
         `up` read? elsewhere, give the server the block `switchboard permissions` prints)"
    )]
    PermissionDenied {
        /// The service.
        service: String,
        /// The server's refusal.
        refusal: crate::refusals::Refusal,
    },
    /// A consumer, outbox relay or deadline watch the service owned
    /// stopped with an error.
    #[error("service {service}: {message}")]
    Background {
        /// The service.
        service: String,
        /// What failed.
        message: String,
    },
    /// The subscriptions could not be confirmed with the server.
    #[error("service {service} cannot flush its subscriptions: {source}")]
    Flush {
        /// The service.
        service: String,
        /// The client's error.
        #[source]
        source: async_nats::client::FlushError,
    },
}

/// Entry point: [`Service::builder`].
#[derive(Debug)]
pub struct Service;

impl Service {
    /// Starts declaring a service.
    pub fn builder(name: impl Into<String>, version: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            metadata: Metadata::new(),
            endpoints: Vec::new(),
            events: Vec::new(),
            declared_endpoints: None,
            streams: Vec::new(),
            background: Background::default(),
            drain_timeout: Duration::from_secs(10),
            client: None,
        }
    }
}

/// A service being declared; ends with [`ServiceBuilder::start`] or
/// [`ServiceBuilder::serve`].
#[derive(Debug)]
pub struct ServiceBuilder {
    name: String,
    version: String,
    description: String,
    metadata: Metadata,
    endpoints: Vec<Endpoint>,
    events: Vec<EventDeclaration>,
    /// With a contract: the names of the endpoints it declares.
    declared_endpoints: Option<Vec<String>>,
    streams: Vec<crate::events::StreamSpec>,
    background: Background,
    drain_timeout: Duration,
    client: Option<Client>,
}

/// The consumers, outbox relays and deadline watches a service runs beside
/// its endpoints: started with it, once its streams exist, and stopped
/// after its last request was answered (a request may still commit to an
/// outbox its relay must publish).
#[derive(Default)]
struct Background {
    starts: Vec<StartTask>,
}

/// Starts one background task on the service's consumer group.
type StartTask = Box<dyn FnOnce(&mut Consumers) + Send>;

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("tasks", &self.starts.len())
            .finish()
    }
}

/// Service metadata key listing the events a service publishes: a JSON
/// array of [`EventDeclaration`]s.
pub const EVENTS_METADATA: &str = "events";

/// An event a service declares it publishes, as discovery carries it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventDeclaration {
    /// The NATS subject, e.g. `events.invoices.created`.
    pub subject: String,
    /// One line.
    pub description: String,
    /// The JSON Schema of the event's data.
    pub schema: serde_json::Value,
}

impl EventDeclaration {
    /// The event on `subject`, with the JSON Schema of its data `T`.
    pub fn new<T: schemars::JsonSchema>(
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        EventDeclaration {
            subject: subject.into(),
            description: description.into(),
            schema: schema::schema_of::<T>(),
        }
    }

    /// The events an instance declares (none when it declares none, or
    /// something unreadable).
    pub fn of(instance: &crate::micro::InfoResponse) -> Vec<EventDeclaration> {
        instance
            .metadata
            .as_ref()
            .and_then(|m| m.get(EVENTS_METADATA))
            .and_then(|e| serde_json::from_str(e).ok())
            .unwrap_or_default()
    }
}

impl ServiceBuilder {
    /// One line for `nats micro ls`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }
    /// Service metadata.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Declares an event this service publishes, with the JSON Schema of its
    /// data (from the Rust type). Discovery carries the list (service
    /// metadata `events`), so an HTTP front end can document events (AsyncAPI)
    /// without a registry.
    pub fn publishes<T: schemars::JsonSchema>(
        mut self,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.events
            .push(EventDeclaration::new::<T>(subject, description));
        self
    }

    /// An event as a contract declares it.
    pub(crate) fn declared_event(mut self, event: EventDeclaration) -> Self {
        self.events.push(event);
        self
    }

    /// The endpoints a contract declares: exactly these must be bound.
    pub(crate) fn declared_endpoints(mut self, names: Vec<String>) -> Self {
        self.declared_endpoints = Some(names);
        self
    }

    /// Declares a stream the service owns: ensured (created, or checked
    /// against the declaration) when it starts, before it takes requests,
    /// so its handlers can publish from the first request.
    pub fn stream(mut self, spec: crate::events::StreamSpec) -> Self {
        self.streams.push(spec);
        self
    }

    /// Runs a durable consumer of `spec` with `handler` while the service
    /// runs (see [`Consumers::spawn`](Consumers::spawn)).
    pub fn consumer<T, F, Fut>(mut self, spec: crate::events::ConsumerSpec, handler: F) -> Self
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(crate::events::ReceivedEvent<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), crate::events::HandlerError>> + Send + 'static,
    {
        self.background
            .starts
            .push(Box::new(move |consumers| consumers.spawn(spec, handler)));
        self
    }

    /// Publishes what transactions on `store`'s bucket commit to its outbox
    /// while the service runs (see [`Consumers::relay`](Consumers::relay)).
    pub fn relay<S>(mut self, store: &crate::state::StateStore<S>) -> Self
    where
        S: Send + Sync + 'static,
    {
        let store = store.clone();
        self.background
            .starts
            .push(Box::new(move |consumers| consumers.relay(&store)));
        self
    }

    /// Settles the records of `store` (a view) whose deadline passed, with
    /// `on_expired`, while the service runs (see
    /// [`Consumers::deadlines`](Consumers::deadlines)).
    pub fn deadlines<T, F, Fut>(mut self, store: crate::state::StateStore<T>, on_expired: F) -> Self
    where
        T: crate::state::Deadline + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), crate::ServiceError>> + Send + 'static,
    {
        self.background.starts.push(Box::new(move |consumers| {
            consumers.deadlines(store, on_expired)
        }));
        self
    }

    /// Adds an endpoint.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }
    /// How long shutdown waits for in-flight requests; default 10 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
    /// The client handlers use for downstream calls (default: one with
    /// default breaker and budget settings on the service's connection).
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    fn validate(&self) -> Result<(), ServeError> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        if !valid(&self.name) {
            return Err(ServeError::InvalidName {
                what: "service",
                name: self.name.clone(),
            });
        }
        semver::Version::parse(&self.version).map_err(|e| ServeError::InvalidVersion {
            service: self.name.clone(),
            version: self.version.clone(),
            reason: e.to_string(),
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for endpoint in &self.endpoints {
            if !valid(&endpoint.name) {
                return Err(ServeError::InvalidName {
                    what: "endpoint",
                    name: endpoint.name.clone(),
                });
            }
            if !seen.insert(endpoint.name.as_str()) {
                return Err(ServeError::DuplicateEndpoint {
                    service: self.name.clone(),
                    endpoint: endpoint.name.clone(),
                });
            }
        }
        if let Some(declared) = &self.declared_endpoints {
            if let Some(undeclared) = seen.iter().find(|n| !declared.iter().any(|d| d == *n)) {
                return Err(ServeError::UndeclaredEndpoint {
                    service: self.name.clone(),
                    endpoint: (*undeclared).to_owned(),
                });
            }
            if let Some(unbound) = declared.iter().find(|d| !seen.contains(d.as_str())) {
                return Err(ServeError::UnboundEndpoint {
                    service: self.name.clone(),
                    endpoint: unbound.clone(),
                });
            }
        }
        Ok(())
    }

    /// Validates, subscribes everything, flushes (so no early request meets
    /// "no responders") and returns the running instance.
    ///
    /// # Errors
    ///
    /// Invalid names, version or duplicates; subscribe or flush failures.
    pub async fn start(self, nats: async_nats::Client) -> Result<RunningService, ServeError> {
        self.validate()?;
        if !self.streams.is_empty() {
            let js = async_nats::jetstream::new(nats.clone());
            // The configured replica count wins over the declaration's.
            let replicas = crate::replication::configured()?;
            for spec in &self.streams {
                let mut spec = spec.clone();
                if let Some(replicas) = replicas {
                    spec.replicas = replicas;
                }
                spec.ensure(&js)
                    .await
                    .map_err(|source| ServeError::Stream {
                        service: self.name.clone(),
                        source,
                    })?;
            }
        }
        let service: Arc<str> = Arc::from(self.name.as_str());
        let subscribe_err = |source| ServeError::Subscribe {
            service: self.name.clone(),
            source,
        };
        let client = self
            .client
            .clone()
            .unwrap_or_else(|| Client::new(nats.clone()));
        let identity = Arc::new(srv::Identity {
            name: self.name.clone(),
            id: nuid::next().to_string(),
            version: self.version.clone(),
            description: self.description.clone(),
            metadata: {
                let mut metadata = self.metadata.clone();
                if !self.events.is_empty()
                    && let Ok(events) = serde_json::to_string(&self.events)
                {
                    metadata.insert(EVENTS_METADATA.to_owned(), events);
                }
                metadata
            },
            started: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });

        // Consumers, relays and watches: the streams they read exist now.
        let background = if self.background.starts.is_empty() {
            None
        } else {
            let mut consumers = Consumers::new(async_nats::jetstream::new(nats.clone()));
            for start in self.background.starts {
                start(&mut consumers);
            }
            Some(consumers)
        };
        // Made before subscribing: a refused subscription is reported after.
        let mut refusals = crate::refusals::watch();
        let stop_endpoints = CancellationToken::new();
        let stop_discovery = CancellationToken::new();
        let requests = TaskTracker::new();
        let mut loops = Vec::new();
        let mut live = Vec::new();
        for endpoint in self.endpoints {
            let subject = format!("{}.{}", self.name, endpoint.name);
            let subscription = nats
                .queue_subscribe(subject.clone(), QUEUE_GROUP.to_owned())
                .await
                .map_err(subscribe_err)?;
            let endpoint_live = Arc::new(dispatch::LiveEndpoint {
                name: Arc::from(endpoint.name.as_str()),
                service: service.clone(),
                subject,
                queue_group: QUEUE_GROUP.to_owned(),
                counters: Default::default(),
                slots: Arc::new(Semaphore::new(endpoint.max_in_flight)),
                endpoint,
                nats: nats.clone(),
                client: client.clone(),
            });
            loops.push(tokio::spawn(dispatch::serve(
                endpoint_live.clone(),
                subscription,
                requests.clone(),
                stop_endpoints.clone(),
            )));
            live.push(endpoint_live);
        }
        let discovery = srv::subscribe(&nats, &identity)
            .await
            .map_err(subscribe_err)?;
        let discovery = tokio::spawn(srv::answer(
            discovery,
            identity.clone(),
            live.clone(),
            nats.clone(),
            client.clone(),
            stop_discovery.clone(),
        ));
        let live_endpoints = live;
        nats.flush().await.map_err(|source| ServeError::Flush {
            service: self.name.clone(),
            source,
        })?;
        // The server has read every SUB by now and said so if it refused
        // one; the report reaches us through the connection's event task,
        // so it gets a moment. A service that cannot hear its requests
        // must not look healthy.
        let refused = tokio::time::timeout(
            REFUSAL_GRACE,
            refusals.refused_where(|r| {
                r.operation == crate::refusals::Operation::Subscribe
                    && (r.subject.starts_with("$SRV.")
                        || r.subject
                            .strip_prefix(self.name.as_str())
                            .is_some_and(|rest| rest.starts_with('.')))
            }),
        )
        .await;
        if let Ok(refusal) = refused {
            return Err(ServeError::PermissionDenied {
                service: self.name.clone(),
                refusal,
            });
        }
        tracing::info!(service = %self.name, version = %self.version, id = %identity.id, "service started");
        Ok(RunningService {
            identity,
            nats,
            client,
            requests,
            loops,
            discovery: Some(discovery),
            endpoints: live_endpoints,
            stop_endpoints,
            stop_discovery,
            drain_timeout: self.drain_timeout,
            background,
        })
    }

    /// Starts, serves until `shutdown`, then drains.
    ///
    /// # Errors
    ///
    /// As [`ServiceBuilder::start`].
    pub async fn serve(
        self,
        nats: async_nats::Client,
        shutdown: impl Future<Output = ()>,
    ) -> Result<DrainReport, ServeError> {
        let running = self.start(nats).await?;
        shutdown.await;
        running.shutdown().await
    }
}

/// What a drain achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests still running when the drain timeout expired (0 = all answered).
    pub unfinished: usize,
    /// Requests this instance accepted over its life (all endpoints).
    pub accepted: u64,
    /// Replies it sent; equals `accepted` after a complete drain.
    pub answered: u64,
}

/// A service instance that is serving.
#[derive(Debug)]
pub struct RunningService {
    identity: Arc<srv::Identity>,
    nats: async_nats::Client,
    client: Client,
    requests: TaskTracker,
    loops: Vec<tokio::task::JoinHandle<()>>,
    discovery: Option<tokio::task::JoinHandle<()>>,
    endpoints: Vec<Arc<dispatch::LiveEndpoint>>,
    stop_endpoints: CancellationToken,
    stop_discovery: CancellationToken,
    drain_timeout: Duration,
    background: Option<Consumers>,
}

impl RunningService {
    /// This instance's id (as in `$SRV.PING.<name>.<id>`).
    pub fn id(&self) -> &str {
        &self.identity.id
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// The client handlers use (its breakers show in `$SRV.STATS`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// [`RunningService::drain`], then stops the service's consumers,
    /// relays and watches (each finishes what it holds).
    ///
    /// # Errors
    ///
    /// [`ServeError::Background`] when one of them had failed.
    pub async fn shutdown(mut self) -> Result<DrainReport, ServeError> {
        let background = self.background.take();
        let name = self.identity.name.clone();
        let report = self.drain().await;
        if let Some(background) = background {
            background
                .stop()
                .await
                .map_err(|error| ServeError::Background {
                    service: name,
                    message: error.to_string(),
                })?;
        }
        Ok(report)
    }

    /// Stops taking requests, answers those accepted (up to the drain
    /// timeout), then leaves discovery. Consumers the service owns go on
    /// until [`RunningService::shutdown`] (or the instance is dropped).
    pub async fn drain(mut self) -> DrainReport {
        self.stop_endpoints.cancel();
        for endpoint_loop in self.loops.drain(..) {
            let _ = endpoint_loop.await;
        }
        self.requests.close();
        let unfinished = match tokio::time::timeout(self.drain_timeout, self.requests.wait()).await
        {
            Ok(()) => 0,
            Err(_) => self.requests.len(),
        };
        if unfinished > 0 {
            tracing::warn!(service = %self.identity.name, unfinished, "drain timed out");
        }
        self.stop_discovery.cancel();
        if let Some(discovery) = self.discovery.take() {
            let _ = discovery.await;
        }
        let _ = self.nats.flush().await;
        tracing::info!(service = %self.identity.name, "service stopped");
        let total = |f: fn(&stats::EndpointCounters) -> u64| {
            self.endpoints.iter().map(|e| f(&e.counters)).sum::<u64>()
        };
        DrainReport {
            unfinished,
            accepted: total(|c| c.accepted.load(std::sync::atomic::Ordering::Relaxed)),
            answered: total(|c| c.answered.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        // Dropped without drain(): stop everything (no new requests).
        self.stop_endpoints.cancel();
        self.stop_discovery.cancel();
    }
}
