//! The load loop every request scenario shares, and the calls it makes.
//!
//! `in_flight` loops each hold their own clone of a [`Caller`] and call it
//! back to back for a fixed time, so exactly that many requests are in
//! flight and neither side is charged for cloning per call.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard::client::Client;
use switchboard::codec;
use switchboard::trace_context::TraceContext;

use crate::echo::Payload;
use crate::report::{self, CpuClock, Run};

/// One kind of request; `true` when it got a good answer.
pub trait Caller: Clone + Send + Sync + 'static {
    /// Makes one request.
    fn call(&self) -> impl Future<Output = bool> + Send;
}

/// The headers a raw request carries.
#[derive(Debug, Clone, Copy)]
pub enum Headers {
    None,
    /// The two a Switchboard call carries (deadline and `traceparent`).
    Ours,
    /// Two of the same sizes under names nats-server gives no meaning to
    /// (its message tracing looks at `traceparent`): whether the name costs.
    Neutral,
    /// One header carrying both (`traceparent` with the deadline appended
    /// as a fifth field): whether the number of headers costs.
    Single,
}

/// A raw async-nats request with opaque bytes and [`Headers`].
#[derive(Debug, Clone)]
pub struct RawCall {
    pub nats: async_nats::Client,
    pub subject: &'static str,
    pub body: Bytes,
    pub headers: Headers,
}

impl Caller for RawCall {
    async fn call(&self) -> bool {
        let mut request = async_nats::Request::new().payload(self.body.clone());
        let trace = || TraceContext::new_root();
        match self.headers {
            Headers::None => {}
            Headers::Ours => {
                request = request.headers(codec::request_headers(Duration::from_secs(5), &trace()));
            }
            Headers::Neutral => {
                let mut headers = async_nats::HeaderMap::new();
                // Same lengths as Switchboard-Timeout-Ms and traceparent.
                headers.insert("Switchboard-Neutral-Ms", "5000");
                headers.insert("neutralhead", trace().to_string());
                request = request.headers(headers);
            }
            Headers::Single => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("traceparent", format!("{}-5000", trace()));
                request = request.headers(headers);
            }
        }
        self.nats.send_request(self.subject, request).await.is_ok()
    }
}

/// A typed Switchboard call.
#[derive(Debug, Clone)]
pub struct TypedCall {
    pub client: Client,
    pub subject: &'static str,
    pub payload: Payload,
}

impl Caller for TypedCall {
    async fn call(&self) -> bool {
        self.client
            .call::<_, Payload>(self.subject, &self.payload)
            .await
            .is_ok()
    }
}

/// Runs `in_flight` loops of `caller` for `duration`; counts successes and
/// records each call's latency and the CPU spent (here and in the server
/// `server_pid`).
pub async fn drive<C: Caller>(
    server_pid: Option<u32>,
    in_flight: usize,
    duration: Duration,
    caller: C,
) -> anyhow::Result<Run> {
    let done = Arc::new(AtomicU64::new(0));
    let cpu = CpuClock::start(server_pid);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let caller = caller.clone();
        let done = done.clone();
        let mut hist = report::histogram()?;
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let asked = Instant::now();
                if caller.call().await {
                    report::record(&mut hist, asked.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let progress = tokio::spawn(progress(done.clone(), started, duration));
    let mut merged = report::histogram()?;
    for task in tasks {
        let hist = task.await?;
        let _ = merged.add(&hist);
    }
    let took = started.elapsed();
    progress.abort();
    clear_progress();
    let ops = done.load(Ordering::Relaxed);
    Ok(Run {
        ops,
        took,
        latency_us: report::percentiles(&merged),
        cpu: cpu.per_op(ops),
    })
}

/// A progress line on a terminal's stderr while a measurement runs (nothing
/// when stderr is a file or pipe, so saved output stays clean).
async fn progress(done: Arc<AtomicU64>, started: Instant, duration: Duration) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let elapsed = started.elapsed().min(duration);
        eprint!(
            "\r  … {:.1}/{:.0} s, {} requests",
            elapsed.as_secs_f64(),
            duration.as_secs_f64(),
            done.load(Ordering::Relaxed)
        );
    }
}

fn clear_progress() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}
