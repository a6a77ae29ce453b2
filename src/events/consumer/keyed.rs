//! Keyed consumers: each key's events in order, the keys spread over the
//! instances that run the consumer.
//!
//! # Design
//!
//! *Partitions are durables.* The publisher ends every event subject in
//! the shard of its key (`events::partition`); partition `p` of a keyed
//! consumer with P partitions is the durable `<durable>-p<p>`, filtered to
//! the shards `s` with `s mod P = p`. The server keeps each durable's
//! events in stream order and its acknowledgement state, so a partition
//! changes hands without losing its place.
//!
//! *One puller per partition: the pin.* Each partition is pulled in a
//! priority group with the `pinned_client` policy (ADR-42, nats-server
//! 2.11+): however many instances pull, the server delivers to one, and
//! the others' requests wait. This is what keeps order while instances
//! disagree about who owns what — not the assignment.
//!
//! *Who pulls what: the assignment.* The instances announce themselves on
//! core NATS (`group`) and each pulls only the partitions the shared
//! assignment gives it, so the work is spread (a joining instance takes its
//! share; a leaving or silent one's share is taken by the others). An
//! instance that gives a partition up stops pulling it, lets its handlers
//! finish, hands back what waited, and releases the pin (`UNPIN`) if it is
//! still its own; one that takes a partition whose previous holder is gone
//! (stopped, or not heard for `group::LOST_AFTER`) releases the dead pin
//! itself rather than wait out [`PIN_TIMEOUT`](super::spec::PIN_TIMEOUT).
//!
//! *Order across a takeover: settling.* A new owner handles the previous
//! owner's unacknowledged events (they return as redeliveries, in any
//! order) sorted by stream sequence and before the partition's later
//! events (see `settling`). Inside a partition the lanes
//! of `ordered` keep each key's events one at a time, and a failing
//! handler is retried in place, so a key's later events wait behind it; a
//! dead-lettered event frees its key (logged with the dead letter).
//!
//! # Failover, and limits
//!
//! A stopped instance's partitions move at once (it says it is leaving).
//! A killed one's move after `group::LOST_AFTER` (3 s) of silence; the
//! events it was handling come back when their ack wait runs out, and
//! until then its partitions hold their later events (other partitions
//! run on). So failover after a crash is about 3 s plus the ack wait:
//! keyed consumers want a short ack wait (in-progress signals keep long
//! handlers alive). Pinning is not exclusivity (ADR-42 says so): an owner
//! paused past its partitions' takeover may still finish an event after the
//! new owner handled it again — handlers stay idempotent.
//!
//! More instances than partitions leave the extra ones idle (standbys that
//! take over); a hot key is handled by one instance, one event at a time,
//! however many instances run — its partition's other keys wait for their
//! lane only if they share it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::group::{self, Heartbeat, Members};
use super::spec::OWNER_GROUP;
use super::watermark::Watermark;
use super::{ConsumerSpec, HandlerError, Pinning, Shared, pump, wait_for_stream};
use crate::events::EventError;
use crate::events::event::ReceivedEvent;
use crate::events::partition;

/// The partitions each keyed consumer of this process holds now, by
/// durable (what `$SRV.STATS` reports).
static HELD: Mutex<BTreeMap<String, Vec<u32>>> = Mutex::new(BTreeMap::new());

/// The partitions each keyed consumer of this process holds now, by
/// durable name.
pub fn partitions_held() -> BTreeMap<String, Vec<u32>> {
    HELD.lock().map(|held| held.clone()).unwrap_or_default()
}

fn report_held(durable: &str, partitions: Option<Vec<u32>>) {
    if let Ok(mut held) = HELD.lock() {
        match partitions {
            Some(partitions) => held.insert(durable.to_owned(), partitions),
            None => held.remove(durable),
        };
    }
}

/// A partition this instance pulls, or is giving up.
struct Held {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// The member that said it held the partition when it was taken: it
    /// releases the pin when its handlers are done, unless it dies first.
    handed_by: Option<String>,
}

impl Held {
    fn giving_up(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// The partitions held and not being given up.
fn active(held: &BTreeMap<u32, Held>) -> Vec<u32> {
    held.iter()
        .filter(|(_, h)| !h.giving_up())
        .map(|(p, _)| *p)
        .collect()
}

/// Runs a keyed consumer (see the module's design) until `shutdown`.
pub(super) async fn run<T, F, Fut>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EventError>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(ReceivedEvent<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let partitions = spec.partitions.unwrap_or(1);
    partition::check_keyed(&spec.durable, &spec.filter_subjects, partitions)?;
    tokio::pin!(shutdown);
    let Some(stream) = wait_for_stream(&js, &spec, &mut shutdown).await? else {
        return Ok(());
    };
    // Every partition exists whoever holds it (create or update: the same
    // declaration from every instance).
    let mut consumers = Vec::new();
    for p in 0..partitions {
        let config = spec.partition_config(p, partitions)?;
        let name = partition::partition_durable(&spec.durable, p);
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| EventError::js(format!("create consumer {name}"))(e))?;
        consumers.push(consumer);
    }
    let shared = Arc::new(Shared::open(&js, spec, handler).await?);
    let durable = shared.spec.durable.clone();
    let nats = js.client();
    let subject = group::subject(&shared.spec.stream, &durable);
    let mut beats = nats
        .subscribe(subject.clone())
        .await
        .map_err(|e| EventError::js(format!("subscribe to {subject}"))(e))?;
    let mut members = Members::new(nuid::next().to_string());
    let mut held: BTreeMap<u32, Held> = BTreeMap::new();
    // The partitions' pullers are tasks of their own: dropped without a
    // shutdown (aborted), this consumer still stops them.
    let all = CancellationToken::new();
    let _stop_all = all.clone().drop_guard();
    announce(&nats, &subject, &members, &held, false).await;
    // Hear the others before claiming anything: a newcomer that claimed
    // every partition would only make them wait on pins.
    let listen_until = tokio::time::Instant::now() + group::LISTEN;
    let listened = tokio::time::sleep_until(listen_until);
    tokio::pin!(listened);
    let mut listening = true;
    let mut tick = tokio::time::interval(group::BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let partition = |p: u32| {
        let shared = shared.clone();
        let (js, stream) = (js.clone(), stream.clone());
        let consumer = consumers.get(p as usize).cloned();
        move |stop: CancellationToken| async move {
            if let Some(consumer) = consumer {
                hold(js, stream, shared, (consumer, p), stop).await;
            }
        }
    };
    loop {
        let changed = tokio::select! {
            () = &mut shutdown => break,
            () = &mut listened, if listening => {
                listening = false;
                true
            }
            beat = beats.next() => match beat {
                Some(message) => match serde_json::from_slice::<Heartbeat>(&message.payload) {
                    Ok(beat) => {
                        let newcomer = members.is_newcomer(&beat);
                        let changed = members.heard(beat);
                        if newcomer {
                            // It is listening now: answer, so that it
                            // knows who holds what before it claims.
                            announce(&nats, &subject, &members, &held, false).await;
                        }
                        changed
                    }
                    Err(error) => {
                        tracing::debug!(%error, "not a heartbeat; ignored");
                        false
                    }
                },
                None => break,
            },
            _ = tick.tick() => {
                announce(&nats, &subject, &members, &held, false).await;
                let lost = members.expire();
                if !lost.is_empty() {
                    tracing::info!(consumer = %durable, ?lost, "instances silent; their partitions move");
                }
                release_dead_pins(&stream, &durable, &members, &mut held).await;
                // Given up and done, or ended by itself (taken again).
                held.retain(|_, h| !h.task.is_finished());
                true
            }
        };
        if changed && tokio::time::Instant::now() >= listen_until {
            rebalance(
                &stream, &durable, partitions, &members, &mut held, &all, &partition,
            )
            .await;
        }
    }
    // Leaving: the others take the partitions now, and wait for the pins
    // this instance releases once its handlers are done; then goodbye.
    announce(&nats, &subject, &members, &held, true).await;
    report_held(&durable, None);
    for h in held.values() {
        h.stop.cancel();
    }
    for h in std::mem::take(&mut held).into_values() {
        let _ = h.task.await;
    }
    announce(&nats, &subject, &members, &held, true).await;
    Ok(())
}

/// Pulls partition `consumer` until `stop`, then releases its pin if it is
/// still this puller's.
async fn hold<T, F, Fut>(
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    shared: Arc<Shared<F>>,
    (consumer, partition): (PullConsumer, u32),
    stop: CancellationToken,
) where
    T: DeserializeOwned + Send + 'static,
    F: Fn(ReceivedEvent<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let name = consumer.cached_info().name.clone();
    let pinning = Pinning::group(OWNER_GROUP);
    let watermark = if shared.spec.watermark {
        match Watermark::open(&js, &shared.spec.durable, partition).await {
            Ok(watermark) => Some(Arc::new(watermark)),
            Err(error) => {
                // Not held: the next rebalance tick takes it again.
                tracing::warn!(consumer = %name, %error, "cannot read the partition's watermark");
                return;
            }
        }
    } else {
        None
    };
    let pulled = pump(
        &js,
        &shared,
        consumer.clone(),
        Some(pinning),
        watermark,
        stop.cancelled(),
    );
    match pulled.await {
        Ok(Some(pin)) => {
            let ours = consumer.get_info().await.is_ok_and(|info| {
                info.priority_groups
                    .iter()
                    .any(|g| g.pinned_client_id.as_deref() == Some(pin.as_str()))
            });
            if ours && let Err(error) = stream.unpin_consumer(&name, OWNER_GROUP).await {
                tracing::warn!(consumer = %name, %error, "cannot release the pin; the next owner waits for its timeout");
            }
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(consumer = %name, %error, "partition stopped"),
    }
}

/// Starts and stops partitions so this instance holds its share.
async fn rebalance<S, Fut>(
    stream: &jetstream::stream::Stream,
    durable: &str,
    partitions: u32,
    members: &Members,
    held: &mut BTreeMap<u32, Held>,
    all: &CancellationToken,
    start: &impl Fn(u32) -> S,
) where
    S: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mine = members.mine(partitions);
    let gave_up: Vec<u32> = active(held)
        .into_iter()
        .filter(|p| !mine.contains(p))
        .collect();
    // One still being given up is taken again once it is done.
    let took: Vec<u32> = mine
        .iter()
        .copied()
        .filter(|p| !held.contains_key(p))
        .collect();
    if gave_up.is_empty() && took.is_empty() {
        return;
    }
    let mut from = BTreeMap::new();
    for p in &gave_up {
        if let Some(h) = held.get(p) {
            // Still announced as held until its handlers are done and the
            // pin is released, so the next owner waits for that.
            h.stop.cancel();
        }
    }
    for p in &took {
        let handed_by = members.held_by_another(*p).map(str::to_owned);
        if handed_by.is_none() {
            // Nobody alive holds it: a pin left on it is a dead owner's.
            unpin(stream, durable, *p).await;
        }
        if let Some(by) = &handed_by {
            from.insert(*p, by.clone());
        }
        let stop = all.child_token();
        let task = tokio::spawn(start(*p)(stop.clone()));
        held.insert(
            *p,
            Held {
                stop,
                task,
                handed_by,
            },
        );
    }
    let holds = active(held);
    tracing::info!(
        consumer = %durable,
        instance = %members.me(),
        members = members.count(),
        ?took,
        ?gave_up,
        handed_over_by = ?from,
        ?holds,
        "partitions rebalanced"
    );
    report_held(durable, Some(holds));
}

/// Releases the pins of partitions taken from a member that has since died
/// or left without releasing them.
async fn release_dead_pins(
    stream: &jetstream::stream::Stream,
    durable: &str,
    members: &Members,
    held: &mut BTreeMap<u32, Held>,
) {
    for (p, h) in held.iter_mut() {
        let Some(by) = &h.handed_by else { continue };
        if members.held_by_another(*p) == Some(by.as_str()) {
            continue; // still finishing: it releases the pin itself
        }
        // It let go: alive or with a goodbye, it released the pin; fallen
        // silent, it could not.
        let silent = !members.is_member(by) && !members.said_goodbye(by);
        if silent {
            unpin(stream, durable, *p).await;
        }
        h.handed_by = None;
    }
}

async fn unpin(stream: &jetstream::stream::Stream, durable: &str, p: u32) {
    let name = partition::partition_durable(durable, p);
    match stream.unpin_consumer(&name, OWNER_GROUP).await {
        Ok(()) => tracing::debug!(consumer = %name, "released a departed owner's pin"),
        // Nothing pinned is the usual answer.
        Err(error) => tracing::debug!(consumer = %name, %error, "unpin"),
    }
}

async fn announce(
    nats: &async_nats::Client,
    subject: &str,
    members: &Members,
    held: &BTreeMap<u32, Held>,
    leaving: bool,
) {
    let beat = Heartbeat {
        instance: members.me().to_owned(),
        holds: held.keys().copied().collect(),
        leaving,
    };
    let payload = serde_json::to_vec(&beat).unwrap_or_default();
    if let Err(error) = nats.publish(subject.to_owned(), payload.into()).await {
        tracing::debug!(%error, "heartbeat not sent");
    }
}
