//! The gateway's generated documents pass the official tools, and a
//! schema-driven fuzzer finds nothing, against the real running system:
//!
//! - `openapi-spec-validator` (PyPI) on `/openapi.json`;
//! - `@asyncapi/parser` (npm) on `/asyncapi.json`;
//! - Schemathesis (`st run … --checks all`) on the live gateway: no 5xx,
//!   no schema-valid request rejected, no response that breaks its schema.
//!
//! `make test` installs the tools project-locally (`make test-tools`) and
//! sets `SWITCHBOARD_TEST_TOOLS`; the example count is bounded there
//! (`SWITCHBOARD_FUZZ_EXAMPLES`, default 20; `make fuzz` runs a long form).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use switchboard::testing::free_port;

use common::{System, start_system, test_tools};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn node_tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools")
}

fn run(command: &mut Command) -> Result<Output, Box<dyn std::error::Error>> {
    let output = command.output()?;
    Ok(output)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn fetch(
    system: &System,
    path: &str,
    dir: &Path,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let (status, _, document) = system.http.send("GET", path, None).await?;
    assert_eq!(status, 200, "{path}: {document}");
    let file = dir.join(path.trim_start_matches('/'));
    std::fs::write(&file, serde_json::to_vec_pretty(&document)?)?;
    Ok(file)
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_pass_the_official_tools_and_schemathesis_finds_nothing() -> TestResult {
    let Some(tools) = test_tools() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let system = start_system(dir.path(), free_port()?, free_port()?);

    let openapi = fetch(&system, "/openapi.json", dir.path()).await?;
    let validated = run(Command::new(tools.join("venv/bin/openapi-spec-validator")).arg(&openapi))?;
    assert!(
        validated.status.success(),
        "openapi-spec-validator:\n{}",
        text(&validated)
    );

    let asyncapi = fetch(&system, "/asyncapi.json", dir.path()).await?;
    let parsed = run(Command::new("node")
        .arg(node_tools().join("asyncapi-validate.mjs"))
        .arg(&asyncapi)
        .env("NODE_PATH", node_tools().join("node_modules")))?;
    assert!(
        parsed.status.success(),
        "@asyncapi/parser:\n{}",
        text(&parsed)
    );
    assert!(text(&parsed).contains("0 errors"), "{}", text(&parsed));

    let base = format!("http://{}", system.http.addr);
    let examples = std::env::var("SWITCHBOARD_FUZZ_EXAMPLES").unwrap_or_else(|_| "20".to_owned());
    let mut schemathesis = Command::new(tools.join("venv/bin/st"));
    schemathesis
        .args(["run", &format!("{base}/openapi.json"), "--url", &base])
        .args(["--checks", "all", "--max-examples", &examples])
        // One worker: hypothesis' source introspection is not thread-safe on
        // every Python (an internal "AST recursion depth" error otherwise).
        .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
        .current_dir(dir.path());
    // A fixed seed in `make test` (the same cases every run); `make fuzz`
    // draws a new one each time.
    match std::env::var("SWITCHBOARD_FUZZ_SEED") {
        Ok(seed) if seed == "random" => {}
        Ok(seed) => {
            schemathesis.args(["--seed", &seed]);
        }
        Err(_) => {
            schemathesis.args(["--seed", "1"]);
        }
    }
    let fuzzed = run(&mut schemathesis)?;
    let report = text(&fuzzed);
    assert!(fuzzed.status.success(), "schemathesis:\n{report}");
    assert!(report.contains("passed"), "schemathesis:\n{report}");
    let output = system.up.output();
    assert!(
        !output.contains("maximum control line exceeded"),
        "the server refused a control line:\n{output}"
    );
    Ok(())
}
