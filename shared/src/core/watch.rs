//! Watching changes (`GET /kv/watch/`): the change log's positions, what
//! one event says, and when a resumed watch has missed changes.
//!
//! Every record a node stores (as a replica: client writes, replication,
//! repair, hints delivered, anti-entropy) is appended to its change log —
//! a Redis stream holding the key and the version, trimmed to
//! `KV_WATCH_LOG_LEN` entries — in the same atomic step as the record. A
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

/// A position in the change log: a Redis stream entry id (`ms-seq`).
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

/// Whether a watcher resuming after `after` missed changes the log no
/// longer holds: the log has dropped an entry past `after`
/// (`max_deleted`, the newest position trimmed away).
pub fn missed_on_resume(after: LogPosition, max_deleted: Option<LogPosition>) -> bool {
    max_deleted.is_some_and(|d| d > after)
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
        let at = LogPosition { ms: 10, seq: 1 };
        assert!(!missed_on_resume(at, None));
        assert!(!missed_on_resume(at, Some(LogPosition { ms: 10, seq: 1 })));
        assert!(!missed_on_resume(at, Some(LogPosition { ms: 9, seq: 7 })));
        assert!(missed_on_resume(at, Some(LogPosition { ms: 10, seq: 2 })));
    }

    proptest! {
        #[test]
        fn positions_round_trip_and_order_by_numbers(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
            let pa = LogPosition { ms: a.0, seq: a.1 };
            let pb = LogPosition { ms: b.0, seq: b.1 };
            prop_assert_eq!(pa.to_string().parse::<LogPosition>(), Ok(pa));
            prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
        }
    }
}
