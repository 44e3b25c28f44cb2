//! The pure core of the store: everything that decides, nothing that does I/O.
//!
//! Modules here never touch the network, Redis, the wall clock or randomness.
//! Time comes in as `now_ms` arguments; adapters in the parent crate read the
//! clock and pass it down. This keeps every rule of the store (placement,
//! ordering of versions, merge, quorum counting, input limits) testable with
//! plain unit tests and `proptest`, and replayable when something goes wrong.
//!
//! - [`ring`]: consistent hashing with virtual nodes and preference lists.
//! - [`topology`]: membership as data (epochs, joins and leaves in phases) and the
//!   replica sets derived from it.
//! - [`hlc`]: the hybrid logical clock that stamps every write.
//! - [`record`]: versioned values and tombstones, and their last-writer-wins merge.
//! - [`quorum`]: consistency levels and the tally that decides a quorum call.
//! - [`plan`]: the decisions of a coordinated write and read (calls, fallbacks, outcomes).
//! - [`jobs`]: background job payloads (replication, periodic) and the retry policy.
//! - [`schedule`]: when periodic work is due (interval or cron), and when a job is stale.
//! - [`listing`]: key ranges, listing cursors and the merge of every node's page.
//! - [`limits`]: every bound the store enforces, with units in the names.
//! - [`validate`]: key and node-id checks shared by the API and the peers.
//! - [`request`]: strict parsing of client query strings and write bodies.
//! - [`status`]: what a node tells the dashboard, and its bounded request window.
//! - [`watch`]: change-log positions, watch events, and when a resumed watch missed changes.

pub mod batch;
pub mod condition;
pub mod histogram;
pub mod hlc;
pub mod jobs;
pub mod limits;
pub mod listing;
pub mod mail;
pub mod membership;
pub mod merkle;
pub mod message;
pub mod plan;
pub mod quorum;
pub mod record;
pub mod request;
pub mod ring;
pub mod ryw;
pub mod schedule;
pub mod status;
pub mod topology;
pub mod validate;
pub mod watch;
