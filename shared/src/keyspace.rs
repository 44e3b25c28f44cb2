//! Every Redis key the store uses, in one place.
//!
//! Keys are namespaced by node id (`kv:{node}:…`), so several nodes may share
//! one Redis without mixing data; `node_status:{node}` keeps the seed's name
//! (`GET node_status:node1` → `up`).

use crate::core::merkle::leaf_field;

/// Hash of a node's records of one hash-tree leaf (key → encoded record):
/// the data is split by leaf (`core::merkle::leaf_of`), so one leaf's
/// records are read without scanning the others.
pub fn data_leaf_key(node: &str, leaf: u16) -> String {
    format!("{}{}", data_leaf_prefix(node), leaf_field(leaf))
}

/// What every [`data_leaf_key`] of a node starts with.
pub fn data_leaf_prefix(node: &str) -> String {
    format!("kv:{node}:d:")
}

/// Hash of a node's hash-tree leaves (leaf as 4 hex digits → `count:digest`),
/// kept current by every write in the same atomic step.
pub fn tree_key(node: &str) -> String {
    format!("kv:{node}:tree")
}

/// Sorted set of a node's non-empty leaves (member: the leaf's 4 hex
/// digits, score: its number), so a scan skips empty leaves at no cost.
pub fn leaves_key(node: &str) -> String {
    format!("kv:{node}:leaves")
}

/// Sorted set of every key a node holds a record of (tombstones
/// included), all scored 0 so the members are in byte order: a listing
/// reads a range of it (`ZRANGEBYLEX`) instead of scanning the leaves.
pub fn key_index_key(node: &str) -> String {
    format!("kv:{node}:keys")
}

/// Stream of the changes a node stored (keys and versions, in apply order;
/// each entry holds the changes of one apply call), trimmed to about
/// `KV_WATCH_LOG_LEN` changes: what `GET /kv/watch/` sends and resumes from.
pub fn changes_key(node: &str) -> String {
    format!("kv:{node}:changes")
}

/// How many changes the change log has numbered so far: the number of the
/// newest change, which is the id of the log's newest entry.
pub fn changes_seq_key(node: &str) -> String {
    format!("kv:{node}:changes:seq")
}

/// How many records a node holds (kept by every write and removal).
pub fn count_key(node: &str) -> String {
    format!("kv:{node}:count")
}

/// Sorted set of a node's tombstones (key, scored by the delete's wall time
/// in ms): tombstone collection takes the oldest without a scan.
pub fn tombstones_key(node: &str) -> String {
    format!("kv:{node}:tombs")
}

/// Where the next tombstone-collection round resumes (`score:key`).
pub fn gc_cursor_key(node: &str) -> String {
    format!("kv:{node}:gc:cursor")
}

/// The highest clock reading this node issued or observed, persisted so
/// its clock resumes above it after a restart.
pub fn clock_key(node: &str) -> String {
    format!("kv:{node}:hlc")
}

/// The single hash of records used before the data was split by leaf; a
/// node moves what it finds there into the leaves at start.
pub fn legacy_data_key(node: &str) -> String {
    format!("kv:{node}:data")
}

/// Hash of the hints `node` keeps for `owner`.
pub fn hints_key(node: &str, owner: &str) -> String {
    format!("kv:{node}:hints:{owner}")
}

/// When `node` started keeping hints for `owner` (ms), for the hint window.
pub fn hint_since_key(node: &str, owner: &str) -> String {
    format!("kv:{node}:hints:{owner}:since")
}

/// A node's apalis queue of one kind.
pub fn queue_name(node: &str, kind: &str) -> String {
    format!("kv:{node}:q:{kind}")
}

/// List of a node's dead letters.
pub fn dead_key(node: &str) -> String {
    format!("kv:{node}:dead")
}

/// Hash of a node's job counters (delivered, retried, dead, lag, mail).
pub fn job_stats_key(node: &str) -> String {
    format!("kv:{node}:jobstats")
}

/// Hash of a node's work counters, summed over all its processes (API and
/// workers), so `/metrics` and `/cluster/` show work done anywhere.
pub fn counters_key(node: &str) -> String {
    format!("kv:{node}:counters")
}

/// Marker that a mail job was sent (deduplication of re-deliveries).
pub fn mail_sent_key(node: &str, id: &str) -> String {
    format!("kv:{node}:mail:sent:{id}")
}

/// Mails sent in one minute, for the rate bound.
pub fn mail_window_key(node: &str, minute: u64) -> String {
    format!("kv:{node}:mail:window:{minute}")
}

/// List of the keys summed up in the next digest mail.
pub fn mail_digest_key(node: &str) -> String {
    format!("kv:{node}:mail:digest")
}

/// How many writes the next digest mail sums up.
pub fn mail_digest_count_key(node: &str) -> String {
    format!("kv:{node}:mail:digest_count")
}

/// Lease of a periodic task, so two runs of one task never overlap.
pub fn lease_key(node: &str, task: &str) -> String {
    format!("kv:{node}:lease:{task}")
}

/// The status of `node` as the heartbeat saw it, as in the seed.
pub fn status_key(node: &str) -> String {
    format!("node_status:{node}")
}

/// When the heartbeat last checked `node` (ms).
pub fn status_checked_key(node: &str) -> String {
    format!("node_status:{node}:checked_ms")
}

/// When the heartbeat last found `node` up (ms).
pub fn status_last_seen_key(node: &str) -> String {
    format!("node_status:{node}:last_seen_ms")
}

/// The newest cluster topology a node has seen (JSON of
/// `core::topology::Topology`), with its rank (`{epoch:020}:{digest:016x}`)
/// beside it: a hash with fields `rank` and `json`, replaced only by a
/// higher rank, so it survives restarts and never goes back.
pub fn topology_key(node: &str) -> String {
    format!("kv:{node}:topology")
}
