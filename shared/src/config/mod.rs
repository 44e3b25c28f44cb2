//! Node configuration from environment variables (and a `.env` file, loaded by
//! the binaries before this runs).
//!
//! Every variable is optional except where noted; a bad value stops the
//! process at start with one line naming the variable. The seed's names
//! (`REDIS_HOST`, `REDIS_PORT`, `EMAIL_*`) keep working.
//!
//! - `env.rs`: reading and parsing one variable (numbers, booleans, the peer
//!   list) and the error naming it; URL encoding and redaction.
//! - `email.rs`: the SMTP settings, [`EmailConfig`] and [`TlsMode`].
//!
//! This file reads every node setting into [`Config`] and checks the rules
//! between settings.

mod email;
mod env;
mod tls;

#[cfg(test)]
mod tests;

pub use email::{EmailConfig, TlsMode};
pub use env::parse_peers;
pub use tls::{ClientAuth, RedisTlsSettings, TlsSettings, install_default_provider};

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use thiserror::Error;

use crate::core::jobs::PeriodicTask;
use crate::core::limits::{
    BODY_ENVELOPE_BYTES, CLOCK_DRIFT_MS_MAX_DEFAULT, HINT_WINDOW_S_DEFAULT,
    HINTS_PER_NODE_MAX_DEFAULT, KEY_BYTES_MAX_DEFAULT, PEER_CONNECT_TIMEOUT_MS_DEFAULT,
    PEER_REQUEST_TIMEOUT_MS_DEFAULT, REDIS_CONNECT_TIMEOUT_MS_DEFAULT,
    REDIS_RESPONSE_TIMEOUT_MS_DEFAULT, REPLICATION_FACTOR_DEFAULT, REQUESTS_IN_FLIGHT_MAX_DEFAULT,
    TOMBSTONE_GRACE_S_DEFAULT, VALUE_BYTES_MAX_CEILING, VALUE_BYTES_MAX_DEFAULT,
    VNODES_PER_NODE_DEFAULT, WATCH_LOG_LEN_DEFAULT, WATCH_LOG_LEN_MAX,
};
use crate::core::quorum::Consistency;
use crate::core::schedule::Schedules;
use crate::core::validate::validate_node_id;
use env::{err, parse_bool, parse_or, parse_schedule, percent_encode, redact_url};

/// A configuration problem, naming the variable at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

/// Everything a node (API or worker) needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// `KV_NODE_ID`: this node's id (default `node1`).
    pub node_id: String,
    /// `KV_LISTEN`: address the API binds (default `127.0.0.1:8001`).
    pub listen: SocketAddr,
    /// `KV_PEERS`: every node of the cluster, this one included, as
    /// `id=http://host:port,...` (default: this node alone). The seed of
    /// the topology at a node's first start only: afterwards the topology
    /// kept in Redis, and the peers', decide (see `core::topology`). With
    /// `KV_JOIN`, the nodes of the running cluster to learn it from.
    pub nodes: BTreeMap<String, String>,
    /// `KV_JOIN` (default off): this node starts outside the cluster and
    /// holds no data until an admin adds it (`POST /cluster/members`).
    pub join: bool,
    /// `KV_MOVE_BYTES_PER_S` (default 67108864; 0 = unbounded): how fast a
    /// node pulls its share during a membership change.
    pub move_bytes_per_s: Option<u64>,
    /// `KV_CHANGE_RESUME_AFTER_S` (default 60; 0 = never): a change that
    /// stays at one epoch this long with no node driving it is resumed.
    pub change_resume_after: Option<Duration>,
    /// `KV_REPLICATION_FACTOR`: N (default 3); a ring of fewer nodes holds
    /// each key on all of them.
    pub replication_factor: usize,
    /// `KV_READ_CONSISTENCY` (default quorum).
    pub read_consistency: Consistency,
    /// `KV_WRITE_CONSISTENCY` (default quorum).
    pub write_consistency: Consistency,
    /// `REDIS_URL`, or `REDIS_HOST` + `REDIS_PORT` (+ `REDIS_DB`).
    pub redis_url: String,
    /// `KV_CLUSTER_SECRET`: shared by all nodes; guards `/internal/*`.
    pub cluster_secret: Secret,
    /// True when no secret was configured and the development default is used.
    pub cluster_secret_is_default: bool,
    /// `KV_API_TOKEN`: when set, clients must send `Authorization: Bearer <token>`.
    pub api_token: Option<Secret>,
    /// `KV_ADMIN_TOKEN`: when set, `Authorization: Bearer <token>` is
    /// accepted on the membership routes in place of the cluster secret, so
    /// operators need not hold the secret every node shares.
    pub admin_token: Option<Secret>,
    /// `KV_TLS_*`: HTTPS for the API and between nodes (see `config::tls`).
    pub tls: TlsSettings,
    /// `KV_REDIS_TLS_*`: the certificates of a `rediss://` connection.
    pub redis_tls: RedisTlsSettings,
    /// `KV_KEY_BYTES_MAX` (default 1024).
    pub key_bytes_max: usize,
    /// `KV_VALUE_BYTES_MAX` (default 1 MiB).
    pub value_bytes_max: usize,
    /// `KV_VNODES` (default 128). Must be equal on every node.
    pub vnodes: usize,
    /// `KV_CLOCK_DRIFT_MS_MAX` (default 60000): remote versions further ahead are refused.
    pub clock_drift_ms_max: u64,
    /// `KV_PEER_CONNECT_TIMEOUT_MS` (default 500).
    pub peer_connect_timeout: Duration,
    /// `KV_PEER_TIMEOUT_MS` (default 2000): whole request to a peer.
    pub peer_request_timeout: Duration,
    /// `KV_REDIS_CONNECT_TIMEOUT_MS` (default 1000).
    pub redis_connect_timeout: Duration,
    /// `KV_REDIS_TIMEOUT_MS` (default 2000): one Redis command.
    pub redis_response_timeout: Duration,
    /// `KV_HEARTBEAT_INTERVAL_S` (default 30, as in the seed). Like the
    /// other `*_INTERVAL_*` fields, the variable as given: what runs is
    /// [`Config::schedules`], where a `KV_*_SCHEDULE` replaces it.
    pub heartbeat_interval: Duration,
    /// `KV_PROBE_INTERVAL_MS` (default 1000): how often the API probes every
    /// peer, so routing learns of a dead or recovered peer within about that.
    pub probe_interval: Duration,
    /// `KV_BACKGROUND_SYNC` (default on).
    pub background_sync: bool,
    /// `KV_JOB_ATTEMPTS_MAX` (default 8): runs of a background job before it is dead-lettered.
    pub job_attempts_max: u32,
    /// `KV_JOB_BACKOFF_BASE_MS` (default 1000): delay before the first retry; doubles each run.
    pub job_backoff_base: Duration,
    /// `KV_JOB_BACKOFF_MAX_MS` (default 30000): largest delay between runs.
    pub job_backoff_max: Duration,
    /// `KV_WORKER_CONCURRENCY` (default 8): jobs one worker process runs at once, per queue.
    pub worker_concurrency: usize,
    /// `KV_HINTS_PER_NODE_MAX` (default 100000): hints kept per unreachable owner.
    pub hints_per_node_max: u64,
    /// `KV_WATCH_LOG_LEN` (default 100000; 0 = no change log, no watch):
    /// changes a node keeps for watchers to resume from.
    pub watch_log_len: u64,
    /// `KV_HINT_WINDOW_S` (default 10800): hints stop being kept for an owner down longer.
    pub hint_window: Duration,
    /// `KV_HINT_DELIVERY_INTERVAL_MS` (default 1000): how often kept hints are offered to their owners.
    pub hint_delivery_interval: Duration,
    /// `KV_ANTI_ENTROPY_INTERVAL_S` (default 60; 0 = off): periodic hash-tree sync with every peer.
    pub anti_entropy_interval: Option<Duration>,
    /// `KV_TOMBSTONE_GRACE_S` (default 86400): age before a tombstone may be collected.
    pub tombstone_grace: Duration,
    /// `KV_GC_INTERVAL_S` (default 300; 0 = off): how often tombstones are collected.
    pub gc_interval: Option<Duration>,
    /// When each periodic task runs: its interval above, or the cron
    /// expression of `KV_HEARTBEAT_SCHEDULE`, `KV_HINT_DELIVERY_SCHEDULE`,
    /// `KV_ANTI_ENTROPY_SCHEDULE`, `KV_GC_SCHEDULE` when set.
    pub schedules: Schedules,
    /// SMTP notifications; `None` when `EMAIL_HOST` is not set.
    pub email: Option<EmailConfig>,
    /// `KV_RESTORE_ON_START` (default on): pull missing data from peers at start.
    pub restore_on_start: bool,
    /// `KV_REQUESTS_IN_FLIGHT_MAX` (default 1024).
    pub requests_in_flight_max: usize,
    /// `KV_PEER_SOURCE_ADDR`: local IP that calls to peers are made from
    /// (default: chosen by the OS). Lets a host with several addresses, or a
    /// test cluster on 127.0.0.x, keep node-to-node traffic on the node's own address.
    pub peer_source_addr: Option<IpAddr>,
    /// `KV_QUEUE_JOBS_MAX` (default 100000): jobs the replication and e-mail
    /// queues may hold before new ones are refused (a refused replication
    /// becomes a hint).
    pub queue_jobs_max: u64,
    /// `KV_CLOCK_OFFSET_MS` (default 0): added to the system clock. A fault
    /// injection setting for tests of clock skew; leave it 0 in production.
    pub clock_offset_ms: i64,
    /// `KV_LOG_FORMAT` (default `text`): `text` for people, `json` (one
    /// object per line) for log collectors.
    pub log_format: LogFormat,
}

/// How a process writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret string: never shown by `Debug` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The development secret used when none is configured (logged as a warning).
pub const CLUSTER_SECRET_DEFAULT: &str = "kv-dev-cluster-secret";

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup` (a test passes a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let node_id = get("KV_NODE_ID").unwrap_or_else(|| "node1".to_owned());
        validate_node_id(&node_id).map_err(|e| err("KV_NODE_ID", e.to_string()))?;

        let listen = match get("KV_LISTEN") {
            Some(v) => v.parse::<SocketAddr>().map_err(|_| {
                err(
                    "KV_LISTEN",
                    format!("must be host:port like 127.0.0.1:8001, got {v:?}"),
                )
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8001)),
        };

        let tls = TlsSettings::from_lookup(&get)?;
        let nodes = match get("KV_PEERS") {
            Some(v) => parse_peers(&v)?,
            None => {
                let scheme = if tls.serves_tls() { "https" } else { "http" };
                BTreeMap::from([(node_id.clone(), format!("{scheme}://{listen}"))])
            }
        };
        if let Some(own) = nodes.get(&node_id) {
            match (tls.serves_tls(), own.starts_with("https://")) {
                (true, false) => {
                    return Err(err(
                        "KV_PEERS",
                        format!(
                            "this node serves TLS (KV_TLS_CERT is set): its URL must be https://, got {own:?}"
                        ),
                    ));
                }
                (false, true) => {
                    return Err(err(
                        "KV_PEERS",
                        format!(
                            "this node's URL {own:?} is https://: set KV_TLS_CERT and KV_TLS_KEY"
                        ),
                    ));
                }
                _ => {}
            }
        }
        let join = parse_bool(&get, "KV_JOIN", false)?;
        if !join && !nodes.contains_key(&node_id) {
            return Err(err(
                "KV_PEERS",
                format!("must list this node's own id {node_id:?} with its URL"),
            ));
        }

        let replication_factor: usize =
            parse_or(&get, "KV_REPLICATION_FACTOR", REPLICATION_FACTOR_DEFAULT)?;
        if replication_factor == 0 {
            return Err(err("KV_REPLICATION_FACTOR", "must be at least 1"));
        }
        // Not capped by KV_PEERS' length: each ring caps it at its size
        // where it is used, and the cluster may grow.

        let read_consistency = parse_or(&get, "KV_READ_CONSISTENCY", Consistency::Quorum)?;
        let write_consistency = parse_or(&get, "KV_WRITE_CONSISTENCY", Consistency::Quorum)?;

        let redis_url = match get("REDIS_URL") {
            Some(url) => {
                if !["redis://", "rediss://", "unix://"]
                    .iter()
                    .any(|scheme| url.starts_with(scheme))
                {
                    return Err(err(
                        "REDIS_URL",
                        "must start with redis://, rediss:// (TLS) or unix://",
                    ));
                }
                url
            }
            None => {
                let host = get("REDIS_HOST").unwrap_or_else(|| "127.0.0.1".to_owned());
                let port: u16 = parse_or(&get, "REDIS_PORT", 6379)?;
                let db: u32 = parse_or(&get, "REDIS_DB", 0)?;
                match get("REDIS_PASSWORD") {
                    Some(pw) if !pw.is_empty() => {
                        format!("redis://:{}@{host}:{port}/{db}", percent_encode(&pw))
                    }
                    _ => format!("redis://{host}:{port}/{db}"),
                }
            }
        };

        let (cluster_secret, cluster_secret_is_default) = match get("KV_CLUSTER_SECRET") {
            Some(secret) if secret.len() < 8 => {
                return Err(err("KV_CLUSTER_SECRET", "must be at least 8 characters"));
            }
            Some(secret) => (Secret(secret), false),
            None => (Secret(CLUSTER_SECRET_DEFAULT.to_owned()), true),
        };
        let api_token = get("KV_API_TOKEN").map(Secret);
        let admin_token = match get("KV_ADMIN_TOKEN") {
            Some(token) if token.len() < 16 => {
                return Err(err("KV_ADMIN_TOKEN", "must be at least 16 characters"));
            }
            Some(token) if token == cluster_secret.0 => {
                return Err(err(
                    "KV_ADMIN_TOKEN",
                    "must differ from KV_CLUSTER_SECRET (it exists so operators need not hold the secret)",
                ));
            }
            token => token.map(Secret),
        };
        let redis_tls = RedisTlsSettings::from_lookup(&get)?;

        let key_bytes_max = parse_or(&get, "KV_KEY_BYTES_MAX", KEY_BYTES_MAX_DEFAULT)?;
        if key_bytes_max == 0 || key_bytes_max > 64 * 1024 {
            return Err(err("KV_KEY_BYTES_MAX", "must be between 1 and 65536"));
        }
        let value_bytes_max = parse_or(&get, "KV_VALUE_BYTES_MAX", VALUE_BYTES_MAX_DEFAULT)?;
        if value_bytes_max == 0 || value_bytes_max > VALUE_BYTES_MAX_CEILING {
            return Err(err(
                "KV_VALUE_BYTES_MAX",
                format!("must be between 1 and {VALUE_BYTES_MAX_CEILING}"),
            ));
        }
        let vnodes = parse_or(&get, "KV_VNODES", VNODES_PER_NODE_DEFAULT)?;
        if vnodes == 0 || vnodes > 4096 {
            return Err(err("KV_VNODES", "must be between 1 and 4096"));
        }
        let clock_drift_ms_max =
            parse_or(&get, "KV_CLOCK_DRIFT_MS_MAX", CLOCK_DRIFT_MS_MAX_DEFAULT)?;

        let millis = |var: &'static str, default: u64| -> Result<Duration, ConfigError> {
            let ms: u64 = parse_or(&get, var, default)?;
            if ms == 0 || ms > 600_000 {
                return Err(err(var, "must be between 1 and 600000 milliseconds"));
            }
            Ok(Duration::from_millis(ms))
        };
        let peer_connect_timeout = millis(
            "KV_PEER_CONNECT_TIMEOUT_MS",
            PEER_CONNECT_TIMEOUT_MS_DEFAULT,
        )?;
        let peer_request_timeout = millis("KV_PEER_TIMEOUT_MS", PEER_REQUEST_TIMEOUT_MS_DEFAULT)?;
        let redis_connect_timeout = millis(
            "KV_REDIS_CONNECT_TIMEOUT_MS",
            REDIS_CONNECT_TIMEOUT_MS_DEFAULT,
        )?;
        let redis_response_timeout =
            millis("KV_REDIS_TIMEOUT_MS", REDIS_RESPONSE_TIMEOUT_MS_DEFAULT)?;

        let heartbeat_s: f64 = parse_or(&get, "KV_HEARTBEAT_INTERVAL_S", 30.0)?;
        if !(0.05..=3600.0).contains(&heartbeat_s) {
            return Err(err(
                "KV_HEARTBEAT_INTERVAL_S",
                "must be between 0.05 and 3600 seconds",
            ));
        }

        let probe_interval = millis("KV_PROBE_INTERVAL_MS", 1_000)?;
        let background_sync = parse_bool(&get, "KV_BACKGROUND_SYNC", true)?;
        let job_attempts_max: u32 = parse_or(&get, "KV_JOB_ATTEMPTS_MAX", 8)?;
        if !(1..=100).contains(&job_attempts_max) {
            return Err(err("KV_JOB_ATTEMPTS_MAX", "must be between 1 and 100"));
        }
        let job_backoff_base = millis("KV_JOB_BACKOFF_BASE_MS", 1_000)?;
        let job_backoff_max = millis("KV_JOB_BACKOFF_MAX_MS", 30_000)?;
        let worker_concurrency: usize = parse_or(&get, "KV_WORKER_CONCURRENCY", 8)?;
        if !(1..=1024).contains(&worker_concurrency) {
            return Err(err("KV_WORKER_CONCURRENCY", "must be between 1 and 1024"));
        }
        let hints_per_node_max: u64 =
            parse_or(&get, "KV_HINTS_PER_NODE_MAX", HINTS_PER_NODE_MAX_DEFAULT)?;
        let watch_log_len: u64 = parse_or(&get, "KV_WATCH_LOG_LEN", WATCH_LOG_LEN_DEFAULT)?;
        if watch_log_len > WATCH_LOG_LEN_MAX {
            return Err(err(
                "KV_WATCH_LOG_LEN",
                format!("must be at most {WATCH_LOG_LEN_MAX}"),
            ));
        }
        let hint_window_s: f64 = parse_or(&get, "KV_HINT_WINDOW_S", HINT_WINDOW_S_DEFAULT as f64)?;
        if !(0.0..=30.0 * 86400.0).contains(&hint_window_s) {
            return Err(err(
                "KV_HINT_WINDOW_S",
                "must be between 0 and 2592000 seconds",
            ));
        }
        let hint_delivery_interval = millis("KV_HINT_DELIVERY_INTERVAL_MS", 1_000)?;
        let seconds_or_off =
            |var: &'static str, default: f64| -> Result<Option<Duration>, ConfigError> {
                let s: f64 = parse_or(&get, var, default)?;
                if !(0.0..=86400.0 * 30.0).contains(&s) {
                    return Err(err(var, "must be between 0 (off) and 2592000 seconds"));
                }
                Ok((s > 0.0).then(|| Duration::from_secs_f64(s)))
            };
        let anti_entropy_interval = seconds_or_off("KV_ANTI_ENTROPY_INTERVAL_S", 60.0)?;
        let gc_interval = seconds_or_off("KV_GC_INTERVAL_S", 300.0)?;
        let heartbeat_interval = Duration::from_secs_f64(heartbeat_s);
        let schedules = Schedules::default()
            .with(
                PeriodicTask::Heartbeat,
                parse_schedule(&get, "KV_HEARTBEAT_SCHEDULE", Some(heartbeat_interval))?,
            )
            .with(
                PeriodicTask::HintDelivery,
                parse_schedule(
                    &get,
                    "KV_HINT_DELIVERY_SCHEDULE",
                    Some(hint_delivery_interval),
                )?,
            )
            .with(
                PeriodicTask::AntiEntropy,
                parse_schedule(&get, "KV_ANTI_ENTROPY_SCHEDULE", anti_entropy_interval)?,
            )
            .with(
                PeriodicTask::Gc,
                parse_schedule(&get, "KV_GC_SCHEDULE", gc_interval)?,
            );
        let grace_s: f64 = parse_or(
            &get,
            "KV_TOMBSTONE_GRACE_S",
            TOMBSTONE_GRACE_S_DEFAULT as f64,
        )?;
        if !(0.0..=365.0 * 86400.0).contains(&grace_s) {
            return Err(err(
                "KV_TOMBSTONE_GRACE_S",
                "must be between 0 and 31536000 seconds",
            ));
        }
        // Cassandra's rule: a hint older than the grace is never replayed, so
        // the grace must outlast every hint (a hint replayed after GC
        // collected the delete it predates would bring the key back).
        if grace_s <= hint_window_s {
            return Err(err(
                "KV_TOMBSTONE_GRACE_S",
                format!(
                    "must be greater than KV_HINT_WINDOW_S ({hint_window_s} s), or a hint could outlive the tombstone it predates"
                ),
            ));
        }
        let email = EmailConfig::from_lookup(&get)?;
        let restore_on_start = parse_bool(&get, "KV_RESTORE_ON_START", true)?;
        let move_bytes_per_s = match parse_or(&get, "KV_MOVE_BYTES_PER_S", 64u64 * 1024 * 1024)? {
            0 => None,
            bytes => Some(bytes),
        };
        let change_resume_after = seconds_or_off("KV_CHANGE_RESUME_AFTER_S", 60.0)?;
        let requests_in_flight_max = parse_or(
            &get,
            "KV_REQUESTS_IN_FLIGHT_MAX",
            REQUESTS_IN_FLIGHT_MAX_DEFAULT,
        )?;
        if requests_in_flight_max == 0 {
            return Err(err("KV_REQUESTS_IN_FLIGHT_MAX", "must be at least 1"));
        }

        let peer_source_addr = match get("KV_PEER_SOURCE_ADDR") {
            Some(a) if !a.is_empty() => Some(
                a.parse()
                    .map_err(|_| err("KV_PEER_SOURCE_ADDR", format!("not an IP address: {a:?}")))?,
            ),
            _ => None,
        };
        let queue_jobs_max: u64 = parse_or(&get, "KV_QUEUE_JOBS_MAX", 100_000)?;
        if queue_jobs_max == 0 {
            return Err(err("KV_QUEUE_JOBS_MAX", "must be at least 1"));
        }
        let clock_offset_ms: i64 = parse_or(&get, "KV_CLOCK_OFFSET_MS", 0)?;
        if clock_offset_ms.unsigned_abs() > 3_600_000 {
            return Err(err(
                "KV_CLOCK_OFFSET_MS",
                "must be within ±3600000 (one hour)",
            ));
        }

        let log_format = match get("KV_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(err(
                    "KV_LOG_FORMAT",
                    format!("must be text or json, got {other:?}"),
                ));
            }
        };

        Ok(Config {
            node_id,
            listen,
            nodes,
            join,
            move_bytes_per_s,
            change_resume_after,
            replication_factor,
            read_consistency,
            write_consistency,
            redis_url,
            cluster_secret,
            cluster_secret_is_default,
            api_token,
            admin_token,
            tls,
            redis_tls,
            key_bytes_max,
            value_bytes_max,
            vnodes,
            clock_drift_ms_max,
            peer_connect_timeout,
            peer_request_timeout,
            redis_connect_timeout,
            redis_response_timeout,
            heartbeat_interval,
            probe_interval,
            background_sync,
            job_attempts_max,
            job_backoff_base,
            job_backoff_max,
            worker_concurrency,
            hints_per_node_max,
            watch_log_len,
            hint_window: Duration::from_secs_f64(hint_window_s),
            hint_delivery_interval,
            anti_entropy_interval,
            tombstone_grace: Duration::from_secs_f64(grace_s),
            gc_interval,
            schedules,
            email,
            restore_on_start,
            requests_in_flight_max,
            peer_source_addr,
            queue_jobs_max,
            clock_offset_ms,
            log_format,
        })
    }

    /// Largest request body the API accepts: a maximal key and value plus envelope.
    pub fn body_bytes_max(&self) -> usize {
        self.value_bytes_max + self.key_bytes_max * 6 + BODY_ENVELOPE_BYTES
    }

    /// The Redis URL with any password replaced, for logs.
    pub fn redis_url_redacted(&self) -> String {
        redact_url(&self.redis_url)
    }
}
