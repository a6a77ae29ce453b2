//! `switchboard ls|info|stats|call` against a real server and service.

mod common;

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::service::{Context, Endpoint, RunningService, Service};
use switchboard::testing::TestServer;

use common::Switchboard;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Get {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Item {
    id: u64,
}

async fn start(server: &TestServer) -> Result<RunningService, Box<dyn std::error::Error>> {
    Ok(Service::builder("items", "2.0.0")
        .description("Items for CLI tests")
        .endpoint(
            Endpoint::new("get", |_ctx: Context, req: Get| async move {
                if req.id == 0 {
                    return Err(ServiceError::not_found("no item 0"));
                }
                Ok(Item { id: req.id })
            })
            .description("Look up an item"),
        )
        .start(server.client().await?)
        .await?)
}

/// Runs the CLI to completion: (exit success, stdout and stderr).
fn cli(server: &TestServer, args: &[&str]) -> (bool, String) {
    let (ok, _, all) = cli_streams(server, args);
    (ok, all)
}

/// (exit success, stdout alone, stdout and stderr).
fn cli_streams(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let env = vec![
        ("NATS_URL".to_owned(), server.url()),
        (
            "XDG_CONFIG_HOME".to_owned(),
            home.path().display().to_string(),
        ),
    ];
    let mut run = Switchboard::spawn(args, &env);
    let status = run.wait_exit(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(50));
    (
        status.is_some_and(|s| s.success()),
        run.stdout(),
        run.output(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn ls_info_and_stats_show_every_instance() -> TestResult {
    let server = TestServer::start().await?;
    let first = start(&server).await?;
    let second = start(&server).await?;

    let (ok, out, _) = cli_streams(&server, &["ls", "--json"]);
    assert!(ok, "{out}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    let mut ids: Vec<&str> = listed.iter().filter_map(|s| s["id"].as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![first.id(), second.id()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "both instances listed");

    let (ok, out) = cli(&server, &["ls"]);
    assert!(
        ok && out.contains("items") && out.contains("2.0.0") && out.contains(first.id()),
        "{out}"
    );

    let (ok, out) = cli(&server, &["info", "items"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("items.get") && out.contains("Look up an item"),
        "{out}"
    );

    let (ok, out) = cli(&server, &["call", "items.get", r#"{"id":5}"#]);
    assert!(ok, "{out}");
    assert!(out.contains("\"id\": 5"), "{out}");

    let (ok, out, _) = cli_streams(&server, &["stats", "items", "--json"]);
    assert!(ok, "{out}");
    let stats: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    let requests: u64 = stats
        .iter()
        .filter_map(|s| s["endpoints"][0]["num_requests"].as_u64())
        .sum();
    assert_eq!(requests, 1);

    // For people: no log lines unless asked, human units, no raw schemas.
    for args in [
        &["ls"][..],
        &["info", "items"],
        &["stats", "items"],
        &["call", "items.get", r#"{"id":5}"#],
    ] {
        let (ok, all) = cli(&server, args);
        assert!(ok, "{args:?}: {all}");
        assert!(
            !all.contains(" INFO ") && !all.contains("connected"),
            "{args:?} printed log lines:\n{all}"
        );
    }
    let _never_called = start(&server).await?;
    let (_, out) = cli(&server, &["stats", "items"]);
    assert!(out.contains('—'), "an instance never called shows —: {out}");
    assert!(!out.contains("ns "), "{out}");
    let (_, out) = cli(&server, &["info", "items"]);
    assert!(
        !out.contains("\"$schema\""),
        "no raw schema without --schemas: {out}"
    );
    let (_, out) = cli(&server, &["info", "items", "--schemas"]);
    assert!(out.contains("request_schema"), "{out}");
    let (_, all) = cli(&server, &["-v", "ls"]);
    assert!(all.contains("INFO"), "-v shows the log: {all}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn call_reports_errors_with_a_failing_exit_code() -> TestResult {
    let server = TestServer::start().await?;
    let _service = start(&server).await?;

    let (ok, out) = cli(&server, &["call", "items.get", r#"{"id":0}"#]);
    assert!(!ok);
    assert!(out.contains("404") && out.contains("no item 0"), "{out}");

    let (ok, out) = cli(&server, &["call", "items.get", "{not json"]);
    assert!(!ok);
    assert!(out.contains("not JSON"), "{out}");

    let (ok, out) = cli(&server, &["call", "nothing.here", "{}"]);
    assert!(!ok);
    assert!(out.contains("no service is listening"), "{out}");
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shipped {
    parcel: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_commands_list_show_replay_and_purge() -> TestResult {
    use switchboard::events::{
        self, ConsumerSpec, Event, HandlerError, Publisher, ReceivedEvent, StreamSpec,
    };
    let server = TestServer::start().await?;
    let js = async_nats::jetstream::new(server.client().await?);
    StreamSpec::new("SHIPPING", ["events.shipping.>"])
        .ensure(&js)
        .await?;
    let publisher = Publisher::new(js.clone(), "shipping");
    for parcel in ["p-1", "p-2"] {
        let event = Event::new(Shipped {
            parcel: parcel.into(),
        })
        .id(format!("{parcel}-shipped"));
        publisher.publish("events.shipping.shipped", &event).await?;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(events::consumer::run(
        js.clone(),
        ConsumerSpec::new("SHIPPING", "refuser"),
        |_event: ReceivedEvent<Shipped>| async { Err(HandlerError::permanent("address unknown")) },
        stop.clone().cancelled_owned(),
    ));
    let dlq = events::DeadLetters::open(&js).await?;
    for _ in 0..100 {
        if dlq.list().await?.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    consumer.await??;

    let (ok, out, _) = cli_streams(&server, &["dlq", "ls", "--json"]);
    assert!(ok, "{out}");
    let letters: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["error"], "address unknown");
    let id = letters[0]["id"].as_u64().ok_or("no id")?.to_string();
    let payload = letters[0]["payload"]
        .as_str()
        .ok_or("no payload")?
        .to_owned();

    let (ok, out) = cli(&server, &["dlq", "ls"]);
    assert!(
        ok && out.contains("events.shipping.shipped") && out.contains("refuser"),
        "{out}"
    );
    let (ok, out) = cli(&server, &["dlq", "show", &id]);
    assert!(
        ok && out.contains(&serde_json::to_string(&payload)?) && out.contains("ce-id"),
        "{out}"
    );
    let (ok, out) = cli(&server, &["dlq", "replay", &id]);
    assert!(ok && out.contains(&format!("replayed {id}")), "{out}");
    let (ok, out) = cli(&server, &["dlq", "show", &id]);
    assert!(
        !ok && out.contains(&format!("no dead letter {id}")),
        "{out}"
    );
    let (ok, out) = cli(&server, &["dlq", "purge"]);
    assert!(ok && out.contains("purged 1"), "{out}");
    assert!(dlq.list().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_events_with_their_attributes() -> TestResult {
    use switchboard::events::{Event, Publisher, StreamSpec};
    let server = TestServer::start().await?;
    let js = async_nats::jetstream::new(server.client().await?);
    StreamSpec::new("SHIPPING", ["events.shipping.>"])
        .ensure(&js)
        .await?;
    let home = tempfile::tempdir()?;
    let env = vec![
        ("NATS_URL".to_owned(), server.url()),
        (
            "XDG_CONFIG_HOME".to_owned(),
            home.path().display().to_string(),
        ),
    ];
    let mut tail = Switchboard::spawn(&["tail", "events.shipping.>"], &env);
    tail.wait_for("tailing events.shipping.>", Duration::from_secs(20));
    let event = Event::new(Shipped {
        parcel: "p-9".into(),
    })
    .id("p-9-shipped")
    .subject("p-9");
    Publisher::new(js, "shipping")
        .publish("events.shipping.shipped", &event)
        .await?;
    tail.wait_for(
        "type=shipping.shipped source=shipping id=p-9-shipped subject=p-9",
        Duration::from_secs(10),
    );
    tail.wait_for(r#"{"parcel":"p-9"}"#, Duration::from_secs(5));
    Ok(())
}
