//! Content-type negotiation against a real nats-server: JSON by default
//! (no header either way), MessagePack when a caller sends it (answered in
//! kind) or asks for it,
//! errors always JSON, and bad or unknown encodings refused with a 4xx
//! before any handler runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::client::{CallError, CallOptions, Client};
use switchboard::codec::{ACCEPT, CONTENT_TYPE, Encoding, SERVICE_ERROR_CODE, encoding};
use switchboard::service::{Context, Endpoint, RunningService, Service};
use switchboard::testing::TestServer;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Reading {
    #[schemars(length(max = 64))]
    sensor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    values: Vec<f64>,
    taken_at_ms: u64,
}

/// A service whose `record` endpoint echoes a reading (409 for the sensor
/// `refused`) and counts the times its handler ran.
async fn sensors(
    nats: async_nats::Client,
    runs: Arc<AtomicUsize>,
) -> Result<RunningService, Box<dyn std::error::Error>> {
    Ok(Service::builder("sensors", "1.0.0")
        .endpoint(Endpoint::new(
            "record",
            move |_ctx: Context, reading: Reading| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if reading.sensor == "refused" {
                        return Err(ServiceError::conflict("sensor refused")
                            .with_details(serde_json::json!({ "sensor": reading.sensor })));
                    }
                    Ok(reading)
                }
            },
        ))
        .start(nats)
        .await?)
}

fn reading(sensor: &str) -> Reading {
    Reading {
        sensor: sensor.into(),
        note: None,
        // As measured, not round: JSON spells each in up to 20 characters.
        values: vec![20.0 / 3.0, 2f64.sqrt(), -std::f64::consts::E, 1e-3 / 7.0],
        taken_at_ms: 1_764_633_600_000,
    }
}

async fn raw(
    nats: &async_nats::Client,
    payload: Vec<u8>,
    headers: HeaderMap,
) -> Result<async_nats::Message, Box<dyn std::error::Error>> {
    let request = async_nats::Request::new()
        .payload(payload.into())
        .headers(headers)
        .timeout(Some(Duration::from_secs(5)));
    Ok(nats.send_request("sensors.record", request).await?)
}

/// Headers of `(name, value)` pairs.
fn with(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, *value);
    }
    headers
}

fn content_type(message: &async_nats::Message) -> Option<String> {
    let headers = message.headers.as_ref()?;
    headers.get(CONTENT_TYPE).map(|v| v.as_str().to_owned())
}

#[tokio::test]
async fn message_pack_is_spoken_when_asked_and_json_stays_the_default() -> TestResult {
    let server = TestServer::start().await?;
    let runs = Arc::new(AtomicUsize::new(0));
    let _service = sensors(server.client().await?, runs.clone()).await?;
    let nats = server.client().await?;
    let client = Client::new(nats.clone());
    let sent = reading("s-1");

    // The typed client, MessagePack both ways.
    let packed = CallOptions::default().encoding(Encoding::MessagePack);
    let got: Reading = client
        .call_with("sensors.record", &sent, packed.clone())
        .await?;
    assert_eq!(got, sent);

    // On the wire: MessagePack in, MessagePack out, labelled as such.
    let headers = with(&[
        (CONTENT_TYPE, encoding::MESSAGE_PACK),
        (ACCEPT, encoding::MESSAGE_PACK),
    ]);
    let reply = raw(&nats, rmp_serde::to_vec_named(&sent)?, headers).await?;
    assert_eq!(
        content_type(&reply).as_deref(),
        Some(encoding::MESSAGE_PACK)
    );
    assert_eq!(rmp_serde::from_slice::<Reading>(&reply.payload)?, sent);
    let json_size = serde_json::to_vec(&sent)?.len();
    assert!(
        reply.payload.len() < json_size,
        "MessagePack {} bytes vs JSON {json_size}",
        reply.payload.len()
    );

    // A plain request (what the `nats` CLI sends): JSON back, no header.
    let reply = raw(&nats, serde_json::to_vec(&sent)?, HeaderMap::new()).await?;
    assert_eq!(content_type(&reply), None);
    assert_eq!(serde_json::from_slice::<Reading>(&reply.payload)?, sent);

    // JSON in, MessagePack asked for: MessagePack out.
    let headers = with(&[(ACCEPT, "application/msgpack, application/json;q=0.5")]);
    let reply = raw(&nats, serde_json::to_vec(&sent)?, headers).await?;
    assert_eq!(
        content_type(&reply).as_deref(),
        Some(encoding::MESSAGE_PACK)
    );
    assert_eq!(rmp_serde::from_slice::<Reading>(&reply.payload)?, sent);

    // MessagePack in, nothing asked: answered in kind.
    let headers = with(&[(CONTENT_TYPE, "application/vnd.msgpack")]);
    let reply = raw(&nats, rmp_serde::to_vec_named(&sent)?, headers).await?;
    assert_eq!(
        content_type(&reply).as_deref(),
        Some(encoding::MESSAGE_PACK)
    );
    assert_eq!(rmp_serde::from_slice::<Reading>(&reply.payload)?, sent);

    // MessagePack in, JSON asked for: JSON out, no header.
    let headers = with(&[
        (CONTENT_TYPE, encoding::MESSAGE_PACK),
        (ACCEPT, encoding::JSON),
    ]);
    let reply = raw(&nats, rmp_serde::to_vec_named(&sent)?, headers).await?;
    assert_eq!(content_type(&reply), None);
    assert_eq!(serde_json::from_slice::<Reading>(&reply.payload)?, sent);

    // The default client is JSON, and reads either.
    let got: Reading = client.call("sensors.record", &sent).await?;
    assert_eq!(got, sent);
    assert_eq!(runs.load(Ordering::SeqCst), 7);
    Ok(())
}

#[tokio::test]
async fn bad_encodings_are_refused_before_the_handler_and_errors_stay_json() -> TestResult {
    let server = TestServer::start().await?;
    let runs = Arc::new(AtomicUsize::new(0));
    let _service = sensors(server.client().await?, runs.clone()).await?;
    let nats = server.client().await?;
    let client = Client::new(nats.clone());
    let packed = CallOptions::default().encoding(Encoding::MessagePack);
    let code = |message: &async_nats::Message| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(SERVICE_ERROR_CODE))
            .map(|v| v.as_str().to_owned())
    };

    // An encoding nobody speaks here: 415, naming what is spoken.
    let headers = with(&[(CONTENT_TYPE, "application/xml")]);
    let reply = raw(&nats, b"<reading/>".to_vec(), headers).await?;
    assert_eq!(code(&reply).as_deref(), Some("415"));
    let body: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("application/msgpack"), "{message}");
    // …and a 5,000-character content type is not echoed back whole.
    let headers = with(&[(CONTENT_TYPE, &"x".repeat(5000))]);
    let reply = raw(&nats, Vec::new(), headers).await?;
    assert_eq!(code(&reply).as_deref(), Some("415"));
    assert!(reply.payload.len() < 600, "{} bytes", reply.payload.len());

    // Bytes that are not MessagePack, or not a reading: 400.
    for garbage in [
        vec![0xc1],
        b"{\"sensor\":\"s\"}".to_vec(),
        rmp_serde::to_vec(&7u8)?,
    ] {
        let headers = with(&[
            (CONTENT_TYPE, encoding::MESSAGE_PACK),
            (ACCEPT, encoding::MESSAGE_PACK),
        ]);
        let reply = raw(&nats, garbage, headers).await?;
        assert_eq!(code(&reply).as_deref(), Some("400"));
        // The error is JSON even though MessagePack was asked for.
        assert_eq!(content_type(&reply), None);
        let body: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        assert_eq!(body["error"]["code"], 400);
    }

    // The request's declared limits hold in MessagePack too (the same
    // schema is enforced whatever the bytes).
    let long = reading(&"s".repeat(5000));
    match client
        .call_with::<_, Reading>("sensors.record", &long, packed.clone())
        .await
    {
        Err(CallError::Rejected(error)) => {
            assert_eq!(error.code, 400);
            assert!(error.message.contains("/sensor"), "{}", error.message);
        }
        other => panic!("a 5,000-character sensor gave {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a handler ran on bad input");

    // A handler's error reaches a MessagePack caller whole (JSON body).
    match client
        .call_with::<_, Reading>("sensors.record", &reading("refused"), packed)
        .await
    {
        Err(CallError::Rejected(error)) => {
            assert_eq!(error.code, 409);
            assert_eq!(
                error.details,
                Some(serde_json::json!({ "sensor": "refused" }))
            );
        }
        other => panic!("a refused reading gave {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    Ok(())
}
