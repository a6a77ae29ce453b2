//! Receiving spans: OTLP/HTTP export requests decoded with the protocol's
//! own message types (`opentelemetry-proto`), and a bounded store of recent
//! spans by trace. The dashboard collects `switchboard up --traces` with it;
//! the test harness's receiver checks what processes really exported.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde::Serialize;

/// The path OTLP/HTTP exporters post traces to.
pub const TRACES_PATH: &str = "/v1/traces";
/// The content type of an OTLP/HTTP protobuf body.
pub const PROTOBUF: &str = "application/x-protobuf";

/// One span as a process exported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The parent's span id (`None` for a root span).
    pub parent_span_id: Option<String>,
    /// The span's name.
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: &'static str,
    /// Attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// The names of the span's events (`retry`, `dead_letter`, …).
    pub events: Vec<String>,
    /// Whether the span's status is an error.
    pub error: bool,
    /// Start, nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
}

impl ReceivedSpan {
    /// An attribute's value as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// Decodes an export request's body.
///
/// # Errors
///
/// The body is not an `ExportTraceServiceRequest`.
pub fn decode(body: &[u8]) -> Result<Vec<ReceivedSpan>, prost::DecodeError> {
    Ok(spans(ExportTraceServiceRequest::decode(body)?))
}

/// The body of a successful export's answer.
pub fn accepted() -> Vec<u8> {
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// The most recent spans (a bounded number), for looking up a trace.
#[derive(Debug)]
pub struct SpanStore {
    capacity: usize,
    spans: Mutex<VecDeque<ReceivedSpan>>,
}

impl SpanStore {
    /// Keeps the last `capacity` spans.
    pub fn new(capacity: usize) -> Self {
        SpanStore {
            capacity,
            spans: Mutex::new(VecDeque::new()),
        }
    }

    /// Adds spans, forgetting the oldest beyond the capacity.
    pub fn extend(&self, new: Vec<ReceivedSpan>) {
        if let Ok(mut spans) = self.spans.lock() {
            spans.extend(new);
            let excess = spans.len().saturating_sub(self.capacity);
            spans.drain(..excess);
        }
    }

    /// How many spans are kept.
    pub fn len(&self) -> usize {
        self.spans
            .lock()
            .map(|spans| spans.len())
            .unwrap_or_default()
    }

    /// Whether no span is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every span kept, oldest first.
    pub fn all(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .map(|spans| spans.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The spans of one trace (32 hex digits), by start time.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let mut found: Vec<ReceivedSpan> = self
            .spans
            .lock()
            .map(|spans| {
                spans
                    .iter()
                    .filter(|s| s.trace_id.eq_ignore_ascii_case(trace_id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        found.sort_by_key(|s| s.start_unix_nanos);
        found
    }
}

fn spans(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let kind = match SpanKind::try_from(span.kind) {
                    Ok(SpanKind::Server) => "server",
                    Ok(SpanKind::Client) => "client",
                    Ok(SpanKind::Producer) => "producer",
                    Ok(SpanKind::Consumer) => "consumer",
                    _ => "internal",
                };
                out.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    kind,
                    attributes: attributes(&span.attributes),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                    // STATUS_CODE_ERROR = 2.
                    error: span.status.is_some_and(|s| s.code == 2),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: &str, start: u64) -> ReceivedSpan {
        ReceivedSpan {
            service: "s".into(),
            trace_id: trace.into(),
            span_id: format!("{start:016x}"),
            parent_span_id: None,
            name: "n".into(),
            kind: "internal",
            attributes: BTreeMap::new(),
            events: Vec::new(),
            error: false,
            start_unix_nanos: start,
            end_unix_nanos: start + 1,
        }
    }

    #[test]
    fn the_store_keeps_the_newest_and_finds_a_trace_in_order() {
        let store = SpanStore::new(3);
        store.extend(vec![span("a", 5), span("b", 1), span("a", 3)]);
        store.extend(vec![span("a", 4)]);
        let starts: Vec<u64> = store
            .trace("A")
            .iter()
            .map(|s| s.start_unix_nanos)
            .collect();
        assert_eq!(starts, [3, 4]);
        assert_eq!(store.all().len(), 3);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"\xff\xff not protobuf").is_err());
    }
}
