//! What the clients recorded, and the replicas' final records.

use shared::core::quorum::Consistency;
use shared::core::record::Version;

use super::schedule::Fault;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Write,
    Delete,
    Read,
}

/// How an operation ended, as the client can know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (or, for a read, answered).
    Ok,
    /// Known not to have taken effect (refused before it was sent, or a 4xx).
    Fail,
    /// May or may not have taken effect (timeout, 503, connection lost).
    Unknown,
}

/// One client operation.
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub kind: Kind,
    pub key: String,
    /// The value written, or the value a read returned (`None`: not found).
    pub value: Option<String>,
    pub outcome: Outcome,
    pub status: u16,
    /// Milliseconds from the start of the run.
    pub start_ms: u64,
    pub end_ms: u64,
    pub version: Option<Version>,
    pub acks: Vec<String>,
    /// The key's preference list, as a write's answer names it (empty for
    /// a read or an answer without it).
    pub replicas: Vec<String>,
    /// The write counted a fallback node outside the preference list toward
    /// W (sloppy quorum). Always false for a read (reads ask replicas only).
    pub sloppy: bool,
    /// The level the client asked for (`?consistency=`).
    pub consistency: Consistency,
    pub node: usize,
}

/// A replica's record at the end: version and value (`None` = tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Final {
    pub version: Version,
    pub value: Option<String>,
}

impl PartialOrd for Final {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Final {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.version, &self.value).cmp(&(&other.version, &other.value))
    }
}

/// One fault injected or undone, when (ms from the start of the run, the
/// clock of [`Op::start_ms`]), so the checkers can weigh what a fault could
/// have done to the operations around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    pub at_ms: u64,
    pub fault: Fault,
    /// False when injected, true when undone.
    pub undone: bool,
}
