//! The server's users, derived from the contracts of the services it
//! serves: one user per service, named after it, allowed exactly what its
//! contract implies (`switchboard::contract::Permissions`), plus the
//! operators' `admin`.
//!
//! The block sits in `nats.conf` between two marker lines. `switchboard up`
//! replaces it with the one derived from the services it starts (and writes
//! that configuration into its data folder); the committed `nats.conf`
//! holds the reference system's, which `switchboard generate` rewrites and
//! a test keeps current. For a server run elsewhere, `switchboard
//! permissions` prints the block.

use std::fmt::Write;

use switchboard::contract::Contract;

/// The marker lines around the generated block in `nats.conf`.
pub const BEGIN: &str = "      # BEGIN generated from the services' contracts (switchboard generate; do not edit by hand)";
/// See [`BEGIN`].
pub const END: &str = "      # END generated from the services' contracts";

/// The `users` entries of every service in `system`, between the marker lines.
pub fn nats_conf_block(system: &[Contract]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}");
    for service in system {
        let user = &service.name;
        let permissions = service.permissions(system);
        let _ = writeln!(
            out,
            "      {{ user: {user}, password: ${}, permissions: {{",
            crate::credentials::password_env(user)
        );
        let _ = writeln!(
            out,
            "          publish: {{ allow: {} }}",
            list(&permissions.publish)
        );
        let _ = writeln!(
            out,
            "          subscribe: {{ allow: {} }}",
            list(&permissions.subscribe)
        );
        // Replies to requests this user serves, and only those.
        let _ = writeln!(out, "          allow_responses: true");
        let _ = writeln!(out, "      }} }}");
    }
    let _ = write!(out, "{END}");
    out
}

fn list(subjects: &[String]) -> String {
    let quoted: Vec<String> = subjects.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `config` with its generated block replaced by the one for `system`;
/// `None` when it has no marker lines (a configuration of the user's own,
/// used as it is).
pub fn with_block(config: &str, system: &[Contract]) -> Option<String> {
    crate::generated::replace(config, BEGIN, END, &nats_conf_block(system))
}

/// Whether `config` names a user `user` (for a configuration without the
/// generated block: `up` refuses to start a service that has none).
pub fn names_user(config: &str, user: &str) -> bool {
    config.lines().any(|line| {
        let line = line.trim_start().trim_start_matches('{').trim_start();
        line.strip_prefix("user")
            .map(|rest| {
                rest.trim_start()
                    .trim_start_matches([':', '='])
                    .trim_start()
            })
            .and_then(|rest| rest.strip_prefix(user))
            .is_some_and(|rest| rest.starts_with([',', ' ', '}']) || rest.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_gets_a_user_with_its_own_subjects_only() {
        let system = [
            Contract::new("alpha", "1.0.0").bucket("alpha"),
            Contract::new("beta-two", "1.0.0").calls("alpha.get"),
        ];
        let block = nats_conf_block(&system);
        assert!(block.starts_with(BEGIN) && block.ends_with(END));
        assert!(block.contains("{ user: alpha, password: $SB_ALPHA_PASSWORD"));
        assert!(block.contains("{ user: beta-two, password: $SB_BETA_TWO_PASSWORD"));
        let beta = block.lines().skip_while(|l| !l.contains("beta-two")).nth(1);
        assert!(beta.is_some_and(|l| l.contains("\"alpha.get\"") && !l.contains("KV_alpha")));
    }

    #[test]
    fn a_configuration_of_ones_own_is_checked_for_the_user() {
        let config = "authorization { users: [\n  { user: alpha, password: x }\n  {user:beta}\n] }";
        assert!(names_user(config, "alpha"));
        assert!(names_user(config, "beta"));
        assert!(!names_user(config, "alp"));
        assert!(!names_user(config, "gamma"));
        assert_eq!(with_block(config, &[]), None);
    }
}
