//! A process connected to a node that lost its cluster moves to one that
//! did not.
//!
//! A node cut off from the rest of its cluster (a partition), or frozen (a
//! long pause), keeps its client connections open: the client library
//! reconnects only when the connection itself fails. On that node every
//! JetStream write fails (no quorum), and a service instance's queue
//! subscriptions are invisible from the other side — connected there, an
//! instance is both useless and unreachable, and with one instance of a
//! service that is the whole service down on every node (seen in
//! `tests/partitions.rs`: an isolated node took a service's only instance
//! with it).
//!
//! So every process the kit runs asks the node it is connected to, once a
//! second, whether JetStream answers (`$JS.API.INFO`, which only a node in
//! touch with the cluster's meta leader can answer — or a cut-off node
//! that *was* the meta leader, until it notices it lost its quorum: about
//! 20 s, measured, during which the process stays). After
//! [`QuorumWatch::failures`] questions in a row go unanswered, one of them
//! with no answer at all (a timeout or no responders: cut off, or frozen)
//! — or [`QuorumWatch::leaderless_failures`] answered "JetStream system
//! temporarily unavailable" (10008), which a healthy node also says while
//! its cluster elects a meta leader — it reconnects to another server of
//! its pool (the configured URLs and those the cluster advertised), chosen
//! here, not by the library's shuffle (which could pick the same node
//! again). A node it left is not gone back to for
//! [`QuorumWatch::quarantine`] while another is there: just back from a
//! pause or a partition, it may still act on a leadership the others have
//! moved on from (once in `tests/partitions.rs`, every process moved
//! back onto a node just resumed from a pause, and writes acknowledged
//! through it were lost; nats-server#7567 describes that kind of split
//! brain). A node that answers is stayed on. A move that lands on a
//! node that does not answer either waits before the next — 10 s, doubling
//! while no node answers (a whole cluster without quorum: hopping cannot
//! help) up to 2 min — and the wait is forgotten once one does.
//!
//! Only a cluster is watched (one server: there is nowhere to go), and only
//! while the user may ask (a refusal stops the watch, with a warning: add
//! `$JS.API.INFO` to the user's publish permissions — derived permissions
//! include it). `SWITCHBOARD_QUORUM_WATCH=off` turns it off.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use async_nats::{Client, ReconnectToServer, RequestErrorKind, Server, ServerAddr, ServerInfo};
use tokio::time::Instant;

/// JetStream's "system temporarily unavailable": no meta leader in reach.
const CLUSTER_UNAVAILABLE: u64 = 10008;

/// The account information request every JetStream user may make.
const PROBE_SUBJECT: &str = "$JS.API.INFO";

/// Turns the watch off (`off`) for the processes the kit runs.
pub const QUORUM_WATCH_ENV: &str = "SWITCHBOARD_QUORUM_WATCH";

/// Whether the processes the kit runs watch their node
/// ([`QUORUM_WATCH_ENV`] is not `off`).
pub fn enabled() -> bool {
    std::env::var(QUORUM_WATCH_ENV).map_or(true, |v| v.trim() != "off")
}

/// How a process watches its node; `Default` is what every kit process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumWatch {
    /// How often the node is asked.
    pub every: Duration,
    /// How long an answer may take.
    pub timeout: Duration,
    /// Unanswered questions in a row before moving, when one of them went
    /// unanswered altogether (a timeout, no responders).
    pub failures: u32,
    /// Questions in a row answered "JetStream unavailable" (10008) before
    /// moving: the answer of a node in touch with its cluster while it
    /// elects a meta leader, too, which takes seconds.
    pub leaderless_failures: u32,
    /// How long a node left is not moved to again while others are there:
    /// one coming back from a partition or a pause may still believe in a
    /// leadership the others have moved on from.
    pub quarantine: Duration,
    /// The least time between two moves; doubled per move while no node
    /// answers, up to [`QuorumWatch::max_backoff`].
    pub backoff: Duration,
    /// The most time between two moves.
    pub max_backoff: Duration,
}

impl Default for QuorumWatch {
    fn default() -> Self {
        QuorumWatch {
            every: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures: 3,
            leaderless_failures: 5,
            quarantine: Duration::from_secs(30),
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(120),
        }
    }
}

/// Where a connection leaving a node goes, by the id of the node it leaves
/// (process-wide: connections of one process on one node go the same way).
static NEXT: LazyLock<Mutex<HashMap<String, ServerAddr>>> = LazyLock::new(Mutex::default);

/// For [`async_nats::ConnectOptions::reconnect_to_server_callback`]: the
/// server chosen for a connection leaving a node, else the library's own
/// choice.
pub(super) fn reconnect_to(_pool: Vec<Server>, left: ServerInfo) -> Option<ReconnectToServer> {
    let addr = NEXT.lock().ok()?.remove(&left.server_id)?;
    Some(ReconnectToServer {
        addr,
        delay: Some(Duration::ZERO),
    })
}

/// What the node said.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// JetStream answered (whatever the account holds).
    Answered,
    /// No answer at all (a timeout, no responders): a node cut off from
    /// the meta leader, or frozen.
    Silent(String),
    /// "JetStream unavailable" (10008): no meta leader in reach — cut off,
    /// or the cluster is electing one.
    Leaderless,
    /// The question cannot be asked (a refusal, JetStream off): stop.
    CannotAsk(String),
}

async fn ask(nats: &Client, timeout: Duration) -> Answer {
    let request = nats.request(PROBE_SUBJECT, bytes::Bytes::new());
    let reply = match tokio::time::timeout(timeout, request).await {
        Err(_) => return Answer::Silent(format!("no answer within {timeout:?}")),
        Ok(Err(error)) => {
            return match error.kind() {
                RequestErrorKind::TimedOut => Answer::Silent(error.to_string()),
                RequestErrorKind::NoResponders => Answer::Silent("no responders".into()),
                _ => Answer::CannotAsk(error.to_string()),
            };
        }
        Ok(Ok(reply)) => reply,
    };
    let code = serde_json::from_slice::<serde_json::Value>(&reply.payload)
        .ok()
        .and_then(|v| {
            v.pointer("/error/err_code")
                .and_then(serde_json::Value::as_u64)
        });
    match code {
        None => Answer::Answered,
        Some(CLUSTER_UNAVAILABLE) => Answer::Leaderless,
        Some(other) => Answer::CannotAsk(format!("JetStream error {other}")),
    }
}

/// What the watch remembers of its moves.
#[derive(Debug, Default)]
struct Memory {
    /// Server address → the id of the node it reached.
    known: HashMap<String, String>,
    /// Addresses of nodes left, and when.
    left: HashMap<String, Instant>,
    /// Moves so far: repeated moves try each server in turn.
    turn: usize,
}

impl Memory {
    /// Whether pool entry `server` is node `node` (by address, or known by
    /// a past move to be it).
    fn is(&self, server: &Server, node: &ServerInfo) -> bool {
        self.known.get(server.addr.as_url_str()) == Some(&node.server_id)
            || (server.addr.host() == node.host && server.addr.port() == node.port)
    }

    /// Where to go from node `from`: a server of the pool that is not it,
    /// not one left within `quarantine` if another is there, preferring
    /// servers not failing to connect; each in turn over repeated moves.
    /// Remembers `from` as left.
    fn choose(
        &mut self,
        pool: &[Server],
        from: &ServerInfo,
        quarantine: Duration,
        now: Instant,
    ) -> Option<ServerAddr> {
        let others: Vec<&Server> = pool.iter().filter(|s| !self.is(s, from)).collect();
        let fresh = |s: &&Server| {
            self.left
                .get(s.addr.as_url_str())
                .is_none_or(|at| now.duration_since(*at) >= quarantine)
        };
        let mut candidates: Vec<&Server> = others.iter().copied().filter(fresh).collect();
        if candidates.is_empty() {
            candidates = others;
        }
        candidates.sort_by_key(|s| (s.failed_attempts, s.addr.as_url_str().to_owned()));
        let least = candidates.first()?.failed_attempts;
        candidates.retain(|s| s.failed_attempts == least);
        let chosen = candidates.get(self.turn % candidates.len())?.addr.clone();
        self.turn += 1;
        let left: Vec<String> = pool
            .iter()
            .filter(|s| self.is(s, from))
            .map(|s| s.addr.as_url_str().to_owned())
            .collect();
        for addr in left {
            self.left.insert(addr, now);
        }
        Some(chosen)
    }
}

/// Watches the node `nats` is connected to until `shutdown`, and moves the
/// connection off a node that lost its cluster (see the module docs).
pub async fn watch(nats: Client, config: QuorumWatch, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(config.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Questions unanswered in a row, and whether one had no answer at all.
    let mut unanswered = 0u32;
    let mut silent = false;
    let mut backoff = config.backoff;
    let mut next_move_at = Instant::now();
    let mut memory = Memory::default();
    let mut moved_to: Option<String> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        if nats.connection_state() != async_nats::connection::State::Connected {
            (unanswered, silent) = (0, false);
            continue;
        }
        let info = nats.server_info();
        if let Some(addr) = moved_to.take() {
            memory.known.insert(addr, info.server_id.clone());
        }
        if info.cluster.is_none() {
            continue;
        }
        let why = match ask(&nats, config.timeout).await {
            Answer::Answered => {
                if unanswered >= config.failures {
                    tracing::info!(server = %info.server_name, "the node answers again");
                }
                // Where it is now answers: the next move, if one is ever
                // needed, need not wait.
                (unanswered, silent) = (0, false);
                next_move_at = Instant::now();
                backoff = config.backoff;
                continue;
            }
            Answer::CannotAsk(why) => {
                tracing::warn!(%why, "cannot watch the node for a lost cluster (the user needs to publish to {PROBE_SUBJECT}); a partition can strand this process");
                return;
            }
            Answer::Silent(why) => {
                silent = true;
                why
            }
            Answer::Leaderless => "JetStream unavailable (10008)".to_owned(),
        };
        unanswered += 1;
        let enough = if silent {
            config.failures
        } else {
            config.leaderless_failures
        };
        if unanswered < enough || Instant::now() < next_move_at {
            continue;
        }
        let pool = match nats.server_pool().await {
            Ok(pool) => pool,
            Err(error) => {
                tracing::debug!(%error, "no server pool");
                continue;
            }
        };
        let now = Instant::now();
        next_move_at = now + backoff;
        let Some(target) = memory.choose(&pool, &info, config.quarantine, now) else {
            tracing::warn!(server = %info.server_name, %why, "the node lost its cluster and no other server is known");
            continue;
        };
        tracing::warn!(server = %info.server_name, %why, to = %target.as_url_str(), unanswered, "the node lost its cluster (JetStream unanswered); moving");
        if let Ok(mut next) = NEXT.lock() {
            next.insert(info.server_id.clone(), target.clone());
        }
        moved_to = Some(target.as_url_str().to_owned());
        if let Err(error) = nats.force_reconnect().await {
            tracing::warn!(%error, "cannot reconnect");
        }
        (unanswered, silent) = (0, false);
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(addr: &str, failed_attempts: usize) -> Server {
        Server {
            addr: addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")),
            failed_attempts,
            did_connect: false,
            is_discovered: false,
            last_error: None,
        }
    }

    fn node(id: &str, host: &str, port: u16) -> ServerInfo {
        ServerInfo {
            server_id: id.to_owned(),
            host: host.to_owned(),
            port,
            ..ServerInfo::default()
        }
    }

    fn chosen(
        memory: &mut Memory,
        pool: &[Server],
        from: &ServerInfo,
        now: Instant,
    ) -> Option<String> {
        memory
            .choose(pool, from, Duration::from_secs(30), now)
            .map(|a| a.as_url_str().to_owned())
    }

    #[test]
    fn never_the_node_left_and_each_other_in_turn() {
        let pool = [
            server("nats://10.0.0.1:4222", 0),
            server("nats://10.0.0.2:4222", 0),
            server("nats://10.0.0.3:4222", 0),
        ];
        let left = node("N2", "10.0.0.2", 4222);
        let mut memory = Memory::default();
        let now = Instant::now();
        let first = chosen(&mut memory, &pool, &left, now);
        let second = chosen(&mut memory, &pool, &left, now);
        assert_eq!(first.as_deref(), Some("nats://10.0.0.1:4222"));
        assert_eq!(second.as_deref(), Some("nats://10.0.0.3:4222"));
        assert_eq!(chosen(&mut memory, &pool, &left, now), first);
    }

    #[test]
    fn a_node_left_lately_is_gone_back_to_only_when_nothing_else_is_there() {
        let pool = [
            server("nats://10.0.0.1:4222", 0),
            server("nats://10.0.0.2:4222", 0),
            server("nats://10.0.0.3:4222", 0),
        ];
        let mut memory = Memory::default();
        let start = Instant::now();
        // Off n2 (to n1), then off n1 10 s later: n3, not n2 again.
        assert_eq!(
            chosen(&mut memory, &pool, &node("N2", "10.0.0.2", 4222), start).as_deref(),
            Some("nats://10.0.0.1:4222")
        );
        let later = start + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(
                chosen(&mut memory, &pool, &node("N1", "10.0.0.1", 4222), later).as_deref(),
                Some("nats://10.0.0.3:4222")
            );
        }
        // Off n3 with both others left lately: one of them all the same.
        assert!(chosen(&mut memory, &pool, &node("N3", "10.0.0.3", 4222), later).is_some());
        // Once the quarantine is over, n2 is a candidate again.
        let much_later = start + Duration::from_secs(31);
        let mut seen = std::collections::BTreeSet::new();
        let mut fresh = Memory::default();
        fresh.left.insert("nats://10.0.0.2:4222".to_owned(), start);
        for _ in 0..2 {
            seen.extend(chosen(
                &mut fresh,
                &pool,
                &node("N1", "10.0.0.1", 4222),
                much_later,
            ));
        }
        assert!(seen.contains("nats://10.0.0.2:4222"), "{seen:?}");
    }

    #[test]
    fn a_node_listening_everywhere_is_known_by_the_moves_that_reached_it() {
        // Its INFO says 0.0.0.0: no address matches it until a move that
        // reached it tells which one does.
        let pool = [server("nats://a:4222", 0), server("nats://b:4222", 0)];
        let left = node("NA", "0.0.0.0", 4222);
        let mut memory = Memory::default();
        let now = Instant::now();
        assert!(chosen(&mut memory, &pool, &left, now).is_some());
        memory
            .known
            .insert("nats://a:4222".to_owned(), "NA".to_owned());
        for _ in 0..3 {
            assert_eq!(
                chosen(&mut memory, &pool, &left, now).as_deref(),
                Some("nats://b:4222")
            );
        }
    }

    #[test]
    fn servers_failing_to_connect_come_last_and_a_lone_node_has_nowhere_to_go() {
        let pool = [
            server("nats://10.0.0.1:4222", 0),
            server("nats://10.0.0.3:4222", 2),
            server("nats://10.0.0.4:4222", 0),
        ];
        let left = node("N1", "10.0.0.1", 4222);
        let mut memory = Memory::default();
        let now = Instant::now();
        for _ in 0..4 {
            assert_eq!(
                chosen(&mut memory, &pool, &left, now).as_deref(),
                Some("nats://10.0.0.4:4222")
            );
        }
        let alone = [server("nats://10.0.0.1:4222", 0)];
        assert_eq!(chosen(&mut Memory::default(), &alone, &left, now), None);
    }

    #[test]
    fn a_move_is_taken_by_the_connection_leaving_that_node_once() {
        let target: ServerAddr = "nats://10.0.0.9:4222"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        if let Ok(mut next) = NEXT.lock() {
            next.insert("LEAVING".to_owned(), target.clone());
        }
        assert!(reconnect_to(Vec::new(), node("OTHER", "h", 1)).is_none());
        let taken = reconnect_to(Vec::new(), node("LEAVING", "h", 1));
        assert_eq!(taken.map(|t| t.addr), Some(target));
        assert!(reconnect_to(Vec::new(), node("LEAVING", "h", 1)).is_none());
    }
}
