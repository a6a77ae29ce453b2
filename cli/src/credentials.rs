//! Per-run NATS passwords for the system's users.
//!
//! `nats.conf` names no secret: it reads `$SB_<USER>_PASSWORD` from the
//! environment. `switchboard up` generates a fresh random password per user
//! for each run (unless the operator exported one), hands all of them to the
//! server and each service only its own.

use std::collections::BTreeMap;

/// Length of generated passwords.
const PASSWORD_LEN: usize = 32;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Environment variable holding `user`'s password, e.g. `SB_ORDERS_PASSWORD`.
pub fn password_env(user: &str) -> String {
    format!("SB_{}_PASSWORD", user.to_uppercase().replace('-', "_"))
}

/// Error generating a password: the OS random source failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the OS random source to generate passwords: {0}")]
pub struct RandomSourceError(getrandom::Error);

/// Passwords by user name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    passwords: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, not even in debug logs.
        f.debug_struct("Credentials")
            .field("users", &self.passwords.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// Takes each user's password from `SB_<USER>_PASSWORD` when the
    /// environment has one, and generates the others.
    ///
    /// # Errors
    ///
    /// When the OS random source fails.
    pub fn from_env_or_generate<'a>(
        users: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, RandomSourceError> {
        let mut passwords = BTreeMap::new();
        for user in users {
            let password = match std::env::var(password_env(user)) {
                Ok(p) if !p.is_empty() => p,
                _ => generate_password()?,
            };
            passwords.insert(user.to_owned(), password);
        }
        Ok(Credentials { passwords })
    }

    /// Generates a fresh password for every user.
    ///
    /// # Errors
    ///
    /// When the OS random source fails.
    pub fn generate<'a>(
        users: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, RandomSourceError> {
        let mut passwords = BTreeMap::new();
        for user in users {
            passwords.insert(user.to_owned(), generate_password()?);
        }
        Ok(Credentials { passwords })
    }

    /// Only the passwords the environment provides (for an external server).
    pub fn from_env<'a>(users: impl IntoIterator<Item = &'a str>) -> Self {
        let passwords = users
            .into_iter()
            .filter_map(|u| {
                std::env::var(password_env(u))
                    .ok()
                    .filter(|p| !p.is_empty())
                    .map(|p| (u.to_owned(), p))
            })
            .collect();
        Credentials { passwords }
    }

    /// `user`'s password, if known.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.passwords.get(user).map(String::as_str)
    }

    /// `(SB_<USER>_PASSWORD, password)` pairs for the server's environment.
    pub fn server_env(&self) -> Vec<(String, String)> {
        self.passwords
            .iter()
            .map(|(user, pw)| (password_env(user), pw.clone()))
            .collect()
    }
}

/// 32 characters from `[A-Za-z0-9]`, starting with a letter: nats.conf parses
/// a `$VAR` value like a config value, and a leading digit could turn a
/// password into a number or a size.
fn generate_password() -> Result<String, RandomSourceError> {
    let mut password = String::with_capacity(PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while password.len() < PASSWORD_LEN {
        getrandom::fill(&mut buf).map_err(RandomSourceError)?;
        // Rejection sampling keeps every character equally likely.
        let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
        for &b in buf.iter().filter(|&&b| b < limit) {
            let c = ALPHABET[usize::from(b) % ALPHABET.len()];
            if password.is_empty() && !c.is_ascii_alphabetic() {
                continue;
            }
            if password.len() < PASSWORD_LEN {
                password.push(char::from(c));
            }
        }
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_convention() {
        assert_eq!(password_env("orders"), "SB_ORDERS_PASSWORD");
        assert_eq!(password_env("admin"), "SB_ADMIN_PASSWORD");
    }

    #[test]
    fn generated_passwords_are_distinct_and_config_safe() {
        let creds = Credentials::generate(["a", "b"]).map_err(|e| e.to_string());
        let Ok(creds) = creds else {
            panic!("{creds:?}")
        };
        let (a, b) = (creds.password("a"), creds.password("b"));
        assert_ne!(a, b);
        for pw in [a, b].into_iter().flatten() {
            assert_eq!(pw.len(), PASSWORD_LEN);
            assert!(pw.starts_with(|c: char| c.is_ascii_alphabetic()));
            assert!(pw.chars().all(|c| c.is_ascii_alphanumeric()));
        }
        assert!(!format!("{creds:?}").contains(a.unwrap_or("-")));
    }
}
