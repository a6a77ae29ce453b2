//! AsyncAPI 3 for the event subjects, from the `events` metadata services
//! publish in discovery (each event with the JSON Schema of its data).

use serde_json::{Map, Value, json};
use switchboard::discovery::InstanceInfo;
use switchboard::service::EventDeclaration;

use crate::schema::hoist;

/// The document for what discovery currently shows.
pub fn document(instances: &[InstanceInfo]) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    for instance in instances {
        for event in EventDeclaration::of(instance) {
            let subject = event.subject.as_str();
            let name = subject
                .strip_prefix("events.")
                .unwrap_or(subject)
                .replace('.', "_");
            // The default schema format (AsyncAPI Schema, a superset of
            // JSON Schema draft 7) with definitions in components/schemas,
            // where its references can be resolved.
            let payload = hoist(&event.schema, &mut schemas);
            messages.insert(
                name.clone(),
                json!({
                    "name": name,
                    "title": subject,
                    "summary": event.description,
                    "contentType": "application/json",
                    "headers": cloudevents_headers(),
                    "payload": payload,
                }),
            );
            // The publisher appends the shard of the event's key
            // (switchboard::events::partition); a subscriber takes
            // `<subject>.*`.
            channels.insert(
                name.clone(),
                json!({
                    "address": format!("{subject}.{{shard}}"),
                    "messages": { (name.clone()): { "$ref": format!("#/components/messages/{name}") } },
                    "description": format!("Published by {}", instance.name),
                    "parameters": {
                        "shard": {
                            "description": "FNV-1a (32-bit) of the event's ce-subject (else its ce-id) mod 64: what keyed consumers partition by",
                        }
                    },
                }),
            );
            operations.insert(
                format!("receive_{name}"),
                json!({
                    "action": "receive",
                    "channel": { "$ref": format!("#/channels/{name}") },
                    "summary": format!("Consume {subject} (JetStream, durable)"),
                }),
            );
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Switchboard events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "CloudEvents 1.0 in binary mode over NATS; generated from discovery."
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages, "schemas": schemas }
    })
}

fn cloudevents_headers() -> Value {
    let text = json!({ "type": "string" });
    json!({
        "type": "object",
        "required": ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time"],
        "properties": {
            "ce-specversion": { "const": "1.0" },
            "ce-id": text, "ce-source": text, "ce-type": text,
            "ce-time": { "type": "string", "format": "date-time" },
            "ce-subject": text,
            "Nats-Msg-Id": text
        }
    })
}
