//! HTTP client for the internal node-to-node routes.
//!
//! One pooled hyper client per process, HTTP/1.1 keep-alive, with a
//! connect timeout and a whole-request timeout on every call. Every request
//! carries the cluster secret in [`SECRET_HEADER`].
//!
//! The internal calls are the hot path of every write and read, so the
//! client is hyper's own pooled client with nothing on top (no redirects,
//! proxies or decoders to pass through), and what can be prepared once is:
//! each peer's URIs are parsed and the headers built when the client is
//! made, not per call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::core::histogram::Histogram;
use crate::core::limits::{PEER_POOL_IDLE_MS, SYNC_CALL_TIMEOUT_MS};
use crate::core::listing::NodePage;
use crate::core::message::{
    ApplyRequest, ApplyResponse, BucketsRequest, BucketsResponse, CollectRequest, CollectResponse,
    ExplainRequest, KeyedRecord, LocalView, MerkleRequest, MerkleResponse, RangeRequest,
    ReadRequest, ReadResponse,
};
use crate::core::status::NodeStatus;
use crate::core::topology::Topology;

/// Header that carries the cluster secret on internal routes.
pub const SECRET_HEADER: &str = "x-kv-cluster-secret";

/// Header that carries the caller's topology epoch on internal routes: a
/// receiver at a newer epoch refuses the call with 409 `stale_epoch` and
/// its topology (see `core::topology`).
pub const EPOCH_HEADER: &str = "x-kv-epoch";
/// Header naming the calling node on internal routes.
pub const FROM_HEADER: &str = "x-kv-from";

/// The body of a 409 `stale_epoch` answer.
#[derive(Debug, serde::Deserialize)]
struct StaleEpochBody {
    code: String,
    topology: Topology,
}

/// Largest response body read from a peer (a scan page of big values).
pub const PEER_RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Header marking a request one node forwards to another (with the cluster
/// secret): the receiver handles it itself instead of forwarding it again.
pub const FORWARDED_HEADER: &str = "x-kv-forwarded";

/// A conditional client write forwarded to the key's primary.
#[derive(Debug, Clone)]
pub struct ForwardedWrite {
    pub key: String,
    /// `None`: a delete.
    pub value: Option<Box<serde_json::value::RawValue>>,
    /// The value's time to live in seconds, if any.
    pub ttl_s: Option<u64>,
    pub consistency: crate::core::quorum::Consistency,
    pub condition: crate::core::condition::Condition,
}

/// A decoded answer and its size on the wire in bytes.
pub type Sized<T> = (T, usize);

/// Why a call to a peer failed. All of them mean "this replica did not answer".
#[derive(Debug, Error)]
pub enum PeerError {
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("cannot reach {node}: {reason}")]
    Unreachable { node: String, reason: String },
    #[error("{node} timed out after {timeout_ms} ms")]
    Timeout { node: String, timeout_ms: u128 },
    #[error("{node} answered HTTP {status}: {body}")]
    Status {
        node: String,
        status: u16,
        body: String,
    },
    #[error("{node} sent an unreadable answer: {reason}")]
    Decode { node: String, reason: String },
    /// The peer is at a newer topology epoch and refused the call; its
    /// topology is here, to adopt before trying again.
    #[error("{node} is at topology epoch {}: this node's is older", topology.epoch)]
    StaleEpoch {
        node: String,
        topology: Box<Topology>,
    },
}

/// The parsed URIs of one peer's routes.
#[derive(Debug, Clone)]
struct Endpoints {
    base: String,
    apply: Uri,
    read: Uri,
    range: Uri,
    merkle: Uri,
    buckets: Uri,
    collect: Uri,
    explain: Uri,
    status: Uri,
    health: Uri,
    topology: Uri,
    rebalance: Uri,
    cleanup: Uri,
}

fn parse_uri(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(format!("{text:?} is not an http:// or https:// URL")),
    }
}

impl Endpoints {
    fn new(base: &str) -> Result<Self, String> {
        let parse = |path: &str| parse_uri(&format!("{base}{path}"));
        Ok(Endpoints {
            base: base.to_owned(),
            apply: parse("/internal/apply")?,
            read: parse("/internal/read")?,
            range: parse("/internal/range")?,
            merkle: parse("/internal/merkle")?,
            buckets: parse("/internal/buckets")?,
            collect: parse("/internal/collect")?,
            explain: parse("/internal/explain")?,
            status: parse("/internal/status")?,
            health: parse("/health")?,
            topology: parse("/internal/topology")?,
            rebalance: parse("/internal/rebalance")?,
            cleanup: parse("/internal/cleanup")?,
        })
    }
}

/// One request to a peer: what [`PeerClient::send`] sends (at most twice).
struct Outgoing<'a> {
    method: Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: Bytes,
}

impl Outgoing<'_> {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The peers' routes and the headers of a call, rebuilt when the topology
/// changes (never per call).
struct Table {
    peers: BTreeMap<String, Arc<Endpoints>>,
    /// The cluster secret, this node's id and epoch, and the content type.
    json_headers: HeaderMap,
}

/// Client for every peer of this node.
#[derive(Clone)]
pub struct PeerClient {
    /// Speaks TLS to `https://` peers and plain HTTP to `http://` ones.
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    table: Arc<RwLock<Arc<Table>>>,
    secret: HeaderValue,
    request_timeout: Duration,
    /// Timeout of anti-entropy calls (a tree, a page of records).
    sync_timeout: Duration,
    latency: Arc<PeerLatency>,
    self_id: String,
}

/// Why a [`PeerClient`] cannot be made.
#[derive(Debug, Error)]
pub enum PeerSetupError {
    #[error("URL of node {node:?} is not valid: {reason}")]
    Url { node: String, reason: String },
    #[error("the cluster secret cannot be sent as a header value")]
    Secret,
    #[error(transparent)]
    Tls(crate::config::ConfigError),
}

impl PeerClient {
    pub fn new(
        self_id: &str,
        urls: BTreeMap<String, String>,
        secret: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
        source_addr: Option<std::net::IpAddr>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, PeerSetupError> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        tcp.set_local_address(source_addr);
        // The TLS layer sees https:// URIs; let them through the TCP one.
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(Arc::unwrap_or_clone(tls))
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            // Below the server's HEADER_READ_TIMEOUT_MS, which also closes idle
            // keep-alive connections: the client drops an idle connection
            // before the peer does, instead of racing it.
            .pool_idle_timeout(Duration::from_millis(PEER_POOL_IDLE_MS))
            .pool_max_idle_per_host(64)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let mut secret = HeaderValue::from_str(secret).map_err(|_| PeerSetupError::Secret)?;
        secret.set_sensitive(true);
        let client = PeerClient {
            http,
            table: Arc::new(RwLock::new(Arc::new(Table {
                peers: BTreeMap::new(),
                json_headers: HeaderMap::new(),
            }))),
            secret,
            request_timeout,
            sync_timeout: request_timeout.max(Duration::from_millis(SYNC_CALL_TIMEOUT_MS)),
            latency: Arc::default(),
            self_id: self_id.to_owned(),
        };
        client.set_peers(&urls, 0)?;
        Ok(client)
    }

    /// Points the client at a topology's nodes and stamps its calls with
    /// the topology's epoch. A URL that does not parse is refused (and
    /// nothing changes).
    pub fn set_peers(
        &self,
        urls: &BTreeMap<String, String>,
        epoch: u64,
    ) -> Result<(), PeerSetupError> {
        let old = self.table();
        let mut peers = BTreeMap::new();
        for (node, base) in urls {
            let endpoints = match old.peers.get(node) {
                Some(e) if e.base == *base => Arc::clone(e),
                _ => Arc::new(Endpoints::new(base).map_err(|reason| PeerSetupError::Url {
                    node: node.clone(),
                    reason,
                })?),
            };
            peers.insert(node.clone(), endpoints);
        }
        let mut json_headers = HeaderMap::new();
        json_headers.insert(SECRET_HEADER, self.secret.clone());
        json_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        json_headers.insert(EPOCH_HEADER, HeaderValue::from(epoch));
        if let Ok(from) = HeaderValue::from_str(&self.self_id) {
            json_headers.insert(FROM_HEADER, from);
        }
        let table = Arc::new(Table {
            peers,
            json_headers,
        });
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table;
        Ok(())
    }

    fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Latency of the calls this process made to its peers.
    pub fn latency(&self) -> &PeerLatency {
        &self.latency
    }

    pub fn url(&self, node: &str) -> Option<String> {
        self.table().peers.get(node).map(|e| e.base.clone())
    }

    fn endpoints(&self, node: &str) -> Result<Arc<Endpoints>, PeerError> {
        self.table()
            .peers
            .get(node)
            .cloned()
            .ok_or_else(|| PeerError::UnknownNode(node.to_owned()))
    }

    /// `node`'s topology (`GET /internal/topology`).
    pub async fn topology(&self, node: &str) -> Result<Topology, PeerError> {
        self.get(node, |e| &e.topology).await
    }

    /// A GET of one of `node`'s internal routes, within the request timeout.
    async fn get<R: DeserializeOwned>(
        &self,
        node: &str,
        route: fn(&Endpoints) -> &Uri,
    ) -> Result<R, PeerError> {
        let table = self.table();
        let endpoints = self.endpoints(node)?;
        let call = Outgoing {
            method: Method::GET,
            uri: route(&endpoints),
            headers: &table.json_headers,
            body: Bytes::new(),
        };
        Ok(self.send(node, call, self.request_timeout).await?.0)
    }

    /// Offers `node` a topology (`POST /internal/topology`); it answers
    /// with the one it holds after adopting (the offered one, or newer).
    pub async fn offer_topology(
        &self,
        node: &str,
        topology: &Topology,
    ) -> Result<Topology, PeerError> {
        Ok(self.post(node, |e| &e.topology, topology).await?.0)
    }

    /// Asks `node` to pull what it gains in the change at `epoch` from its
    /// peers (`POST /internal/rebalance`); answers when it has, within
    /// `timeout`, with its report.
    pub async fn rebalance<R: DeserializeOwned>(
        &self,
        node: &str,
        epoch: u64,
        timeout: Duration,
    ) -> Result<R, PeerError> {
        self.change_step(node, |e| &e.rebalance, epoch, timeout)
            .await
    }

    /// Asks `node` to drop what it no longer holds at `epoch`
    /// (`POST /internal/cleanup`), within `timeout`.
    pub async fn cleanup<R: DeserializeOwned>(
        &self,
        node: &str,
        epoch: u64,
        timeout: Duration,
    ) -> Result<R, PeerError> {
        self.change_step(node, |e| &e.cleanup, epoch, timeout).await
    }

    /// A step of a membership change on `node`: `{"epoch": n}` posted to
    /// `route`, answered when done, within `timeout`.
    async fn change_step<R: DeserializeOwned>(
        &self,
        node: &str,
        route: fn(&Endpoints) -> &Uri,
        epoch: u64,
        timeout: Duration,
    ) -> Result<R, PeerError> {
        let body = serde_json::json!({ "epoch": epoch });
        Ok(self.post_within(node, route, &body, timeout).await?.0)
    }

    /// Stores records on `node` (as hints for `hint_for`, when given).
    pub async fn apply(
        &self,
        node: &str,
        records: Vec<KeyedRecord>,
        hint_for: Option<String>,
    ) -> Result<ApplyResponse, PeerError> {
        let request = ApplyRequest {
            from: self.self_id.clone(),
            records,
            hint_for,
        };
        Ok(self.post(node, |e| &e.apply, &request).await?.0)
    }

    /// The hash tree shared with `node`: its middle nodes, or the leaves
    /// under `mids`. Sized to a tree, not a one-key call: [`SYNC_CALL_TIMEOUT_MS`].
    /// Returns the answer and its size in bytes.
    pub async fn merkle(
        &self,
        node: &str,
        mids: Option<Vec<u8>>,
    ) -> Result<Sized<MerkleResponse>, PeerError> {
        let request = MerkleRequest {
            for_node: self.self_id.clone(),
            mids,
        };
        self.post_within(node, |e| &e.merkle, &request, self.sync_timeout)
            .await
    }

    /// One page of `node`'s records of some leaves shared with this node,
    /// and the answer's size in bytes.
    pub async fn buckets(
        &self,
        node: &str,
        buckets: Vec<u16>,
        cursor: u64,
    ) -> Result<Sized<BucketsResponse>, PeerError> {
        let request = BucketsRequest {
            for_node: self.self_id.clone(),
            buckets,
            cursor,
        };
        self.post_within(node, |e| &e.buckets, &request, self.sync_timeout)
            .await
    }

    /// The records of `keys` on `node`. An answer may cover only a prefix of
    /// the keys (it is bounded in bytes); the caller asks again for the rest.
    pub async fn read(&self, node: &str, keys: Vec<String>) -> Result<ReadResponse, PeerError> {
        Ok(self.post(node, |e| &e.read, &ReadRequest { keys }).await?.0)
    }

    /// One page of `node`'s records in a key range (a listing).
    pub async fn range(&self, node: &str, request: &RangeRequest) -> Result<NodePage, PeerError> {
        Ok(self.post(node, |e| &e.range, request).await?.0)
    }

    /// What `node` holds about one key (record, hints, queued jobs).
    pub async fn explain(
        &self,
        node: &str,
        key: &str,
        with_jobs: bool,
    ) -> Result<LocalView, PeerError> {
        let request = ExplainRequest {
            key: key.to_owned(),
            jobs: with_jobs,
        };
        Ok(self.post(node, |e| &e.explain, &request).await?.0)
    }

    /// Removes tombstones on `node` that are still exactly as given.
    pub async fn collect(
        &self,
        node: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<CollectResponse, PeerError> {
        Ok(self
            .post(node, |e| &e.collect, &CollectRequest { records })
            .await?
            .0)
    }

    /// What `node` tells the dashboard about itself (`GET /internal/status`).
    pub async fn status(&self, node: &str) -> Result<NodeStatus, PeerError> {
        self.get(node, |e| &e.status).await
    }

    /// Forwards a conditional write to `node`'s client API (marked as
    /// forwarded, with the cluster secret and the client's own
    /// `Authorization`), and returns its answer as it is: status and body.
    /// Its referee reads and writes, hence three request timeouts.
    pub async fn forward_write(
        &self,
        node: &str,
        write: &ForwardedWrite,
        authorization: Option<&str>,
    ) -> Result<(u16, Bytes), PeerError> {
        use crate::core::condition::Condition;
        use crate::core::request::encode_component;
        let endpoints = self.endpoints(node)?;
        let base = &endpoints.base;
        // The query carries one version; a second one (If-Match and
        // if_version both given, and different), `*` or a tag that names
        // no version goes as If-Match, as the client sent it.
        let mut condition = String::new();
        let mut if_match = None;
        for part in write.condition.clone().into_parts() {
            match part {
                Condition::IfVersion(v) if condition.contains("if_version=") => {
                    if_match = Some(v.to_string());
                }
                Condition::IfVersion(v) => {
                    condition.push_str(&format!("&if_version={}", encode_component(&v.to_string())))
                }
                Condition::IfAbsent => condition.push_str("&if_absent=true"),
                // Header-only conditions; a request carries at most one.
                Condition::IfPresent => if_match = Some("*".to_owned()),
                Condition::Never => if_match = Some("none".to_owned()),
                Condition::All(_) => {}
            }
        }
        let uri = parse_uri(&format!(
            "{base}/kv/?key={}&consistency={}{condition}",
            encode_component(&write.key),
            write.consistency
        ))
        .map_err(|reason| PeerError::Unreachable {
            node: node.to_owned(),
            reason,
        })?;
        let mut headers = self.table().json_headers.clone();
        headers.insert(FORWARDED_HEADER, HeaderValue::from_static("1"));
        if let Some(v) = if_match.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(hyper::header::IF_MATCH, v);
        }
        if let Some(auth) = authorization.and_then(|a| HeaderValue::from_str(a).ok()) {
            headers.insert(hyper::header::AUTHORIZATION, auth);
        }
        let (method, body) = match &write.value {
            Some(value) => (
                Method::PUT,
                Bytes::from(
                    serde_json::to_vec(&match write.ttl_s {
                        None => serde_json::json!({ "key": write.key, "value": value }),
                        Some(ttl_s) => {
                            serde_json::json!({ "key": write.key, "value": value, "ttl_s": ttl_s })
                        }
                    })
                    .map_err(|e| PeerError::Decode {
                        node: node.to_owned(),
                        reason: format!("cannot encode request: {e}"),
                    })?,
                ),
            ),
            None => (Method::DELETE, Bytes::new()),
        };
        let call = Outgoing {
            method,
            uri: &uri,
            headers: &headers,
            body,
        };
        let timeout = self.request_timeout.saturating_mul(3);
        let (status, bytes) = tokio::time::timeout(timeout, self.exchange(node, call))
            .await
            .map_err(|_| PeerError::Timeout {
                node: node.to_owned(),
                timeout_ms: timeout.as_millis(),
            })??;
        Ok((status.as_u16(), bytes))
    }

    /// `GET /health` of a peer: the cheapest liveness probe. An answer
    /// signed by another node id is an error (`Decode`): the address is
    /// not this peer's.
    pub async fn health(&self, node: &str) -> Result<serde_json::Value, PeerError> {
        let endpoints = self.endpoints(node)?;
        let call = Outgoing {
            method: Method::GET,
            uri: &endpoints.health,
            headers: &HeaderMap::new(),
            body: Bytes::new(),
        };
        let answer: serde_json::Value = self.send(node, call, self.request_timeout).await?.0;
        // Another node answering at this peer's address (ports swapped or
        // reused, a misconfigured peer list) is not this peer up.
        match answer.get("node").and_then(serde_json::Value::as_str) {
            Some(id) if id != node => Err(PeerError::Decode {
                node: node.to_owned(),
                reason: format!("its address is served by {id:?}, not by {node:?}"),
            }),
            _ => Ok(answer),
        }
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        node: &str,
        route: fn(&Endpoints) -> &Uri,
        body: &B,
    ) -> Result<Sized<R>, PeerError> {
        self.post_within(node, route, body, self.request_timeout)
            .await
    }

    async fn post_within<B: Serialize, R: DeserializeOwned>(
        &self,
        node: &str,
        route: fn(&Endpoints) -> &Uri,
        body: &B,
        timeout: Duration,
    ) -> Result<Sized<R>, PeerError> {
        let endpoints = self.endpoints(node)?;
        self.post_to(node, &endpoints, route, body, timeout).await
    }

    /// A node that just left the topology (no longer in the table), by its
    /// URL: offered the final topology, then asked to clean up.
    pub async fn post_departed<B: Serialize, R: DeserializeOwned>(
        &self,
        node: &str,
        url: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, PeerError> {
        let endpoints = Endpoints::new(url).map_err(|reason| PeerError::Unreachable {
            node: node.to_owned(),
            reason,
        })?;
        let route: fn(&Endpoints) -> &Uri = match path {
            "topology" => |e| &e.topology,
            _ => |e| &e.cleanup,
        };
        Ok(self
            .post_to(node, &endpoints, route, body, timeout)
            .await?
            .0)
    }

    async fn post_to<B: Serialize, R: DeserializeOwned>(
        &self,
        node: &str,
        endpoints: &Endpoints,
        route: fn(&Endpoints) -> &Uri,
        body: &B,
        timeout: Duration,
    ) -> Result<Sized<R>, PeerError> {
        let table = self.table();
        let uri = route(endpoints);
        let body = Bytes::from(serde_json::to_vec(body).map_err(|e| PeerError::Decode {
            node: node.to_owned(),
            reason: format!("cannot encode request: {e}"),
        })?);
        let call = Outgoing {
            method: Method::POST,
            uri,
            headers: &table.json_headers,
            body,
        };
        self.send(node, call, timeout).await
    }

    /// Sends one request and decodes the JSON answer, all within `timeout`;
    /// returns it with the answer's size in bytes.
    async fn send<R: DeserializeOwned>(
        &self,
        node: &str,
        call: Outgoing<'_>,
        timeout: Duration,
    ) -> Result<Sized<R>, PeerError> {
        let route = route_name(call.uri);
        let started = Instant::now();
        let exchanged = tokio::time::timeout(timeout, self.exchange(node, call)).await;
        self.latency
            .observe(node, route, started.elapsed().as_secs_f64());
        let (status, bytes) = exchanged.map_err(|_| PeerError::Timeout {
            node: node.to_owned(),
            timeout_ms: timeout.as_millis(),
        })??;
        if status == hyper::StatusCode::CONFLICT
            && let Ok(body) = serde_json::from_slice::<StaleEpochBody>(&bytes)
            && body.code == "stale_epoch"
        {
            return Err(PeerError::StaleEpoch {
                node: node.to_owned(),
                topology: Box::new(body.topology),
            });
        }
        if !status.is_success() {
            return Err(PeerError::Status {
                node: node.to_owned(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
            });
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| PeerError::Decode {
            node: node.to_owned(),
            reason: e.to_string(),
        })?;
        Ok((value, bytes.len()))
    }

    /// The request and its whole answer (status and body, bounded).
    async fn exchange(
        &self,
        node: &str,
        call: Outgoing<'_>,
    ) -> Result<(hyper::StatusCode, Bytes), PeerError> {
        let unreachable = |e: &(dyn std::error::Error + 'static)| PeerError::Unreachable {
            node: node.to_owned(),
            reason: error_chain(e),
        };
        // Internal calls are idempotent. A pooled keep-alive connection to a
        // peer that restarted fails on first use without any request having
        // been processed; one retry on a fresh connection tells that apart
        // from a peer that is really down (connect errors are not retried).
        let response = match self.http.request(call.request()).await {
            Err(e) if !e.is_connect() => self.http.request(call.request()).await,
            result => result,
        }
        .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), PEER_RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| PeerError::Decode {
                node: node.to_owned(),
                reason: format!("cannot read the answer: {e}"),
            })?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// The route of a peer call, as a metric label (a fixed set of names).
fn route_name(uri: &Uri) -> &'static str {
    match uri.path().rsplit('/').next() {
        Some("apply") => "apply",
        Some("read") => "read",
        Some("range") => "range",
        Some("collect") => "collect",
        Some("merkle") => "merkle",
        Some("buckets") => "buckets",
        Some("explain") => "explain",
        Some("health") => "health",
        Some("topology") => "topology",
        Some("rebalance") => "rebalance",
        Some("cleanup") => "cleanup",
        _ => "other",
    }
}

/// Latency of this process's calls to its peers, per peer and route
/// (bounded: the cluster's nodes times the fixed routes of [`route_name`]).
#[derive(Default)]
pub struct PeerLatency {
    series: Mutex<BTreeMap<(String, &'static str), Histogram>>,
}

impl PeerLatency {
    fn observe(&self, node: &str, route: &'static str, seconds: f64) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        match series.get_mut(&(node.to_owned(), route)) {
            Some(h) => h.observe(seconds),
            None => {
                let mut h = Histogram::default();
                h.observe(seconds);
                series.insert((node.to_owned(), route), h);
            }
        }
    }

    /// Every series: (peer, route) and its histogram.
    pub fn snapshot(&self) -> Vec<((String, &'static str), Histogram)> {
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The error with its causes, e.g. "error sending request: connection refused".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
