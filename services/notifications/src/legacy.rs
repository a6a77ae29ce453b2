//! Notifications kept the old way — one value per user holding every
//! notification, under the user's key — are moved into the history at
//! start, oldest first, then the old value is deleted. Appends go by event
//! id, so instances starting together, or a start that dies half-way,
//! move nothing twice.

use async_nats::jetstream;
use contracts::notifications::{self, Notification};
use futures::TryStreamExt;
use switchboard::app::AppError;
use switchboard::state::StateError;

use crate::Store;

/// The failure of `action`, as a store failure of the service's start.
fn failed<E: std::error::Error + Send + Sync + 'static>(
    action: &'static str,
) -> impl FnOnce(E) -> AppError {
    move |e| {
        AppError::State(StateError::Store {
            action: format!("moving old notifications: {action}"),
            message: e.to_string(),
            source: Box::new(e),
        })
    }
}

/// Moves every old per-user list into `store`.
///
/// # Errors
///
/// When the bucket cannot be read or an append fails (the service does not
/// start: nothing is lost, the next start goes on).
pub(crate) async fn migrate(js: &jetstream::Context, store: &Store) -> Result<(), AppError> {
    let kv = js
        .get_key_value(notifications::BUCKET)
        .await
        .map_err(failed("open the bucket"))?;
    let stream = js
        .get_stream(&kv.stream_name)
        .await
        .map_err(failed("open the bucket's stream"))?;
    // Old keys are one token; every key of the history has more.
    let prefix = format!("$KV.{}.", notifications::BUCKET);
    let subjects: Vec<String> = stream
        .info_with_subjects(format!("{prefix}*"))
        .await
        .map_err(failed("list old keys"))?
        .map_ok(|(subject, _)| subject)
        .try_collect()
        .await
        .map_err(failed("list old keys"))?;
    for subject in subjects {
        let Some(key) = subject.strip_prefix(&prefix) else {
            continue;
        };
        let Some(value) = kv.get(key).await.map_err(failed("read an old list"))? else {
            continue;
        };
        let list: Vec<Notification> = match serde_json::from_slice(&value) {
            Ok(list) => list,
            Err(error) => {
                tracing::error!(%key, %error, "an old notification list does not parse; left as it is");
                continue;
            }
        };
        for notification in &list {
            store
                .append(&notification.user_id, &notification.event_id, notification)
                .await?;
        }
        kv.delete(key).await.map_err(failed("delete an old list"))?;
        tracing::info!(%key, notifications = list.len(), "moved an old notification list into the history");
    }
    Ok(())
}
