//! The server's word on this connection's user: who it is and what it may
//! publish and subscribe to (`$SYS.REQ.USER.INFO`, nats-server 2.10+).
//!
//! A front end that offers what it cannot call promises something the
//! server will refuse: asking the server which subjects its user may
//! publish lets it offer only what works (an HTTP front end routes only the
//! endpoints it may call). The rules are the server's own, so they hold
//! whatever configuration produced them.

use std::time::Duration;

use serde::Deserialize;

/// The subject every account may ask about its connection's user.
pub const USER_INFO_SUBJECT: &str = "$SYS.REQ.USER.INFO";

/// Who the connection is, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The NATS user.
    pub user: String,
    /// Its account.
    pub account: String,
    /// What it may publish.
    pub publish: Rules,
    /// What it may subscribe to.
    pub subscribe: Rules,
}

/// One direction's allow and deny lists, as the server applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Subjects allowed; `None` allows every subject not denied.
    pub allow: Option<Vec<String>>,
    /// Subjects denied (deny wins over allow).
    pub deny: Vec<String>,
}

impl Rules {
    /// Whether the server lets the user use `subject` (a concrete subject).
    pub fn permits(&self, subject: &str) -> bool {
        let allowed = self
            .allow
            .as_ref()
            .is_none_or(|allow| allow.iter().any(|p| subject_matches(p, subject)));
        allowed && !self.deny.iter().any(|p| subject_matches(p, subject))
    }
}

/// Whether the NATS subject pattern `pattern` (`*` one token, `>` one or
/// more at the end) matches `subject`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in pattern.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(token)) if literal == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// Why the server's word could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserInfoError {
    /// The request failed (no answer: a server before 2.10, or the user
    /// may not publish to [`USER_INFO_SUBJECT`]).
    #[error("cannot ask the server about this user ({USER_INFO_SUBJECT}): {0}")]
    Request(#[from] async_nats::RequestError),
    /// The answer was not what nats-server sends.
    #[error("unreadable answer to {USER_INFO_SUBJECT}: {0}")]
    Decode(String),
}

#[derive(Deserialize)]
struct Reply {
    data: Option<Data>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(default)]
    user: String,
    #[serde(default)]
    account: String,
    permissions: Option<Permissions>,
}

#[derive(Deserialize, Default)]
struct Permissions {
    publish: Option<Lists>,
    subscribe: Option<Lists>,
}

#[derive(Deserialize, Default)]
struct Lists {
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Vec<String>,
}

impl From<Option<Lists>> for Rules {
    fn from(lists: Option<Lists>) -> Self {
        let lists = lists.unwrap_or_default();
        Rules {
            allow: lists.allow,
            deny: lists.deny,
        }
    }
}

/// Asks the server about this connection's user.
///
/// # Errors
///
/// [`UserInfoError::Request`] when there is no answer within `timeout`,
/// [`UserInfoError::Decode`] for an answer that is not one.
pub async fn ask(nats: &async_nats::Client, timeout: Duration) -> Result<UserInfo, UserInfoError> {
    let request = async_nats::Request::new()
        .payload(bytes::Bytes::new())
        .timeout(Some(timeout));
    let message = nats
        .send_request(USER_INFO_SUBJECT.to_owned(), request)
        .await?;
    let reply: Reply = serde_json::from_slice(&message.payload)
        .map_err(|e| UserInfoError::Decode(e.to_string()))?;
    let data = match (reply.data, reply.error) {
        (Some(data), _) => data,
        (None, error) => {
            return Err(UserInfoError::Decode(format!(
                "no data{}",
                error.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
    };
    let permissions = data.permissions.unwrap_or_default();
    Ok(UserInfo {
        user: data.user,
        account: data.account,
        publish: permissions.publish.into(),
        subscribe: permissions.subscribe.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_the_server_matches_them() {
        for (pattern, subject) in [
            ("a.b", "a.b"),
            ("a.*", "a.b"),
            ("a.>", "a.b.c"),
            ("*.b.>", "x.b.c"),
            (">", "a"),
        ] {
            assert!(subject_matches(pattern, subject), "{pattern} ~ {subject}");
        }
        for (pattern, subject) in [
            ("a.b", "a.b.c"),
            ("a.*", "a.b.c"),
            ("a.>", "a"),
            ("a.b", "a"),
            ("a.*.c", "a.b.d"),
        ] {
            assert!(!subject_matches(pattern, subject), "{pattern} !~ {subject}");
        }
    }

    #[test]
    fn deny_wins_and_no_allow_list_allows_all() {
        let rules = Rules {
            allow: Some(vec!["shop.*".into()]),
            deny: vec!["shop.admin".into()],
        };
        assert!(rules.permits("shop.buy"));
        assert!(!rules.permits("shop.admin"));
        assert!(!rules.permits("other.buy"));
        assert!(Rules::default().permits("anything.at.all"));
    }
}
