//! The live change feed of a node's API process: one task reads the
//! node's change log (a blocking read on a Redis connection of its own)
//! and broadcasts each batch to the watchers; see `core::watch`.
//!
//! Bounded: at most [`WATCHERS_MAX`] watchers, each with a buffer of
//! [`WATCH_BUFFER_BATCHES`] batches. A watcher that falls further behind
//! loses its place (the broadcast tells it so) and is disconnected; the
//! feed never waits for a watcher, so watchers never slow writes.
//!
//! While nobody watches, the feed reads only the log's newest position
//! (once per [`WATCH_IDLE_POLL_MS`], or at once when a watcher arrives),
//! not its entries: parsing every entry of a busy log was 3.7% of the
//! coordinating API's instructions under PUT load with no watcher at all.
//! The newest position is read *before* the feed looks for watchers, so a
//! watcher that subscribes meanwhile (and then reads the newest position
//! itself) never starts before the feed: nothing falls between them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast};
use tracing::{info, warn};

use crate::config::Config;
use crate::core::limits::{
    WATCH_BUFFER_BATCHES, WATCH_IDLE_POLL_MS, WATCH_POLL_BLOCK_MS, WATCH_READ_LEN, WATCHERS_MAX,
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
    /// Wakes an idle feed when a watcher arrives.
    wake: Arc<Notify>,
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
        let wake = Arc::new(Notify::new());
        let feed = Arc::new(ChangeFeed {
            tx: tx.clone(),
            watchers: Arc::new(Semaphore::new(WATCHERS_MAX)),
            wake: Arc::clone(&wake),
        });
        tokio::spawn(run(cfg, store.clone(), tx, wake));
        Some(feed)
    }

    /// A place for one more watcher (held while it watches) and its
    /// receiver, or `None` when [`WATCHERS_MAX`] are watching.
    pub fn subscribe(&self) -> Option<(OwnedSemaphorePermit, broadcast::Receiver<ChangeBatch>)> {
        let permit = Arc::clone(&self.watchers).try_acquire_owned().ok()?;
        let rx = self.tx.subscribe();
        self.wake.notify_one();
        Some((permit, rx))
    }
}

/// Reads the change log from its newest entry on, for ever, and
/// broadcasts what it reads; follows only the newest position while nobody
/// watches (see the module docs).
async fn run(
    cfg: Arc<Config>,
    store: Store,
    tx: broadcast::Sender<ChangeBatch>,
    wake: Arc<Notify>,
) {
    let mut after = loop {
        match store.change_log_bounds().await {
            Ok(bounds) => break bounds.newest.unwrap_or_default(),
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
        if tx.receiver_count() == 0 {
            // Newest position first, watchers second (see the module docs).
            match store.change_log_bounds().await {
                Ok(bounds) if tx.receiver_count() == 0 => {
                    if let Some(newest) = bounds.newest {
                        after = after.max(newest);
                    }
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(WATCH_IDLE_POLL_MS)) => {}
                    }
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    warn!(%error, "change feed: cannot read the change log; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            }
        }
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
                    // The last watcher left: nothing to read or send.
                    after = last;
                    continue;
                }
                // One read holds up to WATCH_READ_LEN entries of up to
                // CHANGE_LOG_ENTRY_LEN_MAX changes each; a batch holds at
                // most WATCH_READ_LEN changes, as each watcher's buffer
                // counts batches.
                for batch in changes.chunks(WATCH_READ_LEN) {
                    let keys: Vec<String> = batch.iter().map(|c| c.key.clone()).collect();
                    match store.get_many(&keys).await {
                        Ok(records) => {
                            if let Some(change) = batch.last() {
                                after = change.position;
                            }
                            // A watcher that left since is not an error.
                            let _ = tx.send(Arc::new(batch.iter().cloned().zip(records).collect()));
                        }
                        Err(error) => {
                            // Not advanced: the rest is read again (a
                            // watcher skips what it was sent already).
                            warn!(%error, "change feed: reading the changed records failed; retrying");
                            tokio::time::sleep(RETRY_PAUSE).await;
                            break;
                        }
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
