//! The job functions: what a worker (or, background sync off, the API
//! process) does with each job, over the node handle.
//!
//! - [`replicate`]: deliver records to a replica; retry or dead-letter.
//! - [`mail`]: send a notification (deduplicated, rate-bound into digests).
//! - [`heartbeat`]: probe every node, record `node_status:*` (seed IV).
//! - [`periodic`]: the node's scheduler of periodic work (heartbeat, hint
//!   delivery, anti-entropy, GC) and the job function that runs one round.

pub mod heartbeat;
pub mod mail;
pub mod periodic;
pub mod replicate;
