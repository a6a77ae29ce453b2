//! `subjects.md`'s tables are the ones generated from the contract.
//! `SWITCHBOARD_BLESS=1 cargo test -p contracts` rewrites them.

use contracts::document::{BEGIN, END, subjects_md_block};

#[test]
fn subjects_md_matches_the_contract() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../subjects.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let (Some(start), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        panic!("subjects.md lacks the generated block's marker lines");
    };
    let current = &text[start..end + END.len()];
    let wanted = subjects_md_block();
    if current == wanted {
        return;
    }
    if std::env::var_os("SWITCHBOARD_BLESS").is_some() {
        let updated = format!("{}{}{}", &text[..start], wanted, &text[end + END.len()..]);
        std::fs::write(path, updated).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
        return;
    }
    panic!(
        "subjects.md differs from services/contracts; \
         run `SWITCHBOARD_BLESS=1 cargo test -p contracts` and commit subjects.md"
    );
}
