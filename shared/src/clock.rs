//! The one place a process reads the wall clock, and the node's hybrid
//! logical clock around it.
//!
//! The pure core never reads time: it is handed `now_ms`. Adapters call
//! [`now_ms`], which adds the fault-injection offset `KV_CLOCK_OFFSET_MS`
//! (set once at start) to the system clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::hlc::{ClockError, HybridClock, Timestamp};

/// `KV_CLOCK_OFFSET_MS`, set once at start (fault injection for clock-skew tests).
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Shifts this process's clock by `offset_ms` (see `Config::clock_offset_ms`).
pub fn set_clock_offset_ms(offset_ms: i64) {
    CLOCK_OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch, from the system clock plus the
/// configured test offset.
pub fn now_ms() -> u64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    wall.saturating_add_signed(CLOCK_OFFSET_MS.load(Ordering::Relaxed))
}

/// Locks a mutex whose critical sections are single assignments or pure
/// calls: a panic inside one cannot leave the state torn, so a poisoned
/// value is still valid.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The node's hybrid logical clock, fed from [`now_ms`].
#[derive(Debug)]
pub struct NodeClock {
    hlc: Mutex<HybridClock>,
}

impl NodeClock {
    pub fn new(drift_max_ms: u64) -> Self {
        NodeClock {
            hlc: Mutex::new(HybridClock::new(drift_max_ms)),
        }
    }

    /// A new timestamp for a write coordinated here.
    pub fn tick(&self) -> Timestamp {
        lock(&self.hlc).tick(now_ms())
    }

    /// Whether `remote` is within the drift bound of local time.
    pub fn check(&self, remote: Timestamp) -> Result<(), ClockError> {
        self.check_at(remote, now_ms())
    }

    /// Whether `remote` is within the drift bound of `reference_ms`.
    pub fn check_at(&self, remote: Timestamp, reference_ms: u64) -> Result<(), ClockError> {
        lock(&self.hlc).check(remote, reference_ms)
    }

    /// Adopts `remote` (if within the drift bound), so later stamps order after it.
    pub fn observe(&self, remote: Timestamp) -> Result<(), ClockError> {
        lock(&self.hlc).observe(remote, now_ms())
    }

    /// The highest timestamp issued or observed, in ms (what is persisted).
    pub fn high_water_ms(&self) -> u64 {
        lock(&self.hlc).last().wall_ms
    }

    /// After a restart: every later stamp is above `wall_ms` (the persisted
    /// high-water mark plus a margin), even if the wall clock is behind it.
    pub fn resume_above(&self, wall_ms: u64) {
        lock(&self.hlc).raise(Timestamp::new(wall_ms, 0));
    }

    /// Observes each timestamp, judged against `reference_ms` (this node's
    /// time, or its peers' while it is fenced); says which were accepted.
    pub fn observe_all_at(
        &self,
        remote: impl IntoIterator<Item = Timestamp>,
        reference_ms: u64,
    ) -> Vec<bool> {
        let mut hlc = lock(&self.hlc);
        remote
            .into_iter()
            .map(|ts| hlc.observe(ts, reference_ms).is_ok())
            .collect()
    }

    /// Observes each timestamp against this node's time.
    pub fn observe_all(&self, remote: impl IntoIterator<Item = Timestamp>) -> Vec<bool> {
        self.observe_all_at(remote, now_ms())
    }

    /// How far this clock's last reading is ahead of the wall clock, in ms
    /// (0 when it is not). Beyond the drift bound, every stamp it would
    /// give is one the peers refuse.
    pub fn ahead_ms(&self) -> u64 {
        lock(&self.hlc).last().wall_ms.saturating_sub(now_ms())
    }
}
