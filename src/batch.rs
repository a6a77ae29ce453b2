//! All-or-nothing writes into one JetStream stream (ADR-50 atomic batch
//! publish, nats-server 2.12+, a stream with `allow_atomic`).
//!
//! Two callers need it: [`Publisher::publish_atomic`](crate::events::Publisher::publish_atomic)
//! (many events, one disk sync) and [`state::Transaction`](crate::state::Transaction)
//! (several KV keys, each with its expected revision, plus the outbox
//! entries of the events the change implies). The server stores every
//! message of a batch or none, and checks each message's
//! `Nats-Expected-Last-Subject-Sequence` inside the batch — which is a
//! multi-key compare-and-set on a KV bucket's stream.
//!
//! On the wire: every message carries `Nats-Batch-Id` and
//! `Nats-Batch-Sequence` (from 1); the last adds `Nats-Batch-Commit: 1`
//! and is a request whose answer is the batch's ack or the refusal. The
//! first is a request too, so an early refusal (atomic publishing not
//! allowed) is seen at once; the ones in between stream.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::codec::static_name;

/// Header names of ADR-50 and of JetStream's expectations.
const BATCH_ID: &str = "Nats-Batch-Id";
const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
const BATCH_COMMIT: &str = "Nats-Batch-Commit";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// JetStream's error code for a failed `Nats-Expected-Last-*` check.
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// Most messages the server accepts in one atomic batch.
pub const MAX_ATOMIC_BATCH: usize = 1000;

/// How long the commit's answer may take.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One message of a batch.
#[derive(Debug, Clone)]
pub(crate) struct BatchMessage {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

impl BatchMessage {
    pub(crate) fn new(subject: String, headers: HeaderMap, payload: Bytes) -> Self {
        BatchMessage {
            subject,
            headers,
            payload,
        }
    }

    /// Stored only if the subject's last message is at `sequence` (0: the
    /// subject holds nothing) — a KV key's revision.
    pub(crate) fn expect_last_subject_sequence(mut self, sequence: u64) -> Self {
        self.headers.insert(
            static_name(EXPECTED_LAST_SUBJECT_SEQUENCE),
            sequence.to_string().as_str(),
        );
        self
    }
}

/// The acknowledgement of one committed atomic batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AtomicBatch {
    /// The stream that stored it.
    pub stream: String,
    /// Sequence of the batch's last message.
    #[serde(rename = "seq")]
    pub last_sequence: u64,
    /// Messages stored.
    pub count: u64,
}

/// Why a batch was not stored (nothing of it was).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    /// An expected last subject sequence did not hold: a key changed.
    #[error("{0}")]
    WrongLastSequence(String),
    /// No stream captures the subject.
    #[error("no stream captures {0}")]
    NoStream(String),
    /// The server refused the batch.
    #[error("{description} (error code {code})")]
    Refused { code: u64, description: String },
    /// The batch could not be sent or its answer did not come. Whether it
    /// was stored is unknown: re-read before retrying.
    #[error("{0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    description: String,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum BatchReply {
    Error { error: ApiError },
    Ack(AtomicBatch),
}

/// Sends `messages` as one atomic batch and waits for the commit's answer.
pub(crate) async fn commit(
    nats: &async_nats::Client,
    messages: Vec<BatchMessage>,
) -> Result<AtomicBatch, BatchError> {
    let batch_id = nuid::next().to_string();
    let last = messages.len();
    for (index, mut message) in messages.into_iter().enumerate() {
        let sequence = index + 1;
        mark(&mut message.headers, &batch_id, sequence, sequence == last);
        if sequence != 1 && sequence != last {
            nats.publish_with_headers(message.subject, message.headers, message.payload)
                .await
                .map_err(|e| BatchError::Transport(Box::new(e)))?;
            continue;
        }
        let subject = message.subject.clone();
        let request = async_nats::Request::new()
            .headers(message.headers)
            .payload(message.payload)
            .timeout(Some(COMMIT_TIMEOUT));
        let reply = nats
            .send_request(message.subject, request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => BatchError::NoStream(subject),
                _ => BatchError::Transport(Box::new(e)),
            })?;
        if let Some(ack) = read_reply(&reply.payload)?
            && sequence == last
        {
            return Ok(ack);
        }
    }
    Err(BatchError::Transport(
        "the batch was not acknowledged".into(),
    ))
}

fn mark(headers: &mut HeaderMap, batch_id: &str, sequence: usize, commit: bool) {
    headers.insert(static_name(BATCH_ID), batch_id);
    headers.insert(static_name(BATCH_SEQUENCE), sequence.to_string().as_str());
    if commit {
        headers.insert(static_name(BATCH_COMMIT), "1");
    }
}

/// `None` for an empty flow-control answer, the ack, or the refusal.
fn read_reply(payload: &[u8]) -> Result<Option<AtomicBatch>, BatchError> {
    if payload.is_empty() {
        return Ok(None);
    }
    match serde_json::from_slice::<BatchReply>(payload) {
        Ok(BatchReply::Ack(ack)) => Ok(Some(ack)),
        Ok(BatchReply::Error { error }) if error.err_code == WRONG_LAST_SEQUENCE => {
            Err(BatchError::WrongLastSequence(error.description))
        }
        Ok(BatchReply::Error { error }) => Err(BatchError::Refused {
            code: error.err_code,
            description: error.description,
        }),
        // A plain (non-final) ack without batch fields: nothing to report.
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::{BatchError, read_reply};

    #[test]
    fn replies_are_read_by_kind() {
        let ack = br#"{"stream":"KV_b","seq":4,"batch":"x","count":3}"#;
        assert!(matches!(read_reply(ack), Ok(Some(a)) if a.count == 3 && a.last_sequence == 4));
        let conflict = br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 2"},"stream":"KV_b","seq":0}"#;
        assert!(matches!(
            read_reply(conflict),
            Err(BatchError::WrongLastSequence(_))
        ));
        let refused = br#"{"error":{"code":400,"err_code":10174,"description":"atomic publish is disabled"}}"#;
        assert!(matches!(
            read_reply(refused),
            Err(BatchError::Refused { code: 10174, .. })
        ));
        assert!(matches!(read_reply(b""), Ok(None)));
    }
}
