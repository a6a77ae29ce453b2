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
    /// Ratio to the scenario's baseline (1.0 for the baseline itself);
    /// `None` for a run of interleaved rounds (its comparison is the median
    /// of the rounds' ratios, printed as a `ratio` line).
    pub ratio: Option<f64>,
    /// CPU time per operation in microseconds: this process (clients and
    /// services of the scenario), and nats-server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_op: Option<CpuPerOp>,
}

/// CPU time per operation, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPerOp {
    /// The benchmark process: the clients and services it runs.
    pub process: f64,
    /// The nats-server process.
    pub server: f64,
}

/// CPU time used by this process and the server since [`CpuClock::start`]:
/// a throughput ratio says how much faster, this says where the cycles go
/// (on 2 shared cores, CPU per operation is what bounds throughput).
#[derive(Debug, Clone, Copy)]
pub struct CpuClock {
    server_pid: Option<u32>,
    process: Duration,
    server: Duration,
}

impl CpuClock {
    /// Starts counting.
    pub fn start(server_pid: Option<u32>) -> Self {
        CpuClock {
            server_pid,
            process: cpu_time(std::process::id()),
            server: server_pid.map_or(Duration::ZERO, cpu_time),
        }
    }

    /// A run of `ops` operations begun at `started` (no latencies
    /// recorded), with its CPU per operation since the start.
    pub fn run(&self, ops: u64, started: std::time::Instant) -> Run {
        Run {
            ops,
            took: started.elapsed(),
            latency_us: None,
            cpu: self.per_op(ops),
        }
    }

    /// CPU per operation since the start.
    pub fn per_op(&self, ops: u64) -> Option<CpuPerOp> {
        let ops = ops.max(1) as f64;
        let server_pid = self.server_pid?;
        let process = cpu_time(std::process::id()).saturating_sub(self.process);
        let server = cpu_time(server_pid).saturating_sub(self.server);
        Some(CpuPerOp {
            process: process.as_secs_f64() * 1e6 / ops,
            server: server.as_secs_f64() * 1e6 / ops,
        })
    }
}

/// CPU time used so far by `pid` (zero if it cannot be read).
fn cpu_time(pid: u32) -> Duration {
    switchboard::process::cpu_time(pid).unwrap_or_default()
}

/// One timed run: operations done, wall time, latencies, CPU.
#[derive(Debug, Clone)]
pub struct Run {
    /// Operations completed.
    pub ops: u64,
    /// Wall time.
    pub took: Duration,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9.
    pub latency_us: Option<[u64; 4]>,
    /// CPU per operation.
    pub cpu: Option<CpuPerOp>,
}

impl Run {
    /// Operations per second.
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.took.as_secs_f64().max(1e-9)
    }
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

/// p50, p90, p99 and p99.9 of a histogram (`None` when empty).
pub fn percentiles(h: &Histogram<u64>) -> Option<[u64; 4]> {
    (!h.is_empty()).then(|| [0.5, 0.9, 0.99, 0.999].map(|q| h.value_at_quantile(q)))
}

/// The median of `values` (reordered); 0 when empty. Alternating rounds
/// report it: one round can move with the neighbours, the median less.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Records a latency.
pub fn record(histogram: &mut Histogram<u64>, took: Duration) {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
    let _ = histogram.record(micros.min(histogram.high()));
}

impl Report {
    /// Prints a ratio between two variants measured in this run (both
    /// already added).
    pub fn compare(&self, scenario: &str, what: &str, ratio: f64) {
        println!("ratio {scenario}: {what} = {ratio:.2}x");
    }

    /// Adds `runs` of one variant (measured in rounds) without a line each,
    /// and prints one: the median throughput, latencies and CPU per
    /// operation of the rounds, and how many.
    pub fn summarize<'a>(
        &mut self,
        scenario: &str,
        variant: &str,
        runs: impl IntoIterator<Item = &'a Run>,
    ) {
        let runs: Vec<&Run> = runs.into_iter().collect();
        let mid = |value: &dyn Fn(&Run) -> Option<f64>| {
            let mut values: Vec<f64> = runs.iter().filter_map(|r| value(r)).collect();
            (!values.is_empty()).then(|| median(&mut values))
        };
        let throughput = mid(&|r| Some(r.throughput()));
        let p50 = mid(&|r| r.latency_us.map(|l| l[0] as f64));
        let p99 = mid(&|r| r.latency_us.map(|l| l[2] as f64));
        let process = mid(&|r| r.cpu.map(|c| c.process));
        let server = mid(&|r| r.cpu.map(|c| c.server));
        let mut line = format!(
            "  {variant:<38} {:>11.0} ops/s",
            throughput.unwrap_or_default()
        );
        if let (Some(p50), Some(p99)) = (p50, p99) {
            line.push_str(&format!("  p50 {p50:.0}µs p99 {p99:.0}µs"));
        }
        if let (Some(process), Some(server)) = (process, server) {
            line.push_str(&format!("  cpu/op {process:.1}µs + server {server:.1}µs"));
        }
        println!("{line}  (medians of {} runs)", runs.len());
        for run in runs {
            self.measurements.push(Measurement {
                scenario: scenario.to_owned(),
                variant: variant.to_owned(),
                throughput: run.throughput(),
                latency_us: run.latency_us,
                ratio: None,
                cpu_us_per_op: run.cpu,
            });
        }
    }

    /// Adds a timed run; `baseline` is the throughput it is compared with
    /// (`None`: it is the baseline).
    pub fn add_run(
        &mut self,
        scenario: &str,
        variant: &str,
        run: &Run,
        baseline: Option<f64>,
    ) -> f64 {
        let latency_us = run.latency_us;
        let throughput = run.throughput();
        let ratio = baseline.map_or(1.0, |b| throughput / b.max(1e-9));
        let lat = latency_us
            .map(|[a, b, c, d]| format!("p50 {a}µs p90 {b}µs p99 {c}µs p99.9 {d}µs"))
            .unwrap_or_default();
        let cpu = run
            .cpu
            .map(|c| format!("  cpu/op {:.1}µs + server {:.1}µs", c.process, c.server))
            .unwrap_or_default();
        println!("  {variant:<38} {throughput:>11.0} ops/s  {lat}{cpu}");
        if baseline.is_some() {
            println!("ratio {scenario}: {variant} = {ratio:.2}x");
        }
        self.measurements.push(Measurement {
            scenario: scenario.to_owned(),
            variant: variant.to_owned(),
            throughput,
            latency_us,
            ratio: Some(ratio),
            cpu_us_per_op: run.cpu,
        });
        throughput
    }
}
