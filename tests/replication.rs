//! Replication follows the deployment: on a 3-node cluster every stream
//! and bucket the system creates keeps three copies, and an R1 deployment
//! switched to R3 keeps all its data.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use switchboard::events::{Event, Publisher, StreamSpec, StreamStatus};
use switchboard::replication;
use switchboard::state::StateStore;
use switchboard::testing::{TestCluster, free_port};

use common::{Switchboard, test_passwords};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn replicas_of(
    js: &jetstream::Context,
    stream: &str,
) -> Result<usize, Box<dyn std::error::Error>> {
    Ok(js
        .get_stream(stream)
        .await?
        .info()
        .await?
        .config
        .num_replicas)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_r1_deployment_switched_to_r3_keeps_every_event_and_value() -> TestResult {
    let cluster = TestCluster::start(3).await?;
    let nats = cluster.client().await?;
    assert_eq!(replication::cluster_nodes(&nats), 3);
    let js = jetstream::new(nats);

    // As a first deployment left it: R1.
    let spec = StreamSpec::new("ORDERS", ["events.orders.>"]);
    spec.ensure(&js).await?;
    let publisher = Publisher::new(js.clone(), "orders");
    for i in 0..20 {
        let event = Event::new(i).id(format!("o-{i}-created"));
        publisher.publish("events.orders.created", &event).await?;
    }
    let orders: StateStore<u32> = StateStore::open(&js, "orders", 1).await?;
    for i in 0..20u32 {
        orders.create(&format!("o-{i}"), &i).await?;
    }
    assert_eq!(replicas_of(&js, "ORDERS").await?, 1);
    assert_eq!(replicas_of(&js, "KV_orders").await?, 1);

    // The next start asks for three copies: changed in place, not drift.
    let status = spec.clone().replicas(3).ensure(&js).await?;
    assert_eq!(status, StreamStatus::Updated);
    let orders: StateStore<u32> = StateStore::open(&js, "orders", 3).await?;
    assert_eq!(replicas_of(&js, "ORDERS").await?, 3);
    assert_eq!(replicas_of(&js, "KV_orders").await?, 3);

    // Nothing lost, and the data is served (the new copies catch up).
    let mut stream = js.get_stream("ORDERS").await?;
    assert_eq!(stream.info().await?.state.messages, 20);
    for i in 0..20u32 {
        let value = orders.get(&format!("o-{i}")).await?.map(|v| v.value);
        assert_eq!(value, Some(i));
    }
    // Asking again changes nothing.
    assert_eq!(spec.replicas(3).ensure(&js).await?, StreamStatus::Unchanged);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_cluster_up_replicas_3_makes_every_stream_and_bucket_r3() -> TestResult {
    let cluster = TestCluster::start(3).await?;
    let dir = tempfile::tempdir()?;
    let mut env = test_passwords();
    env.push(("NATS_URL".to_owned(), cluster.url()));
    env.push((
        "XDG_CONFIG_HOME".to_owned(),
        dir.path().display().to_string(),
    ));
    let http_addr = format!("127.0.0.1:{}", free_port()?);
    let mut up = Switchboard::spawn(
        &["up", "--replicas", "3", "--http-addr", http_addr.as_str()],
        &env,
    );
    up.wait_for("switchboard: ready", Duration::from_secs(90));

    // Consumers set up their streams and buckets beside serving: wait for
    // every one the system declares.
    let js = jetstream::new(cluster.client().await?);
    let expected = [
        "USERS",
        "ORDERS",
        "INVENTORY",
        "DLQ",
        "KV_users",
        "KV_orders",
        "KV_inventory",
        "KV_notifications",
        "KV_processed-inventory-orders-created",
        "KV_processed-inventory-orders-cancelled",
        "KV_processed-notifications-users",
        "KV_processed-notifications-orders",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let replicas = loop {
        let mut replicas = BTreeMap::new();
        let mut streams = js.streams();
        while let Some(info) = streams.next().await {
            let info = info?;
            replicas.insert(info.config.name.clone(), info.config.num_replicas);
        }
        let all = expected.iter().all(|e| replicas.contains_key(*e));
        if all || std::time::Instant::now() > deadline {
            break replicas;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for name in expected {
        assert!(replicas.contains_key(name), "{name} missing: {replicas:?}");
    }
    let single: Vec<_> = replicas.iter().filter(|(_, r)| **r != 3).collect();
    assert!(single.is_empty(), "not R3: {single:?}");
    assert!(
        !up.output().contains("warning: connected to a cluster"),
        "no under-replication warning at R3"
    );
    Ok(())
}
