//! Hostile input over NATS, against the real system: every endpoint that
//! discovery shows gets malformed JSON, wrong types, empty, huge and odd
//! strings in every field its request schema names, 20,000-item arrays, a
//! payload near `max_payload`, and garbage deadline and trace headers.
//!
//! Every case must be answered within its deadline and never with a 5xx;
//! the cases that break the schema must be 4xx. Afterwards no service has
//! reconnected (the server's connection list, through its monitoring port,
//! shows the same connection ids) and nats-server never logged a refused
//! control line — the failure that used to knock a service off NATS.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use serde_json::{Map, Value, json};
use switchboard::codec::{SERVICE_ERROR_CODE, TIMEOUT_MS, TRACEPARENT};
use switchboard::testing::free_port;

use common::{Http, admin, start_system};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The service users whose connections must survive: every service `up` runs.
use common::SERVICES;

/// How one case must be answered.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// 4xx.
    Rejected,
    /// Anything but a 5xx or silence (the value may be legitimately valid).
    NoServerError,
}

struct Case {
    what: String,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    expect: Expect,
    /// Text the error message must contain.
    mentions: Option<&'static str>,
}

fn case(what: impl Into<String>, payload: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        what: what.into(),
        payload: payload.into(),
        headers: Vec::new(),
        expect,
        mentions: None,
    }
}

/// A schema with its `$ref`s into `$defs` followed.
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => &root["$defs"][name],
        None => schema,
    }
}

/// A small instance the schema accepts (strings `fz1`, numbers their minimum
/// or 1, arrays one element), so that one field at a time can be spoilt.
fn valid_instance(schema: &Value, root: &Value) -> Value {
    let schema = resolve(schema, root);
    match schema["type"].as_str() {
        // An address where the pattern wants one.
        Some("string") if schema["pattern"].as_str().is_some_and(|p| p.contains('@')) => {
            json!("fz1@example.com")
        }
        Some("string") => json!("fz1"),
        Some("integer") | Some("number") => json!(schema["minimum"].as_u64().unwrap_or(1).max(1)),
        Some("boolean") => json!(true),
        Some("array") => json!([valid_instance(&schema["items"], root)]),
        Some("object") => {
            let mut object = Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    object.insert(name.clone(), valid_instance(property, root));
                }
            }
            Value::Object(object)
        }
        _ => Value::Null,
    }
}

fn with_field(base: &Value, field: &str, value: Value) -> Vec<u8> {
    let mut object = base.clone();
    object[field] = value;
    object.to_string().into_bytes()
}

/// Every hostile case for one endpoint, from its published request schema.
fn cases(schema: &Value, max_payload: usize) -> Vec<Case> {
    use Expect::{NoServerError, Rejected};
    let base = valid_instance(schema, schema);
    let mut all = vec![
        case("malformed JSON", "{not json", Rejected),
        case("a JSON array", "[]", Rejected),
        case("null", "null", Rejected),
        case("a string", "\"text\"", Rejected),
        case("a number", "42", Rejected),
        case("binary garbage", vec![0xff, 0xfe, 0x00, 0x80], Rejected),
        case(
            "an unknown field",
            with_field(&base, "zz_unknown", json!(1)),
            Rejected,
        ),
    ];
    let properties = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if !properties.is_empty() {
        all.push(case("no fields", "{}", Rejected));
    }
    for (field, property) in &properties {
        let mut property = resolve(property, schema).clone();
        // An optional field's type is `[<type>, "null"]`: null is its
        // absence, not hostile; the cases below are for its own type.
        let types: Vec<String> = match &property["type"] {
            Value::String(t) => vec![t.clone()],
            Value::Array(ts) => ts
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let optional = types.iter().any(|t| t == "null");
        if let Some(own) = types.iter().find(|t| *t != "null") {
            property["type"] = json!(own);
        }
        for (what, value) in [
            ("a number", json!(123)),
            ("a boolean", json!(true)),
            ("null", Value::Null),
            ("an object", json!({"a": 1})),
        ] {
            if (property["type"] != "integer" || what != "a number")
                && !(optional && what == "null")
            {
                all.push(case(
                    format!("{field} as {what}"),
                    with_field(&base, field, value),
                    Rejected,
                ));
            }
        }
        match property["type"].as_str() {
            Some("string") => {
                for (what, value, expect) in [
                    ("empty", String::new(), Rejected),
                    ("5,000 characters", "z".repeat(5000), Rejected),
                    ("60,000 characters", "y".repeat(60_000), Rejected),
                    ("4,500 dots", ".".repeat(4500), Rejected),
                    ("a wildcard *", "*".to_owned(), NoServerError),
                    ("a wildcard >", ">".to_owned(), NoServerError),
                    ("dots", "a.b..c".to_owned(), NoServerError),
                    ("spaces", "a b".to_owned(), NoServerError),
                    (
                        "control characters",
                        "a\u{0}\r\n\u{1f}b".to_owned(),
                        Rejected,
                    ),
                    ("unicode", "日本語-😀".to_owned(), NoServerError),
                    ("1,000 emoji", "😀".repeat(1000), Rejected),
                ] {
                    all.push(case(
                        format!("{field}: {what}"),
                        with_field(&base, field, json!(value)),
                        expect,
                    ));
                }
                // A payload just under the server's limit (an envelope of a
                // few dozen bytes around the string).
                let near = "n".repeat(max_payload.saturating_sub(200));
                all.push(case(
                    format!("{field}: near max_payload"),
                    with_field(&base, field, json!(near)),
                    Rejected,
                ));
            }
            Some("integer") => {
                for (what, value) in [
                    ("negative", json!(-1)),
                    ("zero", json!(0)),
                    ("huge", json!(u64::MAX)),
                    ("fractional", json!(1.5)),
                    ("a string", json!("1")),
                ] {
                    all.push(case(
                        format!("{field}: {what}"),
                        with_field(&base, field, value),
                        Rejected,
                    ));
                }
            }
            Some("array") => {
                let one = valid_instance(&property["items"], schema);
                let many: Vec<Value> = (0..20_000).map(|_| one.clone()).collect();
                all.push(case(
                    format!("{field}: empty"),
                    with_field(&base, field, json!([])),
                    Rejected,
                ));
                all.push(case(
                    format!("{field}: 20,000 items"),
                    with_field(&base, field, Value::Array(many)),
                    Rejected,
                ));
            }
            _ => {}
        }
    }
    let valid = base.to_string().into_bytes();
    for garbage in [
        "-1",
        "abc",
        "1.5",
        "99999999999999999999999",
        &"9".repeat(3000),
    ] {
        all.push(Case {
            what: format!("{TIMEOUT_MS}: {}", switchboard::limits::preview(garbage)),
            payload: valid.clone(),
            headers: vec![(TIMEOUT_MS, garbage.to_owned())],
            expect: Rejected,
            mentions: Some(TIMEOUT_MS),
        });
    }
    for garbage in [
        "zzz",
        "00-",
        &"f".repeat(3000),
        "00-00000000000000000000000000000000-0000000000000000-00",
    ] {
        all.push(Case {
            what: format!("{TRACEPARENT}: {}", switchboard::limits::preview(garbage)),
            payload: valid.clone(),
            headers: vec![(TRACEPARENT, garbage.to_owned())],
            // Ignored (a new trace starts); the valid body decides.
            expect: NoServerError,
            mentions: None,
        });
    }
    all
}

/// Connection ids of the service users, from the monitoring port.
async fn service_connections(
    monitor: &Http,
) -> Result<BTreeMap<String, Vec<u64>>, Box<dyn std::error::Error>> {
    let (status, _, connz) = monitor
        .send("GET", "/connz?auth=true&limit=1024", None)
        .await?;
    assert_eq!(status, 200, "connz: {connz}");
    let mut by_user: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for connection in connz["connections"].as_array().cloned().unwrap_or_default() {
        let user = connection["authorized_user"].as_str().unwrap_or_default();
        if SERVICES.contains(&user) {
            by_user
                .entry(user.to_owned())
                .or_default()
                .push(connection["cid"].as_u64().unwrap_or_default());
        }
    }
    Ok(by_user)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_fail_alone_and_no_service_loses_its_connection() -> TestResult {
    let dir = tempfile::tempdir()?;
    let system = start_system(dir.path(), free_port()?, free_port()?);
    let monitor = Http {
        addr: format!("127.0.0.1:{}", system.http_port),
    };
    let client = admin(dir.path()).await?;
    let nats = client.nats().clone();
    let before = service_connections(&monitor).await?;
    assert_eq!(
        before.len(),
        SERVICES.len(),
        "every service is connected: {before:?}"
    );

    let instances = switchboard::discovery::info(&nats, None, Duration::from_millis(500)).await?;
    let mut endpoints: BTreeMap<String, Value> = BTreeMap::new();
    for instance in &instances {
        for endpoint in &instance.endpoints {
            let schema = endpoint
                .metadata
                .as_ref()
                .and_then(|m| m.get(switchboard::service::REQUEST_SCHEMA))
                .and_then(|s| serde_json::from_str(s).ok());
            if let Some(schema) = schema {
                endpoints.insert(endpoint.subject.clone(), schema);
            }
        }
    }
    assert!(
        endpoints.len() >= 10,
        "every endpoint is discovered: {:?}",
        endpoints.keys()
    );

    let mut failures = Vec::new();
    let mut count = 0;
    for (subject, schema) in &endpoints {
        for case in cases(schema, nats.max_payload()) {
            count += 1;
            let mut headers = HeaderMap::new();
            headers.insert(TIMEOUT_MS, "3000");
            for (name, value) in &case.headers {
                headers.insert(*name, value.as_str());
            }
            let request = async_nats::Request::new()
                .payload(case.payload.into())
                .headers(headers)
                .timeout(Some(Duration::from_secs(5)));
            let reply = nats.send_request(subject.clone(), request).await;
            let code = match &reply {
                Ok(message) => message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(SERVICE_ERROR_CODE))
                    .and_then(|c| c.as_str().parse::<u16>().ok()),
                Err(e) => {
                    failures.push(format!("{subject} / {}: no answer ({e})", case.what));
                    continue;
                }
            };
            let body = reply
                .as_ref()
                .map(|m| {
                    String::from_utf8_lossy(&m.payload)
                        .chars()
                        .take(300)
                        .collect::<String>()
                })
                .unwrap_or_default();
            if let Some(text) = case.mentions
                && !body.contains(text)
            {
                failures.push(format!(
                    "{subject} / {}: does not mention {text}: {body}",
                    case.what
                ));
            }
            let good = match (case.expect, code) {
                (Expect::Rejected, Some(code)) => (400..500).contains(&code),
                (Expect::Rejected, None) => false,
                (Expect::NoServerError, code) => code.is_none_or(|c| c < 500),
            };
            if !good {
                failures.push(format!("{subject} / {}: {code:?} {body}", case.what));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(count > 300, "only {count} cases");

    // Nobody was knocked off NATS, and the system still works.
    let after = service_connections(&monitor).await?;
    assert_eq!(before, after, "a service reconnected");
    let user = client
        .call::<_, Value>(
            "users.create",
            &json!({"name": "Still Here", "email": "still@example.com"}),
        )
        .await?;
    assert!(user["id"].is_string());
    let output = system.up.output();
    for refused in ["maximum control line exceeded", "Permissions Violation"] {
        assert!(
            !output.contains(refused),
            "the server logged {refused:?}:\n{output}"
        );
    }
    Ok(())
}
