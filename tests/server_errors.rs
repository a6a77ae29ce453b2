//! The documented one-line errors: missing binary, too old a server, a busy
//! port, a refused configuration — from the library and from the CLI.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use switchboard::server::{NatsServer, ServerError, ServerOptions};
use switchboard::testing::free_port;

use common::Switchboard;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn options_on_free_ports() -> Result<ServerOptions, ServerError> {
    Ok(ServerOptions::default()
        .port(free_port()?)
        .monitor_port(free_port()?))
}

/// Runs the CLI to completion and returns (success, stderr's last line).
fn run_cli(args: &[impl AsRef<std::ffi::OsStr>], env: &[(String, String)]) -> (bool, String) {
    let mut cli = Switchboard::spawn(args, env);
    let status = cli.wait_exit(Duration::from_secs(30));
    // Give the reader threads a moment to collect the final line.
    std::thread::sleep(Duration::from_millis(100));
    let output = cli.output();
    let last = output
        .lines()
        .rfind(|l| l.starts_with("switchboard:"))
        .unwrap_or_default()
        .to_owned();
    (status.is_some_and(|s| s.success()), last)
}

#[tokio::test]
async fn busy_port_is_reported_with_the_address() -> TestResult {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let result = NatsServer::start(options_on_free_ports()?.port(port)).await;
    match result {
        Err(ServerError::PortInUse { addr }) => assert_eq!(addr, format!("127.0.0.1:{port}")),
        other => panic!("expected PortInUse, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn refused_config_names_file_and_problem() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("broken.conf");
    std::fs::write(
        &config,
        "accounts { A { users: [ {user: a, password: $NOT_SET_ANYWHERE} ] } }\n",
    )?;
    let result = NatsServer::start(options_on_free_ports()?.config_file(&config)).await;
    match result {
        Err(ServerError::BadConfig { message }) => {
            assert!(message.contains("broken.conf"), "{message}");
            assert!(message.contains("NOT_SET_ANYWHERE"), "{message}");
        }
        other => panic!("expected BadConfig, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn servers_older_than_2_10_are_refused() -> TestResult {
    // A stand-in binary that answers --version like nats-server 2.9 would:
    // this exercises our version check, not NATS.
    let dir = tempfile::tempdir()?;
    let old = dir.path().join("nats-server");
    std::fs::write(&old, "#!/bin/sh\necho 'nats-server: v2.9.25'\n")?;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755))?;
    let result = NatsServer::start(options_on_free_ports()?.binary(&old)).await;
    match result {
        Err(e @ ServerError::VersionTooOld { .. }) => {
            let text = e.to_string();
            assert!(text.contains("2.9.25") && text.contains("2.10.0"), "{text}");
        }
        other => panic!("expected VersionTooOld, got {other:?}"),
    }
    Ok(())
}

#[test]
fn cli_missing_binary_is_one_line_that_says_how_to_install() {
    let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let env = vec![
        ("SWITCHBOARD_NATS_SERVER".to_owned(), String::new()),
        (
            "SWITCHBOARD_TOOLS_DIR".to_owned(),
            empty.path().display().to_string(),
        ),
        ("PATH".to_owned(), empty.path().display().to_string()),
        (
            "XDG_CONFIG_HOME".to_owned(),
            empty.path().display().to_string(),
        ),
    ];
    let (ok, line) = run_cli(
        &[
            "up",
            "--data-dir",
            &empty.path().join("data").display().to_string(),
        ],
        &env,
    );
    assert!(!ok, "up must fail without nats-server");
    assert!(line.contains("nats-server not found"), "{line}");
    assert!(line.contains("make tools"), "{line}");
    assert!(line.contains("SWITCHBOARD_NATS_SERVER"), "{line}");
}

#[test]
fn cli_busy_port_is_one_line_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = taken
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let http_port = free_port().unwrap_or_else(|e| panic!("{e}"));
    let env = vec![(
        "XDG_CONFIG_HOME".to_owned(),
        dir.path().display().to_string(),
    )];
    let (ok, line) = run_cli(
        &common::up_args(port, http_port, &dir.path().join("data")),
        &env,
    );
    assert!(!ok, "up must fail on a busy port");
    assert!(
        line.contains(&format!("127.0.0.1:{port} is already in use")),
        "{line}"
    );
    assert!(line.contains("--port"), "{line}");
}
