//! Shared library of the key-value store, a one-way ladder (each rung may
//! import only the rungs below it; `scripts/check-ladder.sh` checks it):
//!
//! 0. [`core`]: pure decisions, no I/O.
//! 1. [`clock`], [`keyspace`], [`config`], [`process`]: time, Redis key names, settings.
//! 2. adapters: [`storage`] (Redis + Lua, in-memory), [`peer`] (HTTP client),
//!    [`coalesce`] (group commit), [`queue`] (apalis-redis queues), [`mail`] (SMTP).
//! 3. [`node`]: the node handle and the coordinated operations.
//! 4. [`work`]: the job functions run by workers (or the API, background sync off).

pub mod clock;
pub mod coalesce;
pub mod config;
pub mod core;
pub mod keyspace;
pub mod mail;
pub mod node;
pub mod peer;
pub mod process;
pub mod queue;
pub mod storage;
pub mod work;

/// Constant-time equality for secrets: the time taken does not depend on
/// where the first differing byte is.
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
