//! Events as handlers see them: typed data plus CloudEvents attributes.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::EventError;
use super::envelope::{self, EventAttributes};
use crate::codec;
use crate::limits::MAX_HEADER_VALUE;
use crate::trace_context::TraceContext;

/// An event about to be published.
///
/// ```
/// use switchboard::events::Event;
///
/// #[derive(serde::Serialize)]
/// struct OrderCreated { order_id: String }
///
/// // The id derived from the order makes a retried publish a duplicate.
/// let event = Event::new(OrderCreated { order_id: "o-1".into() })
///     .id("order-o-1-created")
///     .subject("o-1");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Event<T> {
    pub(crate) id: String,
    pub(crate) event_type: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) trace: Option<TraceContext>,
    pub(crate) data: T,
}

impl<T: Serialize> Event<T> {
    /// A new event with a fresh unique id and the current time.
    pub fn new(data: T) -> Self {
        Event {
            id: nuid::next().to_string(),
            event_type: None,
            subject: None,
            trace: None,
            data,
        }
    }
    /// Sets the id; the same id makes JetStream drop a re-publish.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
    /// Sets `ce-type` (default: the NATS subject without `events.`).
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }
    /// Sets `ce-subject`: what the event is about.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
    /// Continues a trace (e.g. the request that caused the event).
    pub fn trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }
    /// The event id.
    pub fn event_id(&self) -> &str {
        &self.id
    }
    /// What keyed consumers order by: `ce-subject`, or the id without one.
    pub fn key(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.id)
    }

    /// Headers and body in CloudEvents binary mode, stamped now.
    pub(crate) fn encode(
        &self,
        source: &str,
        nats_subject: &str,
    ) -> Result<(async_nats::HeaderMap, bytes::Bytes), EventError> {
        crate::limits::check_subject(nats_subject).map_err(|e| EventError::InvalidSubject {
            subject: e.preview.clone(),
            reason: e.to_string(),
        })?;
        let attributes = EventAttributes {
            id: self.id.clone(),
            source: source.to_owned(),
            event_type: self
                .event_type
                .clone()
                .unwrap_or_else(|| type_for(nats_subject)),
            time: super::now_rfc3339(),
            subject: self.subject.clone(),
        };
        for (name, value) in [
            (envelope::CE_ID, Some(&attributes.id)),
            (envelope::CE_SOURCE, Some(&attributes.source)),
            (envelope::CE_TYPE, Some(&attributes.event_type)),
            (envelope::CE_SUBJECT, attributes.subject.as_ref()),
        ] {
            // A line break would end the header; a long value costs every
            // reader (and JetStream keeps each id of the duplicate window).
            if let Some(value) = value
                .filter(|v| v.contains(['\r', '\n']) || v.len() > MAX_HEADER_VALUE || v.is_empty())
            {
                return Err(EventError::InvalidAttribute {
                    name,
                    value: crate::limits::preview(value),
                    reason: if value.len() > MAX_HEADER_VALUE {
                        "too long"
                    } else if value.is_empty() {
                        "empty"
                    } else {
                        "not one line"
                    },
                });
            }
        }
        let payload = codec::encode(&self.data)?;
        Ok((
            envelope::event_headers(&attributes, self.trace.as_ref()),
            payload,
        ))
    }
}

/// Where a received event came from in JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Stream name.
    pub stream: String,
    /// Consumer name.
    pub consumer: String,
    /// Position in the stream.
    pub stream_sequence: u64,
    /// Which delivery this is (1 = first).
    pub delivered: u64,
}

/// An event as a consumer receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent<T> {
    /// CloudEvents attributes.
    pub attributes: EventAttributes,
    /// The NATS subject it was published on.
    pub nats_subject: String,
    /// The typed data.
    pub data: T,
    /// The trace it belongs to, if the publisher sent one.
    pub trace: Option<TraceContext>,
    /// JetStream delivery details (absent for core pub-sub signals).
    pub delivery: Option<Delivery>,
}

impl<T: DeserializeOwned> ReceivedEvent<T> {
    /// Decodes a NATS message.
    ///
    /// # Errors
    ///
    /// [`EventError::Envelope`] or [`EventError::Payload`] for a message that
    /// is not a CloudEvent of this type.
    pub fn decode(message: &async_nats::Message) -> Result<Self, EventError> {
        let attributes = envelope::read_event_attributes(message.headers.as_ref())?;
        let data = codec::decode_response(&message.payload)?;
        Ok(ReceivedEvent {
            attributes,
            nats_subject: message.subject.as_str().to_owned(),
            data,
            trace: codec::read_trace(message.headers.as_ref()),
            delivery: None,
        })
    }
}

/// `ce-type` for a subject: `events.invoices.created` → `invoices.created`.
pub(crate) fn type_for(subject: &str) -> String {
    subject
        .strip_prefix("events.")
        .unwrap_or(subject)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_break_in_an_attribute_is_an_error_not_a_panic() {
        let event = Event::new(serde_json::json!({})).subject("o-1\r\nce-type: forged");
        match event.encode("invoices", "events.invoices.created") {
            Err(EventError::InvalidAttribute { name, .. }) => {
                assert_eq!(name, envelope::CE_SUBJECT)
            }
            other => panic!("expected InvalidAttribute, got {other:?}"),
        }
        let event = Event::new(serde_json::json!({})).id("a\nb");
        assert!(matches!(
            event.encode("invoices", "events.invoices.created"),
            Err(EventError::InvalidAttribute { name: "ce-id", .. })
        ));
        let long = Event::new(serde_json::json!({})).id("o".repeat(5000));
        match long.encode("invoices", "events.invoices.created") {
            Err(EventError::InvalidAttribute { name, value, .. }) => {
                assert_eq!(name, envelope::CE_ID);
                assert!(
                    value.len() < 100,
                    "the error quotes a preview, not the value"
                );
            }
            other => panic!("expected InvalidAttribute, got {other:?}"),
        }
        let long_subject = format!("events.invoices.{}", "x".repeat(5000));
        assert!(matches!(
            Event::new(serde_json::json!({})).encode("invoices", &long_subject),
            Err(EventError::InvalidSubject { .. })
        ));
        let fine = Event::new(serde_json::json!({})).subject("o-1");
        assert!(fine.encode("invoices", "events.invoices.created").is_ok());
    }
}
