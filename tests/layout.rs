//! The kit is a library strangers depend on: it names no service of the
//! reference system, and it holds no command-line, supervisor or dashboard
//! code (those are the `switchboard-cli` crate's).

mod common;

use std::path::Path;

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[test]
fn the_kit_names_no_reference_service() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {files:?}");
    let mut named = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            for service in common::SERVICES.iter() {
                let hit = line.match_indices(service).any(|(at, _)| {
                    let before = line[..at].chars().next_back();
                    let after = line[at + service.len()..].chars().next();
                    !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
                });
                if hit {
                    named.push(format!("{}:{}: {service}", file.display(), number + 1));
                }
            }
        }
    }
    assert!(
        named.is_empty(),
        "the kit names reference services:\n{}",
        named.join("\n")
    );
}

#[test]
fn the_kit_depends_on_no_command_line_or_dashboard_code() {
    let output =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "tree",
                "--offline",
                "-p",
                "switchboard",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output();
    let output = match output {
        Ok(output) if output.status.success() => output,
        other => panic!("cargo tree failed: {other:?}"),
    };
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(tree.lines().count() > 20, "{tree}");
    for forbidden in ["clap ", "switchboard-cli ", "fantoccini "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "the kit depends on {forbidden}"
        );
    }
}
