//! The test harness itself, against a real nats-server: start, stop, kill,
//! restart with data kept, cleanup on drop and on panic, the config hook,
//! and a three-node JetStream cluster.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use switchboard::testing::{TestCluster, TestServer, TestServerConfig};

use common::running;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn create_stream(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<stream::Stream, Box<dyn std::error::Error>> {
    Ok(js
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{}.>", name.to_lowercase())],
            num_replicas: replicas,
            ..Default::default()
        })
        .await?)
}

async fn stored_messages(
    js: &jetstream::Context,
    name: &str,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut stream = js.get_stream(name).await?;
    Ok(stream.info().await?.state.messages)
}

#[tokio::test]
async fn jetstream_data_survives_kill_and_restart_on_the_same_port() -> TestResult {
    let mut server = TestServer::start().await?;
    let url = server.url();
    let js = jetstream::new(server.client().await?);
    create_stream(&js, "ORDERS", 1).await?;
    for i in 0..10 {
        js.publish("orders.created", format!("order {i}").into())
            .await?
            .await?;
    }
    let first_pid = server.pid();

    server.kill().await?;
    server.restart().await?;
    assert_eq!(server.url(), url, "restart keeps the port");
    assert_ne!(server.pid(), first_pid, "a new process runs");
    let js = jetstream::new(server.client().await?);
    assert_eq!(stored_messages(&js, "ORDERS").await?, 10);

    server.stop().await?;
    server.restart().await?;
    let js = jetstream::new(server.client().await?);
    let stream = js.get_stream("ORDERS").await?;
    let last = stream
        .get_last_raw_message_by_subject("orders.created")
        .await?;
    assert_eq!(&last.payload[..], b"order 9");
    Ok(())
}

#[tokio::test]
async fn dropping_the_server_kills_its_process() -> TestResult {
    let server = TestServer::start().await?;
    let pid = server.pid().ok_or("no pid")?;
    let dir = server.dir().to_path_buf();
    assert!(running(pid));
    drop(server);
    assert!(common::eventually(Duration::from_secs(5), || !running(pid)));
    assert!(!dir.exists(), "the temp store is removed");
    Ok(())
}

#[test]
fn a_panicking_test_still_kills_its_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async {
            let server = TestServer::start().await.unwrap_or_else(|e| panic!("{e}"));
            let _ = tx.send(server.pid());
            panic!("the test fails while the server runs");
        })
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let pid = rx
        .recv()
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no pid sent"));
    assert!(common::eventually(Duration::from_secs(5), || !running(pid)));
}

#[tokio::test]
async fn config_hook_enables_auth_and_anonymous_is_refused() -> TestResult {
    let server = TestServer::with_config(
        TestServerConfig::default()
            .config("authorization { user: alice, password: $ALICE_PW }")
            .env("ALICE_PW", "wonderland"),
    )
    .await?;
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(server.url())
        .await;
    let error = anonymous.err().ok_or("anonymous connection was accepted")?;
    assert_eq!(
        error.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
    );
    let alice =
        async_nats::ConnectOptions::with_user_and_password("alice".into(), "wonderland".into())
            .connect(server.url())
            .await?;
    alice.flush().await?;
    Ok(())
}

#[tokio::test]
async fn servers_run_side_by_side() -> TestResult {
    let (a, b) = tokio::try_join!(TestServer::start(), TestServer::start())?;
    assert_ne!(a.url(), b.url());
    assert_ne!(a.dir(), b.dir());
    let (ca, cb) = (a.client().await?, b.client().await?);
    ca.flush().await?;
    cb.flush().await?;
    Ok(())
}

#[tokio::test]
async fn three_node_cluster_replicates_and_survives_a_node_loss() -> TestResult {
    let mut cluster = TestCluster::start(3).await?;
    assert_eq!(cluster.len(), 3);
    let js = jetstream::new(cluster.client().await?);
    let mut stream = create_stream(&js, "EVENTS", 3).await?;
    // The create returns once the meta leader assigned the stream; its own
    // replica group may elect a leader a moment later, and until then the
    // stream answers "not found".
    let mut info = stream.info().await;
    for _ in 0..50 {
        if info.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        info = stream.info().await;
    }
    assert_eq!(info?.config.num_replicas, 3);
    for i in 0..5 {
        js.publish("events.x", format!("{i}").into()).await?.await?;
    }

    cluster.kill(0).await?;
    // A client of the remaining nodes still reads and writes the R3 stream.
    let rest = cluster.node_url(1).ok_or("no node 1")?;
    let js = jetstream::new(async_nats::connect(rest).await?);
    let mut published = false;
    for _ in 0..50 {
        // Leadership may move away from the killed node first.
        if let Ok(ack) = js.publish("events.x", "after loss".into()).await
            && ack.await.is_ok()
        {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(published, "the stream accepts writes with 2 of 3 nodes");
    assert_eq!(stored_messages(&js, "EVENTS").await?, 6);

    cluster.restart(0).await?;
    let js = jetstream::new(async_nats::connect(cluster.node_url(0).ok_or("no node 0")?).await?);
    assert_eq!(stored_messages(&js, "EVENTS").await?, 6);
    Ok(())
}
