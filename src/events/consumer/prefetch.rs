//! A short, bounded wait for a slot: how far ahead of its handlers a
//! consumer may pull.
//!
//! Pulling only for free slots means that with fast handlers the server
//! runs dry after every batch: a consumer with 64 handlers has at most 64
//! events in flight, and the server spends its time parking and waking
//! the consumer's delivery loop instead of delivering (measured in
//! bracketed rounds of `bench/run consume`: 0.71× a raw pull consumer that
//! buffers 500; the same consumer allowed 128 more in flight: 0.91×).
//! Buffering without a bound is what the slots were for: an event waiting
//! locally has its ack timer running, and a buffer that outlives the ack
//! wait becomes redeliveries.
//!
//! So the consumer may hold events that wait for a slot, but only as many
//! as its handlers start within [`ConsumerSpec::prefetch`] (20 ms by
//! default) at the pace they have been finishing, and at most twice as
//! many as it has slots (at least 256). The wait is what bounds it: 16
//! handlers of 100 ms finish 160 events a second, so 3 may wait, for about
//! 20 ms; handlers stuck from the start finish nothing and get none. The
//! pace is measured over whole windows of [`WINDOW`], starting from
//! nothing, so a burst of starts is never mistaken for throughput.
//!
//! If handlers stall after the pace was high, the events waiting are the
//! ones at risk: one that has waited [`ConsumerSpec::ack_wait`]` / 3` is
//! handed back (nak, no delay) for another instance — or this one, once a
//! slot is free — long before its ack timer runs out. A handed-back event
//! is not a handler failure: it never counts towards a dead letter.
//!
//! An ordered consumer keeps them instead, with in-progress signals: a
//! handed-back event returns behind the ones that arrived after it, and a
//! later event of its key, still waiting here, would overtake it (seen in
//! a keyed consumer behind slow handlers: a key's steps handled as
//! `0, 1, 2, 5, 3, 7, 4…`). Another instance could not take it anyway — a
//! keyed partition delivers to its pinned puller only.
//!
//! [`ConsumerSpec::prefetch`]: super::ConsumerSpec::prefetch
//! [`ConsumerSpec::ack_wait`]: super::ConsumerSpec::ack_wait

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream;
use tokio::time::Instant;

/// The window the handlers' pace is measured over.
pub(super) const WINDOW: Duration = Duration::from_millis(100);

/// The cap on waiting events is twice the slots, but never below this:
/// a consumer with few fast handlers needs the server kept busy as much as
/// one with many (the wait, not the cap, is what bounds a slow one).
/// Measured with the default 16 handlers (`bench/run consume`, 5 rounds):
/// 128 → 0.87× a raw pull consumer, 256 → 0.90–0.91×, 512 no better.
const MIN_CAP: usize = 256;

/// Events that arrived while every slot was busy, in arrival order, and how
/// many more the consumer may ask for.
pub(super) struct Waiting {
    queue: VecDeque<(jetstream::Message, Instant)>,
    /// Expected wait for a slot the consumer accepts (zero: none).
    wait: Duration,
    /// At most this many waiting.
    cap: usize,
    /// How long an event may wait before it is handed back.
    give_back_after: Duration,
    window_started: Instant,
    finished_at_window_start: u64,
    allowance: usize,
}

impl Waiting {
    pub(super) fn new(wait: Duration, slots: usize, ack_wait: Duration) -> Self {
        Waiting {
            queue: VecDeque::new(),
            wait,
            cap: (slots * 2).max(MIN_CAP),
            give_back_after: ack_wait / 3,
            window_started: Instant::now(),
            finished_at_window_start: 0,
            allowance: 0,
        }
    }

    /// How many events may wait for a slot now, given `finished`, the
    /// handlers finished so far: the pace of the last whole window times
    /// the accepted wait, at most the cap.
    pub(super) fn allowance(&mut self, finished: u64) -> usize {
        if self.wait.is_zero() {
            return 0;
        }
        let elapsed = self.window_started.elapsed();
        if elapsed >= WINDOW {
            let done = finished.saturating_sub(self.finished_at_window_start);
            let per_second = done as f64 / elapsed.as_secs_f64();
            // Truncated: a pace that fills less than one event in the wait
            // gets none.
            let fits = (per_second * self.wait.as_secs_f64()) as usize;
            self.allowance = fits.min(self.cap);
            self.window_started = Instant::now();
            self.finished_at_window_start = finished;
        }
        self.allowance
    }

    /// Events the consumer may still ask for beyond its free slots.
    pub(super) fn room(&mut self, finished: u64) -> usize {
        self.allowance(finished).saturating_sub(self.queue.len())
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(super) fn push(&mut self, message: jetstream::Message) {
        self.queue.push_back((message, Instant::now()));
    }

    pub(super) fn pop(&mut self) -> Option<jetstream::Message> {
        self.queue.pop_front().map(|(message, _)| message)
    }

    /// The events that have waited too long to keep (oldest first).
    pub(super) fn overdue(&mut self) -> Vec<jetstream::Message> {
        let mut overdue = Vec::new();
        while let Some((_, since)) = self.queue.front() {
            if since.elapsed() < self.give_back_after {
                break;
            }
            if let Some((message, _)) = self.queue.pop_front() {
                overdue.push(message);
            }
        }
        overdue
    }

    /// The events that have waited too long since they arrived or were
    /// last kept alive, to be kept alive now (an ordered consumer's, which
    /// are never handed back); their wait starts again.
    pub(super) fn due_for_progress(&mut self) -> Vec<&jetstream::Message> {
        let now = Instant::now();
        self.queue
            .iter_mut()
            .filter(|(_, since)| now.duration_since(*since) >= self.give_back_after)
            .map(|(message, since)| {
                *since = now;
                &*message
            })
            .collect()
    }

    /// How often to look for overdue events.
    pub(super) fn check_every(&self) -> Duration {
        (self.give_back_after / 2).max(Duration::from_millis(50))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_allowance_follows_the_pace_of_whole_windows() {
        let mut waiting = Waiting::new(Duration::from_millis(20), 64, Duration::from_secs(30));
        // Nothing measured yet: no prefetch, however many have started.
        assert_eq!(waiting.allowance(1_000), 0);
        // 50,000 per second × 20 ms = 1,000, capped at twice the 64 slots
        // or the least cap, whichever is more.
        tokio::time::advance(WINDOW).await;
        assert_eq!(waiting.allowance(1_000 + 5_000), MIN_CAP);
        // 10 per second × 20 ms = 0.2: slow handlers get none.
        tokio::time::advance(WINDOW).await;
        assert_eq!(waiting.allowance(6_000 + 1), 0);
        // 2,000 per second × 20 ms = 40.
        tokio::time::advance(WINDOW).await;
        assert_eq!(waiting.allowance(6_001 + 200), 40);
        // Within a window the allowance holds.
        assert_eq!(waiting.allowance(1_000_000), 40);

        // Many slots: twice their number.
        let mut wide = Waiting::new(Duration::from_millis(20), 512, Duration::from_secs(30));
        tokio::time::advance(WINDOW).await;
        assert_eq!(wide.allowance(100_000), 1_024);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_wait_never_prefetches() {
        let mut waiting = Waiting::new(Duration::ZERO, 64, Duration::from_secs(30));
        tokio::time::advance(WINDOW).await;
        assert_eq!(waiting.allowance(1_000_000), 0);
        assert_eq!(waiting.room(1_000_000), 0);
    }
}
