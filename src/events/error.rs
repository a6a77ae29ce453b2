//! What can go wrong with streams, publishing and consuming.

/// Errors of the [`events`](super) module; match on the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// No stream answered for the subject (no responders): none captures
    /// it, or — in a cluster — the one that does has no leader in reach
    /// right now. The event was not stored.
    #[error(
        "no stream answered for {subject}: none captures it (declare one, or fix the subject), \
         or in a cluster its leader is out of reach; the event was not stored"
    )]
    NoStream {
        /// The subject published to.
        subject: String,
    },
    /// The server did not acknowledge in time.
    #[error("no publish acknowledgement for {subject} within the timeout")]
    AckTimeout {
        /// The subject.
        subject: String,
    },
    /// A stream exists with settings other than the declared ones.
    #[error("stream {stream} differs from its declaration: {}; change the declaration or update the stream deliberately", differences.join("; "))]
    StreamDrift {
        /// The stream.
        stream: String,
        /// What differs, `field: live → declared`.
        differences: Vec<String>,
    },
    /// The payload could not be (de)serialized.
    #[error("event payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// A message is not a CloudEvent.
    #[error(transparent)]
    Envelope(#[from] crate::events::envelope::EnvelopeError),
    /// An attribute cannot travel as a header: a line break would end it,
    /// or it is longer than [`MAX_HEADER_VALUE`](crate::limits::MAX_HEADER_VALUE)
    /// bytes, or empty. Nothing was published.
    #[error("event attribute {name} is {reason}: {value:?}")]
    InvalidAttribute {
        /// The attribute, e.g. `ce-subject`.
        name: &'static str,
        /// The value's first characters.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The subject is too long to publish (the server would close the
    /// connection). Nothing was published.
    #[error("cannot publish to {subject:?}: {reason}")]
    InvalidSubject {
        /// The subject's first characters.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A consumer's declaration cannot be run as it is (say, a keyed
    /// consumer without event subjects). Nothing was created.
    #[error("consumer {durable}: {reason}")]
    InvalidConsumer {
        /// The durable name declared.
        durable: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A dead letter with this id does not exist.
    #[error("no dead letter {0}")]
    UnknownDeadLetter(u64),
    /// The stream refused the event for want of space (the server's
    /// storage is full, or the stream is at its limits): nothing was
    /// stored; the same publish can succeed once space returns.
    #[error("{subject}: the stream has no space for the event ({reason}); nothing was stored")]
    StorageFull {
        /// The subject published to.
        subject: String,
        /// The server's words.
        reason: String,
    },
    /// The JetStream API answered with an error.
    #[error("{action}: {message}")]
    JetStream {
        /// What was being done.
        action: String,
        /// The server's or client's words.
        message: String,
        /// The client's error, when there was one (its kind and chain).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl EventError {
    /// A short, stable name of the failure's class (a span's `error.type`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            EventError::NoStream { .. } => "no_stream",
            EventError::AckTimeout { .. } => "ack_timeout",
            EventError::StreamDrift { .. } => "stream_drift",
            EventError::Payload(_) => "payload",
            EventError::Envelope(_) => "envelope",
            EventError::InvalidAttribute { .. } => "invalid_attribute",
            EventError::InvalidSubject { .. } => "invalid_subject",
            EventError::InvalidConsumer { .. } => "invalid_consumer",
            EventError::UnknownDeadLetter(_) => "unknown_dead_letter",
            EventError::StorageFull { .. } => "storage_full",
            EventError::JetStream { .. } => "jetstream",
        }
    }

    pub(crate) fn js<E>(action: impl Into<String>) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let action = action.into();
        move |e| EventError::JetStream {
            action,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

impl From<EventError> for crate::ServiceError {
    /// What a handler answers when publishing failed: an event built from
    /// bad input is the caller's 400; a missing stream is our bug (500);
    /// the rest means JetStream is unavailable (503, worth a retry).
    fn from(e: EventError) -> Self {
        use crate::ServiceError;
        match e {
            EventError::InvalidAttribute { .. } | EventError::InvalidSubject { .. } => {
                ServiceError::bad_request(e.to_string())
            }
            EventError::NoStream { .. }
            | EventError::StreamDrift { .. }
            | EventError::Payload(_)
            | EventError::Envelope(_)
            | EventError::InvalidConsumer { .. } => {
                tracing::error!(error = %e, "cannot publish an event");
                ServiceError::internal("internal error")
            }
            EventError::UnknownDeadLetter(_) => ServiceError::not_found(e.to_string()),
            EventError::StorageFull { .. } => ServiceError::storage_full(e.to_string()),
            EventError::AckTimeout { .. } | EventError::JetStream { .. } => {
                ServiceError::unavailable(e.to_string())
            }
        }
    }
}
