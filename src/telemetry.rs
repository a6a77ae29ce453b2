//! Logging set-up shared by every binary.
//!
//! `RUST_LOG` chooses what is shown (default `info`). Output goes to stderr so
//! that stdout stays free for what a command prints on purpose (tables, JSON).

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber; a second call does nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
