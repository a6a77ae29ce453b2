//! nats-server's log, carried into `tracing` and kept for diagnostics.
//!
//! The server writes lines like `[pid] 2026/11/28 03:32:35.206047 [FTL] text`
//! to stderr. Each becomes a `tracing` event at the matching level (target
//! `nats_server`), and the last few are kept so a failed start can say why in
//! one line instead of "exited with status 1".

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::ServerError;

const KEPT_LINES: usize = 20;

/// The most recent lines of one server's output, shared with the reader task.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecentLines(Arc<Mutex<VecDeque<String>>>);

impl RecentLines {
    fn push(&self, line: String) {
        if let Ok(mut lines) = self.0.lock() {
            if lines.len() == KEPT_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Reads `output` line by line until it closes, logging and keeping each line.
pub(crate) async fn forward(
    output: impl AsyncRead + Unpin,
    server_name: String,
    recent: RecentLines,
) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let (level, text) = split_level(&line);
        match level {
            "FTL" | "ERR" => {
                tracing::error!(target: "nats_server", server = %server_name, "{text}")
            }
            "WRN" => tracing::warn!(target: "nats_server", server = %server_name, "{text}"),
            "DBG" => tracing::debug!(target: "nats_server", server = %server_name, "{text}"),
            "TRC" => tracing::trace!(target: "nats_server", server = %server_name, "{text}"),
            _ => tracing::info!(target: "nats_server", server = %server_name, "{text}"),
        }
        recent.push(line);
    }
}

/// Splits `[pid] date time [LVL] text` into `("LVL", "text")`; other lines
/// (such as start-up errors printed before logging starts) are errors.
fn split_level(line: &str) -> (&str, &str) {
    for level in ["INF", "WRN", "ERR", "FTL", "DBG", "TRC"] {
        let tag = format!("[{level}] ");
        if let Some(at) = line.find(&tag) {
            return (level, &line[at + tag.len()..]);
        }
    }
    ("ERR", line)
}

/// Turns the output of a server that died during start-up into the error a
/// person can act on.
pub(crate) fn classify_early_exit(
    status: String,
    lines: &[String],
    config_file: Option<&str>,
) -> ServerError {
    for line in lines.iter().rev() {
        if line.contains("address already in use") {
            let addr = line
                .split("listen tcp ")
                .nth(1)
                .and_then(|rest| rest.split(": bind").next())
                .unwrap_or("a port")
                .to_owned();
            return ServerError::PortInUse { addr };
        }
        // Configuration problems are printed before logging starts, as
        // `nats-server: <what is wrong>`.
        if let Some(message) = line.strip_prefix("nats-server: ") {
            let message = match config_file {
                Some(file) if !message.contains(file) => format!("{file}: {message}"),
                _ => message.to_owned(),
            };
            return ServerError::BadConfig { message };
        }
    }
    let last_log = lines
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(|l| split_level(l).1)
        .collect::<Vec<_>>()
        .join(" | ");
    ServerError::ExitedEarly { status, last_log }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn busy_client_port_names_the_address() {
        let out = lines(&[
            "[1] 2026/11/28 03:32:35.202902 [INF]   ID:       NACX",
            r#"[1] 2026/11/28 03:32:35.206047 [FTL] Error listening on port: 127.0.0.1:39385, "listen tcp 127.0.0.1:39385: bind: address already in use""#,
        ]);
        match classify_early_exit("exit status: 1".into(), &out, None) {
            ServerError::PortInUse { addr } => assert_eq!(addr, "127.0.0.1:39385"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn busy_monitor_port_names_the_address() {
        let out = lines(&[
            "[2] 2026/11/28 03:32:35.220469 [FTL] Can't start monitoring: can't listen to the monitor port: listen tcp 127.0.0.1:8222: bind: address already in use",
        ]);
        assert!(matches!(
            classify_early_exit("1".into(), &out, None),
            ServerError::PortInUse { addr } if addr == "127.0.0.1:8222"
        ));
    }

    #[test]
    fn config_error_names_the_file() {
        let out = lines(&["nats-server: variable reference for 'SB_X' on line 3 can not be found"]);
        match classify_early_exit("1".into(), &out, Some("nats.conf")) {
            ServerError::BadConfig { message } => {
                assert_eq!(
                    message,
                    "nats.conf: variable reference for 'SB_X' on line 3 can not be found"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn levels_are_recognised() {
        assert_eq!(
            split_level("[1] 2026/11/28 03:32:35.1 [WRN] careful"),
            ("WRN", "careful")
        );
        assert_eq!(split_level("plain"), ("ERR", "plain"));
    }
}
