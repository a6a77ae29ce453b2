//! Against peers: the same echo, at the same concurrency, in frameworks
//! people would otherwise pick — an Express JSON endpoint (driven over
//! keep-alive HTTP by the same client pool as the HTTP scenario), Moleculer
//! with its NATS transporter (two brokers, one calling the other through the
//! same nats-server), and a `@nats-io/services` JavaScript service (called
//! with the Switchboard client, like a Switchboard endpoint). Each is
//! compared with a Switchboard endpoint + client measured in the same run.
//!
//! The peers are our own scripts in `bench/peers/` driving the frameworks'
//! public npm packages, which `bench/run` installs into
//! `bench/peers/node_modules`; without Node.js the scenario is skipped, said
//! so, and the rest of the run goes on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Deserialize;
use switchboard::client::Client;
use switchboard::testing::{TestServer, free_port};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Settings;
use crate::drive::{TypedCall, drive};
use crate::echo::{self, Payload};
use crate::http::{HttpCall, http_client};
use crate::report::{Report, Run};
use crate::rounds;

/// How long a peer may take to say "ready".
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    if !dir.join("node_modules").is_dir() {
        println!(
            "peers: skipped ({} is missing: run bench/run, which installs them with npm)",
            dir.join("node_modules").display()
        );
        return Ok(());
    }
    let server = TestServer::start().await?;
    let pid = server.pid();
    let url = server.url();
    let _service = echo::start_service(&server.client().await?).await?;
    let client = Client::new(server.client().await?);
    let call = |subject: &'static str| TypedCall {
        client: client.clone(),
        subject,
        payload: Payload::of(settings.payload),
    };
    let in_flight = settings.target_in_flight();
    let scenario = format!("peers c={in_flight}");
    println!("{scenario} ({} bytes)", settings.payload);

    // Every peer runs for the whole scenario; each round measures every
    // peer between two runs of Switchboard (see `rounds`). CPU is not compared: a peer's own process is not
    // measured, only ours and nats-server.
    let port = free_port()?;
    let mut express = Peer::start(&dir, "express.js", &[&port.to_string()]).await?;
    let mut moleculer = Peer::start(&dir, "moleculer-service.js", &[&url]).await?;
    let mut nats_js = Peer::start(&dir, "nats-service.js", &[&url]).await?;
    let http = HttpCall {
        http: http_client(),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        payload: Payload::of(settings.payload),
    };
    let names = [
        "switchboard endpoint + client",
        "express (node)",
        "moleculer (node, NATS transporter)",
        "@nats-io/services (node)",
    ];
    let runs = rounds::interleave(settings.rounds, names.len(), |i| {
        let (call, http, url) = (call, http.clone(), url.clone());
        let dir = dir.clone();
        async move {
            let run = match i {
                0 => drive(pid, in_flight, settings.duration, call("bench.echo")).await?,
                1 => drive(None, in_flight, settings.duration, http).await?,
                2 => {
                    Peer::output(
                        &dir,
                        "moleculer-caller.js",
                        &[
                            &url,
                            &in_flight.to_string(),
                            &settings.duration.as_millis().to_string(),
                            &settings.payload.to_string(),
                        ],
                        settings.duration + START_TIMEOUT,
                    )
                    .await?
                }
                _ => drive(pid, in_flight, settings.duration, call("jsbench.echo")).await?,
            };
            Ok(Run { cpu: None, ..run })
        }
    })
    .await;
    express.stop().await;
    moleculer.stop().await;
    nats_js.stop().await;
    let measured = runs?;
    report.summarize(&scenario, names[0], &measured.baseline);
    for (v, peer) in ["express", "moleculer", "@nats-io/services"]
        .iter()
        .enumerate()
    {
        let runs: Vec<&Run> = measured.variants[v].iter().map(|b| &b.run).collect();
        report.summarize(&scenario, names[v + 1], runs);
        // Switchboard (the bracketing runs) over the peer.
        let ratios: Vec<f64> = measured
            .throughput_ratios(v)
            .iter()
            .map(|r| 1.0 / r.max(1e-9))
            .collect();
        rounds::record(
            report,
            &scenario,
            &format!("switchboard vs {peer}"),
            &ratios,
            &[],
        );
    }
    Ok(())
}

/// A Node.js peer process, stopped by its own PID.
struct Peer {
    child: Child,
    script: &'static str,
}

impl Peer {
    /// Starts `node script args…` in `dir` and waits for its "ready" line.
    async fn start(dir: &Path, script: &'static str, args: &[&str]) -> anyhow::Result<Peer> {
        let mut child = node(dir, script, args)?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut peer = Peer { child, script };
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if line.trim() == "ready" {
                    return Ok(true);
                }
            }
            Ok::<_, std::io::Error>(false)
        })
        .await;
        if !matches!(ready, Ok(Ok(true))) {
            peer.stop().await;
            anyhow::bail!("{script} did not start (see its errors above)");
        }
        // Keep reading so the peer never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(peer)
    }

    /// Runs `node script args…` to completion (at most `limit`; dropping
    /// the child kills it) and reads its one JSON line.
    async fn output(
        dir: &Path,
        script: &'static str,
        args: &[&str],
        limit: Duration,
    ) -> anyhow::Result<Run> {
        #[derive(Deserialize)]
        struct Result {
            ops: u64,
            elapsed_ms: f64,
            latency_us: [u64; 4],
        }
        let child = node(dir, script, args)?;
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .with_context(|| format!("{script} did not finish within {limit:?}"))??;
        anyhow::ensure!(
            output.status.success(),
            "{script} failed: {}",
            output.status
        );
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().last().context("no output")?;
        let result: Result =
            serde_json::from_str(line).with_context(|| format!("{script} printed {line:?}"))?;
        Ok(Run {
            ops: result.ops,
            took: Duration::from_secs_f64(result.elapsed_ms / 1000.0),
            latency_us: Some(result.latency_us),
            cpu: None,
        })
    }

    /// SIGTERM, then SIGKILL after a grace period; always waits for the exit.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            switchboard::process::send(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("{} did not stop on SIGTERM; killing it", self.script);
                    let _ = self.child.kill().await;
                    return;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

fn node(dir: &Path, script: &str, args: &[&str]) -> anyhow::Result<Child> {
    Command::new(node_binary())
        .arg(dir.join(script))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start node for {script}"))
}

fn node_binary() -> PathBuf {
    std::env::var_os("NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}
