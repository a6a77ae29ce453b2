//! `switchboard up` as a user runs it: the real binary, the real nats-server,
//! the real service processes.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::SERVICES;
use switchboard::process::exists;
use switchboard::testing::{TestServer, TestServerConfig, free_port};
use switchboard_cli::nats_context::NatsContext;

use common::{Signal, Switchboard, exe_name, running, test_passwords};

const READY: &str = "switchboard: ready";
const START_TIMEOUT: Duration = Duration::from_secs(60);

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `up` on free ports with its data and nats context in `dir`.
fn up_embedded(
    dir: &Path,
    extra_env: &[(String, String)],
) -> Result<(Switchboard, u16), Box<dyn std::error::Error>> {
    let port = free_port()?;
    let http_port = free_port()?;
    let mut env = vec![("XDG_CONFIG_HOME".to_owned(), dir.display().to_string())];
    env.extend_from_slice(extra_env);
    let up = Switchboard::spawn(&common::up_args(port, http_port, &dir.join("data")), &env);
    Ok((up, port))
}

/// `up` on free ports with `extra` arguments, its data and nats context in
/// `dir`, run until it exits by itself (within `timeout`); its status and output.
fn up_until_it_gives_up(
    dir: &Path,
    extra: &[String],
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String), Box<dyn std::error::Error>> {
    let mut args = common::up_args(free_port()?, free_port()?, &dir.join("data"));
    args.extend_from_slice(extra);
    let env = [("XDG_CONFIG_HOME".to_owned(), dir.display().to_string())];
    let mut up = Switchboard::spawn(&args, &env);
    let status = up.wait_exit(timeout).ok_or("up did not stop by itself")?;
    Ok((status, up.output()))
}

/// Stops `up` with `signal` and checks it exits 0 leaving none of `started`.
fn stop_cleanly(up: &mut Switchboard, signal: Signal, started: &BTreeSet<u32>) -> TestResult {
    up.signal(signal);
    let status = up
        .wait_exit(Duration::from_secs(30))
        .ok_or(format!("up did not exit after {signal}"))?;
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        up.output()
    );
    for pid in started {
        assert!(!exists(*pid), "process {pid} survived `up`");
    }
    Ok(())
}

fn service_pids(up: &mut Switchboard) -> Vec<u32> {
    up.descendants()
        .into_iter()
        .filter(|pid| exe_name(*pid).is_some_and(|n| SERVICES.contains(&n.as_str())))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn up_reaches_ready_writes_a_working_context_and_ctrl_c_leaves_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut up, port) = up_embedded(dir.path(), &[])?;
    up.wait_for(READY, START_TIMEOUT);

    // The ready table lists every service.
    let output = up.output();
    for service in SERVICES.iter() {
        assert!(
            output
                .lines()
                .any(|l| l.starts_with(service) && l.contains("0.1.0")),
            "{service} missing from the table:\n{output}"
        );
    }

    // Every process `up` started, by PID: the server and five services.
    let started = up.descendants();
    let servers: Vec<u32> = started
        .iter()
        .copied()
        .filter(|pid| exe_name(*pid).as_deref() == Some("nats-server"))
        .collect();
    assert_eq!(servers.len(), 1, "one embedded nats-server: {started:?}");
    assert_eq!(service_pids(&mut up).len(), SERVICES.len());

    // The context file works as the `nats` CLI would use it.
    let context_file = dir.path().join("nats/context/switchboard.json");
    let context = NatsContext::read(&context_file)?;
    assert_eq!(context.url, format!("nats://127.0.0.1:{port}"));
    assert_eq!(context.user, "admin");
    let admin = async_nats::ConnectOptions::with_user_and_password(context.user, context.password)
        .connect(context.url.as_str())
        .await?;
    let answers = switchboard::discovery::info(&admin, None, Duration::from_millis(500)).await?;
    assert_eq!(
        answers.len(),
        SERVICES.len(),
        "every service answers $SRV.INFO"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&context_file)?.permissions());
    assert_eq!(mode & 0o077, 0, "the context holds a password: owner-only");
    // The user's selected context is left alone.
    assert!(!dir.path().join("nats/context.txt").exists());

    // No anonymous access.
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(context.url.as_str())
        .await;
    assert!(anonymous.is_err(), "anonymous connection was accepted");

    // Ctrl-C: exit 0, every process gone.
    stop_cleanly(&mut up, Signal::SIGINT, &started)?;
    assert!(
        dir.path().join("data/jetstream").is_dir(),
        "JetStream data in the data folder"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_nats_url_uses_that_server_and_starts_none() -> TestResult {
    let passwords = test_passwords();
    let mut config = TestServerConfig::default().config_file(common::project_config());
    for (key, value) in &passwords {
        config = config.env(key, value);
    }
    let server = TestServer::with_config(config).await?;
    let dir = tempfile::tempdir()?;
    let mut env = passwords.clone();
    env.push(("NATS_URL".to_owned(), server.url()));
    env.push((
        "XDG_CONFIG_HOME".to_owned(),
        dir.path().display().to_string(),
    ));
    let mut up = Switchboard::spawn(&["up"], &env);
    up.wait_for(READY, START_TIMEOUT);

    let started = up.descendants();
    assert!(
        started
            .iter()
            .all(|pid| exe_name(*pid).as_deref() != Some("nats-server")),
        "up started a nats-server although NATS_URL was given"
    );
    assert_eq!(service_pids(&mut up).len(), SERVICES.len());
    assert!(up.output().contains("no server started"));
    let context = NatsContext::read(&dir.path().join("nats/context/switchboard.json"))?;
    assert_eq!(context.url, server.url());

    stop_cleanly(&mut up, Signal::SIGTERM, &started)?;
    assert!(
        server.pid().is_some_and(running),
        "the external server is left running"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_service_is_restarted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut up, _) = up_embedded(dir.path(), &[])?;
    up.wait_for(READY, START_TIMEOUT);
    let before = service_pids(&mut up);
    let victim = *before.first().ok_or("no service running")?;
    let name = exe_name(victim).ok_or("no name")?;
    switchboard::process::send(victim, Signal::SIGKILL);

    let restarted = common::eventually(Duration::from_secs(20), || {
        let now = service_pids(&mut up);
        now.len() == SERVICES.len() && !now.contains(&victim)
    });
    assert!(
        restarted,
        "{name} was not restarted; output:\n{}",
        up.output()
    );
    assert!(up.output().contains("exited unexpectedly"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn services_stop_by_themselves_when_up_is_killed_outright() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut up, _) = up_embedded(dir.path(), &[])?;
    up.wait_for(READY, START_TIMEOUT);
    let services = service_pids(&mut up);
    assert_eq!(services.len(), SERVICES.len());

    // SIGKILL leaves no chance to clean up; the services notice their
    // supervisor is gone (stdin closes) and exit. The server has no such
    // hook: the test's guard stops it by PID.
    up.signal(Signal::SIGKILL);
    let gone = common::eventually(Duration::from_secs(20), || {
        services.iter().all(|pid| !running(*pid))
    });
    assert!(gone, "services outlived a killed supervisor");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_server_is_restarted_and_services_reconnect() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut up, _) = up_embedded(dir.path(), &[])?;
    up.wait_for(READY, START_TIMEOUT);
    let server_pid = |up: &mut Switchboard| {
        up.descendants()
            .into_iter()
            .find(|pid| exe_name(*pid).as_deref() == Some("nats-server") && running(*pid))
    };
    let first = server_pid(&mut up).ok_or("no nats-server")?;
    switchboard::process::send(first, Signal::SIGKILL);

    let replaced = common::eventually(Duration::from_secs(20), || {
        server_pid(&mut up).is_some_and(|pid| pid != first)
    });
    assert!(replaced, "nats-server was not restarted:\n{}", up.output());

    // Same port and passwords: the operator's context still works, and every
    // service found its way back.
    let context = NatsContext::read(&dir.path().join("nats/context/switchboard.json"))?;
    // The new process exists before it listens: connect once it does.
    let mut admin = None;
    for _ in 0..100 {
        let options = async_nats::ConnectOptions::with_user_and_password(
            context.user.clone(),
            context.password.clone(),
        );
        if let Ok(client) = options.connect(context.url.as_str()).await {
            admin = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = admin.ok_or("the restarted server never accepted a connection")?;
    let mut answered = 0;
    for _ in 0..40 {
        answered = switchboard::discovery::info(&admin, None, Duration::from_millis(250))
            .await?
            .len();
        if answered == SERVICES.len() {
            break;
        }
    }
    assert_eq!(
        answered,
        SERVICES.len(),
        "services reconnected after the restart"
    );
    let started = up.descendants();
    stop_cleanly(&mut up, Signal::SIGINT, &started)
}

#[test]
fn up_refuses_a_binary_that_is_no_service_before_starting_anything() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (status, output) = up_until_it_gives_up(
        dir.path(),
        &["--with".to_owned(), "/bin/true".to_owned()],
        Duration::from_secs(30),
    )?;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("/bin/true --contract printed no contract")
            && output.contains("service_main!"),
        "{output}"
    );
    // Nothing was started: no server, no service.
    assert!(!output.contains("started nats-server"), "{output}");
    Ok(())
}

#[test]
fn a_service_that_never_answers_is_named_and_nobody_else_is_blamed() -> TestResult {
    let dir = tempfile::tempdir()?;
    // A binary with a valid contract that dies at once, every time.
    let flaky = dir.path().join("flaky");
    std::fs::write(
        &flaky,
        "#!/bin/sh\n[ \"$1\" = --contract ] && echo '{\"name\":\"flaky\",\"version\":\"1.0.0\"}' && exit 0\nexit 3\n",
    )?;
    std::fs::set_permissions(&flaky, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let extra = [
        "--with".to_owned(),
        flaky.display().to_string(),
        "--ready-timeout".to_owned(),
        "8".to_owned(),
    ];
    let (status, output) = up_until_it_gives_up(dir.path(), &extra, Duration::from_secs(60))?;
    assert!(!status.success(), "{output}");
    let verdict = output
        .lines()
        .find(|l| l.contains("not ready after"))
        .ok_or(format!("no verdict:\n{output}"))?;
    assert!(verdict.contains("no answer from flaky"), "{verdict}");
    for innocent in SERVICES.iter() {
        assert!(!verdict.contains(innocent), "{innocent} blamed: {verdict}");
    }
    Ok(())
}
