//! What wraps the handlers: the request's tracing span, id and metrics, the
//! client-token, membership and cluster-secret checks, the JSON answers of the
//! fallbacks (no route, wrong method, a panic) and `Connection: close`
//! after a refused body. The router in the crate root puts each in place.

use std::any::Any;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::peer::SECRET_HEADER;
use shared::secret_eq;
use tracing::{error, warn};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::{AppState, ConnectionTls};
use shared::config::ClientAuth;

/// An error answer to a request that carried a body may leave part of the
/// body unread (a 413 is sent before reading it, a 401 or 415 never reads
/// it), and then the connection cannot carry another request: the server
/// closes it. `Connection: close` says so in the answer, so a client does
/// not put the connection back in its pool and send its next request into
/// a closed socket.
pub async fn close_after_refused_body(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|len| len > 0);
    let mut response = next.run(request).await;
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().chars().take(200).collect())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    error!(panic = %message, "handler panicked");
    ApiError::Internal.into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Client routes: when `KV_API_TOKEN` is set, require `Authorization:
/// Bearer <token>`; then, on a node that is not a member, answer 503
/// `not_a_member` except on `/cluster` routes. One middleware for both
/// checks (see [`observe_request`]).
pub async fn client_gate(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.coord.config().api_token {
        match bearer(request.headers()) {
            None => return Err(ApiError::Unauthorized("send Authorization: Bearer <token>")),
            Some(given) if !secret_eq(given.as_bytes(), token.0.as_bytes()) => {
                return Err(ApiError::Forbidden("token is not valid"));
            }
            Some(_) => {}
        }
    }
    if !request.uri().path().starts_with("/cluster") && !state.coord.is_member() {
        return Err(ApiError::NotAMember);
    }
    if !state.coord.wait_clock_measured().await {
        warn!("the start-up probe of the peers' clocks has not finished: serving anyway");
    }
    Ok(next.run(request).await)
}

/// Internal routes: require the cluster secret, compared in constant time,
/// and under `KV_TLS_CLIENT_AUTH=internal` a verified client certificate.
pub async fn require_secret(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let config = state.coord.config();
    if config.tls.client_auth != ClientAuth::Off
        && !request
            .extensions()
            .get::<ConnectionTls>()
            .is_some_and(|tls| tls.client_certificate)
    {
        return Err(ApiError::Forbidden(
            "internal route: a client certificate signed by the cluster's CA is required",
        ));
    }
    let secret = config.cluster_secret.0.as_bytes();
    match request.headers().get(SECRET_HEADER) {
        None => Err(ApiError::Unauthorized(
            "internal route: cluster secret required",
        )),
        Some(given) if !secret_eq(given.as_bytes(), secret) => {
            Err(ApiError::Forbidden("internal route: wrong cluster secret"))
        }
        Some(_) => Ok(next.run(request).await),
    }
}

/// Header carrying a request's id: taken from the client when it sends a
/// short printable one, else made here; echoed in every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from a client.
const REQUEST_ID_BYTES_MAX: usize = 64;

/// Ids this process made: `{node}-{start}-{n}`, unique across restarts.
static REQUEST_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn request_id(headers: &HeaderMap, node: &str) -> String {
    let given = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= REQUEST_ID_BYTES_MAX
                && v.bytes().all(|b| b.is_ascii_graphic())
        });
    match given {
        Some(id) => id.to_owned(),
        None => {
            static START_S: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
            let start = START_S.get_or_init(|| shared::clock::now_ms() / 1000);
            let n = REQUEST_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("{node}-{start:x}-{n}")
        }
    }
}

/// Middleware: every request runs in a `request` span carrying the node id,
/// the request id, the method and the matched route (and, once a handler
/// knows it, `key_hash`: the key's ring position, so a request's lines can
/// be matched to a key without the span carrying the key itself), and is
/// timed into the request metrics under its matched route. The id is
/// echoed in `X-Request-Id`. One middleware for both: each layer costs
/// every request a boxed future and a clone of the route's service.
pub async fn observe_request(
    State((state, metrics)): State<(AppState, Metrics)>,
    request: Request,
    next: Next,
) -> Response {
    let _in_flight = metrics.enter();
    let node = state.coord.node_id();
    let id = request_id(request.headers(), node);
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "request",
        node = %node,
        request_id = %id,
        method = %method,
        route = %route,
        key_hash = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let mut response = tracing::Instrument::instrument(
        async {
            let response = next.run(request).await;
            tracing::debug!(
                status = response.status().as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "request done"
            );
            response
        },
        span,
    )
    .await;
    let elapsed_s = started.elapsed().as_secs_f64();
    metrics.record(route, method, response.status().as_u16(), elapsed_s);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Records the key a request is about in its span, as its ring position.
pub fn record_key(key: &str) {
    tracing::Span::current().record(
        "key_hash",
        tracing::field::display(format_args!(
            "{:016x}",
            shared::core::ring::key_position(key)
        )),
    );
}
