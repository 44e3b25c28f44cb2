//! Thin handlers: parse and check the request, call the coordinator, shape
//! the answer. No decision about replicas or versions is made here.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use shared::coordinator::{Coordinator, WriteReport};
use shared::core::limits::{
    APPLY_BATCH_LEN_MAX, BODY_READ_TIMEOUT_MS, READ_BATCH_LEN_MAX, RESTORE_BATCH_LEN_MAX,
    SNAPSHOT_PAGE_LEN_DEFAULT, SNAPSHOT_PAGE_LEN_MAX,
};
use shared::core::merkle::MERKLE_BUCKETS;
use shared::core::message::{
    ApplyRequest, ApplyResponse, BucketsRequest, BucketsResponse, KeyedRecord, MerkleRequest,
    MerkleResponse, ReadRequest, ReadResponse, ScanResponse,
};
use shared::core::quorum::Consistency;
use shared::core::record::{Record, Version};
use shared::core::request::{WriteBody, WriteLimits, parse_query, parse_write_body};
use shared::core::ring::{RING_SEED, key_position};
use shared::core::validate::validate_key;
use shared::maintenance::status_key;

use crate::error::ApiError;
use crate::state::AppState;

/// Header form of `?consistency=`.
pub const CONSISTENCY_HEADER: &str = "x-consistency";

/// Query parameters, decoded strictly (see [`parse_query`]).
type Params = BTreeMap<String, String>;

fn params(RawQuery(raw): RawQuery) -> Result<Params, ApiError> {
    Ok(parse_query(raw.as_deref().unwrap_or(""))?)
}

/// `?consistency=` or the `X-Consistency` header; the query parameter wins
/// when both are given, but each must be valid (a bad header is refused
/// even when the query overrides it, rather than silently ignored).
fn consistency(
    params: &Params,
    headers: &HeaderMap,
    default: Consistency,
) -> Result<Consistency, ApiError> {
    let parse = |v: &str| {
        v.parse::<Consistency>()
            .map_err(|e| ApiError::bad_request("bad_consistency", e.to_string()))
    };
    let header = match headers.get(CONSISTENCY_HEADER) {
        None => None,
        Some(v) => Some(parse(v.to_str().map_err(|_| {
            ApiError::bad_request("bad_consistency", "X-Consistency is not text")
        })?)?),
    };
    let query = params.get("consistency").map(|v| parse(v)).transpose()?;
    Ok(query.or(header).unwrap_or(default))
}

fn checked_key(state: &AppState, key: &str) -> Result<(), ApiError> {
    validate_key(key, state.coord.config().key_bytes_max)
        .map_err(|e| ApiError::bad_request("bad_key", e.to_string()))
}

fn key_param(state: &AppState, params: &Params) -> Result<String, ApiError> {
    let key = params.get("key").ok_or_else(|| {
        ApiError::bad_request(
            "missing_key",
            "query parameter key is required, e.g. ?key=username123",
        )
    })?;
    checked_key(state, key)?;
    Ok(key.clone())
}

fn path_key(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|e| {
        ApiError::bad_request(
            "bad_key",
            format!("key in path is malformed: {}", e.body_text()),
        )
    })?;
    checked_key(state, &key)?;
    Ok(key)
}

/// Accepts JSON bodies. `application/x-www-form-urlencoded` is tolerated
/// because `curl -d` sends it by default; the body must still be JSON.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let Ok(text) = value.to_str() else {
        return Err(ApiError::UnsupportedMediaType("<not text>".to_owned()));
    };
    let text = text.to_ascii_lowercase();
    let mime = text.split(';').next().unwrap_or("").trim();
    let ok = mime == "application/json"
        || mime.ends_with("+json")
        || mime == "application/x-www-form-urlencoded"
        || mime == "text/plain"
        || mime.is_empty();
    if ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            mime.chars().take(100).collect(),
        ))
    }
}

/// Reads a JSON request body of at most `limit_bytes`.
///
/// A `Content-Length` over the limit is refused before a byte is read, so a
/// client announcing 100 MB gets its 413 at once; a chunked body is refused
/// as soon as it grows past the limit. The whole body must arrive within
/// [`BODY_READ_TIMEOUT_MS`], so a client trickling bytes cannot hold a
/// request slot for ever.
async fn read_body(headers: &HeaderMap, body: Body, limit_bytes: usize) -> Result<Bytes, ApiError> {
    check_content_type(headers)?;
    let too_large = || ApiError::PayloadTooLarge { limit_bytes };
    let announced = body.size_hint().lower();
    if announced > limit_bytes as u64 {
        return Err(too_large());
    }
    let read = async move {
        let mut body = body;
        // `announced` is at most `limit_bytes` here.
        let mut buf = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad_request("bad_body", format!("cannot read body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit_bytes {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(Duration::from_millis(BODY_READ_TIMEOUT_MS), read)
        .await
        .map_err(|_| ApiError::RequestTimeout {
            timeout_ms: BODY_READ_TIMEOUT_MS,
        })?
}

/// Reads and checks a client write body (see [`parse_write_body`]).
async fn write_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    path_key: Option<&str>,
) -> Result<WriteBody, ApiError> {
    let cfg = state.coord.config();
    let bytes = read_body(headers, body, cfg.body_bytes_max()).await?;
    let limits = WriteLimits {
        key_bytes_max: cfg.key_bytes_max,
        value_bytes_max: cfg.value_bytes_max,
    };
    Ok(parse_write_body(&bytes, path_key, limits)?)
}

fn write_response(report: WriteReport) -> Response {
    // Serialized straight from the report: no intermediate JSON tree.
    (StatusCode::OK, Json(report)).into_response()
}

async fn do_write(
    state: &AppState,
    key: String,
    value: Option<Box<RawValue>>,
    consistency: Consistency,
) -> Result<Response, ApiError> {
    let report = state.coord.write(key, value, consistency).await?;
    Ok(write_response(report))
}

async fn do_read(
    state: &AppState,
    key: String,
    consistency: Consistency,
) -> Result<Response, ApiError> {
    let report = state.coord.read(key, consistency).await?;
    let (status, body) = match &report.record {
        Some(Record {
            version,
            value: Some(value),
        }) => (
            StatusCode::OK,
            ReadAnswer {
                key: &report.key,
                value: Some(value),
                deleted: None,
                version: Some(version),
            },
        ),
        // A tombstone names its version, so a client can tell which delete it saw.
        Some(Record {
            version,
            value: None,
        }) => (
            StatusCode::NOT_FOUND,
            ReadAnswer {
                key: &report.key,
                value: None,
                deleted: Some(true),
                version: Some(version),
            },
        ),
        None => (
            StatusCode::NOT_FOUND,
            ReadAnswer {
                key: &report.key,
                value: None,
                deleted: None,
                version: None,
            },
        ),
    };
    Ok((status, Json(body)).into_response())
}

/// The body of a read's answer: `value` is `null` when there is none;
/// `deleted` and `version` appear only when they apply.
#[derive(Serialize)]
struct ReadAnswer<'a> {
    key: &'a str,
    value: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a Version>,
}

/// `POST /kv/`, `PUT /kv/`: body `{"key": "...", "value": ...}`.
pub async fn put_body(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    let consistency = consistency(&params, &headers, state.coord.config().write_consistency)?;
    let WriteBody { key, value } = write_body(&state, &headers, body, None).await?;
    do_write(&state, key, Some(value), consistency).await
}

/// `GET /kv/?key=K`.
pub async fn get_query(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    let key = key_param(&state, &params)?;
    let consistency = consistency(&params, &headers, state.coord.config().read_consistency)?;
    do_read(&state, key, consistency).await
}

/// `DELETE /kv/?key=K`.
pub async fn delete_query(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    let key = key_param(&state, &params)?;
    let consistency = consistency(&params, &headers, state.coord.config().write_consistency)?;
    do_write(&state, key, None, consistency).await
}

/// `GET /kv/{key}`.
pub async fn get_path(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    let key = path_key(&state, path)?;
    let consistency = consistency(&params, &headers, state.coord.config().read_consistency)?;
    do_read(&state, key, consistency).await
}

/// `PUT /kv/{key}`: body `{"value": ...}`.
pub async fn put_path(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    q: RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    let key = path_key(&state, path)?;
    let consistency = consistency(&params, &headers, state.coord.config().write_consistency)?;
    let WriteBody { key, value } = write_body(&state, &headers, body, Some(&key)).await?;
    do_write(&state, key, Some(value), consistency).await
}

/// `DELETE /kv/{key}`.
pub async fn delete_path(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    let key = path_key(&state, path)?;
    let consistency = consistency(&params, &headers, state.coord.config().write_consistency)?;
    do_write(&state, key, None, consistency).await
}

/// `GET /kv/route/?key=K`: the key's preference list, primary first.
pub async fn route(State(state): State<AppState>, q: RawQuery) -> Result<Response, ApiError> {
    let params = params(q)?;
    let key = key_param(&state, &params)?;
    let replicas = state.coord.replicas(&key);
    let health: BTreeMap<&str, &str> = replicas
        .iter()
        .map(|n| (n.as_str(), state.coord.peer_health(n).as_str()))
        .collect();
    Ok(Json(json!({
        "key": key,
        "position": format!("{:016x}", key_position(&key)),
        "primary": replicas.first(),
        "replicas": replicas,
        "health": health,
    }))
    .into_response())
}

/// A boolean query parameter: exactly `true` or `false` (as the OpenAPI
/// document says), absent meaning false.
fn flag(params: &Params, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::bad_request(
            "bad_query",
            format!("{name} must be true or false"),
        )),
    }
}

fn number<T: std::str::FromStr>(params: &Params, name: &str, default: T) -> Result<T, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            ApiError::bad_request(
                "bad_query",
                format!("{name} must be a non-negative integer"),
            )
        }),
    }
}

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
    let (count, data) = if versions {
        let data: BTreeMap<String, Record> = page
            .records
            .into_iter()
            .filter(|(_, r)| tombstones || !r.is_tombstone())
            .collect();
        (
            data.len(),
            serde_json::to_value(data).map_err(|_| ApiError::Internal)?,
        )
    } else {
        let data: BTreeMap<String, Box<RawValue>> = page
            .records
            .into_iter()
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
    Ok(Json(report).into_response())
}

/// `GET /cluster/`: nodes and their health as this node sees them, the ring,
/// and this node's counters.
pub async fn cluster(State(state): State<AppState>) -> Result<Response, ApiError> {
    let coord = &state.coord;
    let cfg = coord.config();
    let ring = coord.ring();
    let shares: BTreeMap<&str, f64> = ring
        .nodes()
        .iter()
        .map(String::as_str)
        .zip(ring.ownership())
        .collect();
    let peers = coord.peer_states();
    let mut heartbeat_status = BTreeMap::new();
    let mut hints_held = BTreeMap::new();
    for id in cfg.nodes.keys() {
        let status = coord
            .store()
            .get_plain(&status_key(id))
            .await
            .ok()
            .flatten();
        let seen = coord
            .store()
            .get_plain(&format!("{}:last_seen_ms", status_key(id)))
            .await
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u64>().ok());
        heartbeat_status.insert(id.clone(), (status, seen));
        let held = coord
            .store()
            .count_in(&shared::storage::Space::Hints(id.clone()))
            .await
            .unwrap_or(0);
        hints_held.insert(id.clone(), held);
    }
    let nodes: Vec<Value> = cfg
        .nodes
        .iter()
        .map(|(id, url)| {
            let is_self = *id == cfg.node_id;
            let peer = peers.get(id);
            let (heartbeat, heartbeat_seen) = heartbeat_status.get(id).cloned().unwrap_or_default();
            json!({
                "heartbeat_status": heartbeat,
                "heartbeat_last_seen_ms": heartbeat_seen,
                "hints_held_here": hints_held.get(id),
                "id": id,
                "url": url,
                "self": is_self,
                "status": coord.peer_health(id),
                "last_seen_ms": peer.and_then(|p| p.last_seen_ms),
                "last_error": peer.and_then(|p| p.last_error.clone()),
                "ring_share": shares.get(id.as_str()),
            })
        })
        .collect();
    let records = match coord.store().record_count().await {
        Ok(n) => json!(n),
        Err(e) => json!(format!("unavailable: {e}")),
    };
    let stats = &coord.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let jobs = job_view(coord).await;
    Ok(Json(json!({
        "node": cfg.node_id,
        "nodes": nodes,
        "replication_factor": cfg.replication_factor,
        "read_consistency": cfg.read_consistency,
        "write_consistency": cfg.write_consistency,
        "background_sync": cfg.background_sync,
        "ring": {
            "hash": "xxh3_64",
            "seed": format!("{RING_SEED:#018x}"),
            "vnodes_per_node": ring.vnodes(),
        },
        "records": records,
        "restore": coord.restore_state(),
        "jobs": jobs,
        "stats": {
            "writes": load(&stats.writes),
            "reads": load(&stats.reads),
            "unavailable": load(&stats.unavailable),
            "read_repairs": load(&stats.read_repairs),
            "read_repairs_dropped": load(&stats.read_repairs_dropped),
            "refused_versions": load(&stats.refused_versions),
            "jobs_enqueued": load(&stats.jobs_enqueued),
            "jobs_enqueue_failed": load(&stats.jobs_enqueue_failed),
            "hints_kept": load(&stats.hints_kept),
            "hints_dropped": load(&stats.hints_dropped),
            "hints_delivered": load(&stats.hints_delivered),
            "sloppy_writes": load(&stats.sloppy_writes),
            "writes_restamped": load(&stats.writes_restamped),
            "peer_transitions": load(&stats.peer_transitions),
            "anti_entropy_runs": load(&stats.anti_entropy_runs),
            "anti_entropy_stored": load(&stats.anti_entropy_stored),
            "tombstones_collected": load(&stats.tombstones_collected),
            "gc_runs": load(&stats.gc_runs),
            "mail_enqueued": load(&stats.mail_enqueued),
            "mail_not_queued": load(&stats.mail_not_queued),
        },
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
            json!({ "mode": "queue", "error": e.to_string() })
        }
    }
}

/// Dead letters shown in `/cluster/`.
const DEAD_LETTERS_SHOWN: usize = 5;

/// `GET /health`: liveness, with this node's storage status.
pub async fn health(State(state): State<AppState>) -> Response {
    match state.coord.store().ping().await {
        Ok(()) => Json(json!({ "status": "ok", "node": state.coord.node_id(), "storage": "ok" }))
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "degraded",
                "node": state.coord.node_id(),
                "storage": format!("unavailable: {e}"),
            })),
        )
            .into_response(),
    }
}

async fn internal_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let limit = crate::INTERNAL_BODY_BYTES_MAX.max(state.coord.config().body_bytes_max());
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
