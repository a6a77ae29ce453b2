//! OpenTelemetry export end to end: the real system under `switchboard up`
//! exporting to a real OTLP/HTTP receiver (the harness's), one HTTP
//! request followed through every process it touches.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use switchboard::testing::{OtlpReceiver, ReceivedSpan, free_port};
use switchboard::trace_context::TraceContext;

use common::{admin, eventually, start_system_with_env};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A user and stock of `sku`, made by the operator (outside the trace).
async fn user_and_stock(
    dir: &std::path::Path,
    sku: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let client = admin(dir).await?;
    let user: serde_json::Value = client
        .call(
            "users.create",
            &json!({"name": "Ann", "email": "ann@example.com"}),
        )
        .await?;
    let _: serde_json::Value = client
        .call("inventory.restock", &json!({"sku": sku, "quantity": 5}))
        .await?;
    Ok(user["id"].as_str().ok_or("no user id")?.to_owned())
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
    let receiver = OtlpReceiver::start().await?;
    let dir = tempfile::tempdir()?;
    let (port, http_port) = (free_port()?, free_port()?);
    let endpoint = receiver.endpoint();
    let system = start_system_with_env(
        dir.path(),
        port,
        http_port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Export within 100 ms rather than 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let user_id = user_and_stock(dir.path(), "widget").await?;

    let (status, headers, order) = place_order(&system.http, &user_id).await?;
    assert_eq!(status, 201, "{order}");
    let returned = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
        .ok_or("the response carries no traceparent")?;
    let trace_id = returned.trace_id();

    let of_trace = || -> Trace {
        Trace(
            receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .map(|s| (s.span_id.clone(), s))
                .collect(),
        )
    };
    // The last hop: notifications handling the order's event.
    let complete = eventually(Duration::from_secs(20), || {
        of_trace()
            .0
            .values()
            .any(|s| s.service == "notifications" && s.kind == "consumer")
    });
    let trace = of_trace();
    assert!(
        complete,
        "notifications never reported its span; spans: {trace}"
    );

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
    let (port, http_port) = (free_port()?, free_port()?);
    let mut system = start_system_with_env(dir.path(), port, http_port, env);
    let user_id = user_and_stock(dir.path(), "widget").await?;
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
