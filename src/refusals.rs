//! The server's permission refusals, as errors a caller can wait on.
//!
//! A publish the connection's user may not make is not answered: nats-server
//! drops it and tells the connection once, out of band
//! (`-ERR 'Permissions Violation for Publish to "accounts.create"'`), which
//! async-nats hands to the connection's event callback. Without this module a
//! request to such a subject waits its whole deadline and ends as a timeout,
//! and the cause is only in the server's log.
//!
//! Every connection made through [`crate::connect`] reports the refusals it
//! is told of here. The patched async-nats (`vendor/async-nats/PATCH.md`)
//! fails a request whose publish was refused at once, with the server's
//! words, and [`Client`](crate::client::Client) turns that into
//! [`CallError::PermissionDenied`](crate::client::CallError), naming the
//! user from this record; built against the crates.io async-nats, the
//! client instead watches this record for a refusal of the subject it just
//! published to while it waits for the reply. Either way the call fails
//! within a round trip. The record is process-wide (the message does not
//! say which request it refused): a refusal of the same subject on another
//! connection of the same process is taken as this call's too, which can
//! only turn a call that would have timed out into an earlier error.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};

use tokio::sync::watch;

/// What the server refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Publishing to the subject (a request or an event).
    Publish,
    /// Subscribing to the subject.
    Subscribe,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Publish => "publish to",
            Operation::Subscribe => "subscribe to",
        })
    }
}

/// One refusal, as the server reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The NATS user of the connection that was refused (`anonymous` for none).
    pub user: String,
    /// What it tried.
    pub operation: Operation,
    /// The subject.
    pub subject: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "permission denied: NATS user {} may not {} {}",
            self.user, self.operation, self.subject
        )
    }
}

/// The refusals kept for waiters that look a little late: enough for a
/// burst, small enough to scan per wake-up.
const KEPT: usize = 32;

#[derive(Debug, Default)]
struct Recent {
    refusals: VecDeque<Refusal>,
    /// Refusals reported so far (the kept ones are the last of them).
    reported: u64,
}

static RECENT: LazyLock<watch::Sender<Arc<Recent>>> =
    LazyLock::new(|| watch::Sender::new(Arc::new(Recent::default())));

/// Records the server error `message` of a connection of `user` if it is a
/// permission violation; returns the refusal it recorded.
pub(crate) fn report(user: &str, message: &str) -> Option<Refusal> {
    let refusal = parse(user, message)?;
    RECENT.send_modify(|recent| {
        let mut refusals = recent.refusals.clone();
        if refusals.len() == KEPT {
            refusals.pop_front();
        }
        refusals.push_back(refusal.clone());
        *recent = Arc::new(Recent {
            refusals,
            reported: recent.reported + 1,
        });
    });
    Some(refusal)
}

/// Whether `error` (a failed request's text) is the server's refusal to
/// let the connection publish to `subject`, as the patched async-nats
/// reports it.
pub(crate) fn is_publish_refusal(error: &str, subject: &str) -> bool {
    error
        .find("Permissions Violation for ")
        .and_then(|at| parse("", &error[at..]))
        .is_some_and(|r| r.operation == Operation::Publish && r.subject == subject)
}

/// Reads nats-server's wording: `Permissions Violation for Publish to
/// "<subject>"` (also `… Publish with Reply of …`, ignored: a reply is
/// not a call of ours) and `Permissions Violation for Subscription to
/// "<subject>"` (possibly followed by a queue group).
fn parse(user: &str, message: &str) -> Option<Refusal> {
    let rest = message
        .trim()
        .trim_matches('\'')
        .strip_prefix("Permissions Violation for ")?;
    let (operation, rest) = if let Some(rest) = rest.strip_prefix("Publish to ") {
        (Operation::Publish, rest)
    } else if let Some(rest) = rest.strip_prefix("Subscription to ") {
        (Operation::Subscribe, rest)
    } else {
        return None;
    };
    let subject = rest.strip_prefix('"')?.split('"').next()?;
    Some(Refusal {
        user: user.to_owned(),
        operation,
        subject: subject.to_owned(),
    })
}

/// How long a refused call waits for the connection's report of the
/// refusal (it names the user); the report is on its way when the call
/// learns of it.
const REPORT_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// The refusal of `operation` on `subject` reported since `watching` was
/// made (before the publish it is about), waiting a moment for the report
/// if it is not in yet; without one, a refusal that says only what was
/// refused. An older report of the same subject is never taken: it may be
/// another connection's, of another user (two connections of one process,
/// each with its own user name, refused the same subject one after the
/// other: the second was reported as the first).
pub(crate) async fn refusal_of(
    mut watching: Watch,
    operation: Operation,
    subject: &str,
) -> Refusal {
    let wanted = |r: &Refusal| r.operation == operation && r.subject == subject;
    if let Some(refusal) = watching.reported_since(wanted) {
        return refusal;
    }
    tokio::time::timeout(REPORT_GRACE, watching.refused(operation, subject))
        .await
        .unwrap_or_else(|_| Refusal {
            user: "this connection's user".to_owned(),
            operation,
            subject: subject.to_owned(),
        })
}

/// Waits for refusals reported from the moment it was made on.
#[derive(Debug)]
pub(crate) struct Watch {
    receiver: watch::Receiver<Arc<Recent>>,
    /// Refusals reported before the watch was made.
    before: u64,
}

/// Starts watching; make it before the publish it is about.
pub(crate) fn watch() -> Watch {
    let mut receiver = RECENT.subscribe();
    let before = receiver.borrow_and_update().reported;
    Watch { receiver, before }
}

impl Watch {
    /// The latest refusal `wanted` accepts among those reported since the
    /// watch was made, if any is in yet.
    fn reported_since(&self, wanted: impl Fn(&Refusal) -> bool) -> Option<Refusal> {
        let recent = self.receiver.borrow().clone();
        let new =
            usize::try_from(recent.reported.saturating_sub(self.before)).unwrap_or(usize::MAX);
        recent
            .refusals
            .iter()
            .rev()
            .take(new)
            .find(|r| wanted(r))
            .cloned()
    }

    /// Resolves when the server refuses `operation` on `subject`; never
    /// resolves otherwise.
    pub(crate) async fn refused(&mut self, operation: Operation, subject: &str) -> Refusal {
        self.refused_where(|r| r.operation == operation && r.subject == subject)
            .await
    }

    /// Resolves with the first refusal reported since the watch was made
    /// that `wanted` accepts; never resolves otherwise.
    pub(crate) async fn refused_where(&mut self, wanted: impl Fn(&Refusal) -> bool) -> Refusal {
        loop {
            if self.receiver.changed().await.is_err() {
                // The sender is a static: never dropped. Stay pending.
                std::future::pending::<()>().await;
            }
            let recent = self.receiver.borrow_and_update().clone();
            if let Some(refusal) = recent.refusals.iter().rev().find(|r| wanted(r)) {
                return refusal.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_wording_is_read() {
        let publish = parse(
            "greeter",
            r#"Permissions Violation for Publish to "accounts.create""#,
        );
        assert_eq!(
            publish,
            Some(Refusal {
                user: "greeter".into(),
                operation: Operation::Publish,
                subject: "accounts.create".into()
            })
        );
        let subscribe = parse(
            "greeter",
            r#"'Permissions Violation for Subscription to "accounts.>" using queue "q"'"#,
        );
        assert_eq!(subscribe.map(|r| r.subject), Some("accounts.>".to_owned()));
        assert_eq!(parse("x", "Maximum Payload Violation"), None);
        assert_eq!(
            parse(
                "x",
                r#"Permissions Violation for Publish with Reply of "_INBOX.x""#
            ),
            None
        );
    }

    #[tokio::test]
    async fn a_waiter_sees_a_refusal_reported_after_it_started() {
        let mut watching = watch();
        let waiter = tokio::spawn(async move {
            watching
                .refused(Operation::Publish, "refusals-test.later")
                .await
        });
        tokio::task::yield_now().await;
        report(
            "u",
            r#"Permissions Violation for Publish to "refusals-test.other""#,
        );
        report(
            "u",
            r#"Permissions Violation for Publish to "refusals-test.later""#,
        );
        let refusal = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
        assert!(matches!(refusal, Ok(Ok(r)) if r.subject == "refusals-test.later"));
    }
}
