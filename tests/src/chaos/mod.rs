//! Seeded fault injection with a recorded history and checkers afterwards
//! (in the manner of etcd's robustness tests and Jepsen).
//!
//! Five nodes, each on its own loopback address `127.0.<subnet>.1x` with its
//! own Redis (AOF, password) and worker. Clients write unique values, delete
//! and read, each operation with a timeout, and record every operation. A
//! schedule drawn from the seed injects one fault at a time and undoes it:
//! partitions (isolated node, 2|3 split, one-way, bridge) with iptables
//! rules between the nodes' addresses, SIGKILL of a node's API, of its Redis
//! or of a worker, SIGSTOP of an API, a clock offset of ±2 s, and latency
//! with loss through `tc netem`. After the last fault is undone the checkers
//! wait for the replicas to converge and read the history:
//!
//! - every acknowledged write or delete, on its own, is in the final state
//!   or superseded by a higher version that another operation of the
//!   history made (0 lost, 0 resurrected deletes);
//! - every final record comes from an operation some client attempted;
//! - no read returned a value nobody wrote;
//! - every quorum read that started after a quorum, not sloppy, write or
//!   delete of its key was acknowledged returned that version or a newer
//!   one (0 stale reads);
//! - read-your-writes rates, for strict and for sloppy quorums.
//!
//! Then one node is killed: quorum writes through the others must succeed
//! (≥ 99% after the detection window), and its hints must be delivered once
//! it returns. Optionally a wiped node restores a large data set.
//!
//! Needs root (iptables, tc). The same seed replays the same schedule.

#![allow(clippy::print_stderr)]

mod checkers;
mod clients;
mod faults;
mod history;
mod report;
mod run;
mod schedule;

pub use checkers::{Verdict, check};
pub use faults::{Net, preflight};
pub use history::{Final, Kind, Op, Outcome};
pub use report::Report;
pub use run::{chaos_options, run};
pub use schedule::{Fault, Rng, Settings, Step, schedule};
