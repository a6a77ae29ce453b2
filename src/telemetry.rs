//! Logging set-up shared by every binary.
//!
//! `RUST_LOG` chooses what is shown (default `info`). Output goes to stderr so
//! that stdout stays free for what a command prints on purpose (tables, JSON).
//! Colours only reach a terminal: a service under `switchboard up` writes to
//! a pipe, so `up` tells it through [`LOG_ANSI_ENV`] whether the lines will
//! end on a terminal after all. `NO_COLOR` always wins.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `1` or `0`: force colours on or off (set by `switchboard up` for services).
pub const LOG_ANSI_ENV: &str = "SWITCHBOARD_LOG_ANSI";

/// Installs the global `tracing` subscriber showing `info` and above (what
/// services and `switchboard up` log); a second call does nothing.
pub fn init() {
    init_at("info");
}

/// [`init`] with another default level (`RUST_LOG` still wins): operator
/// commands show only warnings unless asked (`-v`), so their output is
/// what they print, not the client's connection events.
pub fn init_at(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = match std::env::var(LOG_ANSI_ENV) {
        Ok(forced) => forced == "1",
        Err(_) => std::io::stderr().is_terminal(),
    } && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        // Otherwise a closed stderr (`switchboard up 2>&1 | tee`, with tee
        // gone after Ctrl-C) makes the subscriber's own `eprintln!` panic.
        .log_internal_errors(false)
        .try_init();
}
