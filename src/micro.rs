//! The NATS Services API ("micro", ADR-32) wire types.
//!
//! Services serialize these in answer to `$SRV.PING|INFO|STATS`; discovery
//! deserializes them. The shapes match the JSON Schemas the `nats` CLI
//! validates against (`shared/contracts/nats-micro-v1`): a reply that fails
//! them is silently dropped by `nats micro ls`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `type` of a PING answer.
pub const PING_TYPE: &str = "io.nats.micro.v1.ping_response";
/// `type` of an INFO answer.
pub const INFO_TYPE: &str = "io.nats.micro.v1.info_response";
/// `type` of a STATS answer.
pub const STATS_TYPE: &str = "io.nats.micro.v1.stats_response";

/// The three `$SRV` verbs: the one place their spelling lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `$SRV.PING`: who is there.
    Ping,
    /// `$SRV.INFO`: what each instance serves.
    Info,
    /// `$SRV.STATS`: how each endpoint is doing.
    Stats,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 3] = [Verb::Ping, Verb::Info, Verb::Stats];

    /// As it is written in subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Ping => "PING",
            Verb::Info => "INFO",
            Verb::Stats => "STATS",
        }
    }

    /// The verb of a `$SRV.<VERB>…` subject.
    pub fn of_subject(subject: &str) -> Option<Verb> {
        let verb = subject.strip_prefix("$SRV.")?.split('.').next()?;
        Verb::ALL.into_iter().find(|v| v.as_str() == verb)
    }

    /// `$SRV.<VERB>`, `$SRV.<VERB>.<name>` or `$SRV.<VERB>.<name>.<id>`
    /// (the id only with a name).
    pub fn subject(self, name: Option<&str>, id: Option<&str>) -> String {
        let mut subject = format!("$SRV.{}", self.as_str());
        for part in [name, name.and(id)].into_iter().flatten() {
            subject.push('.');
            subject.push_str(part);
        }
        subject
    }
}

/// Free-form string metadata.
pub type Metadata = BTreeMap<String, String>;

/// `$SRV.PING` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    /// Always [`PING_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Service name.
    pub name: String,
    /// Instance id.
    pub id: String,
    /// SemVer version.
    pub version: String,
    /// Service metadata.
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

/// `$SRV.INFO` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResponse {
    /// Always [`INFO_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Service name.
    pub name: String,
    /// Instance id, unique per running instance.
    pub id: String,
    /// SemVer version.
    pub version: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Service metadata.
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// The endpoints this instance serves.
    #[serde(default)]
    pub endpoints: Vec<EndpointInfo>,
}

/// One endpoint in an [`InfoResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// Endpoint name.
    pub name: String,
    /// Subject it listens on.
    pub subject: String,
    /// Queue group shared by the instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    /// Endpoint metadata (description, schemas, idempotency, HTTP route).
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

/// `$SRV.STATS` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsResponse {
    /// Always [`STATS_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Service name.
    pub name: String,
    /// Instance id.
    pub id: String,
    /// SemVer version.
    pub version: String,
    /// Service metadata.
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// RFC 3339 UTC start time.
    pub started: String,
    /// Per-endpoint statistics.
    #[serde(default)]
    pub endpoints: Vec<EndpointStats>,
}

/// One endpoint in a [`StatsResponse`]. Durations are nanoseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Endpoint name.
    pub name: String,
    /// Subject.
    pub subject: String,
    /// Queue group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    /// Requests received.
    pub num_requests: u64,
    /// Requests answered with an error.
    pub num_errors: u64,
    /// The last error, `"<code>:<message>"`, or empty.
    pub last_error: String,
    /// Total handler time.
    pub processing_time: u64,
    /// Average handler time.
    pub average_processing_time: u64,
    /// Switchboard's extra figures (in flight, rejected, circuit breakers).
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::Verb;

    #[test]
    fn verbs_make_and_read_subjects() {
        assert_eq!(Verb::Info.subject(None, None), "$SRV.INFO");
        assert_eq!(
            Verb::Stats.subject(Some("invoices"), None),
            "$SRV.STATS.invoices"
        );
        assert_eq!(
            Verb::Ping.subject(Some("invoices"), Some("abc")),
            "$SRV.PING.invoices.abc"
        );
        assert_eq!(Verb::Ping.subject(None, Some("abc")), "$SRV.PING");
        for verb in Verb::ALL {
            assert_eq!(
                Verb::of_subject(&verb.subject(Some("x"), Some("y"))),
                Some(verb)
            );
        }
        assert_eq!(Verb::of_subject("$SRV.NOPE"), None);
        assert_eq!(Verb::of_subject("accounts.get"), None);
    }
}
