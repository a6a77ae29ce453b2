//! `switchboard.toml`: which services `switchboard up` runs, and where
//! their binaries are.
//!
//! One list, in start order. An entry is a service binary's name (found
//! beside `switchboard`, where cargo builds every binary of the workspace)
//! or a path to a binary built anywhere else (it contains a `/`; relative
//! to the file). What each service *is* comes from the binary itself
//! (`--contract`), so this file is the whole registration of a service: one
//! line, which `switchboard new` writes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file's name, looked for in the current folder.
pub const FILE_NAME: &str = "switchboard.toml";
/// The reference system's list, used where no `switchboard.toml` is at
/// hand (so `up` also works outside the repository).
pub const BUILTIN: &str = include_str!("../../switchboard.toml");

/// The parsed file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Service names or binary paths, in start order.
    pub services: Vec<String>,
    /// The folder relative paths are read from.
    #[serde(skip)]
    pub base: PathBuf,
}

/// Why the manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid manifest.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its place.
        message: String,
    },
    /// A service is listed twice.
    #[error("{}: service {name} is listed twice", path.display())]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
}

impl Manifest {
    /// `./switchboard.toml` if it exists, else the built-in list.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or parsed.
    pub fn discover() -> Result<Manifest, ManifestError> {
        let local = Path::new(FILE_NAME);
        if local.is_file() {
            return Manifest::read(local);
        }
        Manifest::parse(BUILTIN, Path::new("(built in)"), PathBuf::from("."))
    }

    /// Reads the manifest at `path`.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or parsed.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Manifest::parse(&text, path, base)
    }

    fn parse(text: &str, path: &Path, base: PathBuf) -> Result<Manifest, ManifestError> {
        let mut manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        manifest.base = base;
        let mut seen = std::collections::BTreeSet::new();
        for entry in &manifest.services {
            let name = service_name(entry);
            if !seen.insert(name.to_owned()) {
                return Err(ManifestError::Duplicate {
                    path: path.to_path_buf(),
                    name: name.to_owned(),
                });
            }
        }
        Ok(manifest)
    }

    /// Each service's name and binary: names beside `bin_dir`, paths
    /// relative to the manifest's folder.
    pub fn binaries(&self, bin_dir: &Path) -> Vec<(String, PathBuf)> {
        self.services
            .iter()
            .map(|entry| resolve(entry, &self.base, bin_dir))
            .collect()
    }
}

/// An entry's service name and binary: a path (with a `/`) relative to
/// `base`, a name in `bin_dir`.
pub fn resolve(entry: &str, base: &Path, bin_dir: &Path) -> (String, PathBuf) {
    let binary = if entry.contains('/') {
        base.join(entry)
    } else {
        bin_dir.join(entry)
    };
    (service_name(entry).to_owned(), binary)
}

/// The service an entry names: a binary path's file name, or the entry.
pub fn service_name(entry: &str) -> &str {
    entry.rsplit('/').next().unwrap_or(entry)
}

/// `text` (a `switchboard.toml`) with `entry` added at the end of its
/// `services` list, comments and layout kept; `None` when the list is not
/// written one entry per line as `switchboard new` expects, or already has it.
pub fn with_service(text: &str, entry: &str) -> Option<String> {
    let parsed: Manifest = toml::from_str(text).ok()?;
    if parsed
        .services
        .iter()
        .any(|s| service_name(s) == service_name(entry))
    {
        return None;
    }
    let start = text.find("services = [")?;
    let close = start + text[start..].find(']')?;
    let line_start = text[..close].rfind('\n').map_or(0, |i| i + 1);
    if !text[line_start..close].trim().is_empty() {
        return None;
    }
    Some(format!(
        "{}    {},\n{}",
        &text[..line_start],
        toml_string(entry),
        &text[line_start..]
    ))
}

fn toml_string(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_list_parses_and_names_binaries_beside_switchboard() {
        let manifest = Manifest::parse(BUILTIN, Path::new("x"), PathBuf::from("/repo"));
        let binaries = manifest
            .map(|m| m.binaries(Path::new("/bin")))
            .unwrap_or_default();
        assert!(!binaries.is_empty());
        assert!(
            binaries
                .iter()
                .all(|(name, path)| path == &Path::new("/bin").join(name))
        );
    }

    #[test]
    fn a_path_is_relative_to_the_file_and_named_by_its_binary() {
        let text = "services = [\n    \"alpha\",\n    \"../elsewhere/target/debug/beta\",\n]\n";
        let manifest = Manifest::parse(text, Path::new("x"), PathBuf::from("/work/sys"));
        let binaries = manifest
            .map(|m| m.binaries(Path::new("/bin")))
            .unwrap_or_default();
        assert_eq!(
            binaries,
            vec![
                ("alpha".to_owned(), PathBuf::from("/bin/alpha")),
                (
                    "beta".to_owned(),
                    PathBuf::from("/work/sys/../elsewhere/target/debug/beta")
                ),
            ]
        );
    }

    #[test]
    fn adding_a_service_keeps_the_file_and_refuses_a_second_copy() {
        let text = "# comment\nservices = [\n    \"alpha\",\n]\n";
        let added = with_service(text, "beta").unwrap_or_default();
        assert_eq!(
            added,
            "# comment\nservices = [\n    \"alpha\",\n    \"beta\",\n]\n"
        );
        assert_eq!(with_service(&added, "beta"), None);
        let twice = Manifest::parse(
            "services = [\"a\", \"x/a\"]",
            Path::new("f"),
            PathBuf::from("."),
        );
        assert!(matches!(twice, Err(ManifestError::Duplicate { .. })));
        let unknown = Manifest::parse("servics = []", Path::new("f"), PathBuf::from("."));
        assert!(matches!(unknown, Err(ManifestError::Invalid { .. })));
    }
}
