//! The gateway's `Router` without sockets (tower `oneshot`), against a real
//! nats-server and a real service with HTTP metadata.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gateway::{Gateway, GatewayConfig, app};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard::ServiceError;
use switchboard::service::{Context, Endpoint, RunningService, Service};
use switchboard::testing::TestServer;
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct NewThing {
    name: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct ThingRef {
    id: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Thing {
    id: String,
    name: String,
}

async fn things(nats: async_nats::Client) -> Result<RunningService, Box<dyn std::error::Error>> {
    Ok(Service::builder("things", "1.0.0")
        .publishes::<Thing>("events.things.made", "A thing was made")
        .endpoint(
            Endpoint::new("create", |_ctx: Context, req: NewThing| async move {
                if req.name.is_empty() {
                    return Err(ServiceError::bad_request("name must not be empty"));
                }
                Ok(Thing {
                    id: "t-1".into(),
                    name: req.name,
                })
            })
            .description("Create a thing")
            .http("POST", "/things")
            .http_status(201),
        )
        .endpoint(
            Endpoint::new("get", |_ctx: Context, req: ThingRef| async move {
                match req.id.as_str() {
                    "t-1" => Ok(Thing {
                        id: req.id,
                        name: "one".into(),
                    }),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        Ok(Thing {
                            id: req.id,
                            name: "slow".into(),
                        })
                    }
                    "bug" => Err(ServiceError::internal("database password is hunter2")),
                    _ => Err(ServiceError::not_found(format!("no thing {}", req.id))),
                }
            })
            .description("Look up a thing")
            .http("GET", "/things/{id}"),
        )
        .start(nats)
        .await?)
}

async fn gateway(server: &TestServer) -> Result<Gateway, Box<dyn std::error::Error>> {
    let config = GatewayConfig {
        request_timeout: Duration::from_millis(500),
        required_services: vec!["things".into()],
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(server.client().await?, config);
    // A loaded machine can miss one discovery window; the periodic refresh
    // would catch up the same way.
    for _ in 0..10 {
        if gateway.refresh().await? > 0 {
            break;
        }
    }
    Ok(gateway)
}

async fn send(
    gateway: &Gateway,
    request: Request<Body>,
) -> Result<(StatusCode, axum::http::HeaderMap, Value), Box<dyn std::error::Error>> {
    let response = app(gateway.clone()).oneshot(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 4 * 1024 * 1024).await?;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, headers, body))
}

fn get(uri: &str) -> Result<Request<Body>, axum::http::Error> {
    Request::get(uri).body(Body::empty())
}

fn post(uri: &str, body: impl Into<Body>) -> Result<Request<Body>, axum::http::Error> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(body.into())
}

#[tokio::test]
async fn routes_come_from_discovery_and_statuses_map() -> TestResult {
    let server = TestServer::start().await?;
    let _things = things(server.client().await?).await?;
    let gateway = gateway(&server).await?;

    let (status, _, body) = send(&gateway, post("/things", r#"{"name":"lamp"}"#)?).await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, json!({"id": "t-1", "name": "lamp"}));

    let (status, _, body) = send(&gateway, get("/things/t-1")?).await?;
    assert_eq!((status, &body["name"]), (StatusCode::OK, &json!("one")));

    let (status, _, body) = send(&gateway, get("/things/nope")?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"]["message"], "no thing nope",
        "the service's error body passes through"
    );

    let (status, _, body) = send(&gateway, post("/things", r#"{"name":""}"#)?).await?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!(400))
    );

    let (status, _, body) = send(&gateway, post("/things", "{not json")?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not JSON"))
    );

    let (status, _, _) = send(&gateway, post("/things", "[1,2]")?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(gateway::BODY_LIMIT + 10));
    let (status, _, _) = send(&gateway, post("/things", big)?).await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, _, _) = send(&gateway, get("/nowhere")?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, headers, _) = send(
        &gateway,
        Request::delete("/things/t-1").body(Body::empty())?,
    )
    .await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("GET")
    );
    Ok(())
}

#[tokio::test]
async fn deadlines_bugs_and_missing_services_map_to_504_500_503() -> TestResult {
    let server = TestServer::start().await?;
    let things = things(server.client().await?).await?;
    let gateway = gateway(&server).await?;

    let (status, _, _) = send(&gateway, get("/things/slow")?).await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    let (status, headers, body) = send(&gateway, get("/things/bug")?).await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !body.to_string().contains("hunter2"),
        "internals leaked: {body}"
    );
    let trace_id = headers
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(
        body["error"]["trace_id"], trace_id,
        "the trace id ties the reply to the log"
    );

    // The service goes away; its route stays known and answers 503 at once.
    things.drain().await;
    let asked = std::time::Instant::now();
    let (status, headers, _) = send(&gateway, get("/things/t-1")?).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.get("retry-after").is_some());
    assert!(
        asked.elapsed() < Duration::from_millis(400),
        "503 took {:?}",
        asked.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn the_callers_traceparent_reaches_the_service() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let _echo = Service::builder("echo", "1.0.0")
        .endpoint(
            Endpoint::new("trace", |ctx: Context, _: ThingRef| async move {
                Ok::<_, ServiceError>(ThingRef {
                    id: ctx.trace().trace_id(),
                })
            })
            .http("GET", "/trace/{id}"),
        )
        .start(nats)
        .await?;
    let gateway = gateway(&server).await?;
    let request = Request::get("/trace/x")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::empty())?;
    let (status, headers, body) = send(&gateway, request).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        headers.get("x-trace-id").and_then(|v| v.to_str().ok()),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    Ok(())
}

#[tokio::test]
async fn a_new_endpoint_becomes_reachable_after_a_refresh() -> TestResult {
    let server = TestServer::start().await?;
    let gateway = gateway(&server).await?;
    let (status, _, _) = send(&gateway, get("/things/t-1")?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let _things = things(server.client().await?).await?;
    // What the periodic refresh does; on a loaded machine the first answer
    // may miss the discovery window.
    for _ in 0..20 {
        if gateway.refresh().await? > 0 {
            break;
        }
    }
    let (status, _, _) = send(&gateway, get("/things/t-1")?).await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn openapi_metrics_health_and_services() -> TestResult {
    let server = TestServer::start().await?;
    let _things = things(server.client().await?).await?;
    let gateway = gateway(&server).await?;
    let _ = send(&gateway, get("/things/t-1")?).await?;

    let (status, _, doc) = send(&gateway, get("/openapi.json")?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let create = &doc["paths"]["/things"]["post"];
    assert_eq!(create["operationId"], "things.create");
    assert!(create["responses"]["201"].is_object());
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["properties"]["name"]["type"],
        "string"
    );
    let get_thing = &doc["paths"]["/things/{id}"]["get"];
    assert_eq!(get_thing["parameters"][0]["name"], "id");
    assert!(
        get_thing.get("requestBody").is_none(),
        "path parameters are not a body"
    );
    let text = doc.to_string();
    assert!(
        !text.contains("#/$defs/"),
        "every reference resolves inside the document"
    );
    let parsed =
        oas3::from_json(&text).map_err(|e| format!("not a valid OpenAPI 3.1 document: {e}"))?;
    assert_eq!(parsed.openapi, "3.1.0");
    assert_eq!(parsed.paths.as_ref().map(|p| p.len()), Some(2));

    let (status, _, asyncapi) = send(&gateway, get("/asyncapi.json")?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    assert_eq!(
        asyncapi["channels"]["things_made"]["address"],
        "events.things.made.{shard}"
    );
    let payload = &asyncapi["components"]["messages"]["things_made"]["payload"];
    assert_eq!(payload["properties"]["name"]["type"], "string");
    assert_eq!(
        asyncapi["operations"]["receive_things_made"]["action"],
        "receive"
    );

    let (status, _, metrics) = send(&gateway, get("/metrics")?).await?;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let sample = metrics
        .lines()
        .find(|l| {
            l.starts_with("gateway_http_requests_total{")
                && l.contains(r#"route="GET /things/{id}""#)
        })
        .ok_or(format!("no request counter in\n{metrics}"))?;
    let value: f64 = sample.rsplit(' ').next().unwrap_or("x").parse()?;
    assert!(value >= 1.0);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_nats_connected 1"))
    );
    for line in metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (_, value) = line
            .rsplit_once(' ')
            .ok_or(format!("not a sample: {line}"))?;
        assert!(value.parse::<f64>().is_ok(), "not a number in {line}");
    }

    let (status, _, _) = send(&gateway, get("/healthz")?).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _, ready) = send(&gateway, get("/readyz")?).await?;
    assert_eq!((status, &ready["ready"]), (StatusCode::OK, &json!(true)));
    let (status, _, services) = send(&gateway, get("/services")?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(services["services"][0]["name"], "things");
    Ok(())
}

#[tokio::test]
async fn the_gateway_routes_only_what_its_user_may_call() -> TestResult {
    use switchboard::connect::ConnectConfig;
    // `things.get` is routed by its metadata, but the gateway's user may
    // only call `things.create`.
    let server = TestServer::with_config(switchboard::testing::TestServerConfig::default().config(
        r#"authorization { users: [
            { user: owner, password: owner-pw },
            { user: front, password: front-pw, permissions: {
                publish: { allow: ["$SRV.>", "$SYS.REQ.USER.INFO", "things.create"] },
                subscribe: { allow: ["_INBOX.>"] } } }
        ] }"#,
    ))
    .await?;
    let connect = |user: &str, password: &str| {
        ConnectConfig {
            url: server.url(),
            ..ConnectConfig::from_env("gateway-test")
        }
        .user_and_password(user, password)
    };
    let _things = things(connect("owner", "owner-pw").connect().await?).await?;
    let gateway = Gateway::new(
        connect("front", "front-pw").connect().await?,
        GatewayConfig::default(),
    );
    let mut routed = Vec::new();
    for _ in 0..10 {
        gateway.refresh().await?;
        routed = gateway
            .routes()
            .routes()
            .iter()
            .map(|r| r.subject.clone())
            .collect();
        if !routed.is_empty() {
            break;
        }
    }
    assert_eq!(routed, vec!["things.create".to_owned()]);
    let (status, _, openapi) = send(&gateway, get("/openapi.json")?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(openapi["paths"].get("/things").is_some(), "{openapi}");
    assert!(openapi["paths"].get("/things/{id}").is_none(), "{openapi}");
    let (status, _, _) = send(&gateway, get("/things/t-1")?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}
