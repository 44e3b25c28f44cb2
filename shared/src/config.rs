//! Node configuration from environment variables (and a `.env` file, loaded by
//! the binaries before this runs).
//!
//! Every variable is optional except where noted; a bad value stops the
//! process at start with one line naming the variable. The seed's names
//! (`REDIS_HOST`, `REDIS_PORT`, `EMAIL_*`) keep working.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::core::limits::{
    BODY_ENVELOPE_BYTES, CLOCK_DRIFT_MS_MAX_DEFAULT, CLUSTER_NODES_MAX, HINT_WINDOW_S_DEFAULT,
    HINTS_PER_NODE_MAX_DEFAULT, KEY_BYTES_MAX_DEFAULT, PEER_CONNECT_TIMEOUT_MS_DEFAULT,
    PEER_REQUEST_TIMEOUT_MS_DEFAULT, REDIS_CONNECT_TIMEOUT_MS_DEFAULT,
    REDIS_RESPONSE_TIMEOUT_MS_DEFAULT, REPLICATION_FACTOR_DEFAULT, REQUESTS_IN_FLIGHT_MAX_DEFAULT,
    TOMBSTONE_GRACE_S_DEFAULT, VALUE_BYTES_MAX_CEILING, VALUE_BYTES_MAX_DEFAULT,
    VNODES_PER_NODE_DEFAULT,
};
use crate::core::quorum::Consistency;
use crate::core::validate::validate_node_id;

/// A configuration problem, naming the variable at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Everything a node (API or worker) needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// `KV_NODE_ID`: this node's id (default `node1`).
    pub node_id: String,
    /// `KV_LISTEN`: address the API binds (default `127.0.0.1:8001`).
    pub listen: SocketAddr,
    /// `KV_PEERS`: every node of the cluster, this one included, as
    /// `id=http://host:port,...` (default: this node alone).
    pub nodes: BTreeMap<String, String>,
    /// `KV_REPLICATION_FACTOR`: N (default 3), capped at the cluster size.
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
    /// `KV_HEARTBEAT_INTERVAL_S` (default 30, as in the seed).
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
}

/// A secret string: never shown by `Debug` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS (port 587, the seed's example).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a local sink or relay.
    None,
}

/// SMTP settings; present only when `EMAIL_HOST` is set.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// `EMAIL_HOST`.
    pub host: String,
    /// `EMAIL_PORT` (default 587).
    pub port: u16,
    /// `EMAIL_HOST_USER`.
    pub user: Option<String>,
    /// `EMAIL_HOST_PASSWORD`, or the contents of `EMAIL_HOST_PASSWORD_FILE`.
    pub password: Option<Secret>,
    /// `EMAIL_FROM` (default: the user).
    pub from: String,
    /// `EMAIL_TO`, comma-separated (default: the user).
    pub to: Vec<String>,
    /// `EMAIL_TLS`: `starttls` (default), `tls` (default when the port is 465) or `none`.
    pub tls: TlsMode,
    /// `EMAIL_ON_DELETE` (default on): notify deletes too.
    pub on_delete: bool,
    /// `EMAIL_KEY_PATTERNS`: comma-separated globs; only matching keys notify (default: all).
    pub key_patterns: Vec<String>,
    /// `EMAIL_RATE_PER_MINUTE` (default 60): more writes in a window are summed up in one digest.
    pub rate_per_minute: u64,
    /// `EMAIL_RATE_WINDOW_S` (default 60): the rate window; shorter only for tests and tuning.
    pub rate_window: Duration,
    /// `EMAIL_TIMEOUT_S` (default 10): SMTP connection and command timeout.
    pub timeout: Duration,
    /// `EMAIL_ALERTS` (default on): one e-mail when a node goes down and one when it is back.
    pub alerts: bool,
}

impl EmailConfig {
    fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<EmailConfig>, ConfigError> {
        let Some(host) = get("EMAIL_HOST") else {
            return Ok(None);
        };
        let port: u16 = parse_or(get, "EMAIL_PORT", 587)?;
        let user = get("EMAIL_HOST_USER");
        let password = match (get("EMAIL_HOST_PASSWORD"), get("EMAIL_HOST_PASSWORD_FILE")) {
            (Some(p), _) => Some(Secret(p)),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    err(
                        "EMAIL_HOST_PASSWORD_FILE",
                        format!("cannot read {path:?}: {}", e.kind()),
                    )
                })?;
                Some(Secret(text.trim_end_matches(['\n', '\r']).to_owned()))
            }
            (None, None) => None,
        };
        let from = get("EMAIL_FROM").or_else(|| user.clone()).ok_or_else(|| {
            err(
                "EMAIL_FROM",
                "set it (or EMAIL_HOST_USER) when EMAIL_HOST is set",
            )
        })?;
        let to: Vec<String> = get("EMAIL_TO")
            .map(|v| {
                v.split(',')
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .or_else(|| user.clone().map(|u| vec![u]))
            .unwrap_or_default();
        if to.is_empty() {
            return Err(err(
                "EMAIL_TO",
                "set it (or EMAIL_HOST_USER) when EMAIL_HOST is set",
            ));
        }
        for address in to.iter().chain(std::iter::once(&from)) {
            if !address.contains('@') {
                return Err(err(
                    "EMAIL_TO",
                    format!("{address:?} is not an e-mail address"),
                ));
            }
        }
        let default_tls = if port == 465 { "tls" } else { "starttls" };
        let tls = match get("EMAIL_TLS")
            .unwrap_or_else(|| default_tls.to_owned())
            .to_ascii_lowercase()
            .as_str()
        {
            "starttls" => TlsMode::StartTls,
            "tls" | "ssl" => TlsMode::Tls,
            "none" | "off" => TlsMode::None,
            other => {
                return Err(err(
                    "EMAIL_TLS",
                    format!("must be starttls, tls or none, got {other:?}"),
                ));
            }
        };
        let key_patterns: Vec<String> = get("EMAIL_KEY_PATTERNS")
            .map(|v| {
                v.split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let rate_per_minute: u64 = parse_or(get, "EMAIL_RATE_PER_MINUTE", 60)?;
        if rate_per_minute == 0 {
            return Err(err("EMAIL_RATE_PER_MINUTE", "must be at least 1"));
        }
        let window_s: u64 = parse_or(get, "EMAIL_RATE_WINDOW_S", 60)?;
        if !(1..=3600).contains(&window_s) {
            return Err(err("EMAIL_RATE_WINDOW_S", "must be between 1 and 3600"));
        }
        let timeout_s: u64 = parse_or(get, "EMAIL_TIMEOUT_S", 10)?;
        if !(1..=300).contains(&timeout_s) {
            return Err(err("EMAIL_TIMEOUT_S", "must be between 1 and 300"));
        }
        Ok(Some(EmailConfig {
            host,
            port,
            user,
            password,
            from,
            to,
            tls,
            on_delete: parse_bool(get, "EMAIL_ON_DELETE", true)?,
            key_patterns,
            rate_per_minute,
            rate_window: Duration::from_secs(window_s),
            timeout: Duration::from_secs(timeout_s),
            alerts: parse_bool(get, "EMAIL_ALERTS", true)?,
        }))
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

        let nodes = match get("KV_PEERS") {
            Some(v) => parse_peers(&v)?,
            None => BTreeMap::from([(node_id.clone(), format!("http://{listen}"))]),
        };
        if !nodes.contains_key(&node_id) {
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
        let replication_factor = replication_factor.min(nodes.len());

        let read_consistency = parse_or(&get, "KV_READ_CONSISTENCY", Consistency::Quorum)?;
        let write_consistency = parse_or(&get, "KV_WRITE_CONSISTENCY", Consistency::Quorum)?;

        let redis_url = match get("REDIS_URL") {
            Some(url) => {
                if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                    return Err(err("REDIS_URL", "must start with redis:// or unix://"));
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
        let email = EmailConfig::from_lookup(&get)?;
        let restore_on_start = parse_bool(&get, "KV_RESTORE_ON_START", true)?;
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

        Ok(Config {
            node_id,
            listen,
            nodes,
            replication_factor,
            read_consistency,
            write_consistency,
            redis_url,
            cluster_secret,
            cluster_secret_is_default,
            api_token,
            key_bytes_max,
            value_bytes_max,
            vnodes,
            clock_drift_ms_max,
            peer_connect_timeout,
            peer_request_timeout,
            redis_connect_timeout,
            redis_response_timeout,
            heartbeat_interval: Duration::from_secs_f64(heartbeat_s),
            probe_interval,
            background_sync,
            job_attempts_max,
            job_backoff_base,
            job_backoff_max,
            worker_concurrency,
            hints_per_node_max,
            hint_window: Duration::from_secs_f64(hint_window_s),
            hint_delivery_interval,
            anti_entropy_interval,
            tombstone_grace: Duration::from_secs_f64(grace_s),
            gc_interval,
            email,
            restore_on_start,
            requests_in_flight_max,
            peer_source_addr,
            queue_jobs_max,
            clock_offset_ms,
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

fn parse_or<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(var) {
        None => Ok(default),
        Some(v) => v
            .parse::<T>()
            .map_err(|e| err(var, format!("cannot parse {v:?}: {e}"))),
    }
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(var).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "1" | "true" | "on" | "yes" => Ok(true),
            "0" | "false" | "off" | "no" => Ok(false),
            _ => Err(err(var, format!("must be on or off, got {v:?}"))),
        },
    }
}

/// Parses `id=http://host:port,id2=http://...`.
pub fn parse_peers(spec: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut nodes = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, url) = entry.split_once('=').ok_or_else(|| {
            err(
                "KV_PEERS",
                format!("entry {entry:?} must be id=http://host:port"),
            )
        })?;
        let (id, url) = (id.trim(), url.trim().trim_end_matches('/'));
        validate_node_id(id).map_err(|e| err("KV_PEERS", e.to_string()))?;
        if !url.starts_with("http://") || url.len() <= "http://".len() {
            return Err(err(
                "KV_PEERS",
                format!("URL of {id} must start with http://, got {url:?}"),
            ));
        }
        if nodes.insert(id.to_owned(), url.to_owned()).is_some() {
            return Err(err("KV_PEERS", format!("node id {id:?} is listed twice")));
        }
    }
    if nodes.is_empty() {
        return Err(err("KV_PEERS", "lists no node"));
    }
    if nodes.len() > CLUSTER_NODES_MAX {
        return Err(err(
            "KV_PEERS",
            format!("lists more than {CLUSTER_NODES_MAX} nodes"),
        ));
    }
    Ok(nodes)
}

/// Percent-encodes everything but unreserved URL characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn redis_password_is_encoded_and_redacted() {
        let c = config(&[("REDIS_HOST", "r1"), ("REDIS_PASSWORD", "p@ss:w/rd")]).unwrap();
        assert_eq!(c.redis_url, "redis://:p%40ss%3Aw%2Frd@r1:6379/0");
        assert_eq!(c.redis_url_redacted(), "redis://***@r1:6379/0");
        let c = config(&[
            ("KV_PEER_SOURCE_ADDR", "127.0.0.12"),
            ("KV_CLOCK_OFFSET_MS", "-2000"),
        ])
        .unwrap();
        assert_eq!(c.peer_source_addr, Some("127.0.0.12".parse().unwrap()));
        assert_eq!(c.clock_offset_ms, -2000);
        assert_eq!(
            config(&[("KV_PEER_SOURCE_ADDR", "nope")]).unwrap_err().var,
            "KV_PEER_SOURCE_ADDR"
        );
        assert_eq!(
            config(&[("KV_CLOCK_OFFSET_MS", "9999999")])
                .unwrap_err()
                .var,
            "KV_CLOCK_OFFSET_MS"
        );
    }

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_seed() {
        let c = config(&[]).unwrap();
        assert_eq!(c.node_id, "node1");
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379/0");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.replication_factor, 1, "capped at the cluster size");
        assert!(c.background_sync);
        let c = config(&[("REDIS_HOST", "redis1"), ("REDIS_PORT", "6380")]).unwrap();
        assert_eq!(c.redis_url, "redis://redis1:6380/0");
    }

    #[test]
    fn peers_and_replication() {
        let c = config(&[
            ("KV_NODE_ID", "node2"),
            (
                "KV_PEERS",
                "node1=http://a:1, node2=http://b:2/ ,node3=http://c:3",
            ),
            ("KV_REPLICATION_FACTOR", "5"),
        ])
        .unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.nodes["node2"], "http://b:2");
        assert_eq!(c.replication_factor, 3);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("KV_NODE_ID", "bad id")], "KV_NODE_ID"),
            (&[("KV_LISTEN", "nowhere")], "KV_LISTEN"),
            (&[("KV_PEERS", "node2=http://b:2")], "KV_PEERS"),
            (&[("KV_PEERS", "node1=ftp://x")], "KV_PEERS"),
            (&[("KV_PEERS", "node1=http://a,node1=http://b")], "KV_PEERS"),
            (
                &[("KV_REPLICATION_FACTOR", "three")],
                "KV_REPLICATION_FACTOR",
            ),
            (&[("KV_REPLICATION_FACTOR", "0")], "KV_REPLICATION_FACTOR"),
            (&[("KV_WRITE_CONSISTENCY", "most")], "KV_WRITE_CONSISTENCY"),
            (&[("REDIS_PORT", "70000")], "REDIS_PORT"),
            (&[("REDIS_URL", "http://x")], "REDIS_URL"),
            (&[("KV_CLUSTER_SECRET", "short")], "KV_CLUSTER_SECRET"),
            (&[("KV_VALUE_BYTES_MAX", "0")], "KV_VALUE_BYTES_MAX"),
            (
                &[("KV_HEARTBEAT_INTERVAL_S", "0")],
                "KV_HEARTBEAT_INTERVAL_S",
            ),
            (&[("KV_BACKGROUND_SYNC", "maybe")], "KV_BACKGROUND_SYNC"),
            (&[("KV_PEER_TIMEOUT_MS", "0")], "KV_PEER_TIMEOUT_MS"),
        ];
        for (vars, var) in cases {
            let e = config(vars).unwrap_err();
            assert_eq!(e.var, *var, "{vars:?} gave {e}");
            assert!(e.to_string().starts_with(var));
        }
    }

    #[test]
    fn email_settings_follow_the_seed() {
        assert!(
            config(&[]).unwrap().email.is_none(),
            "not configured: no e-mail"
        );
        let c = config(&[
            ("EMAIL_HOST", "smtp.gmail.com"),
            ("EMAIL_PORT", "587"),
            ("EMAIL_HOST_USER", "your@gmail.com"),
            ("EMAIL_HOST_PASSWORD", "yourpassword"),
        ])
        .unwrap();
        let e = c.email.unwrap();
        assert_eq!((e.port, e.tls), (587, TlsMode::StartTls));
        assert_eq!(e.to, vec!["your@gmail.com".to_owned()]);
        assert_eq!(e.from, "your@gmail.com");
        let shown = format!("{e:?}");
        assert!(!shown.contains("yourpassword"), "{shown}");
        let e = config(&[
            ("EMAIL_HOST", "h"),
            ("EMAIL_PORT", "465"),
            ("EMAIL_FROM", "a@b"),
            ("EMAIL_TO", "c@d, e@f"),
        ])
        .unwrap()
        .email
        .unwrap();
        assert_eq!((e.tls, e.to.len()), (TlsMode::Tls, 2));
        for (vars, var) in [
            (&[("EMAIL_HOST", "h")][..], "EMAIL_FROM"),
            (
                &[
                    ("EMAIL_HOST", "h"),
                    ("EMAIL_FROM", "a@b"),
                    ("EMAIL_TO", "nobody"),
                ][..],
                "EMAIL_TO",
            ),
            (
                &[
                    ("EMAIL_HOST", "h"),
                    ("EMAIL_HOST_USER", "a@b"),
                    ("EMAIL_TLS", "maybe"),
                ][..],
                "EMAIL_TLS",
            ),
            (
                &[
                    ("EMAIL_HOST", "h"),
                    ("EMAIL_HOST_USER", "a@b"),
                    ("EMAIL_HOST_PASSWORD_FILE", "/nonexistent/pw"),
                ][..],
                "EMAIL_HOST_PASSWORD_FILE",
            ),
        ] {
            assert_eq!(config(vars).unwrap_err().var, var);
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = config(&[
            ("KV_CLUSTER_SECRET", "s3cret-cluster"),
            ("KV_API_TOKEN", "t0ken-client"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret-cluster") && !shown.contains("t0ken-client"),
            "{shown}"
        );
        assert_eq!(c.cluster_secret.0, "s3cret-cluster");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://:pw@host:1/0"), "redis://***@host:1/0");
        assert_eq!(redact_url("redis://host:1/0"), "redis://host:1/0");
    }
}
