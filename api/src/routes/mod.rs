//! Thin handlers: parse and check the request, call the coordinator, shape
//! the answer. No decision about replicas or versions is made here.
//!
//! - [`kv`]: the client's `/kv/` routes (read, write, delete, `/kv/route/`).
//! - [`admin`]: `/snapshot/`, `/restore/`, `/cluster/` and `/health`.
//! - [`internal`]: the node-to-node `/internal/*` routes.
//! - [`members`]: `/cluster/members` (join, leave) and the internal side of a change.
//! - [`watch`]: `/kv/watch/`, the changes this node stores as server-sent events.
//! - [`dashboard`]: the `/ui/` page and `/cluster/views`, the data it polls.
//!
//! This module holds what they share: strict query parsing, key checks and
//! the bounded body reader. The router that mounts them (with its
//! middleware) is built in the crate root.

pub mod admin;
pub mod batch;
pub mod dashboard;
pub mod internal;
pub mod kv;
pub mod members;
pub mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::RawQuery;
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;
use shared::core::limits::BODY_READ_TIMEOUT_MS;
use shared::core::request::parse_query;
use shared::core::validate::validate_key;
use tracing::debug;

use crate::error::ApiError;
use crate::state::AppState;

/// Query parameters, decoded strictly (see [`parse_query`]).
type Params = BTreeMap<String, String>;

fn params(RawQuery(raw): RawQuery) -> Result<Params, ApiError> {
    Ok(parse_query(raw.as_deref().unwrap_or(""))?)
}

fn checked_key(state: &AppState, key: &str) -> Result<(), ApiError> {
    validate_key(key, state.coord.config().key_bytes_max)
        .map_err(|e| ApiError::bad_request("bad_key", e.to_string()))
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
            // The connection's error text stays in the log.
            let frame = frame.map_err(|e| {
                debug!(error = %e, "cannot read a request body");
                ApiError::bad_request("bad_body", "cannot read the request body")
            })?;
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

/// Refuses a query parameter `what` (a listing, a watch) does not take,
/// naming the ones it does, rather than silently ignoring a typo.
fn only_params(params: &Params, allowed: &[&str], what: &str) -> Result<(), ApiError> {
    match params.keys().find(|name| !allowed.contains(&name.as_str())) {
        None => Ok(()),
        Some(name) => Err(ApiError::bad_request(
            "bad_query",
            format!(
                "{name} is not a parameter of {what} ({})",
                allowed.join(", ")
            ),
        )),
    }
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
