//! How far a bucket's outbox relay has published: its ack floor.
//!
//! A write that replaces a value must carry that value's unpublished events
//! forward (the old message is gone once replaced). Every write at or
//! below the relay consumer's ack floor has had its events published, so
//! only a value above the floor carries anything. The floor is read from
//! the server when a read meets events and the last reading is older than
//! [`FRESH`]; a stale floor is only lower, which carries forward more than
//! needed (published again, dropped as duplicates) and never less.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::Stream;

use crate::outbox::RELAY_DURABLE;

/// How old a floor reading may be before it is read again.
const FRESH: Duration = Duration::from_millis(100);

/// The relay's ack floor of one bucket, read lazily.
#[derive(Debug)]
pub(crate) struct RelayFloor {
    stream: Stream,
    last: Mutex<Option<(u64, Instant)>>,
}

impl RelayFloor {
    pub(crate) fn new(stream: Stream) -> Self {
        RelayFloor {
            stream,
            last: Mutex::new(None),
        }
    }

    /// Whether the write at `sequence` has had its events published.
    pub(crate) async fn covers(&self, sequence: u64) -> bool {
        let cached = self.last.lock().ok().and_then(|last| *last);
        if let Some((floor, read)) = cached
            && (floor >= sequence || read.elapsed() < FRESH)
        {
            return floor >= sequence;
        }
        match self.stream.consumer_info(RELAY_DURABLE).await {
            Ok(info) => {
                let floor = info.ack_floor.stream_sequence;
                if let Ok(mut last) = self.last.lock() {
                    *last = Some((floor, Instant::now()));
                }
                floor >= sequence
            }
            // No relay yet, or no answer: assume nothing is published.
            Err(_) => false,
        }
    }
}
