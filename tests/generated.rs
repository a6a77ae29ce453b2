//! The generated parts of `nats.conf`, `subjects.md` and `README.md` are
//! what the reference services' contracts imply: `switchboard generate
//! --check` (reading each binary's `--contract`, as `up` does) finds them
//! current. `switchboard generate` rewrites them.

mod common;

use std::process::Command;

#[test]
fn the_committed_documents_and_permissions_match_the_contracts() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let bin_dir = common::workspace_bin("switchboard")
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let output = Command::new(common::workspace_bin("switchboard"))
        .args(["generate", "--check", "--bin-dir"])
        .arg(&bin_dir)
        .current_dir(repo)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) => panic!("cannot run switchboard: {error}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    for file in ["nats.conf", "subjects.md", "README.md"] {
        assert!(
            stdout.contains(&format!("{file}: current")),
            "{file} was not checked: {stdout}"
        );
    }
}
