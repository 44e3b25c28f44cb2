//! A property-based fuzzer for everything a node decodes from outside:
//! client query strings and write bodies (`core::request`), messages between
//! nodes (`core::message`), background job payloads read through
//! `Lenient<T>`, and the storage encoding of records.
//!
//! Three kinds of input: arbitrary bytes; near-valid JSON (a valid message
//! with a few bytes cut, inserted, replaced or repeated, and soups of JSON
//! tokens with the right field names); and valid values, which must
//! round-trip exactly. The first two must never panic.
//!
//! Cases per property default to a few hundred; `PROPTEST_CASES=100000`
//! turns this into a longer fuzzing run.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use shared::core::hlc::Timestamp;
use shared::core::jobs::{DeadLetter, Lenient, PeriodicJob, PeriodicTask, ReplicateJob};
use shared::core::limits::{QUERY_PARAMS_MAX, VALUE_DEPTH_MAX};
use shared::core::mail::{MailJob, MailKind};
use shared::core::merkle::{Leaf, Mid};
use shared::core::message::{
    ApplyRequest, ApplyResponse, ApplyStatus, BucketsRequest, BucketsResponse, CollectRequest,
    CollectResponse, KeyedRecord, MerkleRequest, MerkleResponse, ReadRequest, ReadResponse,
};
use shared::core::record::{Record, Version};
use shared::core::request::{WriteLimits, encode_component, parse_query, parse_write_body};
use shared::core::validate::{json_depth, validate_key};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

const LIMITS: WriteLimits = WriteLimits {
    key_bytes_max: 64,
    value_bytes_max: 4096,
};

// ---- strategies ------------------------------------------------------

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..600)
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z😀שא\\\\\"/ ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A key the store accepts: no control characters, within the byte limit.
fn valid_key() -> impl Strategy<Value = String> {
    any::<String>().prop_filter_map("a valid key", |s| {
        let k: String = s.chars().filter(|c| !c.is_control()).collect();
        let mut k = k;
        while k.len() > LIMITS.key_bytes_max {
            k.pop();
        }
        validate_key(&k, LIMITS.key_bytes_max).ok().map(|()| k)
    })
}

fn node_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

fn version() -> impl Strategy<Value = Version> {
    (any::<u64>(), any::<u32>(), node_id())
        .prop_map(|(wall, logical, node)| Version::new(Timestamp::new(wall, logical), node))
}

fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(serde_json::to_string(value).unwrap()).unwrap()
}

fn record() -> impl Strategy<Value = Record> {
    (version(), prop::option::of(json_value())).prop_map(|(v, value)| match value {
        Some(value) => Record::value(v, raw(&value)),
        None => Record::tombstone(v),
    })
}

fn keyed_record() -> impl Strategy<Value = KeyedRecord> {
    (any::<String>(), record()).prop_map(|(key, record)| KeyedRecord { key, record })
}

fn records() -> impl Strategy<Value = Vec<KeyedRecord>> {
    prop::collection::vec(keyed_record(), 0..5)
}

fn leaves() -> impl Strategy<Value = BTreeMap<u16, Leaf>> {
    prop::collection::btree_map(
        any::<u16>(),
        (any::<u64>(), any::<u64>()).prop_map(|(count, digest)| Leaf { count, digest }),
        0..8,
    )
}

fn mids() -> impl Strategy<Value = BTreeMap<u8, Mid>> {
    prop::collection::btree_map(
        any::<u8>(),
        (any::<u64>(), any::<u64>()).prop_map(|(count, hash)| Mid { count, hash }),
        0..8,
    )
}

fn mail_job() -> impl Strategy<Value = MailJob> {
    let kind = prop_oneof![
        (
            any::<String>(),
            prop::option::of(any::<String>()),
            any::<String>()
        )
            .prop_map(|(key, preview, version)| MailKind::Write {
                key,
                preview,
                version
            }),
        (any::<u64>(), prop::collection::vec(any::<String>(), 0..4))
            .prop_map(|(count, keys)| MailKind::Digest { count, keys }),
        (any::<String>(), any::<String>())
            .prop_map(|(about, status)| MailKind::Alert { about, status }),
    ];
    (any::<String>(), node_id(), any::<u64>(), kind, any::<u32>()).prop_map(
        |(id, node, time_ms, kind, attempt)| MailJob {
            id,
            node,
            time_ms,
            kind,
            attempt,
        },
    )
}

fn replicate_job() -> impl Strategy<Value = ReplicateJob> {
    (node_id(), records(), any::<u32>(), any::<u64>()).prop_map(
        |(target, records, attempt, created_ms)| ReplicateJob {
            target,
            records,
            attempt,
            created_ms,
        },
    )
}

/// One edit of a valid text.
#[derive(Debug, Clone)]
enum Edit {
    Truncate(usize),
    Insert(usize, u8),
    Delete(usize),
    Replace(usize, u8),
    /// Repeat the bytes `[from, from + len)` right after themselves.
    Repeat(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let interesting = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]:,\"\\0123456789-+.eEtfn \x00\xff".to_vec()),
    ];
    let edit = prop_oneof![
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), interesting.clone()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), interesting).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ];
    prop::collection::vec(edit, 1..4)
}

fn apply_edits(mut text: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = text.len();
        let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *edit {
            Edit::Truncate(i) => text.truncate(at(i)),
            Edit::Insert(i, b) => text.insert(at(i), b),
            Edit::Delete(i) if len > 0 => {
                text.remove(i % len);
            }
            Edit::Replace(i, b) if len > 0 => text[i % len] = b,
            Edit::Repeat(i, n) if len > 0 => {
                let from = i % len;
                let to = (from + n).min(len);
                let piece = text[from..to].to_vec();
                text.splice(to..to, piece);
            }
            _ => {}
        }
    }
    text
}

/// Streams of JSON tokens using the field names our messages have: mostly
/// not JSON, often almost.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"key\"",
        "\"value\"",
        "\"version\"",
        "\"deleted\"",
        "\"records\"",
        "\"record\"",
        "\"from\"",
        "\"hint_for\"",
        "\"keys\"",
        "\"node\"",
        "\"for_node\"",
        "\"buckets\"",
        "\"cursor\"",
        "\"target\"",
        "\"attempt\"",
        "\"created_ms\"",
        "\"scheduled_ms\"",
        "\"kind\"",
        "\"write\"",
        "\"id\"",
        "\"time_ms\"",
        "\"1:0:n1\"",
        "\"99999999999999999999:0:n\"",
        "\"\\ud800\"",
        "\"\\u0000\"",
        "0",
        "-1",
        "1e999",
        "18446744073709551616",
        "1.5",
        "true",
        "false",
        "null",
        "\"x\"",
        " ",
    ]);
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat().into_bytes())
}

// ---- helpers ---------------------------------------------------------

/// Decoding `bytes` as `T`, directly and through `Lenient<T>`, never
/// panics; and `Lenient` accepts every valid JSON document.
fn decode_all_ways<T: DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = serde_json::from_slice::<T>(bytes);
    let lenient = serde_json::from_slice::<Lenient<T>>(bytes);
    if serde_json::from_slice::<Value>(bytes).is_ok() {
        prop_assert!(lenient.is_ok(), "Lenient refused valid JSON");
    }
    Ok(())
}

fn decode_every_message(bytes: &[u8]) -> Result<(), TestCaseError> {
    decode_all_ways::<ApplyRequest>(bytes)?;
    decode_all_ways::<ApplyResponse>(bytes)?;
    decode_all_ways::<ReadRequest>(bytes)?;
    decode_all_ways::<ReadResponse>(bytes)?;
    decode_all_ways::<CollectRequest>(bytes)?;
    decode_all_ways::<CollectResponse>(bytes)?;
    decode_all_ways::<MerkleRequest>(bytes)?;
    decode_all_ways::<MerkleResponse>(bytes)?;
    decode_all_ways::<BucketsRequest>(bytes)?;
    decode_all_ways::<BucketsResponse>(bytes)?;
    decode_all_ways::<PeriodicJob>(bytes)?;
    decode_all_ways::<ReplicateJob>(bytes)?;
    decode_all_ways::<MailJob>(bytes)?;
    decode_all_ways::<DeadLetter>(bytes)?;
    decode_all_ways::<Record>(bytes)?;
    decode_all_ways::<KeyedRecord>(bytes)?;
    decode_all_ways::<Version>(bytes)?;
    Ok(())
}

/// Checks what a successful write parse promises.
fn check_write(bytes: &[u8], path_key: Option<&str>) -> Result<(), TestCaseError> {
    if let Ok(w) = parse_write_body(bytes, path_key, LIMITS) {
        prop_assert!(validate_key(&w.key, LIMITS.key_bytes_max).is_ok());
        if let Some(p) = path_key {
            prop_assert_eq!(&w.key, p);
        }
        prop_assert!(w.value.get().len() <= LIMITS.value_bytes_max);
        let value: Value = serde_json::from_str(w.value.get()).expect("stored value is JSON");
        prop_assert!(json_depth(&value) <= VALUE_DEPTH_MAX);
        prop_assert_eq!(
            serde_json::to_string(&value).unwrap(),
            w.value.get(),
            "compact"
        );
    }
    Ok(())
}

/// `value` serialised to JSON, decoded back as `T` and through `Lenient<T>`:
/// the same bytes again.
fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> Result<(), TestCaseError> {
    let text = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&text).expect("round trip");
    prop_assert_eq!(serde_json::to_string(&back).unwrap(), text.clone());
    match serde_json::from_str::<Lenient<T>>(&text).unwrap() {
        Lenient::Valid(job) => prop_assert_eq!(serde_json::to_string(&job).unwrap(), text),
        Lenient::Invalid(v) => prop_assert!(false, "valid payload read as invalid: {v}"),
    }
    Ok(())
}

// ---- properties ------------------------------------------------------

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in bytes()) {
        check_write(&bytes, None)?;
        check_write(&bytes, Some("k"))?;
        decode_every_message(&bytes)?;
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = parse_query(text);
            let _ = Record::decode(text);
            let _ = text.parse::<Version>();
        }
    }

    #[test]
    fn token_soups_never_panic(bytes in token_soup()) {
        check_write(&bytes, None)?;
        decode_every_message(&bytes)?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Ok(q) = parse_query(&text) {
            prop_assert!(q.len() <= QUERY_PARAMS_MAX);
        }
        let _ = Record::decode(&text);
        let _ = text.parse::<Version>();
        check_write(text.as_bytes(), None)?;
    }
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn near_valid_write_bodies_never_panic(
        key in valid_key(),
        value in json_value(),
        edits in edits(),
    ) {
        let body = serde_json::to_vec(&serde_json::json!({"key": key, "value": value})).unwrap();
        check_write(&apply_edits(body, &edits), None)?;
        let body = serde_json::to_vec(&serde_json::json!({"value": value})).unwrap();
        check_write(&apply_edits(body, &edits), Some(&key))?;
    }

    #[test]
    fn valid_write_bodies_round_trip(key in valid_key(), value in json_value()) {
        let body = serde_json::to_vec(&serde_json::json!({"key": key, "value": value})).unwrap();
        let text = serde_json::to_string(&value).unwrap();
        match parse_write_body(&body, None, LIMITS) {
            Ok(w) => {
                prop_assert_eq!(&w.key, &key);
                prop_assert_eq!(w.value.get(), text.as_str());
                let back: Value = serde_json::from_str(w.value.get()).unwrap();
                prop_assert_eq!(&back, &value);
            }
            Err(e) => {
                // Only the value's own limits may refuse a valid body.
                let too_big = text.len() > LIMITS.value_bytes_max;
                let too_deep = json_depth(&value) > VALUE_DEPTH_MAX;
                prop_assert!(too_big || too_deep, "refused: {e}");
            }
        }
        // Path form: same value, key from the path.
        let body = serde_json::to_vec(&serde_json::json!({"value": value})).unwrap();
        if let Ok(w) = parse_write_body(&body, Some(&key), LIMITS) {
            prop_assert_eq!(&w.key, &key);
            prop_assert_eq!(w.value.get(), text.as_str());
        }
    }

    #[test]
    fn a_repeated_member_is_always_refused(
        key in valid_key(),
        members in prop::collection::btree_map("[a-z]{1,3}", json_value(), 1..4),
        twice in any::<prop::sample::Index>(),
        outer in any::<bool>(),
    ) {
        // {"a": .., "b": .., "a": ..} built by hand: a map cannot hold it.
        let names: Vec<&String> = members.keys().collect();
        let again = names[twice.index(names.len())];
        let mut object: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
            .collect();
        object.push(format!("{}:null", serde_json::to_string(again).unwrap()));
        let object = format!("{{{}}}", object.join(","));
        let value = if outer { format!("[1,{{\"in\":{object}}}]") } else { object };
        let body = format!(r#"{{"key":{},"value":{value}}}"#, serde_json::to_string(&key).unwrap());
        let err = parse_write_body(body.as_bytes(), None, LIMITS).unwrap_err();
        prop_assert_eq!(err.code(), "bad_json");
        let body = format!(r#"{{"key":{k},"key":{k},"value":1}}"#, k = serde_json::to_string(&key).unwrap());
        prop_assert_eq!(parse_write_body(body.as_bytes(), None, LIMITS).unwrap_err().code(), "bad_json");
    }

    #[test]
    fn queries_round_trip(params in prop::collection::btree_map(any::<String>(), any::<String>(), 0..8)) {
        let params: BTreeMap<String, String> =
            params.into_iter().filter(|(k, _)| !k.is_empty()).collect();
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
            .collect();
        prop_assert_eq!(parse_query(&query.join("&")).unwrap(), params);
    }

    #[test]
    fn near_valid_messages_never_panic(job in replicate_job(), mail in mail_job(), edits in edits()) {
        let apply = ApplyRequest { from: job.target.clone(), records: job.records.clone(), hint_for: None };
        for text in [
            serde_json::to_vec(&job).unwrap(),
            serde_json::to_vec(&mail).unwrap(),
            serde_json::to_vec(&apply).unwrap(),
        ] {
            decode_every_message(&apply_edits(text, &edits))?;
        }
    }

    #[test]
    fn valid_messages_round_trip(
        records in records(),
        record in record(),
        job in replicate_job(),
        mail in mail_job(),
        leaves in leaves(),
        mids in mids(),
        asked in prop::option::of(prop::collection::vec(any::<u8>(), 0..5)),
        node in node_id(),
        hint_for in prop::option::of(node_id()),
        keys in prop::collection::vec(any::<String>(), 0..5),
        buckets in prop::collection::vec(any::<u16>(), 0..5),
        cursor in any::<u64>(),
        stamp in any::<u64>(),
    ) {
        round_trip(&ApplyRequest { from: node.clone(), records: records.clone(), hint_for })?;
        round_trip(&ApplyResponse {
            node: node.clone(),
            results: vec![ApplyStatus::Stored, ApplyStatus::Unchanged, ApplyStatus::Refused],
        })?;
        round_trip(&ReadRequest { keys: keys.clone() })?;
        round_trip(&ReadResponse { node: node.clone(), records: vec![Some(record.clone()), None] })?;
        round_trip(&CollectRequest { records: records.clone() })?;
        round_trip(&CollectResponse { node: node.clone(), removed: cursor })?;
        round_trip(&MerkleRequest { for_node: node.clone(), mids: asked })?;
        let merkle = MerkleResponse { node: node.clone(), records: stamp, mids: mids.clone(), leaves: leaves.clone() };
        round_trip(&merkle)?;
        round_trip(&BucketsRequest { for_node: node.clone(), buckets, cursor })?;
        round_trip(&BucketsResponse { node: node.clone(), records, next_cursor: cursor })?;
        for task in PeriodicTask::ALL {
            round_trip(&PeriodicJob { task, scheduled_ms: stamp })?;
        }
        round_trip(&job)?;
        round_trip(&mail)?;
        round_trip(&record)?;
        round_trip(&record.version)?;
        // Typed equality where the types have it.
        let text = serde_json::to_string(&job).unwrap();
        prop_assert_eq!(serde_json::from_str::<ReplicateJob>(&text).unwrap(), job);
        let text = serde_json::to_string(&mail).unwrap();
        prop_assert_eq!(serde_json::from_str::<MailJob>(&text).unwrap(), mail);
        let text = serde_json::to_string(&merkle).unwrap();
        let back = serde_json::from_str::<MerkleResponse>(&text).unwrap();
        prop_assert_eq!(back.mids, mids);
        prop_assert_eq!(back.leaves, leaves);
        // The storage encoding round-trips too.
        prop_assert_eq!(Record::decode(&record.encode()).unwrap(), record.clone());
        prop_assert_eq!(record.version.to_string().parse::<Version>().unwrap(), record.version);
    }

    #[test]
    fn a_wrong_job_is_invalid_not_an_error(value in json_value()) {
        // Any JSON at all decodes as a job or as Invalid: a worker never
        // stalls on a payload it cannot read.
        let text = serde_json::to_string(&value).unwrap();
        let job = serde_json::from_str::<Lenient<ReplicateJob>>(&text);
        prop_assert!(job.is_ok());
        if serde_json::from_str::<ReplicateJob>(&text).is_err() {
            prop_assert!(matches!(job.unwrap(), Lenient::Invalid(_)));
        }
    }
}
