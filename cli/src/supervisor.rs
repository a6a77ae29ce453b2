//! Keeping service processes alive, and stopping them on request.
//!
//! Each supervised process runs in a task of its own: it is started, its
//! output is forwarded line by line (prefixed by the caller), and when it
//! exits unexpectedly it is started again after an exponential, jittered
//! delay. A process that stayed up for a while counts as healthy again, so
//! the delay starts over. Stopping sends SIGTERM (the service drains), waits
//! a grace period, then SIGKILL — and always reaps the child.
//!
//! The child's stdin is a pipe held by the supervisor: if the supervisor dies
//! without cleaning up (even by SIGKILL), the child reads end-of-file and
//! stops (see [`switchboard::shutdown::SUPERVISED_ENV`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use switchboard::process;
use switchboard::shutdown::SUPERVISED_ENV;

/// Receives each output line of a supervised process: `(name, line)`.
pub type LineSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Name used in logs and prefixes.
    pub name: String,
    /// Executable.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment (added to the supervisor's own).
    pub env: Vec<(String, String)>,
}

/// When and how to restart, and how long a stop may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// First restart delay; default 250 ms.
    pub min_delay: Duration,
    /// Longest restart delay; default 30 s.
    pub max_delay: Duration,
    /// Uptime after which a crash counts as new (delay starts over); default 30 s.
    pub stable_after: Duration,
    /// SIGTERM-to-SIGKILL grace when stopping; default 10 s.
    pub stop_grace: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
        }
    }
}

impl RestartPolicy {
    /// The delays before each restart: exponential from `min_delay` to
    /// `max_delay`, with jitter (so processes that died together do not
    /// come back in lockstep). Services and the embedded server share it.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// A process kept alive by a background task.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    stop: watch::Sender<bool>,
    pid: watch::Receiver<Option<u32>>,
    restarts: watch::Receiver<u32>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Not stopped with `stop()` (e.g. a panic unwinds): abort the task,
        // which drops the child, which kill_on_drop SIGKILLs.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Supervised {
    /// Starts supervising `spec` right away.
    pub fn spawn(spec: ProcessSpec, policy: RestartPolicy, sink: LineSink) -> Supervised {
        let (stop, stop_rx) = watch::channel(false);
        let (pid_tx, pid) = watch::channel(None);
        let (restarts_tx, restarts) = watch::channel(0);
        let name = spec.name.clone();
        let task = tokio::spawn(supervise(spec, policy, sink, stop_rx, pid_tx, restarts_tx));
        Supervised {
            name,
            stop,
            pid,
            restarts,
            task: Some(task),
        }
    }

    /// Name of the process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// PID of the current incarnation, if it is running.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.borrow()
    }

    /// How many times it was restarted after exiting.
    pub fn restarts(&self) -> u32 {
        *self.restarts.borrow()
    }

    /// Stops the process (SIGTERM, grace, SIGKILL) and ends supervision.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let Some(task) = self.task.take() else { return };
        if let Err(error) = task.await {
            tracing::error!(process = %self.name, %error, "supervisor task failed");
        }
    }
}

async fn supervise(
    spec: ProcessSpec,
    policy: RestartPolicy,
    sink: LineSink,
    mut stop: watch::Receiver<bool>,
    pid: watch::Sender<Option<u32>>,
    restarts: watch::Sender<u32>,
) {
    let mut delays = policy.delays();
    loop {
        let started = tokio::time::Instant::now();
        match start(&spec, &sink) {
            Ok((mut child, readers)) => {
                let _ = pid.send(child.id());
                tracing::info!(process = %spec.name, pid = child.id(), "started");
                tokio::select! {
                    status = child.wait() => {
                        let _ = pid.send(None);
                        for reader in readers {
                            let _ = reader.await;
                        }
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        tracing::warn!(process = %spec.name, %status, "exited unexpectedly");
                    }
                    () = stop_requested(&mut stop) => {
                        match process::stop(&mut child, policy.stop_grace).await {
                            Ok(stopped) => tracing::info!(process = %spec.name, ?stopped, "stopped"),
                            Err(error) => tracing::error!(process = %spec.name, %error, "cannot stop"),
                        }
                        let _ = pid.send(None);
                        for reader in readers {
                            let _ = reader.await;
                        }
                        return;
                    }
                }
            }
            Err(error) => {
                tracing::error!(process = %spec.name, program = %spec.program.display(), %error, "cannot start");
            }
        }
        if started.elapsed() >= policy.stable_after {
            delays = policy.delays();
        }
        let delay = delays.next().unwrap_or(policy.max_delay);
        tracing::info!(process = %spec.name, ?delay, "restarting after a delay");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop_requested(&mut stop) => return,
        }
        restarts.send_modify(|n| *n += 1);
    }
}

/// Resolves once a stop was requested (or the handle is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Spawns one incarnation; the returned tasks end when its output closes.
fn start(spec: &ProcessSpec, sink: &LineSink) -> std::io::Result<(Child, Vec<JoinHandle<()>>)> {
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(SUPERVISED_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: Ctrl-C reaches only the supervisor, which
        // stops the children in order.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let mut readers = Vec::new();
    // Keep stdin open for the child's lifetime by moving it into a reader task.
    let stdin = child.stdin.take();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(forward(
            out,
            spec.name.clone(),
            sink.clone(),
            stdin,
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(forward(
            err,
            spec.name.clone(),
            sink.clone(),
            None::<()>,
        )));
    }
    Ok((child, readers))
}

async fn forward<T>(
    output: impl AsyncRead + Unpin,
    name: String,
    sink: LineSink,
    _keep_open: Option<T>,
) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        sink(&name, &line);
    }
}
