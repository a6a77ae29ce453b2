//! A three-node (or larger) JetStream cluster on loopback, for tests of
//! replication and fail-over — or with each node in its own network
//! namespace ([`TestCluster::partitionable`]), for tests of partitions and
//! paused nodes.

use std::time::Duration;

use tempfile::TempDir;

use super::netns::Network;
use super::{TestServerError, free_port};
use crate::server::{NatsServer, ServerError, ServerOptions};

/// Nodes of a cluster with routes between all of them and JetStream on each,
/// so R3 streams work. Killed on drop like [`super::TestServer`].
#[derive(Debug)]
pub struct TestCluster {
    // Before `network`: the nodes are killed before their namespaces go.
    nodes: Vec<NatsServer>,
    network: Option<Network>,
    dir: TempDir,
}

impl TestCluster {
    /// Starts `size` nodes and returns when every node reports healthy
    /// JetStream (which in a cluster needs an elected meta leader).
    ///
    /// # Errors
    ///
    /// When a node fails to start.
    pub async fn start(size: usize) -> Result<TestCluster, TestServerError> {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-cluster-")
            .tempdir()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match start_nodes(&dir, size).await {
                Err(ServerError::PortInUse { .. }) if attempt < 5 => continue,
                Err(e) => return Err(e.into()),
                Ok(nodes) => {
                    let cluster = TestCluster {
                        nodes,
                        network: None,
                        dir,
                    };
                    cluster.wait_for_full_mesh().await?;
                    return Ok(cluster);
                }
            }
        }
    }

    /// `size` nodes, node `i` in its own network namespace at
    /// [`Network::address`]`(i)` (clients on 4222, monitoring on 8222,
    /// routes on 6222 — every node has its own address), each configured
    /// with `base` (accounts, limits: e.g. the project's `nats.conf`)
    /// followed by its name, listen addresses and routes; `env` for the
    /// servers (the passwords `base` reads). Route and client pings every
    /// second, so a cut link is noticed in seconds. See [`Network`] for
    /// what this needs.
    ///
    /// # Errors
    ///
    /// When the namespaces cannot be made or a node does not start.
    pub async fn partitionable(
        size: usize,
        base: &str,
        env: &[(String, String)],
    ) -> Result<TestCluster, TestServerError> {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-partitions-")
            .tempdir()?;
        let network = Network::create(size)?;
        let mut starts = Vec::with_capacity(size);
        for i in 0..size {
            let address = network.address(i);
            let routes = (0..size)
                .filter(|j| *j != i)
                .map(|j| format!("nats-route://{}:6222", network.address(j)))
                .collect::<Vec<_>>()
                .join(", ");
            let config = format!(
                "{base}\n\n# A node of a partitionable test cluster.\nserver_name: n{i}\n\
                 listen: {address}:4222\nhttp: {address}:8222\n\
                 ping_interval: \"1s\"\nping_max: 3\n\
                 cluster {{\n  name: switchboard-partitions\n  listen: {address}:6222\n  routes: [{routes}]\n}}\n"
            );
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let config_file = node_dir.join("nats.conf");
            std::fs::write(&config_file, config)?;
            let mut options = ServerOptions::default()
                .name(format!("nats-server n{i}"))
                .config_file(config_file)
                .store_dir(node_dir.join("jetstream"))
                .host(address)
                .port(4222)
                .monitor_port(8222)
                .launcher(network.launcher(i));
            options.env = env.to_vec();
            starts.push(NatsServer::start(options));
        }
        let mut nodes = Vec::with_capacity(size);
        for result in futures::future::join_all(starts).await {
            nodes.push(result?);
        }
        Ok(TestCluster {
            nodes,
            network: Some(network),
            dir,
        })
    }

    /// The network of a [`TestCluster::partitionable`] cluster (cut, heal).
    pub fn network(&mut self) -> Option<&mut Network> {
        self.network.as_mut()
    }

    /// Pauses node `i` (SIGSTOP): it holds its connections and answers
    /// nothing, as in a long GC pause or a frozen VM.
    pub fn pause(&self, i: usize) {
        if let Some(pid) = self.nodes.get(i).and_then(NatsServer::pid) {
            crate::process::send(pid, nix::sys::signal::Signal::SIGSTOP);
        }
    }

    /// Resumes node `i` (SIGCONT).
    pub fn resume(&self, i: usize) {
        if let Some(pid) = self.nodes.get(i).and_then(NatsServer::pid) {
            crate::process::send(pid, nix::sys::signal::Signal::SIGCONT);
        }
    }

    /// Until every node announces all the others to its clients: a node is
    /// ready (`/healthz`) once it sees a JetStream quorum, which on three
    /// nodes is two — a client of it could still be told of a two-node
    /// cluster, and whatever sizes itself by the cluster would be wrong.
    async fn wait_for_full_mesh(&self) -> Result<(), TestServerError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        for node in &self.nodes {
            let client = async_nats::connect(node.client_url()).await?;
            while crate::replication::cluster_nodes(&client) < self.nodes.len()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Ok(())
    }

    /// Client URLs of all nodes, comma separated (what `NATS_URL` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client URL of node `i`.
    pub fn node_url(&self, i: usize) -> Option<String> {
        self.nodes.get(i).map(NatsServer::client_url)
    }

    /// Process ids of the running nodes (a benchmark counts their CPU).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(NatsServer::pid).collect()
    }

    /// A client that knows every node.
    ///
    /// # Errors
    ///
    /// When no node can be reached.
    pub async fn client(&self) -> Result<async_nats::Client, TestServerError> {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::client_url).collect();
        Ok(async_nats::connect(urls.as_slice()).await?)
    }

    /// SIGKILLs node `i`.
    ///
    /// # Errors
    ///
    /// When the OS cannot kill it.
    pub async fn kill(&mut self, i: usize) -> Result<(), TestServerError> {
        if let Some(node) = self.nodes.get_mut(i) {
            node.kill().await?;
        }
        Ok(())
    }

    /// Restarts node `i` with its ports and store.
    ///
    /// # Errors
    ///
    /// When it fails to come back.
    pub async fn restart(&mut self, i: usize) -> Result<(), TestServerError> {
        if let Some(node) = self.nodes.get_mut(i) {
            node.restart().await?;
        }
        Ok(())
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The folder holding the nodes' configs and stores.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

async fn start_nodes(dir: &TempDir, size: usize) -> Result<Vec<NatsServer>, ServerError> {
    let mut cluster_ports = Vec::with_capacity(size);
    for _ in 0..size {
        cluster_ports.push(free_port()?);
    }
    let mut starts = Vec::with_capacity(size);
    for (i, cluster_port) in cluster_ports.iter().enumerate() {
        let routes = cluster_ports
            .iter()
            .filter(|p| *p != cluster_port)
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "server_name: n{i}\ncluster {{\n  name: switchboard-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{routes}]\n}}\n"
        );
        let node_dir = dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&node_dir)
            .map_err(ServerError::io("cannot create a node folder"))?;
        let config_file = node_dir.join("nats.conf");
        std::fs::write(&config_file, config)
            .map_err(ServerError::io("cannot write a node config"))?;
        let options = ServerOptions::default()
            .name(format!("test-cluster-n{i}"))
            .config_file(config_file)
            .store_dir(node_dir.join("jetstream"))
            .port(free_port()?)
            .monitor_port(free_port()?);
        // All nodes start together: each waits for a meta leader, which
        // needs a quorum of the others.
        starts.push(NatsServer::start(options));
    }
    let results = futures::future::join_all(starts).await;
    let mut nodes = Vec::with_capacity(size);
    let mut first_error = None;
    for result in results {
        match result {
            Ok(node) => nodes.push(node),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        // Dropping the nodes that did start kills them before a retry.
        Some(e) => Err(e),
        None => Ok(nodes),
    }
}
