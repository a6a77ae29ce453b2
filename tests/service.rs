//! The service side of the request-reply kit, against a real nats-server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::client::{CallError, CallOptions, Client};
use switchboard::codec::{SERVICE_ERROR, SERVICE_ERROR_CODE, TIMEOUT_MS};
use switchboard::discovery::{self, Target};
use switchboard::service::{Context, Endpoint, ServeError, Service, ServiceBuilder};
use switchboard::testing::TestServer;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Get {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Item {
    id: u64,
    name: String,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct Sleep {
    ms: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Done {
    slept_ms: u64,
}

async fn get(_ctx: Context, req: Get) -> Result<Item, ServiceError> {
    match req.id {
        1 => Ok(Item {
            id: 1,
            name: "one".into(),
        }),
        13 => panic!("unlucky id"),
        id => Err(ServiceError::not_found(format!("no item {id}"))),
    }
}

async fn sleep(_ctx: Context, req: Sleep) -> Result<Done, ServiceError> {
    tokio::time::sleep(Duration::from_millis(req.ms)).await;
    Ok(Done { slept_ms: req.ms })
}

fn items() -> ServiceBuilder {
    Service::builder("items", "1.2.3")
        .description("Items for tests")
        .endpoint(
            Endpoint::new("get", get)
                .description("Look up an item")
                .idempotent(true),
        )
        .endpoint(Endpoint::new("sleep", sleep).description("Sleep a while"))
}

async fn raw_request(
    nats: &async_nats::Client,
    subject: &str,
    payload: &'static [u8],
    headers: Option<HeaderMap>,
) -> Result<async_nats::Message, Box<dyn std::error::Error>> {
    let mut request = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(Duration::from_secs(5)));
    if let Some(headers) = headers {
        request = request.headers(headers);
    }
    Ok(nats.send_request(subject.to_owned(), request).await?)
}

fn error_of(message: &async_nats::Message) -> (Option<String>, Option<String>, serde_json::Value) {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let body = serde_json::from_slice(&message.payload).unwrap_or_default();
    (header(SERVICE_ERROR_CODE), header(SERVICE_ERROR), body)
}

#[tokio::test]
async fn a_plain_nats_request_gets_a_json_reply() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let _service = items().start(nats.clone()).await?;
    // No kit on the calling side: what `nats req items.get '{"id":1}'` does.
    let reply = raw_request(&nats, "items.get", br#"{"id":1}"#, None).await?;
    let item: Item = serde_json::from_slice(&reply.payload)?;
    assert_eq!(
        item,
        Item {
            id: 1,
            name: "one".into()
        }
    );
    assert!(
        reply
            .headers
            .is_none_or(|h| h.get(SERVICE_ERROR_CODE).is_none())
    );
    Ok(())
}

#[tokio::test]
async fn errors_are_replies_with_headers_and_body() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let _service = items().start(nats.clone()).await?;

    let malformed = raw_request(&nats, "items.get", b"{\"id\": ", None).await?;
    let (code, text, body) = error_of(&malformed);
    assert_eq!(code.as_deref(), Some("400"));
    assert!(text.is_some_and(|t| t.contains("invalid request")));
    assert_eq!(body["error"]["code"], 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("EOF"))
    );

    let wrong_type = raw_request(&nats, "items.get", br#"{"id":"one"}"#, None).await?;
    assert_eq!(error_of(&wrong_type).0.as_deref(), Some("400"));

    let unknown = raw_request(&nats, "items.get", br#"{"id":7}"#, None).await?;
    let (code, _, body) = error_of(&unknown);
    assert_eq!(code.as_deref(), Some("404"));
    assert_eq!(body["error"]["message"], "no item 7");

    let panicked = raw_request(&nats, "items.get", br#"{"id":13}"#, None).await?;
    let (code, _, body) = error_of(&panicked);
    assert_eq!(code.as_deref(), Some("500"));
    assert_eq!(
        body["error"]["message"], "internal error",
        "no internals leak"
    );

    let next = raw_request(&nats, "items.get", br#"{"id":1}"#, None).await?;
    assert!(
        serde_json::from_slice::<Item>(&next.payload).is_ok(),
        "still serving after a panic"
    );
    Ok(())
}

#[tokio::test]
async fn an_expired_deadline_is_a_504_and_the_handler_does_not_run() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let _service = Service::builder("deadlines", "1.0.0")
        .endpoint(Endpoint::new("work", move |_ctx: Context, req: Sleep| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(req.ms)).await;
                Ok::<_, ServiceError>(Done { slept_ms: req.ms })
            }
        }))
        .start(nats.clone())
        .await?;

    let mut expired = HeaderMap::new();
    expired.insert(TIMEOUT_MS, "0");
    let reply = raw_request(&nats, "deadlines.work", br#"{"ms":0}"#, Some(expired)).await?;
    assert_eq!(error_of(&reply).0.as_deref(), Some("504"));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "no work for an expired request"
    );

    // A deadline that passes while the handler works also answers 504.
    let mut short = HeaderMap::new();
    short.insert(TIMEOUT_MS, "50");
    let reply = raw_request(&nats, "deadlines.work", br#"{"ms":2000}"#, Some(short)).await?;
    assert_eq!(error_of(&reply).0.as_deref(), Some("504"));
    Ok(())
}

#[tokio::test]
async fn requests_run_concurrently_and_a_slow_endpoint_does_not_block_its_sibling() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let _service = items().start(nats.clone()).await?;
    let client = Client::new(nats);

    let started = Instant::now();
    let slow = futures::future::join_all((0..100).map(|_| {
        let client = client.clone();
        async move {
            client
                .call::<_, Done>("items.sleep", &Sleep { ms: 100 })
                .await
        }
    }));
    let sibling = async {
        // While the hundred sleep, the sibling answers promptly.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let asked = Instant::now();
        let item: Result<Item, _> = client.call("items.get", &Get { id: 1 }).await;
        (item, asked.elapsed())
    };
    let (slow, (item, sibling_took)) = tokio::join!(slow, sibling);
    let all_took = started.elapsed();
    assert!(
        slow.iter().all(Result::is_ok),
        "every slow request succeeded"
    );
    assert!(item.is_ok());
    assert!(
        all_took < Duration::from_secs(2),
        "100 × 100 ms took {all_took:?}: not concurrent"
    );
    assert!(
        sibling_took < Duration::from_millis(500),
        "sibling waited {sibling_took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sustained_overload_is_answered_with_429_not_unbounded_queues() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let _service = Service::builder("tight", "1.0.0")
        .endpoint(Endpoint::new("sleep", sleep).max_in_flight(2).max_queued(3))
        .start(nats.clone())
        .await?;
    let client = Client::new(nats.clone());
    let results = futures::future::join_all((0..20).map(|_| {
        let client = client.clone();
        async move {
            client
                .call_with::<_, Done>(
                    "tight.sleep",
                    &Sleep { ms: 300 },
                    CallOptions::default().max_retries(0),
                )
                .await
        }
    }))
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(CallError::Rejected(e)) if e.code == 429))
        .count();
    assert_eq!(ok, 5, "2 in flight + 3 queued are served");
    assert_eq!(overloaded, 15, "the rest are told to come back later");

    let stats =
        discovery::stats(&nats, Target::service("tight"), Duration::from_millis(300)).await?;
    let data = stats
        .first()
        .and_then(|s| s.endpoints.first())
        .and_then(|e| e.data.clone())
        .ok_or("no stats")?;
    assert_eq!(data["rejected"], 15);
    assert_eq!(data["max_in_flight"], 2);
    Ok(())
}

#[tokio::test]
async fn two_instances_share_the_load_through_the_queue_group() -> TestResult {
    let server = TestServer::start().await?;
    let (a, b) = (server.client().await?, server.client().await?);
    let first = items().start(a).await?;
    let second = items().start(b).await?;
    let client = Client::new(server.client().await?);
    for _ in 0..100 {
        let _: Item = client.call("items.get", &Get { id: 1 }).await?;
    }
    let stats = discovery::stats(
        client.nats(),
        Target::service("items"),
        Duration::from_millis(300),
    )
    .await?;
    assert_eq!(stats.len(), 2, "both instances answer STATS");
    let served: Vec<u64> = [first.id(), second.id()]
        .iter()
        .map(|id| {
            stats
                .iter()
                .find(|s| s.id == *id)
                .and_then(|s| s.endpoints.iter().find(|e| e.name == "get"))
                .map_or(0, |e| e.num_requests)
        })
        .collect();
    assert_eq!(served.iter().sum::<u64>(), 100);
    assert!(
        served.iter().all(|n| *n > 0),
        "each instance served some: {served:?}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_declarations_are_refused_at_start() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let bad_name = Service::builder("items", "1.0.0")
        .endpoint(Endpoint::new("Get.All", get))
        .start(nats.clone())
        .await;
    assert!(matches!(
        bad_name,
        Err(ServeError::InvalidName {
            what: "endpoint",
            ..
        })
    ));
    let duplicate = Service::builder("items", "1.0.0")
        .endpoint(Endpoint::new("get", get))
        .endpoint(Endpoint::new("get", get))
        .start(nats.clone())
        .await;
    assert!(matches!(
        duplicate,
        Err(ServeError::DuplicateEndpoint { .. })
    ));
    let version = Service::builder("items", "one").start(nats.clone()).await;
    assert!(matches!(version, Err(ServeError::InvalidVersion { .. })));
    let service = Service::builder("items>", "1.0.0").start(nats).await;
    assert!(matches!(
        service,
        Err(ServeError::InvalidName {
            what: "service",
            ..
        })
    ));
    Ok(())
}

#[tokio::test]
async fn drain_answers_every_accepted_request_then_leaves_discovery() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let service = items().start(server.client().await?).await?;
    let client = Client::new(nats.clone());

    // A burst of slow requests; shutdown starts while they are in flight.
    let burst = futures::future::join_all((0..200).map(|i| {
        let client = client.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(i)).await;
            client
                .call_with::<_, Done>(
                    "items.sleep",
                    &Sleep { ms: 150 },
                    CallOptions::default().max_retries(0),
                )
                .await
        }
    }));
    let shutdown = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        service.drain().await
    };
    let (results, report) = tokio::join!(burst, shutdown);
    assert_eq!(report.unfinished, 0);
    let answered = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        answered > 0 && answered < 200,
        "shutdown happened mid-burst ({answered} answered)"
    );
    // Every request the service accepted was answered, and every answer
    // reached its caller.
    assert_eq!(report.answered, report.accepted, "accepted but unanswered");
    assert_eq!(answered as u64, report.answered, "answers lost on the way");
    // The rest were refused at once (nobody listening any more; after a few
    // of those the client's breaker stops even trying). None timed out: a
    // request the server routed here while the instance unsubscribed is
    // still delivered and answered (fenced drain, `tests/drain.rs`).
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(
                error,
                CallError::NoResponders { .. } | CallError::CircuitOpen { .. }
            ),
            "unexpected {error:?}"
        );
    }
    let left = discovery::ping(&nats, Target::service("items"), Duration::from_millis(200)).await?;
    assert!(left.is_empty(), "a drained instance leaves discovery");
    Ok(())
}

#[tokio::test]
async fn handler_calls_inherit_the_remaining_deadline() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    struct Remaining {
        ms: Option<u64>,
    }
    #[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
    struct Empty {}
    let _inner = Service::builder("inner", "1.0.0")
        .endpoint(Endpoint::new(
            "remaining",
            |ctx: Context, _: Empty| async move {
                Ok::<_, ServiceError>(Remaining {
                    ms: ctx.remaining().map(|d| d.as_millis() as u64),
                })
            },
        ))
        .start(nats.clone())
        .await?;
    let _outer = Service::builder("outer", "1.0.0")
        .endpoint(Endpoint::new(
            "relay",
            |ctx: Context, _: Empty| async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let inner: Remaining = ctx.call("inner.remaining", &Empty {}).await?;
                Ok::<_, ServiceError>(inner)
            },
        ))
        .start(nats.clone())
        .await?;
    let client = Client::new(nats);
    let seen: Remaining = client
        .call_with(
            "outer.relay",
            &Empty {},
            CallOptions::default().timeout(Duration::from_secs(1)),
        )
        .await?;
    let ms = seen.ms.ok_or("inner saw no deadline")?;
    assert!(
        ms <= 700,
        "inner had {ms} ms left of the caller's 1000 after 300 ms of outer work"
    );
    assert!(ms > 100, "{ms}");
    Ok(())
}

#[tokio::test]
async fn discovery_lists_endpoints_with_schemas_and_metadata() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let _service = items()
        .metadata("team", "tests")
        .start(nats.clone())
        .await?;
    let infos = discovery::info(&nats, Some("items"), Duration::from_millis(300)).await?;
    let info = infos.first().ok_or("no INFO answer")?;
    assert_eq!(info.version, "1.2.3");
    assert_eq!(
        info.metadata
            .as_ref()
            .and_then(|m| m.get("team"))
            .map(String::as_str),
        Some("tests")
    );
    let get = info
        .endpoints
        .iter()
        .find(|e| e.name == "get")
        .ok_or("no get")?;
    assert_eq!(get.subject, "items.get");
    assert_eq!(get.queue_group.as_deref(), Some("q"));
    let metadata = get.metadata.clone().unwrap_or_default();
    assert_eq!(metadata.get("idempotent").map(String::as_str), Some("true"));
    let request: serde_json::Value =
        serde_json::from_str(metadata.get("request_schema").ok_or("no schema")?)?;
    assert_eq!(request["properties"]["id"]["type"], "integer");
    let response: serde_json::Value =
        serde_json::from_str(metadata.get("response_schema").ok_or("no schema")?)?;
    assert!(
        response["required"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
    );
    // A subscriber on the error subject proves nothing is published elsewhere.
    let mut none = nats.subscribe("items.>").await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(50), none.next())
            .await
            .is_err()
    );
    Ok(())
}
