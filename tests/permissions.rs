//! Least privilege: with the project's `nats.conf`, each service user is
//! refused what belongs to another service, while admin may do everything.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use switchboard::testing::{TestServer, TestServerConfig};

use common::{project_config, test_passwords};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn server() -> Result<TestServer, Box<dyn std::error::Error>> {
    let mut config = TestServerConfig::default().config_file(project_config());
    for (key, value) in test_passwords() {
        config = config.env(key, value);
    }
    Ok(TestServer::with_config(config).await?)
}

async fn connect(
    server: &TestServer,
    user: &str,
) -> Result<async_nats::Client, Box<dyn std::error::Error>> {
    let password = test_passwords()
        .into_iter()
        .find(|(k, _)| *k == switchboard_cli::credentials::password_env(user))
        .map(|(_, v)| v)
        .ok_or("no password")?;
    Ok(
        async_nats::ConnectOptions::with_user_and_password(user.into(), password)
            .connect(server.url())
            .await?,
    )
}

async fn request(client: &async_nats::Client, subject: &str) -> bool {
    let request = async_nats::Request::new()
        .payload("{}".into())
        .timeout(Some(Duration::from_millis(500)));
    client
        .send_request(subject.to_owned(), request)
        .await
        .is_ok()
}

#[tokio::test]
async fn each_service_user_is_refused_what_belongs_to_others() -> TestResult {
    let server = server().await?;
    let admin = connect(&server, "admin").await?;
    let js = jetstream::new(admin.clone());
    // What exists: every stream and bucket, and a responder on every endpoint.
    for stream in [
        contracts::users::stream(),
        contracts::orders::stream(),
        contracts::inventory::stream(),
    ] {
        stream.ensure(&js).await?;
    }
    for bucket in ["users", "orders", "inventory", "notifications"] {
        switchboard::state::StateStore::<String>::open(&js, bucket, 1).await?;
    }
    let mut responders = Vec::new();
    for subject in [
        "users.get",
        "orders.create",
        "inventory.reserve",
        "notifications.list",
    ] {
        let mut subscription = admin.subscribe(subject.to_owned()).await?;
        let replier = admin.clone();
        responders.push(tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(message) = subscription.next().await {
                if let Some(reply) = message.reply {
                    let _ = replier.publish(reply, "{}".into()).await;
                }
            }
        }));
    }
    admin.flush().await?;
    assert!(
        request(&admin, "orders.create").await,
        "admin may call anything"
    );

    // (user, a foreign endpoint, a foreign event subject, a foreign bucket)
    let cases = [
        ("users", "orders.create", "events.orders.created", "orders"),
        ("inventory", "users.get", "events.users.created", "users"),
        (
            "orders",
            "notifications.list",
            "events.inventory.reserved",
            "inventory",
        ),
        (
            "notifications",
            "orders.create",
            "events.orders.cancelled",
            "orders",
        ),
        (
            "gateway",
            "inventory.reserve",
            "events.orders.created",
            "users",
        ),
    ];
    for (user, endpoint, event, bucket) in cases {
        let client = connect(&server, user).await?;
        assert!(
            !request(&client, endpoint).await,
            "{user} could call {endpoint}"
        );
        let user_js = jetstream::new(client.clone());
        let published = match user_js.publish(event, "{}".into()).await {
            Ok(ack) => tokio::time::timeout(Duration::from_secs(1), ack)
                .await
                .is_ok_and(|a| a.is_ok()),
            Err(_) => false,
        };
        assert!(!published, "{user} could publish {event}");
        let bucket_opened =
            tokio::time::timeout(Duration::from_secs(2), user_js.get_key_value(bucket))
                .await
                .is_ok_and(|r| r.is_ok());
        assert!(!bucket_opened, "{user} could open bucket {bucket}");
    }
    // Nothing foreign got stored.
    for stream in ["USERS", "ORDERS", "INVENTORY"] {
        assert_eq!(
            js.get_stream(stream).await?.info().await?.state.messages,
            0,
            "{stream}"
        );
    }
    // And each may use its own contract: orders may call users.get.
    let orders = connect(&server, "orders").await?;
    assert!(
        request(&orders, "users.get").await,
        "orders may call users.get"
    );
    let gateway = connect(&server, "gateway").await?;
    assert!(
        request(&gateway, "orders.create").await,
        "gateway may call public endpoints"
    );
    for responder in responders {
        responder.abort();
    }
    Ok(())
}

#[tokio::test]
async fn anonymous_connections_are_refused() -> TestResult {
    let server = server().await?;
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(server.url())
        .await;
    assert!(matches!(
        anonymous.map_err(|e| e.kind()),
        Err(async_nats::ConnectErrorKind::AuthorizationViolation)
    ));
    Ok(())
}

/// nats-server 2.14 added a second ack subject format (ADR-15 token v2:
/// `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>…`), opt-in through
/// the `js_ack_fc_v2` feature flag and announced to become the default. The
/// generated permissions allow both: a service acks its events either way.
#[tokio::test]
async fn acks_pass_the_permissions_in_the_v2_ack_subject_format() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("nats-v2-acks.conf");
    std::fs::write(
        &config,
        format!(
            "{}\nfeature_flags {{ js_ack_fc_v2: true }}\n",
            std::fs::read_to_string(project_config())?
        ),
    )?;
    let mut options = TestServerConfig::default().config_file(&config);
    for (key, value) in test_passwords() {
        options = options.env(key, value);
    }
    let server = TestServer::with_config(options).await?;
    let admin = jetstream::new(connect(&server, "admin").await?);
    contracts::orders::stream().ensure(&admin).await?;
    admin
        .publish("events.orders.created", "{}".into())
        .await?
        .await?;

    // notifications acks an event of its own consumer (partition 0 of its
    // keyed one, which takes events published without a shard), as its user.
    let notifications = jetstream::new(connect(&server, "notifications").await?);
    let stream = notifications.get_stream("ORDERS").await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("notifications-orders-p0".into()),
            filter_subjects: vec![
                contracts::orders::CREATED.into(),
                contracts::orders::CANCELLED.into(),
            ],
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    use futures::StreamExt;
    let mut batch = consumer.fetch().max_messages(1).messages().await?;
    let message = batch
        .next()
        .await
        .ok_or("no event delivered")?
        .map_err(|e| e.to_string())?;
    let reply = message
        .reply
        .clone()
        .map(|r| r.to_string())
        .unwrap_or_default();
    // v2: $JS.ACK.<domain, `_` for none>.<account hash>.ORDERS.notifications-orders.…
    let tokens: Vec<&str> = reply.split('.').collect();
    assert_eq!(
        tokens.get(4..6),
        Some(&["ORDERS", "notifications-orders-p0"][..]),
        "the server sends v2 ack subjects: {reply}"
    );
    // A double ack waits for the server's confirmation: refused by the
    // permissions, it would time out.
    message.double_ack().await.map_err(|e| e.to_string())?;
    let orders = admin.get_stream("ORDERS").await?;
    let info = orders.consumer_info("notifications-orders-p0").await?;
    assert_eq!(info.ack_floor.stream_sequence, 1);
    Ok(())
}

#[tokio::test]
async fn a_keyed_consumer_runs_on_its_derived_permissions_and_dead_letters() -> TestResult {
    // notifications' keyed consumer of order events as its own user, with
    // nothing but what its contract derives: partitions, pins, heartbeats,
    // its idempotency bucket and its dead letters.
    let server = server().await?;
    let admin = jetstream::new(connect(&server, "admin").await?);
    contracts::orders::stream().ensure(&admin).await?;
    let notifications = jetstream::new(connect(&server, "notifications").await?);
    let spec = switchboard::events::ConsumerSpec::new("ORDERS", "notifications-orders")
        .filter([contracts::orders::CREATED, contracts::orders::CANCELLED])
        .keyed(8)
        .ack_wait(Duration::from_secs(5))
        .idempotent(Duration::from_secs(60))
        .max_deliver(1);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(switchboard::events::consumer::run(
            notifications,
            spec,
            |_: switchboard::events::ReceivedEvent<serde_json::Value>| async {
                Err(switchboard::events::HandlerError::permanent(
                    "refused on purpose",
                ))
            },
            async move { stop.cancelled().await },
        ))
    };
    let orders = switchboard::events::Publisher::new(
        jetstream::new(connect(&server, "orders").await?),
        "orders",
    );
    let event = switchboard::events::Event::new(serde_json::json!({"id": "o-9"}))
        .id("o-9-created")
        .subject("o-9");
    orders.publish(contracts::orders::CREATED, &event).await?;
    let letters = switchboard::events::DeadLetters::open(&admin).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut found = Vec::new();
    while found.is_empty() && std::time::Instant::now() < deadline {
        found = letters.list().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await??;
    let letter = found
        .first()
        .ok_or("no dead letter: the consumer could not run or write it")?;
    assert_eq!(letter.info.consumer, "notifications-orders");
    assert_eq!(letter.info.error, "refused on purpose");
    Ok(())
}
