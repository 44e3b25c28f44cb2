//! Conditional writes (`If-Match: <version>`, `If-None-Match: *`),
//! serialized per key by the key's primary.
//!
//! This is last-writer-wins with a referee, not consensus. Any node takes a
//! conditional write and forwards it to the first live node of the key's
//! preference list (its primary); the primary holds a per-key lock across a
//! read at the write's consistency and the write itself, so two conditional
//! writes on one key that both reach it run one after the other, and the
//! second sees the first. Guarantee, without failures: of concurrent
//! conditional writes on one key made against the same version, exactly
//! one succeeds (the others answer 412), and every acknowledged conditional
//! write is seen by the next one. When the primary changes (it fails, or a
//! partition makes two nodes each the first live one they can reach), two
//! referees can both pass the check; last-writer-wins then keeps one
//! record, and an acknowledged conditional write can be superseded by a
//! concurrent one that did not see it.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::{Mutex, MutexGuard};
use tracing::debug;

use super::{CoordError, Coordinator, WriteReport};
use crate::core::condition::Condition;
use crate::core::quorum::Consistency;
use crate::core::ring::key_position;
use crate::peer::ForwardedWrite;

/// Locks striping the keys a primary referees (bounded: keys that share a
/// stripe wait for each other, which is only slower).
pub const CONDITION_LOCK_STRIPES: usize = 1024;

/// The per-key locks of the conditional writes this node referees.
pub struct ConditionLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for ConditionLocks {
    fn default() -> Self {
        ConditionLocks {
            stripes: (0..CONDITION_LOCK_STRIPES)
                .map(|_| Mutex::new(()))
                .collect(),
        }
    }
}

impl ConditionLocks {
    async fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        // The modulo keeps the index below the stripe count, so it fits.
        let stripe = (key_position(key) % CONDITION_LOCK_STRIPES as u64) as usize;
        self.stripes[stripe].lock().await
    }
}

/// What a forwarded conditional write came back with: the referee's own
/// answer (status and JSON body), to relay as it is.
pub type Relayed = (u16, Bytes);

impl Coordinator {
    /// Sends a conditional write to the key's primary when that is another
    /// node: the first node of the preference list believed up, then the
    /// next ones if it does not answer. `None`: this node is the referee
    /// (it comes first, or none before it answered).
    pub async fn forward_conditional(
        &self,
        write: &ForwardedWrite,
        authorization: Option<&str>,
    ) -> Option<Relayed> {
        let io = &self.replicas.io;
        let replicas = self.replicas(&write.key);
        let down = io.believed_down(&replicas);
        for node in replicas.iter().filter(|n| !down.contains(n)) {
            if *node == self.cfg.node_id {
                return None;
            }
            match io
                .tracked(node, io.peers.forward_write(node, write, authorization))
                .await
            {
                Ok(answer) => return Some(answer),
                Err(error) => {
                    debug!(%node, %error, "the key's primary did not take the conditional write; trying the next");
                }
            }
        }
        None
    }

    /// Runs a conditional write here, as the key's referee: under the key's
    /// lock, reads it at `consistency`, checks `condition` against the
    /// newest record (an expired value is deleted), and writes (or
    /// deletes, `value = None`) if it holds.
    pub async fn write_if(
        self: &Arc<Self>,
        key: String,
        value: Option<Box<RawValue>>,
        ttl_s: Option<u64>,
        consistency: Consistency,
        condition: Condition,
    ) -> Result<WriteReport, CoordError> {
        let _referee = self.condition_locks.lock(&key).await;
        let read = self.read(key.clone(), consistency).await?;
        if let Err(mismatch) = condition.check(read.record.as_ref(), read.read_at_ms) {
            return Err(CoordError::PreconditionFailed {
                current: mismatch.current.map(|v| v.to_string()),
                deleted: mismatch.deleted,
            });
        }
        self.write(key, value, ttl_s, consistency).await
    }
}
