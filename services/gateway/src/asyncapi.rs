//! AsyncAPI 3 for the event subjects, from the `events` metadata services
//! publish in discovery (each event with the JSON Schema of its data).

use serde_json::{Map, Value, json};
use switchboard::discovery::InstanceInfo;
use switchboard::service::EVENTS_METADATA;

/// The document for what discovery currently shows.
pub fn document(instances: &[InstanceInfo]) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for instance in instances {
        let Some(events) = instance
            .metadata
            .as_ref()
            .and_then(|m| m.get(EVENTS_METADATA))
            .and_then(|e| serde_json::from_str::<Vec<Value>>(e).ok())
        else {
            continue;
        };
        for event in events {
            let Some(subject) = event["subject"].as_str() else {
                continue;
            };
            let name = subject
                .strip_prefix("events.")
                .unwrap_or(subject)
                .replace('.', "_");
            let mut payload = event["schema"].clone();
            if let Some(object) = payload.as_object_mut() {
                object.remove("$schema");
            }
            messages.insert(
                name.clone(),
                json!({
                    "name": name,
                    "title": subject,
                    "summary": event["description"],
                    "contentType": "application/json",
                    "headers": cloudevents_headers(),
                    "payload": { "schemaFormat": "application/schema+json;version=2020-12", "schema": payload },
                }),
            );
            channels.insert(
                name.clone(),
                json!({
                    "address": subject,
                    "messages": { (name.clone()): { "$ref": format!("#/components/messages/{name}") } },
                    "description": format!("Published by {}", instance.name),
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
        "components": { "messages": messages }
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
