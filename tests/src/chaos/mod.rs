//! Seeded fault injection with a recorded history and checkers afterwards
//! (in the manner of etcd's robustness tests and Jepsen).
//!
//! Five nodes, each on its own loopback address `127.0.<subnet>.1x` with its
//! own Redis (AOF with `appendfsync everysec`, password) and worker, and
//! tombstone GC running throughout (grace 5 s, a round every second, hint
//! window 2 s). Clients write unique values, delete and read, each
//! operation with a timeout, and record every operation; most operations
//! contend on three hot keys, the rest spread over 5,000 keys. A schedule
//! drawn from the seed injects one fault at a time and undoes it:
//! partitions (isolated node, 2|3 split, one-way, bridge) with iptables
//! rules between the nodes' addresses, SIGKILL of a node's API, of its Redis
//! or of a worker, SIGSTOP of an API, a clock offset of ±2 s or of ±10 min
//! (beyond the 60 s drift bound), and latency with loss through `tc netem`.
//! Every fault's time is recorded. After the last fault is undone the
//! checkers wait for the replicas to converge and read the history:
//!
//! - every acknowledged write or delete, on its own, is in the final state
//!   or superseded by a higher version that another operation of the
//!   history made (0 lost, 0 resurrected deletes; a key no replica holds is
//!   a collected tombstone);
//! - every final record comes from an operation some client attempted;
//! - no read returned a value nobody wrote;
//! - every quorum read that started after a quorum, not sloppy, write or
//!   delete of its key was acknowledged returned that version or a newer
//!   one (0 stale reads), unless the durability window of `everysec`
//!   explains it: a replica that acknowledged the write had its Redis
//!   SIGKILLed within 1.5 s after (reported separately, not failing);
//! - a write acknowledged by a node outside the preference list says it is
//!   sloppy;
//! - no write is acknowledged through a node whose clock is beyond the
//!   drift bound, and no version beyond the bound of real time is seen or
//!   kept;
//! - the replicas of every key converge;
//! - read-your-writes rates, for strict and for sloppy quorums.
//!
//! Then one node is killed: quorum writes through the others must succeed
//! (≥ 99% after the detection window), and it must hold the writes it owns
//! once it returns. Optionally a wiped node restores a large data set.
//!
//! Needs root (iptables, tc). The same seed replays the same schedule;
//! `history.txt` in the cluster's folder holds the history, the fault
//! timeline and the final records (`KV_KEEP_CLUSTER=1` keeps the folder,
//! `CHAOS_RUST_LOG=info` makes the nodes' logs talk).

#![allow(clippy::print_stderr)]

mod checkers;
mod clients;
mod faults;
mod history;
mod moves;
mod report;
mod run;
mod schedule;

pub use checkers::{Context, EVERYSEC_LOSS_WINDOW_MS, Verdict, check};
pub use faults::{Net, preflight};
pub use history::{FaultEvent, Final, Kind, Op, Outcome};
pub use report::Report;
pub use run::{HINT_WINDOW_S, TOMBSTONE_GRACE_S, chaos_options, run};
pub use schedule::{CLOCK_DRIFT_MS_MAX, Fault, Rng, SKEW_OFFSETS_MS, Settings, Step, schedule};
