//! `state::History` on a real server: appends once per id, pages newest
//! first with a cursor, and stays dense and exact under concurrent
//! appenders in separate "processes" (stores that share no lock).

use async_nats::jetstream;
use switchboard::state::{Appended, History, StateStore};
use switchboard::testing::TestServer;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn store(
    nats: &async_nats::Client,
) -> Result<StateStore<serde_json::Value>, Box<dyn std::error::Error>> {
    Ok(StateStore::open(&jetstream::new(nats.clone()), "parcels", 1).await?)
}

#[tokio::test]
async fn appends_once_per_id_and_pages_newest_first() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let history: History<String> = History::new(&store(&nats).await?, "log");
    for n in 0..7 {
        assert_eq!(
            history
                .append("ann", &format!("e{n}"), &format!("entry {n}"))
                .await?,
            Appended::New(n)
        );
    }
    assert_eq!(
        history.append("ann", "e3", &"again".to_owned()).await?,
        Appended::Already(3),
        "an id appended before adds nothing"
    );
    // An owner that is no key-safe text, and one with nothing.
    history
        .append("bob@example.com", "e0", &"b".to_owned())
        .await?;
    let empty = history.page("nobody", None, 10).await?;
    assert!(empty.entries.is_empty() && empty.next.is_none() && empty.total == 0);

    let first = history.page("ann", None, 3).await?;
    assert_eq!(first.entries, ["entry 6", "entry 5", "entry 4"]);
    assert_eq!((first.next, first.total), (Some(4), 7));
    let second = history.page("ann", first.next, 3).await?;
    assert_eq!(second.entries, ["entry 3", "entry 2", "entry 1"]);
    let last = history.page("ann", second.next, 3).await?;
    assert_eq!(last.entries, ["entry 0"]);
    assert_eq!(last.next, None);
    // A cursor past the end starts at the newest.
    assert_eq!(history.page("ann", Some(99), 1).await?.entries, ["entry 6"]);
    assert_eq!(
        history.page("bob@example.com", None, 5).await?.entries,
        ["b"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appenders_in_two_processes_lose_and_double_nothing() -> TestResult {
    let server = TestServer::start().await?;
    // Two connections and two stores: no in-process turn-taking between them.
    let (a, b) = (server.client().await?, server.client().await?);
    let histories: [History<u64>; 2] = [
        History::new(&store(&a).await?, "log"),
        History::new(&store(&b).await?, "log"),
    ];
    let mut appenders = tokio::task::JoinSet::new();
    for worker in 0..8u64 {
        let history = histories[(worker % 2) as usize].clone();
        appenders.spawn(async move {
            // Every id is appended by two workers (a redelivery elsewhere).
            for n in 0..40u64 {
                let id = (worker / 2) * 40 + n;
                history.append("ann", &format!("e{id}"), &id).await?;
            }
            Ok::<_, switchboard::state::StateError>(())
        });
    }
    while let Some(done) = appenders.join_next().await {
        done??;
    }
    let page = histories[0].page("ann", None, 500).await?;
    assert_eq!(page.total, 160);
    let mut ids = page.entries.clone();
    ids.sort_unstable();
    assert_eq!(ids, (0..160).collect::<Vec<_>>(), "each id exactly once");
    Ok(())
}
