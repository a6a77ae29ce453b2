//! Payload encodings, negotiated per message by content type.
//!
//! JSON is the default and what the `nats` CLI, HTTP front ends and every
//! other NATS client see. A caller that wants fewer bytes and less CPU per
//! message may send MessagePack (`Content-Type: application/msgpack`); the
//! service answers in the request's encoding unless `Accept` asks for
//! another (so JSON may ask for MessagePack and the reverse), says which in
//! the reply's `Content-Type` when it is not JSON, and answers errors in
//! JSON whatever was asked (they are read by people and tools as often as
//! by code).
//!
//! Why MessagePack and not Protobuf: handlers are plain serde types, and
//! MessagePack (via `rmp-serde`) encodes any serde type as it is — a map
//! per struct, the same field names as the JSON, the same `Option`s and
//! enums — so any endpoint speaks it with no schema file, no generated
//! type and no second definition of a request to keep in step. Protobuf
//! needs `.proto` messages (or prost-derived types) per endpoint; its win
//! over MessagePack is smaller than either's over JSON.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// MIME type of JSON payloads.
pub const JSON: &str = "application/json";
/// MIME type of MessagePack payloads (the IANA-registered name also read:
/// `application/vnd.msgpack`, and the older `application/x-msgpack`).
pub const MESSAGE_PACK: &str = "application/msgpack";

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum Encoding {
    /// JSON: the default, and what a message without `Content-Type` is.
    #[default]
    Json,
    /// MessagePack, structs as maps of field names (as in the JSON).
    MessagePack,
}

/// A value that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// JSON: serde's error, naming line, column and field.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// MessagePack could not be decoded (malformed, or not the type).
    #[error("{0}")]
    MessagePackDecode(#[from] rmp_serde::decode::Error),
    /// MessagePack could not be encoded (a type serde cannot write).
    #[error("{0}")]
    MessagePackEncode(#[from] rmp_serde::encode::Error),
    /// The payload's `Content-Type` names an encoding this kit does not
    /// speak (the value, shortened).
    #[error("content type {0:?} is not spoken here")]
    UnknownContentType(String),
}

impl Encoding {
    /// The MIME type to send in `Content-Type`.
    pub const fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON,
            Encoding::MessagePack => MESSAGE_PACK,
        }
    }

    /// The encoding a `Content-Type` value names (parameters such as
    /// `; charset=utf-8` ignored, case-insensitive); `None` when it names
    /// one this kit does not speak.
    pub fn from_content_type(value: &str) -> Option<Encoding> {
        let media = value.split(';').next().unwrap_or_default().trim();
        if media.eq_ignore_ascii_case(JSON) {
            Some(Encoding::Json)
        } else if [
            MESSAGE_PACK,
            "application/vnd.msgpack",
            "application/x-msgpack",
        ]
        .iter()
        .any(|name| media.eq_ignore_ascii_case(name))
        {
            Some(Encoding::MessagePack)
        } else {
            None
        }
    }

    /// The encoding to answer in for an `Accept` value: the first listed
    /// that this kit speaks (`*/*` and `application/*` mean JSON); JSON
    /// when none is — the reply's `Content-Type` then says so, as HTTP
    /// does rather than refusing.
    pub fn from_accept(value: &str) -> Encoding {
        value
            .split(',')
            .find_map(|item| {
                let media = item.split(';').next().unwrap_or_default().trim();
                if media == "*/*" || media.eq_ignore_ascii_case("application/*") {
                    Some(Encoding::Json)
                } else {
                    Encoding::from_content_type(media)
                }
            })
            .unwrap_or_default()
    }

    /// Encodes `value`.
    ///
    /// # Errors
    ///
    /// When the value's `Serialize` fails (e.g. a JSON map with non-string
    /// keys) — a bug of the type, not of input.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, CodecError> {
        Ok(Bytes::from(match self {
            Encoding::Json => serde_json::to_vec(value)?,
            // Named: structs as maps, so optional and defaulted fields,
            // flattening and field order work as in JSON.
            Encoding::MessagePack => rmp_serde::to_vec_named(value)?,
        }))
    }

    /// Decodes a `T`.
    ///
    /// # Errors
    ///
    /// When the bytes are not this encoding or not a `T`.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        Ok(match self {
            Encoding::Json => serde_json::from_slice(bytes)?,
            Encoding::MessagePack => rmp_serde::from_slice(bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        items: Vec<(String, u32)>,
        total: f64,
    }

    #[test]
    fn content_types_are_read_leniently_and_written_exactly() {
        for (value, wanted) in [
            ("application/json", Some(Encoding::Json)),
            ("Application/JSON; charset=utf-8", Some(Encoding::Json)),
            ("application/msgpack", Some(Encoding::MessagePack)),
            ("application/vnd.msgpack", Some(Encoding::MessagePack)),
            (" application/x-msgpack ", Some(Encoding::MessagePack)),
            ("application/xml", None),
            ("", None),
        ] {
            assert_eq!(Encoding::from_content_type(value), wanted, "{value:?}");
        }
        for encoding in [Encoding::Json, Encoding::MessagePack] {
            assert_eq!(
                Encoding::from_content_type(encoding.content_type()),
                Some(encoding)
            );
        }
    }

    #[test]
    fn accept_picks_the_first_spoken_and_falls_back_to_json() {
        assert_eq!(
            Encoding::from_accept("application/msgpack"),
            Encoding::MessagePack
        );
        assert_eq!(
            Encoding::from_accept("text/html, application/msgpack;q=0.9, */*"),
            Encoding::MessagePack
        );
        assert_eq!(Encoding::from_accept("*/*"), Encoding::Json);
        assert_eq!(Encoding::from_accept("application/xml"), Encoding::Json);
        assert_eq!(Encoding::from_accept(&"x".repeat(5000)), Encoding::Json);
    }

    #[test]
    fn both_encodings_round_trip_and_message_pack_is_smaller() {
        let order = Order {
            id: "o-1".into(),
            note: None,
            items: vec![("sku-1".into(), 2), ("sku-2".into(), 40_000)],
            total: 1234.5,
        };
        let json = Encoding::Json.encode(&order).ok();
        let packed = Encoding::MessagePack.encode(&order).ok();
        let (Some(json), Some(packed)) = (json, packed) else {
            panic!("an encoding failed");
        };
        assert!(
            packed.len() < json.len(),
            "{} vs {}",
            packed.len(),
            json.len()
        );
        assert_eq!(
            Encoding::Json.decode::<Order>(&json).ok(),
            Some(order.clone())
        );
        assert_eq!(
            Encoding::MessagePack.decode::<Order>(&packed).ok(),
            Some(order)
        );
        // Each encoding refuses the other's bytes rather than misreading them.
        assert!(Encoding::Json.decode::<Order>(&packed).is_err());
        assert!(Encoding::MessagePack.decode::<Order>(&json).is_err());
        assert!(Encoding::MessagePack.decode::<Order>(&[0xc1]).is_err());
    }
}
