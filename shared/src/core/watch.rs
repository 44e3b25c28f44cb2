//! Watching changes (`GET /kv/watch/`): the change log's positions, what
//! one event says, and when a resumed watch has missed changes.
//!
//! Every record a node stores (as a replica: client writes, replication,
//! repair, hints delivered, anti-entropy) is appended to its change log —
//! a Redis stream of keys and versions, trimmed to about `KV_WATCH_LOG_LEN`
//! changes — in the same atomic step as the record. The changes are
//! numbered 1, 2, 3, ...; one entry holds the changes of one apply call
//! and its id is the number of its last one (see [`entry_changes`]). A
//! watcher is sent each change of its prefix with the key's record as read
//! just after the change (at least as new as it), and the change's position
//! as the event id. A watcher that reconnects with `Last-Event-ID` is sent
//! every change after that position still in the log; when the log was
//! trimmed past it, it is told (`reset`) so it can list the keys again.
//!
//! Guarantee: at least once (a key changed twice may be sent twice with
//! its newest record), and per key in version order (the log is in apply
//! order and a node stores only newer versions).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::value::RawValue;

use super::record::{Record, Version};

/// A position in the change log, written as a Redis stream entry id
/// (`ms-seq`): a change's number as `n-0`. Entries an older build wrote
/// (one change each, numbered by time) keep their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPosition {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a position was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a change-log position: expected two numbers as in 1796015047440-0")]
pub struct BadPosition;

impl FromStr for LogPosition {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(BadPosition)?;
        let number = |t: &str| {
            if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadPosition);
            }
            t.parse::<u64>().map_err(|_| BadPosition)
        };
        Ok(LogPosition {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub position: LogPosition,
    pub key: String,
    pub version: Version,
}

/// The changes of one change-log entry, each at its own position. An entry
/// holds the (key, version) pairs of one apply call, numbered
/// consecutively, and its id is the position of the last one: of `n`
/// pairs, the `i`-th is at `id - (n - 1 - i)`. An entry of one change (as
/// every entry an older build wrote) is at the entry's id.
pub fn entry_changes(id: LogPosition, pairs: Vec<(String, Version)>) -> Vec<Change> {
    let n = pairs.len() as u64;
    pairs
        .into_iter()
        .zip(0u64..)
        .map(|((key, version), i)| Change {
            position: LogPosition {
                ms: id.ms.saturating_sub(n - 1 - i),
                seq: id.seq,
            },
            key,
            version,
        })
        .collect()
}

/// One page of changes read from whole entries: those after `after`, at
/// most `count` of them, and whether more may follow (the read returned as
/// many entries as it asked for, or the page was cut short). A page cut
/// inside an entry resumes inside it: its last position is that of the
/// last change it holds.
pub fn page_after(
    changes: Vec<Change>,
    after: Option<LogPosition>,
    count: usize,
    entries_full: bool,
) -> (Vec<Change>, bool) {
    let mut page: Vec<Change> = changes
        .into_iter()
        .filter(|c| after.is_none_or(|a| c.position > a))
        .collect();
    let cut = page.len() > count;
    page.truncate(count);
    (page, entries_full || cut)
}

/// What one event tells a watcher.
#[derive(Debug, Clone, Serialize)]
pub struct WatchEvent<'a> {
    pub key: &'a str,
    pub version: &'a Version,
    /// `None` for a deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<&'a RawValue>,
    pub deleted: bool,
    /// When the value expires (ms since the Unix epoch), if it does. An
    /// expiry is not an event of its own: it is known from the put.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl<'a> WatchEvent<'a> {
    /// The event for `change`, with the key's record as the node holds it
    /// now. A key whose record is gone (a collected tombstone) — or, which
    /// cannot be, older than the change — is a deletion at the change's
    /// version: an event never reports a version older than its change.
    pub fn new(change: &'a Change, now: Option<&'a Record>) -> WatchEvent<'a> {
        match now {
            Some(record) if record.version >= change.version => WatchEvent {
                key: &change.key,
                version: &record.version,
                value: record.value.as_deref(),
                deleted: record.value.is_none(),
                expires_at: record.expires_at,
            },
            _ => WatchEvent {
                key: &change.key,
                version: &change.version,
                value: None,
                deleted: true,
                expires_at: None,
            },
        }
    }

    /// The SSE event name.
    pub fn kind(&self) -> &'static str {
        if self.deleted { "delete" } else { "put" }
    }
}

/// What a reader needs to know of the change log's ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogBounds {
    /// The newest change's position (`None`: the log is empty or missing).
    pub newest: Option<LogPosition>,
    /// The oldest change the log still holds.
    pub first_kept: Option<LogPosition>,
    /// Whether the log ever dropped an entry (trimmed to its length).
    pub trimmed: bool,
}

/// Whether a watcher resuming after `after` missed changes the log no
/// longer holds: the log dropped entries, and the oldest change it still
/// holds is not the one right after `after`. Changes are numbered
/// consecutively (`n-0`), so "right after" is `n+1`; across positions an
/// older build wrote (numbered by time) that cannot be told, and a resume
/// before the oldest change kept is taken as a miss: a `reset` too many
/// only makes the watcher list the keys again.
pub fn missed_on_resume(after: LogPosition, bounds: &LogBounds) -> bool {
    if !bounds.trimmed {
        return false;
    }
    let Some(first) = bounds.first_kept else {
        // Trimmed to nothing: missed unless it had seen the newest.
        return bounds.newest.is_none_or(|n| after < n);
    };
    let next = after.seq == 0 && first.seq == 0 && after.ms.checked_add(1) == Some(first.ms);
    after < first && !next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hlc::Timestamp;
    use proptest::prelude::*;

    fn version(wall: u64) -> Version {
        Version::new(
            Timestamp {
                wall_ms: wall,
                logical: 0,
            },
            "n1",
        )
    }

    #[test]
    fn positions_parse_and_order_as_redis_does() {
        let p: LogPosition = "1796015047440-3".parse().unwrap_or_default();
        assert_eq!(
            p,
            LogPosition {
                ms: 1_796_015_047_440,
                seq: 3
            }
        );
        assert_eq!(p.to_string(), "1796015047440-3");
        assert!(LogPosition { ms: 1, seq: 9 } < LogPosition { ms: 2, seq: 0 });
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "+1-2",
            "1 -2",
            "99999999999999999999999-0",
        ] {
            assert_eq!(bad.parse::<LogPosition>(), Err(BadPosition), "{bad:?}");
        }
    }

    #[test]
    fn an_event_carries_the_record_as_it_is_now() {
        let change = Change {
            position: LogPosition { ms: 5, seq: 0 },
            key: "k".into(),
            version: version(10),
        };
        let value = RawValue::from_string("7".into()).unwrap_or_else(|_| unreachable!());
        let newer = Record::value(version(12), value);
        let e = WatchEvent::new(&change, Some(&newer));
        assert_eq!(
            (e.kind(), e.version, e.deleted),
            ("put", &version(12), false)
        );
        let tomb = Record::tombstone(version(11));
        assert_eq!(WatchEvent::new(&change, Some(&tomb)).kind(), "delete");
        // Collected since: a deletion at the change's version.
        let gone = WatchEvent::new(&change, None);
        assert_eq!((gone.kind(), gone.version), ("delete", &version(10)));
    }

    #[test]
    fn a_resume_misses_changes_only_when_the_log_dropped_past_it() {
        let at = |ms| LogPosition { ms, seq: 0 };
        let bounds = |first, trimmed| LogBounds {
            newest: Some(at(100)),
            first_kept: Some(at(first)),
            trimmed,
        };
        // Never trimmed: nothing missed, wherever the resume is.
        assert!(!missed_on_resume(at(1), &bounds(1, false)));
        // Trimmed up to 40: a resume at 39 or later missed nothing; at 38,
        // change 39 is gone.
        assert!(!missed_on_resume(at(39), &bounds(40, true)));
        assert!(!missed_on_resume(at(40), &bounds(40, true)));
        assert!(!missed_on_resume(at(70), &bounds(40, true)));
        assert!(missed_on_resume(at(38), &bounds(40, true)));
        assert!(missed_on_resume(at(0), &bounds(40, true)));
        // Positions of an older build (numbered by time): a resume before
        // the oldest kept is taken as a miss.
        let old = LogPosition { ms: 39, seq: 1 };
        assert!(missed_on_resume(old, &bounds(40, true)));
        // Trimmed to nothing.
        let empty = LogBounds {
            newest: Some(at(100)),
            first_kept: None,
            trimmed: true,
        };
        assert!(missed_on_resume(at(99), &empty));
        assert!(!missed_on_resume(at(100), &empty));
    }

    fn pairs(keys: &[&str]) -> Vec<(String, Version)> {
        keys.iter()
            .zip(1..)
            .map(|(k, w)| ((*k).to_owned(), version(w)))
            .collect()
    }

    #[test]
    fn an_entry_numbers_its_changes_up_to_its_id() {
        let id = LogPosition { ms: 12, seq: 0 };
        let changes = entry_changes(id, pairs(&["a", "b", "c"]));
        let at: Vec<(u64, &str)> = changes
            .iter()
            .map(|c| (c.position.ms, c.key.as_str()))
            .collect();
        assert_eq!(at, vec![(10, "a"), (11, "b"), (12, "c")]);
        assert_eq!(changes[1].version, version(2));
        // An entry of an older build: one change, at the entry's own id.
        let old = LogPosition {
            ms: 1_796_015_047_440,
            seq: 3,
        };
        let one = entry_changes(old, pairs(&["k"]));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].position, old);
    }

    #[test]
    fn a_page_skips_what_was_seen_and_stops_at_its_count() {
        let log: Vec<Change> =
            entry_changes(LogPosition { ms: 3, seq: 0 }, pairs(&["a", "b", "c"]))
                .into_iter()
                .chain(entry_changes(
                    LogPosition { ms: 5, seq: 0 },
                    pairs(&["d", "e"]),
                ))
                .collect();
        let keys = |page: &[Change]| page.iter().map(|c| c.key.clone()).collect::<Vec<_>>();
        // Resumed inside the first entry: its rest comes first.
        let (page, more) = page_after(log.clone(), Some(LogPosition { ms: 1, seq: 0 }), 10, false);
        assert_eq!(
            (keys(&page), more),
            (
                vec!["b".to_owned(), "c".into(), "d".into(), "e".into()],
                false
            )
        );
        // Cut short: more follows, and the next page starts after its last change.
        let (page, more) = page_after(log.clone(), None, 2, false);
        assert_eq!(
            (keys(&page), more),
            (vec!["a".to_owned(), "b".into()], true)
        );
        let next = page.last().map(|c| c.position);
        let (page, _) = page_after(log.clone(), next, 2, false);
        assert_eq!(keys(&page), vec!["c".to_owned(), "d".into()]);
        // As many entries as asked: more may follow even if the page is short.
        let (_, more) = page_after(log, None, 10, true);
        assert!(more);
    }

    proptest! {
        /// However apply calls group changes into entries, the positions
        /// are consecutive across entries and strictly increasing, so
        /// resuming after any of them misses nothing and repeats nothing.
        #[test]
        fn grouped_changes_are_numbered_consecutively(sizes in proptest::collection::vec(1usize..20, 1..20), start in 0u64..1_000_000) {
            let mut last = start;
            let mut all = Vec::new();
            for (e, n) in sizes.iter().enumerate() {
                last += *n as u64;
                let keys: Vec<(String, Version)> = (0..*n).map(|i| (format!("{e}/{i}"), version(1))).collect();
                all.extend(entry_changes(LogPosition { ms: last, seq: 0 }, keys));
            }
            let positions: Vec<u64> = all.iter().map(|c| c.position.ms).collect();
            let expected: Vec<u64> = (start + 1..=last).collect();
            prop_assert_eq!(positions, expected);
            for cut in 0..all.len() {
                let after = all[cut].position;
                let (rest, _) = page_after(all.clone(), Some(after), usize::MAX, false);
                prop_assert_eq!(rest.len(), all.len() - cut - 1);
            }
        }

        #[test]
        fn positions_round_trip_and_order_by_numbers(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
            let pa = LogPosition { ms: a.0, seq: a.1 };
            let pb = LogPosition { ms: b.0, seq: b.1 };
            prop_assert_eq!(pa.to_string().parse::<LogPosition>(), Ok(pa));
            prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
        }
    }
}
