//! One storage test suite, run against a real Redis and the in-memory store:
//! both must behave the same.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;

use kv_tests::{Cluster, Options};
use serde_json::value::RawValue;
use shared::config::Config;
use shared::core::hlc::Timestamp;
use shared::core::listing::KeyRange;
use shared::core::merkle::{Tree, leaf_of};
use shared::core::record::{Record, Version};
use shared::storage::{MemoryStore, RedisStore, Space, Store, connect_redis};

fn rec(wall: u64, logical: u32, node: &str, json: Option<&str>) -> Record {
    let version = Version::new(Timestamp::new(wall, logical), node);
    match json {
        Some(j) => Record::value(version, RawValue::from_string(j.to_owned()).unwrap()),
        None => Record::tombstone(version),
    }
}

async fn suite(store: Store) {
    // Missing key.
    assert_eq!(store.get("a").await.unwrap(), None);

    // First write is stored; replaying it changes nothing.
    let a1 = rec(10, 0, "n1", Some(r#"{"v":1}"#));
    assert_eq!(
        store.apply(&[("a".into(), a1.clone())]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        store.apply(&[("a".into(), a1.clone())]).await.unwrap(),
        vec![false]
    );
    assert_eq!(store.get("a").await.unwrap(), Some(a1.clone()));

    // Older loses, newer wins, by wall time, then logical, then node id.
    let older = rec(9, 5, "n9", Some("0"));
    let newer_logical = rec(10, 1, "n0", Some("2"));
    let newer_node = rec(10, 1, "n1", Some("3"));
    let newer_node_longer = rec(10, 1, "n1-b", Some("4"));
    assert_eq!(
        store.apply(&[("a".into(), older)]).await.unwrap(),
        vec![false]
    );
    assert_eq!(
        store.apply(&[("a".into(), newer_logical)]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        store
            .apply(&[("a".into(), newer_node.clone())])
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        store
            .apply(&[("a".into(), newer_node_longer.clone())])
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        store.apply(&[("a".into(), newer_node)]).await.unwrap(),
        vec![false]
    );
    assert_eq!(store.get("a").await.unwrap(), Some(newer_node_longer));

    // An exact version tie is broken by the payload, as `Record::cmp` does:
    // a tombstone below any value, values byte by byte.
    let tie = |payload| rec(30, 2, "n1", payload);
    for (incoming, stored) in [
        (tie(Some("1")), true),
        (tie(None), false),
        (tie(Some("2")), true),
        (tie(Some("10")), false),
        (tie(Some("1")), false),
    ] {
        assert_eq!(
            store.apply(&[("tie".into(), incoming)]).await.unwrap(),
            vec![stored]
        );
    }
    assert_eq!(store.get("tie").await.unwrap(), Some(tie(Some("2"))));

    // Numeric, not textual, comparison of wall time (9 < 10 < 100).
    assert_eq!(
        store
            .apply(&[("n".into(), rec(100, 0, "x", Some("1")))])
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        store
            .apply(&[("n".into(), rec(99, 0, "x", Some("2")))])
            .await
            .unwrap(),
        vec![false]
    );

    // Tombstones are records too: a newer delete wins, an older value cannot resurrect.
    let tomb = rec(20, 0, "n2", None);
    assert_eq!(
        store.apply(&[("a".into(), tomb.clone())]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        store
            .apply(&[("a".into(), rec(19, 0, "n3", Some("9")))])
            .await
            .unwrap(),
        vec![false]
    );
    assert_eq!(store.get("a").await.unwrap(), Some(tomb));

    // JSON null is a value, distinct from a tombstone.
    let null = rec(1, 0, "n1", Some("null"));
    store.apply(&[("null".into(), null.clone())]).await.unwrap();
    assert!(!store.get("null").await.unwrap().unwrap().is_tombstone());

    // Batches: per-record outcomes, in order.
    let batch: Vec<(String, Record)> = (0..600)
        .map(|i| (format!("k{i}"), rec(5, 0, "n1", Some(&i.to_string()))))
        .chain([("n".to_owned(), rec(1, 0, "x", Some("\"old\"")))])
        .collect();
    let out = store.apply(&batch).await.unwrap();
    assert_eq!(out.len(), 601);
    assert!(out[..600].iter().all(|s| *s) && !out[600]);

    let many = store
        .get_many(&["k1".into(), "missing".into(), "k599".into()])
        .await
        .unwrap();
    assert_eq!(many[0].as_ref().unwrap().value.as_ref().unwrap().get(), "1");
    assert!(many[1].is_none());
    assert_eq!(
        many[2].as_ref().unwrap().value.as_ref().unwrap().get(),
        "599"
    );

    // Scanning returns every record, page by page (duplicates allowed, as in HSCAN).
    let mut seen = HashMap::new();
    let mut cursor = 0;
    let mut pages = 0;
    loop {
        let page = store.scan(cursor, 7).await.unwrap();
        pages += 1;
        for (k, r) in page.records {
            seen.insert(k, r);
        }
        if page.next_cursor == 0 {
            break;
        }
        cursor = page.next_cursor;
        assert!(pages < 1_000, "scan does not end");
    }
    assert_eq!(seen.len() as u64, store.record_count().await.unwrap());
    assert_eq!(seen.len(), 604);
    assert!(
        pages > 1,
        "604 records in pages of ~7 need several pages (Redis answers small listpack hashes, up to 512 entries, in one page)"
    );

    // Plain keys (node_status:*) live outside the namespaced data.
    store
        .set_plain(&[("node_status:n1".to_owned(), "up".to_owned())])
        .await
        .unwrap();
    assert_eq!(
        store.get_plain("node_status:n1").await.unwrap().as_deref(),
        Some("up")
    );
    assert_eq!(store.record_count().await.unwrap(), 604);

    // Hints live in their own space per owner, with the same merge rules.
    let hints = Space::Hints("n9".to_owned());
    let h1 = rec(50, 0, "n1", Some("1"));
    assert_eq!(
        store
            .apply_in(&hints, &[("h".into(), h1.clone())])
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(store.count_in(&hints).await.unwrap(), 1);
    assert_eq!(
        store.record_count().await.unwrap(),
        604,
        "hints are not data"
    );
    // Remove-if-same: a newer hint written meanwhile is not removed.
    let h2 = rec(51, 0, "n1", Some("2"));
    store
        .apply_in(&hints, &[("h".into(), h2.clone())])
        .await
        .unwrap();
    assert_eq!(
        store
            .remove_if_same(&hints, &[("h".into(), h1)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .remove_if_same(&hints, &[("h".into(), h2)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.count_in(&hints).await.unwrap(), 0);
    let page = store.scan_in(&hints, 0, 10).await.unwrap();
    assert!(page.records.is_empty() && page.next_cursor == 0);

    // A large batch with repeated keys: the pairs are decided in order, each
    // against the newest record so far, as if applied one after the other.
    let mut big: Vec<(String, Record)> = (0..2100)
        .map(|i| (format!("big{i}"), rec(7, 0, "n1", Some("1"))))
        .collect();
    big.push(("big5".into(), rec(6, 0, "n1", Some("2"))));
    big.push(("big1500".into(), rec(8, 0, "n1", Some("3"))));
    big.push(("big1500".into(), rec(8, 0, "n0", Some("4"))));
    let out = store.apply(&big).await.unwrap();
    assert_eq!(out.len(), 2103);
    assert!(out[..2100].iter().all(|s| *s));
    assert_eq!(out[2100..], [false, true, false]);
    assert_eq!(
        store.get("big5").await.unwrap(),
        Some(rec(7, 0, "n1", Some("1")))
    );
    assert_eq!(
        store.get("big1500").await.unwrap(),
        Some(rec(8, 0, "n1", Some("3")))
    );
    assert_eq!(
        store
            .get("big2099")
            .await
            .unwrap()
            .map(|r| r.version.ts.wall_ms),
        Some(7)
    );
}

/// Every record of the node's data, by a full scan.
async fn scan_all(store: &Store) -> HashMap<String, Record> {
    let mut seen = HashMap::new();
    let mut cursor = 0;
    loop {
        let page = store.scan(cursor, 100).await.unwrap();
        seen.extend(page.records);
        if page.next_cursor == 0 {
            return seen;
        }
        cursor = page.next_cursor;
    }
}

/// Every record in `range`, page after page of 7.
async fn range_all(store: &Store, range: &KeyRange) -> Vec<(String, Record)> {
    let mut out = Vec::new();
    let mut page_range = range.clone();
    loop {
        let page = store.range(&page_range, 7, usize::MAX).await.unwrap();
        assert!(page.records.len() <= 7);
        out.extend(page.records);
        match page.scanned_to {
            None => return out,
            Some(after) => page_range = range.resumed_after(after),
        }
    }
}

/// What the store keeps beside the records — the hash tree, the count and
/// the tombstone index — agrees with the records themselves.
async fn check_derived(store: &Store) {
    let all = scan_all(store).await;
    let mut expected = Tree::default();
    for (key, record) in &all {
        expected.add(key, &record.version);
    }
    assert_eq!(
        &store.tree().await.unwrap(),
        expected.leaves(),
        "the stored tree matches the records"
    );
    assert_eq!(store.record_count().await.unwrap(), all.len() as u64);
    // Tombstones at their wall time, expiring values at their expiry.
    let mut tombs: Vec<(String, u64)> = all
        .iter()
        .filter_map(|(k, r)| Some((k.clone(), r.dead_since()?)))
        .collect();
    tombs.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let indexed = store
        .tombstones((0, 0), u64::MAX >> 12, 100_000)
        .await
        .unwrap();
    assert_eq!(indexed, tombs, "the tombstone index matches the records");
    // The key index: paging through every key finds exactly the records,
    // in key order; a prefix finds exactly its keys.
    let mut want: Vec<(String, Record)> = all.iter().map(|(k, r)| (k.clone(), r.clone())).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        range_all(store, &KeyRange::default()).await,
        want,
        "the key index matches the records"
    );
    let prefix = KeyRange {
        prefix: Some("d1".into()),
        ..KeyRange::default()
    };
    let with_prefix: Vec<(String, Record)> = want
        .iter()
        .filter(|(k, _)| k.starts_with("d1"))
        .cloned()
        .collect();
    assert_eq!(range_all(store, &prefix).await, with_prefix);
    // Whole leaves hold exactly their records.
    let leaves: Vec<u16> = expected.leaves().keys().copied().take(20).collect();
    for (leaf, records) in leaves
        .iter()
        .zip(store.leaf_records(&leaves).await.unwrap())
    {
        let want = all.keys().filter(|k| leaf_of(k) == *leaf).count();
        assert_eq!(records.len(), want, "leaf {leaf}");
        assert!(
            records
                .iter()
                .all(|(k, r)| leaf_of(k) == *leaf && all[k] == *r)
        );
    }
}

/// The tree, count and tombstone index follow every kind of change.
async fn derived_suite(store: Store) {
    check_derived(&store).await;
    // Replacing a value by a newer one, a value by a tombstone, a
    // tombstone by a value, and removing a tombstone.
    let pairs: Vec<(String, Record)> = (0..50)
        .map(|i| (format!("d{i}"), rec(100, 0, "n1", Some("1"))))
        .collect();
    store.apply(&pairs).await.unwrap();
    check_derived(&store).await;
    let newer: Vec<(String, Record)> = (0..50)
        .map(|i| {
            let json = (i % 2 == 0).then_some("2");
            (format!("d{i}"), rec(200 + i, 0, "n2", json))
        })
        .collect();
    assert!(store.apply(&newer).await.unwrap().iter().all(|s| *s));
    check_derived(&store).await;
    let back: Vec<(String, Record)> = (0..10)
        .map(|i| (format!("d{}", 2 * i + 1), rec(300, 0, "n1", Some("3"))))
        .collect();
    store.apply(&back).await.unwrap();
    check_derived(&store).await;
    let gone: Vec<(String, Record)> = (10..20)
        .map(|i| (format!("d{}", 2 * i + 1), rec(201 + 2 * i, 0, "n2", None)))
        .collect();
    assert_eq!(store.remove_if_same(&Space::Data, &gone).await.unwrap(), 10);
    // Not the same any more: nothing removed.
    assert_eq!(
        store
            .remove_if_same(&Space::Data, &back[..2])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .remove_if_same(&Space::Data, &back[..2])
            .await
            .unwrap(),
        0
    );
    check_derived(&store).await;
    // Expiring values: indexed at their expiry among the tombstones; a
    // newer value without a TTL leaves the index, a newer expiring one
    // moves in it, a delete takes the tombstone's time.
    let expiring = |wall: u64, ttl: u64, i: usize| {
        let mut r = rec(wall, 0, "n3", Some("4"));
        r.expires_at = Some(wall + ttl);
        (format!("e{i}"), r)
    };
    let first: Vec<(String, Record)> = (0..12).map(|i| expiring(400, 50, i)).collect();
    store.apply(&first).await.unwrap();
    check_derived(&store).await;
    let mut next: Vec<(String, Record)> = (0..4).map(|i| expiring(500, 70, i)).collect();
    next.extend((4..8).map(|i| (format!("e{i}"), rec(500, 0, "n3", Some("5")))));
    next.extend((8..12).map(|i| (format!("e{i}"), rec(500, 0, "n3", None))));
    assert!(store.apply(&next).await.unwrap().iter().all(|s| *s));
    check_derived(&store).await;
    assert_eq!(
        store
            .remove_if_same(&Space::Data, &next[..2])
            .await
            .unwrap(),
        2
    );
    check_derived(&store).await;
    // The tombstone index pages from a time on, skipping some of that time.
    let first = store.tombstones((0, 0), 1_000, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = store.tombstones((first[1].1, 1), 1_000, 100).await.unwrap();
    assert!(!rest.iter().any(|t| *t == first[0]));
    assert!(
        store
            .tombstones((0, 0), 150, 100)
            .await
            .unwrap()
            .iter()
            .all(|(_, ms)| *ms < 150)
    );
}

#[tokio::test]
async fn memory_store() {
    suite(Store::Memory(MemoryStore::default())).await;
    derived_suite(Store::Memory(MemoryStore::default())).await;
}

/// A real redis-server, started (and stopped, when the cluster is
/// dropped) by a 1-node cluster whose API is stopped, and a connection to it.
async fn one_redis() -> (Cluster, redis::aio::ConnectionManager) {
    let mut c = Cluster::start(Options {
        nodes: 1,
        ..Options::default()
    })
    .await;
    c.kill_api(0);
    let url = c.redis_url(0);
    let cfg = Config::from_lookup(|name| (name == "REDIS_URL").then(|| url.clone())).unwrap();
    (c, connect_redis(&cfg).await.unwrap())
}

#[tokio::test]
async fn redis_store_and_namespacing() {
    let (_c, conn) = one_redis().await;
    suite(Store::Redis(RedisStore::new(conn.clone(), "suite-a"))).await;
    check_derived(&Store::Redis(RedisStore::new(conn.clone(), "suite-a"))).await;
    derived_suite(Store::Redis(RedisStore::new(conn.clone(), "suite-d"))).await;
    // The set of non-empty leaves that scans walk matches the tree.
    for node in ["suite-a", "suite-d"] {
        let store = Store::Redis(RedisStore::new(conn.clone(), node));
        let mut raw = conn.clone();
        let leaves: Vec<String> = redis::cmd("ZRANGE")
            .arg(shared::keyspace::leaves_key(node))
            .arg(0)
            .arg(-1)
            .query_async(&mut raw)
            .await
            .unwrap();
        let tree: Vec<String> = store
            .tree()
            .await
            .unwrap()
            .keys()
            .map(|l| shared::core::merkle::leaf_field(*l))
            .collect();
        assert_eq!(leaves, tree, "{node}");
    }

    // Records written before the key index existed are indexed at start.
    let store = Store::Redis(RedisStore::new(conn.clone(), "suite-d"));
    let before = range_all(&store, &KeyRange::default()).await;
    assert!(!before.is_empty());
    redis::cmd("DEL")
        .arg(shared::keyspace::key_index_key("suite-d"))
        .query_async::<()>(&mut conn.clone())
        .await
        .unwrap();
    assert!(range_all(&store, &KeyRange::default()).await.is_empty());
    assert_eq!(store.ensure_key_index().await.unwrap(), before.len() as u64);
    assert_eq!(store.ensure_key_index().await.unwrap(), 0);
    assert_eq!(range_all(&store, &KeyRange::default()).await, before);

    // A corrupt stored record is skipped by reads and scans, and counted;
    // the other keys of the same call are answered.
    let store = Store::Redis(RedisStore::new(conn.clone(), "suite-c"));
    store
        .apply(&[("good".into(), rec(1, 0, "n1", Some("1")))])
        .await
        .unwrap();
    // A key in the same leaf as "good", so a scan meets both.
    let bad = (0..)
        .map(|i| format!("bad{i}"))
        .find(|k| leaf_of(k) == leaf_of("good"))
        .unwrap();
    let mut raw = conn.clone();
    redis::cmd("HSET")
        .arg(shared::keyspace::data_leaf_key("suite-c", leaf_of(&bad)))
        .arg(&bad)
        .arg("not a record")
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    let got = store.get_many(&[bad.clone(), "good".into()]).await.unwrap();
    assert!(got[0].is_none() && got[1].is_some());
    assert_eq!(scan_all(&store).await.len(), 1);
    assert_eq!(store.corrupt_skipped(), 2);
    // A write replaces it as if it were absent.
    assert_eq!(
        store
            .apply(&[(bad.clone(), rec(2, 0, "n1", Some("2")))])
            .await
            .unwrap(),
        vec![true]
    );
    check_derived(&store).await;

    // Records of the single-hash layout of earlier versions move into the
    // leaves at start, merged newer-wins with what is there.
    let store = Store::Redis(RedisStore::new(conn.clone(), "suite-m"));
    store
        .apply(&[("m0".into(), rec(9, 0, "n1", Some("\"newer\"")))])
        .await
        .unwrap();
    for i in 0..2_500u64 {
        redis::cmd("HSET")
            .arg(shared::keyspace::legacy_data_key("suite-m"))
            .arg(format!("m{i}"))
            .arg(rec(5, 0, "n1", Some(&i.to_string())).encode())
            .query_async::<()>(&mut raw)
            .await
            .unwrap();
    }
    assert_eq!(store.migrate_legacy().await.unwrap(), 2_500);
    assert_eq!(store.migrate_legacy().await.unwrap(), 0);
    assert_eq!(store.record_count().await.unwrap(), 2_500);
    assert_eq!(
        store.get("m0").await.unwrap(),
        Some(rec(9, 0, "n1", Some("\"newer\"")))
    );
    assert_eq!(
        store.get("m2499").await.unwrap(),
        Some(rec(5, 0, "n1", Some("2499")))
    );
    check_derived(&store).await;

    // Two nodes sharing one Redis do not see each other's data.
    let b = Store::Redis(RedisStore::new(conn, "suite-b"));
    assert_eq!(b.get("k1").await.unwrap(), None);
    assert_eq!(b.record_count().await.unwrap(), 0);
}

/// The change log holds the records of one apply call together and numbers
/// every change: positions are consecutive, a reader resumes inside an
/// entry, records left unchanged are not logged, a log written by an older
/// build (one entry per change, ids by time) is continued above its ids,
/// and trimming keeps about the configured number of changes.
#[tokio::test]
async fn redis_change_log_numbers_each_change_of_grouped_entries() {
    let (c, mut conn) = one_redis().await;
    // Two entries as an older build wrote them.
    for (id, key) in [("1796015047440-0", "old1"), ("1796015047440-1", "old2")] {
        let version = rec(1, 0, "n1", None).version.to_string();
        let _: String = redis::cmd("XADD")
            .arg("kv:log-a:changes")
            .arg(id)
            .arg("k")
            .arg(key)
            .arg("v")
            .arg(version)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let store = Store::Redis(RedisStore::new(conn.clone(), "log-a").with_change_log(50));
    let batch = |keys: &[&str], wall: u64| -> Vec<(String, Record)> {
        keys.iter()
            .map(|k| ((*k).to_owned(), rec(wall, 0, "n1", Some("1"))))
            .collect()
    };
    store.apply(&batch(&["a", "b", "c"], 10)).await.unwrap();
    // Unchanged records are not logged.
    store.apply(&batch(&["a", "b", "c"], 10)).await.unwrap();
    let (all, more) = store.changes_after(None, 100).await.unwrap();
    assert!(!more);
    let seen: Vec<(String, String)> = all
        .iter()
        .map(|c| (c.key.clone(), c.position.to_string()))
        .collect();
    let expect = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, p)| ((*k).to_owned(), (*p).to_owned()))
            .collect()
    };
    assert_eq!(
        seen,
        expect(&[
            ("old1", "1796015047440-0"),
            ("old2", "1796015047440-1"),
            ("a", "1796015047442-0"),
            ("b", "1796015047443-0"),
            ("c", "1796015047444-0"),
        ])
    );
    // Resumed inside the entry of a, b and c.
    let (rest, _) = store
        .changes_after(Some(all[2].position), 100)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        vec!["b", "c"]
    );
    // A page cut inside an entry says more follows, and goes on from there.
    let (page, more) = store.changes_after(Some(all[1].position), 2).await.unwrap();
    assert_eq!(
        (
            page.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            more
        ),
        (vec!["a", "b"], true)
    );
    // 40 records in one call: entries of at most 16, numbered on.
    let keys: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    let big: Vec<(String, Record)> = keys
        .iter()
        .map(|k| (k.clone(), rec(20, 0, "n1", Some("2"))))
        .collect();
    store.apply(&big).await.unwrap();
    let entries: usize = redis::cmd("XLEN")
        .arg("kv:log-a:changes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries, 2 + 1 + 3);
    let (tail, _) = store
        .changes_after(Some(all[4].position), 100)
        .await
        .unwrap();
    let numbers: Vec<u64> = tail.iter().map(|c| c.position.ms).collect();
    assert_eq!(
        numbers,
        (1_796_015_047_445..1_796_015_047_485).collect::<Vec<_>>()
    );
    assert_eq!(tail.iter().map(|c| c.key.clone()).collect::<Vec<_>>(), keys);
    let bounds = store.change_log_bounds().await.unwrap();
    assert_eq!(bounds.newest.map(|p| p.ms), Some(1_796_015_047_484));
    assert!(!bounds.trimmed);

    // Trimming counts changes: 300 calls of 16 records (4,800 changes in
    // 300 entries) with a log of 50 keep at least the last 50 changes and
    // far from all of them (`~` trims whole stream nodes of 100 entries).
    for call in 0..300u64 {
        let records: Vec<(String, Record)> = (0..16)
            .map(|i| (format!("t{i}"), rec(100 + call, 0, "n1", Some("3"))))
            .collect();
        store.apply(&records).await.unwrap();
    }
    let bounds = store.change_log_bounds().await.unwrap();
    let newest = bounds.newest.unwrap().ms;
    assert_eq!(newest, 1_796_015_047_484 + 4_800);
    let (kept, _) = store.changes_after(None, 10_000).await.unwrap();
    assert!(kept.len() >= 50, "kept {} changes", kept.len());
    assert!(kept.len() <= 2_000, "kept {} changes", kept.len());
    assert_eq!(kept.last().map(|c| c.position.ms), Some(newest));
    assert_eq!(bounds.first_kept, kept.first().map(|c| c.position));
    assert!(bounds.trimmed);
    // A watcher that saw the change right before the oldest kept missed
    // nothing; one that saw an older one did (it gets a `reset`).
    let first = kept[0].position;
    let before = |n: u64| shared::core::watch::LogPosition {
        ms: first.ms - n,
        seq: 0,
    };
    assert!(!shared::core::watch::missed_on_resume(before(1), &bounds));
    assert!(shared::core::watch::missed_on_resume(before(2), &bounds));
    drop(c);
}
