//! Declaring an endpoint: a name, a typed handler, limits and metadata.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Context;
use super::schema::{self, RequestSchema};
use crate::error::ServiceError;
use crate::micro::Metadata;

pub(crate) type ErasedHandler =
    Arc<dyn Fn(Context, Bytes) -> BoxFuture<'static, Result<Bytes, ServiceError>> + Send + Sync>;

/// Endpoint metadata key: HTTP method an HTTP front end exposes.
pub const HTTP_METHOD: &str = "http_method";
/// Endpoint metadata key: HTTP path template an HTTP front end exposes.
pub const HTTP_PATH: &str = "http_path";
/// Endpoint metadata key: HTTP status of a success.
pub const HTTP_STATUS: &str = "http_status";
/// Endpoint metadata key: the one-line description.
pub const DESCRIPTION: &str = "description";
/// Endpoint metadata key: the request's JSON Schema (limits included).
pub const REQUEST_SCHEMA: &str = "request_schema";
/// Endpoint metadata key: the response's JSON Schema.
pub const RESPONSE_SCHEMA: &str = "response_schema";
/// Endpoint metadata key: `true` when the endpoint is safe to repeat.
pub const IDEMPOTENT: &str = "idempotent";
/// Endpoint metadata key: requests handled at once.
pub const MAX_IN_FLIGHT: &str = "max_in_flight";

/// Default concurrent requests per endpoint.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Default requests waiting for a slot before 429s are answered.
pub const DEFAULT_MAX_QUEUED: usize = 1024;

/// One endpoint of a service.
///
/// ```
/// use switchboard::{ServiceError, service::{Context, Endpoint}};
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Get { id: String }
/// #[derive(serde::Serialize, schemars::JsonSchema)]
/// struct User { id: String }
///
/// async fn get(_ctx: Context, req: Get) -> Result<User, ServiceError> {
///     Ok(User { id: req.id })
/// }
///
/// let endpoint = Endpoint::new("get", get).description("Look up a user").idempotent(true);
/// ```
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) idempotent: bool,
    pub(crate) max_in_flight: usize,
    pub(crate) max_queued: usize,
    pub(crate) metadata: Metadata,
    pub(crate) request_schema: Arc<RequestSchema>,
    pub(crate) response_schema: serde_json::Value,
    pub(crate) handler: ErasedHandler,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("idempotent", &self.idempotent)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_queued", &self.max_queued)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint named `name` (the subject becomes `<service>.<name>`)
    /// served by `handler`. Request and response JSON Schemas come from the
    /// handler's types.
    pub fn new<Req, Resp, F, Fut>(name: impl Into<String>, handler: F) -> Self
    where
        Req: DeserializeOwned + JsonSchema + Send + 'static,
        Resp: Serialize + JsonSchema + 'static,
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let request_schema = Arc::new(RequestSchema::for_type::<Req>());
        let schema = request_schema.clone();
        let erased: ErasedHandler = Arc::new(move |ctx, payload: Bytes| {
            let handler = handler.clone();
            let schema = schema.clone();
            Box::pin(async move {
                // Inside the future: the dispatcher catches a panic here too.
                let request: Req = schema.decode(&payload, ctx.encoding)?;
                let accept = ctx.accept;
                let response = handler(ctx, request).await?;
                accept.encode(&response).map_err(|e| {
                    tracing::error!(error = %e, "response does not serialize");
                    ServiceError::internal("internal error")
                })
            })
        });
        Endpoint {
            name: name.into(),
            description: String::new(),
            idempotent: false,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_queued: DEFAULT_MAX_QUEUED,
            metadata: Metadata::new(),
            request_schema,
            response_schema: schema::schema_of::<Resp>(),
            handler: erased,
        }
    }

    /// [`Endpoint::new`] for a handler that also gets shared state, the way
    /// axum handlers get `State`: `async fn create(accounts: Arc<Accounts>, ctx:
    /// Context, req: CreateUser) -> Result<User, ServiceError>`.
    pub fn with_state<S, Req, Resp, F, Fut>(
        name: impl Into<String>,
        state: Arc<S>,
        handler: F,
    ) -> Self
    where
        S: Send + Sync + 'static,
        Req: DeserializeOwned + JsonSchema + Send + 'static,
        Resp: Serialize + JsonSchema + 'static,
        F: Fn(Arc<S>, Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        Endpoint::new(name, move |ctx, req| handler(state.clone(), ctx, req))
    }

    /// One line for discovery and generated API docs.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Safe to repeat (clients may then retry it on timeout).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Requests handled at once (at least 1).
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.max_in_flight = limit.max(1);
        self
    }

    /// Requests that may wait for a slot; beyond that, 429.
    pub fn max_queued(mut self, limit: usize) -> Self {
        self.max_queued = limit;
        self
    }

    /// Exposes the endpoint through an HTTP front end: `method` and a path
    /// template whose `{name}` parts fill request fields of the same name,
    /// e.g. `.http("GET", "/accounts/{id}")`. An HTTP front end learns it from
    /// discovery; no change of the front end is needed.
    pub fn http(self, method: &str, path: &str) -> Self {
        self.metadata(HTTP_METHOD, method.to_uppercase())
            .metadata(HTTP_PATH, path)
    }

    /// The HTTP status of a success through an HTTP front end (default 200;
    /// 201 for endpoints that create).
    pub fn http_status(self, status: u16) -> Self {
        self.metadata(HTTP_STATUS, status.to_string())
    }

    /// Extra metadata (e.g. the HTTP route an HTTP front end should expose).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Metadata as published in `$SRV.INFO`: the extras plus description,
    /// schemas, idempotency and limits.
    pub(crate) fn published_metadata(&self) -> Metadata {
        let mut metadata = self.metadata.clone();
        metadata.insert(DESCRIPTION.into(), self.description.clone());
        metadata.insert(
            REQUEST_SCHEMA.into(),
            self.request_schema.published.to_string(),
        );
        metadata.insert(RESPONSE_SCHEMA.into(), self.response_schema.to_string());
        metadata.insert(IDEMPOTENT.into(), self.idempotent.to_string());
        metadata.insert(MAX_IN_FLIGHT.into(), self.max_in_flight.to_string());
        metadata
    }
}
