//! Local storage of records: Redis in production, memory in tests.
//!
//! Both keep one map `key -> encoded record` per node. In Redis that map is
//! the hash `kv:{node}:data`, so several nodes can share one Redis without
//! mixing their data (the seed's single-`redis1` topology).
//!
//! A write is one atomic step, the Lua script [`APPLY_SCRIPT`]: for each
//! (key, record) pair it compares versions and stores the record only if it
//! is newer than what is there, and reports which ones it stored. Because the
//! decision is last-writer-wins on the version, applying the same record twice,
//! or two records in either order, ends in the same state.

use std::collections::BTreeMap;
use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{IntoConnectionInfo, Script};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::core::record::{DecodeError, Record, supersedes};

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

/// Lua: apply records if newer. KEYS[1] = data hash; ARGV = key1, rec1, key2, rec2, ...
/// Returns one integer per pair: 1 stored, 0 unchanged (local copy is as new or newer).
///
/// Versions are compared numerically on `wall_ms` and `logical`, then byte by
/// byte on the rest (`node\npayload`), which is exactly the order of
/// `Record::cmp` in Rust. Redis' Lua `<` on strings uses the locale's
/// collation, hence the explicit byte loop. Only the two numbers are
/// captured: the rest is compared in place, not copied out of the record
/// (it is needed only when both numbers tie).
pub const APPLY_SCRIPT: &str = r#"
local function rest_gt(a, i, b, j)
  local na, nb = #a - i + 1, #b - j + 1
  for k = 0, math.min(na, nb) - 1 do
    local x, y = string.byte(a, i + k), string.byte(b, j + k)
    if x ~= y then return x > y end
  end
  return na > nb
end
local function newer(a, b)
  if a == b then return false end
  local wa, la, ra = string.match(a, "^(%d+):(%d+):()")
  local wb, lb, rb = string.match(b, "^(%d+):(%d+):()")
  if not wb then return true end
  if not wa then return false end
  wa, la, wb, lb = tonumber(wa), tonumber(la), tonumber(wb), tonumber(lb)
  if wa ~= wb then return wa > wb end
  if la ~= lb then return la > lb end
  return rest_gt(a, ra, b, rb)
end
local out = {}
for i = 1, #ARGV, 2 do
  local key, rec = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[1], key)
  if (not cur) or newer(rec, cur) then
    redis.call('HSET', KEYS[1], key, rec)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#;

/// Lua: delete records only if they are still exactly what the caller saw.
/// KEYS[1] = hash; ARGV = key1, rec1, key2, rec2, ... Returns how many were deleted.
/// Used to drop delivered hints and collected tombstones without losing a
/// newer record written meanwhile.
pub const REMOVE_IF_SAME_SCRIPT: &str = r#"
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
"#;

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

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Redis(s) => s.get_many(keys).await,
            Store::Memory(s) => Ok(s.get_many(keys).await),
        }
    }

    /// Scans the node's data from `cursor` (0 to start). `count` is a hint,
    /// as in Redis `HSCAN`: a page may hold somewhat more or fewer records.
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
            Store::Memory(s) => Ok(s
                .spaces
                .lock()
                .await
                .get(space)
                .map_or(0, |m| m.len() as u64)),
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
                let mut conn = s.conn.clone();
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

    pub async fn get_plain(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Redis(s) => {
                let mut conn = s.conn.clone();
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
                let mut conn = s.conn.clone();
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
                let mut conn = s.conn.clone();
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
                let mut conn = s.conn.clone();
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

/// Records in one Redis hash per node.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    node: String,
    script: Arc<Script>,
    remove_script: Arc<Script>,
}

pub use crate::keyspace::{data_key, hints_key};

/// Opens a managed, auto-reconnecting Redis connection with explicit
/// timeouts and `TCP_NODELAY`.
pub async fn connect_redis(cfg: &Config) -> Result<ConnectionManager, redis::RedisError> {
    let info = cfg
        .redis_url
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info)?;
    let manager_cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.redis_connect_timeout))
        .set_response_timeout(Some(cfg.redis_response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(std::time::Duration::from_millis(500));
    client.get_connection_manager_with_config(manager_cfg).await
}

impl RedisStore {
    pub fn new(conn: ConnectionManager, node_id: &str) -> Self {
        RedisStore {
            conn,
            node: node_id.to_owned(),
            script: Arc::new(Script::new(APPLY_SCRIPT)),
            remove_script: Arc::new(Script::new(REMOVE_IF_SAME_SCRIPT)),
        }
    }

    fn hash(&self, space: &Space) -> String {
        match space {
            Space::Data => data_key(&self.node),
            Space::Hints(target) => hints_key(&self.node, target),
        }
    }

    /// The underlying connection, for adapters that share it (queues, status).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn apply(
        &self,
        space: &Space,
        records: &[(String, Record)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut invocation = self.script.key(self.hash(space));
        for (key, record) in records {
            invocation.arg(key).arg(record.encode());
        }
        let mut conn = self.conn.clone();
        let stored: Vec<i64> = invocation.invoke_async(&mut conn).await?;
        if stored.len() != records.len() {
            return Err(StoreError::ShortReply {
                expected: records.len(),
                got: stored.len(),
            });
        }
        Ok(stored.into_iter().map(|s| s == 1).collect())
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(data_key(&self.node))
            .arg(keys)
            .query_async(&mut conn)
            .await?;
        if raw.len() != keys.len() {
            return Err(StoreError::ShortReply {
                expected: keys.len(),
                got: raw.len(),
            });
        }
        keys.iter()
            .zip(raw)
            .map(|(key, encoded)| decode_opt(key, encoded))
            .collect()
    }

    async fn scan(&self, space: &Space, cursor: u64, count: usize) -> Result<ScanPage, StoreError> {
        let mut conn = self.conn.clone();
        let (next_cursor, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
            .arg(self.hash(space))
            .arg(cursor)
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut conn)
            .await?;
        let mut records = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(key), Some(encoded)) = (it.next(), it.next()) {
            let record = Record::decode(&encoded).map_err(|source| StoreError::Corrupt {
                key: key.clone(),
                source,
            })?;
            records.push((key, record));
        }
        Ok(ScanPage {
            next_cursor,
            records,
        })
    }

    async fn count(&self, space: &Space) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HLEN")
            .arg(self.hash(space))
            .query_async(&mut conn)
            .await?)
    }

    async fn remove_if_same(
        &self,
        space: &Space,
        records: &[(String, Record)],
    ) -> Result<u64, StoreError> {
        let mut invocation = self.remove_script.key(self.hash(space));
        for (key, record) in records {
            invocation.arg(key).arg(record.encode());
        }
        let mut conn = self.conn.clone();
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

fn decode_opt(key: &str, encoded: Option<String>) -> Result<Option<Record>, StoreError> {
    encoded
        .map(|e| {
            Record::decode(&e).map_err(|source| StoreError::Corrupt {
                key: key.to_owned(),
                source,
            })
        })
        .transpose()
}

/// An in-memory store with the same semantics, for tests of pure logic and
/// handlers. Not used by a running node.
#[derive(Clone, Default)]
pub struct MemoryStore {
    spaces: Arc<Mutex<BTreeMap<Space, BTreeMap<String, Record>>>>,
    plain: Arc<Mutex<BTreeMap<String, String>>>,
}

impl MemoryStore {
    async fn apply(&self, space: &Space, records: &[(String, Record)]) -> Vec<bool> {
        let mut spaces = self.spaces.lock().await;
        let map = spaces.entry(space.clone()).or_default();
        records
            .iter()
            .map(|(key, record)| {
                let stored = supersedes(record, map.get(key));
                if stored {
                    map.insert(key.clone(), record.clone());
                }
                stored
            })
            .collect()
    }

    async fn get_many(&self, keys: &[String]) -> Vec<Option<Record>> {
        let spaces = self.spaces.lock().await;
        let map = spaces.get(&Space::Data);
        keys.iter()
            .map(|k| map.and_then(|m| m.get(k)).cloned())
            .collect()
    }

    async fn remove_if_same(&self, space: &Space, records: &[(String, Record)]) -> u64 {
        let mut spaces = self.spaces.lock().await;
        let Some(map) = spaces.get_mut(space) else {
            return 0;
        };
        let mut removed = 0;
        for (key, record) in records {
            if map.get(key).is_some_and(|r| r.encode() == record.encode()) {
                map.remove(key);
                removed += 1;
            }
        }
        removed
    }

    async fn scan(&self, space: &Space, cursor: u64, count: usize) -> ScanPage {
        let spaces = self.spaces.lock().await;
        let empty = BTreeMap::new();
        let map = spaces.get(space).unwrap_or(&empty);
        let start = usize::try_from(cursor).unwrap_or(usize::MAX);
        let records: Vec<(String, Record)> = map
            .iter()
            .skip(start)
            .take(count.max(1))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let end = start.saturating_add(records.len());
        let next_cursor = if end >= map.len() { 0 } else { end as u64 };
        ScanPage {
            next_cursor,
            records,
        }
    }
}
