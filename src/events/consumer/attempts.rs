//! How often the handler itself failed on each event: the only count that
//! leads to a dead letter.
//!
//! The server's delivery count also counts what is not the handler's doing
//! — a server restart, a consumer that crashed or was slow to come back, an
//! ack wait that expired while the idempotency bucket timed out — and an
//! event whose deliveries run out that way would be dead-lettered although
//! its handler never failed. So the server redelivers without limit
//! (`max_deliver` unlimited) and the consumer counts the handler's own
//! failures (an error it returned, or a panic) here, dead-lettering at
//! [`ConsumerSpec::max_deliver`](super::ConsumerSpec::max_deliver) of them.
//!
//! The count lives in the consuming process: a crash forgets it, so an
//! event may then get more attempts than the limit — never fewer, and never
//! a dead letter it did not earn.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept before old ones are pruned (an event handled by another
/// instance after failing here leaves its entry behind).
const PRUNE_ABOVE: usize = 4096;
/// An entry untouched this long is pruned.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Handler failures per stream sequence.
#[derive(Debug, Default)]
pub(crate) struct HandlerFailures {
    counts: Mutex<HashMap<u64, (u64, Instant)>>,
}

impl HandlerFailures {
    /// Records one more failure of the handler on `sequence`; the count so far.
    pub(crate) fn record(&self, sequence: u64) -> u64 {
        let Ok(mut counts) = self.counts.lock() else {
            return 1;
        };
        if counts.len() > PRUNE_ABOVE {
            counts.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
        }
        let entry = counts.entry(sequence).or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now();
        entry.0
    }

    /// The event is done here (handled or dead-lettered).
    pub(crate) fn forget(&self, sequence: u64) {
        if let Ok(mut counts) = self.counts.lock() {
            counts.remove(&sequence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HandlerFailures;

    #[test]
    fn only_recorded_failures_count_and_done_events_are_forgotten() {
        let failures = HandlerFailures::default();
        assert_eq!(failures.record(7), 1);
        assert_eq!(failures.record(7), 2);
        assert_eq!(failures.record(8), 1);
        failures.forget(7);
        assert_eq!(
            failures.record(7),
            1,
            "a redelivery after success starts over"
        );
    }
}
