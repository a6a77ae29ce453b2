//! A keyed consumer's failover after a SIGKILL: three instances, each its
//! own process (this binary again, in instance mode), share 8 partitions
//! while events flow (one every 2 ms over 64 keys); the instance holding the
//! most partitions is SIGKILLed and a new one started, round after round.
//!
//! Two times per round, from the kill:
//! - *taken over*: the survivors hold every partition the dead one held
//!   (its silence noticed, the partitions reassigned);
//! - *resumed*: every one of those partitions has handled an event again
//!   — which waits, in each, for the events the dead instance held
//!   unacknowledged to come back (their ack wait, 5 s here as in the
//!   reference services) and be handled first.
//!
//! Not ratios: times, as median and max over the rounds.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use switchboard::events::{ConsumerSpec, Event, Publisher, ReceivedEvent, StreamSpec};
use switchboard::testing::TestServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::report::{Measurement, Report};

/// Set to a NATS URL, the binary runs one keyed instance instead of the
/// benchmarks.
pub const INSTANCE_ENV: &str = "SWITCHBOARD_BENCH_KEYED_INSTANCE";

const SUBJECT: &str = "events.failover.ticked";
const DURABLE: &str = "failover";
const PARTITIONS: u32 = 8;
const ACK_WAIT: Duration = Duration::from_secs(5);

#[derive(serde::Serialize, serde::Deserialize)]
struct Tick {
    n: u64,
}

fn spec() -> ConsumerSpec {
    ConsumerSpec::new("FAILOVER", DURABLE)
        .filter([SUBJECT])
        .keyed(PARTITIONS)
        .ack_wait(ACK_WAIT)
}

/// Instance mode: consumes until killed, printing `handled <partition>`
/// per event and `holds <p,p,…>` whenever its partitions change.
pub async fn instance(url: &str) -> anyhow::Result<()> {
    let js = jetstream::new(async_nats::connect(url).await?);
    tokio::spawn(async {
        let mut last = None;
        loop {
            let held = switchboard::events::consumer::partitions_held()
                .get(DURABLE)
                .cloned()
                .unwrap_or_default();
            if last.as_ref() != Some(&held) {
                let list: Vec<String> = held.iter().map(u32::to_string).collect();
                println!("holds {}", list.join(","));
                last = Some(held);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    switchboard::events::consumer::run(
        js,
        spec(),
        |event: ReceivedEvent<Tick>| async move {
            let partition = event
                .delivery
                .as_ref()
                .and_then(|d| d.consumer.rsplit_once("-p"))
                .map(|(_, p)| p.to_owned())
                .unwrap_or_default();
            println!("handled {partition}");
            Ok(())
        },
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// What the instances said, by PID: partitions held now, and when each
/// last handled an event of each partition (by PID: lines a killed
/// instance wrote before it died can still be read after).
#[derive(Debug, Default)]
struct Heard {
    holds: BTreeMap<u32, BTreeSet<u32>>,
    handled: BTreeMap<(u32, u32), Instant>,
}

fn start(url: &str, heard: &Arc<Mutex<Heard>>) -> anyhow::Result<(u32, Child)> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(INSTANCE_ENV, url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let heard = heard.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(mut heard) = heard.lock() else { break };
            if let Some(list) = line.strip_prefix("holds ") {
                let set = list.split(',').filter_map(|p| p.parse().ok()).collect();
                heard.holds.insert(pid, set);
            } else if let Some(p) = line.strip_prefix("handled ")
                && let Ok(p) = p.parse()
            {
                heard.handled.insert((pid, p), Instant::now());
            }
        }
        if let Ok(mut heard) = heard.lock() {
            heard.holds.remove(&pid);
        }
    });
    Ok((pid, child))
}

/// How long until `done`, if within `within`.
async fn until(within: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if done() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

pub async fn run(rounds: usize, report: &mut Report) -> anyhow::Result<()> {
    println!(
        "failover ({rounds} rounds, 3 instances, {PARTITIONS} partitions, ack wait {ACK_WAIT:?})"
    );
    let server = TestServer::start().await?;
    let url = server.url();
    let js = jetstream::new(server.client().await?);
    StreamSpec::new("FAILOVER", ["events.failover.>"])
        .ensure(&js)
        .await?;
    let publisher = Publisher::new(js.clone(), "bench");
    let ticking = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let event = Event::new(Tick { n }).subject(format!("key-{}", n % 64));
            if let Err(error) = publisher.publish(SUBJECT, &event).await {
                eprintln!("publish: {error}");
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let heard = Arc::new(Mutex::new(Heard::default()));
    let mut children = BTreeMap::new();
    for _ in 0..3 {
        let (pid, child) = start(&url, &heard)?;
        children.insert(pid, child);
    }
    let (mut taken, mut resumed) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Everyone holds a share.
        let shared = until(Duration::from_secs(30), || {
            heard.lock().is_ok_and(|h| {
                h.holds.len() == 3
                    && h.holds.values().all(|p| !p.is_empty())
                    && h.holds.values().map(BTreeSet::len).sum::<usize>() == PARTITIONS as usize
            })
        })
        .await;
        if shared.is_none() {
            anyhow::bail!("round {round}: the instances never shared the partitions: {heard:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (victim, victims) = {
            let heard = heard.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            heard
                .holds
                .iter()
                .max_by_key(|(_, p)| p.len())
                .map(|(pid, p)| (*pid, p.clone()))
                .ok_or_else(|| anyhow::anyhow!("nobody holds anything"))?
        };
        switchboard::process::send(victim, nix::sys::signal::Signal::SIGKILL);
        let killed = Instant::now();
        if let Some(mut child) = children.remove(&victim) {
            let _ = child.wait().await;
        }
        if let Ok(mut heard) = heard.lock() {
            heard.holds.remove(&victim);
        }
        let took = until(Duration::from_secs(30), || {
            heard.lock().is_ok_and(|h| {
                let covered: BTreeSet<u32> = h.holds.values().flatten().copied().collect();
                victims.is_subset(&covered)
            })
        })
        .await;
        let back = until(Duration::from_secs(60), || {
            heard.lock().is_ok_and(|h| {
                victims.iter().all(|p| {
                    h.handled
                        .iter()
                        .any(|((pid, q), at)| q == p && *pid != victim && *at > killed)
                })
            })
        })
        .await
        .map(|_| killed.elapsed());
        println!(
            "  round {round}: killed {victim} holding {victims:?}: taken over after {took:?}, resumed after {back:?}"
        );
        taken.extend(took.map(|d| d.as_secs_f64()));
        resumed.extend(back.map(|d| d.as_secs_f64()));
        let (pid, child) = start(&url, &heard)?;
        children.insert(pid, child);
    }
    ticking.abort();
    for (_, mut child) in children {
        let _ = child.kill().await;
    }
    for (what, mut times) in [("taken over", taken), ("resumed", resumed)] {
        if times.len() < rounds {
            println!(
                "  {what}: {} of {rounds} rounds did not finish",
                rounds - times.len()
            );
        }
        times.sort_by(f64::total_cmp);
        let max = times.last().copied().unwrap_or(f64::NAN);
        let median = crate::report::median(&mut times);
        println!("  {what} after a SIGKILL: median {median:.2} s, max {max:.2} s");
        for (stat, value) in [("median", median), ("max", max)] {
            report.measurements.push(Measurement {
                scenario: "failover".into(),
                variant: format!("{what} after SIGKILL, {stat} s"),
                throughput: value,
                latency_us: None,
                ratio: Some(1.0),
                cpu_us_per_op: None,
            });
        }
    }
    Ok(())
}
