//! How many copies JetStream keeps of every stream and bucket the system
//! creates: configuration, not code.
//!
//! One server holds one copy (R1); on a cluster, R1 means whatever lives on
//! a node that goes down is unavailable until it is back, and lost with its
//! disk. The count comes from `SWITCHBOARD_REPLICAS` (1–5; `switchboard up
//! --replicas`), default 1. Streams ([`crate::events::StreamSpec::ensure`])
//! and buckets ([`crate::state::StateStore::open`]) that exist with another
//! count are changed in place — NATS moves the data — and say so in the
//! log. A process connected to a cluster with fewer replicas than
//! `min(3, nodes)` warns at start ([`warn_if_under_replicated`]).

/// The environment variable that sets the replica count.
pub const REPLICAS_ENV: &str = "SWITCHBOARD_REPLICAS";
/// The most replicas JetStream supports.
pub const MAX_REPLICAS: usize = 5;

/// The replica setting is not a number from 1 to [`MAX_REPLICAS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{REPLICAS_ENV}={value:?}: expected a whole number from 1 to {MAX_REPLICAS}")]
pub struct ReplicasError {
    /// What was set.
    pub value: String,
}

/// The configured replica count, `None` when unset.
///
/// # Errors
///
/// [`ReplicasError`] for anything but 1 to [`MAX_REPLICAS`] — a typo must
/// not silently leave a cluster unreplicated.
pub fn configured() -> Result<Option<usize>, ReplicasError> {
    match std::env::var(REPLICAS_ENV) {
        Ok(value) if !value.trim().is_empty() => parse(&value).map(Some),
        _ => Ok(None),
    }
}

/// The replica count to create with: the configured one, or 1.
///
/// # Errors
///
/// As [`configured`].
pub fn replicas() -> Result<usize, ReplicasError> {
    configured().map(|r| r.unwrap_or(1))
}

fn parse(value: &str) -> Result<usize, ReplicasError> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|r| (1..=MAX_REPLICAS).contains(r))
        .ok_or_else(|| ReplicasError {
            value: value.to_owned(),
        })
}

/// The warning for `replicas` on a cluster of `nodes`, if it is too few.
pub fn advice(replicas: usize, nodes: usize) -> Option<String> {
    let wanted = nodes.min(3);
    (replicas < wanted).then(|| {
        format!(
            "connected to a cluster of {nodes} servers but streams and buckets keep {replicas} \
             cop{}: a node that goes down takes its data with it; set {REPLICAS_ENV}={wanted} \
             (switchboard up --replicas {wanted})",
            if replicas == 1 { "y" } else { "ies" }
        )
    })
}

/// How many servers the connected cluster has (1 for a lone server), as
/// the server announces them to clients.
pub fn cluster_nodes(nats: &async_nats::Client) -> usize {
    let info = nats.server_info();
    if info.cluster.is_none() {
        return 1;
    }
    info.connect_urls.len().max(1)
}

/// Logs [`advice`] for the configured replicas on this connection's cluster.
pub fn warn_if_under_replicated(nats: &async_nats::Client) {
    let replicas = replicas().unwrap_or(1);
    if let Some(advice) = advice(replicas, cluster_nodes(nats)) {
        tracing::warn!("{advice}");
    }
}

/// Sets the replica count of an existing stream (a KV bucket's, say) to
/// `replicas` if it differs, and says so; NATS moves the data. Returns the
/// count it had when it changed it.
///
/// # Errors
///
/// The server refused the change (more replicas than servers, say).
pub async fn migrate(
    js: &async_nats::jetstream::Context,
    stream: &str,
    replicas: usize,
) -> Result<Option<usize>, async_nats::Error> {
    let mut handle = js.get_stream(stream).await?;
    let mut config = handle.info().await?.config.clone();
    if config.num_replicas == replicas {
        return Ok(None);
    }
    let before = config.num_replicas;
    config.num_replicas = replicas;
    js.update_stream(config).await?;
    tracing::warn!(%stream, from = before, to = replicas, "replicas changed");
    Ok(Some(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_is_a_small_whole_number() {
        assert_eq!(parse("3"), Ok(3));
        assert_eq!(parse(" 1 "), Ok(1));
        for bad in ["0", "6", "three", "-1", "2.5"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let error = parse("R3").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("SWITCHBOARD_REPLICAS") && error.contains("1 to 5"),
            "{error}"
        );
    }

    #[test]
    fn too_few_copies_on_a_cluster_are_called_out() {
        assert_eq!(advice(1, 1), None);
        assert_eq!(advice(3, 3), None);
        assert_eq!(advice(3, 5), None);
        let warning = advice(1, 3).unwrap_or_default();
        assert!(warning.contains("SWITCHBOARD_REPLICAS=3"), "{warning}");
        assert!(advice(1, 2).unwrap_or_default().contains("=2"));
    }
}
