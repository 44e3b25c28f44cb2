//! The change log of a node's Redis store (`kv:{node}:changes`, a stream
//! the apply script appends to): reading it after a position, waiting for
//! new entries, and its bounds. See `core::watch`.

use redis::aio::ConnectionManager;

use super::StoreError;
use super::redis_store::RedisStore;
use crate::core::watch::{Change, LogPosition};
use crate::keyspace::changes_key;

impl RedisStore {
    /// Up to `count` changes after `after` (`None`: from the oldest kept),
    /// in log order; entries that do not parse are skipped.
    pub(super) async fn changes_after(
        &self,
        after: Option<LogPosition>,
        count: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let mut conn = self.connection();
        let start = after.map_or_else(|| "-".to_owned(), |p| format!("({p}"));
        let raw: redis::Value = redis::cmd("XRANGE")
            .arg(changes_key(self.node()))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut conn)
            .await?;
        Ok(parse_entries(&raw))
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

    /// The newest position in the change log, and the newest position the
    /// log trimmed away (both `None` when there is none).
    pub(super) async fn change_log_bounds(
        &self,
    ) -> Result<(Option<LogPosition>, Option<LogPosition>), StoreError> {
        let mut conn = self.connection();
        let key = changes_key(self.node());
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        if !exists {
            return Ok((None, None));
        }
        let info: redis::Value = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        let field = |name: &str| -> Option<LogPosition> {
            let pairs: Vec<(&redis::Value, &redis::Value)> = match &info {
                redis::Value::Array(flat) => flat
                    .chunks(2)
                    .filter_map(|c| Some((c.first()?, c.get(1)?)))
                    .collect(),
                redis::Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
                _ => Vec::new(),
            };
            pairs
                .into_iter()
                .find_map(|(k, v)| (text(k)? == name).then(|| text(v)?.parse().ok()).flatten())
        };
        let last = field("last-generated-id");
        let deleted = field("max-deleted-entry-id").filter(|p| *p != LogPosition::default());
        Ok((last, deleted))
    }
}

/// A Redis reply as text (bulk or simple string), as the crate converts it.
fn text(v: &redis::Value) -> Option<String> {
    redis::from_redis_value_ref(v).ok()
}

/// Stream entries `[[id, [field, value, ...]], ...]` as changes; an entry
/// without a parsable id, key or version is skipped.
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
            let position = text(parts.first()?)?.parse().ok()?;
            let redis::Value::Array(fields) = parts.get(1)? else {
                return None;
            };
            let (mut key, mut version) = (None, None);
            for pair in fields.chunks(2) {
                match (pair.first().and_then(text).as_deref(), pair.get(1)) {
                    (Some("k"), Some(v)) => key = text(v),
                    (Some("v"), Some(v)) => version = text(v).and_then(|t| t.parse().ok()),
                    _ => {}
                }
            }
            Some(Change {
                position,
                key: key?,
                version: version?,
            })
        })
        .collect()
}
