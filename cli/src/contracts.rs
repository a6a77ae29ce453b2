//! Reading a service's contract from its binary: `<binary> --contract`
//! prints it as JSON (every binary made with the kit's `service_main!`).
//!
//! This is how `switchboard up`, `switchboard generate` and `switchboard
//! permissions` learn what a service serves, calls, publishes, consumes and
//! owns, for a binary of this workspace and one built anywhere else alike.

use std::path::{Path, PathBuf};
use std::time::Duration;

use switchboard::contract::{CONTRACT_FLAG, Contract};

/// The longest a binary may take to print its contract.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a binary's contract could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The binary is missing.
    #[error(
        "service binary {} not found; build it first (`cargo build --workspace`, or `cargo build` \
         in its own crate), or point --bin-dir at the folder it is in",
        path.display()
    )]
    Missing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// Running it failed, or it did not answer in time.
    #[error("cannot run {} {CONTRACT_FLAG}: {message}", path.display())]
    Run {
        /// The binary.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// It answered with something other than a contract.
    #[error(
        "{} {CONTRACT_FLAG} printed no contract ({message}); is it a service built with \
         `switchboard::service_main!(<crate>::contract, <crate>::run)`?",
        path.display()
    )]
    Invalid {
        /// The binary.
        path: PathBuf,
        /// What was wrong: the exit status and its stderr, or the JSON error.
        message: String,
    },
    /// The binary's contract names another service than its entry.
    #[error(
        "{} declares service {declared:?}, but is listed as {listed:?}: name the binary after \
         its service",
        path.display()
    )]
    Misnamed {
        /// The binary.
        path: PathBuf,
        /// Its contract's name.
        declared: String,
        /// The name it is listed under.
        listed: String,
    },
}

/// Runs `binary --contract` and reads what it prints; the contract must
/// name the service `name`.
///
/// # Errors
///
/// A missing binary, one that fails or prints no contract, or a contract
/// of another name.
pub async fn read(name: &str, binary: &Path) -> Result<Contract, ContractError> {
    if !binary.is_file() {
        return Err(ContractError::Missing {
            path: binary.to_path_buf(),
        });
    }
    let run_error = |message: String| ContractError::Run {
        path: binary.to_path_buf(),
        message,
    };
    let output = tokio::process::Command::new(binary)
        .arg(CONTRACT_FLAG)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(TIMEOUT, output)
        .await
        .map_err(|_| run_error(format!("no answer within {TIMEOUT:?}")))?
        .map_err(|e| run_error(e.to_string()))?;
    let invalid = |message: String| ContractError::Invalid {
        path: binary.to_path_buf(),
        message,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(invalid(format!(
            "{}: {}",
            output.status,
            switchboard::limits::truncate(stderr.trim(), 300)
        )));
    }
    let contract: Contract =
        serde_json::from_slice(&output.stdout).map_err(|e| invalid(e.to_string()))?;
    if contract.name != name {
        return Err(ContractError::Misnamed {
            path: binary.to_path_buf(),
            declared: contract.name,
            listed: name.to_owned(),
        });
    }
    Ok(contract)
}

/// The contracts of every `(name, binary)`, in order.
///
/// # Errors
///
/// The first binary whose contract cannot be read.
pub async fn read_all(binaries: &[(String, PathBuf)]) -> Result<Vec<Contract>, ContractError> {
    let reads = binaries.iter().map(|(name, path)| read(name, path));
    futures::future::try_join_all(reads).await
}
