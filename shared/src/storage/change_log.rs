//! The change log of a node's Redis store (`kv:{node}:changes`, a stream
//! the apply script appends to): reading it after a position, waiting for
//! new entries, and its bounds. See `core::watch`.
//!
//! An entry holds the changes of one apply call (at most
//! `scripts::CHANGE_LOG_ENTRY_LEN_MAX`), and its id is the position of its
//! last change, so a read from "entries after position p" (`(p`) starts
//! with the entry holding the change after p; [`page_after`] drops the
//! changes of that entry at or before p.

use redis::aio::ConnectionManager;

use super::StoreError;
use super::redis_store::RedisStore;
use crate::core::record::Version;
use crate::core::watch::{Change, LogBounds, LogPosition, entry_changes, page_after};
use crate::keyspace::changes_key;

impl RedisStore {
    /// Up to `count` changes after `after` (`None`: from the oldest kept),
    /// in log order, and whether more may follow; entries that do not parse
    /// are skipped. Reads at most `count` entries.
    pub(super) async fn changes_after(
        &self,
        after: Option<LogPosition>,
        count: usize,
    ) -> Result<(Vec<Change>, bool), StoreError> {
        let mut conn = self.connection();
        let start = after.map_or_else(|| "-".to_owned(), |p| format!("({p}"));
        let count = count.max(1);
        let raw: redis::Value = redis::cmd("XRANGE")
            .arg(changes_key(self.node()))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        let entries = match &raw {
            redis::Value::Array(entries) => entries.len(),
            _ => 0,
        };
        Ok(page_after(
            parse_entries(&raw),
            after,
            count,
            entries >= count,
        ))
    }

    /// Waits up to `block_ms` for changes after `after` on `conn` (a
    /// connection of its own: the call blocks it), at most `count`.
    pub async fn wait_changes(
        conn: &mut ConnectionManager,
        node: &str,
        after: LogPosition,
        block_ms: u64,
        count: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let raw: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(changes_key(node))
            .arg(after.to_string())
            .query_async(conn)
            .await?;
        // {stream: [entries]} (RESP2: [[stream, [entries]]]), or nil on timeout.
        let entries = match &raw {
            redis::Value::Array(streams) => streams
                .iter()
                .filter_map(|s| match s {
                    redis::Value::Array(pair) => pair.get(1),
                    _ => None,
                })
                .flat_map(parse_entries)
                .collect(),
            redis::Value::Map(streams) => {
                streams.iter().flat_map(|(_, e)| parse_entries(e)).collect()
            }
            _ => Vec::new(),
        };
        Ok(entries)
    }

    /// The change log's newest change, its oldest change still held, and
    /// whether it ever dropped an entry (`XINFO STREAM`: fewer entries held
    /// than added; a server that does not report `entries-added`, before
    /// Redis 7, counts as trimmed).
    pub(super) async fn change_log_bounds(&self) -> Result<LogBounds, StoreError> {
        let mut conn = self.connection();
        let key = changes_key(self.node());
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        if !exists {
            return Ok(LogBounds::default());
        }
        let info: redis::Value = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        let pairs: Vec<(&redis::Value, &redis::Value)> = match &info {
            redis::Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|c| Some((c.first()?, c.get(1)?)))
                .collect(),
            redis::Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
            _ => Vec::new(),
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find_map(|(k, v)| (text(k).as_deref() == Some(name)).then_some(*v))
        };
        let number = |name: &str| -> Option<u64> { text(field(name)?)?.parse().ok() };
        let newest = field("last-generated-id")
            .and_then(text)
            .and_then(|t| t.parse().ok())
            .filter(|p: &LogPosition| *p != LogPosition::default());
        let first_kept = field("first-entry").and_then(|entry| {
            parse_entries(&redis::Value::Array(vec![entry.clone()]))
                .first()
                .map(|c| c.position)
        });
        let trimmed = match (number("entries-added"), number("length")) {
            (Some(added), Some(length)) => added > length,
            _ => true,
        };
        Ok(LogBounds {
            newest,
            first_kept,
            trimmed,
        })
    }
}

/// A Redis reply as text (bulk or simple string), as the crate converts it.
fn text(v: &redis::Value) -> Option<String> {
    redis::from_redis_value_ref(v).ok()
}

/// Stream entries `[[id, [k, key, v, version, k, ...]], ...]` as changes,
/// each at its position (see [`entry_changes`]); an entry without a
/// parsable id, or with a key or version that does not parse, is skipped
/// whole (its changes' positions depend on how many it holds).
fn parse_entries(raw: &redis::Value) -> Vec<Change> {
    let redis::Value::Array(entries) = raw else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let redis::Value::Array(parts) = entry else {
                return None;
            };
            let id: LogPosition = text(parts.first()?)?.parse().ok()?;
            let redis::Value::Array(fields) = parts.get(1)? else {
                return None;
            };
            let mut pairs: Vec<(String, Version)> = Vec::with_capacity(fields.len() / 4);
            let mut key = None;
            for pair in fields.chunks(2) {
                match (pair.first().and_then(text).as_deref(), pair.get(1)) {
                    (Some("k"), Some(v)) => key = Some(text(v)?),
                    (Some("v"), Some(v)) => {
                        let version = text(v)?.parse().ok()?;
                        pairs.push((key.take()?, version));
                    }
                    _ => return None,
                }
            }
            (!pairs.is_empty() && key.is_none()).then(|| entry_changes(id, pairs))
        })
        .flatten()
        .collect()
}
