//! Streams declared in code, created at start-up, never silently changed.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::EventError;

/// A stream as the code expects it. `Default`: file storage, one replica,
/// 2-minute duplicate window, limits retention, keep 7 days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name, e.g. `ORDERS`.
    pub name: String,
    /// Subjects it captures, e.g. `events.invoices.>`.
    pub subjects: Vec<String>,
    /// Replicas (3 in a cluster for fault tolerance).
    pub replicas: usize,
    /// Window in which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    /// Oldest message kept (zero: no limit).
    pub max_age: Duration,
    /// Most bytes kept (-1: no limit).
    pub max_bytes: i64,
    /// Most messages kept (-1: no limit).
    pub max_messages: i64,
    /// Allow atomic batch publishing (nats-server 2.12+). On by default:
    /// [`Publisher::publish`](super::Publisher::publish) groups concurrent
    /// publishes into atomic batches (one disk sync for many events).
    pub atomic_batches: bool,
    /// Update a live stream that differs, instead of refusing to start.
    pub update_on_drift: bool,
}

impl Default for StreamSpec {
    fn default() -> Self {
        StreamSpec {
            name: String::new(),
            subjects: Vec::new(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
            max_messages: -1,
            atomic_batches: true,
            update_on_drift: false,
        }
    }
}

/// What [`StreamSpec::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStatus {
    /// The stream did not exist and was created.
    Created,
    /// It existed as declared.
    Unchanged,
    /// It differed and was updated (only with `update_on_drift`).
    Updated,
}

impl StreamSpec {
    /// A stream named `name` capturing `subjects`, with the defaults.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = S>,
    ) -> Self {
        StreamSpec {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            ..StreamSpec::default()
        }
    }

    /// Sets the replica count.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the duplicate window.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Allows atomic batches ([`Publisher::publish_atomic`](super::Publisher::publish_atomic),
    /// and the grouping of concurrent publishes). On by default; off, every
    /// publish to the stream is synced on its own.
    pub fn atomic_batches(mut self, allow: bool) -> Self {
        self.atomic_batches = allow;
        self
    }

    pub(crate) fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_messages: self.max_messages,
            allow_atomic_publish: self.atomic_batches,
            ..Default::default()
        }
    }

    /// Creates the stream, or checks the live one matches the declaration.
    ///
    /// # Errors
    ///
    /// [`EventError::StreamDrift`] naming every difference when the live
    /// stream differs (unless `update_on_drift`); JetStream API failures.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<StreamStatus, EventError> {
        let wanted = self.config();
        let mut live = match js.get_stream(&self.name).await {
            Ok(stream) => stream,
            Err(e) if is_not_found(&e) => {
                match js.create_stream(wanted.clone()).await {
                    Ok(_) => {
                        tracing::info!(stream = %self.name, "stream created");
                        return Ok(StreamStatus::Created);
                    }
                    // Created by someone else in between (two consumers of
                    // one process both ensuring the DLQ, say): check that one
                    // like any live stream, instead of failing the caller.
                    Err(e) if created_meanwhile(&e) => js
                        .get_stream(&self.name)
                        .await
                        .map_err(|e| EventError::js(format!("look up stream {}", self.name))(e))?,
                    Err(e) => {
                        return Err(EventError::js(format!("create stream {}", self.name))(e));
                    }
                }
            }
            Err(e) => return Err(EventError::js(format!("look up stream {}", self.name))(e)),
        };
        let info = live
            .info()
            .await
            .map_err(|e| EventError::js(format!("read stream {}", self.name))(e))?;
        let differences = differences(&info.config, &wanted);
        if differences.is_empty() {
            return Ok(StreamStatus::Unchanged);
        }
        // The replica count follows the deployment (crate::replication):
        // NATS changes it in place, moving the data, so it is no drift. Nor
        // is allowing atomic batches on a stream made before they were the
        // default: it only adds a way to publish.
        let in_place = |d: &String| d.starts_with("replicas:") || d == ATOMIC_BATCHES_ALLOWED;
        let only_replicas = differences.iter().all(in_place);
        if only_replicas {
            tracing::warn!(stream = %self.name, ?differences, "changing the stream in place");
        } else if !self.update_on_drift {
            return Err(EventError::StreamDrift {
                stream: self.name.clone(),
                differences,
            });
        }
        if !only_replicas {
            tracing::warn!(stream = %self.name, ?differences, "updating a stream that differs from its declaration");
        }
        js.update_stream(wanted)
            .await
            .map_err(|e| EventError::js(format!("update stream {}", self.name))(e))?;
        Ok(StreamStatus::Updated)
    }
}

/// The difference [`StreamSpec::ensure`] makes in place.
const ATOMIC_BATCHES_ALLOWED: &str = "atomic_batches: false → true";

fn differences(live: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |field: &str, live: String, wanted: String| {
        if live != wanted {
            out.push(format!("{field}: {live} → {wanted}"));
        }
    };
    let mut live_subjects = live.subjects.clone();
    let mut wanted_subjects = wanted.subjects.clone();
    live_subjects.sort();
    wanted_subjects.sort();
    check(
        "subjects",
        format!("{live_subjects:?}"),
        format!("{wanted_subjects:?}"),
    );
    check(
        "storage",
        format!("{:?}", live.storage),
        format!("{:?}", wanted.storage),
    );
    check(
        "retention",
        format!("{:?}", live.retention),
        format!("{:?}", wanted.retention),
    );
    check(
        "replicas",
        live.num_replicas.to_string(),
        wanted.num_replicas.to_string(),
    );
    check(
        "duplicate_window",
        format!("{:?}", live.duplicate_window),
        format!("{:?}", wanted.duplicate_window),
    );
    check(
        "max_age",
        format!("{:?}", live.max_age),
        format!("{:?}", wanted.max_age),
    );
    check(
        "max_bytes",
        live.max_bytes.to_string(),
        wanted.max_bytes.to_string(),
    );
    check(
        "max_messages",
        live.max_messages.to_string(),
        wanted.max_messages.to_string(),
    );
    check(
        "atomic_batches",
        live.allow_atomic_publish.to_string(),
        wanted.allow_atomic_publish.to_string(),
    );
    out
}

/// Whether a create failed because the stream exists by now.
fn created_meanwhile(e: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
    )
}

/// Whether a stream lookup failed because the stream does not exist.
pub(crate) fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}
