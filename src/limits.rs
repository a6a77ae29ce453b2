//! The server's limits, as facts the kit checks before it writes.
//!
//! nats-server closes a client's connection when one protocol line is
//! longer than its `max_control_line` (`maximum control line exceeded`):
//! every request in flight on that connection dies with it, and replies
//! sent after the reconnect are refused (response permissions belong to the
//! old connection). A control line holds the subject and the reply subject
//! (`HPUB <subject> <reply> <header bytes> <total bytes>`), so any value that
//! becomes a subject token — a KV key, an id in an event subject — must be
//! bounded *before* it is written: a bad value then fails its own request
//! with a 400 and never the connection. Payloads (headers included) are
//! bounded by `max_payload`, which the server announces and async-nats
//! checks; see [`max_payload`].
//!
//! The numbers here are the server's defaults, which `nats.conf` states
//! explicitly (a test keeps the two equal). A server configured lower than
//! these needs the kit's numbers lowered too.

/// nats-server's `max_control_line` (its default, 4 KiB; `nats.conf` sets
/// the same). Not announced by the server, so the kit knows it.
pub const MAX_CONTROL_LINE: usize = 4096;

/// Longest subject the kit publishes or requests on. Half the control line:
/// the rest is for the reply subject (an inbox is ~50 bytes; a custom inbox
/// prefix may be longer), the verb and the sizes.
pub const MAX_SUBJECT_LEN: usize = MAX_CONTROL_LINE / 2;

/// Longest KV key, after encoding (see [`crate::state::key_for`]). The key
/// becomes the last tokens of `$KV.<bucket>.<key>` and of the direct-get API
/// subject, so it must leave room for those within [`MAX_SUBJECT_LEN`].
pub const MAX_KEY_LEN: usize = 1024;

/// Longest header value the kit writes from data it was given (event ids
/// and subjects, error descriptions): headers count against `max_payload`
/// and JetStream keeps every `Nats-Msg-Id` of the duplicate window in memory.
pub const MAX_HEADER_VALUE: usize = 1024;

/// Longest error message a reply carries; longer ones are cut (at a
/// character boundary, marked with `…`). serde's messages quote the
/// offending input, which may be as large as the request.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Largest message the connected server accepts (headers included), as it
/// announced at connect time (1 MiB by default).
pub fn max_payload(nats: &async_nats::Client) -> usize {
    nats.max_payload()
}

/// A subject too long to publish: the server would close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subject of {length} bytes is longer than {max} (it starts {preview:?})")]
pub struct SubjectTooLong {
    /// Its length in bytes.
    pub length: usize,
    /// [`MAX_SUBJECT_LEN`].
    pub max: usize,
    /// Its first characters.
    pub preview: String,
}

/// Checks that `subject` fits in a control line with room for a reply.
///
/// # Errors
///
/// [`SubjectTooLong`].
pub fn check_subject(subject: &str) -> Result<(), SubjectTooLong> {
    if subject.len() <= MAX_SUBJECT_LEN {
        return Ok(());
    }
    Err(SubjectTooLong {
        length: subject.len(),
        max: MAX_SUBJECT_LEN,
        preview: preview(subject),
    })
}

/// The first few characters of a value, for messages that must not echo
/// all of it.
pub fn preview(value: &str) -> String {
    const CHARS: usize = 32;
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(CHARS).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// `text` cut to at most `max` bytes at a character boundary, with `…`
/// when something was cut.
pub fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let ellipsis = '…';
    let mut end = max.saturating_sub(ellipsis.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{ellipsis}", &text[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_subjects_are_refused_before_they_are_written() {
        assert!(check_subject("accounts.get").is_ok());
        let long = format!("events.{}", "x".repeat(MAX_SUBJECT_LEN));
        let error = check_subject(&long).err();
        assert_eq!(error.as_ref().map(|e| e.length), Some(long.len()));
        assert!(error.is_some_and(|e| e.to_string().len() < 200));
    }

    #[test]
    fn nats_conf_states_the_limits_the_kit_assumes() {
        let setting = |name: &str| {
            include_str!("../nats.conf")
                .lines()
                .find_map(|l| l.trim().strip_prefix(name)?.trim().strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        assert_eq!(
            setting("max_control_line"),
            Some(MAX_CONTROL_LINE.to_string())
        );
        // async-nats reads max_payload from the server; the kit assumes the default.
        assert_eq!(setting("max_payload").as_deref(), Some("1MB"));
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("abc", 3), "abc");
        let cut = truncate("ééééé", 6);
        assert!(cut.len() <= 6, "{cut}");
        assert!(cut.ends_with('…'));
        assert_eq!(preview("short"), "short");
        assert_eq!(preview(&"z".repeat(5000)).chars().count(), 33);
    }
}
