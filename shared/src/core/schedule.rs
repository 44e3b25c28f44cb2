//! When periodic work runs: a fixed interval or a cron expression.
//!
//! The node's one scheduler (in its API process) asks [`Schedule`] when each
//! periodic task is next due and pushes a [`PeriodicJob`] then; a worker
//! asks whether a job it picked up is still worth running. Pure: every
//! answer is computed from times passed in (ms since the Unix epoch, UTC);
//! nothing here reads the clock.
//!
//! [`PeriodicJob`]: super::jobs::PeriodicJob

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use thiserror::Error;

use super::jobs::PeriodicTask;

/// A job younger than this is never stale, whatever its period: queue
/// latency (a worker's poll, a fetched batch) must not make a fresh job of
/// a sub-second schedule look like a backlog.
pub const STALE_AGE_MS_MIN: u64 = 1_000;

/// When a periodic task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every `period_ms`, the first run at start (or one period after it).
    Every { period_ms: u64 },
    /// At the times a cron expression names (UTC; the `cron` crate's syntax:
    /// `sec min hour day-of-month month day-of-week [year]`, or `@hourly`,
    /// `@daily`, `@weekly`, `@monthly`, `@yearly`).
    Cron(Box<cron::Schedule>),
}

/// A cron expression that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "not a cron expression ({reason}): {expression:?}; expected six or seven fields, sec min hour day-of-month month day-of-week [year], e.g. \"0 */5 * * * *\", or @hourly / @daily / @weekly / @monthly / @yearly (UTC)"
)]
pub struct ScheduleError {
    pub expression: String,
    pub reason: String,
}

impl Schedule {
    /// A fixed interval (at least 1 ms).
    pub fn every(period: Duration) -> Schedule {
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        Schedule::Every {
            period_ms: period_ms.max(1),
        }
    }

    /// A cron schedule.
    pub fn cron(expression: &str) -> Result<Schedule, ScheduleError> {
        cron::Schedule::from_str(expression.trim())
            .map(|s| Schedule::Cron(Box::new(s)))
            .map_err(|e| ScheduleError {
                expression: expression.to_owned(),
                reason: e.to_string(),
            })
    }

    /// The first run of a scheduler started at `start_ms`. An interval runs
    /// at once when `at_start` (else one period later); a cron schedule at
    /// its first time after the start. `None`: it never runs.
    pub fn first_run_ms(&self, start_ms: u64, at_start: bool) -> Option<u64> {
        match self {
            Schedule::Every { period_ms } if !at_start => start_ms.checked_add(*period_ms),
            Schedule::Every { .. } => Some(start_ms),
            Schedule::Cron(_) => self.next_after_ms(start_ms),
        }
    }

    /// The first run strictly after `after_ms`: one period later, or the
    /// cron expression's next time. `None`: it never runs again.
    pub fn next_after_ms(&self, after_ms: u64) -> Option<u64> {
        match self {
            Schedule::Every { period_ms } => after_ms.checked_add(*period_ms),
            Schedule::Cron(cron) => {
                let after: DateTime<Utc> =
                    DateTime::from_timestamp_millis(i64::try_from(after_ms).ok()?)?;
                let next = cron.after(&after).next()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }

    /// The run after the one due at `due_ms`, when the time is now `now_ms`.
    /// Runs missed while the scheduler was held up (a slow push, a
    /// suspended process) are not replayed one by one: the next run is due
    /// now, once, and the schedule continues from there (like tokio's
    /// `MissedTickBehavior::Delay`).
    pub fn next_run_ms(&self, due_ms: u64, now_ms: u64) -> Option<u64> {
        Some(self.next_after_ms(due_ms)?.max(now_ms))
    }

    /// Whether a job due at `scheduled_ms` is stale at `now_ms`: two later
    /// runs of the same schedule have come due since (a backlog left while
    /// no worker ran), and it is older than [`STALE_AGE_MS_MIN`]. A stale
    /// job is skipped: a fresher one of the same task follows it.
    pub fn is_stale(&self, scheduled_ms: u64, now_ms: u64) -> bool {
        if now_ms.saturating_sub(scheduled_ms) <= STALE_AGE_MS_MIN {
            return false;
        }
        match self
            .next_after_ms(scheduled_ms)
            .and_then(|first| self.next_after_ms(first))
        {
            Some(second_later) => now_ms > second_later,
            // No run comes after it: nothing fresher will replace it.
            None => false,
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every { period_ms } => write!(f, "every {period_ms} ms"),
            Schedule::Cron(cron) => write!(f, "cron {:?} (UTC)", cron.source()),
        }
    }
}

/// The schedule of each periodic task; a task without one is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedules(BTreeMap<PeriodicTask, Schedule>);

impl Schedules {
    /// Sets (`Some`) or switches off (`None`) the schedule of `task`.
    #[must_use]
    pub fn with(mut self, task: PeriodicTask, schedule: Option<Schedule>) -> Self {
        match schedule {
            Some(schedule) => self.0.insert(task, schedule),
            None => self.0.remove(&task),
        };
        self
    }

    pub fn get(&self, task: PeriodicTask) -> Option<&Schedule> {
        self.0.get(&task)
    }

    /// The tasks that are on, with their schedules.
    pub fn iter(&self) -> impl Iterator<Item = (PeriodicTask, &Schedule)> {
        self.0.iter().map(|(task, schedule)| (*task, schedule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-01-01T00:00:00Z.
    const T0: u64 = 1_767_225_600_000;

    #[test]
    fn an_interval_runs_at_start_or_one_period_later() {
        let s = Schedule::every(Duration::from_secs(30));
        assert_eq!(s.first_run_ms(T0, true), Some(T0));
        assert_eq!(s.first_run_ms(T0, false), Some(T0 + 30_000));
        assert_eq!(s.next_run_ms(T0, T0 + 5), Some(T0 + 30_000));
        assert_eq!(
            Schedule::every(Duration::ZERO),
            Schedule::Every { period_ms: 1 },
            "a zero period would spin"
        );
        assert_eq!(s.to_string(), "every 30000 ms");
    }

    #[test]
    fn missed_runs_are_run_once_not_replayed() {
        let s = Schedule::every(Duration::from_secs(1));
        // The scheduler was held up 10 s after a run due at T0.
        assert_eq!(s.next_run_ms(T0, T0 + 10_000), Some(T0 + 10_000));
        // It then continues one period after that catch-up run.
        assert_eq!(s.next_run_ms(T0 + 10_000, T0 + 10_001), Some(T0 + 11_000));
        let c = Schedule::cron("0 * * * * *").unwrap();
        assert_eq!(c.next_run_ms(T0, T0 + 600_500), Some(T0 + 600_500));
        assert_eq!(
            c.next_run_ms(T0 + 600_500, T0 + 600_501),
            Some(T0 + 660_000)
        );
    }

    #[test]
    fn cron_runs_at_its_times_in_utc_with_seconds() {
        let every_5_min = Schedule::cron("0 */5 * * * *").unwrap();
        assert_eq!(every_5_min.first_run_ms(T0, true), Some(T0 + 300_000));
        assert_eq!(every_5_min.next_after_ms(T0 + 1), Some(T0 + 300_000));
        assert_eq!(
            every_5_min.next_after_ms(T0 + 300_000),
            Some(T0 + 600_000),
            "strictly after"
        );
        let every_2_s = Schedule::cron("*/2 * * * * *").unwrap();
        assert_eq!(every_2_s.next_after_ms(T0 + 500), Some(T0 + 2_000));
        let daily = Schedule::cron(" @daily ").unwrap();
        assert_eq!(daily.next_after_ms(T0 + 1), Some(T0 + 86_400_000));
        // 2026-01-01 is a Thursday: the first Monday 03:30 is on the 5th.
        let weekly = Schedule::cron("0 30 3 * * Mon").unwrap();
        assert_eq!(
            weekly.next_after_ms(T0),
            Some(T0 + 4 * 86_400_000 + 3 * 3_600_000 + 30 * 60_000)
        );
        assert!(every_5_min.to_string().contains("0 */5 * * * *"));
    }

    #[test]
    fn bad_cron_expressions_are_refused_with_the_expected_form() {
        for bad in [
            "",
            "*/5 * * * *",
            "61 * * * * *",
            "every minute",
            "0 0 25 * * *",
        ] {
            let error = Schedule::cron(bad).unwrap_err();
            assert!(
                error.to_string().contains("six or seven fields"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_schedule_that_never_fires_again_says_so() {
        let past = Schedule::cron("0 0 0 1 1 * 2020").unwrap();
        assert_eq!(past.first_run_ms(T0, true), None);
        assert!(
            !past.is_stale(T0 - 1_000_000, T0),
            "no fresher run replaces it"
        );
    }

    #[test]
    fn a_job_is_stale_once_two_later_runs_came_due() {
        let s = Schedule::every(Duration::from_secs(30));
        assert!(!s.is_stale(T0, T0 + 59_000));
        assert!(!s.is_stale(T0, T0 + 60_000));
        assert!(s.is_stale(T0, T0 + 60_001));
        let c = Schedule::cron("0 */5 * * * *").unwrap();
        // Due at 00:00; the runs at 00:05 and 00:10 come after it.
        assert!(!c.is_stale(T0, T0 + 599_000));
        assert!(c.is_stale(T0, T0 + 600_001));
        // Short periods: never stale within the minimum age.
        let fast = Schedule::every(Duration::from_millis(200));
        assert!(!fast.is_stale(T0, T0 + STALE_AGE_MS_MIN));
        assert!(fast.is_stale(T0, T0 + STALE_AGE_MS_MIN + 1));
        // A clock behind the job's time is not a backlog.
        assert!(!s.is_stale(T0 + 1_000_000, T0));
    }

    #[test]
    fn schedules_name_the_tasks_that_are_on() {
        let s = Schedules::default()
            .with(
                PeriodicTask::Gc,
                Some(Schedule::every(Duration::from_secs(1))),
            )
            .with(PeriodicTask::AntiEntropy, None);
        assert!(s.get(PeriodicTask::Gc).is_some());
        assert!(s.get(PeriodicTask::AntiEntropy).is_none());
        assert_eq!(s.iter().count(), 1);
    }

    proptest! {
        #[test]
        fn runs_move_forward_and_never_fall_behind_now(
            period_ms in 1u64..100_000,
            due_offset in 0u64..1_000_000,
            late_ms in 0u64..1_000_000,
        ) {
            let s = Schedule::Every { period_ms };
            let due = T0 + due_offset;
            let now = due + late_ms;
            let next = s.next_run_ms(due, now).unwrap();
            prop_assert!(next > due, "a run is never due twice");
            prop_assert!(next >= now, "no run is due in the past");
            prop_assert!(next <= (due + period_ms).max(now), "no run is skipped further than now");
            prop_assert_eq!(s.is_stale(due, now), late_ms > STALE_AGE_MS_MIN && late_ms > 2 * period_ms);
        }

        #[test]
        fn cron_runs_are_on_whole_seconds_and_increase(
            step in 1u64..60,
            after_offset in 0u64..10_000_000,
        ) {
            let s = Schedule::cron(&format!("*/{step} * * * * *")).unwrap();
            let after = T0 + after_offset;
            let next = s.next_after_ms(after).unwrap();
            prop_assert!(next > after);
            prop_assert_eq!(next % 1_000, 0);
            prop_assert!(next - after <= 60_000);
        }
    }
}
