//! The reference system end to end: real `switchboard up`, real service
//! processes, real nats-server — the flow of the README's walkthrough, then
//! a restart of everything with state intact.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::client::{CallError, CallOptions, Client};
use switchboard::testing::free_port;

use common::{Instance, Signal, System, admin, user_and_stock};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn start(dir: &Path, port: u16, http_port: u16) -> System {
    common::start_system(dir, port, http_port)
}

async fn call(client: &Client, subject: &str, body: Value) -> Result<Value, CallError> {
    client
        .call_with(subject, &body, CallOptions::default().max_retries(0))
        .await
}

fn code(result: &Result<Value, CallError>) -> Option<u16> {
    result
        .as_ref()
        .err()
        .and_then(|e| e.rejection())
        .map(|e| e.code)
}

async fn eventually_value(
    client: &Client,
    subject: &str,
    body: Value,
    check: impl Fn(&Value) -> bool,
) -> Result<Value, Box<dyn std::error::Error>> {
    let mut last = Value::Null;
    for _ in 0..100 {
        if let Ok(value) = call(client, subject, body.clone()).await {
            if check(&value) {
                return Ok(value);
            }
            last = value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{subject} never satisfied the check; last answer {last}").into())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_flow_survives_a_restart_of_everything() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (port, http_port) = (free_port()?, free_port()?);
    let mut system = start(dir.path(), port, http_port);
    let client = admin(dir.path()).await?;

    let user = call(
        &client,
        "users.create",
        json!({"name": "Ann", "email": "ann@example.com"}),
    )
    .await?;
    let user_id = user["id"].as_str().ok_or("no user id")?.to_owned();
    assert_eq!(user["name"], "Ann");
    assert!(user["created_at"].is_string());
    let again = call(
        &client,
        "users.create",
        json!({"name": "Other", "email": "ANN@example.com"}),
    )
    .await;
    assert_eq!(code(&again), Some(409), "e-mail already used");

    let stock = call(
        &client,
        "inventory.restock",
        json!({"sku": "widget", "quantity": 10}),
    )
    .await?;
    assert_eq!(
        stock,
        json!({"sku": "widget", "available": 10, "reserved": 0})
    );

    let order = call(
        &client,
        "orders.create",
        json!({"user_id": user_id, "items": [{"sku": "widget", "quantity": 3}]}),
    )
    .await?;
    assert_eq!(order["status"], "confirmed");
    let order_id = order["id"].as_str().ok_or("no order id")?.to_owned();
    let stock = call(&client, "inventory.stock", json!({"sku": "widget"})).await?;
    assert_eq!(
        stock,
        json!({"sku": "widget", "available": 7, "reserved": 3})
    );

    let too_large = call(
        &client,
        "orders.create",
        json!({"user_id": user_id, "items": [{"sku": "widget", "quantity": 8}]}),
    )
    .await;
    assert_eq!(code(&too_large), Some(409));
    let stock = call(&client, "inventory.stock", json!({"sku": "widget"})).await?;
    assert_eq!(
        stock,
        json!({"sku": "widget", "available": 7, "reserved": 3}),
        "nothing reserved by a refused order"
    );

    let unknown_user = call(
        &client,
        "orders.create",
        json!({"user_id": "u-nobody", "items": [{"sku": "widget", "quantity": 1}]}),
    )
    .await;
    assert_eq!(code(&unknown_user), Some(404));

    let cancelled = call(&client, "orders.cancel", json!({"id": order_id})).await?;
    assert_eq!(cancelled["status"], "cancelled");
    let twice = call(&client, "orders.cancel", json!({"id": order_id})).await?;
    assert_eq!(twice["status"], "cancelled", "cancelling twice is fine");

    // Compensation through the event: stock comes back within seconds.
    eventually_value(&client, "inventory.stock", json!({"sku": "widget"}), |s| {
        s["available"] == 10 && s["reserved"] == 0
    })
    .await?;

    let list = eventually_value(
        &client,
        "notifications.list",
        json!({"user_id": user_id}),
        |l| l["notifications"].as_array().is_some_and(|n| n.len() == 3),
    )
    .await?;
    let kinds: Vec<&str> = list["notifications"]
        .as_array()
        .map(|n| n.iter().filter_map(|x| x["type"].as_str()).collect())
        .unwrap_or_default();
    // One per event. The user's and the order's events come through
    // different consumers, so only an order's own events are ordered.
    let mut sorted = kinds.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["orders.cancelled", "orders.created", "users.created"]
    );
    // Newest first.
    let position = |kind: &str| kinds.iter().position(|k| *k == kind);
    assert!(
        position("orders.cancelled") < position("orders.created"),
        "{kinds:?}"
    );

    // Restart everything: services and nats-server.
    let started = system.up.descendants();
    system.up.signal(Signal::SIGINT);
    let status = system
        .up
        .wait_exit(Duration::from_secs(30))
        .ok_or("up did not stop")?;
    assert!(status.success());
    for pid in started {
        assert!(!switchboard::process::exists(pid));
    }
    let _system = start(dir.path(), system.port, system.http_port);
    let client = admin(dir.path()).await?;
    let order = call(&client, "orders.get", json!({"id": order_id})).await?;
    assert_eq!(order["status"], "cancelled");
    let stock = call(&client, "inventory.stock", json!({"sku": "widget"})).await?;
    assert_eq!(
        stock,
        json!({"sku": "widget", "available": 10, "reserved": 0})
    );
    let user = call(&client, "users.get", json!({"id": user_id})).await?;
    assert_eq!(user["email"], "ann@example.com");
    let list = call(&client, "notifications.list", json!({"user_id": user_id})).await?;
    assert_eq!(
        list["notifications"].as_array().map(Vec::len),
        Some(3),
        "no notification lost or repeated"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_bad_input_with_400_and_keeps_serving() -> TestResult {
    let dir = tempfile::tempdir()?;
    let _system = start(dir.path(), free_port()?, free_port()?);
    let client = admin(dir.path()).await?;
    let nats = client.nats().clone();
    let endpoints = [
        ("users.create", json!({"name": "", "email": "a@b.co"})),
        (
            "users.create",
            json!({"name": "A", "email": "not-an-email"}),
        ),
        ("users.get", json!({})),
        ("inventory.restock", json!({"sku": "x", "quantity": 0})),
        ("inventory.restock", json!({"sku": "", "quantity": 1})),
        ("inventory.stock", json!({"sku": 5})),
        ("inventory.reserve", json!({"order_id": "o", "items": []})),
        ("inventory.release", json!({"order_id": ""})),
        (
            "orders.create",
            json!({"user_id": "u", "items": [{"sku": "x", "quantity": 0}]}),
        ),
        ("orders.get", json!({"id": 1})),
        ("orders.cancel", json!({"nope": true})),
        ("notifications.list", json!({"user_id": ""})),
    ];
    for (subject, body) in endpoints {
        let result = call(&client, subject, body.clone()).await;
        assert_eq!(code(&result), Some(400), "{subject} {body}: {result:?}");
        // Raw garbage too.
        let raw = nats
            .send_request(
                subject.to_owned(),
                async_nats::Request::new().payload("{not json".into()),
            )
            .await?;
        let code = raw
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.as_str().to_owned());
        assert_eq!(
            code.as_deref(),
            Some("400"),
            "{subject} with malformed JSON"
        );
    }
    // Still serving.
    let user = call(
        &client,
        "users.create",
        json!({"name": "Bo", "email": "bo@example.com"}),
    )
    .await?;
    assert!(user["id"].is_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_orders_instances_share_requests_and_both_serve_correctly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let _system = start(dir.path(), port, free_port()?);
    let client = admin(dir.path()).await?;
    // A second instance, as an operator would start one.
    let mut second = Instance::start("orders", port, &dir.path().join("orders-2.log"))?;

    let user_id = user_and_stock(&client, "cy@example.com", "gadget", 100).await?;
    let mut instances = 0;
    for _ in 0..50 {
        instances = switchboard::discovery::ping(
            client.nats(),
            switchboard::discovery::Target::service("orders"),
            Duration::from_millis(200),
        )
        .await?
        .len();
        if instances == 2 {
            break;
        }
    }
    assert_eq!(instances, 2);
    let mut ids = Vec::new();
    for _ in 0..20 {
        let order = call(
            &client,
            "orders.create",
            json!({"user_id": user_id, "items": [{"sku": "gadget", "quantity": 1}]}),
        )
        .await?;
        ids.push(order["id"].as_str().ok_or("no id")?.to_owned());
    }
    for id in &ids {
        let order = call(&client, "orders.get", json!({"id": id})).await?;
        assert_eq!(order["status"], "confirmed");
    }
    let stats = switchboard::discovery::stats(
        client.nats(),
        switchboard::discovery::Target::service("orders"),
        Duration::from_millis(300),
    )
    .await?;
    let served: Vec<u64> = stats
        .iter()
        .map(|s| {
            s.endpoints
                .iter()
                .find(|e| e.name == "create")
                .map_or(0, |e| e.num_requests)
        })
        .collect();
    assert_eq!(served.iter().sum::<u64>(), 20);
    assert!(
        served.iter().all(|n| *n > 0),
        "both instances served: {served:?}"
    );
    let stock = call(&client, "inventory.stock", json!({"sku": "gadget"})).await?;
    assert_eq!(stock["available"], 80);

    second.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_running_system_matches_the_declared_contract() -> TestResult {
    use futures::StreamExt;
    let dir = tempfile::tempdir()?;
    let _system = start(dir.path(), free_port()?, free_port()?);
    let client = admin(dir.path()).await?;
    let declared = common::reference_contracts().await?;

    // Endpoints, via discovery.
    let infos =
        switchboard::discovery::info(client.nats(), None, Duration::from_millis(500)).await?;
    for service in &declared {
        let info = infos
            .iter()
            .find(|i| i.name == service.name)
            .ok_or(format!("{} does not answer discovery", service.name))?;
        let mut running: Vec<&str> = info.endpoints.iter().map(|e| e.subject.as_str()).collect();
        let mut wanted: Vec<&str> = service
            .endpoints
            .iter()
            .map(|e| e.subject.as_str())
            .collect();
        running.sort_unstable();
        wanted.sort_unstable();
        assert_eq!(running, wanted, "{}'s endpoints", service.name);
        for endpoint in &info.endpoints {
            let declared = service
                .endpoints
                .iter()
                .find(|d| d.subject == endpoint.subject)
                .ok_or(format!("{} is not in its contract", endpoint.subject))?;
            let idempotent = endpoint
                .metadata
                .as_ref()
                .and_then(|m| m.get("idempotent"))
                .is_some_and(|v| v == "true");
            assert_eq!(
                idempotent, declared.idempotent,
                "idempotency of {}",
                endpoint.subject
            );
        }
    }

    // Streams and buckets, via the JetStream API (consumers create their
    // buckets as they start, so give them a moment).
    let js = async_nats::jetstream::new(client.nats().clone());
    let mut wanted: Vec<String> = declared
        .iter()
        .flat_map(|s| {
            s.streams
                .iter()
                .map(|stream| stream.name.clone())
                .chain(s.all_buckets().into_iter().map(|b| format!("KV_{b}")))
        })
        .collect();
    wanted.push("DLQ".into());
    wanted.sort();
    let mut names = Vec::new();
    for _ in 0..50 {
        names.clear();
        let mut listing = js.stream_names();
        while let Some(name) = listing.next().await {
            names.push(name?);
        }
        names.sort();
        if names == wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(names, wanted, "streams and buckets");
    for (stream, subjects) in [
        contracts::users::stream(),
        contracts::orders::stream(),
        contracts::inventory::stream(),
    ]
    .map(|s| (s.name, s.subjects))
    {
        let mut live = js.get_stream(&stream).await?;
        assert_eq!(live.info().await?.config.subjects, subjects, "{stream}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_callers_ordering_one_sku_all_succeed_while_stock_lasts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let _system = start(dir.path(), free_port()?, free_port()?);
    let client = admin(dir.path()).await?;
    let user_id = user_and_stock(&client, "hot@example.com", "hot-sku", 1000).await?;

    let (callers, each) = (32, 10);
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (client, user_id) = (client.clone(), user_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut refused = Vec::new();
            for _ in 0..each {
                let order =
                    json!({"user_id": user_id, "items": [{"sku": "hot-sku", "quantity": 1}]});
                if let Err(e) = call(&client, "orders.create", order).await {
                    refused.push(e.to_string());
                }
            }
            refused
        }));
    }
    let mut refused = Vec::new();
    for task in tasks {
        refused.extend(task.await?);
    }
    assert!(
        refused.is_empty(),
        "{} of {} orders refused, e.g. {:?}",
        refused.len(),
        callers * each,
        refused.first()
    );
    let stock = call(&client, "inventory.stock", json!({"sku": "hot-sku"})).await?;
    assert_eq!(
        stock,
        json!({"sku": "hot-sku", "available": 1000 - callers * each, "reserved": callers * each})
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_and_its_retries_publish_one_event_and_release_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let _system = start(dir.path(), free_port()?, free_port()?);
    let client = admin(dir.path()).await?;
    let user_id = user_and_stock(&client, "cy@example.com", "gizmo", 5).await?;
    let order = call(
        &client,
        "orders.create",
        json!({"user_id": user_id, "items": [{"sku": "gizmo", "quantity": 2}]}),
    )
    .await?;
    let order_id = order["id"].as_str().ok_or("no order id")?.to_owned();
    // The cancel and its event are one commit; the caller, unsure, retries.
    for _ in 0..3 {
        let cancelled = call(&client, "orders.cancel", json!({"id": order_id})).await?;
        assert_eq!(cancelled["status"], "cancelled");
    }
    eventually_value(&client, "inventory.stock", json!({"sku": "gizmo"}), |s| {
        s["available"] == 5 && s["reserved"] == 0
    })
    .await?;
    let js = async_nats::jetstream::new(client.nats().clone());
    let mut stream = js.get_stream("ORDERS").await?;
    let last = stream.info().await?.state.last_sequence;
    let mut cancelled_events = 0;
    for sequence in 1..=last {
        if let Ok(message) = stream.get_raw_message(sequence).await
            && message.headers.get("ce-id").map(|v| v.as_str().to_owned())
                == Some(format!("{order_id}-cancelled"))
        {
            cancelled_events += 1;
        }
    }
    assert_eq!(cancelled_events, 1, "one cancel, one event");
    // The reservation was released once: the stock is not given back twice.
    let stock = call(&client, "inventory.stock", json!({"sku": "gizmo"})).await?;
    assert_eq!(
        (stock["available"].clone(), stock["reserved"].clone()),
        (json!(5), json!(0))
    );
    Ok(())
}
