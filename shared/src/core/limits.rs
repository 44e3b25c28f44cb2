//! Every bound the store enforces, in one place, with units in the names.
//!
//! Defaults here are what a node uses when the operator sets nothing; most can
//! be overridden by configuration (see `config.rs`), within the hard maxima.

/// Default largest key, in bytes of UTF-8.
pub const KEY_BYTES_MAX_DEFAULT: usize = 1024;
/// Default largest value, in bytes of its compact JSON encoding.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Room for the JSON envelope around key and value in a request body.
pub const BODY_ENVELOPE_BYTES: usize = 16 * 1024;
/// Hard ceiling on a configured value size, so a typo cannot allow 100 GB bodies.
pub const VALUE_BYTES_MAX_CEILING: usize = 64 * 1024 * 1024;
/// Deepest JSON nesting accepted in a value (serde_json also stops at 128).
pub const VALUE_DEPTH_MAX: usize = 64;
/// Distinct parameters accepted in one query string.
pub const QUERY_PARAMS_MAX: usize = 32;

/// Client connections a node holds open at once; further ones wait in the
/// listen backlog until one closes.
pub const CONNECTIONS_OPEN_MAX: usize = 8192;
/// Time a client has to send a request's headers, and how long an idle
/// keep-alive connection stays open (hyper applies one timer to both).
/// Slowloris connections are closed after it.
pub const HEADER_READ_TIMEOUT_MS: u64 = 30_000;
/// Idle time after which a pooled connection to a peer is dropped; below
/// [`HEADER_READ_TIMEOUT_MS`] so the client, not the peer, closes it.
pub const PEER_POOL_IDLE_MS: u64 = 20_000;
/// Time a client has to send a whole request body once its headers are in.
pub const BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Time in-flight requests get to finish after a shutdown signal (a request
/// whose head is still arriving counts as in flight). Under the 10 s a
/// container runtime waits before SIGKILL.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// Replication factor used when the operator sets none (capped at cluster size).
pub const REPLICATION_FACTOR_DEFAULT: usize = 3;
/// Largest cluster a node accepts in its peer list.
pub const CLUSTER_NODES_MAX: usize = 64;
/// Virtual nodes per physical node on the ring.
pub const VNODES_PER_NODE_DEFAULT: usize = 128;
/// Longest node id, in bytes.
pub const NODE_ID_BYTES_MAX: usize = 64;

/// How far ahead of our wall clock a remote version may be before we refuse it
/// (a "timestamp bomb" would otherwise freeze a key for that long).
pub const CLOCK_DRIFT_MS_MAX_DEFAULT: u64 = 60_000;

/// Snapshot page size when the client names none.
pub const SNAPSHOT_PAGE_LEN_DEFAULT: usize = 1000;
/// Largest snapshot page a client may ask for.
pub const SNAPSHOT_PAGE_LEN_MAX: usize = 10_000;
/// Records accepted in one internal apply request.
pub const APPLY_BATCH_LEN_MAX: usize = 1000;
/// Keys accepted in one internal read request.
pub const READ_BATCH_LEN_MAX: usize = 1000;

/// Timeout for connecting to a peer node.
pub const PEER_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 500;
/// Timeout for a whole request to a peer node.
pub const PEER_REQUEST_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Timeout for connecting to Redis.
pub const REDIS_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Timeout for one Redis command.
pub const REDIS_RESPONSE_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Requests served at once by one node before new ones wait.
pub const REQUESTS_IN_FLIGHT_MAX_DEFAULT: usize = 1024;
/// Background read-repair tasks in flight at once; further repairs are dropped
/// (anti-entropy catches them later) rather than queued without bound.
pub const READ_REPAIRS_IN_FLIGHT_MAX: usize = 256;
/// Bytes of records in one internal answer (`/internal/read`,
/// `/internal/buckets`), keys and values; an answer carries at least one
/// record (or leaf) whatever its size, so the asker always progresses.
pub const INTERNAL_ANSWER_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Records in one page of an anti-entropy exchange (whole leaves, so one
/// page may exceed it by the size of one leaf).
pub const SYNC_PAGE_RECORDS_MAX: usize = 5000;
/// Leaves named in one `/internal/buckets` request.
pub const SYNC_LEAVES_PER_REQUEST_MAX: usize = 4096;
/// Timeout of one anti-entropy call (hash tree or one page of records):
/// sized to the work of a bounded page on a loaded node, not to a one-key call.
pub const SYNC_CALL_TIMEOUT_MS: u64 = 30_000;
/// Tombstones examined per garbage-collection round.
pub const GC_BATCH_LEN_MAX: usize = 5000;
/// Records one local page of a snapshot or scan holds at most in bytes.
pub const SCAN_PAGE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Hints kept per owner when the operator sets none.
pub const HINTS_PER_NODE_MAX_DEFAULT: u64 = 100_000;
/// How long hints are kept for an owner that stays down (Cassandra's `max_hint_window`).
pub const HINT_WINDOW_S_DEFAULT: u64 = 3 * 3600;
/// Age a tombstone must reach before it may be collected.
pub const TOMBSTONE_GRACE_S_DEFAULT: u64 = 24 * 3600;

/// Width of one bucket of the request window a node keeps for the
/// dashboard (requests, errors and latency per bucket).
pub const REQUEST_BUCKET_MS: u64 = 10_000;
/// Buckets of the request window: with [`REQUEST_BUCKET_MS`], the last ten
/// minutes. Older buckets are overwritten in place; memory never grows.
pub const REQUEST_BUCKETS_KEPT: usize = 60;
/// Points at which the dashboard's picture of the ring is sampled.
pub const RING_ARCS_SHOWN: usize = 256;
/// Most operations in one `POST /kv/batch`.
pub const BATCH_OPS_MAX: usize = 100;
/// Most keys of one batch in flight at once (operations on one key run in
/// the batch's order, one after another).
pub const BATCH_KEYS_IN_FLIGHT_MAX: usize = 16;
/// Keys in one page of a listing when the client names no `limit`.
pub const LIST_LIMIT_DEFAULT: usize = 100;
/// Most keys in one page of a listing (and in one node's answer to it).
pub const LIST_LIMIT_MAX: usize = 1000;
/// Bytes of keys and values in one page of a listing: a page ends after
/// the item that reaches it (so it always holds at least one item).
pub const LIST_PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Changes a node keeps in its change log for watchers when the operator
/// sets no `KV_WATCH_LOG_LEN` (each entry holds a key and a version).
pub const WATCH_LOG_LEN_DEFAULT: u64 = 100_000;
/// Largest `KV_WATCH_LOG_LEN` accepted.
pub const WATCH_LOG_LEN_MAX: u64 = 10_000_000;
/// Watchers one node serves at once; more get 503 `too_many_watchers`.
pub const WATCHERS_MAX: usize = 256;
/// Change batches buffered per watcher; a watcher further behind is told
/// (`too_slow`) and disconnected, so it never holds up writes.
pub const WATCH_BUFFER_BATCHES: usize = 256;
/// How long one change-log read waits for new changes (ms): below the
/// Redis response timeout, so a blocking read is never cut short.
pub const WATCH_POLL_BLOCK_MS: u64 = 1_000;
/// How often a change feed nobody watches reads the log's newest position.
pub const WATCH_IDLE_POLL_MS: u64 = 1_000;
/// Changes read from the log per round trip (a resume, or the live feed).
pub const WATCH_READ_LEN: usize = 500;

/// Shortest time to live a write may carry, in seconds.
pub const TTL_S_MIN: u64 = 1;
/// Longest time to live a write may carry, in seconds (ten years: longer
/// is "forever", which is a write without a TTL).
pub const TTL_S_MAX: u64 = 10 * 365 * 24 * 3600;

/// How long a process waits at start for its Redis to be reachable and
/// done loading its data (a large append-only file takes seconds).
pub const REDIS_STARTUP_WAIT_MS: u64 = 60_000;
