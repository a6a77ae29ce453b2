//! A request's JSON Schema: generated from its Rust type, published in
//! discovery, and enforced before the handler runs.
//!
//! The limits of a request type are declared once, on the type, as schemars
//! attributes (`#[schemars(length(max = 64), regex(pattern = …))]`). The
//! schema carries them to every reader (`$SRV.INFO`, the gateway's OpenAPI
//! document, `subjects.md`), and this module validates each request against
//! that same schema — so what the documents allow and what the service
//! accepts cannot drift apart. A request that breaks it is a 400 whose
//! `details.errors` name each failing field by its JSON pointer.
//!
//! Types whose schema says nothing serde does not already check (types,
//! required and unknown fields) skip the validator: their requests cost
//! exactly what they did before.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::codec::{self, Encoding};
use crate::error::ServiceError;

/// Keywords that constrain a value beyond what serde checks while decoding.
/// (`format` is not one: schemars writes `uint32` and the like, which
/// serde enforces, and formats are annotations in JSON Schema 2020-12.)
const CONSTRAINTS: [&str; 11] = [
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "exclusiveMinimum",
    "exclusiveMaximum",
];

/// Most failures listed in one reply: enough to fix a request, bounded for
/// a request with 20,000 bad items.
const MAX_REPORTED: usize = 10;

/// The published schema and, where it constrains more than serde does, its
/// compiled validator.
#[derive(Clone)]
pub(crate) struct RequestSchema {
    pub(crate) published: Value,
    validator: Option<Arc<jsonschema::Validator>>,
}

impl std::fmt::Debug for RequestSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSchema")
            .field("validated", &self.validator.is_some())
            .finish_non_exhaustive()
    }
}

impl RequestSchema {
    pub(crate) fn for_type<T: schemars::JsonSchema>() -> Self {
        let published = schemars::schema_for!(T).to_value();
        let validator = if constrains(&published) {
            match jsonschema::validator_for(&published) {
                Ok(validator) => Some(Arc::new(validator)),
                Err(error) => {
                    // A schemars attribute the validator cannot compile
                    // (a pattern in another regex dialect, say): a bug of
                    // the type, told loudly; serde still checks the rest.
                    tracing::error!(%error, "request schema does not compile; its limits are not enforced");
                    None
                }
            }
        } else {
            None
        };
        RequestSchema {
            published,
            validator,
        }
    }

    /// Whether requests are checked against the schema (beyond serde).
    #[cfg(test)]
    pub(crate) fn is_validated(&self) -> bool {
        self.validator.is_some()
    }

    /// Decodes a request in `encoding`, checking it against the schema
    /// first (the same schema whatever the encoding: it is the request's
    /// shape, not its bytes).
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        payload: &Bytes,
        encoding: Encoding,
    ) -> Result<T, ServiceError> {
        let Some(validator) = &self.validator else {
            return codec::decode_request_as(payload, encoding);
        };
        let mut value: Value = codec::decode_request_as(payload, encoding)?;
        check(validator, &value)?;
        // In place: no second tree per request.
        integers_as_integers(&mut value);
        T::deserialize(&value)
            .map_err(|e| ServiceError::bad_request(format!("invalid request: {e}")))
    }
}

/// Every way `value` breaks the schema, as one 400 (the first few named).
fn check(validator: &jsonschema::Validator, value: &Value) -> Result<(), ServiceError> {
    let mut reported = Vec::new();
    let mut total = 0usize;
    for error in validator.iter_errors(value) {
        total += 1;
        if reported.len() < MAX_REPORTED {
            // Masked: the message must not quote a 5,000-character value.
            let message = error.masked_with("the value").to_string();
            reported.push(json!({
                "path": error.instance_path().as_str(),
                "message": crate::limits::truncate(&message, 200),
            }));
        }
    }
    let Some(first) = reported.first() else {
        return Ok(());
    };
    let path = first["path"].as_str().unwrap_or_default();
    let message = first["message"].as_str().unwrap_or_default();
    let first = if path.is_empty() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    };
    let more = if total > 1 {
        format!(" (and {} more)", total - 1)
    } else {
        String::new()
    };
    Err(
        ServiceError::bad_request(format!("invalid request: {first}{more}"))
            .with_details(json!({ "errors": reported, "error_count": total })),
    )
}

/// `1332.0` is an integer to JSON Schema (it is one number), not to serde:
/// a whole float becomes an integer before decoding, so a request the
/// schema accepts is not refused by the type.
fn integers_as_integers(value: &mut Value) {
    match value {
        Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            let whole = match number.as_f64() {
                Some(f) if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 => {
                    Some(Value::from(f as u64))
                }
                Some(f) if f.fract() == 0.0 && f < 0.0 && f >= i64::MIN as f64 => {
                    Some(Value::from(f as i64))
                }
                _ => None,
            };
            if let Some(whole) = whole {
                *value = whole;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integers_as_integers),
        Value::Object(object) => object.values_mut().for_each(integers_as_integers),
        _ => {}
    }
}

/// Whether `schema` (with its definitions) says more than serde checks.
fn constrains(schema: &Value) -> bool {
    match schema {
        Value::Object(object) => {
            object.keys().any(|k| CONSTRAINTS.contains(&k.as_str()))
                // `minimum: 0` is what schemars writes for unsigned types;
                // any other bound is a declared limit.
                || object
                    .get("minimum")
                    .is_some_and(|m| m.as_f64() != Some(0.0))
                || object.contains_key("maximum")
                || object.values().any(constrains)
        }
        Value::Array(items) => items.iter().any(constrains),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, schemars::JsonSchema, Debug)]
    #[allow(dead_code)]
    struct Plain {
        id: String,
        count: u32,
    }

    #[derive(serde::Deserialize, schemars::JsonSchema, Debug)]
    #[allow(dead_code)]
    struct Line {
        #[schemars(length(min = 1, max = 8))]
        sku: String,
        #[schemars(range(min = 1, max = 10))]
        quantity: u32,
    }

    #[derive(serde::Deserialize, schemars::JsonSchema, Debug)]
    #[allow(dead_code)]
    struct Limited {
        #[schemars(length(min = 1, max = 8), regex(pattern = r"^[a-z0-9-]+$"))]
        id: String,
        #[schemars(length(min = 1, max = 3))]
        lines: Vec<Line>,
    }

    #[test]
    fn only_constrained_types_pay_for_validation() {
        assert!(!RequestSchema::for_type::<Plain>().is_validated());
        assert!(RequestSchema::for_type::<Limited>().is_validated());
    }

    #[test]
    fn every_failing_field_is_named_by_its_path() {
        let schema = RequestSchema::for_type::<Limited>();
        let payload = Bytes::from(
            json!({
                "id": "z".repeat(5000),
                "lines": [{"sku": "ok", "quantity": 1}, {"sku": "", "quantity": 0}]
            })
            .to_string(),
        );
        let error = schema.decode::<Limited>(&payload, Encoding::Json).err();
        let error = error.unwrap_or_else(|| ServiceError::internal("accepted"));
        assert_eq!(error.code, 400);
        let paths: Vec<&str> = error
            .details
            .as_ref()
            .and_then(|d| d["errors"].as_array())
            .map(|e| e.iter().filter_map(|e| e["path"].as_str()).collect())
            .unwrap_or_default();
        for path in ["/id", "/lines/1/sku", "/lines/1/quantity"] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        assert!(error.message.len() < 300, "{}", error.message);
        let good = Bytes::from(r#"{"id":"a-1","lines":[{"sku":"x","quantity":10}]}"#);
        assert!(schema.decode::<Limited>(&good, Encoding::Json).is_ok());
        let whole = Bytes::from(r#"{"id":"a-1","lines":[{"sku":"x","quantity":7.0}]}"#);
        assert!(
            schema
                .decode::<Limited>(&whole, Encoding::Json)
                .is_ok_and(|l| l.lines[0].quantity == 7),
            "7.0 is the integer 7 to JSON Schema"
        );
        let malformed = schema.decode::<Limited>(&Bytes::from_static(b"{\"id\":"), Encoding::Json);
        assert!(malformed.is_err_and(|e| e.code == 400));
    }
}
