//! The node-to-node routes under `/internal/`, guarded by the cluster
//! secret: apply records, read keys, scan pages, and the hash-tree summaries
//! of anti-entropy.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use shared::core::limits::{APPLY_BATCH_LEN_MAX, READ_BATCH_LEN_MAX, RESTORE_BATCH_LEN_MAX};
use shared::core::merkle::MERKLE_BUCKETS;
use shared::core::message::{
    ApplyRequest, ApplyResponse, BucketsRequest, BucketsResponse, KeyedRecord, MerkleRequest,
    MerkleResponse, ReadRequest, ReadResponse, ScanResponse,
};

use super::{checked_key, number, params, read_body};
use crate::error::ApiError;
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
        None => state.coord.apply_local(request.records).await?,
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

/// `POST /internal/merkle`: the hash tree of the records shared with the asker.
pub async fn internal_merkle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: MerkleRequest = internal_json(&state, &headers, body).await?;
    known_node(&state, &request.for_node)?;
    let summary = state.coord.summary_for(&request.for_node).await?;
    Ok(Json(MerkleResponse {
        node: state.coord.node_id().to_owned(),
        summary,
    })
    .into_response())
}

/// `POST /internal/buckets`: the records of some leaves shared with the asker.
pub async fn internal_buckets(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: BucketsRequest = internal_json(&state, &headers, body).await?;
    known_node(&state, &request.for_node)?;
    if request.buckets.len() > MERKLE_BUCKETS
        || request
            .buckets
            .iter()
            .any(|b| usize::from(*b) >= MERKLE_BUCKETS)
    {
        return Err(ApiError::bad_request(
            "bad_buckets",
            format!("at most {MERKLE_BUCKETS} buckets, each below {MERKLE_BUCKETS}"),
        ));
    }
    let records = state
        .coord
        .bucket_records_for(&request.for_node, &request.buckets, request.cursor)
        .await?;
    let (records, next_cursor) = records;
    Ok(Json(BucketsResponse {
        node: state.coord.node_id().to_owned(),
        records,
        next_cursor,
    })
    .into_response())
}

fn known_node(state: &AppState, node: &str) -> Result<(), ApiError> {
    if state.coord.config().nodes.contains_key(node) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "unknown_node",
            format!("unknown node {node:?}"),
        ))
    }
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
    let records = state.coord.store().get_many(&request.keys).await?;
    Ok(Json(ReadResponse {
        node: state.coord.node_id().to_owned(),
        records,
    })
    .into_response())
}

/// `GET /internal/scan?cursor=C&count=N`: one page of local records, tombstones included.
pub async fn internal_scan(
    State(state): State<AppState>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    let cursor: u64 = number(&params, "cursor", 0)?;
    let count: usize = number(&params, "count", RESTORE_BATCH_LEN_MAX)?;
    let count = count.clamp(1, RESTORE_BATCH_LEN_MAX);
    let page = state.coord.scan_local(cursor, count).await?;
    Ok(Json(ScanResponse {
        node: state.coord.node_id().to_owned(),
        next_cursor: page.next_cursor,
        records: page
            .records
            .into_iter()
            .map(|(key, record)| KeyedRecord { key, record })
            .collect(),
    })
    .into_response())
}
