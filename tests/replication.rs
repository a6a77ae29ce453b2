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
use switchboard::testing::{TestCluster, free_port, free_port_block};

use common::{Signal, Switchboard, admin, exe_name, test_passwords, up_args};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One cluster at a time: three clusters starting together on two cores
/// measure the machine (a consumer set up 30 s late), not the system.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// The replica count of every stream, once all of `expected` exist (the
/// consumers create theirs beside serving), or as they are after 90 s.
async fn replica_counts(
    js: &jetstream::Context,
    expected: &[&str],
) -> Result<BTreeMap<String, usize>, Box<dyn std::error::Error>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut replicas = BTreeMap::new();
        let mut streams = js.streams();
        while let Some(info) = streams.next().await {
            let info = info?;
            replicas.insert(info.config.name.clone(), info.config.num_replicas);
        }
        let all = expected.iter().all(|e| replicas.contains_key(*e));
        if all || std::time::Instant::now() > deadline {
            return Ok(replicas);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every stream and bucket the reference system declares.
const SYSTEM_STREAMS: [&str; 11] = [
    "USERS",
    "ORDERS",
    "INVENTORY",
    "DLQ",
    "KV_users",
    "KV_orders",
    "KV_inventory",
    "KV_notifications",
    "KV_processed-inventory-orders",
    "KV_processed-notifications-users",
    "KV_processed-notifications-orders",
];

fn assert_all_r3(replicas: &BTreeMap<String, usize>) {
    for name in SYSTEM_STREAMS {
        assert!(replicas.contains_key(name), "{name} missing: {replicas:?}");
    }
    let other: Vec<_> = replicas.iter().filter(|(_, r)| **r != 3).collect();
    assert!(other.is_empty(), "not R3: {other:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_r1_deployment_switched_to_r3_keeps_every_event_and_value() -> TestResult {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
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
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
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

    let js = jetstream::new(cluster.client().await?);
    assert_all_r3(&replica_counts(&js, &SYSTEM_STREAMS).await?);
    assert!(
        !up.output().contains("warning: connected to a cluster"),
        "no under-replication warning at R3"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn up_cluster_3_is_r3_and_serves_through_the_loss_of_a_node() -> TestResult {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir()?;
    // Client, monitoring and route ports of the three nodes, none shared.
    let block = free_port_block(9)?;
    let mut args = up_args(block, block + 3, &dir.path().join("data"));
    let cluster_port = (block + 6).to_string();
    args.extend([
        "--cluster".into(),
        "3".into(),
        "--cluster-port".into(),
        cluster_port,
    ]);
    let env = vec![(
        "XDG_CONFIG_HOME".to_owned(),
        dir.path().display().to_string(),
    )];
    let mut up = Switchboard::spawn(&args, &env);
    up.wait_for("switchboard: ready", Duration::from_secs(120));
    assert!(
        up.output().contains("3-node nats-server cluster"),
        "{}",
        up.output()
    );

    let client = admin(dir.path()).await?;
    let js = jetstream::new(client.nats().clone());
    assert_all_r3(&replica_counts(&js, &SYSTEM_STREAMS).await?);

    let call = |subject: &'static str, body: serde_json::Value| {
        let client = client.clone();
        async move {
            client
                .call_with::<_, serde_json::Value>(
                    subject,
                    &body,
                    switchboard::client::CallOptions::default().timeout(Duration::from_secs(2)),
                )
                .await
        }
    };
    let user = call(
        "users.create",
        serde_json::json!({"name": "Nod", "email": "nod@example.com"}),
    )
    .await?;
    let user_id = user["id"].as_str().ok_or("no user id")?.to_owned();
    call(
        "inventory.restock",
        serde_json::json!({"sku": "bolt", "quantity": 1000}),
    )
    .await?;

    // SIGKILL one node; `up` restarts it; orders keep being placed.
    let servers: Vec<u32> = up
        .descendants()
        .into_iter()
        .filter(|pid| exe_name(*pid).as_deref() == Some("nats-server"))
        .collect();
    assert_eq!(servers.len(), 3, "three nodes");
    let victim = servers[1];
    switchboard::process::send(victim, Signal::SIGKILL);
    let killed = std::time::Instant::now();
    // Orders one after another until the system has served steadily again
    // (20 in a row) and at least 10 s passed, for at most 40 s: the window
    // is the Raft elections of what the node led, stretched by the callers'
    // circuit breakers (5 failures open one for 5 s) — measured, not assumed.
    let (mut ok, mut failed, mut last_failure) = (0, 0, None);
    let (mut in_a_row, mut kinds) = (0, std::collections::BTreeMap::<String, u32>::new());
    while killed.elapsed() < Duration::from_secs(40)
        && !(killed.elapsed() >= Duration::from_secs(10) && in_a_row >= 20)
    {
        let order =
            serde_json::json!({"user_id": user_id, "items": [{"sku": "bolt", "quantity": 1}]});
        match call("orders.create", order).await {
            Ok(_) => {
                ok += 1;
                in_a_row += 1;
            }
            Err(error) => {
                failed += 1;
                in_a_row = 0;
                last_failure = Some(killed.elapsed());
                let kind = format!("{error:?}");
                let kind = kind.split([' ', '{', '(']).next().unwrap_or_default();
                *kinds.entry(kind.to_owned()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    println!(
        "node loss: {ok} orders placed, {failed} failed {kinds:?}, last failure after {last_failure:?}"
    );
    assert!(ok > 0, "no order placed after the node loss");
    // The node is back (a new process) and the cluster has three again.
    let back = common::eventually(Duration::from_secs(20), || {
        let now: Vec<u32> = up
            .descendants()
            .into_iter()
            .filter(|pid| exe_name(*pid).as_deref() == Some("nats-server"))
            .collect();
        now.len() == 3 && !now.contains(&victim)
    });
    assert!(back, "the killed node was not restarted");
    Ok(())
}
