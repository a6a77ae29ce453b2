//! Files with a generated block between two marker lines (`nats.conf`,
//! `subjects.md`, `README.md`): the block is replaced, the rest of the file
//! is the author's.

/// `text` with the block from `begin` to `end` (both included) replaced by
/// `wanted`; `None` when either marker line is missing.
pub fn replace(text: &str, begin: &str, end: &str, wanted: &str) -> Option<String> {
    let start = text.find(begin)?;
    let stop = start + text[start..].find(end)? + end.len();
    Some(format!("{}{wanted}{}", &text[..start], &text[stop..]))
}

/// What became of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The block was already current.
    Current,
    /// The block differed (and was rewritten, unless only checking).
    Stale,
    /// The file has no marker lines: nothing to do.
    NoMarkers,
}

/// Brings the block in the file at `path` up to `wanted`; with `check`
/// only compares.
///
/// # Errors
///
/// The file cannot be read or written.
pub fn update(
    path: &std::path::Path,
    begin: &str,
    end: &str,
    wanted: &str,
    check: bool,
) -> std::io::Result<Outcome> {
    let text = std::fs::read_to_string(path)?;
    let Some(updated) = replace(&text, begin, end, wanted) else {
        return Ok(Outcome::NoMarkers);
    };
    if updated == text {
        return Ok(Outcome::Current);
    }
    if !check {
        std::fs::write(path, updated)?;
    }
    Ok(Outcome::Stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_block_between_the_markers_changes() {
        let text = "head\n<!-- B -->\nold\n<!-- E -->\ntail\n";
        assert_eq!(
            replace(
                text,
                "<!-- B -->",
                "<!-- E -->",
                "<!-- B -->\nnew\n<!-- E -->"
            )
            .as_deref(),
            Some("head\n<!-- B -->\nnew\n<!-- E -->\ntail\n")
        );
        assert_eq!(replace("no markers", "<!-- B -->", "<!-- E -->", "x"), None);
    }
}
