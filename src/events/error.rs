//! What can go wrong with streams, publishing and consuming.

/// Errors of the [`events`](super) module; match on the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// No stream captures the subject: the event would be lost.
    #[error(
        "no stream captures {subject}: declare one (or fix the subject); the event was not stored"
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
    Envelope(#[from] crate::codec::EnvelopeError),
    /// An attribute cannot travel as a header (a line break would end it).
    #[error("event attribute {name} must be one line, got {value:?}")]
    InvalidAttribute {
        /// The attribute, e.g. `ce-subject`.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// A dead letter with this id does not exist.
    #[error("no dead letter {0}")]
    UnknownDeadLetter(u64),
    /// The JetStream API answered with an error.
    #[error("{action}: {message}")]
    JetStream {
        /// What was being done.
        action: String,
        /// The server's or client's words.
        message: String,
    },
}

impl EventError {
    pub(crate) fn js(action: impl Into<String>) -> impl FnOnce(&dyn std::fmt::Display) -> Self {
        let action = action.into();
        move |e| EventError::JetStream {
            action,
            message: e.to_string(),
        }
    }
}
