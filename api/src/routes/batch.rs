//! `POST /kv/batch`: several gets, puts and deletes in one request.
//!
//! The batch is checked whole before anything runs (one bad operation: 400
//! `bad_batch` naming it, nothing done). Then operations on one key run in
//! the batch's order, one after another; different keys run side by side,
//! at most [`BATCH_KEYS_IN_FLIGHT_MAX`] at once, so their replica calls meet
//! in the replicas' group commits (one internal call carries many keys).
//! Each operation gets its own result, in the batch's order, with the
//! status and body the single-key route would answer. A batch is not a
//! transaction: each operation succeeds or fails on its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shared::core::batch::{BatchOp, parse_batch};
use shared::core::limits::BATCH_KEYS_IN_FLIGHT_MAX;
use shared::core::quorum::Consistency;
use shared::core::request::WriteLimits;
use shared::node::Coordinator;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::kv::{consistency, read_answer};
use super::{params, read_body};
use crate::error::ApiError;
use crate::state::AppState;

/// `POST /kv/batch` with `{"ops": [{"op", "key", "value"?}]}` →
/// `{"results": [...]}`.
pub async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    let cfg = state.coord.config();
    // `?consistency=` (or the header) applies to every operation; without
    // it reads and writes take the node's own defaults.
    let read_level = consistency(&params, &headers, cfg.read_consistency)?;
    let write_level = consistency(&params, &headers, cfg.write_consistency)?;
    let conditional = headers.contains_key(header::IF_MATCH)
        || headers.contains_key(header::IF_NONE_MATCH)
        || params.contains_key("if_version")
        || params.contains_key("if_absent")
        || params.contains_key("min_version");
    if conditional {
        return Err(ApiError::bad_request(
            "bad_batch",
            "a batch takes no conditions or min_version; send conditional writes one by one",
        ));
    }
    let bytes = read_body(&headers, body, cfg.body_bytes_max()).await?;
    let limits = WriteLimits {
        key_bytes_max: cfg.key_bytes_max,
        value_bytes_max: cfg.value_bytes_max,
    };
    let ops = parse_batch(&bytes, limits)
        .map_err(|e| ApiError::bad_request("bad_batch", e.to_string()))?;
    let len = ops.len();
    let mut by_key: BTreeMap<String, Vec<(usize, BatchOp)>> = BTreeMap::new();
    for (index, op) in ops.into_iter().enumerate() {
        by_key
            .entry(op.key().to_owned())
            .or_default()
            .push((index, op));
    }
    let permits = Arc::new(Semaphore::new(BATCH_KEYS_IN_FLIGHT_MAX));
    let mut runs = JoinSet::new();
    for (_, key_ops) in by_key {
        let coord = Arc::clone(&state.coord);
        let permits = Arc::clone(&permits);
        runs.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let mut done = Vec::with_capacity(key_ops.len());
            for (index, op) in key_ops {
                done.push((index, run(&coord, op, read_level, write_level).await));
            }
            done
        });
    }
    let mut results: Vec<Value> = vec![Value::Null; len];
    while let Some(joined) = runs.join_next().await {
        // A task that panicked leaves its slots null; they are answered as
        // internal errors below.
        if let Ok(done) = joined {
            for (index, result) in done {
                if let Some(slot) = results.get_mut(index) {
                    *slot = result;
                }
            }
        }
    }
    for slot in results.iter_mut().filter(|r| r.is_null()) {
        let (status, body) = ApiError::Internal.status_and_body();
        *slot = json!({ "status": status.as_u16(), "error": body });
    }
    Ok((StatusCode::OK, Json(json!({ "results": results }))).into_response())
}

/// Runs one operation: the single-key route's status and body, with `op`.
async fn run(
    coord: &Arc<Coordinator>,
    op: BatchOp,
    read_level: Consistency,
    write_level: Consistency,
) -> Value {
    let (name, answer) = match op {
        BatchOp::Get { key } => (
            "get",
            coord.read(key, read_level).await.map(|report| {
                let (status, body) = read_answer(&report);
                (status, serde_json::to_value(body))
            }),
        ),
        BatchOp::Put { key, value, ttl_s } => (
            "put",
            coord
                .write(key, Some(value), ttl_s, write_level)
                .await
                .map(|report| (StatusCode::OK, serde_json::to_value(report))),
        ),
        BatchOp::Delete { key } => (
            "delete",
            coord
                .write(key, None, None, write_level)
                .await
                .map(|report| (StatusCode::OK, serde_json::to_value(report))),
        ),
    };
    let (status, mut body) = match answer {
        Ok((status, Ok(body))) => (status, body),
        Ok((_, Err(_))) => {
            let (status, error) = ApiError::Internal.status_and_body();
            (status, json!({ "error": error }))
        }
        Err(e) => {
            let (status, error) = ApiError::from(e).status_and_body();
            (status, json!({ "error": error }))
        }
    };
    if let Value::Object(fields) = &mut body {
        fields.insert("op".to_owned(), json!(name));
        fields.insert("status".to_owned(), json!(status.as_u16()));
    }
    body
}
