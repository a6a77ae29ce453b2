//! Circuit breakers, one per target subject.
//!
//! Closed: calls flow, consecutive failures are counted. After `threshold`
//! of them the breaker opens: calls fail at once with `CircuitOpen` instead of
//! waiting for a dead service (and piling up behind it). After `cool_down`
//! one probe call is let through (half-open); its success closes the
//! breaker, its failure opens it again.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Settings; `Default`: open after 5 consecutive failures, probe after 5 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// Time open before a probe is allowed.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            threshold: 5,
            cool_down: Duration::from_secs(5),
        }
    }
}

/// State of one breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls fail fast.
    Open,
    /// One probe is in flight.
    HalfOpen,
}

/// What `$SRV.STATS` shows of one breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerSnapshot {
    /// Current state.
    pub state: BreakerState,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Failures ever.
    pub failures: u64,
    /// Calls refused while open.
    pub short_circuited: u64,
    /// Times it opened.
    pub opened: u64,
}

#[derive(Debug)]
struct Breaker {
    state: BreakerState,
    opened_at: Instant,
    snapshot: BreakerSnapshot,
}

/// The breakers of one client, by subject.
#[derive(Debug, Default)]
pub struct Breakers {
    config: BreakerConfig,
    by_subject: Mutex<BTreeMap<String, Breaker>>,
    /// Whether any call ever failed: until then every call may go and no
    /// call needs the lock (the common, healthy case stays lock-free).
    any_failed: AtomicBool,
}

impl Breakers {
    /// Breakers with the given settings.
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            by_subject: Mutex::new(BTreeMap::new()),
            any_failed: AtomicBool::new(false),
        }
    }

    /// Whether a call to `subject` may go out now.
    pub fn allow(&self, subject: &str) -> bool {
        if !self.any_failed.load(Ordering::Acquire) {
            return true;
        }
        let Ok(mut all) = self.by_subject.lock() else {
            return true;
        };
        let Some(b) = all.get_mut(subject) else {
            return true;
        };
        match b.state {
            BreakerState::Closed => true,
            BreakerState::Open if b.opened_at.elapsed() >= self.config.cool_down => {
                b.state = BreakerState::HalfOpen;
                b.snapshot.state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open | BreakerState::HalfOpen => {
                b.snapshot.short_circuited += 1;
                false
            }
        }
    }

    /// Records a call's outcome.
    pub fn record(&self, subject: &str, success: bool) {
        if success && !self.any_failed.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut all) = self.by_subject.lock() else {
            return;
        };
        if !success {
            self.any_failed.store(true, Ordering::Release);
        }
        if success && !all.contains_key(subject) {
            return; // healthy targets need no entry
        }
        let b = all.entry(subject.to_owned()).or_insert_with(|| Breaker {
            state: BreakerState::Closed,
            opened_at: Instant::now(),
            snapshot: BreakerSnapshot {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                failures: 0,
                short_circuited: 0,
                opened: 0,
            },
        });
        if success {
            b.state = BreakerState::Closed;
            b.snapshot.consecutive_failures = 0;
        } else {
            b.snapshot.failures += 1;
            b.snapshot.consecutive_failures += 1;
            let trips = b.state == BreakerState::HalfOpen
                || (b.state == BreakerState::Closed
                    && b.snapshot.consecutive_failures >= self.config.threshold);
            if trips {
                b.state = BreakerState::Open;
                b.opened_at = Instant::now();
                b.snapshot.opened += 1;
            }
        }
        b.snapshot.state = b.state;
    }

    /// State of `subject`'s breaker (closed if never failed).
    pub fn state(&self, subject: &str) -> BreakerState {
        self.by_subject
            .lock()
            .ok()
            .and_then(|all| all.get(subject).map(|b| b.state))
            .unwrap_or(BreakerState::Closed)
    }

    /// Every breaker that has seen a failure, by subject.
    pub fn snapshot(&self) -> BTreeMap<String, BreakerSnapshot> {
        self.by_subject
            .lock()
            .map(|all| {
                all.iter()
                    .map(|(k, b)| (k.clone(), b.snapshot.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_probes_and_closes() {
        let breakers = Breakers::new(BreakerConfig {
            threshold: 3,
            cool_down: Duration::from_secs(1),
        });
        for _ in 0..3 {
            assert!(breakers.allow("s"));
            breakers.record("s", false);
        }
        assert_eq!(breakers.state("s"), BreakerState::Open);
        assert!(!breakers.allow("s"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breakers.allow("s"), "one probe after the cool-down");
        assert!(!breakers.allow("s"), "only one");
        breakers.record("s", false);
        assert_eq!(breakers.state("s"), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breakers.allow("s"));
        breakers.record("s", true);
        assert_eq!(breakers.state("s"), BreakerState::Closed);
        let snap = breakers.snapshot();
        assert_eq!(
            snap.get("s").map(|b| (b.opened, b.short_circuited)),
            Some((2, 2))
        );
    }
}
