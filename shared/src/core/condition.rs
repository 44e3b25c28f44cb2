//! Conditional writes: the condition a client puts on a write, and whether
//! the key's current record meets it. Pure; the node decides *where* the
//! check runs (see `node::conditional`).

use serde::{Deserialize, Serialize};

use super::record::{Record, Version};

/// What must hold of the key's current record for a write to go ahead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// `If-Match: <version>`: the key holds a value (not deleted) of
    /// exactly this version.
    IfVersion(Version),
    /// `If-None-Match: *`: the key holds no value (missing or deleted).
    IfAbsent,
    /// `If-Match: *`: the key holds a value (not deleted).
    IfPresent,
    /// An `If-Match` that names no version (it cannot equal any key's
    /// version, so, as HTTP says of an entity tag that matches nothing, the
    /// condition is false).
    Never,
    /// Several of the above, all of which must hold (HTTP evaluates every
    /// precondition a request carries; `If-Match` with `If-None-Match: *`
    /// can never both hold, so such a write always gets 412).
    All(Vec<Condition>),
}

/// Why a condition failed: the key's current version (a tombstone's, with
/// `deleted`), or none at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub current: Option<Version>,
    pub deleted: bool,
}

impl Condition {
    /// The conjunction of `parts` (repeats dropped): `None` when there are
    /// none, the condition itself when there is one.
    pub fn all(parts: Vec<Condition>) -> Option<Condition> {
        let mut flat: Vec<Condition> = Vec::with_capacity(parts.len());
        for part in parts.into_iter().flat_map(Condition::into_parts) {
            if !flat.contains(&part) {
                flat.push(part);
            }
        }
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(Condition::All(flat)),
        }
    }

    /// The simple conditions this one is made of.
    pub fn into_parts(self) -> Vec<Condition> {
        match self {
            Condition::All(parts) => parts.into_iter().flat_map(Condition::into_parts).collect(),
            simple => vec![simple],
        }
    }

    /// Whether `current` (the newest record a read found at `now_ms`)
    /// meets the condition; a value expired by then counts as deleted.
    pub fn check(&self, current: Option<&Record>, now_ms: u64) -> Result<(), Mismatch> {
        let live = current.filter(|r| r.is_live_at(now_ms));
        let ok = match self {
            Condition::IfVersion(v) => live.is_some_and(|r| r.version == *v),
            Condition::IfAbsent => live.is_none(),
            Condition::IfPresent => live.is_some(),
            Condition::Never => false,
            Condition::All(parts) => parts.iter().all(|c| c.check(current, now_ms).is_ok()),
        };
        if ok {
            Ok(())
        } else {
            Err(Mismatch {
                current: current.map(|r| r.version.clone()),
                deleted: current.is_some_and(|r| !r.is_live_at(now_ms)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hlc::Timestamp;
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    fn v(w: u64) -> Version {
        Version::new(Timestamp::new(w, 0), "n1")
    }

    fn value(w: u64) -> Record {
        Record::value(v(w), RawValue::from_string("1".into()).unwrap())
    }

    #[test]
    fn if_version_needs_exactly_that_live_version() {
        let c = Condition::IfVersion(v(5));
        assert!(c.check(Some(&value(5)), 0).is_ok());
        assert_eq!(
            c.check(Some(&value(6)), 0),
            Err(Mismatch {
                current: Some(v(6)),
                deleted: false
            })
        );
        assert_eq!(
            c.check(Some(&Record::tombstone(v(5))), 0),
            Err(Mismatch {
                current: Some(v(5)),
                deleted: true
            })
        );
        assert_eq!(
            c.check(None, 0),
            Err(Mismatch {
                current: None,
                deleted: false
            })
        );
    }

    #[test]
    fn if_absent_accepts_missing_and_deleted_keys() {
        let c = Condition::IfAbsent;
        assert!(c.check(None, 0).is_ok());
        assert!(c.check(Some(&Record::tombstone(v(3))), 0).is_ok());
        assert!(c.check(Some(&value(3)), 0).is_err());
    }

    #[test]
    fn if_present_and_never() {
        assert!(Condition::IfPresent.check(Some(&value(1)), 0).is_ok());
        assert!(
            Condition::IfPresent
                .check(Some(&Record::tombstone(v(1))), 0)
                .is_err()
        );
        assert!(Condition::IfPresent.check(None, 0).is_err());
        assert!(Condition::Never.check(Some(&value(1)), 0).is_err());
        assert!(Condition::Never.check(None, 0).is_err());
    }

    #[test]
    fn an_expired_value_is_deleted_for_every_condition() {
        let ttl = Record::stamped(
            v(5),
            Some(RawValue::from_string("1".into()).unwrap()),
            Some(1),
        );
        let at = ttl.expires_at.unwrap();
        assert!(Condition::IfVersion(v(5)).check(Some(&ttl), at - 1).is_ok());
        assert!(Condition::IfAbsent.check(Some(&ttl), at - 1).is_err());
        let gone = Condition::IfVersion(v(5))
            .check(Some(&ttl), at)
            .unwrap_err();
        assert_eq!(
            gone,
            Mismatch {
                current: Some(v(5)),
                deleted: true
            }
        );
        assert!(Condition::IfAbsent.check(Some(&ttl), at).is_ok());
        assert!(Condition::IfPresent.check(Some(&ttl), at).is_err());
    }

    #[test]
    fn all_needs_every_part() {
        let both = Condition::all(vec![Condition::IfVersion(v(5)), Condition::IfAbsent]).unwrap();
        assert!(both.check(None, 0).is_err());
        assert!(both.check(Some(&value(5)), 0).is_err());
        let same = Condition::all(vec![Condition::IfVersion(v(5)), Condition::IfVersion(v(5))]);
        assert_eq!(same, Some(Condition::IfVersion(v(5))));
        let two =
            Condition::all(vec![Condition::IfVersion(v(5)), Condition::IfVersion(v(6))]).unwrap();
        assert!(two.check(Some(&value(5)), 0).is_err());
        assert!(two.check(Some(&value(6)), 0).is_err());
        assert_eq!(Condition::all(vec![]), None);
    }

    proptest! {
        /// A conjunction holds exactly when each of its parts does.
        #[test]
        fn all_is_the_conjunction(ws in proptest::collection::vec(0u64..4, 0..4),
                                  absent in any::<bool>(), current in proptest::option::of(0u64..4),
                                  deleted in any::<bool>()) {
            let mut parts: Vec<Condition> = ws.iter().map(|w| Condition::IfVersion(v(*w))).collect();
            if absent {
                parts.push(Condition::IfAbsent);
            }
            let record = current.map(|w| if deleted { Record::tombstone(v(w)) } else { value(w) });
            let each = parts.iter().all(|c| c.check(record.as_ref(), 0).is_ok());
            match Condition::all(parts) {
                Some(c) => prop_assert_eq!(c.check(record.as_ref(), 0).is_ok(), each),
                None => prop_assert!(each),
            }
        }


        /// Exactly one of two writers racing on the same observed version
        /// can pass, once the first one's record is what the second reads.
        #[test]
        fn a_version_passes_once(w in 1u64..1000, next in 1u64..1000) {
            let c = Condition::IfVersion(v(w));
            let after = value(w + next);
            prop_assert!(c.check(Some(&value(w)), 0).is_ok());
            prop_assert!(c.check(Some(&after), 0).is_err());
        }
    }
}
