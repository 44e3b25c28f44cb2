//! Hybrid logical clock (HLC).
//!
//! A timestamp is `(wall_ms, logical)`: the physical time in milliseconds the
//! node believed it was, plus a counter that orders events within the same
//! millisecond and keeps the clock moving forward when the wall clock stalls or
//! steps back. Invariants:
//!
//! - `tick` is strictly monotonic: every stamp is greater than every earlier one.
//! - After `observe(remote)`, the next `tick` is greater than `remote`, so a
//!   write coordinated anywhere after a read of `remote` is ordered after it.
//! - A remote timestamp more than `drift_max_ms` ahead of our wall clock is
//!   refused instead of adopted: one node with a broken clock ("timestamp
//!   bomb") must not drag every clock, and every key it touches, into the future.
//!
//! The clock never reads time itself; callers pass `now_ms`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One HLC reading. Ordered by `wall_ms`, then `logical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub wall_ms: u64,
    pub logical: u32,
}

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp {
        wall_ms: 0,
        logical: 0,
    };

    pub fn new(wall_ms: u64, logical: u32) -> Self {
        Timestamp { wall_ms, logical }
    }

    /// The smallest timestamp strictly greater than `self`.
    fn successor(self) -> Timestamp {
        match self.logical.checked_add(1) {
            Some(logical) => Timestamp::new(self.wall_ms, logical),
            // 4 billion events in one millisecond: borrow the next millisecond.
            None => Timestamp::new(self.wall_ms.saturating_add(1), 0),
        }
    }
}

/// Why a remote timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClockError {
    #[error(
        "remote timestamp {remote_ms} ms is {ahead_ms} ms ahead of local time {now_ms} ms (limit {drift_max_ms} ms)"
    )]
    TooFarAhead {
        remote_ms: u64,
        now_ms: u64,
        ahead_ms: u64,
        drift_max_ms: u64,
    },
}

/// The clock state of one node.
#[derive(Debug, Clone)]
pub struct HybridClock {
    last: Timestamp,
    drift_max_ms: u64,
}

impl HybridClock {
    pub fn new(drift_max_ms: u64) -> Self {
        HybridClock {
            last: Timestamp::ZERO,
            drift_max_ms,
        }
    }

    /// The latest timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    pub fn drift_max_ms(&self) -> u64 {
        self.drift_max_ms
    }

    /// Stamps a local event: greater than anything issued or observed before.
    pub fn tick(&mut self, now_ms: u64) -> Timestamp {
        let next = if now_ms > self.last.wall_ms {
            Timestamp::new(now_ms, 0)
        } else {
            self.last.successor()
        };
        debug_assert!(next > self.last);
        self.last = next;
        next
    }

    /// Checks a remote timestamp without adopting it.
    pub fn check(&self, remote: Timestamp, now_ms: u64) -> Result<(), ClockError> {
        let limit_ms = now_ms.saturating_add(self.drift_max_ms);
        if remote.wall_ms > limit_ms {
            return Err(ClockError::TooFarAhead {
                remote_ms: remote.wall_ms,
                now_ms,
                ahead_ms: remote.wall_ms - now_ms,
                drift_max_ms: self.drift_max_ms,
            });
        }
        Ok(())
    }

    /// Moves the clock up to at least `floor` without any check (a restart
    /// resuming above its persisted high-water mark).
    pub fn raise(&mut self, floor: Timestamp) {
        if floor > self.last {
            self.last = floor;
        }
    }

    /// Learns of a remote timestamp so the next `tick` is above it.
    /// Refuses (and ignores) one too far in the future.
    pub fn observe(&mut self, remote: Timestamp, now_ms: u64) -> Result<(), ClockError> {
        self.check(remote, now_ms)?;
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }
}

/// This node's clock as its peers see it: `offsets_ms` holds, per peer
/// measured recently, the peer's clock minus ours (estimated at the middle
/// of a probe's round trip). The node is fenced — it must not coordinate
/// writes — when more than half of the measured peers are further than
/// `drift_max_ms` from it: then it is this clock that is off, not theirs.
/// With no peer measured it is not fenced (a lone node keeps working).
pub fn fenced(offsets_ms: &[i64], drift_max_ms: u64) -> bool {
    let beyond = offsets_ms
        .iter()
        .filter(|o| o.unsigned_abs() > drift_max_ms)
        .count();
    beyond * 2 > offsets_ms.len()
}

/// The median of the measured offsets (0 when none), for reports.
pub fn median_offset_ms(offsets_ms: &[i64]) -> i64 {
    let mut sorted = offsets_ms.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_node_is_fenced_only_when_most_peers_disagree_with_it() {
        // node3 10 minutes fast: both peers read it as 600 s behind them.
        assert!(fenced(&[-600_000, -600_000], 60_000));
        // node1 sees one good peer and the fast node3: not its own clock.
        assert!(!fenced(&[0, 600_000], 60_000));
        assert!(!fenced(&[], 60_000));
        assert!(!fenced(&[59_000, -59_000], 60_000));
        assert!(fenced(&[61_000, 70_000, 0], 60_000));
        assert_eq!(median_offset_ms(&[5, -3, 9]), 5);
    }

    #[test]
    fn tick_follows_wall_clock_and_survives_steps_back() {
        let mut clock = HybridClock::new(1_000);
        assert_eq!(clock.tick(100), Timestamp::new(100, 0));
        assert_eq!(clock.tick(100), Timestamp::new(100, 1));
        // Wall clock stepped back: logical part keeps us moving forward.
        assert_eq!(clock.tick(50), Timestamp::new(100, 2));
        assert_eq!(clock.tick(101), Timestamp::new(101, 0));
    }

    #[test]
    fn observe_moves_the_next_tick_above_remote() {
        let mut clock = HybridClock::new(1_000);
        clock.tick(100);
        clock.observe(Timestamp::new(900, 7), 100).unwrap();
        assert_eq!(clock.tick(100), Timestamp::new(900, 8));
    }

    #[test]
    fn timestamp_bomb_is_refused() {
        let mut clock = HybridClock::new(1_000);
        let err = clock.observe(Timestamp::new(10_000, 0), 100).unwrap_err();
        assert!(matches!(
            err,
            ClockError::TooFarAhead {
                ahead_ms: 9_900,
                ..
            }
        ));
        // And it did not move the clock.
        assert_eq!(clock.tick(100), Timestamp::new(100, 0));
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut clock = HybridClock::new(1_000);
        clock.observe(Timestamp::new(5, u32::MAX), 5).unwrap();
        assert_eq!(clock.tick(5), Timestamp::new(6, 0));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Tick(u64),
        Observe(u64, u32, u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..10_000).prop_map(Step::Tick),
            (0u64..12_000, 0u32..5, 0u64..10_000).prop_map(|(w, l, n)| Step::Observe(w, l, n)),
        ]
    }

    proptest! {
        #[test]
        fn ticks_are_strictly_monotonic_and_above_observed(steps in proptest::collection::vec(step(), 1..200)) {
            let mut clock = HybridClock::new(1_000);
            let mut highest = Timestamp::ZERO;
            let mut last_tick: Option<Timestamp> = None;
            for s in steps {
                match s {
                    Step::Tick(now) => {
                        let t = clock.tick(now);
                        prop_assert!(t > highest, "tick {:?} not above {:?}", t, highest);
                        if let Some(prev) = last_tick { prop_assert!(t > prev); }
                        last_tick = Some(t);
                        highest = t;
                    }
                    Step::Observe(w, l, now) => {
                        let remote = Timestamp::new(w, l);
                        match clock.observe(remote, now) {
                            Ok(()) => { highest = highest.max(remote); }
                            Err(_) => prop_assert!(w > now + 1_000),
                        }
                    }
                }
            }
        }
    }
}
