//! Stopping child processes politely, then firmly.
//!
//! Both the embedded nats-server and the supervised services are stopped the
//! same way: SIGTERM (the signal both treat as "drain and exit"), a bounded
//! wait, then SIGKILL. The child is always reaped, so no zombie or orphan
//! outlives the caller. What `/proc` says about a process (parent, state,
//! CPU time, resident memory) is read here too, for `up`, the tests that
//! check nothing is left behind, and the benchmarks.

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

/// Reads `/proc/<pid>/stat` (Linux) and hands `read` the fields after the
/// command name: `[0]` state, `[1]` parent, `[11]` user and `[12]` system
/// CPU time in clock ticks.
fn with_stat<T>(pid: u32, read: impl FnOnce(&[&str]) -> Option<T>) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    read(&fields)
}

/// The parent of a process (Linux).
pub fn parent_of(pid: u32) -> Option<u32> {
    with_stat(pid, |fields| fields.get(1)?.parse().ok())
}

/// The state letter of a process (`R`, `S`, `Z` for a zombie, …; Linux).
pub fn state(pid: u32) -> Option<char> {
    with_stat(pid, |fields| fields.first()?.chars().next())
}

/// User plus system CPU time a process has used (Linux).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    with_stat(pid, |fields| {
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // USER_HZ is 100 on every Linux ABI.
        Some(Duration::from_millis(ticks * 10))
    })
}

/// Resident memory of a process in KiB (`VmRSS`, Linux).
pub fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    value.split_whitespace().next()?.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_facts_of_this_process() {
        let me = std::process::id();
        assert_eq!(parent_of(me), Some(std::os::unix::process::parent_id()));
        assert!(matches!(state(me), Some('R' | 'S')), "{:?}", state(me));
        assert!(resident_kib(me).is_some_and(|kib| kib > 0));
        assert!(cpu_time(me).is_some());
        assert_eq!(state(u32::MAX), None);
    }
}
