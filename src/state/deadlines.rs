//! Records that must be settled by a deadline: holds that expire.
//!
//! A saga step that takes something for a while (stock held for an order
//! that is being placed) writes a record with a deadline. If the step that
//! should settle it never comes — the caller crashed, timed out, gave up —
//! something must settle it anyway, or the hold leaks. [`watch_deadlines`]
//! is that something: every instance of the owning service watches the
//! records of one view (all of them once at start, then each change), keeps
//! the open deadlines in memory, and calls `on_expired` for each one past
//! due — again on the next tick while it fails, never for a settled one.
//! `on_expired` must settle with compare-and-set (two instances may both
//! see the same deadline pass; one wins, the other finds it settled).
//!
//! Cost: the watch reads every record of the view once per start (a KV
//! watch with history); per change after that, one message.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::StateStore;
use crate::ServiceError;

/// How often open deadlines are checked.
const TICK: Duration = Duration::from_millis(500);
/// Wait before watching again after the watch broke (a server restart).
const REWATCH: Duration = Duration::from_secs(1);

/// A record that may have to be settled by a deadline.
pub trait Deadline {
    /// When it must be settled by, or `None` when it is settled.
    fn deadline(&self) -> Option<SystemTime>;
}

/// Calls `on_expired` for every record of `store` (a view) whose deadline
/// has passed, until `shutdown`. `on_expired` returns `Ok` once the record
/// is settled; an error is logged and tried again on a later tick. A
/// broken watch (a server restart) is re-established.
pub async fn watch_deadlines<T, F, Fut>(
    store: StateStore<T>,
    on_expired: F,
    shutdown: impl Future<Output = ()>,
) where
    T: Deadline + DeserializeOwned + Clone,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), ServiceError>>,
{
    tokio::pin!(shutdown);
    let pattern = match &store.namespace {
        Some(namespace) => format!("{namespace}.>"),
        None => ">".to_owned(),
    };
    loop {
        let watch = store.kv.watch_with_history(&pattern).await;
        let mut watch = match watch {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(bucket = %store.bucket, %error, "cannot watch deadlines; retrying");
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(REWATCH) => continue,
                }
            }
        };
        let mut open: HashMap<String, (SystemTime, T)> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => track(&mut open, entry),
                    Some(Err(error)) => {
                        tracing::warn!(bucket = %store.bucket, %error, "deadline watch broke; watching again");
                        break;
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let now = SystemTime::now();
                    let due: Vec<(String, T)> = open
                        .iter()
                        .filter(|(_, (deadline, _))| *deadline <= now)
                        .map(|(key, (_, value))| (key.clone(), value.clone()))
                        .collect();
                    for (key, value) in due {
                        match on_expired(value).await {
                            Ok(()) => { open.remove(&key); }
                            Err(error) => tracing::warn!(%key, %error, "cannot settle an expired record yet"),
                        }
                    }
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(REWATCH) => {}
        }
    }
}

fn track<T: Deadline + DeserializeOwned>(
    open: &mut HashMap<String, (SystemTime, T)>,
    entry: kv::Entry,
) {
    if entry.operation != kv::Operation::Put {
        open.remove(&entry.key);
        return;
    }
    match serde_json::from_slice::<T>(&entry.value) {
        Ok(value) => match value.deadline() {
            Some(deadline) => {
                open.insert(entry.key, (deadline, value));
            }
            None => {
                open.remove(&entry.key);
            }
        },
        Err(error) => {
            tracing::error!(key = %entry.key, %error, "a record with a deadline is unreadable");
        }
    }
}

/// The RFC 3339 time `after` from now: a deadline as records store it.
pub fn deadline_after(after: Duration) -> String {
    let at = time::OffsetDateTime::now_utc() + after;
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An RFC 3339 time as a [`SystemTime`]; `None` when it is not one.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_trip_through_text() {
        let text = deadline_after(Duration::from_secs(10));
        let at = parse_time(&text).unwrap_or(SystemTime::UNIX_EPOCH);
        let ahead = at.duration_since(SystemTime::now()).unwrap_or_default();
        assert!(
            ahead > Duration::from_secs(8) && ahead <= Duration::from_secs(10),
            "{ahead:?}"
        );
        assert_eq!(parse_time("tomorrow"), None);
    }
}
