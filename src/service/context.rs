//! What a handler knows about the request it serves.

use std::time::Duration;

use async_nats::HeaderMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::client::{CallError, CallOptions, Client};
use crate::codec::Encoding;
use crate::trace_context::TraceContext;

/// The request's deadline and trace, the caller's headers, and a client
/// whose calls inherit both — so a chain of calls never outlives the first
/// caller's patience.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) endpoint: std::sync::Arc<str>,
    pub(crate) subject: async_nats::Subject,
    pub(crate) deadline: Option<Instant>,
    pub(crate) trace: TraceContext,
    pub(crate) headers: Option<HeaderMap>,
    pub(crate) client: Client,
    /// The request payload's encoding.
    pub(crate) encoding: Encoding,
    /// The encoding the caller wants the reply in.
    pub(crate) accept: Encoding,
}

impl Context {
    /// The endpoint's name.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The subject the request arrived on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the caller stops waiting, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`None` without one).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// This request's trace context (the caller's trace, a span of ours).
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// A header the caller sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.as_ref()?.get(name).map(|v| v.as_str())
    }

    /// The service's client, for calls that should not inherit this
    /// request's deadline (rare; prefer [`Context::call`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Calls another endpoint within this request's deadline and trace.
    ///
    /// # Errors
    ///
    /// A [`CallError`]; `?` turns it into the right reply for our caller
    /// (rejections pass through, the rest become 503/504).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        self.call_with(subject, request, CallOptions::default())
            .await
    }

    /// [`Context::call`] with explicit options; the deadline is still
    /// capped by this request's.
    ///
    /// # Errors
    ///
    /// As [`Context::call`].
    pub async fn call_with<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        request: &Req,
        mut options: CallOptions,
    ) -> Result<Resp, CallError> {
        if let Some(ours) = self.deadline {
            options.deadline = Some(options.deadline.map_or(ours, |d| d.min(ours)));
        }
        options.trace = Some(self.trace);
        self.client.call_with(subject, request, options).await
    }
}
