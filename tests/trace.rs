//! A trace id set by the caller shows up in the handler's span, across a
//! hop through a second service. (Own test binary: it installs a global
//! tracing subscriber.)

use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::client::{CallOptions, Client};
use switchboard::service::{Context, Endpoint, Service};
use switchboard::testing::TestServer;
use switchboard::trace_context::TraceContext;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Records `(endpoint, trace_id)` of every `request` span.
#[derive(Clone, Default)]
struct RequestSpans(Arc<Mutex<Vec<(String, String)>>>);

struct Fields {
    endpoint: String,
    trace_id: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "endpoint" => self.endpoint = format!("{value:?}"),
            "trace_id" => self.trace_id = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for RequestSpans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: LayerContext<'_, S>) {
        if attrs.metadata().name() != "request" {
            return;
        }
        let mut fields = Fields {
            endpoint: String::new(),
            trace_id: String::new(),
        };
        attrs.record(&mut fields);
        if let Ok(mut all) = self.0.lock() {
            all.push((fields.endpoint, fields.trace_id));
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct Nothing {}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct SeenTrace {
    trace_id: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn the_callers_trace_id_reaches_every_handler_span() -> TestResult {
    let spans = RequestSpans::default();
    tracing::subscriber::set_global_default(Registry::default().with(spans.clone()))?;

    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let _back = Service::builder("back", "1.0.0")
        .endpoint(Endpoint::new(
            "seen",
            |ctx: Context, _: Nothing| async move {
                Ok::<_, ServiceError>(SeenTrace {
                    trace_id: ctx.trace().trace_id(),
                })
            },
        ))
        .start(nats.clone())
        .await?;
    let _front = Service::builder("front", "1.0.0")
        .endpoint(Endpoint::new(
            "relay",
            |ctx: Context, _: Nothing| async move {
                let seen: SeenTrace = ctx.call("back.seen", &Nothing {}).await?;
                Ok::<_, ServiceError>(seen)
            },
        ))
        .start(nats.clone())
        .await?;

    let caller = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .ok_or("bad traceparent")?;
    let seen: SeenTrace = Client::new(nats)
        .call_with(
            "front.relay",
            &Nothing {},
            CallOptions::default().trace(caller),
        )
        .await?;
    assert_eq!(seen.trace_id, caller.trace_id());

    let recorded = spans.0.lock().map(|s| s.clone()).unwrap_or_default();
    for endpoint in ["relay", "seen"] {
        assert!(
            recorded
                .iter()
                .any(|(e, t)| e == endpoint && *t == caller.trace_id()),
            "no {endpoint} span with the caller's trace id in {recorded:?}"
        );
    }
    Ok(())
}
