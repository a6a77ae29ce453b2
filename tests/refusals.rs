//! A refusal is an error, not silence: a call to a subject the caller's NATS
//! user may not publish to fails as `PermissionDenied` naming the user and
//! the subject — long before its deadline — and a refused connection says
//! what to set.

use std::time::Duration;

use switchboard::client::{CallError, CallOptions, Client};
use switchboard::connect::ConnectConfig;
use switchboard::testing::{TestServer, TestServerConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const USERS: &str = r#"
authorization {
  users: [
    { user: caller, password: caller-pw, permissions: {
        publish: { allow: ["allowed.>"] },
        subscribe: { allow: ["_INBOX.>"] } } },
    { user: server, password: server-pw }
  ]
}
"#;

async fn server() -> Result<TestServer, Box<dyn std::error::Error>> {
    Ok(TestServer::with_config(TestServerConfig::default().config(USERS)).await?)
}

fn as_user(server: &TestServer, user: &str, password: &str) -> ConnectConfig {
    ConnectConfig {
        url: server.url(),
        ..ConnectConfig::from_env("refusals-test")
    }
    .user_and_password(user, password)
}

/// Answers every request on `subject` with `{}`.
async fn responder(nats: async_nats::Client, subject: &str) -> TestResult {
    use futures::StreamExt;
    let mut requests = nats.subscribe(subject.to_owned()).await?;
    nats.flush().await?;
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let _ = nats.publish(reply, "{}".into()).await;
            }
        }
    });
    Ok(())
}

#[tokio::test]
async fn a_call_the_user_may_not_publish_fails_at_once_naming_user_and_subject() -> TestResult {
    let server = server().await?;
    let serving = as_user(&server, "server", "server-pw").connect().await?;
    responder(serving.clone(), "allowed.echo").await?;
    responder(serving, "forbidden.echo").await?;
    let client = Client::new(as_user(&server, "caller", "caller-pw").connect().await?);
    // A deadline far beyond the test's own bound: only a refusal ends it in time.
    let patient = CallOptions::default().timeout(Duration::from_secs(60));

    let allowed: Result<serde_json::Value, CallError> = client
        .call_with("allowed.echo", &serde_json::json!({}), patient.clone())
        .await;
    assert!(allowed.is_ok(), "{allowed:?}");

    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        client.call_with::<_, serde_json::Value>(
            "forbidden.echo",
            &serde_json::json!({}),
            patient.clone(),
        ),
    )
    .await
    .map_err(|_| "the refused call waited for its deadline")?;
    match refused {
        Err(CallError::PermissionDenied { subject, refusal }) => {
            assert_eq!(subject, "forbidden.echo");
            assert_eq!(refusal.user, "caller");
            assert_eq!(refusal.subject, "forbidden.echo");
        }
        other => return Err(format!("expected PermissionDenied, got {other:?}").into()),
    }
    let message = client
        .call_with::<_, serde_json::Value>(
            "forbidden.echo",
            &serde_json::json!({}),
            patient.clone(),
        )
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("permission denied")
            && message.contains("caller")
            && message.contains("forbidden.echo"),
        "{message}"
    );
    // The connection is still good for what the user may do.
    let again: Result<serde_json::Value, CallError> = client
        .call_with("allowed.echo", &serde_json::json!({}), patient)
        .await;
    assert!(again.is_ok(), "{again:?}");
    Ok(())
}

#[tokio::test]
async fn a_refused_connection_says_what_to_set() -> TestResult {
    let server = server().await?;
    let error = as_user(&server, "caller", "wrong").connect().await.err();
    let message = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("authorization violation"), "{message}");
    assert!(message.contains("NATS_PASSWORD"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_service_whose_user_may_not_hear_its_requests_does_not_start() -> TestResult {
    use switchboard::service::{Context, Endpoint, ServeError, Service};
    async fn echo(
        _ctx: Context,
        request: serde_json::Value,
    ) -> Result<serde_json::Value, switchboard::ServiceError> {
        Ok(request)
    }
    let server = server().await?;
    let nats = as_user(&server, "caller", "caller-pw").connect().await?;
    let started = Service::builder("forbidden", "1.0.0")
        .endpoint(Endpoint::new("echo", echo))
        .start(nats)
        .await;
    match started {
        Err(ServeError::PermissionDenied { service, refusal }) => {
            assert_eq!(service, "forbidden");
            assert_eq!(refusal.user, "caller");
            let message = ServeError::PermissionDenied { service, refusal }.to_string();
            assert!(message.contains("may not subscribe to"), "{message}");
        }
        other => return Err(format!("expected PermissionDenied, got {other:?}").into()),
    }
    Ok(())
}

#[tokio::test]
async fn the_patched_client_answers_a_refused_request_itself() -> TestResult {
    // A connection the kit did not make records no refusal: only the
    // patched async-nats (vendor/async-nats/PATCH.md) can end this call
    // before its deadline, by answering the refused request itself.
    let server = server().await?;
    let serving = as_user(&server, "server", "server-pw").connect().await?;
    responder(serving, "forbidden.plain").await?;
    let plain =
        async_nats::ConnectOptions::with_user_and_password("caller".into(), "caller-pw".into())
            .connect(server.url())
            .await?;
    let request = async_nats::Request::new()
        .payload("{}".into())
        .timeout(Some(Duration::from_secs(60)));
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        plain.send_request("forbidden.plain".to_owned(), request),
    )
    .await
    .map_err(|_| "the refused request waited for its deadline")?;
    let error = answer.err().ok_or("a refused request was answered")?;
    assert_eq!(error.kind(), async_nats::RequestErrorKind::Other);
    let said = error.to_string();
    assert!(
        said.contains("Permissions Violation for Publish to \"forbidden.plain\""),
        "{said}"
    );
    // Through the kit's client on the same connection: a typed error.
    let refused = Client::new(plain)
        .call_with::<_, serde_json::Value>(
            "forbidden.plain",
            &serde_json::json!({}),
            CallOptions::default().timeout(Duration::from_secs(60)),
        )
        .await;
    assert!(
        matches!(&refused, Err(CallError::PermissionDenied { subject, .. }) if subject == "forbidden.plain"),
        "{refused:?}"
    );
    Ok(())
}
