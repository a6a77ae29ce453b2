//! Who runs a keyed consumer right now, and which partitions are whose.
//!
//! Every instance of a keyed consumer announces itself on core NATS every
//! [`BEAT`] (`_SB.GROUP.<stream>.<durable>`, a small JSON heartbeat with the
//! partitions it holds) and listens to the others: an instance heard
//! within [`LOST_AFTER`] is a member. No bucket, no leader, no registry —
//! the members are whoever is talking, as services find each other by
//! subject. A stopping instance says so (`leaving`), so its partitions move
//! at once rather than after [`LOST_AFTER`].
//!
//! Every member computes the same assignment from the same member list:
//! the members sorted by id, partition `p` to member `p mod N` — a fair
//! share (counts differ by at most one), no negotiation. While two
//! members' lists differ (a heartbeat not yet heard), both may pull one
//! partition; the server's pin (ADR-42) gives it to one of them, and the
//! other's requests wait — order is kept by the pin and by `settling`,
//! not by the lists agreeing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How often an instance announces itself.
pub(super) const BEAT: Duration = Duration::from_secs(1);

/// How long a starting instance listens before it claims partitions. Short:
/// every member answers a newcomer's first heartbeat at once (rather than
/// at its next beat), so a loopback or LAN round trip is what it waits for.
pub(super) const LISTEN: Duration = Duration::from_millis(300);

/// Silence after which an instance is no longer a member.
pub(super) const LOST_AFTER: Duration = Duration::from_secs(3);

/// The subject the instances of a keyed consumer talk on.
pub fn subject(stream: &str, durable: &str) -> String {
    format!("_SB.GROUP.{stream}.{durable}")
}

/// One instance's announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Heartbeat {
    /// The instance (unique per run of the consumer).
    pub(super) instance: String,
    /// The partitions it holds now.
    pub(super) holds: Vec<u32>,
    /// It is stopping: give its partitions to the others now.
    #[serde(default)]
    pub(super) leaving: bool,
}

/// What one member was last heard saying.
#[derive(Debug)]
struct Heard {
    at: Instant,
    holds: Vec<u32>,
    leaving: bool,
}

/// The members as this instance knows them.
#[derive(Debug)]
pub(super) struct Members {
    me: String,
    others: BTreeMap<String, Heard>,
    /// Members that said goodbye once their partitions were released (as
    /// opposed to falling silent, whose pins may still be held).
    said_goodbye: BTreeSet<String>,
}

impl Members {
    pub(super) fn new(me: String) -> Self {
        Members {
            me,
            others: BTreeMap::new(),
            said_goodbye: BTreeSet::new(),
        }
    }

    pub(super) fn me(&self) -> &str {
        &self.me
    }

    /// Takes in a heartbeat; whether the assignment may have changed (a
    /// member joined or is leaving).
    ///
    /// A leaving member is out of the assignment at once, but what it
    /// still holds stays its own until its last heartbeat, sent when its
    /// handlers are done and its pins released, holds nothing.
    pub(super) fn heard(&mut self, beat: Heartbeat) -> bool {
        if beat.instance == self.me {
            return false;
        }
        if beat.leaving && beat.holds.is_empty() {
            self.said_goodbye.insert(beat.instance.clone());
            return self.others.remove(&beat.instance).is_some();
        }
        let changed = self
            .others
            .get(&beat.instance)
            .is_none_or(|heard| heard.leaving != beat.leaving);
        self.others.insert(
            beat.instance,
            Heard {
                at: Instant::now(),
                holds: beat.holds,
                leaving: beat.leaving,
            },
        );
        changed
    }

    /// Whether `beat` comes from an instance this one has not heard yet
    /// (which is listening for the members before it claims partitions).
    pub(super) fn is_newcomer(&self, beat: &Heartbeat) -> bool {
        beat.instance != self.me && !beat.leaving && !self.others.contains_key(&beat.instance)
    }

    /// Whether `id` left after releasing what it held.
    pub(super) fn said_goodbye(&self, id: &str) -> bool {
        self.said_goodbye.contains(id)
    }

    /// Forgets members not heard for [`LOST_AFTER`]; the ones forgotten.
    pub(super) fn expire(&mut self) -> Vec<String> {
        let lost: Vec<String> = self
            .others
            .iter()
            .filter(|(_, heard)| heard.at.elapsed() > LOST_AFTER)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &lost {
            self.others.remove(id);
        }
        lost
    }

    /// How many members share the partitions, this one included.
    pub(super) fn count(&self) -> usize {
        self.others.values().filter(|heard| !heard.leaving).count() + 1
    }

    /// Whether `id` is a member (leaving or not) heard from lately.
    pub(super) fn is_member(&self, id: &str) -> bool {
        self.others.contains_key(id)
    }

    /// Whether a live member other than this one says it holds `partition`.
    pub(super) fn held_by_another(&self, partition: u32) -> Option<&str> {
        self.others
            .iter()
            .find(|(_, heard)| heard.holds.contains(&partition))
            .map(|(id, _)| id.as_str())
    }

    /// The partitions this instance should hold.
    pub(super) fn mine(&self, partitions: u32) -> Vec<u32> {
        let mut ids: Vec<&str> = self
            .others
            .iter()
            .filter(|(_, heard)| !heard.leaving)
            .map(|(id, _)| id.as_str())
            .collect();
        ids.push(&self.me);
        assign(&ids, &self.me, partitions)
    }
}

/// The partitions of `me` among `members`: sorted by id, partition `p` to
/// the member at `p mod N`.
pub(super) fn assign(members: &[&str], me: &str, partitions: u32) -> Vec<u32> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let Some(position) = sorted.iter().position(|id| *id == me) else {
        return Vec::new();
    };
    let count = u32::try_from(sorted.len()).unwrap_or(u32::MAX);
    (0..partitions)
        .filter(|p| usize::try_from(p % count).is_ok_and(|i| i == position))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_one_owner_and_shares_are_fair() {
        let members = ["c", "a", "b"];
        let shares: Vec<Vec<u32>> = members.iter().map(|m| assign(&members, m, 8)).collect();
        let mut all: Vec<u32> = shares.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        let sizes: Vec<usize> = shares.iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|n| *n == 2 || *n == 3), "{sizes:?}");
        // More members than partitions: the extra ones hold nothing.
        let many = ["a", "b", "c"];
        assert_eq!(assign(&many, "c", 2), Vec::<u32>::new());
        assert_eq!(assign(&many, "a", 2), vec![0]);
    }

    #[test]
    fn members_come_go_and_leave() {
        let mut members = Members::new("b".into());
        assert_eq!(members.mine(4), vec![0, 1, 2, 3]);
        let beat = |id: &str, holds: Vec<u32>, leaving| Heartbeat {
            instance: id.into(),
            holds,
            leaving,
        };
        // A newcomer (answered at once), then a member; never itself.
        assert!(members.is_newcomer(&beat("a", vec![], false)));
        assert!(!members.is_newcomer(&beat("b", vec![], false)));
        assert!(members.heard(beat("a", vec![0, 2], false)));
        assert!(!members.is_newcomer(&beat("a", vec![0, 2], false)));
        assert!(
            !members.heard(beat("a", vec![0, 2], false)),
            "known already"
        );
        assert_eq!(members.mine(4), vec![1, 3]);
        assert_eq!(members.held_by_another(2), Some("a"));
        assert_eq!(members.held_by_another(1), None);
        // Leaving: out of the assignment, but what it holds is its own
        // until it says goodbye holding nothing.
        assert!(members.heard(beat("a", vec![0, 2], true)));
        assert_eq!(members.count(), 1);
        assert_eq!(members.mine(4), vec![0, 1, 2, 3]);
        assert_eq!(members.held_by_another(2), Some("a"));
        assert!(!members.said_goodbye("a"));
        assert!(members.heard(beat("a", vec![], true)));
        assert_eq!(members.held_by_another(2), None);
        assert!(members.said_goodbye("a"));
    }

    #[test]
    fn a_heartbeat_reads_as_it_is_written() {
        let beat = Heartbeat {
            instance: "x".into(),
            holds: vec![1, 5],
            leaving: false,
        };
        let json = serde_json::to_string(&beat).unwrap_or_default();
        assert_eq!(json, r#"{"instance":"x","holds":[1,5],"leaving":false}"#);
        let back: Result<Heartbeat, _> = serde_json::from_str(r#"{"instance":"x","holds":[1,5]}"#);
        assert_eq!(back.ok(), Some(beat));
    }
}
