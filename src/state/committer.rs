//! Group commit: the transactions of one bucket that wait together are
//! committed as one atomic batch.
//!
//! On a file-backed stream the server makes every atomic batch durable with
//! its own disk sync and commits batches one at a time, so one transaction
//! per batch caps a bucket near a thousand commits a second however many
//! callers wait. Here the transactions that arrive while a batch commits go
//! together into the next one (up to [`MAX_ATOMIC_BATCH`] messages) and
//! share its sync: under load a commit costs a fraction of a sync, alone it
//! costs what it did.
//!
//! A batch is all or nothing, and one transaction's conflict must not fail
//! another's: a group the server refuses is committed again one transaction
//! at a time, so each gets its own verdict. A group whose answer never came
//! is reported to each as such (whether it was stored is unknown; each
//! caller re-reads, and its expected revisions keep a blind repeat from
//! applying twice).

use tokio::sync::{mpsc, oneshot};

use crate::batch::{self, BatchError, BatchMessage, MAX_ATOMIC_BATCH};

/// One transaction waiting for its verdict.
struct Pending {
    messages: Vec<BatchMessage>,
    verdict: oneshot::Sender<Result<(), BatchError>>,
}

/// The queue of one bucket's committer task (which ends when every
/// handle is dropped).
#[derive(Debug, Clone)]
pub(crate) struct Committer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Committer {
    /// Starts the committer of a bucket on this connection.
    pub(crate) fn start(nats: async_nats::Client) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(nats, waiting));
        Committer { queue }
    }

    /// Commits `messages` (one transaction) all or nothing, possibly in one
    /// batch with others.
    pub(crate) async fn commit(&self, messages: Vec<BatchMessage>) -> Result<(), BatchError> {
        let (verdict, answer) = oneshot::channel();
        let gone = || BatchError::Transport("the bucket's committer has stopped".into());
        self.queue
            .send(Pending { messages, verdict })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(nats: async_nats::Client, mut waiting: mpsc::UnboundedReceiver<Pending>) {
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match waiting.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut size = first.messages.len();
        let mut group = vec![first];
        while let Ok(next) = waiting.try_recv() {
            if size + next.messages.len() > MAX_ATOMIC_BATCH {
                carried = Some(next);
                break;
            }
            size += next.messages.len();
            group.push(next);
        }
        commit_group(&nats, group).await;
    }
}

async fn commit_group(nats: &async_nats::Client, mut group: Vec<Pending>) {
    if group.len() == 1 {
        if let Some(alone) = group.pop() {
            let verdict = batch::commit(nats, alone.messages).await.map(|_| ());
            let _ = alone.verdict.send(verdict);
        }
        return;
    }
    let together: Vec<BatchMessage> = group
        .iter()
        .flat_map(|p| p.messages.iter().cloned())
        .collect();
    match batch::commit(nats, together).await {
        Ok(_) => {
            for pending in group {
                let _ = pending.verdict.send(Ok(()));
            }
        }
        Err(BatchError::Transport(error)) => {
            let message = error.to_string();
            for pending in group {
                let _ = pending
                    .verdict
                    .send(Err(BatchError::Transport(message.clone().into())));
            }
        }
        // Refused (a conflict, say): nothing was stored; each on its own.
        Err(_) => {
            for pending in group {
                let verdict = batch::commit(nats, pending.messages).await.map(|_| ());
                let _ = pending.verdict.send(verdict);
            }
        }
    }
}
