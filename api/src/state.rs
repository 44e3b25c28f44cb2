//! The state every handler shares.
//!
//! It sits at the bottom of the crate with [`crate::error`]: metrics, routes
//! and the router import it, and it imports none of them. The request
//! metrics registry is not part of it; `GET /metrics` gets both through its
//! own state (see [`crate::metrics::render`]).

use std::sync::Arc;

use shared::node::Coordinator;
use shared::node::watch::ChangeFeed;

/// Shared state of every handler: this node's coordinator, and its change
/// feed for watchers (`None` when the node keeps no change log).
#[derive(Clone)]
pub struct AppState {
    pub coord: Arc<Coordinator>,
    pub watch: Option<Arc<ChangeFeed>>,
}

/// What TLS tells of a request's connection, put in the request's
/// extensions by the server on HTTPS connections only.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTls {
    /// The client presented a certificate, verified against `KV_TLS_CA`
    /// (rustls refuses the connection when it does not verify).
    pub client_certificate: bool,
}
