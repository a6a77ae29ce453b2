//! Prometheus metrics: requests and latency per route and status, the NATS
//! connection state, the HTTP connections (open, shed by why), and the
//! services' `$SRV.STATS` figures at scrape time.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide recorder (installed once; `None` if another recorder
/// was installed first).
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

pub(crate) fn record(route: &str, status: u16, took: Duration) {
    let labels = [("route", route.to_owned()), ("status", status.to_string())];
    metrics::counter!("gateway_http_requests_total", &labels).increment(1);
    metrics::histogram!("gateway_http_request_duration_seconds", &labels)
        .record(took.as_secs_f64());
}

pub(crate) fn connection_state(connected: bool) {
    metrics::gauge!("gateway_nats_connected").set(if connected { 1.0 } else { 0.0 });
}

/// The HTTP server's connections: open now, and closed or refused since
/// start, by why.
pub(crate) fn http_connections(counts: &switchboard::http::ConnectionCounts) {
    metrics::gauge!("gateway_http_connections_open").set(counts.open as f64);
    metrics::counter!("gateway_http_connections_accepted_total").absolute(counts.accepted);
    for (reason, count) in [
        ("header_timeout", counts.header_timeouts),
        ("idle_timeout", counts.idle_timeouts),
        ("evicted", counts.evicted),
        ("refused", counts.refused),
    ] {
        metrics::counter!("gateway_http_connections_shed_total", "reason" => reason)
            .absolute(count);
    }
}

pub(crate) fn service_stats(stats: &[switchboard::micro::StatsResponse]) {
    for service in stats {
        for endpoint in &service.endpoints {
            let labels = [
                ("service", service.name.clone()),
                ("instance", service.id.clone()),
                ("endpoint", endpoint.name.clone()),
            ];
            metrics::gauge!("service_requests", &labels).set(endpoint.num_requests as f64);
            metrics::gauge!("service_errors", &labels).set(endpoint.num_errors as f64);
            metrics::gauge!("service_average_processing_seconds", &labels)
                .set(endpoint.average_processing_time as f64 / 1e9);
            // The kit's latency buckets, since the instance started.
            let data = endpoint.data.as_ref();
            for (quantile, key) in [("0.5", "p50_us"), ("0.99", "p99_us")] {
                if let Some(micros) = data.and_then(|d| d[key].as_u64()) {
                    let mut labels = labels.to_vec();
                    labels.push(("quantile", quantile.to_owned()));
                    metrics::gauge!("service_latency_seconds", &labels).set(micros as f64 / 1e6);
                }
            }
        }
    }
}
