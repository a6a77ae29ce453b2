//! `switchboard up --cluster N`: N embedded nats-servers on loopback,
//! routed to each other, each with its own store — the local way to see
//! replication and fail-over with the same services that run against any
//! real cluster.
//!
//! Node `i` (from 0) listens for clients on `port + i`, for monitoring on
//! `monitor_port + i` and for routes on `cluster_port + i`; its store is
//! `<data dir>/n<i>`. Its configuration is the project's `nats.conf` (the
//! accounts and permissions) followed by the node's own name and cluster
//! block, so the later lines win.

use std::path::{Path, PathBuf};

use switchboard::server::{NatsServer, ServerError, ServerOptions};

/// The name of the embedded cluster (nats-server's `cluster.name`).
pub const CLUSTER_NAME: &str = "switchboard";

/// Where one node listens and keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) index: usize,
    pub(crate) port: u16,
    pub(crate) monitor_port: u16,
    pub(crate) cluster_port: u16,
    pub(crate) dir: PathBuf,
}

/// The nodes of a cluster of `size` from the base ports.
pub(crate) fn plan(
    size: usize,
    port: u16,
    monitor_port: u16,
    cluster_port: u16,
    data_dir: &Path,
) -> Vec<Node> {
    (0..size)
        .map(|index| {
            let offset = u16::try_from(index).unwrap_or(u16::MAX);
            Node {
                index,
                port: port.saturating_add(offset),
                monitor_port: monitor_port.saturating_add(offset),
                cluster_port: cluster_port.saturating_add(offset),
                dir: data_dir.join(format!("n{index}")),
            }
        })
        .collect()
}

/// The configuration of `node`: `base` (the project's `nats.conf`) and
/// the node's name and routes to every other node.
pub(crate) fn node_config(base: &str, node: &Node, all: &[Node]) -> String {
    let routes = all
        .iter()
        .filter(|other| other.index != node.index)
        .map(|other| format!("nats-route://127.0.0.1:{}", other.cluster_port))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{base}\n\n# Added by `switchboard up --cluster`: this node of the embedded cluster.\n\
         server_name: n{index}\ncluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{routes}]\n}}\n",
        index = node.index,
        cluster_port = node.cluster_port,
    )
}

/// Writes each node's configuration and starts all nodes together (each
/// is ready only once a JetStream meta leader is elected, which needs a
/// quorum of the others).
///
/// # Errors
///
/// A folder or file that cannot be written, or a node that does not start
/// (the nodes that did are stopped when dropped).
pub(crate) async fn start(
    base: &str,
    nodes: &[Node],
    env: &[(String, String)],
) -> Result<Vec<NatsServer>, ServerError> {
    let mut starts = Vec::with_capacity(nodes.len());
    for node in nodes {
        std::fs::create_dir_all(&node.dir)
            .map_err(ServerError::io("cannot create a node folder"))?;
        let config_file = node.dir.join("nats.conf");
        std::fs::write(&config_file, node_config(base, node, nodes))
            .map_err(ServerError::io("cannot write a node's configuration"))?;
        let mut options = ServerOptions::default()
            .name(format!("nats-server n{}", node.index))
            .config_file(config_file)
            .port(node.port)
            .monitor_port(node.monitor_port)
            .store_dir(&node.dir);
        options.env = env.to_vec();
        starts.push(NatsServer::start(options));
    }
    let mut started = Vec::with_capacity(nodes.len());
    let mut first_error = None;
    for result in futures::future::join_all(starts).await {
        match result {
            Ok(node) => started.push(node),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(started),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_take_consecutive_ports_and_route_to_each_other() {
        let nodes = plan(3, 4222, 8222, 6222, Path::new("data"));
        assert_eq!(
            nodes
                .iter()
                .map(|n| (n.port, n.monitor_port, n.cluster_port))
                .collect::<Vec<_>>(),
            vec![(4222, 8222, 6222), (4223, 8223, 6223), (4224, 8224, 6224)]
        );
        assert_eq!(nodes[1].dir, Path::new("data/n1"));
        let config = node_config("server_name: switchboard", &nodes[1], &nodes);
        assert!(config.starts_with("server_name: switchboard"));
        assert!(config.contains("server_name: n1"));
        assert!(config.contains("listen: 127.0.0.1:6223"));
        assert!(config.contains("nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6224"));
        assert!(!config.contains("127.0.0.1:6223, "), "no route to itself");
    }
}
