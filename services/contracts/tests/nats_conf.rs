//! `nats.conf`'s permission block is the one generated from the contract.
//! `SWITCHBOARD_BLESS=1 cargo test -p contracts` rewrites it.

use contracts::access::{BEGIN, END, nats_conf_block};

#[test]
fn nats_conf_permissions_match_the_contract() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../nats.conf");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let (Some(start), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        panic!("nats.conf lacks the generated block's marker lines");
    };
    let current = &text[start..end + END.len()];
    let wanted = nats_conf_block();
    if current == wanted {
        return;
    }
    if std::env::var_os("SWITCHBOARD_BLESS").is_some() {
        let updated = format!("{}{}{}", &text[..start], wanted, &text[end + END.len()..]);
        std::fs::write(path, updated).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
        return;
    }
    panic!(
        "nats.conf permissions differ from services/contracts/src/access.rs; \
         run `SWITCHBOARD_BLESS=1 cargo test -p contracts` and commit nats.conf"
    );
}
