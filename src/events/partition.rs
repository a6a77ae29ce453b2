//! Keys on the wire: why every event subject ends in a shard token.
//!
//! JetStream routes, filters and partitions by subject only; it never
//! reads a header. A consumer that must keep each key's events in order
//! while several instances share the work (keyed consumers,
//! [`ConsumerSpec::keyed`](super::ConsumerSpec::keyed)) needs the server
//! to hand all events of one key to one consumer, so the key must reach
//! the subject. Putting the key itself there would make every id a subject
//! token (bounded, escaped, and unbounded in number for the server's
//! subject state); so the publisher appends a **shard** instead:
//!
//! ```text
//! events.parcels.created  →  events.parcels.created.17
//! ```
//!
//! where 17 is the FNV-1a (32-bit) hash of the event's key mod [`SHARDS`],
//! the key being its `ce-subject` (what the event is about: a parcel) or,
//! without one, its `ce-id`. FNV-1a is the hash nats-server's own
//! `partition()` mapping uses, so a client in any language can compute it.
//!
//! A keyed consumer with P partitions (P ≤ [`SHARDS`]) owns shard `s` in
//! partition `s mod P`: partition `p` is one durable whose filter lists its
//! shards (`events.parcels.created.17`, …), so the number of partitions is
//! each consumer's own choice and the stream needs no transform. An
//! unkeyed consumer of `events.parcels.created` filters
//! `events.parcels.created.*` — and the bare subject, so an event published
//! by a client that adds no shard is still consumed (by a keyed consumer,
//! in partition 0).

use super::EventError;

/// Shards of every event subject: the most partitions a keyed consumer
/// can have.
pub const SHARDS: u32 = 64;

/// The shard of `key` (FNV-1a, 32 bits, mod [`SHARDS`]).
///
/// ```
/// use switchboard::events::partition::shard_of;
/// assert_eq!(shard_of("o-1"), shard_of("o-1"));
/// assert!(shard_of("o-1") < 64);
/// ```
pub fn shard_of(key: &str) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let hash = key.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(PRIME)
    });
    hash % SHARDS
}

/// The subject an event about `key` is published to: `subject.<shard>`.
pub fn keyed_subject(subject: &str, key: &str) -> String {
    format!("{subject}.{}", shard_of(key))
}

/// The shard token of a published subject, if it ends in one.
pub fn shard_of_subject(subject: &str) -> Option<u32> {
    subject
        .rsplit_once('.')
        .and_then(|(_, last)| last.parse::<u32>().ok())
        .filter(|shard| *shard < SHARDS)
}

/// The subject as declared: a published subject without its shard token.
///
/// ```
/// use switchboard::events::partition::declared_subject;
/// assert_eq!(declared_subject("events.parcels.shipped.17"), "events.parcels.shipped");
/// assert_eq!(declared_subject("events.parcels.shipped"), "events.parcels.shipped");
/// ```
pub fn declared_subject(subject: &str) -> &str {
    match (shard_of_subject(subject), subject.rsplit_once('.')) {
        (Some(_), Some((declared, _))) => declared,
        _ => subject,
    }
}

/// The partition shard `shard` belongs to among `partitions`.
pub fn partition_of(shard: u32, partitions: u32) -> u32 {
    shard % partitions.max(1)
}

/// The durable name of partition `partition` of the keyed consumer
/// `durable`.
pub fn partition_durable(durable: &str, partition: u32) -> String {
    format!("{durable}-p{partition}")
}

/// What an unkeyed consumer declared as `filters` receives: each subject
/// with any shard, and bare (published without one). A filter ending in
/// `>` already covers both.
pub(crate) fn delivery_filters(filters: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(filters.len() * 2);
    for filter in filters {
        out.push(filter.clone());
        if !filter.ends_with('>') {
            out.push(format!("{filter}.*"));
        }
    }
    out
}

/// The filter of partition `partition` (of `partitions`) of a keyed
/// consumer declared with `filters`: each subject with the partition's
/// shards, and partition 0 also bare.
///
/// # Errors
///
/// [`EventError::InvalidConsumer`] when there are no filters, a filter
/// ends in `>` (the shard's place is unknown), or `partitions` is not
/// within 1..=[`SHARDS`].
pub(crate) fn partition_filters(
    durable: &str,
    filters: &[String],
    partition: u32,
    partitions: u32,
) -> Result<Vec<String>, EventError> {
    check_keyed(durable, filters, partitions)?;
    let mut out = Vec::new();
    for filter in filters {
        if partition == 0 {
            out.push(filter.clone());
        }
        out.extend(
            (0..SHARDS)
                .filter(|shard| partition_of(*shard, partitions) == partition)
                .map(|shard| format!("{filter}.{shard}")),
        );
    }
    Ok(out)
}

/// Refuses a keyed declaration the partitions cannot be built from.
///
/// # Errors
///
/// As [`partition_filters`].
pub(crate) fn check_keyed(
    durable: &str,
    filters: &[String],
    partitions: u32,
) -> Result<(), EventError> {
    let invalid = |reason: String| EventError::InvalidConsumer {
        durable: durable.to_owned(),
        reason,
    };
    if !(1..=SHARDS).contains(&partitions) {
        return Err(invalid(format!(
            "{partitions} partitions: a keyed consumer has 1 to {SHARDS}"
        )));
    }
    if filters.is_empty() {
        return Err(invalid(
            "a keyed consumer names the event subjects it receives (filter)".to_owned(),
        ));
    }
    if let Some(filter) = filters.iter().find(|f| f.ends_with('>')) {
        return Err(invalid(format!(
            "filter {filter} ends in '>': name the event subjects (a '*' is fine), so the shard token can follow them"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_fnv1a_mod_64() {
        // FNV-1a 32 of "" is the offset basis; of "a" is 0xe40c292c.
        assert_eq!(shard_of(""), 0x811c_9dc5 % 64);
        assert_eq!(shard_of("a"), 0xe40c_292c % 64);
        assert_eq!(
            keyed_subject("events.parcels.created", "a"),
            "events.parcels.created.44"
        );
        assert_eq!(shard_of_subject("events.parcels.created.44"), Some(44));
        assert_eq!(shard_of_subject("events.parcels.created"), None);
        assert_eq!(shard_of_subject("events.parcels.created.64"), None);
    }

    #[test]
    fn partitions_cover_every_shard_once() {
        let filters = vec![
            "events.parcels.created".to_owned(),
            "events.parcels.*".to_owned(),
        ];
        for partitions in [1, 3, 8, 64] {
            let mut seen = Vec::new();
            for p in 0..partitions {
                let mine = partition_filters("d", &filters, p, partitions).unwrap_or_default();
                seen.extend(mine);
            }
            // Every shard of every filter once, and each bare filter once.
            assert_eq!(
                seen.len(),
                filters.len() * (SHARDS as usize + 1),
                "{partitions}"
            );
            seen.sort();
            let before = seen.len();
            seen.dedup();
            assert_eq!(seen.len(), before, "a filter in two partitions");
        }
    }

    #[test]
    fn keyed_declarations_are_checked() {
        let one = |f: &str| vec![f.to_owned()];
        assert!(partition_filters("d", &one("events.a.b"), 0, 0).is_err());
        assert!(partition_filters("d", &one("events.a.b"), 0, 65).is_err());
        assert!(partition_filters("d", &[], 0, 4).is_err());
        let wide = partition_filters("d", &one("events.a.>"), 0, 4);
        assert!(
            matches!(wide, Err(EventError::InvalidConsumer { .. })),
            "{wide:?}"
        );
    }

    #[test]
    fn unkeyed_filters_take_sharded_and_bare_subjects() {
        let filters = vec!["events.a.b".to_owned(), "events.c.>".to_owned()];
        assert_eq!(
            delivery_filters(&filters),
            vec!["events.a.b", "events.a.b.*", "events.c.>"]
        );
    }
}
