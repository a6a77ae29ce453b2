//! One endpoint as its service's contract declares it, typed by its
//! request and response: a `const` that the service binds a handler to
//! ([`EndpointContract::bind`]) and that callers name ([`EndpointContract::subject`]).
//!
//! The types are part of the declaration, so a handler of another request
//! or response type does not compile, and the schemas the contract
//! publishes are the ones the endpoint enforces.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ServiceError;
use crate::service::{Context, Endpoint};

/// How an HTTP front end exposes an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRoute {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template; `{field}` segments fill request fields.
    pub path: &'static str,
    /// Status of a success.
    pub status: u16,
}

/// An endpoint `<service>.<name>` taking `Req` and answering `Resp`.
///
/// ```
/// use switchboard::contract::EndpointContract;
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// pub struct Hello { pub name: String }
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// pub struct Greeting { pub text: String }
///
/// pub const HELLO: EndpointContract<Hello, Greeting> =
///     EndpointContract::new("greeter.hello", "Say hello")
///         .idempotent()
///         .http("POST", "/greet", 200)
///         .errors("400 a name that breaks the limits");
/// assert_eq!(HELLO.name(), "hello");
/// ```
pub struct EndpointContract<Req, Resp> {
    /// `<service>.<endpoint>`.
    pub subject: &'static str,
    /// One line for discovery and the documents.
    pub description: &'static str,
    /// Safe to repeat (callers may retry it on timeout).
    pub idempotent: bool,
    /// The HTTP route; `None` keeps it internal (no HTTP front end may call it).
    pub http: Option<HttpRoute>,
    /// The error replies worth knowing, for `subjects.md`.
    pub errors: &'static str,
    types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> EndpointContract<Req, Resp> {
    /// An internal, non-idempotent endpoint on `subject`.
    pub const fn new(subject: &'static str, description: &'static str) -> Self {
        EndpointContract {
            subject,
            description,
            idempotent: false,
            http: None,
            errors: "",
            types: PhantomData,
        }
    }

    /// Safe to repeat: callers may retry it after a timeout.
    pub const fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Exposed over HTTP as `method path`, answering `status` on success.
    pub const fn http(mut self, method: &'static str, path: &'static str, status: u16) -> Self {
        self.http = Some(HttpRoute {
            method,
            path,
            status,
        });
        self
    }

    /// The error replies worth knowing, in words (`subjects.md`).
    pub const fn errors(mut self, errors: &'static str) -> Self {
        self.errors = errors;
        self
    }

    /// The endpoint's name within its service (after the first dot).
    pub fn name(&self) -> &'static str {
        self.subject
            .split_once('.')
            .map_or(self.subject, |(_, name)| name)
    }

    /// Whether an HTTP front end may call it.
    pub fn is_public(&self) -> bool {
        self.http.is_some()
    }
}

impl<Req, Resp> EndpointContract<Req, Resp>
where
    Req: DeserializeOwned + JsonSchema + Send + 'static,
    Resp: Serialize + JsonSchema + 'static,
{
    /// The kit's endpoint for this declaration, served by `handler` with
    /// shared `state` (see [`Endpoint::with_state`]).
    pub fn bind<S, F, Fut>(&self, state: Arc<S>, handler: F) -> Endpoint
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        self.configure(Endpoint::with_state(self.name(), state, handler))
    }

    /// [`EndpointContract::bind`] for a handler without state.
    pub fn handle<F, Fut>(&self, handler: F) -> Endpoint
    where
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        self.configure(Endpoint::new(self.name(), handler))
    }

    fn configure(&self, endpoint: Endpoint) -> Endpoint {
        let endpoint = endpoint
            .description(self.description)
            .idempotent(self.idempotent);
        match self.http {
            Some(route) => endpoint
                .http(route.method, route.path)
                .http_status(route.status),
            None => endpoint,
        }
    }
}

// By hand: derived impls would ask `Req` and `Resp` to be `Clone`/`Debug`.
impl<Req, Resp> Clone for EndpointContract<Req, Resp> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Req, Resp> Copy for EndpointContract<Req, Resp> {}
impl<Req, Resp> std::fmt::Debug for EndpointContract<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointContract")
            .field("subject", &self.subject)
            .field("idempotent", &self.idempotent)
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}
