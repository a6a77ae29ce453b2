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
