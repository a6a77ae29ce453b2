//! An HTTP/1.1 server that slow and idle clients cannot exhaust.
//!
//! `axum::serve` keeps a connection for as long as its client does: a
//! client that sends its request head one byte a minute (slowloris), or
//! opens keep-alive connections and never uses them, holds a task and a
//! file descriptor each, without bound. [`Server`] bounds all three:
//!
//! - **header read timeout** — a new connection whose first request head
//!   has not fully arrived within it is closed;
//! - **idle timeout** — a keep-alive connection that has served a request
//!   and waits for the next (or receives its head slowly) is closed after it;
//! - **connection cap** — at the cap, a new connection closes the oldest
//!   one that is not serving a request: first one that never completed a
//!   request head (what slow clients hold), else the longest idle. Only when
//!   every connection is serving one is the newcomer refused: a 503 with
//!   `Retry-After` written without waiting, then closed. So normal requests
//!   keep getting in while slow clients come and go, and open descriptors
//!   stay under the cap.
//!
//! A connection "serves a request" from the moment its head is parsed until
//! its response body ends (a Server-Sent Events stream serves for as long
//! as it streams). The timeouts are enforced by one reaper task that checks
//! every connection a few times per timeout (closing takes at most a tenth
//! of the timeout longer), not by a timer per connection.
//!
//! The soft open-file limit is raised to the hard one at start; a cap the
//! limit cannot hold is lowered to fit, with a warning.
//!
//! Shutdown (the future passed to [`Server::run`]) stops accepting, lets
//! requests in flight finish (idle connections close at once), and gives
//! up on the rest after [`HttpLimits::drain_timeout`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

/// Environment variables of [`HttpLimits::from_env`].
pub const HEADER_TIMEOUT_ENV: &str = "SWITCHBOARD_HTTP_HEADER_TIMEOUT_MS";
/// See [`HEADER_TIMEOUT_ENV`].
pub const IDLE_TIMEOUT_ENV: &str = "SWITCHBOARD_HTTP_IDLE_TIMEOUT_MS";
/// See [`HEADER_TIMEOUT_ENV`].
pub const MAX_CONNECTIONS_ENV: &str = "SWITCHBOARD_HTTP_MAX_CONNECTIONS";

/// Descriptors kept free of the cap for everything else a process opens
/// (NATS connections, files, the listener).
const RESERVED_DESCRIPTORS: u64 = 256;

/// The limits of one HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest wait for a new connection's first request head.
    pub header_read_timeout: Duration,
    /// Longest wait for the next request on a keep-alive connection.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait at shutdown for requests in flight.
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl HttpLimits {
    /// Defaults overridden by `SWITCHBOARD_HTTP_HEADER_TIMEOUT_MS`,
    /// `SWITCHBOARD_HTTP_IDLE_TIMEOUT_MS` and
    /// `SWITCHBOARD_HTTP_MAX_CONNECTIONS`.
    ///
    /// # Errors
    ///
    /// A message naming a variable that is not a positive whole number.
    pub fn from_env() -> Result<Self, String> {
        let read = |name: &str| -> Result<Option<u64>, String> {
            match std::env::var(name) {
                Ok(raw) => match raw.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(format!("{name}={raw:?}: a positive whole number is needed")),
                },
                Err(_) => Ok(None),
            }
        };
        let mut limits = HttpLimits::default();
        if let Some(ms) = read(HEADER_TIMEOUT_ENV)? {
            limits.header_read_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = read(IDLE_TIMEOUT_ENV)? {
            limits.idle_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = read(MAX_CONNECTIONS_ENV)? {
            limits.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        Ok(limits)
    }
}

/// What a [`Server`] did with its connections, since it started.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicUsize,
    accepted: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
}

/// A reading of [`ConnectionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Connections open now.
    pub open: usize,
    /// Connections accepted.
    pub accepted: u64,
    /// Closed: no complete request head within the header read timeout.
    pub header_timeouts: u64,
    /// Closed: idle between requests for the idle timeout.
    pub idle_timeouts: u64,
    /// Closed at the cap to let a new connection in.
    pub evicted: u64,
    /// Refused at the cap (503) because every connection was serving.
    pub refused: u64,
}

impl ConnectionStats {
    /// The counts now.
    pub fn counts(&self) -> ConnectionCounts {
        ConnectionCounts {
            open: self.open.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            header_timeouts: self.header_timeouts.load(Ordering::Relaxed),
            idle_timeouts: self.idle_timeouts.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// An HTTP/1.1 server for an axum [`Router`] under [`HttpLimits`].
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stats: Arc<ConnectionStats>,
}

/// Serves `router` on `listener` under `limits` until `shutdown`
/// completes ([`Server::run`]).
///
/// # Errors
///
/// None today; an accept error is logged and retried.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    Server::new(listener, router)
        .limits(limits)
        .run(shutdown)
        .await
}

impl Server {
    /// A server with [`HttpLimits::default`].
    pub fn new(listener: TcpListener, router: Router) -> Self {
        Server {
            listener,
            router,
            limits: HttpLimits::default(),
            stats: Arc::default(),
        }
    }

    /// Sets the limits.
    #[must_use]
    pub fn limits(mut self, limits: HttpLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Counts into `stats` (made before the server, for a router that
    /// reports them).
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<ConnectionStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Its connection counts (for metrics), live while it runs.
    pub fn stats(&self) -> Arc<ConnectionStats> {
        self.stats.clone()
    }

    /// Accepts and serves until `shutdown` completes, then drains (see the
    /// module docs).
    ///
    /// # Errors
    ///
    /// None today; an accept error (out of descriptors, say) is logged and
    /// retried after a pause.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Server {
            listener,
            router,
            mut limits,
            stats,
        } = self;
        limits.max_connections = fit_descriptors(limits.max_connections);
        let registry = Arc::new(Registry::default());
        let reaper = tokio::spawn(reap(registry.clone(), limits.clone(), stats.clone()));
        let (stop, stopping) = watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                // Finished connections leave the set as they end.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept an HTTP connection; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            if registry.len() >= limits.max_connections {
                match registry.make_room() {
                    Room::Coming => {}
                    Room::Evicted => {
                        stats.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    Room::None => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        refuse(&stream);
                        continue;
                    }
                }
                // A closed connection leaves the count when its socket is
                // gone: waiting for it keeps the descriptors under the cap.
                let give_up = tokio::time::Instant::now() + Duration::from_secs(1);
                loop {
                    let freed = registry.freed.notified();
                    tokio::pin!(freed);
                    // Registered before the check: a leave in between wakes it.
                    freed.as_mut().enable();
                    if registry.len() < limits.max_connections {
                        break;
                    }
                    if tokio::time::timeout_at(give_up, freed).await.is_err() {
                        break;
                    }
                }
            }
            let conn = registry.add();
            stats.open.store(registry.len(), Ordering::Relaxed);
            connections.spawn(serve_connection(
                stream,
                router.clone(),
                conn,
                registry.clone(),
                stats.clone(),
                stopping.clone(),
            ));
        }
        drop(listener);
        let _ = stop.send(true);
        let drained = tokio::time::timeout(limits.drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = connections.len(),
                "HTTP requests still in flight after the drain timeout; closing them"
            );
        }
        connections.abort_all();
        reaper.abort();
        Ok(())
    }
}

/// Listen backlog asked for (the kernel caps it at `net.core.somaxconn`):
/// a burst of connections waits in it instead of having its handshakes
/// dropped and retried a second or more later — normal requests among them.
const BACKLOG: u32 = 4096;

/// Binds `addr` for a [`Server`], with a deep listen backlog (tokio's
/// `TcpListener::bind` asks for 1,024).
///
/// # Errors
///
/// The OS error: the address is taken or not allowed.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The soft open-file limit raised to the hard one, and `cap` lowered to
/// fit under it.
fn fit_descriptors(cap: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return cap;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let room = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if cap > room {
        tracing::warn!(
            asked = cap,
            open_file_limit = soft,
            cap = room.max(1),
            "the open-file limit cannot hold that many HTTP connections; capping lower"
        );
        return room.max(1);
    }
    cap
}

/// What a refused connection is told, written without waiting (a client
/// that does not read it loses nothing it was promised).
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 87\r\n\r\n\
{\"error\":{\"code\":503,\"message\":\"too many connections are serving requests; try again\"}}";

fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(REFUSAL);
}

/// One open connection, as the cap and the reaper see it.
#[derive(Debug)]
struct Conn {
    id: u64,
    accepted: Instant,
    /// Requests being served (head parsed, body not yet ended).
    serving: AtomicUsize,
    /// Requests served to the end.
    served: AtomicU64,
    /// When the last request ended, in ms after `accepted`.
    idle_since_ms: AtomicU64,
    /// Closes the connection (reaped, evicted).
    close: Notify,
    /// Told to close; counted until its socket is gone.
    closing: std::sync::atomic::AtomicBool,
}

impl Conn {
    fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) > 0
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn ms_since_accepted(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The open connections by id (ids grow with acceptance: the first is the
/// oldest), counted until their sockets are gone.
#[derive(Debug, Default)]
struct Registry {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
    /// Signalled whenever a connection leaves.
    freed: Notify,
}

/// What [`Registry::make_room`] did.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    /// A connection is closing already: its slot is coming.
    Coming,
    /// The oldest connection not serving was told to close.
    Evicted,
    /// Every connection is serving a request.
    None,
}

impl Registry {
    fn len(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }

    fn add(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            accepted: Instant::now(),
            serving: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            close: Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        if let Ok(mut open) = self.open.lock() {
            open.insert(conn.id, conn.clone());
        }
        conn
    }

    /// The connection's socket is gone.
    fn remove(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
        }
        self.freed.notify_waiters();
    }

    /// Tells `conn` to close, unless it was told already; whether it was
    /// told now.
    fn close(conn: &Conn) -> bool {
        let first = !conn.closing.swap(true, Ordering::AcqRel);
        if first {
            conn.close.notify_one();
        }
        first
    }

    /// Room for one more: a slot already coming (a connection closing),
    /// else the oldest connection that never completed a request head is
    /// closed, else the oldest idle one.
    fn make_room(&self) -> Room {
        let victim = {
            let Ok(open) = self.open.lock() else {
                return Room::None;
            };
            if open.values().any(|c| c.is_closing()) {
                return Room::Coming;
            }
            let idle = || open.values().filter(|c| !c.is_serving());
            idle()
                .find(|c| c.served.load(Ordering::Relaxed) == 0)
                .or_else(|| idle().next())
                .cloned()
        };
        match victim {
            Some(conn) if Registry::close(&conn) => Room::Evicted,
            Some(_) => Room::Coming,
            None => Room::None,
        }
    }

    fn snapshot(&self) -> Vec<Arc<Conn>> {
        self.open
            .lock()
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Closes connections past their header read or idle timeout, checking a
/// few times per timeout.
async fn reap(registry: Arc<Registry>, limits: HttpLimits, stats: Arc<ConnectionStats>) {
    let every = (limits.header_read_timeout.min(limits.idle_timeout) / 10)
        .clamp(Duration::from_millis(10), Duration::from_millis(500));
    let header_ms = u64::try_from(limits.header_read_timeout.as_millis()).unwrap_or(u64::MAX);
    let idle_ms = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for conn in registry.snapshot() {
            if conn.is_serving() || conn.is_closing() {
                continue;
            }
            let now = conn.ms_since_accepted();
            let (counter, expired) = if conn.served.load(Ordering::Acquire) == 0 {
                (&stats.header_timeouts, now >= header_ms)
            } else {
                let since = conn.idle_since_ms.load(Ordering::Acquire);
                (&stats.idle_timeouts, now.saturating_sub(since) >= idle_ms)
            };
            if expired && Registry::close(&conn) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        stats.open.store(registry.len(), Ordering::Relaxed);
    }
}

/// Serves one connection until it ends, is closed by the reaper or the
/// cap, or (at shutdown) has finished its requests in flight.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    stats: Arc<ConnectionStats>,
    mut stopping: watch::Receiver<bool>,
) {
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let serving = Serving::start(conn.clone());
            let router = router.clone();
            async move {
                let response = match router.oneshot(request.map(Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _serving: serving,
                    })
                }))
            }
        })
    };
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "HTTP connection ended with an error");
                }
                break;
            }
            // Reaped or evicted: dropping the connection closes the socket.
            () = conn.close.notified() => break,
            _ = stopping.changed(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    registry.remove(conn.id);
    stats.open.store(registry.len(), Ordering::Relaxed);
}

/// A request being served, from its parsed head to the end (or drop) of
/// its response body.
struct Serving(Arc<Conn>);

impl Serving {
    fn start(conn: Arc<Conn>) -> Self {
        conn.serving.fetch_add(1, Ordering::AcqRel);
        Serving(conn)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_since_ms
            .store(conn.ms_since_accepted(), Ordering::Release);
        conn.served.fetch_add(1, Ordering::AcqRel);
        conn.serving.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request [`Serving`] until it ends.
struct Tracked {
    body: Body,
    _serving: Serving,
}

impl HttpBody for Tracked {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_whole_http_response() {
        let text = String::from_utf8_lossy(REFUSAL);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(body).is_ok(),
            "{body}"
        );
    }

    #[test]
    fn the_cap_evicts_a_connection_that_never_sent_a_request_before_an_idle_one() {
        let registry = Registry::default();
        let idle = registry.add();
        drop(Serving::start(idle.clone()));
        let serving = registry.add();
        let _busy = Serving::start(serving.clone());
        let silent = registry.add();
        assert_eq!(registry.make_room(), Room::Evicted);
        assert!(silent.is_closing() && !idle.is_closing());
        assert_eq!(registry.make_room(), Room::Coming, "its slot is coming");
        registry.remove(silent.id);
        assert_eq!(registry.make_room(), Room::Evicted, "then the idle one");
        assert!(idle.is_closing());
        registry.remove(idle.id);
        assert_eq!(registry.make_room(), Room::None, "never one serving");
        assert!(!serving.is_closing());
    }
}
