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
//! `tests/partitions.rs`: an isolated node took the only `orders` with it).
//!
//! So every process the kit runs asks the node it is connected to, once a
//! second, whether JetStream answers (`$JS.API.INFO`, which only a node in
//! touch with the cluster's meta leader can answer). After
//! [`QuorumWatch::failures`] questions in a row go unanswered — a timeout,
//! no responders, or "JetStream system temporarily unavailable" (10008) —
//! it reconnects to another server of its pool (the configured URLs and
//! those the cluster advertised), chosen here, not by the library's
//! shuffle (which could pick the same node again). A node that answers
//! again is stayed on. A move that lands on a node that does not answer
//! either waits before the next — 10 s, doubling while no node answers (a
//! whole cluster without quorum: hopping cannot help) up to 2 min — and
//! the wait is forgotten once one does.
//!
//! Only a cluster is watched (one server: there is nowhere to go), and only
//! while the user may ask (a refusal stops the watch, with a warning: add
//! `$JS.API.INFO` to the user's publish permissions — derived users have
//! it). A leader election on a healthy cluster takes well under the three
//! seconds a move needs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use async_nats::{Client, ReconnectToServer, RequestErrorKind, Server, ServerAddr, ServerInfo};

/// JetStream's "system temporarily unavailable": no meta leader in reach.
const CLUSTER_UNAVAILABLE: u64 = 10008;

/// The account information request every JetStream user may make.
const PROBE_SUBJECT: &str = "$JS.API.INFO";

/// How a process watches its node; `Default` is what every kit process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumWatch {
    /// How often the node is asked.
    pub every: Duration,
    /// How long an answer may take.
    pub timeout: Duration,
    /// Unanswered questions in a row before moving.
    pub failures: u32,
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
    /// Not in reach of the cluster, or not answering at all.
    Unanswered(String),
    /// The question cannot be asked (a refusal, JetStream off): stop.
    CannotAsk(String),
}

async fn ask(nats: &Client, timeout: Duration) -> Answer {
    let request = nats.request(PROBE_SUBJECT, bytes::Bytes::new());
    let reply = match tokio::time::timeout(timeout, request).await {
        Err(_) => return Answer::Unanswered(format!("no answer within {timeout:?}")),
        Ok(Err(error)) => {
            return match error.kind() {
                RequestErrorKind::TimedOut => Answer::Unanswered(error.to_string()),
                RequestErrorKind::NoResponders => Answer::Unanswered("no responders".into()),
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
        Some(CLUSTER_UNAVAILABLE) => Answer::Unanswered("JetStream unavailable (10008)".into()),
        Some(other) => Answer::CannotAsk(format!("JetStream error {other}")),
    }
}

/// Where to go from the node `left`: a server of the pool that is not it
/// (by address, or known by a past move to be it), preferring servers not
/// failing to connect; rotating by `turn` so that repeated moves try each.
fn choose(
    pool: &[Server],
    left: &ServerInfo,
    known: &HashMap<String, String>,
    turn: usize,
) -> Option<ServerAddr> {
    let is_left = |server: &Server| {
        let addr = server.addr.as_url_str().to_owned();
        known.get(&addr) == Some(&left.server_id)
            || (server.addr.host() == left.host && server.addr.port() == left.port)
    };
    let mut candidates: Vec<&Server> = pool.iter().filter(|s| !is_left(s)).collect();
    if candidates.is_empty() {
        return None;
    }
    candidates.sort_by_key(|s| (s.failed_attempts, s.addr.as_url_str().to_owned()));
    let least = candidates.first().map_or(0, |s| s.failed_attempts);
    let healthy: Vec<&Server> = candidates
        .into_iter()
        .filter(|s| s.failed_attempts == least)
        .collect();
    healthy.get(turn % healthy.len()).map(|s| s.addr.clone())
}

/// Watches the node `nats` is connected to until `shutdown`, and moves the
/// connection off a node that lost its cluster (see the module docs).
pub async fn watch(nats: Client, config: QuorumWatch, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(config.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unanswered = 0u32;
    let mut backoff = config.backoff;
    let mut next_move_at = tokio::time::Instant::now();
    let mut turn = 0usize;
    // Server address → the id of the node it reached, learned by moving.
    let mut known: HashMap<String, String> = HashMap::new();
    let mut moved_to: Option<String> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        if nats.connection_state() != async_nats::connection::State::Connected {
            unanswered = 0;
            continue;
        }
        let info = nats.server_info();
        if let Some(addr) = moved_to.take() {
            known.insert(addr, info.server_id.clone());
        }
        if info.cluster.is_none() {
            continue;
        }
        match ask(&nats, config.timeout).await {
            Answer::Answered => {
                if unanswered >= config.failures {
                    tracing::info!(server = %info.server_name, "the node answers again");
                }
                // Where it is now answers: the next move, if one is ever
                // needed, need not wait.
                unanswered = 0;
                next_move_at = tokio::time::Instant::now();
                backoff = config.backoff;
            }
            Answer::CannotAsk(why) => {
                tracing::warn!(%why, "cannot watch the node for a lost cluster (the user needs to publish to {PROBE_SUBJECT}); a partition can strand this process");
                return;
            }
            Answer::Unanswered(why) => {
                unanswered += 1;
                if unanswered < config.failures || tokio::time::Instant::now() < next_move_at {
                    continue;
                }
                let pool = match nats.server_pool().await {
                    Ok(pool) => pool,
                    Err(error) => {
                        tracing::debug!(%error, "no server pool");
                        continue;
                    }
                };
                let Some(target) = choose(&pool, &info, &known, turn) else {
                    tracing::warn!(server = %info.server_name, %why, "the node lost its cluster and no other server is known");
                    next_move_at = tokio::time::Instant::now() + backoff;
                    continue;
                };
                turn += 1;
                tracing::warn!(server = %info.server_name, %why, to = %target.as_url_str(), unanswered, "the node lost its cluster (JetStream unanswered); moving");
                if let Ok(mut next) = NEXT.lock() {
                    next.insert(info.server_id.clone(), target.clone());
                }
                moved_to = Some(target.as_url_str().to_owned());
                if let Err(error) = nats.force_reconnect().await {
                    tracing::warn!(%error, "cannot reconnect");
                }
                unanswered = 0;
                next_move_at = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
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
        pool: &[Server],
        left: &ServerInfo,
        known: &HashMap<String, String>,
        turn: usize,
    ) -> Option<String> {
        choose(pool, left, known, turn).map(|a| a.as_url_str().to_owned())
    }

    #[test]
    fn never_the_node_left_and_each_other_in_turn() {
        let pool = [
            server("nats://10.0.0.1:4222", 0),
            server("nats://10.0.0.2:4222", 0),
            server("nats://10.0.0.3:4222", 0),
        ];
        let left = node("N2", "10.0.0.2", 4222);
        let none = HashMap::new();
        let first = chosen(&pool, &left, &none, 0);
        let second = chosen(&pool, &left, &none, 1);
        assert_eq!(first.as_deref(), Some("nats://10.0.0.1:4222"));
        assert_eq!(second.as_deref(), Some("nats://10.0.0.3:4222"));
        assert_eq!(chosen(&pool, &left, &none, 2), first);
    }

    #[test]
    fn a_node_listening_everywhere_is_known_by_the_moves_that_reached_it() {
        // Its INFO says 0.0.0.0: no address matches it until a move that
        // reached it tells which one does.
        let pool = [server("nats://a:4222", 0), server("nats://b:4222", 0)];
        let left = node("NA", "0.0.0.0", 4222);
        let mut known = HashMap::new();
        assert_eq!(
            chosen(&pool, &left, &known, 0).as_deref(),
            Some("nats://a:4222")
        );
        known.insert("nats://a:4222".to_owned(), "NA".to_owned());
        for turn in 0..3 {
            assert_eq!(
                chosen(&pool, &left, &known, turn).as_deref(),
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
        for turn in 0..4 {
            assert_eq!(
                chosen(&pool, &left, &HashMap::new(), turn).as_deref(),
                Some("nats://10.0.0.4:4222")
            );
        }
        let alone = [server("nats://10.0.0.1:4222", 0)];
        assert_eq!(chosen(&alone, &left, &HashMap::new(), 0), None);
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
