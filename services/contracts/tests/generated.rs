//! The generated blocks of `nats.conf` and `subjects.md` are current.
//! `SWITCHBOARD_BLESS=1 cargo test -p contracts` rewrites them.

use contracts::generated::verify_or_bless;
use contracts::{access, document};

#[test]
fn nats_conf_permissions_match_the_contract() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../nats.conf");
    let result = verify_or_bless(path, access::BEGIN, access::END, &access::nats_conf_block());
    assert_eq!(result, Ok(()));
}

#[test]
fn subjects_md_matches_the_contract() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../subjects.md");
    let result = verify_or_bless(
        path,
        document::BEGIN,
        document::END,
        &document::subjects_md_block(),
    );
    assert_eq!(result, Ok(()));
}

#[test]
fn readme_limits_match_the_contract() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let result = verify_or_bless(
        path,
        document::LIMITS_BEGIN,
        document::LIMITS_END,
        &document::readme_limits_block(),
    );
    assert_eq!(result, Ok(()));
}

#[test]
fn the_access_declaration_covers_exactly_the_services_up_runs() {
    let declared: Vec<&str> = access::system().iter().map(|s| s.user).collect();
    assert_eq!(declared, switchboard_cli::system::SERVICES);
}
