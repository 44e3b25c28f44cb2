//! The dashboard: `/ui/` (plain HTML, JavaScript and CSS compiled into the
//! binary; no build step, nothing fetched from elsewhere) and the one route
//! its page polls, `GET /cluster/views`, every node's status gathered by
//! this node (see `shared::node::status`).
//!
//! The static files are open like `/health` (they hold no data); the data
//! route is a client route, behind the optional client token. With
//! `KV_API_TOKEN` set, the page asks for the token once and keeps it in the
//! browser's `localStorage`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::metrics::Metrics;
use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const STYLE_CSS: &str = include_str!("../../ui/style.css");

/// The page may load only its own files and call only its own node.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Served from the binary: a new build serves new files at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

/// `GET /ui/`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/style.css`
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /ui`: to `/ui/`, so the page's relative links resolve.
pub async fn to_index() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /cluster/views`: every node's status as this node gathered it just
/// now. Peers that do not answer within the peer timeout are listed as
/// unreachable from here; the answer itself is always 200.
pub async fn cluster_views(State((state, metrics)): State<(AppState, Metrics)>) -> Response {
    let requests = metrics.request_series(shared::clock::now_ms());
    Json(state.coord.cluster_status(requests).await).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        for file in [INDEX_HTML, APP_JS, STYLE_CSS] {
            // The SVG namespace is a name, not a place the page goes to.
            let file = file.replace("http://www.w3.org/2000/svg", "");
            assert!(!file.contains("http://") && !file.contains("https://"));
            assert!(!file.contains("@import") && !file.contains("@font-face"));
        }
        assert!(INDEX_HTML.contains(r#"src="app.js""#));
        assert!(INDEX_HTML.contains(r#"href="style.css""#));
        assert!(APP_JS.contains("'../cluster/views'"));
    }
}
