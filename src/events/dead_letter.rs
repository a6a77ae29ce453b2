//! Dead letters: events no handler could process, kept whole and replayable.
//!
//! Each dead letter in stream `DLQ` (subjects `dlq.<stream>.<consumer>`)
//! keeps the original payload and headers plus where it came from, how often
//! it was delivered and the last error. The id of a dead letter is its
//! sequence in `DLQ`. Replay re-publishes it to its original subject with the
//! same `ce-id` (so downstream idempotency sees the same fact) and removes it.

use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use serde::Serialize;

use super::EventError;
use super::ack::{Published, producer_span};
use super::envelope::{self, DeadLetterInfo};
use super::publisher::Publisher;
use super::stream::StreamSpec;
use crate::trace_context::TraceContext;

/// Name of the dead-letter stream.
pub const DLQ_STREAM: &str = "DLQ";

/// The subject a consumer's dead letters are written to:
/// `dlq.<stream>.<consumer>` (in the [`DLQ_STREAM`]).
pub fn dead_letter_subject(stream: &str, consumer: &str) -> String {
    format!("dlq.{stream}.{consumer}")
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Its id (sequence in the `DLQ` stream).
    pub id: u64,
    /// Where and why it died.
    #[serde(flatten)]
    pub info: DeadLetterInfo,
    /// The original event's headers.
    pub headers: Vec<(String, String)>,
    /// The original payload, as text when it is UTF-8.
    pub payload: String,
    #[serde(skip)]
    raw_payload: Bytes,
}

impl DeadLetter {
    /// The original payload bytes.
    pub fn raw_payload(&self) -> &Bytes {
        &self.raw_payload
    }

    /// The original `ce-id`, if the event had one.
    pub fn event_id(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(envelope::CE_ID))
            .map(|(_, v)| v.as_str())
    }
}

/// The `DLQ` stream.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    stream: Stream,
}

impl DeadLetters {
    /// Opens the `DLQ` stream, creating it when missing (30 days retention).
    ///
    /// # Errors
    ///
    /// JetStream API failures, or a `DLQ` stream that differs.
    pub async fn open(js: &jetstream::Context) -> Result<Self, EventError> {
        let mut spec = StreamSpec::new(DLQ_STREAM, ["dlq.>"]);
        spec.max_age = Duration::from_secs(30 * 24 * 3600);
        // A bad setting stopped the service at start; here it is 1.
        spec.replicas = crate::replication::replicas().unwrap_or(1);
        spec.ensure(js).await?;
        let stream = js
            .get_stream(DLQ_STREAM)
            .await
            .map_err(|e| EventError::js("open DLQ")(e))?;
        Ok(DeadLetters {
            js: js.clone(),
            stream,
        })
    }

    /// Stores a dead event: its facts (`info`), with its original headers
    /// and payload.
    /// `trace`: the failed handling's, which the dead letter's span
    /// continues (and a replay after it).
    pub(crate) async fn put(
        &self,
        info: &DeadLetterInfo,
        original_headers: Option<&async_nats::HeaderMap>,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Result<(), EventError> {
        let mut headers = envelope::dead_letter_headers(original_headers, info);
        let subject = dead_letter_subject(&info.stream, &info.consumer);
        let event_id = envelope::header(Some(&headers), envelope::CE_ID).unwrap_or_default();
        let hop = producer_span("dead_letter", &subject, &event_id, &mut headers, trace);
        let written = async {
            self.js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| EventError::js("write dead letter")(e))?
                .await
                .map_err(|e| EventError::js("write dead letter")(e))
        }
        .await;
        if let (Some(hop), Err(error)) = (&hop, &written) {
            hop.fail(error.kind_name(), &error.to_string());
        }
        written?;
        tracing::warn!(
            stream = %info.stream, consumer = %info.consumer, sequence = info.stream_sequence,
            deliveries = info.deliveries, error = %info.error, "event dead-lettered"
        );
        Ok(())
    }

    /// Every dead letter, oldest first.
    ///
    /// # Errors
    ///
    /// JetStream API failures.
    pub async fn list(&self) -> Result<Vec<DeadLetter>, EventError> {
        let mut stream = self.stream.clone();
        let state = stream
            .info()
            .await
            .map_err(|e| EventError::js("read DLQ")(e))?
            .state
            .clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Ok(out);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            match self.get(sequence).await {
                Ok(letter) => out.push(letter),
                Err(EventError::UnknownDeadLetter(_)) => {} // deleted (replayed)
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// One dead letter.
    ///
    /// # Errors
    ///
    /// [`EventError::UnknownDeadLetter`] when there is none with that id.
    pub async fn get(&self, id: u64) -> Result<DeadLetter, EventError> {
        let message = self
            .stream
            .get_raw_message(id)
            .await
            .map_err(|_| EventError::UnknownDeadLetter(id))?;
        let (info, headers) = envelope::read_dead_letter(&message.headers)?;
        Ok(DeadLetter {
            id,
            info,
            headers,
            payload: String::from_utf8_lossy(&message.payload).into_owned(),
            raw_payload: message.payload,
        })
    }

    /// Re-publishes a dead letter to its original subject with its original
    /// headers (same `ce-id`) and removes it from `DLQ`.
    ///
    /// # Errors
    ///
    /// [`EventError::UnknownDeadLetter`], or the publish failing (then the
    /// dead letter stays).
    pub async fn replay(&self, id: u64) -> Result<Published, EventError> {
        let letter = self.get(id).await?;
        let source = envelope::header(
            Some(&envelope::headers_from_pairs(&letter.headers)),
            envelope::CE_SOURCE,
        )
        .unwrap_or_default();
        let publisher = Publisher::new(self.js.clone(), source);
        // The stream's duplicate window would drop a re-publish under the
        // original id; the replay's own id keeps a replay of the same dead
        // letter idempotent instead.
        let message_id = format!("{}:replay:{id}", letter.event_id().unwrap_or("event"));
        let published = publisher
            .republish(
                &letter.info.subject,
                envelope::headers_from_pairs(&letter.headers),
                letter.raw_payload.clone(),
                &message_id,
            )
            .await?;
        self.stream
            .delete_message(id)
            .await
            .map_err(|e| EventError::js(format!("remove replayed dead letter {id}"))(e))?;
        Ok(published)
    }

    /// Removes every dead letter; returns how many.
    ///
    /// # Errors
    ///
    /// JetStream API failures.
    pub async fn purge(&self) -> Result<u64, EventError> {
        let response = self
            .stream
            .purge()
            .await
            .map_err(|e| EventError::js("purge DLQ")(e))?;
        Ok(response.purged)
    }
}
