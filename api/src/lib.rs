//! The HTTP API of one node: an axum [`Router`] over the shared coordinator.
//!
//! [`app`] builds the whole router, so tests drive it with `oneshot` and the
//! binary only adds a listener. Every response, errors included, is JSON.
//!
//! The modules form a ladder, each importing only those below it
//! (`scripts/check-ladder.sh` checks it): [`error`] and [`state`];
//! [`metrics`]; [`routes`] and [`middleware`]; this file and [`server`].

pub mod error;
pub mod metrics;
pub mod middleware;
pub mod routes;
pub mod server;
pub mod state;

#[cfg(test)]
mod tests;

pub use routes::admin::OPENAPI_JSON;
pub use routes::internal::INTERNAL_BODY_BYTES_MAX;

use std::sync::Arc;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post};
use shared::node::Coordinator;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;
use crate::middleware::{
    client_gate, close_after_refused_body, method_not_allowed, no_route, observe_request,
    panic_response, require_secret,
};
use crate::routes::{admin, batch, dashboard, internal, kv, members, watch};
use crate::state::AppState;

/// The whole router of a node.
pub fn app(coord: Arc<Coordinator>) -> Router {
    let cfg = coord.config();
    let body_limit = cfg.body_bytes_max();
    let in_flight_max = cfg.requests_in_flight_max;
    let metrics = metrics::Metrics::default();
    let watch = shared::node::watch::ChangeFeed::start(Arc::new(cfg.clone()), coord.store());
    let state = AppState { coord, watch };
    let state_for_span = state.clone();

    // The dashboard's data and a node's status need the request window too.
    let views = get(dashboard::cluster_views).with_state((state.clone(), metrics.clone()));
    let status = get(internal::internal_status).with_state((state.clone(), metrics.clone()));

    let client = Router::new()
        .route(
            "/kv/",
            get(kv::get_query)
                .post(kv::put_body)
                .put(kv::put_body)
                .delete(kv::delete_query),
        )
        .route(
            "/kv",
            get(kv::get_query)
                .post(kv::put_body)
                .put(kv::put_body)
                .delete(kv::delete_query),
        )
        .route("/kv/batch", post(batch::batch))
        .route("/kv/batch/", post(batch::batch))
        .route("/kv/route/", get(kv::route))
        .route("/kv/route", get(kv::route))
        .route("/kv/watch/", get(watch::watch))
        .route("/kv/watch", get(watch::watch))
        .route("/kv/explain/", get(kv::explain))
        .route("/kv/explain", get(kv::explain))
        .route(
            "/kv/{key}",
            get(kv::get_path).put(kv::put_path).delete(kv::delete_path),
        )
        .route("/snapshot/", get(admin::snapshot))
        .route("/snapshot", get(admin::snapshot))
        .route("/restore/", post(admin::restore))
        .route("/restore", post(admin::restore))
        .route("/cluster/", get(admin::cluster))
        .route("/cluster", get(admin::cluster))
        .route("/cluster/views", views.clone())
        .route("/cluster/views/", views)
        .route("/cluster/members", get(members::members))
        .route("/cluster/members/", get(members::members))
        .layer(DefaultBodyLimit::max(body_limit))
        .route_layer(from_fn_with_state(state.clone(), client_gate));

    // Joins and leaves carry the cluster secret or the client token
    // (checked in the handlers).
    let membership = Router::new()
        .route("/cluster/members", post(members::join))
        .route("/cluster/members/", post(members::join))
        .route("/cluster/members/{id}", delete(members::leave))
        .route("/cluster/change/resume", post(members::resume));

    let node = Router::new()
        .route("/internal/apply", post(internal::internal_apply))
        .route("/internal/read", post(internal::internal_read))
        .route("/internal/range", post(internal::internal_range))
        .route("/internal/collect", post(internal::internal_collect))
        .route("/internal/explain", post(internal::internal_explain))
        .route("/internal/merkle", post(internal::internal_merkle))
        .route("/internal/buckets", post(internal::internal_buckets))
        .route("/internal/rebalance", post(members::internal_rebalance))
        .route("/internal/cleanup", post(members::internal_cleanup))
        .route_layer(from_fn_with_state(state.clone(), members::check_epoch))
        // Whatever the caller's epoch: how epochs are exchanged.
        .route(
            "/internal/topology",
            get(members::internal_topology).post(members::internal_offer),
        )
        .route("/internal/status", status)
        .layer(DefaultBodyLimit::max(
            INTERNAL_BODY_BYTES_MAX.max(body_limit),
        ))
        .route_layer(from_fn_with_state(state.clone(), require_secret));

    Router::new()
        .merge(client)
        .merge(membership)
        .merge(node)
        .route("/health", get(admin::health))
        .route(
            "/metrics",
            get(metrics::render).with_state((state.clone(), metrics.clone())),
        )
        .route("/openapi.json", get(admin::openapi))
        // The page's files are open like /health; its data is not.
        .route("/ui", get(dashboard::to_index))
        .route("/ui/", get(dashboard::index))
        .route("/ui/app.js", get(dashboard::script))
        .route("/ui/style.css", get(dashboard::style))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(from_fn_with_state(
            (state_for_span, metrics),
            observe_request,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    ApiError::Overloaded
                }))
                .load_shed()
                .concurrency_limit(in_flight_max),
        )
        .layer(from_fn(close_after_refused_body))
}
