//! The error a handler returns and a caller receives: a reply, never silence.
//!
//! Codes follow HTTP so that HTTP front ends, the `nats` CLI and people all read
//! them the same way: 400 bad input, 404 unknown, 409 conflict, 422 rule
//! broken, 429 overloaded, 500 bug, 503 unavailable, 504 deadline exceeded.
//! On the wire it is the `Nats-Service-Error`/`-Code` headers plus the body
//! `{"error":{"code":…,"message":…,"details":…}}` (see [`crate::codec`]).

use serde::{Deserialize, Serialize};

/// A failed request, as replied by a service.
///
/// ```
/// use switchboard::ServiceError;
///
/// let e = ServiceError::not_found("no order 42");
/// assert_eq!(e.code, 404);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code} {message}")]
pub struct ServiceError {
    /// HTTP-style status code.
    pub code: u16,
    /// Human-readable explanation.
    pub message: String,
    /// Machine-readable extras (e.g. which field failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ServiceError {
    /// An error with any code.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ServiceError {
            code,
            message: message.into(),
            details: None,
        }
    }
    /// 400: the request is malformed or invalid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    /// 404: the thing asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }
    /// 422: well-formed, but a business rule forbids it.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, message)
    }
    /// 409 that is not about the request: the state it needed kept changing
    /// under concurrent writers until the retries ran out. Marked
    /// `{"retry": true}` in the details, so callers and consumers can tell
    /// it from a domain conflict ([`ServiceError::is_transient`]).
    pub fn contended(message: impl Into<String>) -> Self {
        Self::new(409, message).with_details(serde_json::json!({ "retry": true }))
    }
    /// 429: too many requests in flight; try again later.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(429, message)
    }
    /// 500: a bug; details belong in the log, not the reply.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
    /// 503: a dependency is unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }
    /// 504: the caller's deadline passed.
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(504, message)
    }
    /// 503: the server's storage is full (see [`crate::storage`]'s kinds):
    /// nothing was written, and the same request can succeed once space
    /// returns. `{"retry": true, "storage": "full"}` in the details, so a
    /// consumer waits for space instead of counting a failure.
    pub fn storage_full(message: impl Into<String>) -> Self {
        Self::new(503, message)
            .with_details(serde_json::json!({ "retry": true, "storage": "full" }))
    }

    /// Whether this is [`ServiceError::storage_full`].
    pub fn is_storage_full(&self) -> bool {
        self.code == 503
            && self
                .details
                .as_ref()
                .and_then(|d| d.get("storage"))
                .and_then(serde_json::Value::as_str)
                == Some("full")
    }

    /// Adds machine-readable details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
    /// Whether the failure is the server's (5xx) rather than the request's.
    pub fn is_server_error(&self) -> bool {
        self.code >= 500
    }
    /// Whether the same request may succeed later unchanged: a server
    /// error, an overload (429), or contention ([`ServiceError::contended`]).
    /// A consumer retries these rather than dead-lettering the event.
    pub fn is_transient(&self) -> bool {
        self.is_server_error()
            || self.code == 429
            || self
                .details
                .as_ref()
                .and_then(|d| d.get("retry"))
                .and_then(serde_json::Value::as_bool)
                == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::ServiceError;

    #[test]
    fn contention_is_transient_and_a_domain_conflict_is_not() {
        assert!(ServiceError::contended("sku keeps changing").is_transient());
        assert_eq!(ServiceError::contended("x").code, 409);
        assert!(!ServiceError::conflict("short of stock").is_transient());
        assert!(ServiceError::overloaded("busy").is_transient());
        assert!(ServiceError::unavailable("down").is_transient());
        assert!(!ServiceError::bad_request("no").is_transient());
    }
}
