//! A per-owner history that grows with the owner's activity without any
//! write growing with it: one key per entry, paged newest first.
//!
//! The obvious form — one value per owner holding every entry — rewrites
//! the whole list on each append (quadratic bytes) and, past the server's
//! `max_payload`, cannot be written at all: one busy owner stops their own
//! history. A [`History`] stores instead, in its store's bucket:
//!
//! - `<name>.<owner>` — the head: how many entries there are;
//! - `<name>.<owner>.<n>` — entry `n` (0 the oldest), written once;
//! - `<name>-ids.<owner>.<id>` — which entry an id became, so that appending
//!   the same id again (a redelivered event whose handler ran twice) adds
//!   nothing.
//!
//! An append writes those three keys in one transaction (the head at its
//! read revision, the entry and the id created): a few hundred bytes
//! whatever the history's length, all or nothing. Reading a page reads its
//! head and its entries by index, concurrently: its cost depends on the
//! page, not the history. The cursor of the next page is an entry index.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{StateError, StateStore, checked_key};

/// How often an append retries a head that changed under it (another
/// process appending to the same owner).
const APPEND_ATTEMPTS: usize = 32;

/// The head of an owner's history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    /// Entries appended so far (the next entry's index).
    count: u64,
}

/// What [`History::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A new entry, at this index.
    New(u64),
    /// The id was appended before, at this index: nothing was written.
    Already(u64),
}

/// One page of a history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The entries, newest first.
    pub entries: Vec<T>,
    /// The cursor of the next (older) page; `None` on the last page.
    pub next: Option<u64>,
    /// Entries in the whole history.
    pub total: u64,
}

/// Histories of entries `T`, one per owner, in a store's bucket.
#[derive(Debug, Clone)]
pub struct History<T> {
    heads: StateStore<Head>,
    /// The bucket's store, for views per owner.
    base: StateStore<T>,
    name: String,
}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync> History<T> {
    /// The histories called `name` in `store`'s bucket (keys as in the
    /// module docs; `name` must be a plain key token, `[-_=a-zA-Z0-9]`).
    pub fn new<U>(store: &StateStore<U>, name: &str) -> Self {
        History {
            heads: store.view(name),
            base: store.view_as(None),
            name: name.to_owned(),
        }
    }

    fn entries(&self, owner: &str) -> Result<StateStore<T>, StateError> {
        Ok(self
            .base
            .view(&format!("{}.{}", self.name, checked_key(owner)?)))
    }

    fn ids(&self, owner: &str) -> Result<StateStore<u64>, StateError> {
        Ok(self
            .base
            .view(&format!("{}-ids.{}", self.name, checked_key(owner)?)))
    }

    /// Appends `entry` to `owner`'s history under `id`, unless `id` was
    /// appended before.
    ///
    /// # Errors
    ///
    /// [`StateError::KeyTooLong`] for an owner or id too long for a key;
    /// [`StateError::Conflict`] when other writers kept changing the head;
    /// [`StateError::Store`] when the bucket failed (whether it was written
    /// is then unknown: appending again is safe, the id decides).
    pub async fn append(&self, owner: &str, id: &str, entry: &T) -> Result<Appended, StateError> {
        let entries = self.entries(owner)?;
        let ids = self.ids(owner)?;
        // Writers of one owner in this process take turns.
        let _turn = self.heads.lock_keys([owner]).await?;
        for _ in 0..APPEND_ATTEMPTS {
            let head = self.heads.get(owner).await?;
            let index = head.as_ref().map_or(0, |h| h.value.count);
            let next = Head { count: index + 1 };
            let mut tx = self.heads.transaction();
            tx.write(&self.heads, owner, &next, head.as_ref())?;
            tx.create(&entries, &index.to_string(), entry)?;
            tx.create(&ids, id, &index)?;
            match tx.commit().await {
                Ok(()) => return Ok(Appended::New(index)),
                // The id was appended before (its create failed), or the
                // head moved (another process appended): which one, the id
                // says. Not read up front: a new id is the common case.
                Err(StateError::Conflict { .. }) => {
                    if let Some(known) = ids.get(id).await? {
                        return Ok(Appended::Already(known.value));
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Err(StateError::Conflict {
            key: format!("{}.{owner}", self.name),
        })
    }

    /// Whether `id` was appended to `owner`'s history.
    ///
    /// # Errors
    ///
    /// [`StateError::KeyTooLong`], [`StateError::Decode`] or
    /// [`StateError::Store`].
    pub async fn contains(&self, owner: &str, id: &str) -> Result<bool, StateError> {
        Ok(self.ids(owner)?.get(id).await?.is_some())
    }

    /// Up to `limit` entries of `owner`'s history, newest first, older than
    /// the cursor `before` (`None`: from the newest).
    ///
    /// # Errors
    ///
    /// [`StateError::KeyTooLong`], [`StateError::Decode`] or
    /// [`StateError::Store`].
    pub async fn page(
        &self,
        owner: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<T>, StateError> {
        let entries = self.entries(owner)?;
        let total = self.heads.get(owner).await?.map_or(0, |h| h.value.count);
        let end = before.unwrap_or(total).min(total);
        let start = end.saturating_sub(u64::try_from(limit).unwrap_or(u64::MAX));
        let reads = (start..end)
            .rev()
            .map(|index| {
                let entries = &entries;
                async move { entries.get(&index.to_string()).await }
            })
            .collect::<Vec<_>>();
        let entries = futures::future::try_join_all(reads)
            .await?
            .into_iter()
            // Written with their head in one transaction: none is missing
            // below the head unless deleted by hand.
            .flatten()
            .map(|v| v.value)
            .collect();
        Ok(Page {
            entries,
            next: (start > 0).then_some(start),
            total,
        })
    }
}
