//! Local storage of records: Redis in production, memory in tests.
//!
//! A node's records live in one hash per hash-tree leaf (`kv:{node}:d:{leaf}`,
//! see `core::merkle`), so several nodes can share one Redis without mixing
//! their data (the seed's single-`redis1` topology), and one leaf's records
//! are read without scanning the others.
//!
//! A write is one atomic step, a Lua script (see [`scripts`]): for each
//! (key, record) pair it compares versions and stores the record only if it
//! is newer than what is there, and in the same step updates the record's
//! hash-tree leaf, the record count and the tombstone index. Because the
//! decision is last-writer-wins on the version, applying the same record
//! twice, or two records in either order, ends in the same state. Reads and
//! scans skip a record that does not decode (logged and counted in
//! [`Store::corrupt_skipped`]), so one bad record never fails unrelated keys
//! or halts a scan.

mod change_log;
mod memory;
mod redis_store;
mod scripts;

use std::collections::BTreeMap;

use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use thiserror::Error;

use crate::config::Config;
use crate::core::listing::{KeyRange, NodePage};
use crate::core::merkle::Leaf;
use crate::core::record::{DecodeError, Record};
use crate::core::watch::{Change, LogBounds, LogPosition};

pub use self::memory::MemoryStore;
pub use self::redis_store::RedisStore;

/// Storage failures. The caller can only retry later or report unavailability.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("record of key {key:?} is corrupt: {source}")]
    Corrupt { key: String, source: DecodeError },
    #[error("redis returned {got} results for {expected} records")]
    ShortReply { expected: usize, got: usize },
}

/// Which map of a node's records an operation is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// The records this node holds as a replica.
    Data,
    /// Hints: records kept for another node that was down when written.
    Hints(String),
}

/// One page of a scan: the cursor to continue from (0 = done) and records.
#[derive(Debug, Default)]
pub struct ScanPage {
    pub next_cursor: u64,
    pub records: Vec<(String, Record)>,
}

/// The store of one node.
#[derive(Clone)]
pub enum Store {
    Redis(RedisStore),
    Memory(MemoryStore),
}

impl Store {
    /// Applies each record to the node's data if it is newer than the local
    /// one; returns, per record, whether it was stored.
    pub async fn apply(&self, records: &[(String, Record)]) -> Result<Vec<bool>, StoreError> {
        self.apply_in(&Space::Data, records).await
    }

    /// [`Store::apply`] in any space (data or a target's hints).
    pub async fn apply_in(
        &self,
        space: &Space,
        records: &[(String, Record)],
    ) -> Result<Vec<bool>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Redis(s) => s.apply(space, records).await,
            Store::Memory(s) => Ok(s.apply(space, records).await),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.get_many(&[key.to_owned()]).await?.pop().flatten())
    }

    /// The node's records of these keys (`None`: none, or corrupt).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Redis(s) => s.get_many(keys).await,
            Store::Memory(s) => Ok(s.get_many(keys).await),
        }
    }

    /// The hint this node keeps for `owner` under `key`, if any.
    pub async fn get_hint(&self, owner: &str, key: &str) -> Result<Option<Record>, StoreError> {
        match self {
            Store::Redis(s) => s.get_hint(owner, key).await,
            Store::Memory(s) => Ok(s.get_hint(owner, key).await),
        }
    }

    /// Scans the node's data from `cursor` (0 to start). `count` is a hint,
    /// as in Redis `HSCAN`: a page may hold somewhat more or fewer records,
    /// and stops early past [`crate::core::limits::SCAN_PAGE_BYTES_MAX`].
    pub async fn scan(&self, cursor: u64, count: usize) -> Result<ScanPage, StoreError> {
        self.scan_in(&Space::Data, cursor, count).await
    }

    pub async fn scan_in(
        &self,
        space: &Space,
        cursor: u64,
        count: usize,
    ) -> Result<ScanPage, StoreError> {
        match self {
            Store::Redis(s) => s.scan(space, cursor, count).await,
            Store::Memory(s) => Ok(s.scan(space, cursor, count).await),
        }
    }

    /// Up to `limit` of the node's records (tombstones included) in `range`,
    /// in key order, at most about `bytes_max` bytes of them, and how far
    /// the page looked (see [`NodePage`]).
    pub async fn range(
        &self,
        range: &KeyRange,
        limit: usize,
        bytes_max: usize,
    ) -> Result<NodePage, StoreError> {
        match self {
            Store::Redis(s) => s.range(range, limit, bytes_max).await,
            Store::Memory(s) => Ok(s.range(range, limit, bytes_max).await),
        }
    }

    /// Up to `count` changes of the change log after `after` (`None`: from
    /// the oldest kept), and whether more may follow. The memory store keeps
    /// no change log.
    pub async fn changes_after(
        &self,
        after: Option<LogPosition>,
        count: usize,
    ) -> Result<(Vec<Change>, bool), StoreError> {
        match self {
            Store::Redis(s) => s.changes_after(after, count).await,
            Store::Memory(_) => Ok((Vec::new(), false)),
        }
    }

    /// The change log's ends (see [`LogBounds`]).
    pub async fn change_log_bounds(&self) -> Result<LogBounds, StoreError> {
        match self {
            Store::Redis(s) => s.change_log_bounds().await,
            Store::Memory(_) => Ok(LogBounds::default()),
        }
    }

    /// Indexes the keys of records written before the key index existed;
    /// returns how many (0 when it was whole).
    pub async fn ensure_key_index(&self) -> Result<u64, StoreError> {
        match self {
            Store::Redis(s) => s.ensure_key_index().await,
            Store::Memory(_) => Ok(0),
        }
    }

    /// Deletes records that are still exactly as given; returns how many.
    pub async fn remove_if_same(
        &self,
        space: &Space,
        records: &[(String, Record)],
    ) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        match self {
            Store::Redis(s) => s.remove_if_same(space, records).await,
            Store::Memory(s) => Ok(s.remove_if_same(space, records).await),
        }
    }

    /// Number of records held, tombstones included.
    pub async fn record_count(&self) -> Result<u64, StoreError> {
        self.count_in(&Space::Data).await
    }

    pub async fn count_in(&self, space: &Space) -> Result<u64, StoreError> {
        match self {
            Store::Redis(s) => s.count(space).await,
            Store::Memory(s) => Ok(s.count(space).await),
        }
    }

    /// Every non-empty leaf of the hash tree of the node's data.
    pub async fn tree(&self) -> Result<BTreeMap<u16, Leaf>, StoreError> {
        match self {
            Store::Redis(s) => s.tree().await,
            Store::Memory(s) => Ok(s.tree().await),
        }
    }

    /// The records of whole leaves, one list per leaf asked, in order.
    pub async fn leaf_records(
        &self,
        leaves: &[u16],
    ) -> Result<Vec<Vec<(String, Record)>>, StoreError> {
        match self {
            Store::Redis(s) => s.leaf_records(leaves).await,
            Store::Memory(s) => Ok(s.leaf_records(leaves).await),
        }
    }

    /// Up to `limit` tombstones (and expiring values) deleted before
    /// `horizon_ms`, oldest first, starting at `from.0` ms and skipping the
    /// first `from.1` of those: (key, delete time in ms, `Record::dead_since`).
    pub async fn tombstones(
        &self,
        from: (u64, usize),
        horizon_ms: u64,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Store::Redis(s) => s.tombstones(from, horizon_ms, limit).await,
            Store::Memory(s) => Ok(s.tombstones(from, horizon_ms, limit).await),
        }
    }

    /// Sets the number under plain key `key` to `value` unless it is larger.
    pub async fn raise(&self, key: &str, value: u64) -> Result<(), StoreError> {
        match self {
            Store::Redis(s) => s.raise(key, value).await,
            Store::Memory(s) => {
                s.raise(key, value).await;
                Ok(())
            }
        }
    }

    /// Moves the records of an earlier version's single-hash layout into
    /// the leaves; returns how many (0 when there were none).
    pub async fn migrate_legacy(&self) -> Result<u64, StoreError> {
        match self {
            Store::Redis(s) => s.migrate_legacy().await,
            Store::Memory(_) => Ok(0),
        }
    }

    /// Stored records (or tree leaves) skipped because they did not decode,
    /// since this process started.
    pub fn corrupt_skipped(&self) -> u64 {
        match self {
            Store::Redis(s) => s.corrupt_skipped(),
            Store::Memory(_) => 0,
        }
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Redis(s) => s.ping().await,
            Store::Memory(_) => Ok(()),
        }
    }

    /// Writes plain strings under global (not namespaced) keys, such as the
    /// seed's `node_status:node1`. The memory store keeps them in a side map.
    pub async fn set_plain(&self, pairs: &[(String, String)]) -> Result<(), StoreError> {
        match self {
            Store::Redis(s) => {
                let mut conn = s.connection();
                let mut cmd = redis::cmd("MSET");
                for (k, v) in pairs {
                    cmd.arg(k).arg(v);
                }
                cmd.query_async::<()>(&mut conn).await?;
                Ok(())
            }
            Store::Memory(s) => {
                let mut plain = s.plain.lock().await;
                for (k, v) in pairs {
                    plain.insert(k.clone(), v.clone());
                }
                Ok(())
            }
        }
    }

    /// Replaces the hash `key`'s `json` field with `json` only when `rank`
    /// is greater (byte order) than the stored `rank`; whether it did. One
    /// atomic step, so processes of a node never move it back.
    pub async fn replace_if_ranked_higher(
        &self,
        key: &str,
        rank: &str,
        json: &str,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Redis(s) => {
                let mut conn = s.connection();
                let replaced: i64 = redis::Script::new(
                    "local r = redis.call('HGET', KEYS[1], 'rank') \
                     if r and r >= ARGV[1] then return 0 end \
                     redis.call('HSET', KEYS[1], 'rank', ARGV[1], 'json', ARGV[2]) \
                     return 1",
                )
                .key(key)
                .arg(rank)
                .arg(json)
                .invoke_async(&mut conn)
                .await?;
                Ok(replaced == 1)
            }
            Store::Memory(s) => {
                let mut plain = s.plain.lock().await;
                let rank_key = format!("{key}#rank");
                if plain.get(&rank_key).is_some_and(|r| r.as_str() >= rank) {
                    return Ok(false);
                }
                plain.insert(rank_key, rank.to_owned());
                plain.insert(key.to_owned(), json.to_owned());
                Ok(true)
            }
        }
    }

    /// The `json` field of a hash written by [`Store::replace_if_ranked_higher`].
    pub async fn ranked_json(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Redis(s) => {
                let mut conn = s.connection();
                Ok(redis::cmd("HGET")
                    .arg(key)
                    .arg("json")
                    .query_async(&mut conn)
                    .await?)
            }
            Store::Memory(s) => Ok(s.plain.lock().await.get(key).cloned()),
        }
    }

    pub async fn get_plain(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Redis(s) => {
                let mut conn = s.connection();
                Ok(redis::cmd("GET").arg(key).query_async(&mut conn).await?)
            }
            Store::Memory(s) => Ok(s.plain.lock().await.get(key).cloned()),
        }
    }

    /// Adds each delta to its field of the counter hash `key` (HINCRBY).
    pub async fn add_counters(&self, key: &str, deltas: &[(&str, u64)]) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        match self {
            Store::Redis(s) => {
                let mut conn = s.connection();
                let mut pipe = redis::pipe();
                for (field, delta) in deltas {
                    pipe.cmd("HINCRBY")
                        .arg(key)
                        .arg(*field)
                        .arg(*delta)
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn).await?;
                Ok(())
            }
            Store::Memory(s) => {
                let mut plain = s.plain.lock().await;
                for (field, delta) in deltas {
                    let slot = plain.entry(format!("{key}\n{field}")).or_default();
                    let now = slot.parse::<u64>().unwrap_or(0).saturating_add(*delta);
                    *slot = now.to_string();
                }
                Ok(())
            }
        }
    }

    /// The counter hash `key` (HGETALL); fields that are not numbers are skipped.
    pub async fn counters(&self, key: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        match self {
            Store::Redis(s) => {
                let mut conn = s.connection();
                let all: BTreeMap<String, String> = redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await?;
                Ok(all
                    .into_iter()
                    .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
                    .collect())
            }
            Store::Memory(s) => {
                let prefix = format!("{key}\n");
                Ok(s.plain
                    .lock()
                    .await
                    .iter()
                    .filter_map(|(k, v)| {
                        let field = k.strip_prefix(&prefix)?;
                        Some((field.to_owned(), v.parse().ok()?))
                    })
                    .collect())
            }
        }
    }

    pub async fn delete_plain(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Redis(s) => {
                let mut conn = s.connection();
                redis::cmd("DEL")
                    .arg(key)
                    .query_async::<()>(&mut conn)
                    .await?;
                Ok(())
            }
            Store::Memory(s) => {
                s.plain.lock().await.remove(key);
                Ok(())
            }
        }
    }
}

/// One node's page of a range from the keys found in order (`exhausted`:
/// the index held no more in the range's bounds) and their records (`None`
/// for a key whose record is gone or corrupt, skipped). The page stops at
/// the record that reaches `bytes_max`, so it holds at least one record.
fn range_page(
    range: &KeyRange,
    keys: Vec<String>,
    exhausted: bool,
    records: Vec<Option<Record>>,
    bytes_max: usize,
) -> NodePage {
    let mut page = NodePage::default();
    let mut bytes = 0usize;
    let last = keys.last().cloned();
    for (key, record) in keys.into_iter().zip(records) {
        let Some(record) = record else { continue };
        if !range.contains(&key) {
            continue;
        }
        bytes =
            bytes.saturating_add(key.len() + record.value.as_ref().map_or(0, |v| v.get().len()));
        page.records.push((key.clone(), record));
        if bytes >= bytes_max {
            page.scanned_to = Some(key);
            return page;
        }
    }
    if !exhausted {
        page.scanned_to = last;
    }
    page
}

/// Opens a managed, auto-reconnecting Redis connection with explicit
/// timeouts and `TCP_NODELAY`; over TLS for a `rediss://` URL, with the
/// certificates of `KV_REDIS_TLS_*`.
pub async fn connect_redis(cfg: &Config) -> Result<ConnectionManager, redis::RedisError> {
    let info = cfg
        .redis_url
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = if cfg.redis_url.starts_with("rediss://") {
        let certificates = cfg.redis_tls.certificates().map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "TLS settings",
                e.to_string(),
            ))
        })?;
        redis::Client::build_with_tls(info, certificates)?
    } else {
        redis::Client::open(info)?
    };
    let manager_cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.redis_connect_timeout))
        .set_response_timeout(Some(cfg.redis_response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(std::time::Duration::from_millis(500));
    client.get_connection_manager_with_config(manager_cfg).await
}

/// [`connect_redis`] at a process's start: retries, with backoff, until
/// Redis is reachable *and* serves data commands — a Redis restarted with a
/// large append-only file answers `LOADING` for seconds, and a process that
/// gave up then would not start at all. Gives up after `wait`.
pub async fn connect_redis_ready(
    cfg: &Config,
    wait: std::time::Duration,
) -> Result<ConnectionManager, redis::RedisError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut conn = connect_redis(cfg).await?;
            // A data command: refused while the dataset loads (PING is not).
            redis::cmd("EXISTS")
                .arg(crate::keyspace::count_key(&cfg.node_id))
                .query_async::<u64>(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(conn)
        }
        .await;
        match attempt {
            Ok(conn) => return Ok(conn),
            // A wrong setting (a certificate file, say) is not cured by waiting.
            Err(error) if error.kind() == redis::ErrorKind::InvalidClientConfig => {
                return Err(error);
            }
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(redis = %cfg.redis_url_redacted(), %error, "redis not ready yet (unreachable or loading its data); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
            Err(error) => return Err(error),
        }
    }
}
