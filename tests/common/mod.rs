//! Helpers for system tests that run the real `switchboard` binary.
#![allow(dead_code)] // each test file uses a different subset

pub mod invariants;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use switchboard::process::{exists, send};
use switchboard_cli::credentials::password_env;
use switchboard_cli::system::ADMIN_USER;

pub use nix::sys::signal::Signal;

/// A binary of the workspace (`switchboard`, a service), where cargo
/// builds them: beside the test binary's own folder (`target/<profile>`).
/// `make test` builds every binary before the tests run.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    profile.join(name)
}

/// The reference system's services, in start order, as the repository's
/// `switchboard.toml` lists them (what `switchboard up` runs by default).
pub static SERVICES: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("switchboard.toml");
    switchboard_cli::manifest::Manifest::read(&path)
        .map(|m| m.services)
        .unwrap_or_default()
        .into_iter()
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .collect()
});

/// The reference system's contracts, read from its binaries as `up` reads
/// them (`<binary> --contract`).
pub async fn reference_contracts()
-> Result<Vec<switchboard::contract::Contract>, Box<dyn std::error::Error>> {
    let binaries: Vec<(String, std::path::PathBuf)> = SERVICES
        .iter()
        .map(|name| (name.to_string(), workspace_bin(name)))
        .collect();
    Ok(switchboard_cli::contracts::read_all(&binaries).await?)
}

type Output = Box<dyn std::io::Read + Send>;
type Lines = Arc<Mutex<Vec<String>>>;

/// A `switchboard` process under test, its output collected line by line.
/// Dropping it stops it and every process it started, by PID.
pub struct Switchboard {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    new_line: mpsc::Receiver<()>,
    seen: BTreeSet<u32>,
}

impl Switchboard {
    /// Starts `switchboard <args>` in the project root with extra environment.
    pub fn spawn(args: &[impl AsRef<std::ffi::OsStr>], env: &[(String, String)]) -> Switchboard {
        Switchboard::spawn_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, env)
    }

    /// [`Switchboard::spawn`] in the folder `dir` (its `switchboard.toml`
    /// and `nats.conf`).
    pub fn spawn_in(
        dir: &Path,
        args: &[impl AsRef<std::ffi::OsStr>],
        env: &[(String, String)],
    ) -> Switchboard {
        let mut child = Command::new(workspace_bin("switchboard"))
            .args(args)
            // A NATS_URL of the developer's shell must not leak into tests,
            // nor its OpenTelemetry set-up.
            .env_remove("NATS_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_TRACES_EXPORTER")
            // Parallel systems: each dashboard on a port of its own.
            .env("SWITCHBOARD_DASHBOARD_ADDR", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run switchboard: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, new_line) = mpsc::channel();
        let streams: [(Option<Output>, Option<Lines>); 2] = [
            (
                child.stdout.take().map(|s| Box::new(s) as _),
                Some(stdout.clone()),
            ),
            (child.stderr.take().map(|s| Box::new(s) as _), None),
        ];
        for (stream, only) in streams {
            let Some(stream) = stream else { continue };
            let lines = lines.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(Ok(mut out)) = only.as_ref().map(|o| o.lock()) {
                        out.push(line.clone());
                    }
                    if let Ok(mut all) = lines.lock() {
                        all.push(line);
                    }
                    let _ = tx.send(());
                }
            });
        }
        Switchboard {
            child,
            lines,
            stdout,
            new_line,
            seen: BTreeSet::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Writes what `up` and its services said to `target/<name>-up.log`
    /// (overwritten by the next run), for a look after a failure.
    pub fn keep_log(&self, name: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/{name}-up.log"));
        match std::fs::write(&path, self.output()) {
            Ok(()) => println!("{name}: the system's log is in {}", path.display()),
            Err(error) => eprintln!("{name}: cannot keep the system's log: {error}"),
        }
    }

    /// Only what was printed on stdout.
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until a line contains `needle`; panics with the output on timeout.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        if let Err(failure) = self.try_wait_for(needle, timeout) {
            panic!("{failure}");
        }
    }

    /// [`Switchboard::wait_for`] that returns the failure (the process
    /// exited, or the time ran out, with its output) instead of panicking.
    pub fn try_wait_for(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .lines
                .lock()
                .map(|l| l.iter().any(|line| line.contains(needle)))
                .unwrap_or(false)
            {
                self.remember_descendants();
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the readers finish
                return Err(format!(
                    "exited ({status}) before printing {needle:?}; output:\n{}",
                    self.output()
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no line with {needle:?} within {timeout:?}; output:\n{}",
                    self.output()
                ));
            }
            let _ = self
                .new_line
                .recv_timeout(left.min(Duration::from_millis(200)));
        }
    }

    /// Current descendants (children, grandchildren, …), remembered for cleanup.
    pub fn descendants(&mut self) -> BTreeSet<u32> {
        let found = descendants_of(self.pid());
        self.seen.extend(&found);
        found
    }

    fn remember_descendants(&mut self) {
        let _ = self.descendants();
    }

    pub fn signal(&self, signal: Signal) {
        send(self.pid(), signal);
    }

    /// Waits for exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Switchboard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.remember_descendants();
            self.signal(Signal::SIGINT);
            if self.wait_exit(Duration::from_secs(15)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        for pid in &self.seen {
            if exists(*pid) {
                send(*pid, Signal::SIGKILL);
            }
        }
    }
}

/// `up` arguments for an embedded server on the given ports and data folder.
pub fn up_args(port: u16, http_port: u16, data_dir: &Path) -> Vec<String> {
    vec![
        "up".to_owned(),
        "--port".to_owned(),
        port.to_string(),
        "--http-port".to_owned(),
        http_port.to_string(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
        // The gateway's HTTP port must not collide with parallel tests.
        "--http-addr".to_owned(),
        format!("127.0.0.1:{}", free_http_port()),
    ]
}

fn free_http_port() -> u16 {
    switchboard::testing::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// PIDs whose parent chain leads to `root`, from `/proc`.
pub fn descendants_of(root: u32) -> BTreeSet<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = switchboard::process::parent_of(pid) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid) in &parents {
            if *ppid == parent && found.insert(*pid) {
                frontier.push(*pid);
            }
        }
    }
    found
}

/// The executable's file name of a running process.
pub fn exe_name(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_owned)
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn running(pid: u32) -> bool {
    switchboard::process::state(pid).is_some_and(|state| state != 'Z')
}

/// Fixed test passwords for every user, as `SB_<USER>_PASSWORD` pairs.
pub fn test_passwords() -> Vec<(String, String)> {
    std::iter::once(ADMIN_USER)
        .chain(SERVICES.iter().copied())
        .map(|u| (password_env(u), format!("pw{u}{}", std::process::id())))
        .collect()
}

/// Where `make test-tools` put the test tools (the Python venv); `None`
/// (and a note) when a plain `cargo test` runs without them — `make test`
/// requires them (`SWITCHBOARD_REQUIRE_TEST_TOOLS`).
pub fn test_tools() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("SWITCHBOARD_TEST_TOOLS").map(std::path::PathBuf::from);
    let present = dir
        .as_ref()
        .is_some_and(|d| d.join("venv/.installed").is_file());
    let required = std::env::var_os("SWITCHBOARD_REQUIRE_TEST_TOOLS").is_some();
    match dir {
        Some(dir) if present => Some(dir),
        _ if required => panic!(
            "the test tools are missing: run `make test-tools` (SWITCHBOARD_TEST_TOOLS={dir:?})"
        ),
        _ => {
            eprintln!("skipped: the test tools are not installed (run `make test`)");
            None
        }
    }
}

/// The project's `nats.conf`.
pub fn project_config() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf"))
}

/// Waits up to `timeout` for `condition`.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// A minimal HTTP/1 client for the gateway: one connection per request.
pub struct Http {
    pub addr: String,
}

impl Http {
    /// Sends JSON (or nothing); the reply's status, headers and JSON body
    /// (`Null` when the body is not JSON).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, hyper::HeaderMap, serde_json::Value), Box<dyn std::error::Error>> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, headers, body) = self
            .send_raw(
                method,
                path,
                &[("content-type", "application/json")],
                bytes.into(),
            )
            .await?;
        let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, headers, value))
    }

    /// Sends any bytes with any headers; the reply as it came.
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: hyper::body::Bytes,
    ) -> Result<(u16, hyper::HeaderMap, hyper::body::Bytes), Box<dyn std::error::Error>> {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(&self.addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder().method(method).uri(path);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request = request.header("host", &self.addr);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Full::new(body))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, headers, body))
    }
}

/// A whole system started by `switchboard up` with its own ports, data
/// folder and fixed passwords.
pub struct System {
    pub up: Switchboard,
    pub port: u16,
    /// nats-server's monitoring port.
    pub http_port: u16,
    /// The gateway.
    pub http: Http,
}

/// Starts `up` in `dir` and waits for `switchboard: ready`.
pub fn start_system(dir: &Path, port: u16, http_port: u16) -> System {
    start_system_with_env(dir, port, http_port, &[])
}

/// [`start_system`] with extra environment for `up` and the services it
/// starts (e.g. a shorter stock hold).
pub fn start_system_with_env(
    dir: &Path,
    port: u16,
    http_port: u16,
    extra: &[(&str, &str)],
) -> System {
    start_system_with(dir, port, http_port, extra, &[])
}

/// [`start_system_with_env`] with extra arguments for `up` (`--cluster 3`).
pub fn start_system_with(
    dir: &Path,
    port: u16,
    http_port: u16,
    extra: &[(&str, &str)],
    extra_args: &[&str],
) -> System {
    try_start_system(dir, port, http_port, extra, extra_args).unwrap_or_else(|f| panic!("{f}"))
}

/// [`start_system_with`] on ports it picks itself, picked again (up to
/// three times) when one was taken between picking and binding — a port
/// chosen free can be handed to any other connection of the machine
/// before `up` binds it.
pub fn start_system_on_free_ports(
    dir: &Path,
    extra: &[(&str, &str)],
    extra_args: &[&str],
) -> System {
    let mut last = String::new();
    for _ in 0..3 {
        let port = switchboard::testing::free_port().unwrap_or_else(|e| panic!("{e}"));
        let http_port = switchboard::testing::free_port().unwrap_or_else(|e| panic!("{e}"));
        match try_start_system(dir, port, http_port, extra, extra_args) {
            Ok(system) => return system,
            Err(failure) if failure.contains("already in use") => last = failure,
            Err(failure) => panic!("{failure}"),
        }
    }
    panic!("ports kept being taken; last attempt: {last}");
}

/// Starts `up` and waits for `switchboard: ready`; the failure with `up`'s
/// output otherwise.
fn try_start_system(
    dir: &Path,
    port: u16,
    http_port: u16,
    extra: &[(&str, &str)],
    extra_args: &[&str],
) -> Result<System, String> {
    let mut env = vec![("XDG_CONFIG_HOME".to_owned(), dir.display().to_string())];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    // Fixed passwords, so a second instance of a service can join.
    env.extend(test_passwords());
    let mut args = up_args(port, http_port, &dir.join("data"));
    let gateway = args.last().cloned().unwrap_or_default();
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    let mut up = Switchboard::spawn(&args, &env);
    up.try_wait_for("switchboard: ready", Duration::from_secs(120))?;
    Ok(System {
        up,
        port,
        http_port,
        http: Http { addr: gateway },
    })
}

/// A user named Buyer with `email` (its id), and `quantity` of `sku` in
/// stock: each one call, not retried.
pub async fn user_and_stock(
    client: &switchboard::client::Client,
    email: &str,
    sku: &str,
    quantity: u64,
) -> Result<String, Box<dyn std::error::Error>> {
    let once = || switchboard::client::CallOptions::default().max_retries(0);
    let user: serde_json::Value = client
        .call_with(
            "users.create",
            &serde_json::json!({"name": "Buyer", "email": email}),
            once(),
        )
        .await?;
    let _: serde_json::Value = client
        .call_with(
            "inventory.restock",
            &serde_json::json!({"sku": sku, "quantity": quantity}),
            once(),
        )
        .await?;
    Ok(user["id"].as_str().ok_or("no user id")?.to_owned())
}

/// A client connected as the operator, with the context `up` wrote in `dir`.
pub async fn admin(dir: &Path) -> Result<switchboard::client::Client, Box<dyn std::error::Error>> {
    let context = switchboard_cli::nats_context::NatsContext::read(
        &dir.join("nats/context/switchboard.json"),
    )?;
    // A cluster's context lists every node, comma separated.
    let urls: Vec<async_nats::ServerAddr> = context
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()?;
    let nats = async_nats::ConnectOptions::with_user_and_password(context.user, context.password)
        .connect(urls.as_slice())
        .await?;
    Ok(switchboard::client::Client::new(nats))
}

/// One service process started by a test (a second instance, say), with
/// the fixed test password, its stderr in `log`; stopped by its PID on drop.
pub struct Instance {
    child: Child,
}

impl Instance {
    pub fn start(
        service: &str,
        port: u16,
        log: &Path,
    ) -> Result<Instance, Box<dyn std::error::Error>> {
        let password = test_passwords()
            .into_iter()
            .find(|(k, _)| *k == password_env(service))
            .map(|(_, v)| v)
            .ok_or("no password")?;
        let program = workspace_bin(service);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(program)
            .env_remove("NATS_URL")
            .env("NATS_URL", format!("nats://127.0.0.1:{port}"))
            .env("NATS_USER", service)
            .env("NATS_PASSWORD", password)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Instance { child })
    }

    /// SIGTERM, then waits for the drained process to exit.
    pub fn stop(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        send(self.child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("exited with {status}").into())
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("did not stop within 30 s of SIGTERM".into())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            send(self.child.id(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Partitions each live instance of `service` holds of consumer `durable`,
/// by PID (from `$SRV.STATS`).
pub async fn partitions_by_pid(
    client: &switchboard::client::Client,
    service: &str,
    durable: &str,
) -> Result<std::collections::BTreeMap<u32, Vec<u64>>, Box<dyn std::error::Error>> {
    let answers = switchboard::discovery::stats(
        client.nats(),
        switchboard::discovery::Target::service(service),
        Duration::from_millis(250),
    )
    .await?;
    let mut held = std::collections::BTreeMap::new();
    for answer in answers {
        let Some(data) = answer.endpoints.first().and_then(|e| e.data.clone()) else {
            continue;
        };
        let Some(pid) = data["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else {
            continue;
        };
        let partitions = data["partitions"][durable]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        held.insert(pid, partitions);
    }
    Ok(held)
}
