//! Interleaved rounds: the only way a ratio holds on a shared machine.
//!
//! Variants measured one after another in fixed windows each see different
//! neighbours, and their ratio swings ×2 from run to run. Here every round
//! measures every variant (A B C, then C B A, …), each round's ratio is taken
//! against the baseline of the *same* round, and what is reported is the
//! median of the rounds with its min–max — for throughput and for CPU per
//! operation (process + nats-server), which moves far less with neighbours
//! and is what a user pays.

use std::future::Future;

use crate::report::{Report, Run, median};

/// A ratio across rounds.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        let median = median(&mut sorted);
        Spread {
            median,
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2}x ({:.2}-{:.2})", self.median, self.min, self.max)
    }
}

/// Measures `variants.len()` variants in `rounds` rounds, the order
/// reversed every other round; `measure(i)` runs variant `i` once.
/// Returns each variant's runs, round by round.
pub async fn interleave<F, Fut>(
    rounds: usize,
    variants: usize,
    mut measure: F,
) -> anyhow::Result<Vec<Vec<Run>>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Run>>,
{
    let mut runs: Vec<Vec<Run>> = (0..variants).map(|_| Vec::with_capacity(rounds)).collect();
    for round in 0..rounds {
        for step in 0..variants {
            let index = if round % 2 == 0 {
                step
            } else {
                variants - 1 - step
            };
            runs[index].push(measure(index).await?);
        }
    }
    Ok(runs)
}

/// Throughput of a run, operations per second.
fn throughput(run: &Run) -> f64 {
    run.ops as f64 / run.took.as_secs_f64().max(1e-9)
}

/// CPU per operation of a run (process + server), if measured.
fn cpu(run: &Run) -> Option<f64> {
    run.cpu.map(|c| c.process + c.server)
}

/// Adds every run to the report and prints, for each variant after the
/// first (the baseline), the throughput ratio and the CPU ratio (baseline's
/// CPU per operation ÷ the variant's: above 1 it costs less) across rounds.
/// Returns the throughput spreads, one per non-baseline variant.
pub fn report(
    report: &mut Report,
    scenario: &str,
    names: &[&str],
    runs: &[Vec<Run>],
) -> Vec<Spread> {
    let Some(baseline) = runs.first() else {
        return Vec::new();
    };
    for (round, base) in baseline.iter().enumerate() {
        let base_rate = report.add_run(scenario, names[0], base, None);
        for (variant, series) in runs.iter().enumerate().skip(1) {
            if let Some(run) = series.get(round) {
                report.add_run(scenario, names[variant], run, Some(base_rate));
            }
        }
    }
    runs.iter()
        .enumerate()
        .skip(1)
        .map(|(variant, series)| compare(report, scenario, names[variant], series, baseline))
        .collect()
}

/// Prints and records `series` against `baseline`, round by round (the two
/// measured in the same rounds): the throughput ratio and the CPU ratio.
pub fn compare(
    report: &mut Report,
    scenario: &str,
    name: &str,
    series: &[Run],
    baseline: &[Run],
) -> Spread {
    let rates: Vec<f64> = series
        .iter()
        .zip(baseline)
        .map(|(run, base)| throughput(run) / throughput(base).max(1e-9))
        .collect();
    let cpus: Vec<f64> = series
        .iter()
        .zip(baseline)
        .filter_map(|(run, base)| Some(cpu(base)? / cpu(run)?.max(1e-9)))
        .collect();
    let rate = Spread::of(&rates);
    report.compare(scenario, &format!("{name} (median of rounds)"), rate.median);
    let cpu_text = if cpus.is_empty() {
        String::new()
    } else {
        format!(", cpu/op {}", Spread::of(&cpus))
    };
    println!("  {name}: throughput {rate}{cpu_text}");
    rate
}
