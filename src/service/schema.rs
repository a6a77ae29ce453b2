//! A request's JSON Schema: generated from its Rust type, published in
//! discovery, and enforced before the handler runs.
//!
//! The limits of a request type are declared once, on the type, as schemars
//! attributes (`#[schemars(length(max = 64), regex(pattern = …))]`). The
//! schema carries them to every reader (`$SRV.INFO`, the HTTP front end's OpenAPI
//! document, `subjects.md`), and this module validates each request against
//! that same schema — so what the documents allow and what the service
//! accepts cannot drift apart. A request that breaks it is a 400 whose
//! `details.errors` name each failing field by its JSON pointer.
//!
//! Types whose schema says nothing serde does not already check (types,
//! required and unknown fields) skip the validator: their requests cost
//! exactly what they did before.
//!
//! Two things serde alone would let through are closed here: a struct
//! request must be an object (serde also reads a struct from an array, so
//! `[]` would be a valid request with no fields), and the descriptions
//! schemars takes from doc comments are plain text (rustdoc links such as
//! ``[`LIMIT`]`` would otherwise reach every published document).

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
    /// The type is a struct (or map): only an object is a request of it.
    object: bool,
}

/// The JSON Schema of `T` as the kit publishes it: schemars' schema with
/// every description in plain text.
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    let mut schema = schemars::schema_for!(T).to_value();
    plain_descriptions(&mut schema);
    schema
}

/// Rewrites every `description` of `schema` without rustdoc link syntax.
fn plain_descriptions(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                match value {
                    Value::String(text) if key == "description" => *text = plain_text(text),
                    _ => plain_descriptions(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(plain_descriptions),
        _ => {}
    }
}

/// A doc comment's text without rustdoc links: ``[`crate::x::LIMIT`]``
/// becomes `LIMIT`, `[text](target)` and `[text][target]` become `text`
/// (a web address is kept in parentheses); other brackets stay.
pub(crate) fn plain_text(doc: &str) -> String {
    let mut out = String::with_capacity(doc.len());
    let mut rest = doc;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = &after[..close];
        let mut tail = &after[close + 1..];
        let target = match tail.chars().next() {
            Some(bracket @ ('(' | '[')) => {
                let end = if bracket == '(' { ')' } else { ']' };
                tail[1..].find(end).map(|e| {
                    let target = &tail[1..1 + e];
                    tail = &tail[e + 2..];
                    target
                })
            }
            _ => None,
        };
        let is_link = target.is_some() || is_item_path(inner);
        if !is_link {
            out.push('[');
            out.push_str(inner);
            out.push(']');
        } else {
            let text = inner.trim_matches('`');
            // An intra-doc path names its item; the path itself is noise.
            let text = if target.is_none() || text == target.unwrap_or_default() {
                text.rsplit("::").next().unwrap_or(text)
            } else {
                text
            };
            out.push_str(text);
            if let Some(url) =
                target.filter(|t| t.starts_with("http://") || t.starts_with("https://"))
            {
                out.push_str(" (");
                out.push_str(url);
                out.push(')');
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Whether bracketed text is an intra-doc link (``[`Item`]``, `[path::Item]`)
/// rather than prose in brackets (`[1, 2]`, `[optional]`).
fn is_item_path(inner: &str) -> bool {
    let code = inner.strip_prefix('`').and_then(|i| i.strip_suffix('`'));
    let path = code.unwrap_or(inner);
    !path.is_empty()
        && (code.is_some() || path.contains("::"))
        && path
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '!' | '(' | ')' | '<' | '>'))
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
        let published = schema_of::<T>();
        let object = published["type"] == "object";
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
            object,
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
        if self.object && !is_map(payload, encoding) {
            return Err(ServiceError::bad_request(format!(
                "invalid request: expected {}, with the fields of the request",
                match encoding {
                    Encoding::Json => "a JSON object",
                    Encoding::MessagePack => "a MessagePack map",
                }
            )));
        }
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

/// Whether `payload` is an object (or empty, which means "no fields"):
/// read from its first byte, before anything is decoded.
fn is_map(payload: &[u8], encoding: Encoding) -> bool {
    match encoding {
        Encoding::Json => payload
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_none_or(|&b| b == b'{'),
        // fixmap, map 16, map 32.
        Encoding::MessagePack => payload
            .first()
            .is_none_or(|&b| (0x80..=0x8f).contains(&b) || b == 0xde || b == 0xdf),
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

    #[derive(serde::Deserialize, schemars::JsonSchema, Debug)]
    struct NoFields {}

    /// Counts, at most [`MAX_REPORTED`] per page; see [`crate::limits::truncate`]
    /// and [the guide](https://example.com/guide), [optional] [1, 2].
    #[derive(serde::Deserialize, schemars::JsonSchema, Debug)]
    #[allow(dead_code)]
    struct Documented {
        /// Like [`Plain::id`][Plain].
        id: String,
    }

    #[test]
    fn a_struct_request_is_an_object_or_a_400() {
        let schema = RequestSchema::for_type::<NoFields>();
        for bad in ["[]", " [1]", "\"x\"", "7", "null"] {
            let refused = schema.decode::<NoFields>(&Bytes::from(bad), Encoding::Json);
            assert!(refused.is_err_and(|e| e.code == 400), "{bad} was accepted");
        }
        for good in ["{}", " {} ", ""] {
            let accepted = schema.decode::<NoFields>(&Bytes::from(good), Encoding::Json);
            assert!(accepted.is_ok(), "{good:?} was refused");
        }
        let plain = RequestSchema::for_type::<Plain>();
        let as_array = plain.decode::<Plain>(&Bytes::from(r#"["a", 1]"#), Encoding::Json);
        assert!(as_array.is_err_and(|e| e.code == 400 && e.message.contains("JSON object")));
        // MessagePack: an array (fixarray 0x92) is refused, a map accepted.
        let packed = rmp_serde::to_vec(&("a", 1)).unwrap_or_default();
        let refused = plain.decode::<Plain>(&Bytes::from(packed), Encoding::MessagePack);
        assert!(refused.is_err_and(|e| e.code == 400));
        let named = rmp_serde::to_vec_named(&serde_json::json!({"id": "a", "count": 1}))
            .unwrap_or_default();
        assert!(
            plain
                .decode::<Plain>(&Bytes::from(named), Encoding::MessagePack)
                .is_ok()
        );
    }

    #[test]
    fn descriptions_are_plain_text() {
        let schema = schema_of::<Documented>();
        let text = schema.to_string();
        assert!(!text.contains("[`"), "{text}");
        assert_eq!(
            schema["description"],
            "Counts, at most MAX_REPORTED per page; see truncate\nand the guide (https://example.com/guide), [optional] [1, 2]."
        );
        assert_eq!(schema["properties"]["id"]["description"], "Like Plain::id.");
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
