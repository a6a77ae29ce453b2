//! A takeover's first duty: the events the previous owner left
//! unacknowledged are handled before the ones that follow them, and in
//! stream order among themselves.
//!
//! When a partition changes hands — its owner died, was paused past the
//! pin timeout, or gave it up in a rebalance — the server pins the new
//! puller and delivers it the partition's *next* events at once, while the
//! old owner's unacknowledged ones come back only as redeliveries, each
//! when its own ack wait runs out (or at once, if it handed them back).
//! Handling what arrives as it arrives would let an order's `cancelled`
//! overtake its `created` that died with the old owner — and two events
//! of one key that died together can come back in either order (their ack
//! timers were reset by separate in-progress signals).
//!
//! So a newly pinned puller *settles* first: everything it receives is
//! held here, kept alive with in-progress signals, until the consumer's
//! unacknowledged events are all in this process's hands — the consumer's
//! `num_ack_pending` no more than what it holds — and is then released in
//! stream-sequence order. Both counts lag in the safe direction (an ack on
//! its way, an event delivered and not yet read), so the check can hold a
//! little long, never release early — provided nothing counts as held that
//! the server may no longer count: a handler slot is freed *before* its
//! event's fate is sent (`delivery::handle`), and an event delivered again
//! while held (its in-progress signal came late) replaces its first copy
//! instead of being counted twice. The whole partition waits, not just
//! the keys in flight: which keys those are is only known once their
//! events come back. Stopped while settling, the held events are handed
//! back (nak) — the next owner settles and sorts them likewise.
//!
//! A reconnect is a takeover by the same owner: what the server had sent
//! to the old connection and the process never read is lost in transit
//! and comes back only after its ack wait, behind its key's later events
//! delivered on the new connection. So a pinned puller settles after a
//! reconnect of its client too (a node killed, the quorum watch moving
//! it) — seen once in a cluster chaos run as a key's later event handled
//! before its earlier one, two sequences apart, right after both instances
//! of the consumer were moved off a node.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use tokio::time::Instant;

/// How often a settling partition asks the server where it stands.
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(100);

/// First deliveries held back until the previous owner's events are done.
pub(super) struct Settling {
    held: VecDeque<jetstream::Message>,
    /// The stream sequences of `held`.
    sequences: HashSet<u64>,
    since: Instant,
    kept_alive: Instant,
}

impl Settling {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Settling {
            held: VecDeque::new(),
            sequences: HashSet::new(),
            since: now,
            kept_alive: now,
        }
    }

    pub(super) fn hold(&mut self, message: jetstream::Message) {
        let sequence = message.info().map(|i| i.stream_sequence).ok();
        if let Some(sequence) = sequence
            && !self.sequences.insert(sequence)
        {
            let again = self
                .held
                .iter_mut()
                .find(|held| held.info().map(|i| i.stream_sequence).ok() == Some(sequence));
            if let Some(held) = again {
                // The newer delivery is the one the server waits to hear
                // about.
                *held = message;
                return;
            }
        }
        self.held.push_back(message);
    }

    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// How long it has been settling.
    pub(super) fn elapsed(&self) -> Duration {
        self.since.elapsed()
    }

    /// Whether every unacknowledged event of the consumer is one of the
    /// `ours` this process holds (an unanswered question counts as no).
    pub(super) async fn settled(&self, consumer: &PullConsumer, ours: usize) -> bool {
        match consumer.get_info().await {
            Ok(info) => info.num_ack_pending <= ours,
            Err(error) => {
                tracing::debug!(%error, "consumer info while settling");
                false
            }
        }
    }

    /// In-progress signals for the held events, every third of the ack
    /// wait.
    pub(super) async fn keep_alive(&mut self, ack_wait: Duration) {
        if self.kept_alive.elapsed() < ack_wait / 3 {
            return;
        }
        self.kept_alive = Instant::now();
        for message in &self.held {
            if let Err(error) = message.ack_with(AckKind::Progress).await {
                tracing::debug!(%error, "in-progress signal for a held event failed");
            }
        }
    }

    /// The held events, in stream order.
    pub(super) fn release(self) -> Vec<jetstream::Message> {
        let mut held: Vec<_> = self.held.into();
        held.sort_by_key(|m| m.info().map_or(u64::MAX, |i| i.stream_sequence));
        held
    }
}
