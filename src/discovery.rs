//! Finding services by asking NATS, not a registry.
//!
//! A `$SRV.PING|INFO` request is answered by every instance of every service.
//! A plain request would keep only the first reply, so discovery publishes
//! with a reply inbox and gathers all answers that arrive within a window.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;

/// One instance's `$SRV.INFO` answer (ADR-32 `io.nats.micro.v1.info_response`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceInfo {
    /// Service name.
    pub name: String,
    /// Instance id, unique per running instance.
    pub id: String,
    /// SemVer version.
    pub version: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// The endpoints this instance serves.
    #[serde(default)]
    pub endpoints: Vec<EndpointInfo>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// One endpoint in an [`InstanceInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EndpointInfo {
    /// Endpoint name.
    pub name: String,
    /// Subject it listens on.
    pub subject: String,
    /// Queue group shared by the instances.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// Free-form metadata (schemas, HTTP route, …).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

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
}

/// Gathers every `$SRV.INFO` answer (for one service when `name` is given)
/// that arrives within `window`. Answers that do not parse are skipped with
/// a warning, so one broken service cannot hide the others.
///
/// # Errors
///
/// [`DiscoveryError`] when the request cannot be sent.
pub async fn info(
    client: &async_nats::Client,
    name: Option<&str>,
    window: Duration,
) -> Result<Vec<InstanceInfo>, DiscoveryError> {
    let subject = match name {
        Some(name) => format!("$SRV.INFO.{name}"),
        None => "$SRV.INFO".to_owned(),
    };
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subject, inbox, Default::default())
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
                Some(message) => match serde_json::from_slice::<InstanceInfo>(&message.payload) {
                    Ok(info) => found.push(info),
                    Err(error) => tracing::warn!(%error, "ignoring a malformed $SRV.INFO reply"),
                },
                None => break,
            },
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(found)
}

/// Groups instance answers by service name, sorted by name.
pub fn summarize(instances: &[InstanceInfo]) -> Vec<ServiceSummary> {
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
