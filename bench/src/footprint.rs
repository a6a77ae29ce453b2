//! Footprint: resident memory of each idle service process and of the whole
//! `switchboard up` tree, and the time from `up` to ready — measured on the
//! release binaries next to this one. Baselines from the same run: a bare
//! nats-server's own start to ready (what `up` cannot beat), and the
//! issue's 15 MB per idle service.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::testing::{TestServer, free_port};

use crate::report::Report;

pub async fn run(report: &mut Report) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("no folder for the benchmark binary"))?;
    let switchboard = bin_dir.join("switchboard");
    anyhow::ensure!(
        switchboard.is_file(),
        "{} is missing: build with `cargo build --release --workspace --bins`",
        switchboard.display()
    );
    let dir = tempfile_dir()?;
    println!("footprint (release binaries, idle)");
    let started = Instant::now();
    let mut bare = TestServer::start().await?;
    let bare_ready = started.elapsed();
    bare.stop().await?;
    let started = Instant::now();
    let mut up = Command::new(&switchboard)
        .args(["up", "--no-context", "--port", &free_port()?.to_string()])
        .args(["--http-port", &free_port()?.to_string()])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port()?)])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = up
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut ready = None;
    for line in lines.by_ref() {
        if line?.contains("switchboard: ready") {
            ready = Some(started.elapsed());
            break;
        }
    }
    // Keep draining stdout so `up` never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let ready = ready.ok_or_else(|| anyhow::anyhow!("up never became ready"))?;
    tokio::time::sleep(Duration::from_secs(2)).await; // idle
    let mut total = rss_kib(up.id());
    let mut largest_service_kib = 0;
    println!(
        "  {:<38} {:>8.0} ms",
        "nats-server alone → ready",
        bare_ready.as_secs_f64() * 1000.0
    );
    println!(
        "  {:<38} {:>8.0} ms",
        "switchboard up → ready",
        ready.as_secs_f64() * 1000.0
    );
    for pid in switchboard::process::children(up.id()) {
        let name = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let rss = rss_kib(pid);
        total += rss;
        if name != "nats-server" {
            largest_service_kib = largest_service_kib.max(rss);
        }
        println!("  {:<38} {:>8.1} MB RSS", name, rss as f64 / 1024.0);
        report.measurements.push(crate::report::Measurement {
            scenario: "footprint".into(),
            variant: format!("{name} RSS MB"),
            throughput: rss as f64 / 1024.0,
            latency_us: None,
            ratio: Some(1.0),
            cpu_us_per_op: None,
        });
    }
    println!(
        "  {:<38} {:>8.1} MB RSS",
        "total (up + server + services)",
        total as f64 / 1024.0
    );
    // Time and memory: smaller is better, so these ratios are "how many
    // times the baseline", not speed-ups.
    report.compare(
        "footprint",
        "up → ready vs nats-server alone → ready (time)",
        ready.as_secs_f64() / bare_ready.as_secs_f64().max(1e-9),
    );
    // The headline: against the target, not against a 35 ms baseline whose
    // few milliseconds of noise move the ratio above by whole units.
    report.compare(
        "footprint",
        "up → ready vs the 1.5 s target",
        ready.as_secs_f64() / 1.5,
    );
    report.compare(
        "footprint",
        "largest idle service RSS vs the 15 MB target",
        largest_service_kib as f64 / (15.0 * 1024.0),
    );
    report.measurements.push(crate::report::Measurement {
        scenario: "footprint".into(),
        variant: "up to ready ms".into(),
        throughput: ready.as_secs_f64() * 1000.0,
        latency_us: None,
        ratio: Some(1.0),
        cpu_us_per_op: None,
    });
    switchboard::process::send(up.id(), nix_sigint());
    let _ = up.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn nix_sigint() -> nix::sys::signal::Signal {
    nix::sys::signal::Signal::SIGINT
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("switchboard-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// VmRSS of a process in KiB (0 if unreadable).
fn rss_kib(pid: u32) -> u64 {
    switchboard::process::resident_kib(pid).unwrap_or(0)
}
