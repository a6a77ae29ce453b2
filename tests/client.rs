//! The calling side of the request-reply kit, against a real nats-server.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::client::{
    BreakerConfig, BreakerState, CallError, CallOptions, Client, RetryBudgetConfig,
};
use switchboard::discovery::{self, Target};
use switchboard::service::{Context, Endpoint, Service};
use switchboard::testing::TestServer;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct Ping {}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Pong {
    ok: bool,
}

async fn pong(_ctx: Context, _req: Ping) -> Result<Pong, ServiceError> {
    Ok(Pong { ok: true })
}

fn once() -> CallOptions {
    CallOptions::default().max_retries(0)
}

#[tokio::test]
async fn no_responders_fails_at_once_not_after_the_timeout() -> TestResult {
    let server = TestServer::start().await?;
    let client = Client::new(server.client().await?);
    let five_seconds = CallOptions::default().timeout(Duration::from_secs(5));
    let asked = Instant::now();
    let result = client
        .call_with::<_, Pong>("nobody.home", &Ping {}, five_seconds.clone().max_retries(0))
        .await;
    let took = asked.elapsed();
    assert!(
        matches!(result, Err(CallError::NoResponders { .. })),
        "{result:?}"
    );
    assert!(took < Duration::from_millis(100), "took {took:?}");
    // With the default retries (safe here: nothing was sent anywhere) it
    // still fails in milliseconds, not after the 5 s timeout.
    let asked = Instant::now();
    let result = client
        .call_with::<_, Pong>("nobody.home", &Ping {}, five_seconds)
        .await;
    assert!(
        matches!(result, Err(CallError::NoResponders { .. })),
        "{result:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        asked.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn timeouts_are_typed_and_retried_only_when_idempotent() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    // A raw responder that never answers: requests reach it, replies never come.
    let _silent = nats.queue_subscribe("slow.never", "q".into()).await?;
    nats.flush().await?;
    let client = Client::new(nats);
    let short = Duration::from_millis(150);

    let result = client
        .call_with::<_, Pong>(
            "slow.never",
            &Ping {},
            CallOptions::default().timeout(short),
        )
        .await;
    assert!(
        matches!(result, Err(CallError::TimedOut { .. })),
        "{result:?}"
    );
    assert_eq!(
        client.retry_budget().snapshot().0,
        0,
        "a non-idempotent timeout is not retried"
    );

    // Attempts of 150 ms within 600 ms: an idempotent call is retried …
    let attempts = CallOptions::default()
        .timeout(Duration::from_millis(600))
        .attempt_timeout(short);
    let result = client
        .call_with::<_, Pong>("slow.never", &Ping {}, attempts.clone().idempotent(true))
        .await;
    assert!(matches!(result, Err(CallError::TimedOut { .. })));
    let retried = client.retry_budget().snapshot().0;
    assert!(retried >= 1, "an idempotent timeout is retried");
    // … a non-idempotent one is not, whatever time is left.
    let result = client
        .call_with::<_, Pong>("slow.never", &Ping {}, attempts)
        .await;
    assert!(matches!(result, Err(CallError::TimedOut { .. })));
    assert_eq!(client.retry_budget().snapshot().0, retried);
    Ok(())
}

#[tokio::test]
async fn circuit_opens_short_circuits_and_closes_after_recovery() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let client = Client::with_config(
        nats.clone(),
        BreakerConfig {
            threshold: 3,
            cool_down: Duration::from_millis(300),
        },
        RetryBudgetConfig::default(),
    );
    for _ in 0..3 {
        let r = client
            .call_with::<_, Pong>("flaky.ping", &Ping {}, once())
            .await;
        assert!(matches!(r, Err(CallError::NoResponders { .. })));
    }
    assert_eq!(client.breakers().state("flaky.ping"), BreakerState::Open);
    let r = client
        .call_with::<_, Pong>("flaky.ping", &Ping {}, once())
        .await;
    assert!(matches!(r, Err(CallError::CircuitOpen { .. })), "{r:?}");
    // Other subjects are not affected.
    assert_eq!(client.breakers().state("other.ping"), BreakerState::Closed);

    // The service comes back; after the cool-down a probe closes the breaker.
    let _service = Service::builder("flaky", "1.0.0")
        .endpoint(Endpoint::new("ping", pong))
        .start(nats)
        .await?;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let pong: Pong = client.call_with("flaky.ping", &Ping {}, once()).await?;
    assert!(pong.ok);
    assert_eq!(client.breakers().state("flaky.ping"), BreakerState::Closed);
    let snapshot = client.breakers().snapshot();
    let flaky = snapshot.get("flaky.ping").ok_or("no breaker")?;
    assert_eq!((flaky.opened, flaky.short_circuited), (1, 1));
    Ok(())
}

#[tokio::test]
async fn client_errors_do_not_trip_the_breaker() -> TestResult {
    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    struct Reject {}
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let _service = Service::builder("strict", "1.0.0")
        .endpoint(Endpoint::new("check", |_ctx: Context, _: Reject| async {
            Err::<Pong, _>(ServiceError::bad_request("always wrong"))
        }))
        .start(nats.clone())
        .await?;
    let client = Client::with_config(
        nats,
        BreakerConfig {
            threshold: 2,
            cool_down: Duration::from_secs(60),
        },
        RetryBudgetConfig::default(),
    );
    for _ in 0..5 {
        let r = client.call::<_, Pong>("strict.check", &Reject {}).await;
        assert!(
            matches!(&r, Err(CallError::Rejected(e)) if e.code == 400),
            "{r:?}"
        );
    }
    assert_eq!(
        client.breakers().state("strict.check"),
        BreakerState::Closed
    );
    Ok(())
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() -> TestResult {
    let server = TestServer::start().await?;
    let client = Client::with_config(
        server.client().await?,
        // Breaker out of the way: this test is about the budget.
        BreakerConfig {
            threshold: u32::MAX,
            cool_down: Duration::from_secs(1),
        },
        RetryBudgetConfig {
            ratio: 0.0,
            reserve: 3.0,
            max_balance: 3.0,
        },
    );
    for _ in 0..10 {
        let r = client
            .call_with::<_, Pong>("gone.ping", &Ping {}, CallOptions::default().max_retries(2))
            .await;
        assert!(matches!(r, Err(CallError::NoResponders { .. })));
    }
    let (retries, refused, _) = client.retry_budget().snapshot();
    assert_eq!(retries, 3, "only the reserve was spent on retries");
    // Call 1 retried twice, call 2 once and was then refused; calls 3–10
    // were refused at their first retry.
    assert_eq!(refused, 9, "every later call was refused a retry");
    Ok(())
}

#[tokio::test]
async fn a_retry_on_no_responders_reaches_a_service_that_just_started() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let client = Client::new(nats.clone());
    let starting = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Service::builder("late", "1.0.0")
            .endpoint(Endpoint::new("ping", pong))
            .start(nats)
            .await
    };
    let call = client.call_with::<_, Pong>(
        "late.ping",
        &Ping {},
        CallOptions {
            max_retries: 8,
            retry_min_delay: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(40),
            ..CallOptions::default()
        },
    );
    let (service, reply) = tokio::join!(starting, call);
    let _service = service?;
    assert!(reply?.ok);
    Ok(())
}

#[tokio::test]
async fn breaker_states_are_visible_in_the_calling_service_stats() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let _caller = Service::builder("caller", "1.0.0")
        .endpoint(Endpoint::new("relay", |ctx: Context, _: Ping| async move {
            let pong: Pong = ctx
                .call_with(
                    "missing.ping",
                    &Ping {},
                    CallOptions::default().max_retries(0),
                )
                .await?;
            Ok::<_, ServiceError>(pong)
        }))
        .start(nats.clone())
        .await?;
    let client = Client::new(nats.clone());
    for _ in 0..5 {
        let r = client
            .call_with::<_, Pong>("caller.relay", &Ping {}, once())
            .await;
        assert!(
            matches!(&r, Err(CallError::Rejected(e)) if e.code == 503),
            "{r:?}"
        );
    }
    let stats =
        discovery::stats(&nats, Target::service("caller"), Duration::from_millis(300)).await?;
    let data = stats
        .first()
        .and_then(|s| s.endpoints.first())
        .and_then(|e| e.data.clone())
        .ok_or("no stats data")?;
    assert_eq!(data["circuit_breakers"]["missing.ping"]["state"], "open");
    assert_eq!(
        data["circuit_breakers"]["missing.ping"]["consecutive_failures"],
        5
    );
    Ok(())
}
