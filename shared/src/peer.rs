//! HTTP client for the internal node-to-node routes.
//!
//! One pooled `reqwest` client per process, HTTP/1.1 keep-alive, with a
//! connect timeout and a whole-request timeout on every call. Every request
//! carries the cluster secret in [`SECRET_HEADER`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::core::limits::PEER_POOL_IDLE_MS;
use crate::core::message::{
    ApplyRequest, ApplyResponse, BucketsRequest, BucketsResponse, KeyedRecord, MerkleRequest,
    MerkleResponse, ReadRequest, ReadResponse, ScanResponse,
};

/// Header that carries the cluster secret on internal routes.
pub const SECRET_HEADER: &str = "x-kv-cluster-secret";

/// Largest response body read from a peer (a scan page of big values).
pub const PEER_RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

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
}

/// Client for every peer of this node.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    urls: BTreeMap<String, String>,
    secret: String,
    request_timeout: Duration,
    self_id: String,
}

impl PeerClient {
    pub fn new(
        self_id: &str,
        urls: BTreeMap<String, String>,
        secret: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
        source_addr: Option<std::net::IpAddr>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .local_address(source_addr)
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            // Below the server's HEADER_READ_TIMEOUT_MS, which also closes idle
            // keep-alive connections: the client drops an idle connection
            // before the peer does, instead of racing it.
            .pool_idle_timeout(Duration::from_millis(PEER_POOL_IDLE_MS))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .no_proxy()
            .build()?;
        Ok(PeerClient {
            http,
            urls,
            secret: secret.to_owned(),
            request_timeout,
            self_id: self_id.to_owned(),
        })
    }

    pub fn url(&self, node: &str) -> Option<&str> {
        self.urls.get(node).map(String::as_str)
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
        self.post(node, "/internal/apply", &request).await
    }

    pub async fn merkle(&self, node: &str) -> Result<MerkleResponse, PeerError> {
        let request = MerkleRequest {
            for_node: self.self_id.clone(),
        };
        self.post(node, "/internal/merkle", &request).await
    }

    pub async fn buckets(
        &self,
        node: &str,
        buckets: Vec<u16>,
        cursor: u64,
    ) -> Result<BucketsResponse, PeerError> {
        let request = BucketsRequest {
            for_node: self.self_id.clone(),
            buckets,
            cursor,
        };
        self.post(node, "/internal/buckets", &request).await
    }

    pub async fn read(&self, node: &str, keys: Vec<String>) -> Result<ReadResponse, PeerError> {
        self.post(node, "/internal/read", &ReadRequest { keys })
            .await
    }

    pub async fn scan(
        &self,
        node: &str,
        cursor: u64,
        count: usize,
    ) -> Result<ScanResponse, PeerError> {
        let path = format!("/internal/scan?cursor={cursor}&count={count}");
        let base = self.base(node)?;
        let request = self
            .http
            .get(format!("{base}{path}"))
            .header(SECRET_HEADER, &self.secret);
        self.send(node, request).await
    }

    /// `GET /health` of a peer: the cheapest liveness probe.
    pub async fn health(&self, node: &str) -> Result<serde_json::Value, PeerError> {
        let base = self.base(node)?;
        self.send(node, self.http.get(format!("{base}/health")))
            .await
    }

    fn base(&self, node: &str) -> Result<&str, PeerError> {
        self.url(node)
            .ok_or_else(|| PeerError::UnknownNode(node.to_owned()))
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        node: &str,
        path: &str,
        body: &B,
    ) -> Result<R, PeerError> {
        let base = self.base(node)?;
        let body = serde_json::to_vec(body).map_err(|e| PeerError::Decode {
            node: node.to_owned(),
            reason: format!("cannot encode request: {e}"),
        })?;
        let request = self
            .http
            .post(format!("{base}{path}"))
            .header(SECRET_HEADER, &self.secret)
            .header("content-type", "application/json")
            .body(body);
        self.send(node, request).await
    }

    async fn send<R: DeserializeOwned>(
        &self,
        node: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<R, PeerError> {
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                PeerError::Timeout {
                    node: node.to_owned(),
                    timeout_ms: self.request_timeout.as_millis(),
                }
            } else {
                PeerError::Unreachable {
                    node: node.to_owned(),
                    reason: error_chain(&e),
                }
            }
        };
        // Internal calls are idempotent. A pooled keep-alive connection to a
        // peer that restarted fails on first use without any request having
        // been processed; one retry on a fresh connection tells that apart
        // from a peer that is really down (connect errors and timeouts are
        // not retried).
        let retry = request.try_clone();
        let response = match (request.send().await, retry) {
            (Err(e), Some(retry)) if !e.is_timeout() && !e.is_connect() => retry.send().await,
            (result, _) => result,
        }
        .map_err(classify)?;
        let status = response.status();
        if let Some(len) = response.content_length()
            && len > PEER_RESPONSE_BYTES_MAX as u64
        {
            return Err(PeerError::Decode {
                node: node.to_owned(),
                reason: format!("answer of {len} bytes is over the limit"),
            });
        }
        let bytes = response.bytes().await.map_err(classify)?;
        if !status.is_success() {
            return Err(PeerError::Status {
                node: node.to_owned(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| PeerError::Decode {
            node: node.to_owned(),
            reason: e.to_string(),
        })
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
