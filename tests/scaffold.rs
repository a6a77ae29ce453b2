//! Your own service, as a stranger builds it: `switchboard new` in a
//! workspace like this one, and `switchboard new --standalone` in a folder
//! of its own (a path dependency on the kit, its own `Cargo.lock`). Both
//! must pass clippy and their own test, then run under `switchboard up`
//! next to the reference system — each with a NATS user of its own whose
//! permissions come from its contract — be callable over NATS and through
//! the gateway, have their events consumed, and show up in `switchboard
//! ls`, `/openapi.json`, `/asyncapi.json` and the derived `subjects.md`;
//! and their users are refused what belongs to others, at once.
//!
//! The two crates build into `target/scaffold` (kept between runs: a warm
//! `make test` compiles only them), offline, from the lock of this
//! repository.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::client::{CallError, CallOptions, Client};
use switchboard::connect::ConnectConfig;

use common::{Http, SERVICES, Switchboard};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Runs a command to its end; its output, or an error with all of it.
fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{command:?} failed ({}):\n{text}", output.status))
    }
}

fn cargo(dir: &Path, target: &Path, args: &[&str]) -> Result<String, String> {
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", target)
            // The outer `cargo test`'s own settings are not the new crate's.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
    )
}

/// A workspace like this repository's, around no crate yet: its
/// `[workspace]` sections (dependencies by path to this repository), lints,
/// profiles and the async-nats patch; its lock, `switchboard.toml` and
/// `nats.conf`.
fn workspace_like_this_one(repo: &Path, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let manifest = std::fs::read_to_string(repo.join("Cargo.toml"))?;
    let mut kept = String::from("[workspace]\nmembers = [\"services/*\"]\nresolver = \"3\"\n");
    let mut keep = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            keep = ["[workspace.", "[profile.", "[patch."]
                .iter()
                .any(|p| line.starts_with(p));
        }
        if keep {
            let repo = repo.display();
            kept.push_str(
                &line
                    .replace("path = \".\"", &format!("path = \"{repo}\""))
                    .replace("path = \"vendor/", &format!("path = \"{repo}/vendor/")),
            );
            kept.push('\n');
        }
    }
    std::fs::create_dir_all(dir.join("services"))?;
    std::fs::write(dir.join("Cargo.toml"), kept)?;
    for file in ["Cargo.lock", "switchboard.toml", "nats.conf", "subjects.md"] {
        std::fs::copy(repo.join(file), dir.join(file))?;
    }
    Ok(())
}

/// Calls `<service>.hello` and waits until its consumer recorded the
/// greeting (`<service>.get` stops answering 404).
async fn greet_and_see_it_consumed(client: &Client, service: &str) -> Result<Value, String> {
    let greeting: Value = client
        .call(&format!("{service}.hello"), &json!({"name": "Ada"}))
        .await
        .map_err(|e| format!("{service}.hello: {e}"))?;
    if greeting["text"] != "Hello, Ada!" {
        return Err(format!("{service}.hello answered {greeting}"));
    }
    let get = format!("{service}.get");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match client
            .call::<_, Value>(&get, &json!({"id": greeting["id"]}))
            .await
        {
            Ok(recorded) if recorded == greeting => return Ok(greeting),
            Err(CallError::Rejected(e)) if e.code == 404 && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return Err(format!("{get}: {other:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn new_services_in_the_workspace_and_outside_it_run_under_up_with_least_privilege()
-> TestResult {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let switchboard = common::workspace_bin("switchboard");
    let work = tempfile::tempdir()?;
    let system = work.path().join("system");
    workspace_like_this_one(repo, &system)?;

    // 1. Scaffold: one in the workspace (registered), one of its own.
    let said = run(Command::new(&switchboard)
        .args(["new", "greeter"])
        .current_dir(&system))?;
    assert!(said.contains("services/greeter/src/lib.rs"), "{said}");
    let manifest = std::fs::read_to_string(system.join("switchboard.toml"))?;
    assert!(
        manifest.contains("\"greeter\""),
        "not registered: {manifest}"
    );
    run(Command::new(&switchboard)
        .args(["new", "parcels", "--standalone", "--kit"])
        .arg(repo)
        .arg("--dir")
        .arg(work.path()))?;
    let outside = work.path().join("parcels");
    let own_manifest = std::fs::read_to_string(outside.join("Cargo.toml"))?;
    assert!(own_manifest.contains("[workspace]") && own_manifest.contains("[patch.crates-io]"));
    assert!(outside.join("Cargo.lock").is_file());

    // 2. Each passes clippy and its own test, and builds.
    let target = repo.join("target/scaffold");
    for (dir, package) in [(&system, vec!["-p", "greeter"]), (&outside, vec![])] {
        for args in [
            &["clippy", "--offline", "--all-targets"][..],
            &["test", "--offline"],
            &["build", "--offline"],
        ] {
            let mut args: Vec<&str> = args.to_vec();
            args.extend(package.iter().copied());
            if args[0] == "clippy" {
                args.extend(["--", "-D", "warnings"]);
            }
            cargo(dir, &target, &args)?;
        }
    }
    // The binaries `up` runs: the reference system's, beside the new ones.
    let bin_dir = target.join("debug");
    for name in SERVICES.iter() {
        let link = bin_dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(common::workspace_bin(name), &link)?;
    }
    let parcels_bin = bin_dir.join("parcels");
    let own_contract = run(Command::new(&parcels_bin).arg("--contract"))?;
    assert!(own_contract.contains("\"parcels.hello\""), "{own_contract}");

    // 3. `up` in the workspace: the registered one with no flag, the other
    //    by `--with`; the passwords of the two are ours, to act as them.
    let (port, http_port) = (
        switchboard::testing::free_port()?,
        switchboard::testing::free_port()?,
    );
    let mut args = common::up_args(port, http_port, &work.path().join("data"));
    let gateway = Http {
        addr: args.last().cloned().unwrap_or_default(),
    };
    args.extend([
        "--bin-dir".to_owned(),
        bin_dir.display().to_string(),
        "--with".to_owned(),
        parcels_bin.display().to_string(),
    ]);
    let env = vec![
        (
            "XDG_CONFIG_HOME".to_owned(),
            work.path().display().to_string(),
        ),
        (
            "SB_GREETER_PASSWORD".to_owned(),
            "greeter-secret".to_owned(),
        ),
        (
            "SB_PARCELS_PASSWORD".to_owned(),
            "parcels-secret".to_owned(),
        ),
    ];
    let mut up = Switchboard::spawn_in(&system, &args, &env);
    up.try_wait_for("switchboard: ready", Duration::from_secs(120))?;
    let output = up.output();
    // Both have the drain guarantee: the standalone one through the
    // `[patch.crates-io]` the scaffold wrote.
    assert!(
        !output.contains("without Switchboard's confirmed-drain fix"),
        "{output}"
    );
    for service in ["greeter", "parcels"] {
        assert!(
            output
                .lines()
                .any(|l| l.starts_with(service) && l.ends_with("hello, get")),
            "{service} missing from the ready table:\n{output}"
        );
    }

    // 4. Over NATS: answered, published, consumed.
    let admin = common::admin(work.path()).await?;
    for service in ["greeter", "parcels"] {
        greet_and_see_it_consumed(&admin, service).await?;
    }

    // 5. Through the gateway, and in both of its documents.
    for service in ["greeter", "parcels"] {
        let (status, _, greeting) = gateway
            .send(
                "POST",
                &format!("/{service}/hello"),
                Some(json!({"name": "Bo"})),
            )
            .await?;
        assert_eq!(
            (status, &greeting["text"]),
            (200, &json!("Hello, Bo!")),
            "{greeting}"
        );
        let path = format!(
            "/{service}/greetings/{}",
            greeting["id"].as_str().unwrap_or_default()
        );
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, body) = gateway.send("GET", &path, None).await?;
            if status == 200 {
                assert_eq!(body, greeting);
                break;
            }
            assert!(
                status == 404 && Instant::now() < until,
                "{path}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (_, _, openapi) = gateway.send("GET", "/openapi.json", None).await?;
    let (_, _, asyncapi) = gateway.send("GET", "/asyncapi.json", None).await?;
    for service in ["greeter", "parcels"] {
        assert!(
            openapi["paths"].get(format!("/{service}/hello")).is_some(),
            "{service} not in /openapi.json"
        );
        assert!(
            asyncapi
                .to_string()
                .contains(&format!("events.{service}.greeted")),
            "{service}'s event not in /asyncapi.json"
        );
    }

    // 6. `switchboard ls` finds both; `generate` puts both in subjects.md
    //    and the permissions block.
    let listed = run(Command::new(&switchboard)
        .arg("ls")
        .env("XDG_CONFIG_HOME", work.path())
        .env_remove("NATS_URL"))?;
    for service in ["greeter", "parcels"] {
        assert!(listed.contains(service), "ls: {listed}");
    }
    run(Command::new(&switchboard)
        .arg("generate")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--with")
        .arg(&parcels_bin)
        .current_dir(&system))?;
    let subjects = std::fs::read_to_string(system.join("subjects.md"))?;
    let conf = std::fs::read_to_string(system.join("nats.conf"))?;
    for service in ["greeter", "parcels"] {
        assert!(
            subjects.contains(&format!("`{service}.hello`")),
            "subjects.md lacks {service}"
        );
        assert!(subjects.contains(&format!("`events.{service}.greeted`")));
        assert!(conf.contains(&format!("{{ user: {service}, password: $SB_")));
    }

    // 7. Least privilege: each new user is refused a foreign subject, at
    //    once and by name — also through the CLI.
    let url = format!("nats://127.0.0.1:{port}");
    for (user, password) in [("greeter", "greeter-secret"), ("parcels", "parcels-secret")] {
        let nats = ConnectConfig {
            url: url.clone(),
            ..ConnectConfig::from_env("scaffold-test")
        }
        .user_and_password(user, password)
        .connect()
        .await?;
        let client = Client::new(nats);
        let patient = CallOptions::default().timeout(Duration::from_secs(60));
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            client.call_with::<_, Value>("users.create", &json!({}), patient),
        )
        .await
        .map_err(|_| format!("{user}: the refused call waited for its deadline"))?;
        match refused {
            Err(CallError::PermissionDenied { refusal, .. }) => {
                assert_eq!(
                    (refusal.user.as_str(), refusal.subject.as_str()),
                    (user, "users.create")
                )
            }
            other => return Err(format!("{user} calling users.create: {other:?}").into()),
        }
    }
    let started = Instant::now();
    let cli = Command::new(&switchboard)
        .args([
            "--server",
            &url,
            "--user",
            "greeter",
            "--password",
            "greeter-secret",
        ])
        .args(["call", "users.create", "{}", "--timeout-ms", "60000"])
        .env_remove("NATS_URL")
        .output()?;
    let said = String::from_utf8_lossy(&cli.stderr);
    println!(
        "switchboard call refused in {:?}: {said}",
        started.elapsed()
    );
    assert!(!cli.status.success());
    assert!(
        said.contains("permission denied")
            && said.contains("greeter")
            && said.contains("users.create"),
        "{said}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the CLI waited for its deadline"
    );

    // Dropping `up` stops it (SIGINT) and everything it started, by PID.
    drop(up);
    Ok(())
}
