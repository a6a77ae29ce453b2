//! The subject contract in Markdown, derived from the services' contracts:
//! the generated tables of `subjects.md` (endpoints, request limits,
//! events, streams and buckets, who may use what) and the limits table of
//! `README.md`. `switchboard generate` writes them; a test keeps the
//! committed files current, and a system test compares the same contracts
//! with the running system.

use std::collections::BTreeMap;
use std::fmt::Write;

use switchboard::contract::Contract;

/// The marker lines around the generated part of `subjects.md`.
pub const BEGIN: &str = "<!-- BEGIN generated from the services' contracts (switchboard generate; do not edit by hand) -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- END generated from the services' contracts -->";
/// The marker lines around the generated limits table in `README.md`.
pub const LIMITS_BEGIN: &str = "<!-- BEGIN limits generated from the services' contracts (switchboard generate; do not edit by hand) -->";
/// See [`LIMITS_BEGIN`].
pub const LIMITS_END: &str = "<!-- END limits generated from the services' contracts -->";

fn fields_of(schema: &serde_json::Value) -> Vec<String> {
    // Sorted: serde_json's map order depends on features other crates of a
    // workspace build enable (`preserve_order`), the document must not.
    let mut names: Vec<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn code_list(items: &[String]) -> String {
    if items.is_empty() {
        "—".to_owned()
    } else {
        items
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a property schema allows, in words (from its keywords alone).
fn limit_words(schema: &serde_json::Value) -> String {
    let number = |key: &str| schema[key].as_u64();
    let range = |low: Option<u64>, high: Option<u64>, unit: &str| match (low, high) {
        (Some(low), Some(high)) => Some(format!("{}–{}{unit}", thousands(low), thousands(high))),
        (Some(low), None) => Some(format!("≥ {}{unit}", thousands(low))),
        (None, Some(high)) => Some(format!("≤ {}{unit}", thousands(high))),
        (None, None) => None,
    };
    let mut words = Vec::new();
    words.extend(range(
        number("minLength"),
        number("maxLength"),
        " characters",
    ));
    words.extend(range(number("minItems"), number("maxItems"), " items"));
    // An optional field's type is `["integer", "null"]`.
    let integer = schema["type"] == "integer"
        || schema["type"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "integer"));
    if integer {
        words.extend(range(number("minimum"), number("maximum"), ""));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        words.push(format!("pattern `{pattern}`"));
    }
    words.join(", ")
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Every limited request field, with its limits and the endpoints that take
/// it — read from the request schemas, where the limits are declared (the
/// fields of the items of an array of objects included).
pub fn request_limits(system: &[Contract]) -> Vec<(String, String, Vec<String>)> {
    let mut rows: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for endpoint in system.iter().flat_map(|s| &s.endpoints) {
        let schema = &endpoint.request;
        let Some(properties) = schema["properties"].as_object() else {
            continue;
        };
        for (name, property) in properties {
            let words = limit_words(property);
            if !words.is_empty() {
                rows.entry((format!("`{name}`"), words))
                    .or_default()
                    .push(endpoint.subject.clone());
            }
            let item = property["items"]["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .map(|d| &schema["$defs"][d]);
            for (field, inner) in item
                .and_then(|l| l["properties"].as_object())
                .into_iter()
                .flatten()
            {
                let words = limit_words(inner);
                if !words.is_empty() {
                    rows.entry((format!("`{name}[].{field}`"), words))
                        .or_default()
                        .push(endpoint.subject.clone());
                }
            }
        }
    }
    rows.into_iter()
        .map(|((field, words), subjects)| (field, words, subjects))
        .collect()
}

/// The limits table (`README.md` and `subjects.md`).
pub fn limits_table(system: &[Contract]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| field | limit | endpoints |");
    let _ = writeln!(out, "|---|---|---|");
    for (field, words, subjects) in request_limits(system) {
        let _ = writeln!(
            out,
            "| {field} | {} | {} |",
            words.replace('|', "\\|"),
            code_list(&subjects)
        );
    }
    out
}

/// The limits block of `README.md`, between its marker lines.
pub fn readme_limits_block(system: &[Contract]) -> String {
    format!("{LIMITS_BEGIN}\n{}{LIMITS_END}", limits_table(system))
}

/// The generated Markdown of `subjects.md`, between the marker lines.
pub fn subjects_md_block(system: &[Contract]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}");
    let _ = writeln!(out, "\n## Endpoints\n");
    let _ = writeln!(
        out,
        "| subject | service | request | response | errors | idempotent | HTTP |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for service in system {
        for e in &service.endpoints {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} | {} |",
                e.subject,
                service.name,
                fields_of(&e.request).join(", "),
                fields_of(&e.response).join(", "),
                if e.errors.is_empty() {
                    "—"
                } else {
                    &e.errors
                },
                if e.idempotent { "yes" } else { "no" },
                e.http.as_ref().map_or_else(
                    || "internal".to_owned(),
                    |h| format!("`{} {}`", h.method, h.path)
                ),
            );
        }
    }
    let _ = writeln!(
        out,
        "\n## Request limits\n\nDeclared once on the contract types; the same JSON Schema is published in discovery and in the gateway's OpenAPI document, and every request is checked against it before its handler runs (400 naming each failing field).\n"
    );
    let _ = write!(out, "{}", limits_table(system));
    let _ = writeln!(out, "\n## Events\n");
    let _ = writeln!(
        out,
        "Published to the subject with a shard token appended (`events.orders.created.<0-63>`: FNV-1a of the event's `ce-subject`, or `ce-id`, mod 64), so a keyed consumer's partitions can filter by it; consumers also take the bare subject. A keyed consumer runs one durable per partition (`<durable>-p<n>`).\n"
    );
    let _ = writeln!(
        out,
        "| subject | publisher | consumers | stream | payload |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for service in system {
        for e in &service.events {
            let consumers: Vec<String> = system
                .iter()
                .flat_map(|s| {
                    s.consumers
                        .iter()
                        .filter(|c| c.filter.contains(&e.subject))
                        .map(|c| match c.partitions {
                            Some(p) => {
                                format!("{} (`{}`, keyed, {p} partitions)", s.name, c.durable)
                            }
                            None => format!("{} (`{}`)", s.name, c.durable),
                        })
                })
                .collect();
            let stream = system
                .iter()
                .flat_map(|s| &s.streams)
                .find(|s| {
                    s.subjects
                        .iter()
                        .any(|p| e.subject.starts_with(p.trim_end_matches('>')))
                })
                .map_or_else(|| "—".to_owned(), |s| format!("`{}`", s.name));
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                e.subject,
                service.name,
                if consumers.is_empty() {
                    "—".to_owned()
                } else {
                    consumers.join(", ")
                },
                stream,
                fields_of(&e.schema).join(", "),
            );
        }
    }
    let _ = writeln!(out, "\n## Streams and KV buckets\n");
    let _ = writeln!(
        out,
        "Replicas: `SWITCHBOARD_REPLICAS` (`switchboard up --replicas`), default 1; \
         existing streams and buckets are changed in place when it changes.\n"
    );
    let _ = writeln!(
        out,
        "| name | kind | subjects | retention | replicas | owner |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for service in system {
        for spec in &service.streams {
            let _ = writeln!(
                out,
                "| `{}` | stream | `{}` | limits, {} days, duplicate window {} s | configured | {} |",
                spec.name,
                spec.subjects.join("`, `"),
                spec.max_age_secs / 86_400,
                spec.duplicate_window_secs,
                service.name
            );
        }
    }
    if system.iter().any(|s| !s.consumers.is_empty()) {
        let _ = writeln!(
            out,
            "| `DLQ` | stream | `dlq.<stream>.<consumer>` | limits, 30 days | configured | every consumer |"
        );
    }
    for service in system {
        for bucket in service.all_buckets() {
            let _ = writeln!(
                out,
                "| `{bucket}` | KV | `$KV.{bucket}.>` | history 1 | configured | {} |",
                service.name
            );
        }
    }
    let _ = writeln!(out, "\n## Who may use what\n");
    let _ = writeln!(
        out,
        "Derived from the same contracts into `nats.conf` (`switchboard up` derives the permissions of the services it starts the same way); `admin` may use everything.\n"
    );
    let _ = writeln!(
        out,
        "| user | serves | calls | publishes | consumes | buckets |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for s in system {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            s.name,
            code_list(
                &s.endpoints
                    .iter()
                    .map(|e| e.subject.clone())
                    .collect::<Vec<_>>()
            ),
            code_list(&s.called_subjects(system)),
            code_list(
                &s.events
                    .iter()
                    .map(|e| e.subject.clone())
                    .collect::<Vec<_>>()
            ),
            code_list(
                &s.consumers
                    .iter()
                    .map(|c| format!("{}/{}", c.stream, c.durable))
                    .collect::<Vec<_>>()
            ),
            code_list(&s.all_buckets()),
        );
    }
    let _ = write!(out, "\n{END}");
    out
}
