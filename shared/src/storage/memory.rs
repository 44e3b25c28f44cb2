//! An in-memory store with the same semantics as the Redis one, for tests
//! of pure logic and handlers. Not used by a running node. Its hash tree and
//! tombstone index are computed from the records when asked (the Redis
//! store keeps them current on write); the storage suite checks that both
//! agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::{ScanPage, Space, range_page};
use crate::core::listing::{KeyRange, NodePage};
use crate::core::merkle::{Leaf, Tree, leaf_of};
use crate::core::record::{Record, supersedes};

#[derive(Clone, Default)]
pub struct MemoryStore {
    spaces: Arc<Mutex<BTreeMap<Space, BTreeMap<String, Record>>>>,
    pub(super) plain: Arc<Mutex<BTreeMap<String, String>>>,
}

impl MemoryStore {
    pub(super) async fn apply(&self, space: &Space, records: &[(String, Record)]) -> Vec<bool> {
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

    pub(super) async fn get_many(&self, keys: &[String]) -> Vec<Option<Record>> {
        let spaces = self.spaces.lock().await;
        let map = spaces.get(&Space::Data);
        keys.iter()
            .map(|k| map.and_then(|m| m.get(k)).cloned())
            .collect()
    }

    pub(super) async fn get_hint(&self, owner: &str, key: &str) -> Option<Record> {
        let spaces = self.spaces.lock().await;
        spaces
            .get(&Space::Hints(owner.to_owned()))
            .and_then(|m| m.get(key))
            .cloned()
    }

    pub(super) async fn remove_if_same(&self, space: &Space, records: &[(String, Record)]) -> u64 {
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

    pub(super) async fn range(&self, range: &KeyRange, limit: usize, bytes_max: usize) -> NodePage {
        let spaces = self.spaces.lock().await;
        let empty = BTreeMap::new();
        let map = spaces.get(&Space::Data).unwrap_or(&empty);
        let limit = limit.max(1);
        let mut keys = Vec::new();
        let mut records = Vec::new();
        for (key, record) in map.iter() {
            if range.past(key) {
                break;
            }
            if !range.contains(key) {
                continue;
            }
            keys.push(key.clone());
            records.push(Some(record.clone()));
            if keys.len() == limit {
                break;
            }
        }
        let exhausted = keys.len() < limit;
        range_page(range, keys, exhausted, records, bytes_max)
    }

    pub(super) async fn scan(&self, space: &Space, cursor: u64, count: usize) -> ScanPage {
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

    pub(super) async fn count(&self, space: &Space) -> u64 {
        self.spaces
            .lock()
            .await
            .get(space)
            .map_or(0, |m| m.len() as u64)
    }

    pub(super) async fn tree(&self) -> BTreeMap<u16, Leaf> {
        let spaces = self.spaces.lock().await;
        let mut tree = Tree::default();
        for (key, record) in spaces.get(&Space::Data).into_iter().flatten() {
            tree.add(key, &record.version);
        }
        tree.leaves().clone()
    }

    pub(super) async fn leaf_records(&self, leaves: &[u16]) -> Vec<Vec<(String, Record)>> {
        let spaces = self.spaces.lock().await;
        let mut by_leaf: BTreeMap<u16, Vec<(String, Record)>> = BTreeMap::new();
        for (key, record) in spaces.get(&Space::Data).into_iter().flatten() {
            by_leaf
                .entry(leaf_of(key))
                .or_default()
                .push((key.clone(), record.clone()));
        }
        leaves
            .iter()
            .map(|leaf| by_leaf.get(leaf).cloned().unwrap_or_default())
            .collect()
    }

    pub(super) async fn tombstones(
        &self,
        from: (u64, usize),
        horizon_ms: u64,
        limit: usize,
    ) -> Vec<(String, u64)> {
        let spaces = self.spaces.lock().await;
        let mut all: Vec<(u64, String)> = spaces
            .get(&Space::Data)
            .into_iter()
            .flatten()
            .filter_map(|(k, r)| Some((r.dead_since()?, k.clone())))
            .filter(|(wall, _)| *wall >= from.0 && *wall < horizon_ms)
            .collect();
        all.sort();
        all.into_iter()
            .skip(from.1)
            .take(limit)
            .map(|(wall, key)| (key, wall))
            .collect()
    }

    pub(super) async fn raise(&self, key: &str, value: u64) {
        let mut plain = self.plain.lock().await;
        let slot = plain.entry(key.to_owned()).or_default();
        if slot.parse::<u64>().unwrap_or(0) < value {
            *slot = value.to_string();
        }
    }
}
