//! Parsing of client requests: the query string and the body of a write.
//!
//! Pure functions over bytes, so the API's handlers stay thin and a fuzzer
//! (`shared/tests/fuzz_decode.rs`) can drive them with arbitrary input.
//!
//! Strict on purpose: a store that guesses ends up storing something the
//! client did not mean.
//!
//! - The query string must percent-decode to UTF-8 (no silent U+FFFD in a
//!   key), and a parameter may appear only once (`?key=a&key=b` has no
//!   single meaning).
//! - The body is one JSON object with `key`, `value` and optionally
//!   `ttl_s`, each at most once, and no other field.
//! - Objects inside the value may not repeat a member name either. JSON
//!   parsers disagree on which copy wins (RFC 8259 §4 leaves it open), so
//!   storing such a value would silently drop one copy, and another client
//!   could read it differently. Checking costs nothing extra: the value is
//!   parsed into a tree once in any case, to compact it and check its depth.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};
use thiserror::Error;

use super::limits::{QUERY_PARAMS_MAX, TTL_S_MAX, TTL_S_MIN, VALUE_DEPTH_MAX};
use super::validate::{KeyError, json_depth, validate_key};

/// Why a request was refused. Every variant is a client error (HTTP 400);
/// [`RequestError::code`] is the stable `error.code` of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("query string is malformed: {reason}")]
    BadQuery { reason: String },
    #[error("body is empty; send {{\"key\": \"...\", \"value\": ...}}")]
    EmptyBody,
    #[error("body is not valid JSON: {reason}")]
    NotJson { reason: String },
    #[error("body does not fit {{\"key\": \"...\", \"value\": ...}}: {reason}")]
    BadShape { reason: String },
    #[error("key must be a string, got {got}")]
    KeyNotString { got: &'static str },
    #[error("{0}")]
    BadKey(#[from] KeyError),
    #[error("key in body {body:?} differs from key in path {path:?}")]
    KeyMismatch { body: String, path: String },
    #[error("field key is required")]
    MissingKey,
    #[error("field value is required (any JSON, null included)")]
    MissingValue,
    #[error("value nests {depth} levels; the limit is {depth_max}")]
    ValueTooDeep { depth: usize, depth_max: usize },
    #[error("value is {len_bytes} bytes of JSON; the limit is {max_bytes} bytes")]
    ValueTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("ttl_s must be a whole number of seconds from {TTL_S_MIN} to {TTL_S_MAX}, got {got}")]
    BadTtl { got: String },
    #[error("{0}")]
    TtlPlace(&'static str),
}

impl RequestError {
    /// The machine-readable code sent as `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::BadQuery { .. } => "bad_query",
            RequestError::EmptyBody
            | RequestError::NotJson { .. }
            | RequestError::BadShape { .. } => "bad_json",
            RequestError::KeyNotString { .. } | RequestError::BadKey(_) => "bad_key",
            RequestError::KeyMismatch { .. } => "key_mismatch",
            RequestError::MissingKey => "missing_key",
            RequestError::MissingValue => "missing_value",
            RequestError::ValueTooDeep { .. } => "value_too_deep",
            RequestError::ValueTooLarge { .. } => "value_too_large",
            RequestError::BadTtl { .. } | RequestError::TtlPlace(_) => "bad_ttl",
        }
    }
}

/// Limits a write body is checked against (from the node's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
}

/// A checked write: a valid key, the value's compact JSON text and its
/// time to live in seconds, if any.
#[derive(Debug, Clone)]
pub struct WriteBody {
    pub key: String,
    pub value: Box<RawValue>,
    pub ttl_s: Option<u64>,
}

/// Checks a time to live given as query text (`?ttl_s=30`): digits only,
/// within [`TTL_S_MIN`]..=[`TTL_S_MAX`].
pub fn parse_ttl(text: &str) -> Result<u64, RequestError> {
    text.parse::<u64>()
        .ok()
        .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
        .filter(|s| (TTL_S_MIN..=TTL_S_MAX).contains(s))
        .ok_or_else(|| RequestError::BadTtl {
            got: format!("{:?}", quoted(text)),
        })
}

/// Checks a time to live given in a JSON body: an integer in bounds.
pub fn ttl_of(value: &Value) -> Result<u64, RequestError> {
    value
        .as_u64()
        .filter(|s| (TTL_S_MIN..=TTL_S_MAX).contains(s))
        .ok_or_else(|| RequestError::BadTtl {
            got: quoted(&value.to_string()),
        })
}

/// Where a write's time to live goes: in the body of the body form
/// (`/kv/`), in the query of the path form (`/kv/{key}?ttl_s=`) — one
/// place each, so a request never carries two that could disagree.
pub fn place_ttl(
    path_form: bool,
    body: Option<u64>,
    query: Option<&str>,
) -> Result<Option<u64>, RequestError> {
    match (path_form, body, query) {
        (false, _, Some(_)) => Err(RequestError::TtlPlace(
            "on /kv/, give ttl_s in the body, not the query",
        )),
        (true, Some(_), _) => Err(RequestError::TtlPlace(
            "on /kv/{key}, give ttl_s as ?ttl_s=, not in the body",
        )),
        (false, body, None) => Ok(body),
        (true, None, query) => query.map(parse_ttl).transpose(),
    }
}

/// Longest piece of client input quoted back in an error message.
const QUOTED_CHARS_MAX: usize = 100;

fn quoted(s: &str) -> String {
    s.chars().take(QUOTED_CHARS_MAX).collect()
}

/// Decodes a query string (`a=1&b=x%20y`, without the `?`).
///
/// `+` is a space and `%XX` a byte, as in HTML forms; a `%` not followed by
/// two hex digits stays as it is (like the path's decoding). Empty pieces
/// (`a=1&&b=2`) are skipped. Refused: a name or value that is not UTF-8
/// once decoded, a name given twice, more than [`QUERY_PARAMS_MAX`] names.
pub fn parse_query(raw: &str) -> Result<BTreeMap<String, String>, RequestError> {
    let mut params = BTreeMap::new();
    for piece in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = decode_component(name).ok_or_else(|| RequestError::BadQuery {
            reason: "a parameter name is not UTF-8 once percent-decoded".to_owned(),
        })?;
        let value = decode_component(value).ok_or_else(|| RequestError::BadQuery {
            reason: format!(
                "parameter {:?} is not UTF-8 once percent-decoded",
                quoted(&name)
            ),
        })?;
        if params.contains_key(&name) {
            return Err(RequestError::BadQuery {
                reason: format!("parameter {:?} is given more than once", quoted(&name)),
            });
        }
        if params.len() == QUERY_PARAMS_MAX {
            return Err(RequestError::BadQuery {
                reason: format!("more than {QUERY_PARAMS_MAX} parameters"),
            });
        }
        params.insert(name, value);
    }
    Ok(params)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one name or value; `None` when the bytes are not UTF-8.
fn decode_component(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escaped = match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex_digit(h).zip(hex_digit(l)),
            _ => None,
        };
        match (b, escaped) {
            (_, Some((h, l))) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (_, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a query component so that [`parse_query`] gives it back exactly.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses and checks `{"key": "...", "value": <json>}`. With `path_key`, the
/// body's key is optional but must match it. The value comes back as compact
/// JSON text (the form that is stored and measured against the limit).
pub fn parse_write_body(
    bytes: &[u8],
    path_key: Option<&str>,
    limits: WriteLimits,
) -> Result<WriteBody, RequestError> {
    if bytes.is_empty() {
        return Err(RequestError::EmptyBody);
    }
    // serde_json refuses nesting deeper than 128 without recursing further,
    // so a hostile 100,000-deep body is a plain parse error here.
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| {
        let reason = quoted(&e.to_string());
        match e.classify() {
            serde_json::error::Category::Data => RequestError::BadShape { reason },
            _ => RequestError::NotJson { reason },
        }
    })?;
    let body_key = match envelope.key {
        None => None,
        Some(Value::String(k)) => Some(k),
        Some(other) => {
            return Err(RequestError::KeyNotString {
                got: type_name(&other),
            });
        }
    };
    let key = match (path_key, body_key) {
        (Some(p), Some(b)) if p != b => {
            return Err(RequestError::KeyMismatch {
                body: quoted(&b),
                path: quoted(p),
            });
        }
        (Some(p), _) => p.to_owned(),
        (None, Some(b)) => b,
        (None, None) => return Err(RequestError::MissingKey),
    };
    validate_key(&key, limits.key_bytes_max)?;
    let value = checked_value(envelope.value.ok_or(RequestError::MissingValue)?, limits)?;
    let ttl_s = envelope.ttl_s.as_ref().map(ttl_of).transpose()?;
    Ok(WriteBody { key, value, ttl_s })
}

/// Checks a value against the depth and size limits and returns it as
/// compact JSON text (the form that is stored and measured).
pub fn checked_value(value: Value, limits: WriteLimits) -> Result<Box<RawValue>, RequestError> {
    let depth = json_depth(&value);
    if depth > VALUE_DEPTH_MAX {
        return Err(RequestError::ValueTooDeep {
            depth,
            depth_max: VALUE_DEPTH_MAX,
        });
    }
    // Serialising a `Value` cannot fail: its keys are strings and its
    // numbers finite. `RawValue::from_string` of serde_json's own output
    // cannot fail either; both are still handled rather than unwrapped.
    let text = serde_json::to_string(&value).map_err(|e| RequestError::NotJson {
        reason: e.to_string(),
    })?;
    if text.len() > limits.value_bytes_max {
        return Err(RequestError::ValueTooLarge {
            len_bytes: text.len(),
            max_bytes: limits.value_bytes_max,
        });
    }
    RawValue::from_string(text).map_err(|e| RequestError::NotJson {
        reason: e.to_string(),
    })
}

/// Name of a JSON type, for error messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The write envelope: `key`, `value` and `ttl_s` at most once each,
/// nothing else.
struct Envelope {
    key: Option<Value>,
    value: Option<Value>,
    ttl_s: Option<Value>,
}

impl<'de> de::Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with fields key, value and (optionally) ttl_s")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut envelope = Envelope {
            key: None,
            value: None,
            ttl_s: None,
        };
        while let Some(name) = map.next_key::<String>()? {
            let slot = match name.as_str() {
                "key" => &mut envelope.key,
                "value" => &mut envelope.value,
                "ttl_s" => &mut envelope.ttl_s,
                other => {
                    return Err(de::Error::custom(format!(
                        "unknown field {:?}; expected key, value and (optionally) ttl_s",
                        quoted(other)
                    )));
                }
            };
            if slot.is_some() {
                return Err(de::Error::custom(format!(
                    "field {name:?} is given more than once"
                )));
            }
            *slot = Some(map.next_value_seed(StrictValue)?);
        }
        Ok(envelope)
    }
}

/// Deserializes any JSON value like `serde_json::Value` does, but refuses
/// an object that repeats a member name.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

/// Elements reserved up front for an array, whatever the input claims.
const PREALLOCATED_ITEMS_MAX: usize = 1024;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // What serde_json's own `Value` does; JSON text has no NaN or infinity.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        StrictValue.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items =
            Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOCATED_ITEMS_MAX));
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                return Err(de::Error::custom(format!(
                    "value has an object that repeats the member {:?}",
                    quoted(&name)
                )));
            }
            let item = map.next_value_seed(StrictValue)?;
            members.insert(name, item);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WriteLimits = WriteLimits {
        key_bytes_max: 16,
        value_bytes_max: 64,
    };

    fn code(body: &str, path: Option<&str>) -> &'static str {
        match parse_write_body(body.as_bytes(), path, LIMITS) {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn write_bodies() {
        let ok = parse_write_body(
            br#"{ "value" : [ 1 , {"b":2,"a":1} ], "key":"k"}"#,
            None,
            LIMITS,
        )
        .unwrap();
        assert_eq!(ok.key, "k");
        assert_eq!(
            ok.value.get(),
            r#"[1,{"a":1,"b":2}]"#,
            "compact, keys sorted"
        );
        let cases = [
            ("", None, "bad_json"),
            ("{", None, "bad_json"),
            ("[1]", None, "bad_json"),
            (r#"{"key":"k","value":1} x"#, None, "bad_json"),
            (r#"{"key":"k","value":1,"other":2}"#, None, "bad_json"),
            (r#"{"key":"a","key":"b","value":1}"#, None, "bad_json"),
            (r#"{"key":"a","value":1,"value":2}"#, None, "bad_json"),
            (r#"{"key":"a","value":{"x":1,"x":2}}"#, None, "bad_json"),
            (
                r#"{"key":"a","value":[{"y":{"x":1,"x":1}}]}"#,
                None,
                "bad_json",
            ),
            (r#"{"key":"a","value":{"x":1,"X":2}}"#, None, "ok"),
            (r#"{"key":"a\ud800","value":1}"#, None, "bad_json"),
            (r#"{"key":1,"value":1}"#, None, "bad_key"),
            (r#"{"key":"","value":1}"#, None, "bad_key"),
            (r#"{"key":"a\u0001","value":1}"#, None, "bad_key"),
            (r#"{"key":"12345678901234567","value":1}"#, None, "bad_key"),
            (r#"{"key":"1234567890123456","value":1}"#, None, "ok"),
            (r#"{"value":1}"#, None, "missing_key"),
            (r#"{"value":1}"#, Some("p"), "ok"),
            (r#"{"key":"q","value":1}"#, Some("p"), "key_mismatch"),
            (r#"{"key":"k"}"#, None, "missing_value"),
            (r#"{"key":"k","value":null}"#, None, "ok"),
            (r#"{"key":"k","value":1,"ttl_s":1}"#, None, "ok"),
            (r#"{"key":"k","value":1,"ttl_s":315360000}"#, None, "ok"),
            (
                r#"{"key":"k","value":1,"ttl_s":315360001}"#,
                None,
                "bad_ttl",
            ),
            (r#"{"key":"k","value":1,"ttl_s":0}"#, None, "bad_ttl"),
            (r#"{"key":"k","value":1,"ttl_s":-5}"#, None, "bad_ttl"),
            (r#"{"key":"k","value":1,"ttl_s":1.5}"#, None, "bad_ttl"),
            (r#"{"key":"k","value":1,"ttl_s":"10"}"#, None, "bad_ttl"),
            (r#"{"key":"k","value":1,"ttl_s":null}"#, None, "bad_ttl"),
            (
                r#"{"key":"k","value":1,"ttl_s":1,"ttl_s":1}"#,
                None,
                "bad_json",
            ),
        ];
        for (body, path, want) in cases {
            assert_eq!(code(body, path), want, "{body}");
        }
        let at_limit = format!(r#"{{"key":"k","value":"{}"}}"#, "x".repeat(62));
        assert_eq!(code(&at_limit, None), "ok");
        let over = format!(r#"{{"key":"k","value":"{}"}}"#, "x".repeat(63));
        assert_eq!(code(&over, None), "value_too_large");
        let roomy = WriteLimits {
            key_bytes_max: 16,
            value_bytes_max: 1000,
        };
        let deep = |n: usize| {
            format!(
                r#"{{"key":"k","value":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(parse_write_body(deep(65).as_bytes(), None, roomy).is_ok());
        let err = parse_write_body(deep(66).as_bytes(), None, roomy).unwrap_err();
        assert_eq!(err.code(), "value_too_deep");
        let hostile = format!(r#"{{"key":"k","value":{}}}"#, "[".repeat(100_000));
        assert_eq!(code(&hostile, None), "bad_json");
        assert_eq!(code("{\"key\":\"\u{ff}\",\"value\":1}", None), "ok");
        assert_eq!(
            parse_write_body(b"{\"key\":\"\xff\",\"value\":1}", None, LIMITS)
                .unwrap_err()
                .code(),
            "bad_json",
            "invalid UTF-8"
        );
    }

    #[test]
    fn ttls() {
        let body = parse_write_body(br#"{"key":"k","value":1,"ttl_s":30}"#, None, LIMITS).unwrap();
        assert_eq!(body.ttl_s, Some(30));
        assert_eq!(parse_ttl("30"), Ok(30));
        assert_eq!(parse_ttl("315360000"), Ok(TTL_S_MAX));
        for bad in [
            "",
            "0",
            "+5",
            "-1",
            "1.0",
            " 5",
            "315360001",
            "99999999999999999999x",
        ] {
            assert_eq!(parse_ttl(bad).unwrap_err().code(), "bad_ttl", "{bad:?}");
        }
        assert_eq!(place_ttl(false, Some(5), None), Ok(Some(5)));
        assert_eq!(place_ttl(false, None, None), Ok(None));
        assert_eq!(place_ttl(true, None, Some("6")), Ok(Some(6)));
        assert_eq!(place_ttl(true, None, None), Ok(None));
        assert_eq!(
            place_ttl(true, None, Some("0")).unwrap_err().code(),
            "bad_ttl"
        );
        for (path_form, body, query) in [
            (false, None, Some("5")),
            (false, Some(5), Some("5")),
            (true, Some(5), None),
            (true, Some(5), Some("5")),
        ] {
            let err = place_ttl(path_form, body, query).unwrap_err();
            assert_eq!(err.code(), "bad_ttl", "{path_form} {body:?} {query:?}");
        }
    }

    #[test]
    fn queries() {
        let q = parse_query("key=a%2Fb+c&consistency=all&&x").unwrap();
        assert_eq!(q["key"], "a/b c");
        assert_eq!(q["consistency"], "all");
        assert_eq!(q["x"], "");
        assert_eq!(parse_query("").unwrap().len(), 0);
        assert_eq!(parse_query("k=100%").unwrap()["k"], "100%");
        assert_eq!(parse_query("k=%zz%4").unwrap()["k"], "%zz%4");
        assert_eq!(parse_query("k=%F0%9F%98%80").unwrap()["k"], "😀");
        assert!(parse_query("key=%FF").is_err(), "not UTF-8");
        assert!(parse_query("%C3=1").is_err(), "name not UTF-8");
        assert!(parse_query("key=a&key=b").is_err(), "given twice");
        let many: Vec<String> = (0..=QUERY_PARAMS_MAX).map(|i| format!("p{i}=1")).collect();
        assert!(parse_query(&many.join("&")).is_err());
        for s in ["a b+c/%?&=😀\u{0}", "", "שלום"] {
            let q = parse_query(&format!("k={}", encode_component(s))).unwrap();
            assert_eq!(q["k"], s);
        }
        assert_eq!(parse_query("key=%FF").unwrap_err().code(), "bad_query");
    }
}
