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
}

/// Why a condition failed: the key's current version (a tombstone's, with
/// `deleted`), or none at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub current: Option<Version>,
    pub deleted: bool,
}

impl Condition {
    /// Whether `current` (the newest record a read found) meets the condition.
    pub fn check(&self, current: Option<&Record>) -> Result<(), Mismatch> {
        let live = current.filter(|r| !r.is_tombstone());
        let ok = match self {
            Condition::IfVersion(v) => live.is_some_and(|r| r.version == *v),
            Condition::IfAbsent => live.is_none(),
        };
        if ok {
            Ok(())
        } else {
            Err(Mismatch {
                current: current.map(|r| r.version.clone()),
                deleted: current.is_some_and(Record::is_tombstone),
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
        assert!(c.check(Some(&value(5))).is_ok());
        assert_eq!(
            c.check(Some(&value(6))),
            Err(Mismatch {
                current: Some(v(6)),
                deleted: false
            })
        );
        assert_eq!(
            c.check(Some(&Record::tombstone(v(5)))),
            Err(Mismatch {
                current: Some(v(5)),
                deleted: true
            })
        );
        assert_eq!(
            c.check(None),
            Err(Mismatch {
                current: None,
                deleted: false
            })
        );
    }

    #[test]
    fn if_absent_accepts_missing_and_deleted_keys() {
        let c = Condition::IfAbsent;
        assert!(c.check(None).is_ok());
        assert!(c.check(Some(&Record::tombstone(v(3)))).is_ok());
        assert!(c.check(Some(&value(3))).is_err());
    }

    proptest! {
        /// Exactly one of two writers racing on the same observed version
        /// can pass, once the first one's record is what the second reads.
        #[test]
        fn a_version_passes_once(w in 1u64..1000, next in 1u64..1000) {
            let c = Condition::IfVersion(v(w));
            let after = value(w + next);
            prop_assert!(c.check(Some(&value(w))).is_ok());
            prop_assert!(c.check(Some(&after)).is_err());
        }
    }
}
