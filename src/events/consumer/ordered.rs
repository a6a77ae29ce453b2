//! Ordered consumption: events of one `ce-subject` (one order, say) are
//! handled one at a time, in stream order, on the lane that subject maps
//! to; other subjects run concurrently on other lanes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::delivery::handle;
use super::watermark::Watermark;
use super::{HandlerError, Shared, Slot};
use crate::events::envelope;
use crate::events::event::ReceivedEvent;

/// The lane of an event in ordered mode: by `ce-subject`, else NATS subject.
pub(super) fn lane_of(message: &jetstream::Message, lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let key = envelope::header(message.headers.as_ref(), envelope::CE_SUBJECT)
        .unwrap_or_else(|| message.subject.to_string());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    usize::try_from(hasher.finish() % lanes.max(1) as u64).unwrap_or(0)
}

/// An ordered lane: handles its events one at a time, in arrival order,
/// and keeps the queued ones alive (in-progress) while they wait; tells the
/// partition's watermark, if any, what it settled.
pub(super) async fn lane<T, F, Fut>(
    shared: Arc<Shared<F>>,
    mut arrivals: mpsc::UnboundedReceiver<(jetstream::Message, Slot)>,
    watermark: Option<Arc<Watermark>>,
) where
    T: DeserializeOwned + Send + 'static,
    F: Fn(ReceivedEvent<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let mut queue = VecDeque::new();
    let mut open = true;
    let every = (shared.spec.ack_wait / 3).max(Duration::from_millis(50));
    loop {
        if queue.is_empty() {
            match arrivals.recv().await {
                Some(arrival) => queue.push_back(arrival),
                None => return,
            }
        }
        let Some((message, slot)) = queue.pop_front() else {
            continue;
        };
        let sequence = message.info().map(|i| i.stream_sequence).ok();
        let work = handle(&shared, message, true, slot);
        tokio::pin!(work);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                done = &mut work => {
                    if let (Some(watermark), Some(sequence)) = (&watermark, sequence) {
                        watermark.finished(sequence, done);
                    }
                    break;
                }
                _ = ticker.tick() => {
                    for (waiting, _) in &queue {
                        let _ = waiting.ack_with(AckKind::Progress).await;
                    }
                }
                arrival = arrivals.recv(), if open => match arrival {
                    Some(arrival) => queue.push_back(arrival),
                    None => open = false,
                },
            }
        }
        if !open && queue.is_empty() {
            return;
        }
    }
}
