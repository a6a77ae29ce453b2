//! Answering `$SRV.PING|INFO|STATS` for one service instance (ADR-32).

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::SelectAll;
use tokio_util::sync::CancellationToken;

use super::dispatch::LiveEndpoint;
use super::stats::nanos;
use crate::client::Client;
use crate::micro::{
    EndpointInfo, EndpointStats, INFO_TYPE, InfoResponse, Metadata, PING_TYPE, PingResponse,
    STATS_TYPE, StatsResponse, Verb,
};

/// Who this instance is.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) version: String,
    pub(crate) description: String,
    pub(crate) metadata: Metadata,
    pub(crate) started: String,
}

/// Subscribes to the nine discovery subjects (no queue group: every
/// instance answers).
pub(crate) async fn subscribe(
    nats: &async_nats::Client,
    identity: &Identity,
) -> Result<SelectAll<async_nats::Subscriber>, async_nats::SubscribeError> {
    let mut all = SelectAll::new();
    for verb in Verb::ALL {
        let (name, id) = (Some(identity.name.as_str()), Some(identity.id.as_str()));
        for subject in [
            verb.subject(None, None),
            verb.subject(name, None),
            verb.subject(name, id),
        ] {
            all.push(nats.subscribe(subject).await?);
        }
    }
    Ok(all)
}

/// Answers discovery requests until `stop`, then unsubscribes.
pub(crate) async fn answer(
    mut subscriptions: SelectAll<async_nats::Subscriber>,
    identity: Arc<Identity>,
    endpoints: Vec<Arc<LiveEndpoint>>,
    nats: async_nats::Client,
    client: Client,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = subscriptions.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let Some(reply) = message.reply else { continue };
        let body = match Verb::of_subject(&message.subject) {
            Some(Verb::Ping) => serde_json::to_vec(&ping(&identity)),
            Some(Verb::Info) => serde_json::to_vec(&info(&identity, &endpoints)),
            Some(Verb::Stats) => serde_json::to_vec(&stats(&identity, &endpoints, &client)),
            None => continue,
        };
        match body {
            Ok(body) => {
                if let Err(error) = nats.publish(reply, body.into()).await {
                    tracing::warn!(%error, "cannot answer a discovery request");
                }
            }
            Err(error) => tracing::error!(%error, "cannot encode a discovery answer"),
        }
    }
    for subscription in subscriptions.iter_mut() {
        let _ = subscription.unsubscribe().await;
    }
}

fn metadata(identity: &Identity) -> Option<Metadata> {
    Some(identity.metadata.clone())
}

fn ping(identity: &Identity) -> PingResponse {
    PingResponse {
        kind: PING_TYPE.to_owned(),
        name: identity.name.clone(),
        id: identity.id.clone(),
        version: identity.version.clone(),
        metadata: metadata(identity),
    }
}

fn info(identity: &Identity, endpoints: &[Arc<LiveEndpoint>]) -> InfoResponse {
    InfoResponse {
        kind: INFO_TYPE.to_owned(),
        name: identity.name.clone(),
        id: identity.id.clone(),
        version: identity.version.clone(),
        description: identity.description.clone(),
        metadata: metadata(identity),
        endpoints: endpoints
            .iter()
            .map(|e| EndpointInfo {
                name: e.name.to_string(),
                subject: e.subject.clone(),
                queue_group: Some(e.queue_group.clone()),
                metadata: Some(e.endpoint.published_metadata()),
            })
            .collect(),
    }
}

fn stats(identity: &Identity, endpoints: &[Arc<LiveEndpoint>], client: &Client) -> StatsResponse {
    let breakers = client.breakers().snapshot();
    let (retries, retries_refused, _) = client.retry_budget().snapshot();
    let partitions = crate::events::consumer::partitions_held();
    StatsResponse {
        kind: STATS_TYPE.to_owned(),
        name: identity.name.clone(),
        id: identity.id.clone(),
        version: identity.version.clone(),
        metadata: metadata(identity),
        started: identity.started.clone(),
        endpoints: endpoints
            .iter()
            .map(|e| {
                let totals = e.counters.totals();
                let latency = e.counters.latency.snapshot();
                let average = nanos(totals.processing)
                    .checked_div(totals.requests)
                    .unwrap_or(0);
                EndpointStats {
                    name: e.name.to_string(),
                    subject: e.subject.clone(),
                    queue_group: Some(e.queue_group.clone()),
                    num_requests: totals.requests,
                    num_errors: totals.errors,
                    last_error: totals.last_error,
                    processing_time: nanos(totals.processing),
                    average_processing_time: average,
                    data: Some(serde_json::json!({
                        "in_flight": e.in_flight(),
                        "queued": e.counters.queued(),
                        "rejected": e.counters.rejected(),
                        "max_in_flight": e.endpoint.max_in_flight,
                        "max_queued": e.endpoint.max_queued,
                        // Since the start: `[upper bound µs, count]` of each
                        // non-empty bucket (two snapshots' difference is a
                        // window), and its quantiles.
                        "latency_us": latency,
                        "p50_us": super::latency::quantile(&latency, 0.5),
                        "p99_us": super::latency::quantile(&latency, 0.99),
                        // The breakers of this service's outgoing calls.
                        "circuit_breakers": breakers,
                        "retries": retries,
                        "retries_refused": retries_refused,
                        // The partitions this instance holds, per keyed
                        // consumer (durable name).
                        "partitions": partitions,
                        // Which process answers (to signal or profile it).
                        "pid": std::process::id(),
                    })),
                }
            })
            .collect(),
    }
}
