//! The node's own routes: `/snapshot/` (local data), `/restore/` (pull from
//! peers now), `/cluster/` (what this node sees), `/health` and
//! `/openapi.json`.
//!
//! None of them sends an error's text: a Redis or peer error can name
//! addresses, hosts or internals, so the answer carries a code and the text
//! goes to the log. (The one exception is the 503 of a quorum call, whose
//! `failed[].error` comes from the coordinator; see [`crate::error`].)

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use shared::core::limits::{SNAPSHOT_PAGE_LEN_DEFAULT, SNAPSHOT_PAGE_LEN_MAX};
use shared::core::record::Record;
use shared::core::ring::RING_SEED;
use shared::node::{Coordinator, RestoreReport, RestoreState};
use shared::storage::StoreError;
use tracing::{debug, warn};

use super::{flag, number, params};
use crate::error::ApiError;
use crate::state::AppState;

/// The OpenAPI 3 description of the client API (`GET /openapi.json`).
/// Kept as a file so it is reviewed like code; a test checks that it is
/// valid JSON and names every client route.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// Shown in `/cluster/` as a peer's `last_error` when its last call failed.
const PEER_CALL_FAILED: &str = "peer_call_failed";
/// Shown as `peers[].error` of a restore report when a peer did not sync.
const PEER_SYNC_FAILED: &str = "peer_sync_failed";
/// Shown as the `error` of a failed start-up restore.
const RESTORE_FAILED: &str = "restore_failed";

/// `GET /snapshot/?cursor=C&limit=L&versions=true&tombstones=true`: this
/// node's local data, one page at a time (`next_cursor` is null at the end).
pub async fn snapshot(State(state): State<AppState>, q: RawQuery) -> Result<Response, ApiError> {
    let params = params(q)?;
    let cursor: u64 = number(&params, "cursor", 0)?;
    let limit: usize = number(&params, "limit", SNAPSHOT_PAGE_LEN_DEFAULT)?;
    if limit == 0 || limit > SNAPSHOT_PAGE_LEN_MAX {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be between 1 and {SNAPSHOT_PAGE_LEN_MAX}"),
        ));
    }
    let versions = flag(&params, "versions")?;
    let tombstones = flag(&params, "tombstones")?;
    let page = state.coord.scan_local(cursor, limit).await?;
    let total_records = state.coord.store().record_count().await?;
    let next_cursor = (page.next_cursor != 0).then(|| page.next_cursor.to_string());
    // An expired value is deleted: shown only with the tombstones.
    let now_ms = state.coord.reference_now_ms();
    let (count, data) = if versions {
        let data: BTreeMap<String, Record> = page
            .records
            .into_iter()
            .filter(|(_, r)| tombstones || r.is_live_at(now_ms))
            .collect();
        (
            data.len(),
            serde_json::to_value(data).map_err(|_| ApiError::Internal)?,
        )
    } else {
        let data: BTreeMap<String, Box<RawValue>> = page
            .records
            .into_iter()
            .filter(|(_, r)| r.is_live_at(now_ms))
            .filter_map(|(k, r)| r.value.map(|v| (k, v)))
            .collect();
        (
            data.len(),
            serde_json::to_value(data).map_err(|_| ApiError::Internal)?,
        )
    };
    Ok(Json(json!({
        "node": state.coord.node_id(),
        "count": count,
        "data": data,
        "next_cursor": next_cursor,
        "total_records": total_records,
    }))
    .into_response())
}

/// `POST /restore/?from=node2`: pull this node's data from live peers now.
pub async fn restore(State(state): State<AppState>, q: RawQuery) -> Result<Response, ApiError> {
    let params = params(q)?;
    let report = state.coord.restore(params.get("from").cloned()).await?;
    Ok(Json(without_error_text(report, true)).into_response())
}

/// The report with each peer's error text replaced by [`PEER_SYNC_FAILED`].
/// The text is logged: as a warning for the restore just run (`fresh`), at
/// debug level when an earlier report is shown again by `/cluster/`.
fn without_error_text(mut report: RestoreReport, fresh: bool) -> RestoreReport {
    for peer in &mut report.peers {
        if let Some(error) = &mut peer.error {
            let text = std::mem::replace(error, PEER_SYNC_FAILED.to_owned());
            if fresh {
                warn!(peer = %peer.node, error = %text, "restore: peer did not sync");
            } else {
                debug!(peer = %peer.node, error = %text, "restore: peer did not sync");
            }
        }
    }
    report
}

/// The start-up restore's state as `/cluster/` shows it: without error
/// text (the coordinator logged a failure when it happened).
fn restore_view(state: RestoreState) -> RestoreState {
    match state {
        RestoreState::Ready { report } => RestoreState::Ready {
            report: without_error_text(report, false),
        },
        RestoreState::Partial {
            report,
            missing,
            attempt,
            retry_in_ms,
        } => RestoreState::Partial {
            report: without_error_text(report, false),
            missing,
            attempt,
            retry_in_ms,
        },
        RestoreState::Failed {
            error,
            missing,
            attempt,
            retry_in_ms,
        } => {
            debug!(%error, "start-up restore failed");
            RestoreState::Failed {
                error: RESTORE_FAILED.to_owned(),
                missing,
                attempt,
                retry_in_ms,
            }
        }
        other => other,
    }
}

/// `GET /cluster/`: nodes and their health as this node sees them, the ring,
/// and this node's counters.
pub async fn cluster(State(state): State<AppState>) -> Result<Response, ApiError> {
    let coord = &state.coord;
    let cfg = coord.config();
    let view = coord.view();
    let ring = view.placement.ring();
    let shares: BTreeMap<&str, f64> = ring
        .nodes()
        .iter()
        .map(String::as_str)
        .zip(ring.ownership())
        .collect();
    let peers = coord.peer_states();
    // The same reads as the dashboard's status (`shared::node::status`).
    let heartbeat_status = coord.heartbeat_marks().await;
    let hints_held = coord.hints_held().await;
    let nodes: Vec<Value> = view
        .topology
        .nodes
        .iter()
        .map(|(id, url)| {
            let is_self = *id == cfg.node_id;
            let peer = peers.get(id);
            let (heartbeat, heartbeat_seen) = heartbeat_status.get(id).cloned().unwrap_or_default();
            let last_error = peer.and_then(|p| p.last_error.as_deref()).map(|text| {
                debug!(peer = %id, error = %text, "last call to the peer failed");
                PEER_CALL_FAILED
            });
            json!({
                "heartbeat_status": heartbeat,
                "heartbeat_last_seen_ms": heartbeat_seen,
                "hints_held_here": hints_held.get(id),
                "id": id,
                "url": url,
                "self": is_self,
                "status": coord.peer_health(id),
                "last_seen_ms": peer.and_then(|p| p.last_seen_ms),
                "last_error": last_error,
                "ring_share": shares.get(id.as_str()),
                "member_state": view.topology.state_of(id),
            })
        })
        .collect();
    let records = match coord.store().record_count().await {
        Ok(n) => json!(n),
        Err(e) => {
            warn!(error = %e, "cluster view: cannot count this node's records");
            json!("unavailable")
        }
    };
    // Work done by any process of this node (the workers' GC, hints, ...).
    let stats: serde_json::Map<String, Value> = coord
        .counters()
        .await
        .into_iter()
        .map(|(name, value)| (name.to_owned(), json!(value)))
        .collect();
    let jobs = job_view(coord).await;
    Ok(Json(json!({
        "node": cfg.node_id,
        "nodes": nodes,
        "replication_factor": cfg.replication_factor.min(ring.len()),
        "epoch": view.topology.epoch,
        "phase": view.topology.phase,
        "read_consistency": cfg.read_consistency,
        "write_consistency": cfg.write_consistency,
        "background_sync": cfg.background_sync,
        "ring": {
            "hash": "xxh3_64",
            "seed": format!("{RING_SEED:#018x}"),
            "vnodes_per_node": ring.vnodes(),
        },
        "records": records,
        "restore": restore_view(coord.restore_state()),
        "jobs": jobs,
        "clock": coord.clock_view(),
        "stats": stats,
    }))
    .into_response())
}

/// Queue depths, job counters and the newest dead letters, as JSON.
async fn job_view(coord: &Coordinator) -> Value {
    let Some(queues) = coord.queues() else {
        return json!({ "mode": "none" });
    };
    if !coord.config().background_sync {
        return json!({ "mode": "in-process" });
    }
    let stats = queues.stats().await;
    let counters = queues.counters().await;
    let dead = queues.dead_letters(DEAD_LETTERS_SHOWN).await;
    match (stats, counters, dead) {
        (Ok(stats), Ok(counters), Ok((dead_len, dead))) => json!({
            "mode": "queue",
            "queues": stats,
            "counters": counters,
            "dead_letters": dead_len,
            "dead_newest": dead,
        }),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            warn!(error = %e, "cluster view: cannot read the job queues");
            json!({
                "mode": "queue",
                "error": {
                    "code": "queue_unavailable",
                    "message": "the job queues do not answer; see the node's log",
                },
            })
        }
    }
}

/// Dead letters shown in `/cluster/`.
const DEAD_LETTERS_SHOWN: usize = 5;

/// `GET /health`: liveness, with this node's storage status.
pub async fn health(State(state): State<AppState>) -> Response {
    let ping = state.coord.store().ping().await;
    let (status, mut body) = health_answer(state.coord.node_id(), ping);
    if let Some(obj) = body.as_object_mut() {
        // Peers read this node's clock from here (clock fencing).
        obj.insert("now_ms".into(), json!(shared::clock::now_ms()));
        obj.insert("clock".into(), json!(state.coord.clock_view()));
        // Peers learn of a newer topology from here (and fetch it).
        obj.insert("epoch".into(), json!(state.coord.view().topology.epoch));
        obj.insert("member".into(), json!(state.coord.is_member()));
        // Peers resume a stalled change only when no node drives it.
        obj.insert("driving".into(), json!(state.coord.is_driving()));
        // Client requests wait for the start-up probe round.
        obj.insert("clock_measured".into(), json!(state.coord.clock_measured()));
    }
    (status, Json(body)).into_response()
}

/// The answer of `/health` to a ping of the local store. A failed ping is
/// logged with its text; the answer names only the code and a safe message
/// (those of [`ApiError::StorageUnavailable`]).
fn health_answer(node: &str, ping: Result<(), StoreError>) -> (StatusCode, Value) {
    match ping {
        Ok(()) => (
            StatusCode::OK,
            json!({ "status": "ok", "node": node, "storage": "ok" }),
        ),
        Err(e) => {
            warn!(error = %e, "health: this node's storage does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "status": "degraded",
                    "node": node,
                    "storage": "unavailable",
                    "error": ApiError::StorageUnavailable.body(),
                }),
            )
        }
    }
}

/// `GET /openapi.json`: the document above, served as is.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::node::RestorePeerReport;

    /// An error text as Redis or a peer would give it: it names an address.
    const DETAIL: &str = "connect to 10.9.8.7:6379 refused";

    #[test]
    fn health_names_a_code_not_the_storage_error() {
        let (status, body) = health_answer("node1", Ok(()));
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                json!({"status": "ok", "node": "node1", "storage": "ok"})
            )
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, DETAIL);
        let (status, body) = health_answer("node1", Err(StoreError::Redis(io.into())));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            (&body["status"], &body["storage"], &body["error"]["code"]),
            (
                &json!("degraded"),
                &json!("unavailable"),
                &json!("storage_unavailable")
            )
        );
        let shown = body.to_string();
        assert!(
            !shown.contains("10.9.8.7") && !shown.contains("refused"),
            "{shown}"
        );
    }

    #[test]
    fn restore_reports_name_a_code_not_the_peer_error() {
        let report = RestoreReport {
            peers: vec![
                RestorePeerReport {
                    node: "node2".to_owned(),
                    error: Some(DETAIL.to_owned()),
                    ..RestorePeerReport::default()
                },
                RestorePeerReport {
                    node: "node3".to_owned(),
                    ..RestorePeerReport::default()
                },
            ],
            ..RestoreReport::default()
        };
        let report = without_error_text(report, true);
        assert_eq!(report.peers[0].error.as_deref(), Some(PEER_SYNC_FAILED));
        assert_eq!(
            report.peers[1].error, None,
            "a peer that synced has no error"
        );
        let failed = restore_view(RestoreState::Failed {
            error: DETAIL.to_owned(),
            missing: vec!["node2".to_owned()],
            attempt: 3,
            retry_in_ms: 4000,
        });
        let shown = serde_json::to_string(&failed).unwrap();
        assert_eq!(
            shown,
            r#"{"state":"failed","error":"restore_failed","missing":["node2"],"attempt":3,"retry_in_ms":4000}"#
        );
    }
}
