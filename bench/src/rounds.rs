//! Bracketed rounds: the only way a ratio holds on a shared machine.
//!
//! Variants measured one after another in fixed windows each see different
//! neighbours, and their ratio swings ×2 from run to run. Rounds of every
//! variant (A B C, then C B A) were the first fix; two full runs then showed
//! the machine's speed *stepping* within a round of seven 5-second
//! variants, which reversing the order does not cancel. So now:
//!
//! - measurements are short (1 s) and many (15 rounds), and
//! - every variant is measured between two measurements of the baseline
//!   (B V1 B V2 B … in a round, the variants' order reversed every other
//!   round), and its ratio is taken against the mean of those two: a
//!   variant is never more than one measurement away from its baseline,
//!   and a linear drift across the three cancels.
//!
//! What is reported is the median of the rounds' ratios with its min–max,
//! for throughput and for CPU per operation (process + nats-server), which
//! moves far less with neighbours and is what a user pays.

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

/// One variant's run with the baseline measured just before and after it.
#[derive(Debug)]
pub struct Bracketed {
    pub run: Run,
    /// Index into [`Measured::baseline`] of the baseline run before it; the
    /// one after is the next.
    pub before: usize,
}

/// A baseline and its variants, measured in bracketed rounds.
#[derive(Debug)]
pub struct Measured {
    /// Every baseline run, in the order measured.
    pub baseline: Vec<Run>,
    /// Per variant (the baseline excluded), its runs round by round.
    pub variants: Vec<Vec<Bracketed>>,
}

impl Measured {
    /// Throughput ratios of variant `v` (0 = the first after the baseline)
    /// to its two neighbouring baseline runs, round by round.
    pub fn throughput_ratios(&self, v: usize) -> Vec<f64> {
        self.variants[v]
            .iter()
            .map(|b| b.run.throughput() / self.baseline_throughput(b.before).max(1e-9))
            .collect()
    }

    /// CPU ratios of variant `v`: the neighbouring baselines' CPU per
    /// operation ÷ the variant's (above 1 it costs less), round by round.
    pub fn cpu_ratios(&self, v: usize) -> Vec<f64> {
        self.variants[v]
            .iter()
            .filter_map(|b| {
                let before = cpu(&self.baseline[b.before])?;
                let after = cpu(self.baseline.get(b.before + 1)?)?;
                Some((before + after) / 2.0 / cpu(&b.run)?.max(1e-9))
            })
            .collect()
    }

    /// The mean throughput of baseline runs `before` and the one after.
    fn baseline_throughput(&self, before: usize) -> f64 {
        let first = self.baseline[before].throughput();
        let second = self.baseline.get(before + 1).map_or(first, Run::throughput);
        (first + second) / 2.0
    }
}

/// Measures a baseline (variant 0) and `variants - 1` variants in `rounds`
/// bracketed rounds (B V1 B V2 … B; the variants' order reversed every
/// other round; a round's last baseline run is the next round's first).
/// `measure(i)` runs variant `i` once.
pub async fn interleave<F, Fut>(
    rounds: usize,
    variants: usize,
    mut measure: F,
) -> anyhow::Result<Measured>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Run>>,
{
    let others = variants.saturating_sub(1);
    let mut measured = Measured {
        baseline: vec![measure(0).await?],
        variants: (0..others).map(|_| Vec::with_capacity(rounds)).collect(),
    };
    for round in 0..rounds {
        for step in 0..others {
            let v = if round % 2 == 0 {
                step
            } else {
                others - 1 - step
            };
            let before = measured.baseline.len() - 1;
            let run = measure(v + 1).await?;
            measured.variants[v].push(Bracketed { run, before });
            measured.baseline.push(measure(0).await?);
        }
    }
    Ok(measured)
}

/// CPU per operation of a run (process + server), if measured.
fn cpu(run: &Run) -> Option<f64> {
    run.cpu.map(|c| c.process + c.server)
}

/// Adds every run to the report (saved in the JSON, one summary line per
/// variant printed) and prints, for each variant after the baseline, the
/// throughput ratio and the CPU ratio across rounds. Returns the throughput
/// spreads, one per non-baseline variant.
pub fn report(
    report: &mut Report,
    scenario: &str,
    names: &[&str],
    measured: &Measured,
) -> Vec<Spread> {
    report.summarize(scenario, names[0], &measured.baseline);
    (0..measured.variants.len())
        .map(|v| {
            let runs: Vec<&Run> = measured.variants[v].iter().map(|b| &b.run).collect();
            report.summarize(scenario, names[v + 1], runs);
            record(
                report,
                scenario,
                names[v + 1],
                &measured.throughput_ratios(v),
                &measured.cpu_ratios(v),
            )
        })
        .collect()
}

/// Prints and records a comparison from its rounds' ratios (throughput;
/// CPU, baseline ÷ variant, when measured).
pub fn record(
    report: &mut Report,
    scenario: &str,
    name: &str,
    rates: &[f64],
    cpus: &[f64],
) -> Spread {
    let rate = Spread::of(rates);
    report.compare(scenario, &format!("{name} (median of rounds)"), rate.median);
    let cpu_text = if cpus.is_empty() {
        String::new()
    } else {
        let cpu = Spread::of(cpus);
        report.compare(
            &format!("{scenario} cpu/op"),
            &format!("{name} (median of rounds)"),
            cpu.median,
        );
        format!(", cpu/op {cpu}")
    };
    println!("  {name}: throughput {rate}{cpu_text}");
    rate
}
