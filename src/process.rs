//! Stopping child processes politely, then firmly.
//!
//! Both the embedded nats-server and the supervised services are stopped the
//! same way: SIGTERM (the signal both treat as "drain and exit"), a bounded
//! wait, then SIGKILL. The child is always reaped, so no zombie or orphan
//! outlives the caller.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::process::Child;

/// How a stopped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited by itself within the grace period after SIGTERM.
    Gracefully(ExitStatus),
    /// It had to be killed with SIGKILL.
    Killed,
    /// It had already exited before we asked.
    AlreadyExited(ExitStatus),
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs; always reaps the child.
///
/// # Errors
///
/// Only when waiting on the child fails at the OS level.
pub async fn stop(child: &mut Child, grace: Duration) -> std::io::Result<Stopped> {
    if let Some(status) = child.try_wait()? {
        return Ok(Stopped::AlreadyExited(status));
    }
    if let Some(pid) = child.id() {
        send(pid, Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => Ok(Stopped::Gracefully(status?)),
        Err(_) => {
            child.kill().await?;
            Ok(Stopped::Killed)
        }
    }
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn send(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        // ESRCH means it already exited, which is what we wanted.
        let _ = signal::kill(Pid::from_raw(raw), signal);
    }
}

/// Whether a process with this PID exists (zombies count as existing).
pub fn exists(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(raw) => !matches!(
            signal::kill(Pid::from_raw(raw), None),
            Err(nix::errno::Errno::ESRCH)
        ),
        Err(_) => false,
    }
}

/// The parent of a process, from `/proc/<pid>/stat` (Linux).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The direct children of a process (Linux), sorted.
pub fn children(parent: u32) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
                .filter(|pid| parent_of(*pid) == Some(parent))
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}
