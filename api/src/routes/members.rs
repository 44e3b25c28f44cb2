//! Membership: `GET /cluster/members` (the topology, and the change this
//! node drives), `POST /cluster/members` (a started node joins) and
//! `DELETE /cluster/members/{id}` (a member leaves), and the node-to-node
//! side of a change: `/internal/topology` (ask, offer), `/internal/rebalance`
//! (pull a share) and `/internal/cleanup` (drop what is no longer held).
//!
//! A join or leave needs the admin token (`KV_ADMIN_TOKEN`, in
//! `x-kv-admin-token`) or the cluster secret (as the nodes send it; the
//! client token is not enough); it answers 202 at once with the
//! new epoch and the planned moves, and the change goes on in the
//! background (`shared::node::members`).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use shared::config::parse_peers;
use shared::core::topology::Topology;
use shared::peer::{EPOCH_HEADER, FROM_HEADER, SECRET_HEADER};

use super::read_body;
use crate::error::ApiError;
use crate::state::AppState;
use shared::secret_eq;

/// Largest membership request body (an id and a URL).
const MEMBER_BODY_BYTES_MAX: usize = 4 * 1024;
/// Largest offered topology (a cluster of `CLUSTER_NODES_MAX` nodes is a few KB).
const TOPOLOGY_BODY_BYTES_MAX: usize = 256 * 1024;

/// `GET /cluster/members`: the topology this node follows and the change it
/// drives (or drove last), with its progress.
pub async fn members(State(state): State<AppState>) -> Response {
    let view = state.coord.view();
    let t = &view.topology;
    Json(json!({
        "node": state.coord.node_id(),
        "epoch": t.epoch,
        "phase": t.phase,
        "members": t.members(),
        "change": state.coord.change_progress(),
        // This node's own pull in progress (a change's step), live.
        "pulling": state.coord.pulling(),
    }))
    .into_response()
}

/// Header carrying the admin token (`KV_ADMIN_TOKEN`).
pub const ADMIN_TOKEN_HEADER: &str = "x-kv-admin-token";

/// A join or leave needs the cluster secret, or the admin token when one
/// is configured: the client token is not enough to reshape the cluster.
fn admin_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let config = state.coord.config();
    let matches = |header: &str, expected: &str| {
        headers
            .get(header)
            .is_some_and(|given| secret_eq(given.as_bytes(), expected.as_bytes()))
    };
    let by_token = config
        .admin_token
        .as_ref()
        .is_some_and(|token| matches(ADMIN_TOKEN_HEADER, &token.0));
    if by_token || matches(SECRET_HEADER, &config.cluster_secret.0) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "membership changes need the admin token (x-kv-admin-token) or the cluster secret (x-kv-cluster-secret)",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    id: String,
    url: String,
}

/// `POST /cluster/members` with `{"id": ..., "url": ...}`: the started node
/// joins the cluster.
pub async fn join(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admin_allowed(&state, &headers)?;
    let bytes = read_body(&headers, body, MEMBER_BODY_BYTES_MAX).await?;
    let request: JoinRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "bad_member",
            format!("body must be {{\"id\": \"node4\", \"url\": \"http://host:port\"}}: {e}"),
        )
    })?;
    // The same rules as KV_PEERS: a node id, and an http:// or https:// URL.
    let parsed = parse_peers(&format!("{}={}", request.id, request.url))
        .map_err(|e| ApiError::bad_request("bad_member", e.to_string()))?;
    let Some((id, url)) = parsed.into_iter().next() else {
        return Err(ApiError::bad_request("bad_member", "no member given"));
    };
    // A cluster that speaks TLS does not send its secret to a plain-HTTP node.
    if state.coord.config().tls.serves_tls() && !url.starts_with("https://") {
        return Err(ApiError::bad_request(
            "bad_member",
            format!("this cluster serves TLS: the new member's URL must be https://, got {url:?}"),
        ));
    }
    let started = state.coord.request_change(Some((id, url)), None).await?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

/// `DELETE /cluster/members/{id}`: the member hands its data off and leaves.
pub async fn leave(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin_allowed(&state, &headers)?;
    shared::core::validate::validate_node_id(&id)
        .map_err(|e| ApiError::bad_request("bad_member", e.to_string()))?;
    let started = state.coord.request_change(None, Some(id)).await?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

/// `POST /cluster/change/resume`: this node drives on the change in
/// progress (its driving node is gone).
pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin_allowed(&state, &headers)?;
    let started = state.coord.resume_change().await?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

/// `GET /internal/topology`: the topology this node follows.
pub async fn internal_topology(State(state): State<AppState>) -> Response {
    Json(state.coord.view().topology.clone()).into_response()
}

/// `POST /internal/topology`: a peer offers a topology; this node follows
/// it when newer and answers with the one it follows.
pub async fn internal_offer(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, TOPOLOGY_BODY_BYTES_MAX).await?;
    let topology: Topology = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("not a topology: {e}")))?;
    for (id, url) in &topology.nodes {
        parse_peers(&format!("{id}={url}"))
            .map_err(|e| ApiError::bad_request("bad_topology", e.to_string()))?;
    }
    let (now, drained) = state.coord.offer_and_drain(topology).await;
    if !drained {
        // Taken, but operations placed by the older ring are still in flight:
        // the driving node asks again.
        return Err(ApiError::ServiceUnavailable {
            code: "draining",
            message: format!(
                "took epoch {}; operations placed by an older epoch are still in flight",
                now.epoch
            ),
        });
    }
    Ok(Json(now).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochRequest {
    epoch: u64,
}

async fn epoch_of(headers: &HeaderMap, body: Body) -> Result<u64, ApiError> {
    let bytes = read_body(headers, body, MEMBER_BODY_BYTES_MAX).await?;
    let request: EpochRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("bad_json", format!("body must be {{\"epoch\": n}}: {e}"))
    })?;
    Ok(request.epoch)
}

/// `POST /internal/rebalance` with `{"epoch": n}`: pull this node's share
/// of the change at epoch n; answers when done, with the report.
pub async fn internal_rebalance(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let epoch = epoch_of(&headers, body).await?;
    Ok(Json(state.coord.rebalance(epoch).await?).into_response())
}

/// `POST /internal/cleanup` with `{"epoch": n}`: drop the records this
/// node does not hold at the stable epoch n.
pub async fn internal_cleanup(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let epoch = epoch_of(&headers, body).await?;
    Ok(Json(state.coord.cleanup(epoch).await?).into_response())
}

/// Internal data routes: a caller at an older topology epoch is refused
/// with 409 `stale_epoch` and this node's topology (it adopts it and tries
/// again); a caller at a newer one is asked for its topology meanwhile.
pub async fn check_epoch(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let theirs = request
        .headers()
        .get(EPOCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let view = state.coord.view();
    let ours = view.topology.epoch;
    match theirs {
        Some(epoch) if epoch < ours => {
            return (
                StatusCode::CONFLICT,
                Json(json!({
                    "code": "stale_epoch",
                    "message": format!("this node is at topology epoch {ours}; the caller at {epoch}"),
                    "topology": view.topology,
                })),
            )
                .into_response();
        }
        Some(epoch) if epoch > ours => {
            let from = request
                .headers()
                .get(FROM_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(from) = from {
                let coord = state.coord.clone();
                tokio::spawn(async move { coord.learn_topology_from(&from).await });
            }
        }
        _ => {}
    }
    next.run(request).await
}
