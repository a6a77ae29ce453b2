//! An endpoint as the contract declares it: subject, description, whether
//! it is safe to repeat, its HTTP route (if the gateway exposes it) and
//! its documented errors.
//!
//! The service binds a handler to it ([`EndpointContract::bind`]); the
//! permissions (`access`), `subjects.md` (`document`) and the gateway's
//! routes (through discovery) all read the same declaration, so a route or
//! a flag lives in one place.

use std::future::Future;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard::ServiceError;
use switchboard::service::{Context, Endpoint};

/// How the gateway exposes an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRoute {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template; `{field}` segments fill request fields.
    pub path: &'static str,
    /// Status of a success.
    pub status: u16,
}

/// One endpoint of the reference system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointContract {
    /// `<service>.<endpoint>`.
    pub subject: &'static str,
    /// One line for discovery and the documents.
    pub description: &'static str,
    /// Safe to repeat (callers may retry it on timeout).
    pub idempotent: bool,
    /// The gateway route; `None` keeps it internal (no gateway permission).
    pub http: Option<HttpRoute>,
    /// The error replies worth knowing, for `subjects.md`.
    pub errors: &'static str,
}

impl EndpointContract {
    /// The endpoint's name within its service (after the first dot).
    pub fn name(&self) -> &'static str {
        self.subject
            .split_once('.')
            .map_or(self.subject, |(_, name)| name)
    }

    /// Whether the gateway may call it.
    pub fn is_public(&self) -> bool {
        self.http.is_some()
    }

    /// The kit's endpoint for this declaration, served by `handler` with
    /// shared `state` (see [`Endpoint::with_state`]).
    pub fn bind<S, Req, Resp, F, Fut>(&self, state: Arc<S>, handler: F) -> Endpoint
    where
        S: Send + Sync + 'static,
        Req: DeserializeOwned + JsonSchema + Send + 'static,
        Resp: Serialize + JsonSchema + 'static,
        F: Fn(Arc<S>, Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        let endpoint = Endpoint::with_state(self.name(), state, handler)
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
