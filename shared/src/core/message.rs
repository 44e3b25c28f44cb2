//! Messages between nodes (`/internal/*`); job payloads are in [`super::jobs`].
//!
//! Plain serde data, no I/O. Every list carries a named bound, checked by the
//! receiver before it does any work.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::merkle::{Leaf, Mid};
use super::record::Record;

/// A record with its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedRecord {
    pub key: String,
    pub record: Record,
}

impl KeyedRecord {
    /// Approximate encoded size: key and value bytes (batch bounds).
    pub fn approx_bytes(&self) -> usize {
        self.key.len() + self.record.value.as_ref().map_or(0, |v| v.get().len())
    }
}

/// `POST /internal/apply`: store these records where newer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The sending node, for logs and clock errors.
    pub from: String,
    pub records: Vec<KeyedRecord>,
    /// Sloppy quorum: the receiver is a fallback and must keep the records
    /// as hints for this owner (not in its own data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint_for: Option<String>,
}

/// Outcome of one record of an apply request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyStatus {
    /// Stored: it was newer than the local copy.
    Stored,
    /// Not stored: the local copy is as new or newer (a replay is harmless).
    Unchanged,
    /// Refused: its version is too far in the future (clock drift limit).
    Refused,
    /// Not stored: the receiver does not hold the key in the topology it
    /// follows (the sender placed it by another epoch's ring, or a queued
    /// job outlived a membership change).
    NotHeld,
}

/// Answer to [`ApplyRequest`], one status per record in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub node: String,
    pub results: Vec<ApplyStatus>,
}

/// `POST /internal/read`: the local records of these keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRequest {
    pub keys: Vec<String>,
}

/// Answer to [`ReadRequest`], one entry per key in order (`None` = never
/// seen). An answer is bounded in bytes
/// ([`crate::core::limits::INTERNAL_ANSWER_BYTES_MAX`]): it may hold fewer
/// entries than keys asked (never none), and the asker asks again for the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadResponse {
    pub node: String,
    pub records: Vec<Option<Record>>,
}

/// `POST /internal/range`: up to `limit` (at most
/// [`crate::core::limits::LIST_LIMIT_MAX`]) of the node's records in a key
/// range, in key order; the answer is a [`crate::core::listing::NodePage`],
/// bounded in bytes by [`crate::core::limits::INTERNAL_ANSWER_BYTES_MAX`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RangeRequest {
    pub range: crate::core::listing::KeyRange,
    pub limit: usize,
}

/// `POST /internal/merkle`: the hash tree of the records shared with
/// `for_node`. Without `mids`: its middle nodes. With `mids` (at most
/// [`crate::core::merkle::MIDS`]): the leaves under those middle nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MerkleRequest {
    pub for_node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mids: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MerkleResponse {
    pub node: String,
    /// Records shared with the asker, in the whole tree.
    pub records: u64,
    #[serde(default)]
    pub mids: BTreeMap<u8, Mid>,
    #[serde(default)]
    pub leaves: BTreeMap<u16, Leaf>,
}

/// `POST /internal/buckets`: the records of some leaves shared with
/// `for_node`, whole leaves at a time, a page bounded in bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketsRequest {
    pub for_node: String,
    /// At most [`crate::core::limits::SYNC_LEAVES_PER_REQUEST_MAX`].
    pub buckets: Vec<u16>,
    /// Index in `buckets` of the first leaf to send (0 to start).
    #[serde(default)]
    pub cursor: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketsResponse {
    pub node: String,
    pub records: Vec<KeyedRecord>,
    /// Index of the next leaf to ask for; 0 when every leaf was sent.
    #[serde(default)]
    pub next_cursor: u64,
}

/// `POST /internal/explain`: what this node holds about one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplainRequest {
    pub key: String,
    /// Whether to look for queued jobs too (they cost a read of the queue).
    #[serde(default = "yes")]
    pub jobs: bool,
}

fn yes() -> bool {
    true
}

/// One node's own view of a key: its record, the hints it keeps for the
/// key (per owner), and the replication jobs on its queue that carry it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LocalView {
    pub node: String,
    pub record: Option<Record>,
    #[serde(default)]
    pub hints: Vec<HintView>,
    #[serde(default)]
    pub jobs: Vec<JobView>,
    /// Queued jobs looked at (the newest, bounded); more may be queued.
    #[serde(default)]
    pub jobs_checked: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HintView {
    pub owner: String,
    pub record: Record,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub target: String,
    pub record: Record,
    pub attempt: u32,
    /// `ready` (in the queue's active list) or `scheduled` (in its
    /// scheduled set: a retry, or a job the queue has not yet moved to the
    /// active list).
    pub state: String,
}

/// `POST /internal/collect`: remove these tombstones where they are still
/// exactly as given (the second phase of tombstone collection).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectRequest {
    pub records: Vec<KeyedRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectResponse {
    pub node: String,
    pub removed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hlc::Timestamp;
    use crate::core::record::Version;
    use serde_json::value::RawValue;

    #[test]
    fn a_json_null_value_is_not_a_tombstone_on_the_wire() {
        let v = Version::new(Timestamp::new(1, 0), "n1");
        let null_value = Record::value(v.clone(), RawValue::from_string("null".into()).unwrap());
        let tomb = Record::tombstone(v);
        let request = ApplyRequest {
            hint_for: None,
            from: "n1".into(),
            records: vec![
                KeyedRecord {
                    key: "a".into(),
                    record: null_value.clone(),
                },
                KeyedRecord {
                    key: "b".into(),
                    record: tomb.clone(),
                },
            ],
        };
        let json = serde_json::to_string(&request).unwrap();
        let back: ApplyRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.records[0].record, null_value);
        assert!(!back.records[0].record.is_tombstone());
        assert_eq!(back.records[1].record, tomb);
        assert!(back.records[1].record.is_tombstone());
    }

    #[test]
    fn malformed_records_are_rejected() {
        for bad in [
            r#"{"version":"1:0:n1"}"#,
            r#"{"version":"1:0:n1","value":1,"deleted":true}"#,
            r#"{"version":"bad","value":1}"#,
        ] {
            assert!(serde_json::from_str::<Record>(bad).is_err(), "{bad}");
        }
    }
}
