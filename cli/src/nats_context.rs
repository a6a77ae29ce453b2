//! The `nats` CLI context for a running system.
//!
//! The CLI stores contexts as JSON files (ADR-21) in
//! `$XDG_CONFIG_HOME/nats/context/<name>.json`. Writing one lets an operator
//! type `nats --context switchboard micro ls` without copying a password. The
//! selected context (`context.txt`) is left alone: we add a choice, we do not
//! make it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The context name `switchboard up` writes.
pub const CONTEXT_NAME: &str = "switchboard";

/// A `nats` CLI context (the fields Switchboard sets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsContext {
    /// Shown by `nats context ls`.
    pub description: String,
    /// Server URL(s), comma separated.
    pub url: String,
    /// User name; empty for none.
    #[serde(default)]
    pub user: String,
    /// Password; empty for none.
    #[serde(default)]
    pub password: String,
}

/// `$XDG_CONFIG_HOME/nats/context`, falling back to `~/.config/nats/context`.
pub fn context_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("nats").join("context"))
}

impl NatsContext {
    /// Writes `<dir>/<name>.json`, readable by the owner only (it holds a
    /// password), and returns its path.
    ///
    /// # Errors
    ///
    /// When the folder or file cannot be written.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.json"));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(&json)?;
        file.write_all(b"\n")?;
        Ok(path)
    }

    /// Reads a context file.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or is not a context.
    pub fn read(path: &Path) -> std::io::Result<NatsContext> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}
