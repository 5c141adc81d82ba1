//! The memento context (seed 000): caretakers that keep mementos of originators, the
//! originators themselves, and the projection that builds their read models.
//!
//! Pure code: no clock, no I/O. Every time comes in with the command.

pub mod caretaker;
pub mod originator;
pub mod projection;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::DomainError;

pub use caretaker::{
    Caretaker, CaretakerCommand, CaretakerEvent, CaretakerLimits, MementoEntry, RemovedMemento,
};
pub use originator::{Originator, OriginatorCommand, OriginatorEvent, RestoredFrom};
pub use projection::MementoProjection;

/// Aggregate type of caretakers; the aggregate id is the caretaker's name.
pub const CARETAKER: &str = "caretaker";
/// Aggregate type of originators; the aggregate id is the originator's id.
pub const ORIGINATOR: &str = "originator";

/// Longest caretaker name, memento id or originator id.
pub const MAX_ID_LEN: usize = 128;
/// Longest memento description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Most keys a memento's metadata may have.
pub const MAX_METADATA_KEYS: usize = 64;
/// Longest originator name, in characters.
pub const MAX_ORIGINATOR_NAME_LEN: usize = 256;

/// The `memento` section of the configuration: the defaults (and ceilings) of new
/// caretakers, and the size limit of an originator's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MementoPolicy {
    pub max_mementos: u32,
    /// In bytes of canonical JSON.
    pub max_memento_size: u64,
    pub max_memento_age_secs: u64,
}

impl Default for MementoPolicy {
    fn default() -> Self {
        MementoPolicy {
            max_mementos: 10_000,
            max_memento_size: 1_048_576,
            max_memento_age_secs: 86_400,
        }
    }
}

/// The four originator kinds of the seed; serialized (and shown as `type`) in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginatorKind {
    Document,
    Database,
    File,
    Configuration,
}

impl OriginatorKind {
    pub const ALL: [OriginatorKind; 4] = [
        OriginatorKind::Document,
        OriginatorKind::Database,
        OriginatorKind::File,
        OriginatorKind::Configuration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OriginatorKind::Document => "document",
            OriginatorKind::Database => "database",
            OriginatorKind::File => "file",
            OriginatorKind::Configuration => "configuration",
        }
    }

    pub fn parse(s: &str) -> Option<OriginatorKind> {
        OriginatorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The state a new originator of this kind starts with.
    pub fn empty_state(self) -> Value {
        match self {
            OriginatorKind::Document | OriginatorKind::File => {
                serde_json::json!({ "content": "" })
            }
            OriginatorKind::Database => serde_json::json!({ "records": [] }),
            OriginatorKind::Configuration => Value::Object(serde_json::Map::new()),
        }
    }

    /// Checks that `state` has the shape this kind needs (the `state` field is blamed).
    pub fn validate_state(self, state: &Value) -> Result<(), DomainError> {
        let shape_error = |message: &str| Err(DomainError::invalid("state", message));
        let Some(obj) = state.as_object() else {
            return shape_error(&format!(
                "a {} state must be a JSON object, got {}",
                self.as_str(),
                json_type(state)
            ));
        };
        let optional_string = |key: &str| -> Result<(), DomainError> {
            match obj.get(key) {
                None | Some(Value::String(_)) => Ok(()),
                Some(other) => Err(DomainError::invalid(
                    "state",
                    format!(
                        "\"{key}\" of a {} state must be a string, got {}",
                        self.as_str(),
                        json_type(other)
                    ),
                )),
            }
        };
        match self {
            OriginatorKind::Document => match obj.get("content") {
                Some(Value::String(_)) => Ok(()),
                _ => shape_error(
                    "a document state must be an object with a string \"content\", \
                     e.g. {\"content\": \"Hello, World!\"}",
                ),
            },
            OriginatorKind::File => match obj.get("content") {
                Some(Value::String(_)) => optional_string("path"),
                _ => shape_error(
                    "a file state must be an object with a string \"content\" (and an optional \
                     string \"path\"), e.g. {\"content\": \"key1=value1\", \"path\": \"/etc/app.conf\"}",
                ),
            },
            OriginatorKind::Database => match obj.get("records") {
                Some(Value::Array(_)) => {
                    optional_string("table")?;
                    optional_string("schema")
                }
                _ => shape_error(
                    "a database state must be an object with an array \"records\" (and optional \
                     strings \"table\" and \"schema\"), e.g. {\"table\": \"users\", \"records\": []}",
                ),
            },
            OriginatorKind::Configuration => Ok(()),
        }
    }
}

impl fmt::Display for OriginatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The canonical JSON of a value: compact, with object keys sorted at every level, so the
/// bytes (and the checksum) do not depend on how the map was built or on serde_json features.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // Value's Display escapes the string exactly as serde_json does.
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Size (bytes of canonical JSON) and hex SHA-256 checksum of a state.
pub fn checksum(state: &Value) -> (u64, String) {
    let bytes = canonical_json(state);
    let digest = Sha256::digest(bytes.as_bytes());
    (bytes.len() as u64, hex::encode(digest))
}

/// Whether `s` is 1..=128 characters of `[A-Za-z0-9._-]` (names and ids).
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(crate) fn validate_id(field: &str, value: &str) -> Result<(), DomainError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!(
                "{field} must be 1 to {MAX_ID_LEN} characters of letters, digits, '.', '_' or '-'"
            ),
        ))
    }
}

/// Checks a state's size against `limit`, returning the size and checksum.
pub(crate) fn sized_checksum(state: &Value, limit: u64) -> Result<(u64, String), DomainError> {
    let (size, sum) = checksum(state);
    if size > limit {
        return Err(DomainError::TooLarge(format!(
            "state is {size} bytes; the limit is {limit} bytes"
        )));
    }
    Ok((size, sum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn memento_canonical_json_sorts_keys_and_is_compact() {
        let v = json!({"b": [1, {"z": null, "a": "x\"y"}], "a": true, "c": 1.5});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":true,"b":[1,{"a":"x\"y","z":null}],"c":1.5}"#
        );
        let (size, sum) = checksum(&json!({}));
        assert_eq!(size, 2);
        // sha256("{}")
        assert_eq!(
            sum,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn memento_ids_charset() {
        assert!(is_valid_id("a.b_c-D9"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("é"));
        assert!(is_valid_id(&"x".repeat(128)));
        assert!(!is_valid_id(&"x".repeat(129)));
    }

    #[test]
    fn memento_kind_shapes() {
        use OriginatorKind::*;
        for k in OriginatorKind::ALL {
            assert!(k.validate_state(&k.empty_state()).is_ok(), "{k}");
            assert!(k.validate_state(&json!("text")).is_err(), "{k}");
            assert_eq!(OriginatorKind::parse(k.as_str()), Some(k));
        }
        assert!(Document.validate_state(&json!({"content": 1})).is_err());
        assert!(File
            .validate_state(&json!({"content": "", "path": 3}))
            .is_err());
        assert!(Database
            .validate_state(&json!({"records": [], "table": "t", "schema": "s"}))
            .is_ok());
        assert!(Database
            .validate_state(&json!({"records": [], "table": 1}))
            .is_err());
        assert!(Database.validate_state(&json!({"records": {}})).is_err());
        assert!(Configuration
            .validate_state(&json!({"a": {"b": 1}}))
            .is_ok());
    }

    #[test]
    fn memento_policy_defaults_and_partial_config() {
        let p: MementoPolicy = serde_json::from_value(json!({"max_mementos": 5})).expect("policy");
        assert_eq!(p.max_mementos, 5);
        assert_eq!(p.max_memento_size, 1_048_576);
        assert_eq!(p.max_memento_age_secs, 86_400);
        assert_eq!(MementoPolicy::default().max_mementos, 10_000);
    }
}
