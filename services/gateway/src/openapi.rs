//! OpenAPI 3.1 from the same endpoint metadata and JSON Schemas the
//! services publish in discovery — never written by hand.

use serde_json::{Map, Value, json};

use crate::routes::RouteTable;
use crate::schema::hoist;

/// The document for the current routing table.
pub fn document(table: &RouteTable) -> Value {
    let mut paths = Map::new();
    let mut components = Map::new();
    components.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": { "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": { "type": "integer" },
                    "message": { "type": "string" },
                    "details": {},
                    "trace_id": { "type": "string" }
                }
            }}
        }),
    );
    for route in table.routes() {
        let params: Vec<String> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        let mut operation = Map::new();
        operation.insert("operationId".into(), json!(route.subject));
        operation.insert("summary".into(), json!(route.description));
        operation.insert("tags".into(), json!([route.service]));
        let body = route
            .request_schema
            .as_ref()
            .map(|schema| hoist(schema, &mut components));
        if !params.is_empty() {
            // A path parameter is a request field: it keeps that field's
            // schema, limits included.
            let parameters: Vec<Value> = params
                .iter()
                .map(|p| {
                    let schema = body
                        .as_ref()
                        .and_then(|b| b["properties"].get(p))
                        .filter(|s| s.get("type") == Some(&json!("string")))
                        .cloned()
                        .unwrap_or_else(|| json!({ "type": "string", "minLength": 1 }));
                    json!({ "name": p, "in": "path", "required": true, "schema": schema })
                })
                .collect();
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        if let Some(mut body) = body {
            // Path parameters come from the path, not the body.
            if let Some(properties) = body.get_mut("properties").and_then(Value::as_object_mut) {
                for p in &params {
                    properties.remove(p);
                }
            }
            if let Some(required) = body.get_mut("required").and_then(Value::as_array_mut) {
                required.retain(|r| !r.as_str().is_some_and(|r| params.iter().any(|p| p == r)));
            }
            let has_fields = body["properties"]
                .as_object()
                .is_some_and(|p| !p.is_empty());
            if has_fields && route.method != "GET" {
                operation.insert(
                    "requestBody".into(),
                    json!({ "required": true, "content": { "application/json": { "schema": body } } }),
                );
            } else if has_fields {
                // A GET's fields travel in the query string, typed by
                // their schema (the gateway converts `?limit=20` to 20).
                let required: Vec<&str> = body["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut query: Vec<Value> = body["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, schema)| {
                        json!({
                            "name": name,
                            "in": "query",
                            "required": required.contains(&name.as_str()),
                            "schema": without_null(schema),
                        })
                    })
                    .collect();
                if let Some(Value::Array(parameters)) = operation.get_mut("parameters") {
                    parameters.append(&mut query);
                } else {
                    operation.insert("parameters".into(), Value::Array(query));
                }
            }
        }
        let response = route
            .response_schema
            .as_ref()
            .map(|s| hoist(s, &mut components))
            .unwrap_or_else(|| json!({}));
        let error = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
        let mut responses = Map::new();
        responses.insert(
            route.status.to_string(),
            json!({ "description": "success", "content": { "application/json": { "schema": response } } }),
        );
        for code in [
            "400", "404", "409", "413", "422", "429", "500", "502", "503", "504",
        ] {
            responses.insert(code.into(), error.clone());
        }
        operation.insert("responses".into(), Value::Object(responses));
        let item = paths.entry(route.path.clone()).or_insert_with(|| json!({}));
        if let Some(item) = item.as_object_mut() {
            item.insert(route.method.to_lowercase(), Value::Object(operation));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Switchboard gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Generated from the services' discovery metadata."
        },
        "paths": paths,
        "components": { "schemas": components }
    })
}

/// A field's schema as a query parameter's: a query value is never `null`
/// (an optional field is left out instead).
fn without_null(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types[0].clone();
            schema["type"] = only;
        }
    }
    schema
}
