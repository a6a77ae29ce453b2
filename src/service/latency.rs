//! Each endpoint's latency distribution behind `$SRV.STATS`, so p50 and p99
//! can be read from outside (the dashboard, Prometheus) and over any window
//! (two snapshots' difference).
//!
//! Fixed log-scale buckets of atomic counters: recording is one relaxed
//! add on the request path, no lock and no allocation (a histogram crate
//! would want `&mut` access, so a lock per request, or per-thread
//! recorders). Four buckets per power of two bound the error of a quantile
//! to 25 % of its value, plenty to tell 2 ms from 20 ms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per power of two.
const PER_OCTAVE: u64 = 4;
/// 0-3 µs one bucket each, then 4 per octave up to 2^30 µs (~18 min);
/// anything slower goes in the last.
const BUCKETS: usize = 4 + 28 * 4;

/// A latency histogram in microseconds.
#[derive(Debug)]
pub(crate) struct Latency {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Latency {
    pub(crate) fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.buckets[index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The non-empty buckets as `(upper bound in µs, count)`, ascending.
    pub(crate) fn snapshot(&self) -> Vec<(u64, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(i, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then(|| (upper_bound(i), count))
            })
            .collect()
    }
}

/// The bucket of a latency: exact below 4 µs, then the octave and which
/// quarter of it.
fn index(micros: u64) -> usize {
    if micros < PER_OCTAVE {
        return micros as usize;
    }
    let octave = u64::from(63 - micros.leading_zeros()); // ≥ 2
    let quarter = (micros >> (octave - 2)) & 3;
    let index = PER_OCTAVE + (octave - 2) * PER_OCTAVE + quarter;
    usize::try_from(index).map_or(BUCKETS - 1, |i| i.min(BUCKETS - 1))
}

/// The smallest latency (µs) above bucket `index`.
fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < PER_OCTAVE {
        return index + 1;
    }
    let octave = (index - PER_OCTAVE) / PER_OCTAVE + 2;
    let quarter = (index - PER_OCTAVE) % PER_OCTAVE;
    (4 + quarter + 1) << (octave - 2)
}

/// The `q` quantile (0-1) of `(upper bound, count)` buckets, as the upper
/// bound of the bucket it falls in; `None` without samples.
pub fn quantile(buckets: &[(u64, u64)], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    // The rank of the q-th sample, 1-based.
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (bound, count) in buckets {
        seen += count;
        if seen >= rank {
            return Some(*bound);
        }
    }
    buckets.last().map(|(bound, _)| *bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_is_below_its_buckets_bound_and_at_least_the_previous() {
        for micros in (0..5000).chain([65_535, 1 << 20, 1 << 29, u64::MAX / 2]) {
            let i = index(micros);
            assert!(
                micros < upper_bound(i) || i == BUCKETS - 1,
                "{micros} in {i}"
            );
            if i > 0 && i < BUCKETS - 1 {
                assert!(micros >= upper_bound(i - 1), "{micros} in {i}");
            }
        }
    }

    #[test]
    fn quantiles_come_from_the_right_bucket() {
        let latency = Latency::default();
        for _ in 0..98 {
            latency.record(Duration::from_micros(1000));
        }
        latency.record(Duration::from_millis(50));
        latency.record(Duration::from_millis(50));
        let buckets = latency.snapshot();
        let p50 = quantile(&buckets, 0.5).unwrap_or_default();
        let p99 = quantile(&buckets, 0.99).unwrap_or_default();
        assert!((1000..=1280).contains(&p50), "p50 {p50}");
        assert!((50_000..=65_536).contains(&p99), "p99 {p99}");
        assert_eq!(quantile(&[], 0.5), None);
    }
}
