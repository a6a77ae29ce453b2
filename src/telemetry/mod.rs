//! Logs and traces: what a process tells about itself.
//!
//! **Logs.** `RUST_LOG` chooses what is shown (default `info`). Output goes
//! to stderr so that stdout stays free for what a command prints on purpose
//! (tables, JSON). Colours only reach a terminal: a service under
//! `switchboard up` writes to a pipe, so `up` tells it through
//! [`LOG_ANSI_ENV`] whether the lines will end on a terminal after all.
//! `NO_COLOR` always wins.
//!
//! **Traces.** With the standard OpenTelemetry variables set
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, see [`export`]), every call, handler,
//! event publish and event handling is a span exported over OTLP/HTTP, and
//! the `traceparent` a hop sends is its own span's, so a request is one
//! trace across every process it touches ([`Hop`]). Unset, no span is made
//! at all: the request path pays one relaxed atomic load per hop.
//!
//! A process keeps the [`Telemetry`] that [`init`] returns until it ends:
//! dropping it sends the spans still buffered, waiting at most 2 s for an
//! unreachable collector.

pub mod collector;
mod export;
mod hop;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use export::{ExportError, ExportSettings};
pub use hop::Hop;

/// `1` or `0`: force colours on or off (set by `switchboard up` for services).
pub const LOG_ANSI_ENV: &str = "SWITCHBOARD_LOG_ANSI";

/// Set once the trace exporter is installed; read on every hop.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported (the OTLP variables were set and the
/// exporter started).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The process's telemetry while it runs; dropping it flushes the spans
/// not yet exported and stops the exporter.
#[derive(Debug)]
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether this process exports spans.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Stops (`false`) or resumes making spans, the exporter staying
    /// installed: while stopped every hop takes the path of a process that
    /// exports nothing. For a quiet period, and for measuring what export
    /// costs in one process.
    pub fn set_exporting(&self, on: bool) {
        if self.provider.is_some() {
            EXPORTING.store(on, Ordering::Relaxed);
        }
    }

    /// Sends the spans buffered so far (shutdown does this too).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "cannot export the buffered spans");
        }
    }
}

/// How long a process that is stopping waits for its last spans to leave:
/// an unreachable collector must not hold up a shutdown (the supervisor's
/// patience is for draining requests, not for telemetry).
const LAST_EXPORT: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown_with_timeout(LAST_EXPORT) {
                tracing::warn!(%error, "cannot export the last spans");
            }
        }
    }
}

/// Installs logging showing `info` and above (what services and
/// `switchboard up` log) and, if the OTLP variables ask for it, trace
/// export as `service` (unless `OTEL_SERVICE_NAME` names it). A second call
/// installs nothing and returns an inert [`Telemetry`].
pub fn init(service: &str) -> Telemetry {
    init_at(service, "info")
}

/// [`init`] with another default level (`RUST_LOG` still wins): operator
/// commands show only warnings unless asked (`-v`), so their output is
/// what they print, not the client's connection events.
pub fn init_at(service: &str, default_level: &str) -> Telemetry {
    init_with(service, default_level, ExportSettings::from_env())
}

/// [`init_at`] with export decided by the caller instead of the
/// environment (`None`: no export).
pub fn init_with(
    service: &str,
    default_level: &str,
    settings: Option<ExportSettings>,
) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = match std::env::var(LOG_ANSI_ENV) {
        Ok(forced) => forced == "1",
        Err(_) => std::io::stderr().is_terminal(),
    } && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        // Otherwise a closed stderr (`switchboard up 2>&1 | tee`, with tee
        // gone after Ctrl-C) makes the subscriber's own `eprintln!` panic.
        .log_internal_errors(false)
        .with_filter(filter);
    let (provider, problem) = match settings.as_ref().map(|s| s.provider(service)) {
        None => (None, None),
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(error)) => (None, Some(error)),
    };
    let traces = provider.as_ref().map(export::layer);
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if let Some(error) = problem {
        tracing::error!(%error, "OpenTelemetry export is configured but cannot start; no spans are exported");
    }
    match provider {
        Some(provider) if installed => {
            EXPORTING.store(true, Ordering::Relaxed);
            if let Some(settings) = settings {
                tracing::info!(endpoint = %settings.endpoint(), "exporting OpenTelemetry traces");
            }
            Telemetry {
                provider: Some(provider),
            }
        }
        _ => Telemetry { provider: None },
    }
}
