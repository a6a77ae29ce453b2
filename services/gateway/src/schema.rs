//! JSON Schemas from discovery, made embeddable in a larger document.
//!
//! Each endpoint and event publishes a self-contained schema (schemars
//! output: definitions under `$defs`, references `#/$defs/Name`). Copied
//! into an OpenAPI or AsyncAPI document as it is, those references point at
//! the document's root, where nothing is: the definitions move to
//! `components/schemas` and the references follow them.

use serde_json::{Map, Value};

/// `schema` without `$schema`/`title`, its `$defs` moved into `components`
/// and every reference pointed there.
pub(crate) fn hoist(schema: &Value, components: &mut Map<String, Value>) -> Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("title");
        if let Some(Value::Object(defs)) = object.remove("$defs") {
            for (name, def) in defs {
                let mut def = def;
                rewrite_refs(&mut def);
                components.insert(name, def);
            }
        }
    }
    rewrite_refs(&mut schema);
    schema
}

fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get_mut("$ref")
                && let Some(name) = reference.strip_prefix("#/$defs/")
            {
                *reference = format!("#/components/schemas/{name}");
            }
            object.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definitions_move_and_references_follow() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Order",
            "type": "object",
            "properties": { "items": { "type": "array", "items": { "$ref": "#/$defs/Item" } } },
            "$defs": { "Item": { "type": "object", "properties": { "next": { "$ref": "#/$defs/Item" } } } }
        });
        let mut components = Map::new();
        let hoisted = hoist(&schema, &mut components);
        assert_eq!(
            hoisted["properties"]["items"]["items"]["$ref"],
            "#/components/schemas/Item"
        );
        assert_eq!(
            components["Item"]["properties"]["next"]["$ref"],
            "#/components/schemas/Item"
        );
        assert!(hoisted.get("$defs").is_none() && hoisted.get("$schema").is_none());
    }
}
