//! A service's contract: everything it is and needs from the platform,
//! declared once, in its own crate.
//!
//! The declaration names the service, its endpoints (typed
//! [`EndpointContract`]s, so request and response schemas come from the
//! Rust types), the events it publishes, the streams and KV buckets it
//! owns, the durable consumers it runs and the endpoints it calls. From it
//! follow what the service serves ([`Contract::service`] starts its
//! builder), its NATS permissions ([`Contract::permissions`]) and, for a
//! set of services, the documents and the server's configuration
//! (`switchboard up`, `switchboard generate`).
//!
//! Every binary made with [`service_main!`](crate::service_main) prints
//! its contract as JSON when run with `--contract`, so the tools read a
//! service built anywhere — in this workspace or in a repository of its
//! own — the same way, without a registry.
//!
//! ```
//! use switchboard::contract::{Contract, EndpointContract};
//! use switchboard::events::StreamSpec;
//!
//! #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! pub struct Hello { pub name: String }
//! #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! pub struct Greeting { pub text: String }
//!
//! pub const HELLO: EndpointContract<Hello, Greeting> =
//!     EndpointContract::new("greeter.hello", "Say hello").http("POST", "/greet", 200);
//!
//! pub fn contract() -> Contract {
//!     Contract::new("greeter", "1.0.0")
//!         .description("Greets people")
//!         .endpoint(&HELLO)
//!         .stream(StreamSpec::new("GREETER", ["events.greeter.>"]))
//!         .publishes::<Greeting>("events.greeter.greeted", "Somebody was greeted")
//!         .bucket("greetings")
//! }
//!
//! let contract = contract();
//! assert!(contract.permissions(&[]).publish.contains(&"events.greeter.greeted".to_owned()));
//! ```

mod endpoint;
mod permissions;

use serde::{Deserialize, Serialize};

use crate::events::{ConsumerSpec, StreamSpec};
use crate::service::{EventDeclaration, Service, ServiceBuilder};

pub use endpoint::{EndpointContract, HttpRoute};
pub use permissions::Permissions;

/// The flag a service binary answers with its contract (JSON on stdout).
pub const CONTRACT_FLAG: &str = "--contract";

/// A service's declaration of itself; serialised as the JSON `--contract`
/// prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    /// Service name: its endpoints' subject prefix and its NATS user.
    pub name: String,
    /// SemVer.
    pub version: String,
    /// One line for discovery.
    #[serde(default)]
    pub description: String,
    /// Endpoints it serves.
    #[serde(default)]
    pub endpoints: Vec<EndpointDeclaration>,
    /// Events it publishes.
    #[serde(default)]
    pub events: Vec<EventDeclaration>,
    /// Streams it owns (declares when it starts).
    #[serde(default)]
    pub streams: Vec<StreamDeclaration>,
    /// Durable consumers it runs.
    #[serde(default)]
    pub consumers: Vec<ConsumerDeclaration>,
    /// KV buckets it owns.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// Endpoint subjects it calls.
    #[serde(default)]
    pub calls: Vec<String>,
    /// It calls every endpoint of the system that has an HTTP route (an
    /// HTTP front end): its permissions follow the other contracts.
    #[serde(default)]
    pub calls_routed: bool,
    /// It asks `$SRV` discovery about the others (every service answers it).
    #[serde(default)]
    pub discovers: bool,
    /// It watches every event as it is published (`events.>`, core NATS).
    #[serde(default)]
    pub watches_events: bool,
    /// The streams as declared in code, for [`Contract::service`] (a
    /// contract read from JSON has only their declarations).
    #[serde(skip)]
    stream_specs: Vec<StreamSpec>,
}

/// An endpoint as the contract carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointDeclaration {
    /// `<service>.<endpoint>`.
    pub subject: String,
    /// One line.
    pub description: String,
    /// Safe to repeat.
    pub idempotent: bool,
    /// HTTP method, path and success status, when exposed.
    pub http: Option<HttpDeclaration>,
    /// The error replies worth knowing, in words.
    #[serde(default)]
    pub errors: String,
    /// JSON Schema of the request (its limits included).
    pub request: serde_json::Value,
    /// JSON Schema of the response.
    pub response: serde_json::Value,
}

impl EndpointDeclaration {
    /// The endpoint's name within its service.
    pub fn name(&self) -> &str {
        self.subject
            .split_once('.')
            .map_or(self.subject.as_str(), |(_, name)| name)
    }
}

/// An HTTP route as the contract carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpDeclaration {
    /// Upper case.
    pub method: String,
    /// Path template.
    pub path: String,
    /// Status of a success.
    pub status: u16,
}

/// A stream as the contract carries it (what the documents say of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamDeclaration {
    /// Stream name.
    pub name: String,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// How long events are kept, in seconds.
    pub max_age_secs: u64,
    /// The de-duplication window, in seconds.
    pub duplicate_window_secs: u64,
}

/// A durable consumer as the contract carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerDeclaration {
    /// The stream consumed.
    pub stream: String,
    /// Durable name.
    pub durable: String,
    /// Event subjects received.
    pub filter: Vec<String>,
    /// The KV bucket of its processed-event records, if idempotent.
    pub idempotency_bucket: Option<String>,
    /// The KV bucket of its partitions' watermarks, if watermarked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_bucket: Option<String>,
    /// Keyed: its partition count (each partition a durable,
    /// `<durable>-p<n>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
}

impl ConsumerDeclaration {
    /// The durables it runs on the server: itself, or one per partition.
    pub fn durables(&self) -> Vec<String> {
        match self.partitions {
            Some(partitions) => (0..partitions)
                .map(|p| crate::events::partition::partition_durable(&self.durable, p))
                .collect(),
            None => vec![self.durable.clone()],
        }
    }
}

impl Contract {
    /// A service with no endpoints, events or needs yet.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Contract {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            endpoints: Vec::new(),
            events: Vec::new(),
            streams: Vec::new(),
            consumers: Vec::new(),
            buckets: Vec::new(),
            calls: Vec::new(),
            calls_routed: false,
            discovers: false,
            watches_events: false,
            stream_specs: Vec::new(),
        }
    }

    /// One line for `nats micro ls`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// An endpoint it serves, with its request and response schemas.
    pub fn endpoint<Req, Resp>(mut self, endpoint: &EndpointContract<Req, Resp>) -> Self
    where
        Req: schemars::JsonSchema,
        Resp: schemars::JsonSchema,
    {
        self.endpoints.push(EndpointDeclaration {
            subject: endpoint.subject.to_owned(),
            description: endpoint.description.to_owned(),
            idempotent: endpoint.idempotent,
            http: endpoint.http.map(|route| HttpDeclaration {
                method: route.method.to_owned(),
                path: route.path.to_owned(),
                status: route.status,
            }),
            errors: endpoint.errors.to_owned(),
            request: crate::service::schema_of::<Req>(),
            response: crate::service::schema_of::<Resp>(),
        });
        self
    }

    /// An event it publishes, with the JSON Schema of its data.
    pub fn publishes<T: schemars::JsonSchema>(
        mut self,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.events
            .push(EventDeclaration::new::<T>(subject, description));
        self
    }

    /// A stream it owns.
    pub fn stream(mut self, spec: StreamSpec) -> Self {
        self.streams.push(StreamDeclaration {
            name: spec.name.clone(),
            subjects: spec.subjects.clone(),
            max_age_secs: spec.max_age.as_secs(),
            duplicate_window_secs: spec.duplicate_window.as_secs(),
        });
        self.stream_specs.push(spec);
        self
    }

    /// A durable consumer it runs (its idempotency bucket too, if any).
    pub fn consumer(mut self, spec: &ConsumerSpec) -> Self {
        self.consumers.push(ConsumerDeclaration {
            stream: spec.stream.clone(),
            durable: spec.durable.clone(),
            filter: spec.filter_subjects.clone(),
            idempotency_bucket: spec
                .idempotency_ttl
                .map(|_| crate::events::Idempotency::bucket_for(&spec.durable)),
            watermark_bucket: spec
                .watermark
                .then(|| crate::events::consumer::watermark::bucket_for(&spec.durable)),
            partitions: spec.partitions,
        });
        self
    }

    /// A KV bucket it owns (its outbox relay and deadline watches included).
    pub fn bucket(mut self, name: impl Into<String>) -> Self {
        self.buckets.push(name.into());
        self
    }

    /// An endpoint of another service it calls.
    pub fn calls(mut self, subject: impl Into<String>) -> Self {
        self.calls.push(subject.into());
        self
    }

    /// It calls every endpoint that has an HTTP route, whichever service
    /// serves it (an HTTP front end).
    pub fn calls_routed_endpoints(mut self) -> Self {
        self.calls_routed = true;
        self
    }

    /// It asks discovery (`$SRV.*`) about the other services.
    pub fn discovers(mut self) -> Self {
        self.discovers = true;
        self
    }

    /// It watches every event as it is published (`events.>`).
    pub fn watches_events(mut self) -> Self {
        self.watches_events = true;
        self
    }

    /// The service builder of this contract: name, version, description,
    /// the streams it owns and the events it publishes. The endpoints are
    /// bound by the service; [`ServiceBuilder::start`] refuses an endpoint
    /// the contract does not declare and a declared one left unbound.
    pub fn service(&self) -> ServiceBuilder {
        let mut builder = Service::builder(self.name.clone(), self.version.clone())
            .description(self.description.clone())
            .declared_endpoints(self.endpoints.iter().map(|e| e.name().to_owned()).collect());
        for stream in &self.stream_specs {
            builder = builder.stream(stream.clone());
        }
        for event in &self.events {
            builder = builder.declared_event(event.clone());
        }
        builder
    }

    /// The contract as the JSON `--contract` prints.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
