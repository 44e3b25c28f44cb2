//! Tests of the listing merge, cursors and query parsing.

use super::*;
use crate::core::hlc::Timestamp;
use crate::core::record::Version;
use proptest::prelude::*;
use serde_json::value::RawValue;

fn rec(wall: u64, value: Option<u32>) -> Record {
    let version = Version::new(
        Timestamp {
            wall_ms: wall,
            logical: 0,
        },
        "n",
    );
    match value {
        Some(v) => Record::value(
            version,
            RawValue::from_string(v.to_string()).unwrap_or_else(|_| unreachable!()),
        ),
        None => Record::tombstone(version),
    }
}

/// One node's page as a node computes it: up to `limit` records of
/// `range`, and where it stopped.
fn node_page(store: &BTreeMap<String, Record>, range: &KeyRange, limit: usize) -> NodePage {
    let mut records = Vec::new();
    for (key, record) in store {
        if !range.contains(key) {
            continue;
        }
        records.push((key.clone(), record.clone()));
        if records.len() == limit {
            return NodePage {
                scanned_to: Some(key.clone()),
                records,
            };
        }
    }
    NodePage {
        records,
        scanned_to: None,
    }
}

/// The time the merges are made at, between the two expiry times the
/// property test's records carry.
const NOW: u64 = 10;

const BOUNDS: PageBounds = PageBounds {
    items: 100,
    bytes: usize::MAX,
};

/// The pages of a cluster where only node `a` answered, with `records`
/// and nothing more in the range.
fn only_node_a(records: Vec<(String, Record)>) -> BTreeMap<String, NodePage> {
    let mut pages = BTreeMap::new();
    pages.insert(
        "a".to_owned(),
        NodePage {
            records,
            scanned_to: None,
        },
    );
    pages
}

fn everyone(_: &str) -> Vec<String> {
    vec!["a".into(), "b".into(), "c".into()]
}

#[test]
fn lower_bound_is_the_largest_and_exclusive_wins_a_tie() {
    let range = KeyRange {
        prefix: Some("user:".into()),
        start: Some("user:b".into()),
        end: None,
        after: Some("user:b".into()),
    };
    assert_eq!(
        range.lower(),
        Some(Lower {
            key: "user:b",
            inclusive: false
        })
    );
    assert_eq!(KeyRange::default().lower(), None);
    let prefixed = KeyRange {
        prefix: Some("p".into()),
        after: Some("a".into()),
        ..KeyRange::default()
    };
    assert_eq!(
        prefixed.lower(),
        Some(Lower {
            key: "p",
            inclusive: true
        })
    );
}

#[test]
fn past_stops_at_the_end_of_a_prefix_or_at_end() {
    let range = KeyRange {
        prefix: Some("ab".into()),
        ..KeyRange::default()
    };
    assert!(!range.past("aa"));
    assert!(!range.past("ab"));
    assert!(!range.past("abz"));
    assert!(range.past("ac"));
    let ended = KeyRange {
        end: Some("m".into()),
        ..KeyRange::default()
    };
    assert!(!ended.past("l"));
    assert!(ended.past("m"));
}

#[test]
fn a_page_never_passes_the_horizon_and_leaves_tombstones_out() {
    let mut pages = BTreeMap::new();
    pages.insert(
        "a".to_owned(),
        NodePage {
            records: vec![("k1".into(), rec(1, Some(1))), ("k2".into(), rec(1, None))],
            scanned_to: Some("k2".into()),
        },
    );
    pages.insert(
        "b".to_owned(),
        NodePage {
            records: vec![
                ("k1".into(), rec(2, Some(2))),
                ("k3".into(), rec(1, Some(3))),
            ],
            scanned_to: None,
        },
    );
    let merged = merge_pages(&pages, everyone, 2, BOUNDS, NOW).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.items, vec![("k1".to_owned(), rec(2, Some(2)))]);
    assert_eq!(merged.next_after.as_deref(), Some("k2"));
    // a is behind on k1; b lacks the tombstone of k2.
    let repaired: Vec<(&str, &str)> = merged
        .repairs
        .iter()
        .map(|(n, k, _)| (n.as_str(), k.as_str()))
        .collect();
    assert_eq!(repaired, vec![("a", "k1"), ("b", "k2")]);
}

#[test]
fn a_key_without_enough_owners_answering_refuses_the_page() {
    let pages = only_node_a(vec![("k".into(), rec(1, Some(1)))]);
    let err = merge_pages(&pages, everyone, 2, BOUNDS, NOW).err();
    assert_eq!(
        err.map(|e| (e.key, e.answered, e.required)),
        Some(("k".to_owned(), 1, 2))
    );
    assert!(merge_pages(&pages, everyone, 1, BOUNDS, NOW).is_ok());
}

#[test]
fn the_byte_bound_ends_a_page_after_the_item_that_reaches_it() {
    let pages = only_node_a(
        (0..5)
            .map(|i| (format!("k{i}"), rec(1, Some(1000 + i))))
            .collect(),
    );
    let bounds = PageBounds {
        items: 100,
        bytes: 13,
    };
    let merged =
        merge_pages(&pages, |_| vec!["a".into()], 1, bounds, NOW).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.items.len(), 3);
    assert_eq!(merged.next_after.as_deref(), Some("k2"));
}

#[test]
fn the_last_full_page_says_there_is_nothing_more() {
    let pages = only_node_a(vec![("k".into(), rec(1, Some(1)))]);
    let bounds = PageBounds {
        items: 1,
        bytes: usize::MAX,
    };
    let merged =
        merge_pages(&pages, |_| vec!["a".into()], 1, bounds, NOW).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.next_after, None);
}

#[test]
fn cursors_round_trip_and_garbage_is_refused() {
    for key in ["a", "user:42", "ключ", "a b/c?d"] {
        assert_eq!(
            decode_cursor(&encode_cursor(key), 1024).as_deref(),
            Some(key)
        );
    }
    for bad in ["0", "zz", "ff", "C3", "", "00"] {
        assert_eq!(decode_cursor(bad, 1024), None, "{bad}");
    }
    assert_eq!(decode_cursor(&encode_cursor("abc"), 2), None);
}

#[test]
fn query_parameters_are_checked() {
    let q = |pairs: &[(&str, &str)]| {
        let params: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_list_query(&params, 16)
    };
    let ok = q(&[("prefix", "user:"), ("limit", "7"), ("keys_only", "true")])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.range.prefix.as_deref(), Some("user:"));
    assert_eq!((ok.limit, ok.keys_only), (7, true));
    assert_eq!(
        q(&[]).map(|l| l.limit).ok(),
        Some(LIST_LIMIT_DEFAULT),
        "default limit"
    );
    for bad in ["0", "-1", "x", "100000"] {
        assert!(matches!(
            q(&[("limit", bad)]),
            Err(ListError::BadLimit { .. })
        ));
    }
    assert_eq!(q(&[("cursor", "zz")]), Err(ListError::BadCursor));
    assert!(matches!(
        q(&[("prefix", "this key is far too long")]),
        Err(ListError::BadBound { name: "prefix", .. })
    ));
    assert_eq!(q(&[("keys_only", "yes")]), Err(ListError::BadFlag));
    assert!(matches!(
        q(&[("start", "")]),
        Err(ListError::BadBound { name: "start", .. })
    ));
    assert_eq!(q(&[("cursor", "")]), Err(ListError::BadCursor));
}

/// A node's store: key index → (wall, value or tombstone).
fn stores() -> impl Strategy<Value = Vec<BTreeMap<String, Record>>> {
    let expiry = proptest::option::weighted(0.3, prop_oneof![Just(NOW), Just(NOW + 1)]);
    let record = (1u64..4, proptest::option::weighted(0.8, 0u32..100), expiry).prop_map(
        |(wall, value, expires_at)| {
            let mut r = rec(wall, value);
            r.expires_at = expires_at.filter(|_| r.value.is_some());
            r
        },
    );
    let store =
        proptest::collection::btree_map((0u8..40).prop_map(|i| format!("k{i:02}")), record, 0..30);
    proptest::collection::vec(store, 3)
}

proptest! {
    /// Paging through a range with any page size and per-node limit
    /// visits exactly the keys whose newest record is a value not expired
    /// at the merge's time, each once, in order, with that newest record.
    #[test]
    fn paging_visits_every_live_key_once_in_order(
        stores in stores(),
        node_limit in 1usize..8,
        page_items in 1usize..8,
        prefix in proptest::option::of((0u8..4).prop_map(|d| format!("k{d}"))),
    ) {
        let nodes = ["a", "b", "c"];
        let base = KeyRange { prefix, ..KeyRange::default() };
        let mut expected: BTreeMap<String, Record> = BTreeMap::new();
        for store in &stores {
            for (key, record) in store {
                if !base.contains(key) {
                    continue;
                }
                let slot = expected.entry(key.clone()).or_insert_with(|| record.clone());
                if record > slot {
                    *slot = record.clone();
                }
            }
        }
        expected.retain(|_, r| r.is_live_at(NOW));
        let bounds = PageBounds { items: page_items, bytes: usize::MAX };
        let mut seen: Vec<(String, Record)> = Vec::new();
        let mut range = base.clone();
        for _ in 0..1000 {
            let pages: BTreeMap<String, NodePage> = nodes
                .iter()
                .zip(&stores)
                .map(|(n, s)| ((*n).to_owned(), node_page(s, &range, node_limit)))
                .collect();
            let merged = merge_pages(&pages, everyone, 3, bounds, NOW)
                .unwrap_or_else(|e| panic!("{e}"));
            prop_assert!(merged.items.len() <= page_items);
            seen.extend(merged.items);
            match merged.next_after {
                None => break,
                Some(after) => {
                    prop_assert!(range.after.as_ref().is_none_or(|a| &after > a), "no progress");
                    range = base.resumed_after(after);
                }
            }
        }
        let want: Vec<(String, Record)> = expected.into_iter().collect();
        prop_assert_eq!(seen, want);
    }
}
