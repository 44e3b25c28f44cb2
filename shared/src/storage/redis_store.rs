//! The Redis store: a node's records in one hash per hash-tree leaf
//! (`kv:{node}:d:{leaf}`), the leaves themselves (`kv:{node}:tree`), the
//! record count and the tombstone index, all kept by the Lua scripts of
//! [`super::scripts`] in one atomic step per call. Hints are one plain hash
//! per owner.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};
use tracing::{info, warn};

use super::scripts;
use super::{ScanPage, Space, StoreError, range_page};
use crate::core::limits::SCAN_PAGE_BYTES_MAX;
use crate::core::listing::{KeyRange, NodePage};
use crate::core::merkle::{LEAVES, Leaf, leaf_field, leaf_of, parse_leaf_field, record_digest};
use crate::core::record::Record;
use crate::keyspace::{
    changes_key, changes_seq_key, count_key, data_leaf_key, data_leaf_prefix, hints_key,
    key_index_key, leaves_key, legacy_data_key, tombstones_key, tree_key,
};

/// Leaves read per Redis round trip when whole leaves are fetched.
const LEAVES_PER_ROUND_TRIP: usize = 64;
/// Hash-tree fields asked per `HSCAN` when the tree is read (see
/// [`RedisStore::tree`]): about a millisecond of Redis time each.
const TREE_FIELDS_PER_SCAN: usize = 2048;
/// Records moved per step when legacy data is migrated at start.
const MIGRATE_BATCH_LEN: usize = 1000;
/// Bits of a scan cursor that hold the position inside one leaf's hash.
const INNER_CURSOR_BITS: u32 = 48;

/// Records of one node in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    node: String,
    apply_data: Arc<Script>,
    remove_data: Arc<Script>,
    apply_plain: Arc<Script>,
    remove_plain: Arc<Script>,
    scan_data: Arc<Script>,
    raise: Arc<Script>,
    corrupt: Arc<AtomicU64>,
    /// Entries the change log keeps (0: no change log).
    change_log_len: u64,
}

impl RedisStore {
    pub fn new(conn: ConnectionManager, node_id: &str) -> Self {
        RedisStore {
            conn,
            node: node_id.to_owned(),
            apply_data: Arc::new(Script::new(&scripts::apply_data())),
            remove_data: Arc::new(Script::new(&scripts::remove_data())),
            apply_plain: Arc::new(Script::new(&scripts::apply_plain())),
            remove_plain: Arc::new(Script::new(scripts::REMOVE_PLAIN)),
            scan_data: Arc::new(Script::new(scripts::SCAN_DATA)),
            raise: Arc::new(Script::new(scripts::RAISE)),
            corrupt: Arc::new(AtomicU64::new(0)),
            change_log_len: 0,
        }
    }

    /// Keeps a change log of about `len` entries (0: none), for watchers.
    pub fn with_change_log(mut self, len: u64) -> Self {
        self.change_log_len = len;
        self
    }

    /// The node whose records these are.
    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// The underlying connection, for adapters that share it (queues, status).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub(super) fn corrupt_skipped(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// Decodes a stored record; a corrupt one is logged, counted and skipped.
    fn decode(&self, key: &str, encoded: &str) -> Option<Record> {
        match Record::decode(encoded) {
            Ok(record) => Some(record),
            Err(error) => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                warn!(node = %self.node, %key, %error, "skipping a corrupt stored record");
                None
            }
        }
    }

    fn decode_pairs(&self, flat: Vec<String>) -> Vec<(String, Record)> {
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(key), Some(encoded)) = (it.next(), it.next()) {
            if let Some(record) = self.decode(&key, &encoded) {
                out.push((key, record));
            }
        }
        out
    }

    pub(super) async fn apply(
        &self,
        space: &Space,
        records: &[(String, Record)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.conn.clone();
        let stored: Vec<i64> = match space {
            Space::Data => self.data_call(&self.apply_data, records),
            Space::Hints(owner) => self.plain_call(&self.apply_plain, owner, records),
        }
        .invoke_async(&mut conn)
        .await?;
        if stored.len() != records.len() {
            return Err(StoreError::ShortReply {
                expected: records.len(),
                got: stored.len(),
            });
        }
        Ok(stored.into_iter().map(|s| s == 1).collect())
    }

    pub(super) async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<Record>>, StoreError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGET")
                .arg(data_leaf_key(&self.node, leaf_of(key)))
                .arg(key);
        }
        let mut conn = self.conn.clone();
        let raw: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        if raw.len() != keys.len() {
            return Err(StoreError::ShortReply {
                expected: keys.len(),
                got: raw.len(),
            });
        }
        Ok(keys
            .iter()
            .zip(raw)
            .map(|(key, encoded)| encoded.and_then(|e| self.decode(key, &e)))
            .collect())
    }

    pub(super) async fn get_hint(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<Record>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(hints_key(&self.node, owner))
            .arg(key)
            .query_async(&mut conn)
            .await?;
        Ok(raw.and_then(|e| self.decode(key, &e)))
    }

    pub(super) async fn scan(
        &self,
        space: &Space,
        cursor: u64,
        count: usize,
    ) -> Result<ScanPage, StoreError> {
        let mut conn = self.conn.clone();
        match space {
            Space::Data => {
                let leaf = cursor >> INNER_CURSOR_BITS;
                let inner = cursor & ((1 << INNER_CURSOR_BITS) - 1);
                let (next_leaf, next_inner, flat): (u64, u64, Vec<String>) = self
                    .scan_data
                    .key(leaves_key(&self.node))
                    .arg(data_leaf_prefix(&self.node))
                    .arg(leaf)
                    .arg(inner)
                    .arg(count.max(1))
                    .arg(SCAN_PAGE_BYTES_MAX)
                    .invoke_async(&mut conn)
                    .await?;
                let next_cursor = if next_leaf >= LEAVES as u64 {
                    0
                } else {
                    (next_leaf << INNER_CURSOR_BITS) | (next_inner & ((1 << INNER_CURSOR_BITS) - 1))
                };
                Ok(ScanPage {
                    next_cursor,
                    records: self.decode_pairs(flat),
                })
            }
            Space::Hints(owner) => {
                let (next_cursor, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
                    .arg(hints_key(&self.node, owner))
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(count.max(1))
                    .query_async(&mut conn)
                    .await?;
                Ok(ScanPage {
                    next_cursor,
                    records: self.decode_pairs(flat),
                })
            }
        }
    }

    pub(super) async fn count(&self, space: &Space) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        Ok(match space {
            Space::Data => {
                let n: Option<i64> = redis::cmd("GET")
                    .arg(count_key(&self.node))
                    .query_async(&mut conn)
                    .await?;
                u64::try_from(n.unwrap_or(0)).unwrap_or(0)
            }
            Space::Hints(owner) => {
                redis::cmd("HLEN")
                    .arg(hints_key(&self.node, owner))
                    .query_async(&mut conn)
                    .await?
            }
        })
    }

    pub(super) async fn remove_if_same(
        &self,
        space: &Space,
        records: &[(String, Record)],
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        Ok(match space {
            Space::Data => self.data_call(&self.remove_data, records),
            Space::Hints(owner) => self.plain_call(&self.remove_plain, owner, records),
        }
        .invoke_async(&mut conn)
        .await?)
    }

    /// One call of a data script (apply or remove, see `scripts`): the
    /// node's tree, count, tombstone index, leaf set and key index, then each record's
    /// leaf hash as keys; each record's key, encoding and leaf as arguments.
    fn data_call<'a>(
        &self,
        script: &'a Script,
        records: &[(String, Record)],
    ) -> ScriptInvocation<'a> {
        let mut call = script.key(tree_key(&self.node));
        call.key(count_key(&self.node))
            .key(tombstones_key(&self.node))
            .key(leaves_key(&self.node))
            .key(key_index_key(&self.node))
            .key(changes_key(&self.node))
            .key(changes_seq_key(&self.node));
        call.arg(self.change_log_len);
        for (key, record) in records {
            let leaf = leaf_of(key);
            call.key(data_leaf_key(&self.node, leaf))
                .arg(key)
                .arg(record.encode())
                .arg(leaf_field(leaf))
                .arg(record_digest(key, &record.version));
        }
        call
    }

    /// One call of a plain-hash script over the hints kept for `owner`.
    fn plain_call<'a>(
        &self,
        script: &'a Script,
        owner: &str,
        records: &[(String, Record)],
    ) -> ScriptInvocation<'a> {
        let mut call = script.key(hints_key(&self.node, owner));
        for (key, record) in records {
            call.arg(key).arg(record.encode());
        }
        call
    }

    /// Every non-empty leaf of the node's hash tree.
    /// The hash tree's non-empty leaves, read in [`TREE_FIELDS_PER_SCAN`]
    /// pieces: one `HGETALL` of up to 65,536 fields held Redis for 11-36 ms
    /// at 100,000 records (its slow log), stalling every client request of
    /// the node once per anti-entropy exchange. A leaf written between two
    /// pieces may be read in its older or newer state, as a leaf written
    /// just after a whole read would be: anti-entropy then fetches that
    /// leaf's records and finds nothing to do.
    pub(super) async fn tree(&self) -> Result<BTreeMap<u16, Leaf>, StoreError> {
        let mut conn = self.conn.clone();
        let mut out = BTreeMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, raw): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(tree_key(&self.node))
                .arg(cursor)
                .arg("COUNT")
                .arg(TREE_FIELDS_PER_SCAN)
                .query_async(&mut conn)
                .await?;
            for (field, text) in raw {
                match (parse_leaf_field(&field), Leaf::parse(&text)) {
                    (Some(leaf), Some(value)) => {
                        out.insert(leaf, value);
                    }
                    _ => {
                        self.corrupt.fetch_add(1, Ordering::Relaxed);
                        warn!(node = %self.node, %field, "skipping a corrupt hash-tree leaf");
                    }
                }
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// The records of whole leaves, one list per leaf asked.
    pub(super) async fn leaf_records(
        &self,
        leaves: &[u16],
    ) -> Result<Vec<Vec<(String, Record)>>, StoreError> {
        let mut out = Vec::with_capacity(leaves.len());
        let mut conn = self.conn.clone();
        for group in leaves.chunks(LEAVES_PER_ROUND_TRIP) {
            let mut pipe = redis::pipe();
            for leaf in group {
                pipe.cmd("HGETALL").arg(data_leaf_key(&self.node, *leaf));
            }
            let raw: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
            out.extend(raw.into_iter().map(|flat| self.decode_pairs(flat)));
        }
        Ok(out)
    }

    /// Up to `limit` tombstones deleted before `horizon_ms`, oldest first,
    /// from `from.0` ms on, skipping the first `from.1` of them: (key,
    /// delete wall time).
    pub(super) async fn tombstones(
        &self,
        from: (u64, usize),
        horizon_ms: u64,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(tombstones_key(&self.node))
            .arg(from.0)
            .arg(format!("({horizon_ms}"))
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(from.1)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        // Scores are whole milliseconds below 2^53: exact in a double.
        Ok(raw
            .into_iter()
            .map(|(key, score)| (key, score.max(0.0) as u64))
            .collect())
    }

    pub(super) async fn raise(&self, key: &str, value: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.raise
            .key(key)
            .arg(value)
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// Moves records from the single hash of earlier versions into the
    /// leaves (newer-wins, so it can be interrupted and run again); returns
    /// how many were moved.
    pub(super) async fn migrate_legacy(&self) -> Result<u64, StoreError> {
        let legacy = legacy_data_key(&self.node);
        let mut moved = 0u64;
        loop {
            let mut conn = self.conn.clone();
            let (_, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
                .arg(&legacy)
                .arg(0)
                .arg("COUNT")
                .arg(MIGRATE_BATCH_LEN)
                .query_async(&mut conn)
                .await?;
            if flat.is_empty() {
                break;
            }
            let fields: Vec<String> = flat.iter().step_by(2).cloned().collect();
            let records = self.decode_pairs(flat);
            self.apply(&Space::Data, &records).await?;
            redis::cmd("HDEL")
                .arg(&legacy)
                .arg(&fields)
                .query_async::<()>(&mut conn)
                .await?;
            moved += fields.len() as u64;
            if moved % 100_000 < fields.len() as u64 {
                info!(node = %self.node, moved, "moving records into the leaf layout");
            }
        }
        Ok(moved)
    }

    /// Up to `limit` of the node's records in `range`, in key order, from
    /// the key index (see [`range_page`] for the bounds).
    pub(super) async fn range(
        &self,
        range: &KeyRange,
        limit: usize,
        bytes_max: usize,
    ) -> Result<NodePage, StoreError> {
        let min = match range.lower() {
            None => "-".to_owned(),
            Some(lower) if lower.inclusive => format!("[{}", lower.key),
            Some(lower) => format!("({}", lower.key),
        };
        let max = range
            .end
            .as_deref()
            .map_or_else(|| "+".to_owned(), |end| format!("({end}"));
        let mut conn = self.conn.clone();
        let keys: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(key_index_key(&self.node))
            .arg(min)
            .arg(max)
            .arg("LIMIT")
            .arg(0)
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await?;
        let found = keys.len();
        let keys: Vec<String> = keys.into_iter().take_while(|k| !range.past(k)).collect();
        // Fewer than asked, or one past the range's end: nothing more there.
        let exhausted = found < limit.max(1) || keys.len() < found;
        let records = if keys.is_empty() {
            Vec::new()
        } else {
            self.get_many(&keys).await?
        };
        Ok(range_page(range, keys, exhausted, records, bytes_max))
    }

    /// Adds to the key index every key it lacks, when it holds fewer keys
    /// than the node has records (data written before the index existed);
    /// returns how many keys were indexed (0 when the index was whole).
    pub(super) async fn ensure_key_index(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let indexed: u64 = redis::cmd("ZCARD")
            .arg(key_index_key(&self.node))
            .query_async(&mut conn)
            .await?;
        if indexed >= self.count(&Space::Data).await? {
            return Ok(0);
        }
        let mut cursor = 0;
        let mut added = 0u64;
        loop {
            let page = self.scan(&Space::Data, cursor, MIGRATE_BATCH_LEN).await?;
            if !page.records.is_empty() {
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(key_index_key(&self.node));
                for (key, _) in &page.records {
                    cmd.arg(0).arg(key);
                }
                added += cmd.query_async::<u64>(&mut conn).await?;
            }
            if page.next_cursor == 0 {
                break;
            }
            cursor = page.next_cursor;
        }
        Ok(added)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }
}
