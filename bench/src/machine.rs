//! The machine a run happened on, and how much of it the run really had:
//! a ratio from a machine whose hypervisor took a third of the CPU (steal
//! time) is not a ratio from a quiet one.

use std::time::Instant;

/// CPU model, clock and cores, from `/proc/cpuinfo`.
pub fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    format!(
        "{} @ {} MHz, {cores} cores",
        field("model name").unwrap_or_else(|| "unknown CPU".to_owned()),
        field("cpu MHz").unwrap_or_else(|| "?".to_owned()),
    )
}

/// The aggregate `cpu` line of `/proc/stat`: (steal, total) jiffies.
fn steal_and_total() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    Some((*values.get(7)?, values.iter().take(8).sum()))
}

/// Steal time over an interval: the share of CPU the hypervisor gave to
/// other guests.
#[derive(Debug)]
pub struct Steal {
    start: Option<(u64, u64)>,
    since: Instant,
}

impl Steal {
    pub fn start() -> Self {
        Steal {
            start: steal_and_total(),
            since: Instant::now(),
        }
    }

    /// Percent of CPU time stolen since the start (`None` if unreadable).
    pub fn percent(&self) -> Option<f64> {
        let (steal0, total0) = self.start?;
        let (steal1, total1) = steal_and_total()?;
        let total = total1.saturating_sub(total0);
        (total > 0).then(|| steal1.saturating_sub(steal0) as f64 * 100.0 / total as f64)
    }

    /// Seconds since the start.
    pub fn seconds(&self) -> f64 {
        self.since.elapsed().as_secs_f64()
    }
}
