//! Why a call failed, with kinds a caller can match.

use std::borrow::Cow;
use std::time::Duration;

use crate::error::ServiceError;

/// A failed [`call`](super::Client::call).
///
/// ```
/// # use switchboard::client::CallError;
/// fn http_status(e: &CallError) -> u16 {
///     match e {
///         CallError::Rejected(error) => error.code,
///         CallError::TimedOut { .. } => 504,
///         CallError::NoResponders { .. } | CallError::CircuitOpen { .. } => 503,
///         _ => 502,
///     }
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No answer before the deadline.
    #[error("{subject}: no reply within {waited:?}")]
    TimedOut {
        /// The subject called.
        subject: String,
        /// How long the call waited in total.
        waited: Duration,
    },
    /// Nobody serves the subject (NATS answered at once).
    #[error("{subject}: no service is listening")]
    NoResponders {
        /// The subject called.
        subject: String,
    },
    /// The circuit breaker for the subject is open: the call was not sent.
    #[error("{subject}: circuit open after repeated failures; not calling for now")]
    CircuitOpen {
        /// The subject called.
        subject: String,
    },
    /// The service answered with an error.
    #[error("{0}")]
    Rejected(ServiceError),
    /// The server refused to let this connection's NATS user publish to the
    /// subject: the request never reached a service. Its permissions
    /// (`nats.conf`, derived by `switchboard up` from the service's
    /// contract) do not include the subject.
    #[error("{subject}: {refusal}")]
    PermissionDenied {
        /// The subject called.
        subject: String,
        /// The server's refusal: user, operation, subject.
        refusal: crate::refusals::Refusal,
    },
    /// The reply was not the expected type (or the request not serializable).
    #[error("{subject}: cannot decode: {source}")]
    Decode {
        /// The subject called.
        subject: String,
        /// serde's error, in the payload's encoding.
        #[source]
        source: crate::codec::CodecError,
    },
    /// The request cannot be sent as it is (bad subject, too large); no
    /// retry can help.
    #[error("{subject}: cannot send: {message}")]
    Invalid {
        /// The subject called.
        subject: String,
        /// The client's error.
        message: String,
    },
    /// The connection failed.
    #[error("{subject}: transport error: {message}")]
    Transport {
        /// The subject called.
        subject: String,
        /// The client's words.
        message: String,
        /// The client's error (its kind and chain).
        #[source]
        source: async_nats::RequestError,
    },
}

impl CallError {
    /// The service's error, for [`CallError::Rejected`].
    pub fn rejection(&self) -> Option<&ServiceError> {
        match self {
            CallError::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// A short, stable name of the failure's class (`timeout`,
    /// `no_responders`, …; a rejection's status code): a span's
    /// `error.type`, a metric label.
    pub fn error_type(&self) -> Cow<'static, str> {
        match self {
            CallError::TimedOut { .. } => "timeout".into(),
            CallError::NoResponders { .. } => "no_responders".into(),
            CallError::CircuitOpen { .. } => "circuit_open".into(),
            CallError::Rejected(e) => e.code.to_string().into(),
            CallError::PermissionDenied { .. } => "permission_denied".into(),
            CallError::Decode { .. } => "decode".into(),
            CallError::Invalid { .. } => "invalid".into(),
            CallError::Transport { .. } => "transport".into(),
        }
    }

    /// The status this failure means for whoever called us (a handler's
    /// caller, an HTTP client): the one mapping, used by handlers and the
    /// HTTP front ends alike. A rejection keeps its code; no answer in time is 504;
    /// nobody serving, an open circuit or a broken connection is 503 (worth
    /// a retry later); a request or reply we could not encode or decode, or
    /// a subject our own user may not call, is our own bug, 500.
    pub fn status(&self) -> u16 {
        match self {
            CallError::Rejected(e) => e.code,
            CallError::TimedOut { .. } => 504,
            CallError::NoResponders { .. }
            | CallError::CircuitOpen { .. }
            | CallError::Transport { .. } => 503,
            CallError::Decode { .. }
            | CallError::Invalid { .. }
            | CallError::PermissionDenied { .. } => 500,
        }
    }

    /// What a handler should answer its own caller when this call failed:
    /// rejections pass through, the rest get [`CallError::status`] (a 500
    /// without internals).
    pub fn to_service_error(&self) -> ServiceError {
        match self {
            CallError::Rejected(e) => e.clone(),
            other if other.status() == 500 => {
                ServiceError::internal("a call to a dependency failed")
            }
            other => ServiceError::new(other.status(), other.to_string()),
        }
    }

    /// Whether the failure says something about the target's health (for
    /// the circuit breaker): 4xx rejections do not, they are the caller's.
    pub(crate) fn is_target_failure(&self) -> bool {
        match self {
            CallError::Rejected(e) => e.is_server_error(),
            CallError::Decode { .. }
            | CallError::CircuitOpen { .. }
            | CallError::Invalid { .. }
            | CallError::PermissionDenied { .. } => false,
            _ => true,
        }
    }
}

impl From<CallError> for ServiceError {
    fn from(e: CallError) -> Self {
        e.to_service_error()
    }
}
