//! Span export over OTLP, configured only by the standard variables.
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL of a collector (`/v1/traces` is appended); setting it turns export on |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the full traces URL; also turns export on |
//! | `OTEL_TRACES_EXPORTER` | `none` turns export off; `otlp` turns it on (default endpoint `http://localhost:4318`) |
//! | `OTEL_SDK_DISABLED` | `true` turns export off |
//! | `OTEL_SERVICE_NAME` | the `service.name` (default: the process's own, e.g. `invoices`) |
//! | `OTEL_RESOURCE_ATTRIBUTES` | more resource attributes |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | sampling (default `parentbased_always_on`) |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, … | the batch exporter |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`, `…_COMPRESSION` | the HTTP requests |
//!
//! The protocol is OTLP/HTTP with protobuf bodies (`http/protobuf`, port
//! 4318), which every collector, Jaeger and Tempo accept; gRPC would add a
//! second HTTP stack to every binary for no gain on loopback.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing::{Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Where OTLP/HTTP goes when only `OTEL_TRACES_EXPORTER=otlp` is set.
const DEFAULT_ENDPOINT: &str = "http://localhost:4318";

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The OTLP exporter refused its configuration (endpoint, protocol,
    /// headers).
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Export asked for by the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    endpoint: String,
}

impl ExportSettings {
    /// Export to the OTLP/HTTP traces URL `endpoint` (the full URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`); the other variables still apply.
    pub fn to(endpoint: impl Into<String>) -> Self {
        ExportSettings {
            endpoint: endpoint.into(),
        }
    }

    /// `None` unless the variables ask for export (see the module's table).
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        if var(SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return None;
        }
        let exporter = var(TRACES_EXPORTER);
        if exporter
            .as_deref()
            .is_some_and(|v| v.split(',').any(|e| e.trim() == "none"))
        {
            return None;
        }
        let endpoint = var(TRACES_ENDPOINT).or_else(|| {
            var(ENDPOINT).map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        });
        match (endpoint, exporter) {
            (Some(endpoint), _) => Some(ExportSettings { endpoint }),
            (None, Some(exporter)) if exporter.split(',').any(|e| e.trim() == "otlp") => {
                Some(ExportSettings {
                    endpoint: format!("{DEFAULT_ENDPOINT}/v1/traces"),
                })
            }
            (None, _) => None,
        }
    }

    /// The URL spans are sent to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The SDK's tracer provider with a batch exporter to the endpoint
    /// (the exporter reads the remaining variables itself). The batch
    /// exporter runs on its own thread: a request never waits for export.
    pub(super) fn provider(&self, service: &str) -> Result<SdkTracerProvider, ExportError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(self.endpoint.clone())
            .build()?;
        let mut resource = Resource::builder();
        let named_by_env = std::env::var(SERVICE_NAME).is_ok_and(|v| !v.trim().is_empty())
            || std::env::var(RESOURCE_ATTRIBUTES).is_ok_and(|v| v.contains("service.name="));
        if !named_by_env {
            resource = resource.with_service_name(service.to_owned());
        }
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build())
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans: `info`
/// and above (our hops, and a service's own spans), none from the crates
/// that carry the export itself (a span about exporting would be exported,
/// and so on).
pub(super) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let filter = Targets::new()
        .with_default(Level::INFO)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
        .with_target("opentelemetry_http", LevelFilter::OFF)
        .with_target("reqwest", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("async_nats", LevelFilter::OFF);
    // While export is paused (`Telemetry::set_exporting(false)`) the layer
    // sees nothing, as if it were not installed.
    let unpaused = tracing_subscriber::filter::filter_fn(|_| super::exporting());
    // Only what the semantic conventions ask for: no source location,
    // thread, target or busy/idle times (each an attribute, or clock reads
    // on every poll of an instrumented future), and no OpenTelemetry
    // context made current on entering a span (parents are explicit or
    // come from the `tracing` span tree): on the echo benchmark these were
    // a quarter of export's cost.
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("switchboard"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(filter.and(unpaused))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Option<ExportSettings> {
        ExportSettings::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn nothing_set_exports_nothing() {
        assert_eq!(settings(&[]), None);
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path() {
        let got = settings(&[(ENDPOINT, "http://127.0.0.1:4318/")]);
        assert_eq!(
            got.as_ref().map(ExportSettings::endpoint),
            Some("http://127.0.0.1:4318/v1/traces")
        );
    }

    #[test]
    fn the_traces_endpoint_is_used_as_it_is_and_wins() {
        let got = settings(&[
            (ENDPOINT, "http://a:4318"),
            (TRACES_ENDPOINT, "http://b:4318/custom"),
        ]);
        assert_eq!(
            got.as_ref().map(ExportSettings::endpoint),
            Some("http://b:4318/custom")
        );
    }

    #[test]
    fn none_and_disabled_turn_export_off() {
        assert_eq!(
            settings(&[(ENDPOINT, "http://a:4318"), (TRACES_EXPORTER, "none")]),
            None
        );
        assert_eq!(
            settings(&[(ENDPOINT, "http://a:4318"), (SDK_DISABLED, "TRUE")]),
            None
        );
    }

    #[test]
    fn otlp_alone_uses_the_default_endpoint() {
        let got = settings(&[(TRACES_EXPORTER, "otlp")]);
        assert_eq!(
            got.as_ref().map(ExportSettings::endpoint),
            Some("http://localhost:4318/v1/traces")
        );
    }
}
