//! Consistency levels and the tally that decides a quorum call.
//!
//! The tally is a plain struct with no I/O: the coordinator feeds it each
//! replica's answer as it arrives and asks whether the call has succeeded,
//! can no longer succeed, or must keep waiting.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How many replicas must answer for a read or write to succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    One,
    Quorum,
    All,
}

impl Consistency {
    /// Replicas required out of `n`: one = 1, quorum = ⌊n/2⌋+1, all = n.
    /// Never more than `n`, never less than 1 (for `n` ≥ 1).
    pub fn required(self, n: usize) -> usize {
        let required = match self {
            Consistency::One => 1,
            Consistency::Quorum => n / 2 + 1,
            Consistency::All => n,
        };
        required.clamp(1, n.max(1))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::One => "one",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("consistency must be one of one, quorum, all; got {0:?}")]
pub struct ParseConsistencyError(pub String);

impl FromStr for Consistency {
    type Err = ParseConsistencyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "one" | "1" => Ok(Consistency::One),
            "quorum" => Ok(Consistency::Quorum),
            "all" => Ok(Consistency::All),
            _ => Err(ParseConsistencyError(s.chars().take(40).collect())),
        }
    }
}

/// Where a quorum call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TallyState {
    /// At least `required` replicas acknowledged.
    Reached,
    /// Too many failed: even if every outstanding replica answers, the call
    /// cannot reach `required`.
    Impossible,
    /// Still possible, not yet reached.
    Waiting,
}

/// Counts acknowledgements and failures of one quorum call.
/// `F` is what a failure records (a typed reason in the coordinator).
#[derive(Debug, Clone)]
pub struct QuorumTally<F = String> {
    required: usize,
    contacted: usize,
    acks: Vec<String>,
    failures: Vec<(String, F)>,
}

impl<F> QuorumTally<F> {
    /// A call that needs `required` acks out of `contacted` replicas.
    pub fn new(required: usize, contacted: usize) -> Self {
        QuorumTally {
            required,
            contacted,
            acks: Vec::with_capacity(contacted),
            failures: Vec::new(),
        }
    }

    pub fn ack(&mut self, node: impl Into<String>) {
        debug_assert!(self.answered() < self.contacted, "more answers than calls");
        self.acks.push(node.into());
    }

    pub fn fail(&mut self, node: impl Into<String>, reason: F) {
        debug_assert!(self.answered() < self.contacted, "more answers than calls");
        self.failures.push((node.into(), reason));
    }

    pub fn answered(&self) -> usize {
        self.acks.len() + self.failures.len()
    }

    pub fn outstanding(&self) -> usize {
        self.contacted.saturating_sub(self.answered())
    }

    pub fn required(&self) -> usize {
        self.required
    }

    pub fn acks(&self) -> &[String] {
        &self.acks
    }

    pub fn failures(&self) -> &[(String, F)] {
        &self.failures
    }

    pub fn state(&self) -> TallyState {
        if self.acks.len() >= self.required {
            TallyState::Reached
        } else if self.acks.len() + self.outstanding() < self.required {
            TallyState::Impossible
        } else {
            TallyState::Waiting
        }
    }

    /// True once every contacted replica answered.
    pub fn is_complete(&self) -> bool {
        self.outstanding() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn required_counts() {
        assert_eq!(Consistency::One.required(3), 1);
        assert_eq!(Consistency::Quorum.required(3), 2);
        assert_eq!(Consistency::Quorum.required(4), 3);
        assert_eq!(Consistency::Quorum.required(1), 1);
        assert_eq!(Consistency::All.required(3), 3);
        assert_eq!(Consistency::All.required(0), 1);
        assert_eq!(
            "QUORUM".parse::<Consistency>().unwrap(),
            Consistency::Quorum
        );
        assert!("most".parse::<Consistency>().is_err());
    }

    #[test]
    fn tally_reaches_and_fails() {
        let mut t: QuorumTally<&str> = QuorumTally::new(2, 3);
        assert_eq!(t.state(), TallyState::Waiting);
        t.fail("b", "refused");
        assert_eq!(t.state(), TallyState::Waiting);
        t.ack("a");
        assert_eq!(t.state(), TallyState::Waiting);
        t.ack("c");
        assert_eq!(t.state(), TallyState::Reached);
        assert_eq!(t.acks(), ["a", "c"]);

        let mut t: QuorumTally<&str> = QuorumTally::new(3, 3);
        t.ack("a");
        t.fail("b", "timeout");
        assert_eq!(t.state(), TallyState::Impossible);
    }

    proptest! {
        #[test]
        fn quorum_reads_and_writes_overlap(n in 1usize..10) {
            let w = Consistency::Quorum.required(n);
            let r = Consistency::Quorum.required(n);
            prop_assert!(r + w > n);
        }

        #[test]
        fn tally_state_matches_counts(required in 1usize..6, answers in proptest::collection::vec(any::<bool>(), 0..6)) {
            let contacted = answers.len().max(required);
            let mut t: QuorumTally<&str> = QuorumTally::new(required, contacted);
            for (i, ok) in answers.iter().enumerate() {
                if *ok { t.ack(format!("n{i}")) } else { t.fail(format!("n{i}"), "x") }
            }
            let acks = answers.iter().filter(|a| **a).count();
            let expected = if acks >= required {
                TallyState::Reached
            } else if acks + (contacted - answers.len()) < required {
                TallyState::Impossible
            } else {
                TallyState::Waiting
            };
            prop_assert_eq!(t.state(), expected);
        }
    }
}
