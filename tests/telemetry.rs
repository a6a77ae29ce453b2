//! OpenTelemetry export end to end: the real system under `switchboard up`
//! exporting to a real OTLP/HTTP receiver (the harness's), one HTTP
//! request followed through every process it touches.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use switchboard::events::{Event, Publisher};
use switchboard::testing::{OtlpReceiver, ReceivedSpan};
use switchboard::trace_context::TraceContext;

use common::{admin, eventually, start_system_on_free_ports, user_and_stock};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A receiver, and the system under `up` exporting to it (every 100 ms
/// rather than every 5 s).
async fn exporting_system(
    dir: &std::path::Path,
) -> Result<(OtlpReceiver, common::System), Box<dyn std::error::Error>> {
    let receiver = OtlpReceiver::start().await?;
    let endpoint = receiver.endpoint();
    let system = start_system_on_free_ports(
        dir,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        &[],
    );
    Ok((receiver, system))
}

/// `POST /orders` of two widgets through the gateway.
async fn place_order(
    http: &common::Http,
    user_id: &str,
) -> Result<(u16, hyper::HeaderMap, serde_json::Value), Box<dyn std::error::Error>> {
    let order = json!({"user_id": user_id, "items": [{"sku": "widget", "quantity": 2}]});
    http.send("POST", "/orders", Some(order)).await
}

/// The spans of one trace, by span id.
struct Trace(BTreeMap<String, ReceivedSpan>);

impl Trace {
    /// The spans of `trace_id` the receiver has so far.
    fn of(receiver: &OtlpReceiver, trace_id: &str) -> Trace {
        Trace(
            receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .map(|s| (s.span_id.clone(), s))
                .collect(),
        )
    }

    fn find(&self, service: &str, kind: &str, name: &str) -> Result<&ReceivedSpan, String> {
        self.0
            .values()
            .find(|s| s.service == service && s.kind == kind && s.name == name)
            .ok_or_else(|| format!("no {kind} span {name:?} of {service}; spans: {self}"))
    }

    fn parent(&self, span: &ReceivedSpan) -> Option<&ReceivedSpan> {
        self.0.get(span.parent_span_id.as_deref()?)
    }

    /// `child`'s parent is `parent`.
    fn assert_parent(&self, child: &ReceivedSpan, parent: &ReceivedSpan) {
        assert_eq!(
            child.parent_span_id.as_deref(),
            Some(parent.span_id.as_str()),
            "{} {} ({}) should be the child of {} {} ({}); spans: {self}",
            child.service,
            child.name,
            child.kind,
            parent.service,
            parent.name,
            parent.kind,
        );
    }
}

impl std::fmt::Display for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for span in self.0.values() {
            let parent = self
                .parent(span)
                .map(|p| format!("{}:{}", p.service, p.name))
                .unwrap_or_else(|| "-".to_owned());
            write!(
                f,
                "\n  {}:{} ({}) <- {parent}",
                span.service, span.name, span.kind
            )?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_gateway_request_that_creates_an_order_is_one_trace_across_five_services() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let (receiver, system) = exporting_system(dir.path()).await?;
    let user_id = user_and_stock(&admin(dir.path()).await?, "ann@example.com", "widget", 5).await?;

    let (status, headers, order) = place_order(&system.http, &user_id).await?;
    assert_eq!(status, 201, "{order}");
    let returned = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
        .ok_or("the response carries no traceparent")?;
    let trace_id = returned.trace_id();

    // Every process exports on its own schedule: wait for every hop.
    let expected = [
        ("gateway", "server", "POST /orders"),
        ("gateway", "client", "orders.create"),
        ("orders", "server", "orders.create"),
        ("orders", "client", "users.get"),
        ("users", "server", "users.get"),
        ("orders", "client", "inventory.reserve"),
        ("inventory", "server", "inventory.reserve"),
        ("orders", "producer", "publish events.orders.created"),
        ("notifications", "consumer", "process events.orders.created"),
    ];
    let complete = eventually(Duration::from_secs(20), || {
        let trace = Trace::of(&receiver, &trace_id);
        expected
            .iter()
            .all(|(service, kind, name)| trace.find(service, kind, name).is_ok())
    });
    let trace = Trace::of(&receiver, &trace_id);
    assert!(complete, "not every hop reported its span; spans: {trace}");
    println!("the trace:{trace}");
    // The line the tests of the off cases look for, so their check can fail.
    assert!(
        system
            .up
            .output()
            .contains("exporting OpenTelemetry traces"),
        "the services say they export"
    );
    let services: BTreeSet<&str> = trace.0.values().map(|s| s.service.as_str()).collect();
    for service in ["gateway", "orders", "users", "inventory", "notifications"] {
        assert!(services.contains(service), "no span of {service}: {trace}");
    }

    // gateway: the HTTP request is the root; the span id is the one the
    // response's traceparent names.
    let http = trace.find("gateway", "server", "POST /orders")?;
    assert_eq!(http.parent_span_id, None, "the request is the trace's root");
    assert_eq!(http.span_id, returned.span_id());
    assert_eq!(http.attribute("http.request.method"), Some("POST"));
    assert_eq!(http.attribute("http.route"), Some("/orders"));
    assert_eq!(http.attribute("http.response.status_code"), Some("201"));

    // gateway → orders.create
    let call_orders = trace.find("gateway", "client", "orders.create")?;
    trace.assert_parent(call_orders, http);
    assert_eq!(call_orders.attribute("rpc.system"), Some("nats"));
    let create = trace.find("orders", "server", "orders.create")?;
    trace.assert_parent(create, call_orders);
    assert_eq!(create.attribute("rpc.service"), Some("orders"));
    assert_eq!(create.attribute("rpc.method"), Some("create"));

    // orders.create → users.get, inventory.reserve
    for (service, subject) in [("users", "users.get"), ("inventory", "inventory.reserve")] {
        let call = trace.find("orders", "client", subject)?;
        trace.assert_parent(call, create);
        let served = trace.find(service, "server", subject)?;
        trace.assert_parent(served, call);
        assert!(!served.error, "{subject} succeeded");
    }

    // orders.create → (outbox relay) publish → notifications' handling
    let consumed = trace
        .0
        .values()
        .find(|s| s.service == "notifications" && s.kind == "consumer")
        .ok_or("no consumer span")?;
    assert_eq!(consumed.name, "process events.orders.created");
    assert_eq!(
        consumed.attribute("messaging.consumer.group.name"),
        Some("notifications-orders")
    );
    let published = trace
        .parent(consumed)
        .ok_or_else(|| format!("the consumer span has no parent in the trace: {trace}"))?;
    assert_eq!(
        (
            published.service.as_str(),
            published.kind,
            published.name.as_str()
        ),
        ("orders", "producer", "publish events.orders.created")
    );
    trace.assert_parent(published, create);
    assert_eq!(published.attribute("messaging.system"), Some("nats"));
    assert_eq!(
        published.attribute("messaging.message.id"),
        consumed.attribute("messaging.message.id"),
        "the same event"
    );
    Ok(())
}

/// Runs the order flow on a system started with `env`; returns `up`'s
/// output once the flow is done and any export would have happened.
async fn order_flow_with(env: &[(&str, &str)]) -> Result<String, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut system = start_system_on_free_ports(dir.path(), env, &[]);
    let user_id = user_and_stock(&admin(dir.path()).await?, "ann@example.com", "widget", 5).await?;
    let (status, _, order) = place_order(&system.http, &user_id).await?;
    assert_eq!(status, 201, "{order}");
    // Longer than many export intervals (100 ms when on).
    tokio::time::sleep(Duration::from_secs(2)).await;
    system.up.signal(common::Signal::SIGTERM);
    system.up.wait_exit(Duration::from_secs(30));
    Ok(system.up.output())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_variables_unset_or_export_turned_off_nothing_is_sent() -> TestResult {
    // Unset: a receiver where an exporter would send by default
    // (localhost:4318) gets nothing. The port may be taken on a developer's
    // machine (a collector running): then that half is skipped.
    let default: std::net::SocketAddr = "127.0.0.1:4318".parse()?;
    match OtlpReceiver::start_at(default).await {
        Ok(receiver) => {
            let output = order_flow_with(&[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await?;
            assert_eq!(
                receiver.requests(),
                0,
                "nothing may be sent with the variables unset"
            );
            assert!(
                !output.contains("exporting OpenTelemetry traces"),
                "no exporter started"
            );
        }
        Err(e) => eprintln!("skipped the unset case: {default} is taken ({e})"),
    }
    // An endpoint, but the standard off switch.
    let receiver = OtlpReceiver::start().await?;
    let endpoint = receiver.endpoint();
    let output = order_flow_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await?;
    assert_eq!(receiver.requests(), 0, "nothing may reach the receiver");
    assert!(
        !output.contains("exporting OpenTelemetry traces"),
        "no exporter started"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_and_its_replay_stay_in_the_events_trace() -> TestResult {
    // `up` itself inherits the variables: the dashboard's replay is a span too.
    let dir = tempfile::tempdir()?;
    let (receiver, system) = exporting_system(dir.path()).await?;
    // A poison event (notifications cannot decode it) in a trace of ours.
    let root = TraceContext::new_root();
    let client = admin(dir.path()).await?;
    let js = async_nats::jetstream::new(client.nats().clone());
    Publisher::new(js.clone(), "telemetry-test")
        .publish(
            "events.users.created",
            &Event::new(json!({"not": "a user"}))
                .id("poison-1")
                .trace(root),
        )
        .await?;
    let of_trace = || Trace::of(&receiver, &root.trace_id());
    let dead_lettered = eventually(Duration::from_secs(20), || {
        of_trace()
            .0
            .values()
            .any(|s| s.name == "dead_letter dlq.USERS.notifications-users")
    });
    let trace = of_trace();
    assert!(dead_lettered, "no dead-letter span: {trace}");
    let failed = trace.find("notifications", "consumer", "process events.users.created")?;
    assert_eq!(
        failed.parent_span_id,
        Some(root.span_id()),
        "the publish we made is its parent"
    );
    assert!(failed.error, "the failed handling is an error span");
    assert!(
        failed.events.iter().any(|e| e == "dead_letter"),
        "{:?}",
        failed.events
    );
    let stored = trace.find(
        "notifications",
        "producer",
        "dead_letter dlq.USERS.notifications-users",
    )?;
    trace.assert_parent(stored, failed);

    // Replayed from the dashboard (in `up`): a span of `up`, the dead
    // letter's child, and the event handled again as the replay's child.
    let dashboard = system
        .up
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("dashboard: http://"))
        .and_then(|rest| rest.split('/').next())
        .ok_or("no dashboard address")?
        .to_owned();
    let letters: Vec<switchboard::events::DeadLetter> = switchboard::events::DeadLetters::open(&js)
        .await?
        .list()
        .await?;
    let id = letters.first().ok_or("no dead letter")?.id;
    let http = common::Http { addr: dashboard };
    let path = format!("/api/dlq/{id}/replay");
    let (status, _, body) = http
        .send_raw(
            "POST",
            &path,
            &[("x-switchboard-dashboard", "1")],
            hyper::body::Bytes::new(),
        )
        .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // Both from different processes, each exporting on its own schedule.
    let replayed = eventually(Duration::from_secs(20), || {
        let trace = of_trace();
        let spans = || trace.0.values();
        spans().any(|s| s.service == "switchboard" && s.kind == "producer")
            && spans()
                .filter(|s| s.kind == "consumer" && s.name == "process events.users.created")
                .count()
                >= 2
    });
    let trace = of_trace();
    assert!(
        replayed,
        "the replayed event was not handled in the trace: {trace}"
    );
    let replay = trace.find("switchboard", "producer", "replay events.users.created")?;
    trace.assert_parent(replay, stored);
    let again = trace
        .0
        .values()
        .find(|s| {
            s.kind == "consumer" && s.parent_span_id.as_deref() == Some(replay.span_id.as_str())
        })
        .ok_or_else(|| format!("no handling of the replay: {trace}"))?;
    assert_eq!(again.service, "notifications");
    Ok(())
}
