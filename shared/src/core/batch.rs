//! A batch: several gets, puts and deletes in one request
//! (`POST /kv/batch`). Parsing and checking are pure and all-or-nothing: a
//! batch with one bad operation is refused whole, naming it, and nothing
//! runs. How the operations run is the API's (see `api/src/routes/batch.rs`).

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;
use thiserror::Error;

use super::limits::BATCH_OPS_MAX;
use super::request::{WriteLimits, checked_value, ttl_of, type_name};
use super::validate::validate_key;

/// One operation of a batch.
#[derive(Debug, Clone)]
pub enum BatchOp {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: Box<RawValue>,
        ttl_s: Option<u64>,
    },
    Delete {
        key: String,
    },
}

impl BatchOp {
    pub fn key(&self) -> &str {
        match self {
            BatchOp::Get { key } | BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// Why a batch was refused (HTTP 400 `bad_batch`; nothing ran).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error(
        "body must be {{\"ops\": [{{\"op\": \"get\" | \"put\" | \"delete\", \"key\": \"...\", \"value\": ...}}]}}"
    )]
    BadShape,
    #[error("ops is empty; send at least one operation")]
    Empty,
    #[error("ops has {len} operations; the limit is {max}")]
    TooMany { len: usize, max: usize },
    #[error("ops[{index}]: {reason}")]
    BadOp { index: usize, reason: String },
}

/// Parses `{"ops": [...]}`: at most [`BATCH_OPS_MAX`] operations, each with
/// a valid key (and, for `put`, a value within the limits); unknown fields
/// are refused, so a typo is not silently ignored.
pub fn parse_batch(bytes: &[u8], limits: WriteLimits) -> Result<Vec<BatchOp>, BatchError> {
    // serde_json stops at 128 levels of nesting, so a hostile body cannot
    // recurse deeply here.
    let body: Value =
        serde_json::from_slice(bytes).map_err(|e| BatchError::NotJson(e.to_string()))?;
    let Value::Object(mut top) = body else {
        return Err(BatchError::BadShape);
    };
    let ops = match (top.remove("ops"), top.is_empty()) {
        (Some(Value::Array(ops)), true) => ops,
        _ => return Err(BatchError::BadShape),
    };
    if ops.is_empty() {
        return Err(BatchError::Empty);
    }
    if ops.len() > BATCH_OPS_MAX {
        return Err(BatchError::TooMany {
            len: ops.len(),
            max: BATCH_OPS_MAX,
        });
    }
    ops.into_iter()
        .enumerate()
        .map(|(index, op)| {
            parse_op(op, limits).map_err(|reason| BatchError::BadOp { index, reason })
        })
        .collect()
}

fn parse_op(op: Value, limits: WriteLimits) -> Result<BatchOp, String> {
    let Value::Object(fields) = op else {
        return Err(format!("an operation is an object, got {}", type_name(&op)));
    };
    let mut fields: BTreeMap<String, Value> = fields.into_iter().collect();
    let kind = match fields.remove("op") {
        Some(Value::String(kind)) => kind,
        Some(other) => return Err(format!("op must be a string, got {}", type_name(&other))),
        None => return Err("field op is required (get, put or delete)".to_owned()),
    };
    let key = match fields.remove("key") {
        Some(Value::String(key)) => key,
        Some(other) => return Err(format!("key must be a string, got {}", type_name(&other))),
        None => return Err("field key is required".to_owned()),
    };
    validate_key(&key, limits.key_bytes_max).map_err(|e| e.to_string())?;
    let value = fields.remove("value");
    let ttl_s = fields.remove("ttl_s");
    if let Some(unknown) = fields.keys().next() {
        let unknown: String = unknown.chars().take(64).collect();
        return Err(format!("unknown field {unknown:?}"));
    }
    if ttl_s.is_some() && kind != "put" {
        return Err(format!("ttl_s applies to a put, not to a {kind:.32}"));
    }
    match (kind.as_str(), value) {
        ("get", None) => Ok(BatchOp::Get { key }),
        ("delete", None) => Ok(BatchOp::Delete { key }),
        ("put", Some(value)) => Ok(BatchOp::Put {
            key,
            value: checked_value(value, limits).map_err(|e| e.to_string())?,
            ttl_s: ttl_s
                .as_ref()
                .map(ttl_of)
                .transpose()
                .map_err(|e| e.to_string())?,
        }),
        ("put", None) => Err("a put needs a value (any JSON, null included)".to_owned()),
        ("get" | "delete", Some(_)) => Err(format!("a {kind} takes no value")),
        _ => {
            let kind: String = kind.chars().take(32).collect();
            Err(format!("op must be get, put or delete, got {kind:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: WriteLimits = WriteLimits {
        key_bytes_max: 16,
        value_bytes_max: 32,
    };

    fn parse(text: &str) -> Result<Vec<BatchOp>, BatchError> {
        parse_batch(text.as_bytes(), LIMITS)
    }

    #[test]
    fn parses_the_three_operations_in_order() {
        let ops = parse(
            r#"{"ops": [{"op": "put", "key": "a", "value": {"x": 1}},
                        {"op": "get", "key": "a"}, {"op": "delete", "key": "b"}]}"#,
        )
        .unwrap();
        assert_eq!(ops.len(), 3);
        assert!(
            matches!(&ops[0], BatchOp::Put { key, value, ttl_s: None } if key == "a" && value.get() == r#"{"x":1}"#)
        );
        assert!(matches!(&ops[1], BatchOp::Get { key } if key == "a"));
        assert!(matches!(&ops[2], BatchOp::Delete { key } if key == "b"));
        assert_eq!(ops[2].key(), "b");
    }

    #[test]
    fn refuses_bad_batches_naming_the_operation() {
        let cases = [
            ("[]", BatchError::BadShape),
            (r#"{"ops": [], "x": 1}"#, BatchError::BadShape),
            (r#"{"ops": []}"#, BatchError::Empty),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap_err(), want, "{text}");
        }
        for (text, index, needle) in [
            (r#"{"ops": [{"op": "get", "key": "a"}, 3]}"#, 1, "object"),
            (
                r#"{"ops": [{"op": "fetch", "key": "a"}]}"#,
                0,
                "get, put or delete",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a"}]}"#,
                0,
                "needs a value",
            ),
            (
                r#"{"ops": [{"op": "get", "key": "a", "value": 1}]}"#,
                0,
                "takes no value",
            ),
            (
                r#"{"ops": [{"op": "delete", "key": "a", "ttl_s": 5}]}"#,
                0,
                "applies to a put",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value": 1, "ttl_s": 0}]}"#,
                0,
                "ttl_s must be",
            ),
            (r#"{"ops": [{"op": "get", "key": ""}]}"#, 0, "key"),
            (
                r#"{"ops": [{"op": "get", "key": "aaaaaaaaaaaaaaaaaaaa"}]}"#,
                0,
                "key",
            ),
            (
                r#"{"ops": [{"op": "get", "kee": "a"}]}"#,
                0,
                "key is required",
            ),
            (
                r#"{"ops": [{"op": "get", "key": "a", "kee": 1}]}"#,
                0,
                "unknown field",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value": "0123456789012345678901234567890123"}]}"#,
                0,
                "bytes",
            ),
        ] {
            match parse(text) {
                Err(BatchError::BadOp { index: i, reason }) => {
                    assert_eq!(i, index, "{text}");
                    assert!(reason.contains(needle), "{text}: {reason}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn bounds_the_number_of_operations() {
        let op = r#"{"op": "get", "key": "a"}"#;
        let full = format!(r#"{{"ops": [{}]}}"#, vec![op; BATCH_OPS_MAX].join(","));
        assert_eq!(parse(&full).unwrap().len(), BATCH_OPS_MAX);
        let over = format!(r#"{{"ops": [{}]}}"#, vec![op; BATCH_OPS_MAX + 1].join(","));
        assert_eq!(
            parse(&over).unwrap_err(),
            BatchError::TooMany {
                len: BATCH_OPS_MAX + 1,
                max: BATCH_OPS_MAX
            }
        );
    }

    proptest! {
        /// Any bytes: an answer, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_batch(&bytes, LIMITS);
        }

        /// Well-formed batches come back as sent, in order.
        #[test]
        fn round_trips(keys in proptest::collection::vec("[a-z]{1,8}", 1..20)) {
            let ops: Vec<Value> = keys.iter().enumerate().map(|(i, k)| match i % 3 {
                0 => serde_json::json!({"op": "put", "key": k, "value": i}),
                1 => serde_json::json!({"op": "get", "key": k}),
                _ => serde_json::json!({"op": "delete", "key": k}),
            }).collect();
            let text = serde_json::json!({ "ops": ops }).to_string();
            let parsed = parse_batch(text.as_bytes(), LIMITS).unwrap();
            prop_assert_eq!(parsed.len(), keys.len());
            for (i, (op, key)) in parsed.iter().zip(&keys).enumerate() {
                prop_assert_eq!(op.key(), key.as_str());
                let kind_ok = match op {
                    BatchOp::Put { value, .. } => i % 3 == 0 && value.get() == i.to_string(),
                    BatchOp::Get { .. } => i % 3 == 1,
                    BatchOp::Delete { .. } => i % 3 == 2,
                };
                prop_assert!(kind_ok);
            }
        }
    }
}
