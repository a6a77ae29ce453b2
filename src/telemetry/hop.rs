//! One hop of a trace: the span a call, a handler, a publish or an event's
//! handling makes, and the trace context the next hop continues.
//!
//! Names, kinds and attributes follow OpenTelemetry's semantic conventions:
//! RPC for request-reply (`rpc.system = nats`, `rpc.service`,
//! `rpc.method`; the span's name is the subject), messaging for events (`messaging.system = nats`,
//! `messaging.operation.type` `send`/`process`, `messaging.destination.name`,
//! `messaging.message.id`, `messaging.consumer.group.name`) and HTTP for the
//! front end. A consumer's span is the child of the publish that stored the
//! event, so a request and everything it set off is one trace.
//!
//! When spans are not exported ([`exporting`](super::exporting) is false)
//! no span is made for OpenTelemetry: a hop only takes a new span id, and
//! handlers keep the plain log span that puts the trace id on their lines.

use std::borrow::Cow;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Status, TraceContextExt};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::events::partition::declared_subject;
use crate::trace_context::TraceContext;

/// A span of ours and the context the next hop continues.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The span (disabled when nothing is exported and nothing is logged
    /// in it).
    pub span: Span,
    /// This hop's trace context: sent on as `traceparent`, so the next
    /// hop's span is this span's child.
    pub trace: TraceContext,
}

impl Hop {
    /// A call to `subject` (span kind client), child of `parent`, else of
    /// the current span, else a new trace.
    pub fn client(subject: &str, parent: Option<TraceContext>) -> Hop {
        if !super::exporting() {
            return Hop::unexported(parent, Span::none());
        }
        let (service, method) = split(subject);
        let span = tracing::info_span!(
            "call",
            otel.name = %subject,
            otel.kind = "client",
            rpc.system = "nats",
            rpc.service = %service,
            rpc.method = %method,
        );
        Hop::start(span, parent)
    }

    /// Handling a request to `service`'s `endpoint` on `subject` (span kind
    /// server), child of the caller's span.
    pub fn server(
        service: &str,
        endpoint: &str,
        subject: &str,
        parent: Option<TraceContext>,
    ) -> Hop {
        if !super::exporting() {
            let trace = next(parent);
            let span = tracing::info_span!(
                "request",
                service = %service,
                endpoint = %endpoint,
                trace_id = %trace.trace_id(),
                span_id = %trace.span_id(),
            );
            return Hop { span, trace };
        }
        let span = tracing::info_span!(
            "request",
            otel.name = %subject,
            otel.kind = "server",
            rpc.system = "nats",
            rpc.service = %service,
            rpc.method = %endpoint,
            trace_id = Empty,
        );
        Hop::start(span, parent)
    }

    /// An HTTP request (span kind server) to `route` (the matched
    /// template, `None` when none matched), child of the client's
    /// `traceparent` if it sent one.
    pub fn http_server(
        method: &str,
        route: Option<&str>,
        path: &str,
        parent: Option<TraceContext>,
    ) -> Hop {
        if !super::exporting() {
            return Hop::unexported(parent, Span::none());
        }
        // `{method} {route}`, or the method alone when no route matched.
        let name = match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        };
        let span = tracing::info_span!(
            "http",
            otel.name = %name,
            otel.kind = "server",
            http.request.method = %method,
            http.route = route,
            url.path = %path,
            url.scheme = "http",
            trace_id = Empty,
        );
        Hop::start(span, parent)
    }

    /// Storing an event on `subject` (span kind producer): `operation` is
    /// `publish`, or `replay` for a dead letter sent back, or `dead_letter`.
    /// Without export the event keeps `parent` as it is (no new span id:
    /// nothing would ever refer to it).
    pub fn producer(
        operation: &'static str,
        subject: &str,
        message_id: &str,
        parent: Option<TraceContext>,
    ) -> Option<Hop> {
        if !super::exporting() {
            return None;
        }
        let span = tracing::info_span!(
            "publish",
            // Named by the declared subject (few names), the shard in
            // the destination attribute.
            otel.name = %format_args!("{operation} {}", declared_subject(subject)),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.operation.name = operation,
            messaging.destination.name = %subject,
            messaging.message.id = %message_id,
        );
        Some(Hop::start(span, parent))
    }

    /// Handling an event from `subject` by the durable `consumer` (span
    /// kind consumer), child of the publish that stored it.
    pub fn consumer(
        subject: &str,
        consumer: &str,
        message_id: &str,
        delivered: u64,
        parent: Option<TraceContext>,
    ) -> Hop {
        if !super::exporting() {
            let span = tracing::info_span!(
                "event",
                consumer = %consumer,
                subject = %subject,
                event_id = %message_id,
                delivered,
                trace_id = parent.map(|t| t.trace_id()).unwrap_or_default(),
            );
            return Hop {
                span,
                trace: parent.unwrap_or_else(TraceContext::new_root),
            };
        }
        let span = tracing::info_span!(
            "event",
            otel.name = %format_args!("process {}", declared_subject(subject)),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %subject,
            messaging.consumer.group.name = %consumer,
            messaging.message.id = %message_id,
            messaging.nats.delivered = delivered,
            trace_id = Empty,
        );
        Hop::start(span, parent)
    }

    /// Marks the span failed: `error_type` is a short class (a status
    /// code, `timeout`, `no_responders`), `message` the description.
    pub fn fail(&self, error_type: &str, message: &str) {
        if self.span.is_disabled() || !super::exporting() {
            return;
        }
        self.span.set_attribute("error.type", error_type.to_owned());
        self.span.set_status(Status::error(message.to_owned()));
    }

    /// Records an attribute (an HTTP status, a sequence number).
    pub fn attribute(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if !self.span.is_disabled() && super::exporting() {
            self.span.set_attribute(key, value);
        }
    }

    /// Records an event on the span (a retry, a dead-lettering).
    pub fn event(&self, name: impl Into<Cow<'static, str>>, attributes: &[(&'static str, String)]) {
        if self.span.is_disabled() || !super::exporting() {
            return;
        }
        let attributes = attributes
            .iter()
            .map(|(key, value)| KeyValue::new(*key, value.clone()))
            .collect();
        self.span.add_event(name, attributes);
    }

    fn unexported(parent: Option<TraceContext>, span: Span) -> Hop {
        Hop {
            span,
            trace: next(parent),
        }
    }

    /// Sets the remote parent, builds the span and reads its context.
    fn start(span: Span, parent: Option<TraceContext>) -> Hop {
        if let Some(parent) = parent {
            let remote =
                opentelemetry::Context::new().with_remote_span_context(parent.to_span_context());
            // Fails only if the span is disabled (filtered out): then the
            // trace goes on without it.
            let _ = span.set_parent(remote);
        }
        let context = span.context();
        let trace = TraceContext::from_span_context(context.span().span_context())
            .unwrap_or_else(|| next(parent));
        if let Some(meta) = span.metadata()
            && meta.fields().field("trace_id").is_some()
        {
            span.record("trace_id", tracing::field::display(trace.trace_id()));
        }
        Hop { span, trace }
    }
}

/// The next span id of `parent`'s trace, or a new trace.
fn next(parent: Option<TraceContext>) -> TraceContext {
    parent.map_or_else(TraceContext::new_root, |p| p.child())
}

/// `invoices.create` → (`invoices`, `create`); a subject of one token is all
/// service.
fn split(subject: &str) -> (&str, &str) {
    subject.split_once('.').unwrap_or((subject, ""))
}
