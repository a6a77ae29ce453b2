//! `switchboard new`: a service that compiles, passes clippy, has a test on
//! the kit's harness and runs under `up` with its own least-privilege user
//! on the first try.
//!
//! Two shapes. In a workspace like this one (a `Cargo.toml` with a
//! `[workspace]` whose members include `services/*`, and a
//! `switchboard.toml`): the crate goes to `services/<name>/`, inheriting the
//! workspace's dependencies and lints, and its name is added to
//! `switchboard.toml` — the one registration line. Standalone
//! (`--standalone`): a crate in a folder of its own, with its own workspace
//! and `Cargo.lock`, depending on the kit by path and patching async-nats
//! for the drain guarantee; `up --with <its binary>` runs it.
//!
//! The service is a complete example of the parts: an endpoint with an
//! HTTP route, an event, a durable idempotent consumer, a KV bucket, and
//! the contract that declares them all. The templates are the `*.in` files
//! beside this one.

use std::path::{Path, PathBuf};

const LIB: &str = include_str!("lib.rs.in");
const MAIN: &str = include_str!("main.rs.in");
const TEST: &str = include_str!("test.rs.in");
const MEMBER_TOML: &str = include_str!("member.toml.in");
const STANDALONE_TOML: &str = include_str!("standalone.toml.in");

/// Longest service name: it is a subject token, a stream, bucket and
/// durable name, and the NATS user.
pub const NAME_MAX: usize = 32;

/// Where the new service goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `services/<name>/` of the workspace at `root`, registered in its
    /// `switchboard.toml`.
    Member {
        /// The workspace root.
        root: PathBuf,
    },
    /// `<dir>/<name>/`, a crate and workspace of its own, depending on the
    /// kit at `kit`.
    Standalone {
        /// The folder the crate's folder is made in.
        dir: PathBuf,
        /// The switchboard repository (the kit's crate root).
        kit: PathBuf,
    },
}

/// Why the service could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name breaks the naming rules.
    #[error(
        "invalid service name {0:?}: start with a lowercase letter, then lowercase letters, \
         digits, '-' or '_', at most {NAME_MAX} characters"
    )]
    InvalidName(String),
    /// The folder is not a workspace `new` can add to.
    #[error(
        "{} is not a workspace with a switchboard.toml and `services/*` members; run `switchboard \
         new` in the switchboard repository (or a workspace like it), or make a crate of its own \
         with --standalone",
        root.display()
    )]
    NotAWorkspace {
        /// The folder.
        root: PathBuf,
    },
    /// Something is already there.
    #[error("{} already exists; choose another name or remove it", path.display())]
    Exists {
        /// What exists.
        path: PathBuf,
    },
    /// `switchboard.toml` is not in the one-entry-per-line form `new` edits.
    #[error(
        "cannot add {name} to {}: list the services one per line (`services = [` … `]`), or \
         add the line yourself",
        path.display()
    )]
    Manifest {
        /// The file.
        path: PathBuf,
        /// The service.
        name: String,
    },
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// What was written.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// The crate's folder.
    pub dir: PathBuf,
    /// Every file written or changed.
    pub files: Vec<PathBuf>,
}

/// Checks a new service's name.
///
/// # Errors
///
/// [`ScaffoldError::InvalidName`].
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok && name.len() <= NAME_MAX {
        Ok(())
    } else {
        Err(ScaffoldError::InvalidName(name.to_owned()))
    }
}

/// Makes the service `name` in `shape`.
///
/// # Errors
///
/// A bad name, a folder that is not a workspace, something already there,
/// or a failed write (nothing is left half made when a check fails; a
/// failed write may leave the files written before it).
pub fn make(name: &str, shape: &Shape) -> Result<Made, ScaffoldError> {
    check_name(name)?;
    let (dir, manifest) = match shape {
        Shape::Member { root } => {
            let manifest = root.join(crate::manifest::FILE_NAME);
            if !manifest.is_file() || !is_services_workspace(&root.join("Cargo.toml")) {
                return Err(ScaffoldError::NotAWorkspace { root: root.clone() });
            }
            (root.join("services").join(name), Some(manifest))
        }
        Shape::Standalone { dir, .. } => (dir.join(name), None),
    };
    if dir.exists() {
        return Err(ScaffoldError::Exists { path: dir });
    }
    // The registration line first: a manifest `new` cannot edit stops it
    // before anything is written.
    let registered = match &manifest {
        Some(path) => {
            let text = read(path)?;
            let updated = crate::manifest::with_service(&text, name).ok_or_else(|| {
                ScaffoldError::Manifest {
                    path: path.clone(),
                    name: name.to_owned(),
                }
            })?;
            Some((path.clone(), updated))
        }
        None => None,
    };
    let fill = |template: &str| fill(template, name, shape);
    let cargo = match shape {
        Shape::Member { .. } => fill(MEMBER_TOML),
        Shape::Standalone { .. } => fill(STANDALONE_TOML),
    };
    let mut files = vec![
        (dir.join("Cargo.toml"), cargo),
        (dir.join("src/lib.rs"), fill(LIB)),
        (dir.join("src/main.rs"), fill(MAIN)),
        (dir.join(format!("tests/{name}.rs")), fill(TEST)),
    ];
    if let Shape::Standalone { kit, .. } = shape {
        files.push((dir.join(".gitignore"), "/target\n".to_owned()));
        // The versions the kit was built and tested with, as a start: the
        // first build resolves nothing new, and cargo keeps its own lock
        // from there on.
        if let Ok(lock) = std::fs::read_to_string(kit.join("Cargo.lock")) {
            files.push((dir.join("Cargo.lock"), lock));
        }
    }
    files.extend(registered);
    let mut written = Vec::new();
    for (path, text) in files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ScaffoldError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| ScaffoldError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(Made {
        dir,
        files: written,
    })
}

fn read(path: &Path) -> Result<String, ScaffoldError> {
    std::fs::read_to_string(path).map_err(|source| ScaffoldError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether the `Cargo.toml` at `path` is a workspace whose members include
/// `services/*` (so a crate there is a member without another edit).
fn is_services_workspace(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(value) = text.parse::<toml::Table>() else {
        return false;
    };
    value
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .is_some_and(|members| members.iter().any(|m| m.as_str() == Some("services/*")))
}

/// A template with the service's names in it.
fn fill(template: &str, name: &str, shape: &Shape) -> String {
    let kit = match shape {
        Shape::Standalone { kit, .. } => kit.display().to_string(),
        Shape::Member { .. } => String::new(),
    };
    template
        .replace("{{name}}", name)
        .replace("{{crate}}", &name.replace('-', "_"))
        .replace("{{STREAM}}", &name.to_uppercase().replace('-', "_"))
        .replace("{{kit}}", &kit)
}

/// The switchboard repository this binary was built from (the kit a
/// standalone service depends on by default).
pub fn kit_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["greeter", "pay-ments", "a1", "x_y"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Greeter", "1st", "-x", "a.b", "a b", &"x".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_member_is_registered_and_a_non_workspace_refused() -> Result<(), Box<dyn std::error::Error>>
    {
        let root = tempfile::tempdir()?;
        let shape = Shape::Member {
            root: root.path().to_path_buf(),
        };
        assert!(matches!(
            make("greeter", &shape),
            Err(ScaffoldError::NotAWorkspace { .. })
        ));
        std::fs::write(
            root.path().join("Cargo.toml"),
            "[workspace]\nmembers = [\"services/*\"]\n",
        )?;
        std::fs::write(
            root.path().join("switchboard.toml"),
            "services = [\n    \"alpha\",\n]\n",
        )?;
        let made = make("greeter-two", &shape)?;
        assert_eq!(made.dir, root.path().join("services/greeter-two"));
        let manifest = std::fs::read_to_string(root.path().join("switchboard.toml"))?;
        assert!(manifest.contains("\"greeter-two\""), "{manifest}");
        let lib = std::fs::read_to_string(made.dir.join("src/lib.rs"))?;
        assert!(lib.contains("\"greeter-two.hello\"") && lib.contains("\"GREETER_TWO\""));
        assert!(!lib.contains("{{"), "a placeholder is left");
        let main = std::fs::read_to_string(made.dir.join("src/main.rs"))?;
        assert!(main.contains("greeter_two::contract, greeter_two::run"));
        assert!(matches!(
            make("greeter-two", &shape),
            Err(ScaffoldError::Exists { .. })
        ));
        Ok(())
    }
}
