//! `switchboard up`: flags, the prefixed log, the ready table.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::dashboard::Dashboard;
use crate::manifest::Manifest;
use crate::nats_context::CONTEXT_NAME;
use crate::system::{ServerChoice, System, UpConfig};
use anyhow::Context;
use switchboard::discovery::ServiceSummary;
use switchboard::shutdown;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Use this NATS server or cluster (comma-separated URLs) and start none.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// nats-server configuration [default: ./nats.conf, else the built-in copy]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data folder: JetStream store of the embedded server.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Client port of the embedded server (loopback).
    #[arg(long, default_value_t = 4222)]
    port: u16,
    /// Monitoring port of the embedded server (loopback).
    #[arg(long, default_value_t = 8222)]
    http_port: u16,
    /// Folder with the service binaries [default: next to this executable]
    #[arg(long, env = "SWITCHBOARD_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Services to run, by name or binary path [default: those of
    /// ./switchboard.toml, else the reference system]
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<String>>,
    /// Also run this service binary, built anywhere (its own repository):
    /// its permissions are derived from its contract (`<binary> --contract`).
    #[arg(long = "with", value_name = "BINARY")]
    with: Vec<PathBuf>,
    /// Run N processes of a service: NAME=N, comma-separated (e.g.
    /// notifications=3,inventory=2). They share its queue groups and its
    /// keyed consumers' partitions.
    #[arg(long, value_delimiter = ',', value_name = "NAME=N", value_parser = instances_arg)]
    instances: Vec<(String, usize)>,
    /// Seconds to wait for every service to answer $SRV.PING.
    #[arg(long, default_value_t = 30)]
    ready_timeout: u64,
    /// Address of the HTTP gateway (sets SWITCHBOARD_HTTP_ADDR for it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: std::net::SocketAddr,
    /// Address of the live dashboard (loopback only: it has operator rights).
    #[arg(
        long,
        env = "SWITCHBOARD_DASHBOARD_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    dashboard_addr: std::net::SocketAddr,
    /// Serve no dashboard.
    #[arg(long, conflicts_with = "traces")]
    no_dashboard: bool,
    /// Export every service's spans to the dashboard, which shows a trace
    /// by id (sets the services' OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long)]
    traces: bool,
    /// Do not write the `nats` CLI context.
    #[arg(long)]
    no_context: bool,
    /// Run N embedded nats-servers as a cluster on loopback (ports --port,
    /// --http-port and --cluster-port upwards; stores <data-dir>/n0, n1, …).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    cluster: u8,
    /// Route port of the first cluster node.
    #[arg(long, default_value_t = 6222)]
    cluster_port: u16,
    /// Copies JetStream keeps of every stream and bucket (1-5; default 1,
    /// with --cluster min(3, N)). Existing ones are changed in place.
    #[arg(long, env = "SWITCHBOARD_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: Option<u8>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Handlers first: a Ctrl-C during start-up must stop what was started.
    let shutdown = shutdown::signal();
    tokio::pin!(shutdown);

    let mut config = UpConfig {
        data_dir: args.data_dir,
        ..UpConfig::default()
    };
    config.server = match args.nats_url {
        Some(url) => ServerChoice::External { url },
        None => ServerChoice::Embedded {
            config_file: args.config,
            port: args.port,
            monitor_port: args.http_port,
            nodes: usize::from(args.cluster),
            cluster_port: args.cluster_port,
        },
    };
    if let Some(dir) = args.bin_dir {
        config.bin_dir = dir;
    }
    let manifest = Manifest::discover()?;
    config.services_base = manifest.base;
    match args.services {
        Some(services) => {
            // The rest of the system still gets its users: it may run
            // elsewhere, or be started by hand later.
            config.also_declared = manifest.services;
            config.services = services;
        }
        None => config.services = manifest.services,
    }
    config.instances = args.instances.into_iter().collect();
    for binary in args.with {
        // Absolute: `services_base` is the manifest's folder, not the shell's.
        let binary = std::path::absolute(&binary).unwrap_or(binary);
        config.services.push(binary.display().to_string());
    }
    config.service_env.push((
        switchboard::app::HTTP_ADDR_ENV.to_owned(),
        args.http_addr.to_string(),
    ));
    if args.no_context {
        config.context_dir = None;
    }
    let replicas = args
        .replicas
        .map_or(usize::from(args.cluster).min(3), usize::from);
    config.service_env.push((
        switchboard::replication::REPLICAS_ENV.to_owned(),
        replicas.to_string(),
    ));
    // Bound before anything starts, so the ready table can say where it
    // is and `--traces` can point the services at it; a port in use costs
    // the dashboard, not the system.
    let dashboard = if args.no_dashboard {
        None
    } else {
        match Dashboard::bind(args.dashboard_addr).await {
            Ok(dashboard) => Some(dashboard),
            Err(error) => {
                say(format_args!(
                    "switchboard: warning: no dashboard: {error} (choose another with --dashboard-addr)"
                ));
                None
            }
        }
    };
    let dashboard_addr = dashboard.as_ref().and_then(Dashboard::local_addr);
    let dashboard_url = dashboard_addr.map(|addr| format!("http://{addr}/"));
    if args.traces {
        let Some(addr) = dashboard_addr else {
            anyhow::bail!("--traces collects traces in the dashboard, which is not running");
        };
        if let Some(endpoint) = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT") {
            say(format_args!(
                "switchboard: warning: --traces: the services export to the dashboard, not to {}",
                endpoint.to_string_lossy()
            ));
        }
        for (name, value) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            // The signal's own variable wins over the base URL: unset it.
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", String::new()),
            ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
            // Seen on the page within a second, not five.
            ("OTEL_BSP_SCHEDULE_DELAY", "500".to_owned()),
        ] {
            config.service_env.push((name.to_owned(), value));
        }
    }
    let width = config
        .services
        .iter()
        .map(|s| crate::manifest::service_name(s).len())
        .max()
        .unwrap_or(0);
    let sink = Arc::new(move |name: &str, line: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{name:>width$} | {line}");
    });

    let system = tokio::select! {
        system = System::start(config, sink) => system?,
        () = &mut shutdown => return Ok(()),
    };
    let nodes = switchboard::replication::cluster_nodes(system.admin());
    if let Some(advice) = switchboard::replication::advice(replicas, nodes) {
        say(format_args!("switchboard: warning: {advice}"));
    }
    let pids = system.server_pids();
    if pids.len() > 1 {
        let pids: Vec<String> = pids
            .iter()
            .map(|p| p.map_or_else(|| "?".to_owned(), |p| p.to_string()))
            .collect();
        say(format_args!(
            "switchboard: {}-node nats-server cluster (pids {}) listening on {}; replicas {replicas}",
            pids.len(),
            pids.join(", "),
            system.url()
        ));
    } else if let Some(pid) = system.server_pid() {
        say(format_args!(
            "switchboard: nats-server pid {pid} listening on {}",
            system.url()
        ));
    } else {
        say(format_args!(
            "switchboard: using NATS at {} (no server started)",
            system.url()
        ));
    }

    // Stopped by abort: a page's open event feed would hold a graceful stop.
    let dashboard =
        dashboard.map(|d| tokio::spawn(d.serve(system.admin().clone(), std::future::pending())));

    let timeout = Duration::from_secs(args.ready_timeout);
    let summaries = tokio::select! {
        ready = system.wait_ready(timeout) => ready,
        () = &mut shutdown => {
            system.stop().await;
            return Ok(());
        }
    };
    let summaries = match summaries {
        Ok(s) => s,
        Err(e) => {
            system.stop().await;
            return Err(e).context("switchboard up failed");
        }
    };
    print_ready(&summaries, system.context_file(), dashboard_url.as_deref());

    system.run_until(shutdown).await;
    if let Some(dashboard) = dashboard {
        dashboard.abort();
    }
    say(format_args!("switchboard: stopped"));
    Ok(())
}

fn print_ready(
    summaries: &[ServiceSummary],
    context_file: Option<&std::path::Path>,
    dashboard: Option<&str>,
) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<15} {:<10} {:>9}  ENDPOINTS",
        "SERVICE", "VERSION", "INSTANCES"
    );
    for s in summaries {
        let endpoints = if s.endpoints.is_empty() {
            "-".to_owned()
        } else {
            s.endpoints.join(", ")
        };
        let _ = writeln!(
            out,
            "{:<15} {:<10} {:>9}  {}",
            s.name,
            s.versions.join(","),
            s.instances,
            endpoints
        );
    }
    let _ = writeln!(out);
    if let Some(path) = context_file {
        let _ = writeln!(out, "nats CLI context written to {}", path.display());
        let _ = writeln!(out, "  try: nats --context {CONTEXT_NAME} micro ls");
    }
    if let Some(url) = dashboard {
        let _ = writeln!(out, "dashboard: {url} (loopback only)");
    }
    let _ = writeln!(out, "switchboard: ready (Ctrl-C stops everything)");
    let _ = out.flush();
}

/// Prints a line on stdout. A closed stdout (`switchboard up | head`, a
/// terminal gone) must not turn an orderly shutdown into a panic.
fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// `NAME=N` of `--instances`.
fn instances_arg(text: &str) -> Result<(String, usize), String> {
    let (name, count) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=N"))?;
    let count: usize = count
        .parse()
        .ok()
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| format!("{text:?}: N is a number from 1 to 16"))?;
    Ok((name.to_owned(), count))
}
