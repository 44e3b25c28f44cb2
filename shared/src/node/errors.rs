//! The details of the coordinated failures a client is told about (503s),
//! written once: [`super::CoordError`] boxes them, and the API renders the
//! same structs into its JSON answers.

use thiserror::Error;

use super::{HintPlacement, NodeFailure};
use crate::core::quorum::Consistency;

/// Not enough replicas answered an operation at its consistency level.
#[derive(Debug, Clone, Error)]
#[error(
    "{operation} at consistency {consistency} needs {required} of {replicas:?}; only {answered:?} answered"
)]
pub struct Unavailable {
    /// `read` or `write`.
    pub operation: &'static str,
    pub consistency: Consistency,
    pub required: usize,
    pub replicas: Vec<String>,
    pub answered: Vec<String>,
    pub failed: Vec<NodeFailure>,
    /// A write only: where the value was nevertheless stored, queued or
    /// hinted (there is no rollback), so it may still appear.
    pub stored_on: Vec<String>,
    pub queued_for: Vec<String>,
    pub hinted_for: Vec<HintPlacement>,
}

/// A replica kept a newer version after every re-stamp: acknowledging
/// would report a write that reads will not return.
#[derive(Debug, Clone, Error)]
#[error("write {version} is shadowed by a newer version on {holder}")]
pub struct Shadowed {
    pub version: String,
    pub holder: String,
    pub stored_on: Vec<String>,
}
