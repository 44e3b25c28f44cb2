//! The HTTP API of one node: an axum [`Router`] over the shared coordinator.
//!
//! [`app`] builds the whole router, so tests drive it with `oneshot` and the
//! binary only adds a listener. Every response, errors included, is JSON.

pub mod error;
pub mod handlers;
pub mod metrics;

use std::any::Any;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use shared::coordinator::Coordinator;
use shared::peer::SECRET_HEADER;
use shared::secret_eq;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::error;

use crate::error::ApiError;
use crate::handlers::AppState;

/// Extra room for internal apply batches over a single client body.
pub const INTERNAL_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The whole router of a node.
pub fn app(coord: Arc<Coordinator>) -> Router {
    let cfg = coord.config();
    let body_limit = cfg.body_bytes_max();
    let in_flight_max = cfg.requests_in_flight_max;
    let metrics = metrics::Metrics::default();
    let state = AppState {
        coord,
        metrics: metrics.clone(),
    };

    let kv = Router::new()
        .route(
            "/kv/",
            get(handlers::get_query)
                .post(handlers::put_body)
                .put(handlers::put_body)
                .delete(handlers::delete_query),
        )
        .route(
            "/kv",
            get(handlers::get_query)
                .post(handlers::put_body)
                .put(handlers::put_body)
                .delete(handlers::delete_query),
        )
        .route("/kv/route/", get(handlers::route))
        .route("/kv/route", get(handlers::route))
        .route(
            "/kv/{key}",
            get(handlers::get_path)
                .put(handlers::put_path)
                .delete(handlers::delete_path),
        )
        .route("/snapshot/", get(handlers::snapshot))
        .route("/snapshot", get(handlers::snapshot))
        .route("/restore/", post(handlers::restore))
        .route("/restore", post(handlers::restore))
        .route("/cluster/", get(handlers::cluster))
        .route("/cluster", get(handlers::cluster))
        .layer(DefaultBodyLimit::max(body_limit))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));

    let internal = Router::new()
        .route("/internal/apply", post(handlers::internal_apply))
        .route("/internal/read", post(handlers::internal_read))
        .route("/internal/scan", get(handlers::internal_scan))
        .route("/internal/merkle", post(handlers::internal_merkle))
        .route("/internal/buckets", post(handlers::internal_buckets))
        .layer(DefaultBodyLimit::max(
            INTERNAL_BODY_BYTES_MAX.max(body_limit),
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_secret,
        ));

    Router::new()
        .merge(kv)
        .merge(internal)
        .route("/health", get(handlers::health))
        .route("/metrics", get(metrics::render))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn_with_state(metrics, metrics::track))
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    ApiError::Overloaded
                }))
                .load_shed()
                .concurrency_limit(in_flight_max),
        )
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().chars().take(200).collect())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
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

/// Client routes: when `KV_API_TOKEN` is set, require `Authorization: Bearer <token>`.
async fn require_token(
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
    Ok(next.run(request).await)
}

/// Internal routes: require the cluster secret, compared in constant time.
async fn require_secret(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let secret = state.coord.config().cluster_secret.0.as_bytes();
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

#[cfg(test)]
mod tests {
    //! Handler tests with `oneshot` over a single-node app on the in-memory store.

    use super::*;
    use axum::http::{Method, Request as HttpRequest, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use shared::config::Config;
    use shared::storage::{MemoryStore, Store};
    use tower::ServiceExt;

    fn test_app(vars: &[(&str, &str)]) -> Router {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cfg = Config::from_lookup(|name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .unwrap();
        let coord = Coordinator::new(Arc::new(cfg), Store::Memory(MemoryStore::default())).unwrap();
        app(coord)
    }

    async fn call(
        app: &Router,
        method: Method,
        uri: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let request = HttpRequest::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.unwrap_or("").to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let ctype = response.headers().get("content-type").cloned();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(ctype.unwrap(), "application/json", "{status}");
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn crud_round_trip() {
        let app = test_app(&[]);
        let (status, body) = call(
            &app,
            Method::POST,
            "/kv/",
            Some(r#"{"key":"k","value":{"x":[1,2]}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["acks"], json!(["node1"]));
        let (status, body) = call(&app, Method::GET, "/kv/?key=k", None).await;
        assert_eq!(
            (status, body["value"].clone()),
            (StatusCode::OK, json!({"x": [1, 2]}))
        );
        let (status, body) = call(&app, Method::GET, "/kv/k", None).await;
        assert_eq!(
            (status, body["value"].clone()),
            (StatusCode::OK, json!({"x": [1, 2]}))
        );
        let (status, _) = call(&app, Method::DELETE, "/kv/k", None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(&app, Method::GET, "/kv/?key=k", None).await;
        assert_eq!(
            (status, body),
            (StatusCode::NOT_FOUND, json!({"key": "k", "value": null}))
        );
        let (_, snap) = call(
            &app,
            Method::GET,
            "/snapshot/?versions=true&tombstones=true",
            None,
        )
        .await;
        assert_eq!(snap["data"]["k"]["deleted"], true);
        let (_, snap) = call(&app, Method::GET, "/snapshot/", None).await;
        assert_eq!(snap["count"], 0);
    }

    #[tokio::test]
    async fn errors_are_json_with_the_right_status() {
        let app = test_app(&[("KV_KEY_BYTES_MAX", "4")]);
        let cases = [
            (
                Method::POST,
                "/kv/",
                Some("nope"),
                StatusCode::BAD_REQUEST,
                "bad_json",
            ),
            (
                Method::POST,
                "/kv/",
                Some(r#"{"key":"toolong","value":1}"#),
                StatusCode::BAD_REQUEST,
                "bad_key",
            ),
            (
                Method::GET,
                "/kv/?key=a&consistency=x",
                None,
                StatusCode::BAD_REQUEST,
                "bad_consistency",
            ),
            (
                Method::GET,
                "/missing",
                None,
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                Method::POST,
                "/health",
                None,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                Method::POST,
                "/internal/apply",
                Some("{}"),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
        ];
        for (method, uri, body, status, code) in cases {
            let (got, answer) = call(&app, method.clone(), uri, body).await;
            assert_eq!(got, status, "{method} {uri}: {answer}");
            assert_eq!(answer["error"]["code"], code, "{method} {uri}");
        }
        let (_, snap) = call(&app, Method::GET, "/snapshot/", None).await;
        assert_eq!(snap["count"], 0, "nothing stored");
    }
}
