//! The dashboard in a real browser: headless Chromium driven through
//! chromedriver (W3C WebDriver) against the real system under
//! `switchboard up`. Screenshots are kept under `target/dashboard/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`make test` installs
//! them); without them a plain `cargo test` skips with a note, and `make
//! test` (SWITCHBOARD_REQUIRE_TEST_TOOLS) fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::json;
use switchboard::events::{Event, Publisher};
use switchboard::testing::free_port;

use common::{Signal, System, admin, start_system_on_free_ports, user_and_stock};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port, stopped (by its PID) when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    /// `None` (with a note) when Chromium is not installed and not required.
    fn start() -> Result<Option<Driver>, Box<dyn std::error::Error>> {
        let installed = Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file();
        if !installed {
            if std::env::var_os("SWITCHBOARD_REQUIRE_TEST_TOOLS").is_some() {
                return Err(
                    "chromium and chromium-driver are missing: run `make test-tools`".into(),
                );
            }
            eprintln!("skipped: chromium and chromium-driver are not installed (run `make test`)");
            return Ok(None);
        }
        let port = free_port()?;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Some(Driver {
            child,
            port,
            _profile: tempfile::tempdir()?,
        }))
    }

    /// A headless browser session (retried while chromedriver starts).
    async fn browser(&self) -> Result<Browser, Box<dyn std::error::Error>> {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1800",
                    format!("--user-data-dir={}", self._profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{}", self.port);
        let started = Instant::now();
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(browser) => return Ok(browser),
                Err(e) if started.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("no browser session: {e}").into()),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The browser it started too, when a failed test never closed its
        // session (each by its PID, found before chromedriver goes).
        let browsers = common::descendants_of(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in browsers {
            switchboard::process::send(pid, Signal::SIGKILL);
        }
    }
}

/// Where screenshots go (kept as test artefacts).
fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

async fn screenshot(browser: &Browser, name: &str) -> TestResult {
    // The whole page from the top (a click may have scrolled it).
    browser.execute("window.scrollTo(0, 0)", Vec::new()).await?;
    let png = browser.screenshot().await?;
    std::fs::write(artefacts().join(format!("{name}.png")), png)?;
    Ok(())
}

/// The dashboard's URL, from `up`'s ready table.
fn dashboard_url(system: &System) -> Result<String, Box<dyn std::error::Error>> {
    let stdout = system.up.stdout();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("dashboard: "))
        .ok_or("up printed no dashboard address")?;
    Ok(line
        .split_whitespace()
        .next()
        .ok_or("empty dashboard line")?
        .to_owned())
}

/// Polls `script` (JavaScript returning a value) until `check` accepts
/// it or `timeout` passes; the last value either way.
async fn until(
    browser: &Browser,
    script: &str,
    timeout: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Result<(bool, serde_json::Value), Box<dyn std::error::Error>> {
    let started = Instant::now();
    loop {
        let value = browser.execute(script, Vec::new()).await?;
        if check(&value) {
            return Ok((true, value));
        }
        if started.elapsed() >= timeout {
            return Ok((false, value));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SERVICES: &str = "return [...document.querySelectorAll('#services tr[data-service]')].map(r => r.dataset.service)";
const STATUS: &str =
    "const s = document.querySelector('#status'); return [s.className, s.textContent]";

fn services_listed(value: &serde_json::Value) -> bool {
    ["gateway", "inventory", "notifications", "orders", "users"]
        .iter()
        .all(|name| {
            value
                .as_array()
                .is_some_and(|all| all.iter().any(|v| v == name))
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_system_its_events_and_dead_letters_in_a_browser() -> TestResult {
    let Some(driver) = Driver::start()? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    // --traces: the services export their spans to the dashboard.
    let system = start_system_on_free_ports(dir.path(), &[], &["--traces"]);
    let url = dashboard_url(&system)?;
    let browser = driver.browser().await?;
    let outcome = scenario(&browser, &system, dir.path(), &url).await;
    if outcome.is_err() {
        let _ = screenshot(&browser, "failure").await;
    }
    let _ = browser.close().await;
    outcome
}

async fn scenario(browser: &Browser, system: &System, dir: &Path, url: &str) -> TestResult {
    browser.goto(url).await?;

    // 1. The five services are listed.
    let (listed, services) =
        until(browser, SERVICES, Duration::from_secs(15), services_listed).await?;
    assert!(listed, "the page lists {services}");
    let (ok, status) = until(browser, STATUS, Duration::from_secs(5), |v| {
        v[0].as_str().is_some_and(|c| c.contains("ok"))
    })
    .await?;
    assert!(ok, "status {status}");

    // 2. An order created through the gateway is in the feed within 2 s.
    let client = admin(dir).await?;
    let user_id = user_and_stock(&client, "ann@example.com", "widget", 5).await?;
    let order = json!({"user_id": user_id, "items": [{"sku": "widget", "quantity": 1}]});
    let (status, headers, order) = system.http.send("POST", "/orders", Some(order)).await?;
    assert_eq!(status, 201, "{order}");
    let trace_id = headers
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .ok_or("no x-trace-id")?
        .to_owned();
    let created = Instant::now();
    let order_id = order["id"].as_str().ok_or("no order id")?.to_owned();
    let in_feed = format!(
        "return [...document.querySelectorAll('#events li[data-subject=\"events.orders.created\"]')].some(li => li.textContent.includes({}))",
        json!(order_id)
    );
    let (shown, _) = until(browser, &in_feed, Duration::from_secs(2), |v| {
        v == &json!(true)
    })
    .await?;
    assert!(shown, "order {order_id} not in the event feed within 2 s");
    eprintln!(
        "order in the feed {:?} after it was created",
        created.elapsed()
    );
    screenshot(browser, "overview").await?;

    // 3. The order's trace, entered by id: spans of the five services.
    browser
        .find(Locator::Css("#trace-id"))
        .await?
        .send_keys(&trace_id)
        .await?;
    let services_in_trace = "return [...new Set([...document.querySelectorAll('#trace tr[data-span]')].map(r => r.dataset.service))]";
    let started = Instant::now();
    let traced = loop {
        browser
            .find(Locator::Css("#trace-form button"))
            .await?
            .click()
            .await?;
        let (complete, services) = until(
            browser,
            services_in_trace,
            Duration::from_millis(500),
            services_listed,
        )
        .await?;
        if complete || started.elapsed() > Duration::from_secs(15) {
            break (complete, services);
        }
    };
    assert!(traced.0, "the trace view shows spans of {}", traced.1);
    screenshot(browser, "trace").await?;

    // 4. A poison event is dead-lettered; replay takes it off the list.
    let js = async_nats::jetstream::new(client.nats().clone());
    Publisher::new(js, "dashboard-test")
        .publish(
            "events.users.created",
            &Event::new(json!({"not": "a user"})).id("poison-1"),
        )
        .await?;
    let letters = "return [...document.querySelectorAll('#dlq tr[data-dead-letter]')].map(r => [r.dataset.deadLetter, r.textContent])";
    let (listed, rows) = until(browser, letters, Duration::from_secs(10), |v| {
        v.as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r[1].as_str()
                    .is_some_and(|t| t.contains("events.users.created"))
            })
        })
    })
    .await?;
    assert!(listed, "the poison event is not among dead letters: {rows}");
    let id = rows
        .as_array()
        .and_then(|rows| {
            rows.iter().find(|r| {
                r[1].as_str()
                    .is_some_and(|t| t.contains("events.users.created"))
            })
        })
        .and_then(|r| r[0].as_str())
        .ok_or("no dead letter id")?
        .to_owned();
    screenshot(browser, "dead-letter").await?;
    browser
        .find(Locator::Css(&format!(
            "#dlq tr[data-dead-letter=\"{id}\"] button.replay"
        )))
        .await?
        .click()
        .await?;
    let gone =
        format!("return document.querySelector('#dlq tr[data-dead-letter=\"{id}\"]') === null");
    let (removed, _) = until(browser, &gone, Duration::from_secs(5), |v| {
        v == &json!(true)
    })
    .await?;
    assert!(removed, "dead letter {id} is still listed after replay");
    // It was published again (and, still poison, dead-lettered again).
    let again = format!(
        "return [...document.querySelectorAll('#dlq tr[data-dead-letter]')].some(r => r.dataset.deadLetter !== {} && r.textContent.includes('events.users.created'))",
        json!(id)
    );
    let (replayed, _) = until(browser, &again, Duration::from_secs(10), |v| {
        v == &json!(true)
    })
    .await?;
    assert!(
        replayed,
        "the replayed event never came back as a new dead letter"
    );

    // 5. NATS unreachable: an error state, not a blank page; then recovery.
    let pid = server_pid(system)?;
    let paused = Paused::new(pid);
    let (error_shown, status) = until(browser, STATUS, Duration::from_secs(15), |v| {
        v[0].as_str().is_some_and(|c| c.contains("error"))
    })
    .await?;
    screenshot(browser, "nats-down").await?;
    assert!(error_shown, "no error state while NATS is down: {status}");
    assert!(
        status[1].as_str().is_some_and(|t| t.contains("NATS")),
        "the error names NATS: {status}"
    );
    let (still_listed, _) = until(browser, SERVICES, Duration::ZERO, services_listed).await?;
    assert!(still_listed, "the last known services stay on the page");
    drop(paused);
    let (recovered, status) = until(browser, STATUS, Duration::from_secs(30), |v| {
        v[0].as_str().is_some_and(|c| c.contains("ok"))
    })
    .await?;
    assert!(recovered, "the page did not recover: {status}");
    let (listed, services) =
        until(browser, SERVICES, Duration::from_secs(15), services_listed).await?;
    assert!(listed, "after recovery the page lists {services}");
    Ok(())
}

/// nats-server's PID, from `up`'s output.
fn server_pid(system: &System) -> Result<u32, Box<dyn std::error::Error>> {
    let stdout = system.up.stdout();
    let pid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("switchboard: nats-server pid "))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or("up printed no nats-server pid")?;
    Ok(pid.parse()?)
}

/// nats-server stopped with SIGSTOP (unreachable, but not restarted by
/// `up`'s supervisor); continued when dropped, also when the test fails.
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Self {
        switchboard::process::send(pid, Signal::SIGSTOP);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        switchboard::process::send(self.0, Signal::SIGCONT);
    }
}

/// The dashboard's guards and its answers to bad input, over HTTP (no
/// browser): it has operator rights, so what it refuses matters as much as
/// what it shows.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_refuses_foreign_hosts_unmarked_changes_and_bad_input() -> TestResult {
    use switchboard_cli::dashboard::{Dashboard, DashboardError};

    let outside: std::net::SocketAddr = "0.0.0.0:0".parse()?;
    assert!(matches!(
        Dashboard::bind(outside).await,
        Err(DashboardError::NotLoopback(_))
    ));

    let server = switchboard::testing::TestServer::start().await?;
    let dashboard = Dashboard::bind("127.0.0.1:0".parse()?).await?;
    let addr = dashboard.local_addr().ok_or("no address")?;
    let serving = tokio::spawn(dashboard.serve(server.client().await?, std::future::pending()));
    let http = common::Http {
        addr: addr.to_string(),
    };
    // The page itself, and the API, on a loopback host.
    assert_eq!(send(&http, "GET", "/", vec![], b"").await?.0, 200);
    assert_eq!(
        send(&http, "GET", "/api/dlq", vec![], b"").await?,
        (200, "[]".to_owned())
    );
    // Another host name (DNS rebinding): nothing at all.
    let (status, _) = send(
        &http,
        "GET",
        "/api/dlq",
        vec![("host", "evil.example")],
        b"",
    )
    .await?;
    assert_eq!(status, 403);
    // A change without the dashboard's header (a cross-site form): refused.
    assert_eq!(
        send(&http, "POST", "/api/dlq/purge", vec![], b"").await?.0,
        403
    );
    let marked = vec![("x-switchboard-dashboard", "1")];
    assert_eq!(
        send(&http, "POST", "/api/dlq/purge", marked.clone(), b"").await?,
        (200, r#"{"purged":0}"#.to_owned())
    );
    // Bad input: 4xx with a reason, nothing changed.
    let (status, body) = send(&http, "POST", "/api/dlq/7/replay", marked.clone(), b"").await?;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        send(&http, "GET", "/api/dlq/not-a-number", vec![], b"")
            .await?
            .0,
        400
    );
    let (status, body) = send(&http, "GET", "/api/traces/xyz", vec![], b"").await?;
    assert_eq!(status, 400, "{body}");
    let long = "/api/events?subject=events.".to_owned() + &"a".repeat(5000);
    assert_eq!(send(&http, "GET", &long, vec![], b"").await?.0, 400);
    assert_eq!(
        send(&http, "GET", "/api/events?subject=orders.%3E", vec![], b"")
            .await?
            .0,
        400
    );
    // Spans: a protobuf body is taken without our header (exporters do not
    // send it), garbage is a 400; any other content type is a change
    // without the header.
    let protobuf = vec![("content-type", "application/x-protobuf")];
    assert_eq!(
        send(&http, "POST", "/v1/traces", protobuf.clone(), b"")
            .await?
            .0,
        200
    );
    assert_eq!(
        send(&http, "POST", "/v1/traces", protobuf, b"\xff\xff\xff")
            .await?
            .0,
        400
    );
    let form = vec![("content-type", "application/x-www-form-urlencoded")];
    assert_eq!(
        send(&http, "POST", "/v1/traces", form, b"a=b").await?.0,
        403
    );

    serving.abort();
    Ok(())
}

/// One request to the dashboard: status and body as text.
async fn send(
    http: &common::Http,
    method: &str,
    path: &str,
    headers: Vec<(&str, &str)>,
    body: &'static [u8],
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let (status, _, body) = http
        .send_raw(
            method,
            path,
            &headers,
            hyper::body::Bytes::from_static(body),
        )
        .await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
