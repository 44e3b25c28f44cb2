//! Versioned records and their last-writer-wins merge.
//!
//! A record is a JSON value or a tombstone (a delete), stamped with a
//! [`Version`]: the coordinator's HLC timestamp plus its node id, so two
//! coordinators can never produce equal versions for different writes.
//!
//! **Merge laws.** [`merge`] keeps the greater record under one total order:
//! by version, then (only for the impossible case of equal versions with
//! different payloads) tombstone below value, then by the bytes of the value.
//! Taking the maximum of a total order is a join semilattice, so merge is
//!
//! - commutative: `merge(a, b) == merge(b, a)`,
//! - associative: `merge(merge(a, b), c) == merge(a, merge(b, c))`,
//! - idempotent: `merge(a, a) == a`,
//!
//! which is what makes replaying a replication job, a hint or a repair always
//! safe, in any order, any number of times. The property tests below check
//! all three laws.
//!
//! **Expiry.** A value may carry `expires_at` (ms since the Unix epoch),
//! fixed when the coordinator stamps the write (its version's wall time plus
//! the time to live), so every replica holding that version agrees on it.
//! From that moment the record reads as missing ([`Record::is_live_at`]) and
//! counts as a tombstone deleted then ([`Record::dead_since`]): collected
//! like one, by the same two-phase rule. A later write supersedes it as any
//! record; expiry never creates a version of its own, so it cannot shadow a
//! write made after it.
//!
//! **Storage encoding** (used verbatim by the Redis Lua script):
//! `"{wall_ms}:{logical}:{node}\n"` followed by `T` for a tombstone, `V`
//! and the compact JSON text of the value, or `E{expires_at}\n` and the
//! JSON text for a value that expires. The merge order breaks a tie of
//! versions on the bytes after the version line (`T` < `V…`, and `E…`
//! below both), which is what the Lua script compares too.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use thiserror::Error;

use super::hlc::Timestamp;
use super::validate::validate_node_id;

/// The version of a record: HLC timestamp, then coordinator node id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub ts: Timestamp,
    pub node: String,
}

impl Version {
    pub fn new(ts: Timestamp, node: impl Into<String>) -> Self {
        Version {
            ts,
            node: node.into(),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.ts.wall_ms, self.ts.logical, self.node)
    }
}

/// Why a version or record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("version must look like wall_ms:logical:node, got {0:?}")]
    Version(String),
    #[error("stored record is malformed: {0}")]
    Record(&'static str),
    #[error("stored value is not JSON: {0}")]
    Json(String),
}

impl FromStr for Version {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DecodeError::Version(s.chars().take(80).collect());
        let mut parts = s.splitn(3, ':');
        let wall_ms = parts.next().and_then(|p| p.parse::<u64>().ok());
        let logical = parts.next().and_then(|p| p.parse::<u32>().ok());
        let node = parts.next();
        match (wall_ms, logical, node) {
            (Some(wall_ms), Some(logical), Some(node)) if validate_node_id(node).is_ok() => {
                Ok(Version::new(Timestamp::new(wall_ms, logical), node))
            }
            _ => Err(bad()),
        }
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The expiry time of a write stamped at `wall_ms` with a time to live of
/// `ttl_s` seconds, in ms since the Unix epoch.
pub fn expiry_ms(wall_ms: u64, ttl_s: u64) -> u64 {
    wall_ms.saturating_add(ttl_s.saturating_mul(1000))
}

/// A value (compact JSON text) or a tombstone, with its version.
///
/// On the wire a value is `{"version": "...", "value": <json>}` (with
/// `"expires_at": ms` when it expires) and a tombstone
/// `{"version": "...", "deleted": true}`, so a stored JSON `null` is never
/// confused with a delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "RecordWire", into = "RecordWire")]
pub struct Record {
    pub version: Version,
    /// `None` is a tombstone.
    pub value: Option<Box<RawValue>>,
    /// When the value stops being readable (ms since the Unix epoch);
    /// always `None` for a tombstone.
    pub expires_at: Option<u64>,
}

impl Record {
    pub fn value(version: Version, value: Box<RawValue>) -> Self {
        Record {
            version,
            value: Some(value),
            expires_at: None,
        }
    }

    pub fn tombstone(version: Version) -> Self {
        Record {
            version,
            value: None,
            expires_at: None,
        }
    }

    /// A client's write stamped with `version`: a value (expiring `ttl_s`
    /// seconds after the version's wall time when given) or a delete.
    pub fn stamped(version: Version, value: Option<Box<RawValue>>, ttl_s: Option<u64>) -> Self {
        let expires_at = match (&value, ttl_s) {
            (Some(_), Some(ttl_s)) => Some(expiry_ms(version.ts.wall_ms, ttl_s)),
            _ => None,
        };
        Record {
            version,
            value,
            expires_at,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Whether the record holds a value a read at `now_ms` returns: not a
    /// tombstone, and not expired (expiry is inclusive: at `expires_at` the
    /// value is gone).
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.expires_at.is_none_or(|at| now_ms < at)
    }

    /// Since when the key is deleted (ms): a tombstone's wall time, or an
    /// expiring value's `expires_at`; `None` for a value that never expires.
    pub fn dead_since(&self) -> Option<u64> {
        match (&self.value, self.expires_at) {
            (None, _) => Some(self.version.ts.wall_ms),
            (Some(_), at) => at,
        }
    }

    fn payload(&self) -> Option<&str> {
        self.value.as_deref().map(RawValue::get)
    }

    /// Appends the bytes after the version line of the storage encoding.
    fn write_tail(&self, out: &mut String) {
        use std::fmt::Write;
        match (self.payload(), self.expires_at) {
            (None, _) => out.push('T'),
            (Some(json), None) => {
                out.push('V');
                out.push_str(json);
            }
            (Some(json), Some(at)) => {
                // Writing to a String cannot fail.
                let _ = writeln!(out, "E{at}");
                out.push_str(json);
            }
        }
    }

    /// The bytes after the version line (the merge order's tie-break).
    fn tail(&self) -> String {
        let mut out = String::new();
        self.write_tail(&mut out);
        out
    }

    /// The storage encoding described in the module docs, built in one
    /// buffer (it runs for every record stored).
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let payload = self.payload().map_or(0, str::len);
        let mut out = String::with_capacity(self.version.node.len() + payload + 48);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{}", self.version);
        self.write_tail(&mut out);
        out
    }

    pub fn decode(encoded: &str) -> Result<Record, DecodeError> {
        let (version, payload) = encoded
            .split_once('\n')
            .ok_or(DecodeError::Record("no version line"))?;
        let version: Version = version.parse()?;
        let json = |text: &str| {
            RawValue::from_string(text.to_owned()).map_err(|e| DecodeError::Json(e.to_string()))
        };
        match payload.as_bytes().first() {
            Some(b'T') if payload.len() == 1 => Ok(Record::tombstone(version)),
            Some(b'V') => Ok(Record::value(version, json(&payload[1..])?)),
            Some(b'E') => {
                let (at, text) = payload[1..]
                    .split_once('\n')
                    .ok_or(DecodeError::Record("no line after the expiry time"))?;
                let at = at
                    .parse::<u64>()
                    .ok()
                    .filter(|_| at.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(DecodeError::Record("expiry time is not a number"))?;
                Ok(Record {
                    version,
                    value: Some(json(text)?),
                    expires_at: Some(at),
                })
            }
            _ => Err(DecodeError::Record("payload must start with T, V or E")),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordWire {
    version: Version,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_raw"
    )]
    value: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "is_false")]
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A present `value` field is always `Some`, even when it is JSON `null`.
fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl TryFrom<RecordWire> for Record {
    type Error = &'static str;

    fn try_from(wire: RecordWire) -> Result<Self, Self::Error> {
        match (wire.value, wire.deleted, wire.expires_at) {
            (Some(value), false, expires_at) => Ok(Record {
                version: wire.version,
                value: Some(value),
                expires_at,
            }),
            (None, true, None) => Ok(Record::tombstone(wire.version)),
            (None, true, Some(_)) => Err("a deleted record has no expires_at"),
            (Some(_), true, _) => Err("a record is either a value or deleted, not both"),
            (None, false, _) => Err("a record needs a value or deleted: true"),
        }
    }
}

impl From<Record> for RecordWire {
    fn from(record: Record) -> Self {
        let deleted = record.value.is_none();
        RecordWire {
            version: record.version,
            value: record.value,
            deleted,
            expires_at: record.expires_at,
        }
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Record {}

impl PartialOrd for Record {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Record {
    /// The merge order: version first; the encoded tail (kind, expiry,
    /// payload) only breaks exact version ties, byte by byte as Lua does.
    fn cmp(&self, other: &Self) -> Ordering {
        self.version.cmp(&other.version).then_with(|| {
            if self.expires_at == other.expires_at && self.payload() == other.payload() {
                Ordering::Equal
            } else {
                self.tail().cmp(&other.tail())
            }
        })
    }
}

/// Last-writer-wins merge: the greater record under [`Record`]'s order.
pub fn merge(a: Record, b: Record) -> Record {
    if b > a { b } else { a }
}

/// Merges an optional local record with an incoming one and says whether the
/// incoming record wins (and so must be stored).
pub fn supersedes(incoming: &Record, local: Option<&Record>) -> bool {
    match local {
        None => true,
        Some(local) => incoming > local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn version_round_trips_through_text() {
        let v = Version::new(Timestamp::new(1_764_480_000_000, 3), "node-1_a");
        let text = v.to_string();
        assert_eq!(text, "1764480000000:3:node-1_a");
        assert_eq!(text.parse::<Version>().unwrap(), v);
        assert!("1:2".parse::<Version>().is_err());
        assert!("x:2:n".parse::<Version>().is_err());
        assert!("1:2:bad node".parse::<Version>().is_err());
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<Version>(&json).unwrap(), v);
    }

    #[test]
    fn record_encoding_round_trips() {
        let v = Version::new(Timestamp::new(7, 1), "n1");
        let value = Record::value(v.clone(), raw(r#"{"a":[1,"x\ny"]}"#));
        assert_eq!(Record::decode(&value.encode()).unwrap(), value);
        let tomb = Record::tombstone(v.clone());
        assert_eq!(tomb.encode(), "7:1:n1\nT");
        assert_eq!(Record::decode(&tomb.encode()).unwrap(), tomb);
        assert!(Record::decode("7:1:n1").is_err());
        assert!(Record::decode("7:1:n1\nX").is_err());
        assert!(Record::decode("7:1:n1\nV{").is_err());
        assert!(Record::decode("7:1:n1\nTT").is_err());
        let expiring = Record::stamped(v.clone(), Some(raw("[1]")), Some(30));
        assert_eq!(expiring.expires_at, Some(30_007));
        assert_eq!(expiring.encode(), "7:1:n1\nE30007\n[1]");
        assert_eq!(Record::decode(&expiring.encode()).unwrap(), expiring);
        assert!(Record::decode("7:1:n1\nE12").is_err());
        assert!(Record::decode("7:1:n1\nE+12\n1").is_err());
        assert!(Record::decode("7:1:n1\nEx\n1").is_err());
        assert!(Record::decode("7:1:n1\nE1\n{").is_err());
        // A delete never carries an expiry, whatever TTL came with it.
        assert_eq!(Record::stamped(v, None, Some(5)).expires_at, None);
    }

    #[test]
    fn expiry_is_a_deletion_at_expires_at() {
        let v = Version::new(Timestamp::new(1_000, 0), "n1");
        let r = Record::stamped(v.clone(), Some(raw("1")), Some(2));
        assert!(r.is_live_at(2_999));
        assert!(!r.is_live_at(3_000), "gone at the instant it expires");
        assert_eq!(r.dead_since(), Some(3_000));
        let forever = Record::value(v.clone(), raw("1"));
        assert!(forever.is_live_at(u64::MAX));
        assert_eq!(forever.dead_since(), None);
        let tomb = Record::tombstone(v);
        assert!(!tomb.is_live_at(0));
        assert_eq!(tomb.dead_since(), Some(1_000));
        assert_eq!(expiry_ms(u64::MAX - 1, 10), u64::MAX, "saturates");
    }

    #[test]
    fn the_wire_form_carries_the_expiry_and_refuses_it_on_a_delete() {
        let v = Version::new(Timestamp::new(5, 0), "n1");
        let r = Record::stamped(v, Some(raw("\"x\"")), Some(1));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"version":"5:0:n1","value":"x","expires_at":1005}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
        let bad = r#"{"version":"5:0:n1","deleted":true,"expires_at":1}"#;
        assert!(serde_json::from_str::<Record>(bad).is_err());
    }

    #[test]
    fn newer_version_wins_and_delete_wins_when_newer() {
        let old = Record::value(Version::new(Timestamp::new(1, 0), "a"), raw("1"));
        let new = Record::tombstone(Version::new(Timestamp::new(2, 0), "a"));
        assert_eq!(merge(old.clone(), new.clone()), new);
        assert!(supersedes(&new, Some(&old)));
        assert!(!supersedes(&old, Some(&new)));
        assert!(!supersedes(&new, Some(&new)));
        assert!(supersedes(&old, None));
    }

    fn version() -> impl Strategy<Value = Version> {
        (
            0u64..4,
            0u32..3,
            prop_oneof![Just("a"), Just("b"), Just("c")],
        )
            .prop_map(|(w, l, n)| Version::new(Timestamp::new(w, l), n))
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            version(),
            proptest::option::of(prop_oneof![Just("1"), Just("\"x\""), Just("null")]),
            proptest::option::of(prop_oneof![Just(9u64), Just(10), Just(100)]),
        )
            .prop_map(|(v, p, at)| Record {
                version: v,
                expires_at: at.filter(|_| p.is_some()),
                value: p.map(raw),
            })
    }

    /// The Lua script's `newer` (storage/scripts.rs), over encodings: the
    /// two leading numbers numerically, then the rest byte by byte.
    fn lua_order(a: &str, b: &str) -> Ordering {
        let split = |s: &str| {
            let mut parts = s.splitn(3, ':');
            let wall: u64 = parts.next().unwrap().parse().unwrap();
            let logical: u32 = parts.next().unwrap().parse().unwrap();
            (wall, logical, parts.next().unwrap().as_bytes().to_vec())
        };
        split(a).cmp(&split(b))
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in record(), b in record()) {
            prop_assert_eq!(merge(a.clone(), b.clone()).encode(), merge(b, a).encode());
        }

        #[test]
        fn merge_is_associative(a in record(), b in record(), c in record()) {
            let left = merge(merge(a.clone(), b.clone()), c.clone());
            let right = merge(a, merge(b, c));
            prop_assert_eq!(left.encode(), right.encode());
        }

        #[test]
        fn the_merge_order_is_the_lua_scripts_order(a in record(), b in record()) {
            prop_assert_eq!(a.cmp(&b), lua_order(&a.encode(), &b.encode()));
            prop_assert_eq!(Record::decode(&a.encode()).unwrap().encode(), a.encode());
        }

        #[test]
        fn merge_is_idempotent(a in record()) {
            prop_assert_eq!(merge(a.clone(), a.clone()).encode(), a.encode());
        }

        #[test]
        fn any_delivery_order_converges(records in proptest::collection::vec(record(), 1..8)) {
            let forward = records.iter().cloned().reduce(merge).unwrap();
            let backward = records.iter().rev().cloned().reduce(merge).unwrap();
            prop_assert_eq!(forward.encode(), backward.encode());
            // Replaying every record again changes nothing.
            let replayed = records.iter().cloned().fold(forward.clone(), merge);
            prop_assert_eq!(replayed.encode(), forward.encode());
        }
    }
}
