//! What a service process can fail with, in one type.
//!
//! A service's `run` sets up state, streams, endpoints and consumers; each
//! part has its own error kind, and this enum carries whichever happened so
//! `main` can report it in one line.

/// Start-up or run failure of a service process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// Connecting to NATS failed.
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    /// The service could not start.
    #[error(transparent)]
    Serve(#[from] crate::service::ServeError),
    /// A stream, publisher or consumer failed.
    #[error(transparent)]
    Events(#[from] crate::events::EventError),
    /// A state bucket failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A background task panicked or was cancelled.
    #[error("a background task failed: {0}")]
    Task(String),
}

impl From<tokio::task::JoinError> for AppError {
    fn from(e: tokio::task::JoinError) -> Self {
        AppError::Task(e.to_string())
    }
}
