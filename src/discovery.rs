//! Finding services by asking NATS, not a registry.
//!
//! A `$SRV.PING|INFO|STATS` request is answered by every instance of every
//! service. A plain request keeps only the first reply, so discovery publishes
//! with its own reply inbox and gathers every answer that arrives within a
//! window. Answers that do not parse are skipped with a warning, so one
//! broken service cannot hide the others.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::micro::{InfoResponse, PingResponse, StatsResponse, Verb};

/// One instance's `$SRV.INFO` answer.
pub type InstanceInfo = InfoResponse;

/// How long to gather answers by default: long enough for a loaded local
/// system, short enough for a CLI.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(500);

/// All instances of one service, as gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// Versions seen (more than one during a rolling upgrade).
    pub versions: Vec<String>,
    /// Number of instances that answered.
    pub instances: usize,
    /// Distinct endpoint names across instances.
    pub endpoints: Vec<String>,
}

/// Discovery failed before any answer could be gathered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Subscribing to the reply inbox failed.
    #[error("cannot subscribe to a reply inbox: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// Sending the request failed.
    #[error("cannot send the discovery request: {0}")]
    Publish(#[from] async_nats::PublishError),
    /// A service name or id that cannot be part of a subject.
    #[error("invalid service name or id {0:?}")]
    InvalidName(String),
}

/// Which instances to ask: all, one service, or one instance of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Target<'a> {
    /// Service name.
    pub name: Option<&'a str>,
    /// Instance id (needs `name`).
    pub id: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// Every service.
    pub fn all() -> Self {
        Target::default()
    }
    /// Every instance of `name`.
    pub fn service(name: &'a str) -> Self {
        Target {
            name: Some(name),
            id: None,
        }
    }

    /// The `$SRV` subject of `verb` for this target.
    ///
    /// # Errors
    ///
    /// [`DiscoveryError::InvalidName`] for a name or id that cannot be a
    /// subject token.
    pub fn subject(&self, verb: Verb) -> Result<String, DiscoveryError> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        for part in [self.name, self.name.and(self.id)].into_iter().flatten() {
            if !valid(part) {
                return Err(DiscoveryError::InvalidName(part.to_owned()));
            }
        }
        Ok(verb.subject(self.name, self.id))
    }
}

/// Gathers `$SRV.PING` answers.
///
/// # Errors
///
/// [`DiscoveryError`] when the request cannot be sent.
pub async fn ping(
    client: &async_nats::Client,
    target: Target<'_>,
    window: Duration,
) -> Result<Vec<PingResponse>, DiscoveryError> {
    gather(client, &target.subject(Verb::Ping)?, window).await
}

/// Gathers `$SRV.INFO` answers (for one service when `name` is given).
///
/// # Errors
///
/// [`DiscoveryError`] when the request cannot be sent.
pub async fn info(
    client: &async_nats::Client,
    name: Option<&str>,
    window: Duration,
) -> Result<Vec<InfoResponse>, DiscoveryError> {
    let target = Target { name, id: None };
    gather(client, &target.subject(Verb::Info)?, window).await
}

/// [`info`] that returns as soon as `enough` says the answers so far
/// suffice (say, every expected service answered) instead of always
/// waiting out the window.
///
/// # Errors
///
/// [`DiscoveryError`] when the request cannot be sent.
pub async fn info_until(
    client: &async_nats::Client,
    name: Option<&str>,
    window: Duration,
    enough: impl FnMut(&[InfoResponse]) -> bool,
) -> Result<Vec<InfoResponse>, DiscoveryError> {
    let target = Target { name, id: None };
    gather_until(client, &target.subject(Verb::Info)?, window, enough).await
}

/// Gathers `$SRV.STATS` answers.
///
/// # Errors
///
/// [`DiscoveryError`] when the request cannot be sent.
pub async fn stats(
    client: &async_nats::Client,
    target: Target<'_>,
    window: Duration,
) -> Result<Vec<StatsResponse>, DiscoveryError> {
    gather(client, &target.subject(Verb::Stats)?, window).await
}

/// Publishes an empty request to `subject` and collects every answer that
/// parses as `T` within `window`.
///
/// # Errors
///
/// [`DiscoveryError`] when the request cannot be sent.
pub async fn gather<T: DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    window: Duration,
) -> Result<Vec<T>, DiscoveryError> {
    gather_until(client, subject, window, |_| false).await
}

/// [`gather`] that stops early once `enough(answers so far)` is true.
///
/// # Errors
///
/// [`DiscoveryError`] when the request cannot be sent.
pub async fn gather_until<T: DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    window: Duration,
    mut enough: impl FnMut(&[T]) -> bool,
) -> Result<Vec<T>, DiscoveryError> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subject.to_owned(), inbox, Default::default())
        .await?;
    let mut found = Vec::new();
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            reply = replies.next() => match reply {
                // A status message (no responders) carries no answer.
                Some(message) if message.status.is_some() => {}
                Some(message) => match serde_json::from_slice::<T>(&message.payload) {
                    Ok(answer) => {
                        found.push(answer);
                        if enough(&found) {
                            break;
                        }
                    }
                    Err(error) => tracing::warn!(%subject, %error, "ignoring a malformed discovery reply"),
                },
                None => break,
            },
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(found)
}

/// Groups instance answers by service name, sorted by name.
pub fn summarize(instances: &[InfoResponse]) -> Vec<ServiceSummary> {
    let mut by_name: BTreeMap<&str, ServiceSummary> = BTreeMap::new();
    for instance in instances {
        let summary = by_name
            .entry(&instance.name)
            .or_insert_with(|| ServiceSummary {
                name: instance.name.clone(),
                versions: Vec::new(),
                instances: 0,
                endpoints: Vec::new(),
            });
        summary.instances += 1;
        if !summary.versions.contains(&instance.version) {
            summary.versions.push(instance.version.clone());
        }
        for endpoint in &instance.endpoints {
            if !summary.endpoints.contains(&endpoint.name) {
                summary.endpoints.push(endpoint.name.clone());
            }
        }
    }
    by_name.into_values().collect()
}

/// Who holds each partition of every keyed consumer, from `$SRV.STATS`
/// answers (`data.partitions`): partition durable (`<durable>-p<n>`) →
/// `"<service> <instance id>"` of each instance that says it holds it
/// (two only while a partition changes hands).
pub fn partition_holders(stats: &[StatsResponse]) -> BTreeMap<String, Vec<String>> {
    let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for answer in stats {
        let data = answer.endpoints.first().and_then(|e| e.data.as_ref());
        let Some(consumers) = data
            .and_then(|d| d.get("partitions"))
            .and_then(|p| p.as_object())
        else {
            continue;
        };
        for (durable, partitions) in consumers {
            for p in partitions
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_u64())
            {
                let name = crate::events::partition::partition_durable(
                    durable,
                    u32::try_from(p).unwrap_or(u32::MAX),
                );
                holders
                    .entry(name)
                    .or_default()
                    .push(format!("{} {}", answer.name, answer.id));
            }
        }
    }
    holders
}
