//! Files with a generated block between two marker lines (`nats.conf`,
//! `subjects.md`): check that the committed block is current, or rewrite it
//! when `SWITCHBOARD_BLESS` is set.

/// Compares the block between `begin` and `end` in the file at `path` with
/// `wanted`; with `SWITCHBOARD_BLESS` set, writes `wanted` in its place.
///
/// # Errors
///
/// A message saying what is wrong and how to fix it.
pub fn verify_or_bless(path: &str, begin: &str, end: &str, wanted: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let (Some(start), Some(stop)) = (text.find(begin), text.find(end)) else {
        return Err(format!("{path} lacks the generated block's marker lines"));
    };
    let stop = stop + end.len();
    if &text[start..stop] == wanted {
        return Ok(());
    }
    if std::env::var_os("SWITCHBOARD_BLESS").is_some() {
        let updated = format!("{}{wanted}{}", &text[..start], &text[stop..]);
        return std::fs::write(path, updated).map_err(|e| format!("cannot write {path}: {e}"));
    }
    Err(format!(
        "{path} differs from services/contracts; run `SWITCHBOARD_BLESS=1 cargo test -p contracts` and commit it"
    ))
}
