//! Shared library of the key-value store: the pure [`core`] and the adapters
//! that connect it to Redis ([`storage`]), to other nodes ([`peer`]) and to the
//! environment ([`config`]), driven by the [`coordinator`].

pub mod coalesce;
pub mod config;
pub mod coordinator;
pub mod core;
pub mod jobs;
pub mod mail;
pub mod maintenance;
pub mod peer;
pub mod process;
pub mod storage;

/// Constant-time equality for secrets: the time taken does not depend on
/// where the first differing byte is.
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
