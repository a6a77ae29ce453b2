//! Keyed consumers against a real nats-server: each key's events in stream
//! order while instances join and leave and share the partitions; a
//! failing event holds its key (not the others); a dead-lettered one
//! releases it; a declaration that cannot be partitioned is refused.
//! (A SIGKILLed instance is in `tests/keyed_system.rs`, on real processes.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use switchboard::events::{
    self, ConsumerSpec, Event, EventError, HandlerError, Publisher, ReceivedEvent, StreamSpec,
};
use switchboard::testing::TestServer;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CREATED: &str = "events.parcels.created";
const CANCELLED: &str = "events.parcels.cancelled";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Step {
    parcel: String,
    step: u32,
}

/// What the handlers saw: per key, the steps in the order they were
/// handled, and which instance handled them.
#[derive(Debug, Default)]
struct Seen {
    steps: BTreeMap<String, Vec<u32>>,
    by_instance: BTreeMap<usize, usize>,
}

impl Seen {
    /// Keys (a few) whose steps were not handled once each, 0 to `steps`
    /// in order.
    fn out_of_order(&self, steps: u32) -> Vec<(&String, &Vec<u32>)> {
        let in_order: Vec<u32> = (0..steps).collect();
        self.steps
            .iter()
            .filter(|(_, handled)| **handled != in_order)
            .take(5)
            .collect()
    }
}

fn spec(partitions: u32) -> ConsumerSpec {
    ConsumerSpec::new("PARCELS", "parcels-keyed")
        .filter([CREATED, CANCELLED])
        .keyed(partitions)
        .ack_wait(Duration::from_secs(3))
        .backoff(vec![Duration::from_millis(50)])
}

async fn setup(
    server: &TestServer,
) -> Result<(jetstream::Context, Publisher), Box<dyn std::error::Error>> {
    let js = jetstream::new(server.client().await?);
    StreamSpec::new("PARCELS", ["events.parcels.>"])
        .ensure(&js)
        .await?;
    Ok((js.clone(), Publisher::new(js, "parcels")))
}

/// One instance of the keyed consumer, on its own connection.
struct Instance {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), EventError>>,
}

async fn instance(
    server: &TestServer,
    index: usize,
    spec: ConsumerSpec,
    seen: Arc<Mutex<Seen>>,
) -> Result<Instance, Box<dyn std::error::Error>> {
    // Long enough that keys interleave and handovers meet events in flight.
    paced_instance(server, index, spec, seen, 1..6).await
}

/// An instance whose handler takes `millis` (a random number of them).
async fn paced_instance(
    server: &TestServer,
    index: usize,
    spec: ConsumerSpec,
    seen: Arc<Mutex<Seen>>,
    millis: std::ops::Range<u64>,
) -> Result<Instance, Box<dyn std::error::Error>> {
    let js = jetstream::new(server.client().await?);
    let stop = CancellationToken::new();
    let task = tokio::spawn(events::consumer::run(
        js,
        spec,
        move |event: ReceivedEvent<Step>| {
            let seen = seen.clone();
            let millis = millis.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(millis))).await;
                if let Ok(mut seen) = seen.lock() {
                    seen.steps
                        .entry(event.data.parcel.clone())
                        .or_default()
                        .push(event.data.step);
                    *seen.by_instance.entry(index).or_default() += 1;
                }
                Ok(())
            }
        },
        {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        },
    ));
    Ok(Instance { stop, task })
}

impl Instance {
    async fn stop(self) -> TestResult {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}

/// Publishes `steps` events for each of `keys` parcels, each key's in
/// order (the next after the previous was stored), keys concurrently.
async fn publish(publisher: &Publisher, keys: std::ops::Range<usize>, steps: u32) -> TestResult {
    let mut tasks = Vec::new();
    for key in keys {
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            let parcel = format!("p-{key}");
            for step in 0..steps {
                let subject = if step + 1 == steps {
                    CANCELLED
                } else {
                    CREATED
                };
                let event = Event::new(Step {
                    parcel: parcel.clone(),
                    step,
                })
                .id(format!("{parcel}-{step}"))
                .subject(parcel.clone());
                publisher.publish(subject, &event).await?;
            }
            Ok::<(), EventError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// `spec` is refused before anything runs, as a declaration that cannot
/// be partitioned.
async fn assert_refused(js: &jetstream::Context, spec: ConsumerSpec) {
    let result = events::consumer::run(
        js.clone(),
        spec,
        |_: ReceivedEvent<Step>| async { Ok(()) },
        std::future::pending(),
    )
    .await;
    assert!(
        matches!(result, Err(EventError::InvalidConsumer { .. })),
        "{result:?}"
    );
}

/// The steps of `parcel` in the order they were handled.
fn steps_of(seen: &Arc<Mutex<Seen>>, parcel: &str) -> Vec<u32> {
    seen.lock()
        .map(|s| s.steps.get(parcel).cloned().unwrap_or_default())
        .unwrap_or_default()
}

async fn until_all_handled(seen: &Arc<Mutex<Seen>>, events: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let handled: usize = seen
            .lock()
            .map(|s| s.steps.values().map(Vec::len).sum())
            .unwrap_or(0);
        if handled >= events {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_in_order_while_instances_join_and_leave() -> TestResult {
    const KEYS: usize = 120;
    const STEPS: u32 = 4;
    let server = TestServer::start().await?;
    let (_js, publisher) = setup(&server).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));

    let first = instance(&server, 0, spec(6), seen.clone()).await?;
    let second = instance(&server, 1, spec(6), seen.clone()).await?;
    publish(&publisher, 0..KEYS / 3, STEPS).await?;
    // A third joins while events flow and takes its share; the first
    // leaves while they still flow, and hands its share over.
    let third = instance(&server, 2, spec(6), seen.clone()).await?;
    publish(&publisher, KEYS / 3..2 * KEYS / 3, STEPS).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            publish(&publisher, 2 * KEYS / 3..KEYS, STEPS)
                .await
                .map_err(|e| e.to_string())
        })
    };
    first.stop().await?;
    more.await??;

    let events = KEYS * STEPS as usize;
    let all = until_all_handled(&seen, events, Duration::from_secs(30)).await;
    second.stop().await?;
    third.stop().await?;
    let seen = seen.lock().map_err(|_| "poisoned")?;
    assert!(
        all,
        "handled {} of {events}",
        seen.steps.values().map(Vec::len).sum::<usize>()
    );
    let out_of_order = seen.out_of_order(STEPS);
    assert!(
        out_of_order.is_empty(),
        "keys out of order or repeated: {out_of_order:?}"
    );
    assert_eq!(seen.steps.len(), KEYS);
    // Every instance took a share while it ran.
    for index in 0..3 {
        assert!(
            seen.by_instance.get(&index).copied().unwrap_or(0) > 0,
            "instance {index} handled nothing: {:?}",
            seen.by_instance
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn events_that_wait_long_for_a_handler_keep_their_order() -> TestResult {
    // A backlog behind slow handlers: the events pulled ahead of them wait
    // longer than a third of the ack wait (the prefetch allows 2 s of them,
    // the ack wait is 3 s). Handing the oldest back for redelivery — what
    // an unordered consumer does, so another instance may take them — would
    // let a key's later event, still waiting here, overtake them.
    const KEYS: usize = 30;
    const STEPS: u32 = 10;
    let server = TestServer::start().await?;
    let (_js, publisher) = setup(&server).await?;
    publish(&publisher, 0..KEYS, STEPS).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let spec = spec(1).concurrency(1).prefetch(Duration::from_secs(2));
    let one = paced_instance(&server, 0, spec, seen.clone(), 15..25).await?;
    let events = KEYS * STEPS as usize;
    let all = until_all_handled(&seen, events, Duration::from_secs(60)).await;
    one.stop().await?;
    let seen = seen.lock().map_err(|_| "poisoned")?;
    let out_of_order = seen.out_of_order(STEPS);
    assert!(
        out_of_order.is_empty(),
        "keys out of order or repeated: {out_of_order:?}"
    );
    assert!(
        all,
        "handled {} of {events}",
        seen.steps.values().map(Vec::len).sum::<usize>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_event_holds_its_key_and_a_dead_letter_releases_it() -> TestResult {
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let order = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let spec = spec(2).max_deliver(3);
    let stop = CancellationToken::new();
    let task = {
        let (order, failures, stop) = (order.clone(), failures.clone(), stop.clone());
        tokio::spawn(events::consumer::run(
            js.clone(),
            spec,
            move |event: ReceivedEvent<Step>| {
                let (order, failures) = (order.clone(), failures.clone());
                async move {
                    let name = format!("{}/{}", event.data.parcel, event.data.step);
                    let failed = {
                        let mut failures =
                            failures.lock().map_err(|_| HandlerError::retry("lock"))?;
                        let count = failures.entry(name.clone()).or_default();
                        *count += 1;
                        *count
                    };
                    match name.as_str() {
                        // Fails twice, then succeeds: its key's next waits.
                        "slow/0" if failed <= 2 => return Err(HandlerError::retry("not yet")),
                        // Never succeeds: dead-lettered, its key goes on.
                        "doomed/0" => return Err(HandlerError::permanent("cannot")),
                        _ => {}
                    }
                    if let Ok(mut order) = order.lock() {
                        order.push(name);
                    }
                    Ok(())
                }
            },
            async move { stop.cancelled().await },
        ))
    };
    for parcel in ["slow", "doomed", "quick"] {
        for step in 0..2 {
            let subject = if step == 0 { CREATED } else { CANCELLED };
            let event = Event::new(Step {
                parcel: parcel.into(),
                step,
            })
            .id(format!("{parcel}-{step}"))
            .subject(parcel);
            publisher.publish(subject, &event).await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while order.lock().map(|o| o.len()).unwrap_or(0) < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let handled = order.lock().map(|o| o.clone()).unwrap_or_default();
    let position = |name: &str| handled.iter().position(|n| n == name);
    assert_eq!(handled.len(), 5, "{handled:?}");
    // The failing event held its key's next one, not the other keys'.
    assert!(position("slow/0") < position("slow/1"), "{handled:?}");
    assert!(
        position("quick/1") < position("slow/0"),
        "quick waited for slow: {handled:?}"
    );
    // The dead letter released its key.
    assert_eq!(position("doomed/0"), None);
    assert!(position("doomed/1").is_some(), "{handled:?}");
    let letters = events::DeadLetters::open(&js).await?.list().await?;
    assert!(
        letters.iter().any(|l| l.info.error.contains("cannot")),
        "no dead letter: {letters:?}"
    );
    stop.cancel();
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_are_durables_and_a_bad_declaration_is_refused() -> TestResult {
    let server = TestServer::start().await?;
    let (js, _publisher) = setup(&server).await?;
    // No subjects, or a '>': the shard's place is unknown.
    for spec in [
        ConsumerSpec::new("PARCELS", "wide").keyed(4),
        ConsumerSpec::new("PARCELS", "wide")
            .filter(["events.parcels.>"])
            .keyed(4),
        ConsumerSpec::new("PARCELS", "wide")
            .filter([CREATED])
            .keyed(65),
    ] {
        assert_refused(&js, spec).await;
    }
    // A good one: one durable per partition, each filtered to its shards
    // and pinned; partition 0 also takes events published without a shard.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let one = instance(&server, 0, spec(3), seen.clone()).await?;
    let stream = js.get_stream("PARCELS").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut names = BTreeSet::new();
    while names.len() < 3 && Instant::now() < deadline {
        names = BTreeSet::new();
        for p in 0..3 {
            if let Ok(info) = stream.consumer_info(format!("parcels-keyed-p{p}")).await {
                names.insert(info.name.clone());
                let filters = &info.config.filter_subjects;
                assert_eq!(
                    filters.iter().filter(|f| f.starts_with(CREATED)).count(),
                    if p == 0 { 23 } else { 21 },
                    "{filters:?}"
                );
                assert_eq!(info.config.priority_groups, vec!["owner".to_owned()]);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(names.len(), 3, "{names:?}");
    let bare = js.client();
    let event = serde_json::to_vec(&Step {
        parcel: "bare".into(),
        step: 0,
    })?;
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "bare-0"),
        ("ce-source", "elsewhere"),
        ("ce-type", "parcels.created"),
        ("ce-time", "2026-12-07T12:00:00Z"),
        ("content-type", "application/json"),
    ] {
        headers.insert(name, value);
    }
    jetstream::new(bare)
        .publish_with_headers(CREATED, headers, event.into())
        .await?
        .await?;
    assert!(
        until_all_handled(&seen, 1, Duration::from_secs(10)).await,
        "a bare event was not consumed"
    );
    one.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_left_by_a_dead_owner_holds_its_key() -> TestResult {
    // An instance died handling `p-1`'s first event: its claim stays in
    // the idempotency bucket until its lease runs out. The event's second
    // must wait for the first — a nak of the first would let it overtake.
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let spec = spec(2).idempotent(Duration::from_secs(600));
    let bucket = events::Idempotency::bucket_for(&spec.durable);
    let records =
        events::Idempotency::open(&js, &bucket, Duration::from_secs(600), events::CLAIM_LEASE)
            .await?;
    assert_eq!(records.claim("p-1-0").await?, events::Claim::New);
    let claimed = Instant::now();
    publish(&publisher, 1..2, 2).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let one = instance(&server, 0, spec, seen.clone()).await?;
    assert!(
        until_all_handled(&seen, 2, Duration::from_secs(30)).await,
        "not handled"
    );
    let steps = steps_of(&seen, "p-1");
    assert_eq!(steps, vec![0, 1], "the second overtook the first");
    assert!(
        claimed.elapsed() >= events::CLAIM_LEASE,
        "handled before the dead owner's claim lapsed"
    );
    one.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watermark_recognizes_what_its_partition_handled() -> TestResult {
    // Handled once; then every partition durable is made afresh, as if the
    // server had lost every acknowledgement: all events come again, at or
    // below the marks the first run wrote, and none is handled twice.
    const KEYS: usize = 30;
    let server = TestServer::start().await?;
    let (js, publisher) = setup(&server).await?;
    let spec = spec(3).watermarked();
    publish(&publisher, 0..KEYS, 2).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let first = instance(&server, 0, spec.clone(), seen.clone()).await?;
    assert!(until_all_handled(&seen, KEYS * 2, Duration::from_secs(20)).await);
    first.stop().await?;
    let marks = js
        .get_key_value(events::consumer::watermark::bucket_for(&spec.durable))
        .await?;
    for p in 0..3 {
        let mark = marks.get(format!("p{p}")).await?.ok_or("no mark written")?;
        assert!(!mark.is_empty(), "partition {p} has no mark");
    }
    let stream = js.get_stream("PARCELS").await?;
    for p in 0..3 {
        stream
            .delete_consumer(&events::partition::partition_durable(&spec.durable, p))
            .await?;
    }
    let again = instance(&server, 1, spec.clone(), seen.clone()).await?;
    // Every event delivered again, and acknowledged without its handler.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut acked = 0;
    while Instant::now() < deadline {
        acked = 0;
        for p in 0..3 {
            let name = events::partition::partition_durable(&spec.durable, p);
            if let Ok(info) = stream.consumer_info(&name).await {
                acked += info.delivered.consumer_sequence;
                if info.num_ack_pending > 0 || info.num_pending > 0 {
                    acked = 0;
                    break;
                }
            }
        }
        if acked as usize >= KEYS * 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(acked as usize, KEYS * 2, "not every event came again");
    again.stop().await?;
    let by_instance = seen
        .lock()
        .map(|s| s.by_instance.clone())
        .map_err(|_| "poisoned")?;
    assert_eq!(
        by_instance.get(&1),
        None,
        "handled twice: {:?}",
        by_instance
    );
    // Not keyed: refused.
    let unkeyed = ConsumerSpec::new("PARCELS", "plain")
        .filter([CREATED])
        .watermarked();
    assert_refused(&js, unkeyed).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_handles_the_dead_owners_events_in_stream_order() -> TestResult {
    // An owner dies holding two events of one key, the second's ack timer
    // reset earlier than the first's (separate in-progress signals): the
    // server returns the second first. The new owner must still handle
    // them in stream order.
    use futures::StreamExt;
    let server = TestServer::start().await?;
    let (_js, publisher) = setup(&server).await?;
    let spec = spec(2);
    // The partitions exist (an instance ran and left).
    let seen = Arc::new(Mutex::new(Seen::default()));
    instance(&server, 0, spec.clone(), seen.clone())
        .await?
        .stop()
        .await?;
    publish(&publisher, 7..8, 2).await?;
    // The dead owner: pulls both in the priority group, is pinned, keeps
    // only the first alive a while, and vanishes.
    let partition = events::partition::partition_of(events::partition::shard_of("p-7"), 2);
    let durable = events::partition::partition_durable(&spec.durable, partition);
    let owner = server.client().await?;
    let inbox = owner.new_inbox();
    let mut answers = owner.subscribe(inbox.clone()).await?;
    owner
        .publish_with_reply(
            format!("$JS.API.CONSUMER.MSG.NEXT.PARCELS.{durable}"),
            inbox,
            r#"{"batch":2,"expires":2000000000,"group":"owner"}"#.into(),
        )
        .await?;
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(5), answers.next())
            .await?
            .ok_or("no answer")?;
        if let Some(reply) = message.reply {
            replies.push(reply);
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    owner.publish(replies[0].clone(), "+WPI".into()).await?;
    owner.flush().await?;
    drop(answers);
    drop(owner);
    // The new owner takes the partition at once (nobody holds it) and
    // must wait for both to come back.
    let taker = instance(&server, 1, spec, seen.clone()).await?;
    assert!(
        until_all_handled(&seen, 2, Duration::from_secs(20)).await,
        "not handled"
    );
    let steps = steps_of(&seen, "p-7");
    assert_eq!(steps, vec![0, 1], "handled out of stream order");
    taker.stop().await?;
    Ok(())
}
