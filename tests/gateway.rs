//! The HTTP gateway over a real socket, in front of the real services
//! started by `switchboard up`.

mod common;

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use switchboard::testing::free_port;

use common::{Http, Signal, Switchboard, exe_name};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn system(dir: &std::path::Path) -> Result<(Switchboard, Http), Box<dyn std::error::Error>> {
    let http_addr = format!("127.0.0.1:{}", free_port()?);
    let mut args = common::up_args(free_port()?, free_port()?, &dir.join("data"));
    let at = args
        .iter()
        .position(|a| a == "--http-addr")
        .ok_or("no --http-addr")?;
    args[at + 1] = http_addr.clone();
    let env = vec![("XDG_CONFIG_HOME".to_owned(), dir.display().to_string())];
    let mut up = Switchboard::spawn(&args, &env);
    up.wait_for("switchboard: ready", Duration::from_secs(60));
    let http = Http { addr: http_addr };
    // The gateway learns routes from discovery within its refresh interval.
    for _ in 0..100 {
        if let Ok((200, _, _)) = http.send("GET", "/readyz", None).await {
            let (_, _, doc) = http.send("GET", "/openapi.json", None).await?;
            if doc["paths"]["/orders"].is_object() {
                return Ok((up, http));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the gateway never became ready with routes".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_flow_through_http() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_up, http) = system(dir.path()).await?;

    let (status, _, user) = http
        .send(
            "POST",
            "/users",
            Some(json!({"name": "Ann", "email": "ann@example.com"})),
        )
        .await?;
    assert_eq!(status, 201, "{user}");
    let user_id = user["id"].as_str().ok_or("no id")?.to_owned();
    let (status, _, _) = http.send("GET", &format!("/users/{user_id}"), None).await?;
    assert_eq!(status, 200);
    let (status, _, stock) = http
        .send(
            "POST",
            "/inventory/widget/restock",
            Some(json!({"quantity": 5})),
        )
        .await?;
    assert_eq!((status, &stock["available"]), (200, &json!(5)));

    // Watch the live events while ordering.
    let events = tokio::spawn(first_sse_event(http.addr.clone(), "events.orders.created"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ordered_at = Instant::now();
    let (status, _, order) = http
        .send(
            "POST",
            "/orders",
            Some(json!({"user_id": user_id, "items": [{"sku": "widget", "quantity": 2}]})),
        )
        .await?;
    assert_eq!(status, 201, "{order}");
    let (event, received_at) = tokio::time::timeout(Duration::from_secs(5), events).await???;
    let delay = received_at.saturating_duration_since(ordered_at);
    assert!(delay < Duration::from_secs(1), "the event took {delay:?}");
    assert_eq!(event["data"]["id"], order["id"]);
    assert_eq!(event["attributes"]["type"], "orders.created");

    let (status, _, body) = http
        .send(
            "POST",
            "/orders",
            Some(json!({"user_id": user_id, "items": [{"sku": "widget", "quantity": 9}]})),
        )
        .await?;
    assert_eq!(status, 409, "{body}");
    let order_id = order["id"].as_str().ok_or("no id")?;
    let (status, _, cancelled) = http
        .send("POST", &format!("/orders/{order_id}/cancel"), None)
        .await?;
    assert_eq!((status, &cancelled["status"]), (200, &json!("cancelled")));
    let mut notifications = Value::Null;
    for _ in 0..50 {
        let (_, _, list) = http
            .send("GET", &format!("/users/{user_id}/notifications"), None)
            .await?;
        notifications = list;
        if notifications["notifications"]
            .as_array()
            .is_some_and(|n| n.len() == 3)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        notifications["notifications"].as_array().map(Vec::len),
        Some(3),
        "{notifications}"
    );
    let (status, _, body) = http
        .send("POST", "/users", Some(json!({"name": 1})))
        .await?;
    assert_eq!(status, 400, "{body}");
    Ok(())
}

/// Reads `/events?subject=…` until the first `event`; returns its JSON and
/// when it arrived.
async fn first_sse_event(addr: String, subject: &'static str) -> Result<(Value, Instant), String> {
    let run = async {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = hyper::Request::get(format!("/events?subject={subject}"))
            .header("host", &addr)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let mut body = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?
            .into_body();
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Some(data) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(data));
            }
            if let Some(at) = text.find("event: event\n") {
                let rest = &text[at..];
                if let Some(line) = rest.lines().find_map(|l| l.strip_prefix("data: "))
                    && rest.contains("\n\n")
                {
                    let arrived = Instant::now();
                    return serde_json::from_str(line)
                        .map(|v| (v, arrived))
                        .map_err(|e| e.to_string());
                }
            }
        }
        Err("the event stream ended".to_owned())
    };
    run.await
}

/// `up` with every service but `users`, which a test runs by hand
/// ([`UsersByHand::start`]) to decide when it is down. The NATS port too.
async fn system_without_users(
    dir: &std::path::Path,
) -> Result<(Switchboard, Http, UsersByHand), Box<dyn std::error::Error>> {
    let passwords = common::test_passwords();
    let nats_port = free_port()?;
    let http_addr = format!("127.0.0.1:{}", free_port()?);
    let mut args = common::up_args(nats_port, free_port()?, &dir.join("data"));
    let at = args
        .iter()
        .position(|a| a == "--http-addr")
        .ok_or("no --http-addr")?;
    args[at + 1] = http_addr.clone();
    args.extend([
        "--services".into(),
        "inventory,orders,notifications,gateway".into(),
    ]);
    let mut env = passwords.clone();
    env.push(("XDG_CONFIG_HOME".to_owned(), dir.display().to_string()));
    let mut up = Switchboard::spawn(&args, &env);
    up.wait_for("switchboard: ready", Duration::from_secs(60));
    let password = passwords
        .iter()
        .find(|(k, _)| k == "SB_USERS_PASSWORD")
        .map(|(_, v)| v.clone())
        .ok_or("no password")?;
    Ok((
        up,
        Http { addr: http_addr },
        UsersByHand {
            nats_port,
            password,
        },
    ))
}

/// Starts the `users` service outside `up`, as its own NATS user.
struct UsersByHand {
    nats_port: u16,
    password: String,
}

impl UsersByHand {
    fn start(&self) -> std::io::Result<std::process::Child> {
        std::process::Command::new(common::workspace_bin("users"))
            .env("NATS_URL", format!("nats://127.0.0.1:{}", self.nats_port))
            .env("NATS_USER", "users")
            .env("NATS_PASSWORD", &self.password)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_service_answers_503_quickly_and_recovers_without_a_gateway_restart() -> TestResult
{
    let dir = tempfile::tempdir()?;
    // `users` runs outside `up` here, so the test decides when it is down.
    let (mut up, http, users_by_hand) = system_without_users(dir.path()).await?;
    let start_users = || users_by_hand.start();
    let mut users = start_users()?;
    let _guard = KillOnDrop(users.id());
    assert!(
        eventually_status(&http, "/users/u-1", 404, "no user u-1").await,
        "users never served through the gateway"
    );
    let gateway_pid = up
        .descendants()
        .into_iter()
        .find(|p| exe_name(*p).as_deref() == Some("gateway"))
        .ok_or("no gateway process")?;

    users.kill()?;
    users.wait()?;
    let asked = Instant::now();
    let (status, headers, _) = http.send("GET", "/users/u-1", None).await?;
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_some());
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "503 took {:?}",
        asked.elapsed()
    );

    // Back up: the gateway's route works again by itself.
    let users = start_users()?;
    let _guard = KillOnDrop(users.id());
    assert!(
        eventually_status(&http, "/users/u-1", 404, "no user u-1").await,
        "users never came back through the gateway"
    );
    assert!(
        up.descendants().contains(&gateway_pid),
        "the gateway was not restarted"
    );
    Ok(())
}

/// Waits until `path` answers `wanted` with an error message containing
/// `message` (the service's own 404, not the gateway's "no such route").
async fn eventually_status(http: &Http, path: &str, wanted: u16, message: &str) -> bool {
    for _ in 0..100 {
        if let Ok((status, _, body)) = http.send("GET", path, None).await
            && status == wanted
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(message))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Kills a process by PID when dropped (a failed assertion must not leak it).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if switchboard::process::exists(self.0) {
            switchboard::process::send(self.0, Signal::SIGKILL);
        }
    }
}

async fn create_user(
    http: &Http,
    name: &str,
    email: &str,
) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    let (status, _, user) = http
        .send(
            "POST",
            "/users",
            Some(json!({"name": name, "email": email})),
        )
        .await?;
    Ok((status, user))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_sent_the_moment_up_is_ready_is_routed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let args = common::up_args(free_port()?, free_port()?, &dir.path().join("data"));
    let http = Http {
        addr: args.last().cloned().ok_or("no --http-addr")?,
    };
    let env = vec![(
        "XDG_CONFIG_HOME".to_owned(),
        dir.path().display().to_string(),
    )];
    let mut up = Switchboard::spawn(&args, &env);
    up.wait_for("switchboard: ready", Duration::from_secs(60));
    // No wait for /readyz or a refresh: ready means routed.
    let (status, user) = create_user(&http, "Early", "early@example.com").await?;
    assert_eq!(status, 201, "{user}");
    let (status, _, ready) = http.send("GET", "/readyz", None).await?;
    assert_eq!(status, 200, "{ready}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_http_requests_get_json_errors_and_change_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_up, http) = system(dir.path()).await?;

    // The first report: a 4,500-character user id used to knock the users
    // service off NATS (a KV key longer than the server's control line).
    let (status, _, body) = http
        .send(
            "POST",
            "/orders",
            Some(json!({"user_id": "z".repeat(4500), "items": [{"sku": "widget", "quantity": 1}]})),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["errors"][0]["path"], "/user_id");
    assert!(
        body.to_string().len() < 2000,
        "the error does not echo the input"
    );

    let json_type = |headers: &hyper::HeaderMap| {
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    };
    let long_segment = format!("/orders/{}", "o".repeat(3000));
    let long_subject = format!("/events?subject=events.{}", "x".repeat(5000));
    let two_mib = Bytes::from(vec![b' '; 2 * 1024 * 1024]);
    let cases: Vec<(&str, &str, Bytes, u16)> = vec![
        ("GET", "/no/such/route", Bytes::new(), 404),
        ("POST", "/healthz", Bytes::new(), 405),
        ("DELETE", "/users", Bytes::new(), 405),
        ("POST", "/users", two_mib, 413),
        ("POST", "/users", Bytes::from_static(b"[]"), 400),
        ("POST", "/users", Bytes::from_static(b"{\"name\":"), 400),
        ("POST", "/users", Bytes::from_static(b"\xff\xfe"), 400),
        (
            "POST",
            "/users",
            Bytes::from_static(b"{\"name\":\"\",\"email\":\"\"}"),
            400,
        ),
        (
            "POST",
            "/inventory/widget/restock",
            Bytes::from_static(b"{\"quantity\":0}"),
            400,
        ),
        ("GET", long_segment.as_str(), Bytes::new(), 400),
        ("GET", "/inventory/%zz", Bytes::new(), 404),
        ("GET", long_subject.as_str(), Bytes::new(), 400),
        ("GET", "/events?subject=orders.%3E", Bytes::new(), 400),
    ];
    for (method, path, body, expected) in cases {
        let (status, headers, reply) = http.send_raw(method, path, &[], body).await?;
        let shown: String = String::from_utf8_lossy(&reply).chars().take(300).collect();
        let what = format!("{method} {}", switchboard::limits::preview(path));
        assert_eq!(status, expected, "{what}: {shown}");
        assert!(json_type(&headers), "{what}: not JSON: {shown}");
        let error: Value = serde_json::from_slice(&reply)?;
        assert_eq!(error["error"]["code"], expected, "{what}: {shown}");
        assert!(error["error"]["message"].is_string(), "{what}: {shown}");
        if expected == 405 {
            assert!(headers.get("allow").is_some(), "{what}: no Allow header");
        }
    }

    // Nothing was created by any of it, and the gateway still works.
    let (status, user) = create_user(&http, "Ann", "ann@example.com").await?;
    assert_eq!(status, 201, "{user}");
    let (status, _, _) = http.send("GET", "/inventory/widget", None).await?;
    assert_eq!(status, 404, "the refused restock stored nothing");
    Ok(())
}

/// Foreign NATS services (nats-py's `micro`, started before the owner
/// exists, and staying while the owner stops and comes back) claim
/// `POST /users` and `GET /users/{id}`: under a name of their own (on its
/// own subject, and on the owner's namespace), and posing as `orders` on
/// subjects the gateway may call. The gateway routes none of them:
/// `POST /users` is not found before `users` runs, creates users while it
/// runs, answers 503 while it is down — never the intruder's reply — and
/// each refused claim is logged once.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_service_never_takes_a_route_it_does_not_own() -> TestResult {
    let Some(tools) = common::test_tools() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let (up, http, users_by_hand) = system_without_users(dir.path()).await?;
    let context = switchboard_cli::nats_context::NatsContext::read(
        &dir.path().join("nats/context/switchboard.json"),
    )?;
    let intruder = std::process::Command::new(tools.join("venv/bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tools/foreign_service.py"
        ))
        .args([&context.url, &context.user, &context.password])
        .args([
            // Subjects the gateway may not call.
            "intruder:intruder.create:POST:/users",
            "intruder:users.steal:POST:/users",
            // Announced as `orders`, on subjects the gateway may call (it
            // routes them for `orders`): only the declared owner rule
            // stands in the way.
            "orders:orders.create:POST:/users",
            "orders:orders.get:GET:/users/{id}",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let _intruder = KillOnDrop(intruder.id());
    let admin = common::admin(dir.path()).await?;
    let joined = Instant::now() + Duration::from_secs(20);
    while switchboard::discovery::info(admin.nats(), Some("intruder"), Duration::from_millis(300))
        .await?
        .is_empty()
    {
        assert!(
            Instant::now() < joined,
            "the foreign service never joined discovery"
        );
    }
    // Every answer over several refreshes (the gateway's is every 2 s).
    let not_stolen = |status: u16, body: &Value| body.get("stolen").is_none() && status != 200;
    let mut seen = Vec::new();
    for n in 0..25 {
        let (status, body) = create_user(&http, "Early", &format!("early{n}@example.com")).await?;
        assert!(
            not_stolen(status, &body),
            "before users ran: {status} {body}"
        );
        seen.push(status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen.iter().all(|s| *s == 404), "no owner yet: {seen:?}");

    let mut users = users_by_hand.start()?;
    let _users = KillOnDrop(users.id());
    let mut created = 0;
    for n in 0..50 {
        let (status, body) = create_user(&http, "Owner", &format!("owner{n}@example.com")).await?;
        assert!(
            body.get("stolen").is_none(),
            "the intruder answered: {body}"
        );
        created += usize::from(status == 201 && body["id"].is_string());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        created >= 25,
        "users created only {created} of 50 through the gateway"
    );
    let (status, _, body) = http.send("GET", "/users/u-nobody", None).await?;
    assert_eq!(status, 404, "GET /users/{{id}} is users': {body}");

    users.kill()?;
    users.wait()?;
    for n in 0..25 {
        let (status, body) = create_user(&http, "Late", &format!("late{n}@example.com")).await?;
        assert_eq!(
            status, 503,
            "users is down: its route stays and answers 503: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let output = up.output();
    for (service, subject) in [
        ("intruder", "intruder.create"),
        ("intruder", "users.steal"),
        ("orders", "orders.create"),
        ("orders", "orders.get"),
    ] {
        let logged = output
            .lines()
            .filter(|l| {
                l.contains("not routing this claim")
                    && l.contains(&format!("service={service}"))
                    && l.contains(&format!("subject={subject}"))
            })
            .count();
        assert_eq!(
            logged, 1,
            "the refusal of {subject} logged {logged} times:\n{output}"
        );
    }
    Ok(())
}
