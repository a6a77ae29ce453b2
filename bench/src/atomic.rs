//! One ADR-50 atomic batch written by hand, for the raw sides of the
//! grouping leads (`ingest`, `claims`): no kit in the measurement.

use async_nats::HeaderMap;
use bytes::Bytes;

/// Sends `messages` (subject, headers, payload) as one atomic batch: each
/// carries the batch id and its sequence, the last commits and is a
/// request answered by the batch's ack (or its refusal, an error here).
pub async fn send(
    nats: &async_nats::Client,
    messages: Vec<(String, HeaderMap, Bytes)>,
) -> anyhow::Result<()> {
    let id = nuid::next().to_string();
    let last = messages.len();
    for (index, (subject, mut headers, payload)) in messages.into_iter().enumerate() {
        let seq = index + 1;
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", seq.to_string());
        if seq < last {
            nats.publish_with_headers(subject, headers, payload).await?;
            continue;
        }
        headers.insert("Nats-Batch-Commit", "1");
        let reply = nats.request_with_headers(subject, headers, payload).await?;
        let value: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        if let Some(error) = value.get("error") {
            anyhow::bail!("atomic batch refused: {error}");
        }
    }
    Ok(())
}
