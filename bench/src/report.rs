//! Measurements, percentiles and ratio lines, printed and saved as JSON.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One measured variant of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Scenario, e.g. `request-reply c=64`.
    pub scenario: String,
    /// Variant, e.g. `raw async-nats`.
    pub variant: String,
    /// Operations per second.
    pub throughput: f64,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9.
    pub latency_us: Option<[u64; 4]>,
    /// Ratio to the scenario's baseline (1.0 for the baseline itself).
    pub ratio: f64,
}

/// Collects measurements and prints them as they come.
#[derive(Debug, Default)]
pub struct Report {
    /// Everything measured so far.
    pub measurements: Vec<Measurement>,
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Records a latency.
pub fn record(histogram: &mut Histogram<u64>, took: Duration) {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
    let _ = histogram.record(micros.min(histogram.high()));
}

impl Report {
    /// Adds a measurement; `baseline` is the throughput it is compared with
    /// (`None`: it is the baseline).
    pub fn add(
        &mut self,
        scenario: &str,
        variant: &str,
        ops: u64,
        elapsed: Duration,
        latency: Option<&Histogram<u64>>,
        baseline: Option<f64>,
    ) -> f64 {
        let throughput = ops as f64 / elapsed.as_secs_f64().max(1e-9);
        let ratio = baseline.map_or(1.0, |b| throughput / b.max(1e-9));
        let latency_us = latency.filter(|h| !h.is_empty()).map(|h| {
            [
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
            ]
        });
        let lat = latency_us
            .map(|[a, b, c, d]| format!("p50 {a}µs p90 {b}µs p99 {c}µs p99.9 {d}µs"))
            .unwrap_or_default();
        println!("  {variant:<34} {throughput:>11.0} ops/s  {lat}");
        if baseline.is_some() {
            println!("ratio {scenario}: {variant} = {ratio:.2}x");
        }
        self.measurements.push(Measurement {
            scenario: scenario.to_owned(),
            variant: variant.to_owned(),
            throughput,
            latency_us,
            ratio,
        });
        throughput
    }
}
