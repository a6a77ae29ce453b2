//! Against HTTP: the same typed call (JSON `Payload` in, the same back) done
//! as direct HTTP — an axum server and a keep-alive hyper client pool at
//! the same concurrency — against Switchboard over NATS; and the gateway
//! path (HTTP → gateway → NATS → service) against direct axum.
//!
//! Every server and client runs in this process, as in the request-reply
//! scenario; nats-server is the only other process.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use switchboard::client::Client;
use switchboard::testing::TestServer;

use crate::Settings;
use crate::drive::{Caller, TypedCall, drive};
use crate::echo::{self, Payload};
use crate::report::Report;
use crate::rounds;

/// A keep-alive HTTP/1 client pool.
pub type Http = HttpClient<HttpConnector, Full<Bytes>>;

/// A client pool that keeps connections open between calls.
pub fn http_client() -> Http {
    HttpClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pid = server.pid();
    let _service = echo::start_service(&server.client().await?).await?;

    // Direct: axum with the same JSON extractor and response as a handler.
    let direct = listen(Router::new().route(
        "/echo",
        post(|axum::Json(req): axum::Json<Payload>| async move { axum::Json(req) }),
    ))
    .await?;
    // The gateway, on its own connection, routing from discovery.
    let gateway = gateway::Gateway::new(
        server.client().await?,
        gateway::GatewayConfig {
            required_services: Vec::new(),
            ..gateway::GatewayConfig::default()
        },
    );
    anyhow::ensure!(
        gateway.refresh().await? > 0,
        "the gateway found no route to the benchmark service"
    );
    let gateway = listen(gateway::app(gateway)).await?;

    let typed = TypedCall {
        client: Client::new(server.client().await?),
        subject: "bench.echo",
        payload: Payload::of(settings.payload),
    };
    let http = |addr| HttpCall {
        http: http_client(),
        addr,
        payload: Payload::of(settings.payload),
    };

    for &in_flight in &settings.in_flight {
        let scenario = format!("http c={in_flight}");
        println!(
            "{scenario} ({} bytes, {} interleaved rounds)",
            settings.payload, settings.rounds
        );
        let names = [
            "direct HTTP (axum + hyper)",
            "switchboard over NATS",
            "HTTP → gateway → NATS → service",
        ];
        let runs = rounds::interleave(settings.rounds, names.len(), |i| {
            let (typed, direct, gateway) = (typed.clone(), http(direct), http(gateway));
            async move {
                match i {
                    0 => drive(pid, in_flight, settings.duration, direct).await,
                    1 => drive(pid, in_flight, settings.duration, typed).await,
                    _ => drive(pid, in_flight, settings.duration, gateway).await,
                }
            }
        })
        .await?;
        rounds::report(report, &scenario, &names, &runs);
    }
    Ok(())
}

/// A typed JSON POST to `/echo` over a keep-alive client pool, as a typed
/// HTTP client would make it.
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub http: Http,
    pub addr: SocketAddr,
    pub payload: Payload,
}

impl Caller for HttpCall {
    async fn call(&self) -> bool {
        post_json(&self.http, self.addr, &self.payload)
            .await
            .is_ok()
    }
}

/// Serves `app` on a free loopback port.
async fn listen(app: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("bench HTTP server on {addr} stopped: {error}");
        }
    });
    Ok(addr)
}

/// POSTs `payload` as JSON to `/echo` and decodes the typed answer.
async fn post_json(http: &Http, addr: SocketAddr, payload: &Payload) -> anyhow::Result<Payload> {
    let body = Bytes::from(serde_json::to_vec(payload)?);
    let request = hyper::Request::post(format!("http://{addr}/echo"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = http.request(request).await?;
    anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}
