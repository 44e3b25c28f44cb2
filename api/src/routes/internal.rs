//! The node-to-node routes under `/internal/`, guarded by the cluster
//! secret: apply records, read keys or a key range, remove collected tombstones, and the
//! hash trees and leaf pages of anti-entropy, and this node's status for
//! the dashboard. Every request is bounded in count, every answer in bytes.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use shared::core::limits::{
    APPLY_BATCH_LEN_MAX, INTERNAL_ANSWER_BYTES_MAX, LIST_LIMIT_MAX, READ_BATCH_LEN_MAX,
    SYNC_LEAVES_PER_REQUEST_MAX,
};
use shared::core::merkle::MIDS;
use shared::core::message::{
    ApplyRequest, ApplyResponse, BucketsRequest, BucketsResponse, CollectRequest, CollectResponse,
    ExplainRequest, KeyedRecord, MerkleRequest, RangeRequest, ReadRequest, ReadResponse,
};

use super::{checked_key, read_body};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::AppState;

/// Extra room for internal apply batches over a single client body.
pub const INTERNAL_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

async fn internal_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let limit = INTERNAL_BODY_BYTES_MAX.max(state.coord.config().body_bytes_max());
    let bytes = read_body(headers, body, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("malformed internal message: {e}")))
}

/// `POST /internal/apply`: store records where newer (replication, repair, hints).
pub async fn internal_apply(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ApplyRequest = internal_json(&state, &headers, body).await?;
    if request.records.len() > APPLY_BATCH_LEN_MAX {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("at most {APPLY_BATCH_LEN_MAX} records per apply"),
        ));
    }
    for KeyedRecord { key, .. } in &request.records {
        checked_key(&state, key)?;
    }
    let results = match &request.hint_for {
        None => state.coord.apply_held(request.records).await?,
        Some(owner) => {
            state
                .coord
                .apply_local_as_hint(owner, request.records)
                .await?
        }
    };
    Ok(Json(ApplyResponse {
        node: state.coord.node_id().to_owned(),
        results,
    })
    .into_response())
}

/// `POST /internal/merkle`: the hash tree of the records shared with the
/// asker (its middle nodes, or the leaves under the middle nodes named).
pub async fn internal_merkle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: MerkleRequest = internal_json(&state, &headers, body).await?;
    known_node(&state, &request.for_node)?;
    if request.mids.as_ref().is_some_and(|m| m.len() > MIDS) {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("at most {MIDS} middle nodes per request"),
        ));
    }
    let answer = state
        .coord
        .merkle_for(&request.for_node, request.mids.as_deref())
        .await?;
    Ok(Json(answer).into_response())
}

/// `POST /internal/buckets`: one page of the records of some leaves shared
/// with the asker.
pub async fn internal_buckets(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: BucketsRequest = internal_json(&state, &headers, body).await?;
    known_node(&state, &request.for_node)?;
    if request.buckets.len() > SYNC_LEAVES_PER_REQUEST_MAX {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("at most {SYNC_LEAVES_PER_REQUEST_MAX} leaves per request"),
        ));
    }
    let (records, next_cursor) = state
        .coord
        .bucket_records_for(&request.for_node, &request.buckets, request.cursor)
        .await?;
    Ok(Json(BucketsResponse {
        node: state.coord.node_id().to_owned(),
        records,
        next_cursor,
    })
    .into_response())
}

/// `POST /internal/explain`: this node's own view of one key.
pub async fn internal_explain(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ExplainRequest = internal_json(&state, &headers, body).await?;
    checked_key(&state, &request.key)?;
    Ok(Json(state.coord.local_view(&request.key, request.jobs).await?).into_response())
}

/// `POST /internal/collect`: remove tombstones another replica collected,
/// where they are still exactly as sent.
pub async fn internal_collect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: CollectRequest = internal_json(&state, &headers, body).await?;
    if request.records.len() > APPLY_BATCH_LEN_MAX {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("at most {APPLY_BATCH_LEN_MAX} records per collect"),
        ));
    }
    if request.records.iter().any(|kr| !kr.record.is_tombstone()) {
        return Err(ApiError::bad_request(
            "not_a_tombstone",
            "only tombstones are collected",
        ));
    }
    for KeyedRecord { key, .. } in &request.records {
        checked_key(&state, key)?;
    }
    let removed = state.coord.collect_local(request.records).await?;
    Ok(Json(CollectResponse {
        node: state.coord.node_id().to_owned(),
        removed,
    })
    .into_response())
}

/// `GET /internal/status`: what the dashboard shows of this node (see
/// `shared::node::status`); the node that serves the page asks every peer.
pub async fn internal_status(State((state, metrics)): State<(AppState, Metrics)>) -> Response {
    let requests = metrics.request_series(shared::clock::now_ms());
    Json(state.coord.status(requests).await).into_response()
}

fn known_node(state: &AppState, node: &str) -> Result<(), ApiError> {
    if state.coord.view().topology.nodes.contains_key(node) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "unknown_node",
            format!("unknown node {node:?}"),
        ))
    }
}

/// `POST /internal/range`: one page of this node's records in a key range
/// (a listing), bounded in count by the request and in bytes here.
pub async fn internal_range(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: RangeRequest = internal_json(&state, &headers, body).await?;
    if !(1..=LIST_LIMIT_MAX).contains(&request.limit) {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("limit must be 1 to {LIST_LIMIT_MAX}"),
        ));
    }
    let range = &request.range;
    for key in [&range.prefix, &range.start, &range.end, &range.after]
        .into_iter()
        .flatten()
    {
        checked_key(&state, key)?;
    }
    let page = state
        .coord
        .store()
        .range(range, request.limit, INTERNAL_ANSWER_BYTES_MAX)
        .await?;
    Ok(Json(page).into_response())
}

/// `POST /internal/read`: the local records of some keys.
pub async fn internal_read(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ReadRequest = internal_json(&state, &headers, body).await?;
    if request.keys.len() > READ_BATCH_LEN_MAX {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("at most {READ_BATCH_LEN_MAX} keys per read"),
        ));
    }
    let mut records = state.coord.store().get_many(&request.keys).await?;
    // Bounded in bytes: the asker asks again for the keys left out (at
    // least one record always goes, whatever its size).
    let mut bytes = 0usize;
    let mut keep = records.len();
    for (i, (key, record)) in request.keys.iter().zip(&records).enumerate() {
        bytes += key.len()
            + record
                .as_ref()
                .map_or(0, |r| 32 + r.value.as_ref().map_or(0, |v| v.get().len()));
        if bytes > INTERNAL_ANSWER_BYTES_MAX && i > 0 {
            keep = i;
            break;
        }
    }
    records.truncate(keep);
    Ok(Json(ReadResponse {
        node: state.coord.node_id().to_owned(),
        records,
    })
    .into_response())
}
