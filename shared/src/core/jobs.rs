//! Background job payloads and the retry policy. Pure data and arithmetic.
//!
//! Jobs are JSON on a Redis-backed queue; a job may be delivered more than
//! once (at-least-once queue, worker crashes), so every job is safe to replay:
//! a replication job applies records with the last-writer-wins merge, which
//! is idempotent.

use serde::{Deserialize, Serialize};

use super::message::KeyedRecord;

/// Deliver records to one replica that did not acknowledge a write in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateJob {
    /// The node the records are for.
    pub target: String,
    pub records: Vec<KeyedRecord>,
    /// Runs already made (0 for a new job).
    pub attempt: u32,
    /// When the write was coordinated (ms since the epoch), for replication lag.
    pub created_ms: u64,
}

/// How a worker reads a job: a payload it cannot decode (a bug, or a job
/// left by another version) becomes `Invalid` and is dead-lettered, instead
/// of failing the queue's decoder and stopping the worker on every poll.
/// Serialised like the job itself.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Lenient<T> {
    Valid(T),
    Invalid(serde_json::Value),
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through the raw text, not serde's buffered `Content` (which is
        // what `#[serde(untagged)]` would use): records hold `RawValue`s,
        // which only deserialize straight from JSON text.
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        Ok(match serde_json::from_str::<T>(raw.get()) {
            Ok(job) => Lenient::Valid(job),
            Err(_) => Lenient::Invalid(
                serde_json::from_str(raw.get())
                    .unwrap_or_else(|_| serde_json::Value::String(raw.get().to_owned())),
            ),
        })
    }
}

/// One record waiting to be replicated to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReplication {
    pub target: String,
    pub record: KeyedRecord,
    pub created_ms: u64,
}

/// Records in one replication job.
pub const REPLICATE_BATCH_RECORDS_MAX: usize = 500;
/// Approximate bytes of records in one replication job (a single larger
/// record still travels, alone).
pub const REPLICATE_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

fn approx_bytes(record: &KeyedRecord) -> usize {
    record.key.len() + record.record.value.as_ref().map_or(0, |v| v.get().len()) + 48
}

/// Groups pending replications into jobs: one per target (in order of first
/// appearance), each within the record and byte bounds. Returns, for every
/// input item, the index of the job that carries it.
pub fn group_into_jobs(items: &[PendingReplication]) -> (Vec<ReplicateJob>, Vec<usize>) {
    let mut jobs: Vec<ReplicateJob> = Vec::new();
    let mut bytes: Vec<usize> = Vec::new();
    let mut open: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut placement = Vec::with_capacity(items.len());
    for item in items {
        let size = approx_bytes(&item.record);
        let fits = open.get(item.target.as_str()).copied().filter(|&j| {
            jobs[j].records.len() < REPLICATE_BATCH_RECORDS_MAX
                && bytes[j] + size <= REPLICATE_BATCH_BYTES_MAX
        });
        let j = match fits {
            Some(j) => j,
            None => {
                jobs.push(ReplicateJob {
                    target: item.target.clone(),
                    records: Vec::new(),
                    attempt: 0,
                    created_ms: item.created_ms,
                });
                bytes.push(0);
                open.insert(item.target.as_str(), jobs.len() - 1);
                jobs.len() - 1
            }
        };
        jobs[j].records.push(item.record.clone());
        jobs[j].created_ms = jobs[j].created_ms.min(item.created_ms);
        bytes[j] += size;
        placement.push(j);
    }
    (jobs, placement)
}

/// The periodic work of a node, each run as a [`PeriodicJob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodicTask {
    /// Probe every node, record `node_status:<node>` (seed IV).
    Heartbeat,
    /// Offer kept hints to their owners.
    HintDelivery,
    /// Compare hash trees with every peer and pull what differs.
    AntiEntropy,
    /// Collect tombstones every replica holds past the grace.
    Gc,
}

impl PeriodicTask {
    pub const ALL: [PeriodicTask; 4] = [
        PeriodicTask::Heartbeat,
        PeriodicTask::HintDelivery,
        PeriodicTask::AntiEntropy,
        PeriodicTask::Gc,
    ];

    /// The task's name in jobs, leases and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodicTask::Heartbeat => "heartbeat",
            PeriodicTask::HintDelivery => "hint_delivery",
            PeriodicTask::AntiEntropy => "anti_entropy",
            PeriodicTask::Gc => "gc",
        }
    }

    /// Whether an interval schedule runs the task at start. Anti-entropy
    /// waits one interval: a starting node restores itself anyway.
    pub fn runs_at_start(self) -> bool {
        !matches!(self, PeriodicTask::AntiEntropy)
    }
}

impl std::fmt::Display for PeriodicTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run of a periodic task, pushed by the node's scheduler when due.
/// Replaying it is safe: every periodic task is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodicJob {
    pub task: PeriodicTask,
    /// When the run was due (ms since the epoch); a worker skips a job that
    /// is stale by then (see `core::schedule::Schedule::is_stale`).
    pub scheduled_ms: u64,
}

/// A job that ran out of attempts, kept in the node's dead-letter list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub queue: String,
    pub reason: String,
    pub attempts: u32,
    pub failed_ms: u64,
    pub job: serde_json::Value,
}

/// How failed jobs are retried: capped exponential backoff, bounded attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs in total before the job is dead-lettered (at least 1).
    pub attempts_max: u32,
    /// Delay before the first retry.
    pub backoff_base_ms: u64,
    /// Largest delay between two runs.
    pub backoff_max_ms: u64,
}

/// What to do after a run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run again after this delay, as attempt number `attempt` (1-based count of runs made).
    RetryAfter { delay_ms: u64, attempt: u32 },
    /// Out of attempts: dead-letter it.
    GiveUp,
}

impl RetryPolicy {
    /// `runs_made` counts the run that just failed (1 after the first run).
    pub fn after_failure(&self, runs_made: u32) -> RetryDecision {
        if runs_made >= self.attempts_max.max(1) {
            return RetryDecision::GiveUp;
        }
        let exponent = runs_made.saturating_sub(1).min(32);
        let delay_ms = self
            .backoff_base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.backoff_max_ms);
        RetryDecision::RetryAfter {
            delay_ms,
            attempt: runs_made,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pending(target: &str, key: &str, len: usize, created_ms: u64) -> PendingReplication {
        let record = crate::core::record::Record::value(
            crate::core::record::Version::new(crate::core::hlc::Timestamp::new(1, 0), "n1"),
            serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(len))).unwrap(),
        );
        PendingReplication {
            target: target.into(),
            record: KeyedRecord {
                key: key.into(),
                record,
            },
            created_ms,
        }
    }

    #[test]
    fn replications_group_by_target_within_bounds() {
        let items = vec![
            pending("a", "1", 1, 5),
            pending("b", "2", 1, 3),
            pending("a", "3", 1, 1),
        ];
        let (jobs, placement) = group_into_jobs(&items);
        assert_eq!(jobs.len(), 2);
        assert_eq!(placement, vec![0, 1, 0]);
        assert_eq!(jobs[0].records.len(), 2);
        assert_eq!(jobs[0].created_ms, 1, "lag counts from the oldest write");
        // The byte bound splits a target's records; a huge record travels alone.
        let big = REPLICATE_BATCH_BYTES_MAX / 2;
        let items = vec![
            pending("a", "1", big, 0),
            pending("a", "2", big, 0),
            pending("a", "3", 10, 0),
        ];
        let (jobs, placement) = group_into_jobs(&items);
        assert_eq!(jobs.len(), 2);
        assert_eq!(placement, vec![0, 1, 1]);
    }

    proptest! {
        #[test]
        fn grouping_keeps_every_record_once(targets in proptest::collection::vec(0u8..4, 0..1200)) {
            let items: Vec<PendingReplication> = targets.iter().enumerate()
                .map(|(i, t)| pending(&format!("n{t}"), &i.to_string(), 1, i as u64)).collect();
            let (jobs, placement) = group_into_jobs(&items);
            prop_assert_eq!(jobs.iter().map(|j| j.records.len()).sum::<usize>(), items.len());
            for (i, j) in placement.iter().enumerate() {
                prop_assert_eq!(&jobs[*j].target, &items[i].target);
                prop_assert!(jobs[*j].records.iter().any(|r| r.key == items[i].record.key));
            }
            prop_assert!(jobs.iter().all(|j| j.records.len() <= REPLICATE_BATCH_RECORDS_MAX));
        }
    }

    #[test]
    fn periodic_jobs_name_their_task() {
        let job = PeriodicJob {
            task: PeriodicTask::HintDelivery,
            scheduled_ms: 7,
        };
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(json, r#"{"task":"hint_delivery","scheduled_ms":7}"#);
        assert_eq!(serde_json::from_str::<PeriodicJob>(&json).unwrap(), job);
        for task in PeriodicTask::ALL {
            assert_eq!(
                serde_json::to_value(task).unwrap(),
                serde_json::Value::String(task.as_str().to_owned())
            );
        }
        assert!(matches!(
            serde_json::from_str::<Lenient<PeriodicJob>>(r#"{"task":"nap","scheduled_ms":1}"#),
            Ok(Lenient::Invalid(_))
        ));
    }

    #[test]
    fn undecodable_jobs_are_kept_not_fatal() {
        let good = ReplicateJob {
            target: "n2".into(),
            records: vec![],
            attempt: 1,
            created_ms: 5,
        };
        let json = serde_json::to_string(&good).unwrap();
        assert!(
            matches!(serde_json::from_str::<Lenient<ReplicateJob>>(&json).unwrap(), Lenient::Valid(j) if j == good)
        );
        let bad = serde_json::from_str::<Lenient<ReplicateJob>>(r#"{"target": 3}"#).unwrap();
        assert!(matches!(bad, Lenient::Invalid(_)));
        assert_eq!(
            serde_json::to_string(&Lenient::Valid(good)).unwrap(),
            json,
            "same wire format"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let p = RetryPolicy {
            attempts_max: 5,
            backoff_base_ms: 1_000,
            backoff_max_ms: 5_000,
        };
        let delays: Vec<RetryDecision> = (1..=5).map(|n| p.after_failure(n)).collect();
        assert_eq!(
            delays,
            vec![
                RetryDecision::RetryAfter {
                    delay_ms: 1_000,
                    attempt: 1
                },
                RetryDecision::RetryAfter {
                    delay_ms: 2_000,
                    attempt: 2
                },
                RetryDecision::RetryAfter {
                    delay_ms: 4_000,
                    attempt: 3
                },
                RetryDecision::RetryAfter {
                    delay_ms: 5_000,
                    attempt: 4
                },
                RetryDecision::GiveUp,
            ]
        );
    }

    proptest! {
        #[test]
        fn attempts_are_bounded_and_delays_capped(max in 0u32..50, base in 0u64..10_000, cap in 0u64..100_000) {
            let p = RetryPolicy { attempts_max: max, backoff_base_ms: base, backoff_max_ms: cap };
            let mut runs = 0;
            loop {
                runs += 1;
                match p.after_failure(runs) {
                    RetryDecision::GiveUp => break,
                    RetryDecision::RetryAfter { delay_ms, .. } => prop_assert!(delay_ms <= cap),
                }
                prop_assert!(runs < 60);
            }
            prop_assert_eq!(runs, max.max(1));
        }
    }
}
