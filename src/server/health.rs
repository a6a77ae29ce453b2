//! Readiness probe: nats-server's monitoring endpoint `GET /healthz`.
//!
//! The full `/healthz` (not `?js-enabled-only=true`) is used on purpose: it
//! also waits for stored streams to be recovered after a restart and, in a
//! cluster, for a JetStream meta leader, which is what "ready for clients"
//! means for every caller of this module.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Asks `http://{addr}/healthz` once; `Ok` on 200, otherwise the answer or
/// error as text for the caller's diagnostics.
pub(crate) async fn probe(addr: &str) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = hyper::Request::get("/healthz")
            .header(hyper::header::HOST, addr)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body).trim()
            ))
        }
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer within 2s".to_owned()))
}
