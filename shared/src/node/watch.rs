//! The live change feed of a node's API process: one task reads the
//! node's change log (a blocking read on a Redis connection of its own)
//! and broadcasts each batch to the watchers; see `core::watch`.
//!
//! Bounded: at most [`WATCHERS_MAX`] watchers, each with a buffer of
//! [`WATCH_BUFFER_BATCHES`] batches. A watcher that falls further behind
//! loses its place (the broadcast tells it so) and is disconnected; the
//! feed never waits for a watcher, so watchers never slow writes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tracing::{info, warn};

use crate::config::Config;
use crate::core::limits::{
    WATCH_BUFFER_BATCHES, WATCH_POLL_BLOCK_MS, WATCH_READ_LEN, WATCHERS_MAX,
};
use crate::core::record::Record;
use crate::core::watch::Change;
use crate::storage::{RedisStore, Store, connect_redis};

/// A batch of changes, each with its key's record as read just after the
/// change (at least as new), shared by every watcher: the records are read
/// once per batch, not once per watcher.
pub type ChangeBatch = Arc<Vec<(Change, Option<Record>)>>;

/// The node's change feed (see the module docs).
pub struct ChangeFeed {
    tx: broadcast::Sender<ChangeBatch>,
    watchers: Arc<Semaphore>,
}

/// How long the feed waits before reading again after a Redis error.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

impl ChangeFeed {
    /// Starts the feed of a node whose store keeps a change log; `None`
    /// when it keeps none (`KV_WATCH_LOG_LEN=0`, or the memory store).
    pub fn start(cfg: Arc<Config>, store: &Store) -> Option<Arc<ChangeFeed>> {
        if cfg.watch_log_len == 0 || !matches!(store, Store::Redis(_)) {
            return None;
        }
        let (tx, _) = broadcast::channel(WATCH_BUFFER_BATCHES);
        let feed = Arc::new(ChangeFeed {
            tx: tx.clone(),
            watchers: Arc::new(Semaphore::new(WATCHERS_MAX)),
        });
        tokio::spawn(run(cfg, store.clone(), tx));
        Some(feed)
    }

    /// A place for one more watcher (held while it watches) and its
    /// receiver, or `None` when [`WATCHERS_MAX`] are watching.
    pub fn subscribe(&self) -> Option<(OwnedSemaphorePermit, broadcast::Receiver<ChangeBatch>)> {
        let permit = Arc::clone(&self.watchers).try_acquire_owned().ok()?;
        Some((permit, self.tx.subscribe()))
    }
}

/// Reads the change log from its newest entry on, for ever, and
/// broadcasts what it reads (dropped when nobody watches).
async fn run(cfg: Arc<Config>, store: Store, tx: broadcast::Sender<ChangeBatch>) {
    let mut after = loop {
        match store.change_log_bounds().await {
            Ok((last, _)) => break last.unwrap_or_default(),
            Err(error) => {
                warn!(%error, "change feed: cannot read the change log; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    };
    let mut conn = loop {
        match connect_redis(&cfg).await {
            Ok(conn) => break conn,
            Err(error) => {
                warn!(%error, "change feed: cannot connect to Redis; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    };
    info!(node = %cfg.node_id, %after, "change feed started");
    loop {
        let read = RedisStore::wait_changes(
            &mut conn,
            &cfg.node_id,
            after,
            WATCH_POLL_BLOCK_MS,
            WATCH_READ_LEN,
        )
        .await;
        match read {
            Ok(changes) => {
                let Some(last) = changes.last().map(|c| c.position) else {
                    continue;
                };
                if tx.receiver_count() == 0 {
                    // Nobody watches: nothing to read or send.
                    after = last;
                    continue;
                }
                let keys: Vec<String> = changes.iter().map(|c| c.key.clone()).collect();
                match store.get_many(&keys).await {
                    Ok(records) => {
                        after = last;
                        // A watcher that left since is not an error.
                        let _ = tx.send(Arc::new(changes.into_iter().zip(records).collect()));
                    }
                    Err(error) => {
                        // Not advanced: the same changes are read again.
                        warn!(%error, "change feed: reading the changed records failed; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            Err(error) => {
                warn!(%error, "change feed: reading the change log failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
