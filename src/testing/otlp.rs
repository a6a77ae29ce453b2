//! A real OTLP/HTTP receiver for tests: what the exporters of the
//! processes under test actually sent, decoded with the protocol's own
//! message types (`opentelemetry-proto`), not what we think they sent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::testing::OtlpReceiver;
//!
//! let receiver = OtlpReceiver::start().await?;
//! // Start processes with OTEL_EXPORTER_OTLP_ENDPOINT = receiver.endpoint() …
//! for span in receiver.spans() {
//!     println!("{} {} parent {:?}", span.service, span.name, span.parent_span_id);
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use crate::telemetry::collector::ReceivedSpan;
use crate::telemetry::collector::{self, SpanStore};

/// Kept at most (a test's spans are far fewer).
const CAPACITY: usize = 100_000;

#[derive(Debug)]
struct Received {
    requests: AtomicUsize,
    spans: SpanStore,
}

/// An OTLP/HTTP (protobuf) traces endpoint on a free loopback port; stops
/// when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Listens on `127.0.0.1` at a free port.
    ///
    /// # Errors
    ///
    /// The listener cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_at("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Listens on `addr` (e.g. the default OTLP/HTTP port, 4318, to see
    /// that nothing is sent where an unconfigured exporter would send).
    ///
    /// # Errors
    ///
    /// The listener cannot be bound (the port is taken).
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Received {
            requests: AtomicUsize::new(0),
            spans: SpanStore::new(CAPACITY),
        });
        let shared = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let received = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let received = received.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(request, &received).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(OtlpReceiver {
            addr,
            received,
            task,
        })
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter appends
    /// `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.all()
    }

    /// How many HTTP requests arrived (any path, decodable or not).
    pub fn requests(&self) -> usize {
        self.received.requests.load(Ordering::Relaxed)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(request: Request<Incoming>, received: &Received) -> Response<Full<Bytes>> {
    received.requests.fetch_add(1, Ordering::Relaxed);
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != collector::TRACES_PATH {
        return reply(StatusCode::NOT_FOUND, Vec::new());
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, Vec::new()),
    };
    match collector::decode(&body) {
        Ok(spans) => {
            received.spans.extend(spans);
            reply(StatusCode::OK, collector::accepted())
        }
        Err(_) => reply(StatusCode::BAD_REQUEST, Vec::new()),
    }
}
