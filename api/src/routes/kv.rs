//! The client's key routes: `/kv/` (query or body key), `/kv/{key}` (path
//! key) and `/kv/route/` (where a key lives).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use shared::core::condition::Condition;
use shared::core::listing::{LIST_PARAMS, encode_cursor, parse_list_query};
use shared::core::quorum::Consistency;
use shared::core::record::Version;
use shared::core::request::{WriteBody, WriteLimits, parse_write_body, place_ttl};
use shared::core::ring::key_position;
use shared::node::{ReadReport, WriteReport};
use shared::peer::{FORWARDED_HEADER, ForwardedWrite, SECRET_HEADER};

use super::{Params, checked_key, flag, only_params, params, read_body};
use crate::error::ApiError;
use crate::state::AppState;

/// Header form of `?consistency=`.
pub const CONSISTENCY_HEADER: &str = "x-consistency";

/// `?consistency=` or the `X-Consistency` header; the query parameter wins
/// when both are given, but each must be valid (a bad header is refused
/// even when the query overrides it, rather than silently ignored).
pub(super) fn consistency(
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

fn key_param(state: &AppState, params: &Params) -> Result<String, ApiError> {
    let key = params.get("key").ok_or_else(|| {
        ApiError::bad_request(
            "missing_key",
            "query parameter key is required, e.g. ?key=username123",
        )
    })?;
    checked_key(state, key)?;
    crate::middleware::record_key(key);
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
    crate::middleware::record_key(&key);
    Ok(key)
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
    let body = parse_write_body(&bytes, path_key, limits)?;
    crate::middleware::record_key(&body.key);
    Ok(body)
}

fn write_response(report: WriteReport) -> Response {
    // Serialized straight from the report: no intermediate JSON tree.
    (StatusCode::OK, Json(report)).into_response()
}

/// Longest `If-Match` header taken (as the OpenAPI document says).
const IF_MATCH_BYTES_MAX: usize = 200;

/// A write's conditions: `If-Match: <version> | *` and `?if_version=`,
/// `If-None-Match: *` and `?if_absent=true`. Every one given must hold
/// (as HTTP evaluates preconditions), so contradictory ones get 412.
fn condition(params: &Params, headers: &HeaderMap) -> Result<Option<Condition>, ApiError> {
    let text = |name| {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(|t| t.trim().to_owned()).map_err(|_| {
                    ApiError::bad_request("bad_condition", "a condition header is not text")
                })
            })
            .transpose()
    };
    let version = |v: &str| {
        v.trim_matches('"').parse::<Version>().map_err(|_| {
            ApiError::bad_request(
                "bad_condition",
                "If-Match (if_version) must be a version a write answered, like 1796015047440:0:node1",
            )
        })
    };
    let mut parts = Vec::new();
    // The header as HTTP reads it: `*` is "any value"; a tag that is not
    // a version matches nothing, so the condition is false (412).
    match text(header::IF_MATCH)?.as_deref() {
        None => {}
        Some(tag) if tag.len() > IF_MATCH_BYTES_MAX => {
            return Err(ApiError::bad_request(
                "bad_condition",
                format!("If-Match is longer than {IF_MATCH_BYTES_MAX} bytes"),
            ));
        }
        Some("*") => parts.push(Condition::IfPresent),
        Some(tag) => parts.push(version(tag).map_or(Condition::Never, Condition::IfVersion)),
    }
    // The query form is this API's own: a malformed one is bad input.
    if let Some(v) = params.get("if_version") {
        parts.push(Condition::IfVersion(version(v)?));
    }
    match text(header::IF_NONE_MATCH)?.as_deref() {
        None => {}
        Some("*") => parts.push(Condition::IfAbsent),
        Some(_) => {
            return Err(ApiError::bad_request(
                "bad_condition",
                "If-None-Match takes only * (create only)",
            ));
        }
    }
    if flag(params, "if_absent")? {
        parts.push(Condition::IfAbsent);
    }
    Ok(Condition::all(parts))
}

/// Whether another node forwarded this request (with the cluster secret),
/// so this node referees it instead of forwarding it again.
fn forwarded(state: &AppState, headers: &HeaderMap) -> bool {
    let secret = &state.coord.config().cluster_secret.0;
    headers.get(FORWARDED_HEADER).is_some_and(|v| v == "1")
        && headers
            .get(SECRET_HEADER)
            .is_some_and(|v| shared::secret_eq(v.as_bytes(), secret.as_bytes()))
}

/// A write's time to live (see [`place_ttl`]); refused on a delete,
/// which has no value to expire.
fn write_ttl(
    params: &Params,
    path_form: bool,
    value: Option<&RawValue>,
    body_ttl: Option<u64>,
) -> Result<Option<u64>, ApiError> {
    let query = params.get("ttl_s").map(String::as_str);
    if value.is_none() && query.is_some() {
        return Err(ApiError::bad_request(
            "bad_ttl",
            "ttl_s applies to a write of a value, not to a delete",
        ));
    }
    Ok(place_ttl(path_form, body_ttl, query)?)
}

/// What a write stores: a value with the time to live its body gave, or
/// `None` (a delete).
type Change = Option<(Box<RawValue>, Option<u64>)>;

async fn do_write(
    state: &AppState,
    headers: &HeaderMap,
    params: &Params,
    (key, path_form): (String, bool),
    change: Change,
    consistency: Consistency,
) -> Result<Response, ApiError> {
    let (value, body_ttl) = change.map_or((None, None), |(v, t)| (Some(v), t));
    let ttl_s = write_ttl(params, path_form, value.as_deref(), body_ttl)?;
    let Some(condition) = condition(params, headers)? else {
        let report = state.coord.write(key, value, ttl_s, consistency).await?;
        return Ok(write_response(report));
    };
    if !forwarded(state, headers) {
        let write = ForwardedWrite {
            key,
            value,
            ttl_s,
            consistency,
            condition,
        };
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Some((status, body)) = state.coord.forward_conditional(&write, auth).await {
            // The referee's own answer, as it is.
            let status = StatusCode::from_u16(status).map_err(|_| ApiError::Internal)?;
            return Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        let ForwardedWrite {
            key,
            value,
            condition,
            ..
        } = write;
        let report = state
            .coord
            .write_if(key, value, ttl_s, consistency, condition)
            .await?;
        return Ok(write_response(report));
    }
    let report = state
        .coord
        .write_if(key, value, ttl_s, consistency, condition)
        .await?;
    Ok(write_response(report))
}

/// `?min_version=V`: a version a write answered (read-your-writes token).
fn min_version(params: &Params) -> Result<Option<Version>, ApiError> {
    params
        .get("min_version")
        .map(|v| {
            v.parse::<Version>().map_err(|_| {
                ApiError::bad_request(
                    "bad_min_version",
                    "min_version must be a version a write answered, like 1796015047440:0:node1",
                )
            })
        })
        .transpose()
}

async fn do_read(
    state: &AppState,
    key: String,
    consistency: Consistency,
    min: Option<Version>,
) -> Result<Response, ApiError> {
    let report = match min {
        None => state.coord.read(key, consistency).await?,
        Some(min) => state.coord.read_at_least(key, consistency, min).await?,
    };
    let (status, body) = read_answer(&report);
    Ok((status, Json(body)).into_response())
}

/// A read's status and body: 200 with the value (and its `expires_at`
/// when it has one), or 404 — with the version and `deleted: true` when
/// the key was deleted, or `expired: true` when its value expired by the
/// time the read decided.
pub(super) fn read_answer(report: &ReadReport) -> (StatusCode, ReadAnswer<'_>) {
    let Some(record) = &report.record else {
        return (
            StatusCode::NOT_FOUND,
            ReadAnswer {
                key: &report.key,
                value: None,
                deleted: None,
                expired: None,
                version: None,
                expires_at: None,
            },
        );
    };
    let live = record.is_live_at(report.read_at_ms);
    let status = if live {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    (
        status,
        ReadAnswer {
            key: &report.key,
            value: record.value.as_deref().filter(|_| live),
            deleted: record.is_tombstone().then_some(true),
            expired: (!live && !record.is_tombstone()).then_some(true),
            // A tombstone names its version, so a client can tell which delete it saw.
            version: Some(&record.version),
            expires_at: record.expires_at,
        },
    )
}

/// The body of a read's answer: `value` is `null` when there is none;
/// `deleted`, `expired`, `version` and `expires_at` appear only when they
/// apply.
#[derive(Serialize)]
pub(super) struct ReadAnswer<'a> {
    key: &'a str,
    value: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expired: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a Version>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

/// `POST /kv/`, `PUT /kv/`: body `{"key": "...", "value": ..., "ttl_s": N}`
/// (`ttl_s` optional, or `?ttl_s=N`).
pub async fn put_body(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    let consistency = consistency(&params, &headers, state.coord.config().write_consistency)?;
    let WriteBody { key, value, ttl_s } = write_body(&state, &headers, body, None).await?;
    let change = Some((value, ttl_s));
    do_write(&state, &headers, &params, (key, false), change, consistency).await
}

/// `GET /kv/?key=K`, or a listing: `GET /kv/?prefix=P&limit=L&cursor=C`
/// (any of [`LIST_PARAMS`] without `key`).
pub async fn get_query(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    if !params.contains_key("key") && LIST_PARAMS.iter().any(|p| params.contains_key(*p)) {
        return list(&state, &headers, &params).await;
    }
    let key = key_param(&state, &params)?;
    let consistency = consistency(&params, &headers, state.coord.config().read_consistency)?;
    let min = min_version(&params)?;
    do_read(&state, key, consistency, min).await
}

/// One page of the cluster's keys in order (see `core::listing`):
/// `{"items": [{"key", "value", "version"}], "next_cursor"}`, values left
/// out with `keys_only=true`; `next_cursor` is `null` on the last page.
async fn list(
    state: &AppState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Response, ApiError> {
    let mut allowed = LIST_PARAMS.to_vec();
    allowed.push("consistency");
    only_params(params, &allowed, "a listing")?;
    let cfg = state.coord.config();
    let query = parse_list_query(params, cfg.key_bytes_max)?;
    let consistency = consistency(params, headers, cfg.read_consistency)?;
    let report = state.coord.list(&query, consistency).await?;
    let items: Vec<ListItem<'_>> = report
        .items
        .iter()
        .map(|(key, record)| ListItem {
            key,
            value: if query.keys_only {
                None
            } else {
                record.value.as_deref()
            },
            version: &record.version,
            expires_at: record.expires_at,
        })
        .collect();
    Ok(Json(ListAnswer {
        count: items.len(),
        items,
        next_cursor: report.next_after.as_deref().map(encode_cursor),
        consistency: report.consistency,
    })
    .into_response())
}

#[derive(Serialize)]
struct ListItem<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    version: &'a Version,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

#[derive(Serialize)]
struct ListAnswer<'a> {
    items: Vec<ListItem<'a>>,
    count: usize,
    next_cursor: Option<String>,
    consistency: Consistency,
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
    do_write(&state, &headers, &params, (key, false), None, consistency).await
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
    let min = min_version(&params)?;
    do_read(&state, key, consistency, min).await
}

/// `PUT /kv/{key}`: body `{"value": ...}`, `?ttl_s=N` or `"ttl_s"` optional.
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
    let WriteBody { key, value, ttl_s } = write_body(&state, &headers, body, Some(&key)).await?;
    let change = Some((value, ttl_s));
    do_write(&state, &headers, &params, (key, true), change, consistency).await
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
    do_write(&state, &headers, &params, (key, true), None, consistency).await
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

/// `GET /kv/explain/?key=K[&repair=true]`: every node's own view of the key
/// (record, hints kept for it, replication jobs queued for it), whether the
/// replicas agree, and with `repair=true` what sending the newest record to
/// the stale replicas did.
pub async fn explain(State(state): State<AppState>, q: RawQuery) -> Result<Response, ApiError> {
    let params = params(q)?;
    let key = key_param(&state, &params)?;
    let repair = flag(&params, "repair")?;
    Ok(Json(state.coord.explain(&key, repair).await?).into_response())
}
