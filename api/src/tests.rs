//! Handler tests with `oneshot` over a single-node app on the in-memory store.

use super::*;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request as HttpRequest, StatusCode, header};
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
    let cfg =
        Config::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .unwrap();
    let coord = Coordinator::new(Arc::new(cfg), Store::Memory(MemoryStore::default())).unwrap();
    app(coord)
}

async fn call(app: &Router, method: Method, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
    let request = HttpRequest::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.unwrap_or("").to_owned()))
        .unwrap();
    send(app, request).await
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
        (status, &body["key"], &body["value"], &body["deleted"]),
        (
            StatusCode::NOT_FOUND,
            &json!("k"),
            &Value::Null,
            &json!(true)
        ),
        "a deleted key names its tombstone: {body}"
    );
    let (status, body) = call(&app, Method::GET, "/kv/?key=never", None).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"key": "never", "value": null})
        )
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

async fn send(app: &Router, request: HttpRequest<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let ctype = response.headers().get("content-type").cloned();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(ctype.unwrap(), "application/json", "{status}");
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn strict_parsing_refuses_what_it_cannot_read_exactly() {
    let app = test_app(&[]);
    let cases = [
        (Method::GET, "/kv/?key=%FF", None, "bad_query"),
        (Method::DELETE, "/kv/?key=%C3", None, "bad_query"),
        (Method::GET, "/kv/?key=a&key=b", None, "bad_query"),
        (Method::GET, "/kv/%FF", None, "bad_key"),
        (Method::GET, "/kv/a%00b", None, "bad_key"),
        (Method::DELETE, "/kv/?key=a%0Ab", None, "bad_key"),
        (Method::GET, "/snapshot/?versions=1", None, "bad_query"),
        (Method::GET, "/snapshot/?tombstones=", None, "bad_query"),
        (
            Method::POST,
            "/kv/",
            Some(r#"{"key":"a","key":"b","value":1}"#),
            "bad_json",
        ),
        (
            Method::PUT,
            "/kv/a",
            Some(r#"{"value":{"x":1,"x":2}}"#),
            "bad_json",
        ),
    ];
    for (method, uri, body, code) in cases {
        let (status, answer) = call(&app, method.clone(), uri, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{method} {uri}: {answer}");
    }
    // A bad X-Consistency is refused even when the query overrides it;
    // when both are valid, the query wins.
    let with_header = |method: Method, header: &str| {
        HttpRequest::builder()
            .method(method)
            .uri("/kv/?key=k&consistency=one")
            .header("x-consistency", header)
            .body(Body::empty())
            .unwrap()
    };
    let (status, answer) = send(&app, with_header(Method::GET, "most")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_consistency");
    let (status, answer) = send(&app, with_header(Method::DELETE, "all")).await;
    assert_eq!(
        (status, answer["consistency"].as_str()),
        (StatusCode::OK, Some("one"))
    );
    // A Content-Type that is not text is not JSON either.
    let request = HttpRequest::builder()
        .method(Method::POST)
        .uri("/kv/")
        .header(
            "content-type",
            axum::http::HeaderValue::from_bytes(b"application/\xffjson").unwrap(),
        )
        .body(Body::from(r#"{"key":"k","value":1}"#))
        .unwrap();
    let (status, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Emoji and right-to-left keys round-trip in both forms.
    let key = "😀 שלום/..%2F";
    let path = format!("/kv/{}", shared::core::request::encode_component(key));
    let (status, answer) = call(&app, Method::PUT, &path, Some(r#"{"value":"ok"}"#)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["key"], key);
    let query = format!("/kv/?key={}", shared::core::request::encode_component(key));
    let (status, answer) = call(&app, Method::GET, &query, None).await;
    assert_eq!(
        (status, answer["key"].as_str()),
        (StatusCode::OK, Some(key))
    );
    let (_, snap) = call(
        &app,
        Method::GET,
        "/snapshot/?versions=true&tombstones=true",
        None,
    )
    .await;
    assert_eq!(snap["count"], 2, "only the good writes were stored: {snap}");
}

/// A body that announces `len` bytes and never sends one.
struct Stalled {
    len: u64,
}

impl axum::body::HttpBody for Stalled {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

fn stalled_write(len: u64) -> HttpRequest<Body> {
    HttpRequest::builder()
        .method(Method::POST)
        .uri("/kv/")
        .header("content-type", "application/json")
        .body(Body::new(Stalled { len }))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn bodies_are_bounded_in_size_and_time() {
    let app = test_app(&[]);
    // A refused body ends the connection, and the answer says so.
    let mut request = stalled_write(100 * 1024 * 1024);
    request.headers_mut().insert(
        header::CONTENT_LENGTH,
        HeaderValue::from_static("104857600"),
    );
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()[header::CONNECTION], "close");
    // 100 MB announced: refused before reading (time is paused, so a
    // read would end in the 408 below instead).
    let (status, answer) = send(&app, stalled_write(100 * 1024 * 1024)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large");
    // A body that never arrives: 408 after the body read timeout.
    let (status, answer) = send(&app, stalled_write(10)).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{answer}");
    assert_eq!(answer["error"]["code"], "request_timeout");
}

/// `/metrics` has its own state (the node and the request series): it
/// still sees earlier requests, and its wrong methods still get the JSON 405.
#[tokio::test]
async fn metrics_show_request_series_and_node_counters() {
    let app = test_app(&[]);
    let (status, _) = call(&app, Method::GET, "/kv/?key=a", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let request = HttpRequest::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        text.contains(r#"kv_http_requests_total{route="/kv/",method="GET",status="404"} 1"#),
        "{text}"
    );
    assert!(text.contains("kv_reads_total 1"), "{text}");
    let (status, answer) = call(&app, Method::POST, "/metrics", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{answer}");
    assert_eq!(answer["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn openapi_document_is_served_and_names_every_client_route() {
    let app = test_app(&[("KV_API_TOKEN", "t")]);
    let (status, doc) = call(&app, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK, "open like /health");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let routes = [
        ("/kv/", ["get", "post", "put", "delete"].as_slice()),
        ("/kv/{key}", &["get", "put", "delete"]),
        ("/kv/batch", &["post"]),
        ("/kv/watch/", &["get"]),
        ("/kv/route/", &["get"]),
        ("/kv/explain/", &["get"]),
        ("/snapshot/", &["get"]),
        ("/restore/", &["post"]),
        ("/cluster/", &["get"]),
        ("/cluster/views", &["get"]),
        ("/cluster/members", &["get", "post"]),
        ("/cluster/members/{id}", &["delete"]),
        ("/cluster/change/resume", &["post"]),
        ("/ui/", &["get"]),
        ("/health", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
    ];
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), routes.len());
    for (path, methods) in routes {
        let ops = paths[path].as_object().unwrap();
        let mut named: Vec<&str> = ops.keys().map(String::as_str).collect();
        named.sort_unstable();
        let mut want = methods.to_vec();
        want.sort_unstable();
        assert_eq!(named, want, "{path}");
    }
    assert!(doc["components"]["schemas"]["Error"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearerAuth"].is_object());
    assert!(doc["components"]["parameters"]["ConsistencyHeader"].is_object());
}

/// Without a change log (the memory store keeps none) a watch is refused
/// with its own code; bad watch parameters are 400 before that.
#[tokio::test]
async fn watch_without_a_change_log_is_503_and_bad_parameters_400() {
    let app = test_app(&[]);
    let (status, body) = call(&app, Method::GET, "/kv/watch/?prefix=a", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "watch_disabled", "{body}");
    for query in ["last_event_id=12", "prefix=a&key=b"] {
        let (status, body) = call(&app, Method::GET, &format!("/kv/watch/?{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
}

/// The dashboard's files are open and self-contained; its data is a client
/// route (token) and a peer that does not answer is shown, not fatal.
#[tokio::test]
async fn dashboard_files_are_open_and_its_data_needs_the_token() {
    // node2 listens nowhere: port 1 on loopback refuses at once.
    let app = test_app(&[
        ("KV_API_TOKEN", "t"),
        (
            "KV_PEERS",
            "node1=http://127.0.0.1:9,node2=http://127.0.0.1:1",
        ),
    ]);
    for (uri, ctype) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let request = HttpRequest::builder().uri(uri).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], ctype, "{uri}");
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("connect-src 'self'"), "{csp}");
    }
    let request = HttpRequest::builder()
        .uri("/ui")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(response.headers()[header::LOCATION], "/ui/");

    let (status, answer) = call(&app, Method::GET, "/cluster/views", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["error"]["code"], "unauthorized");
    let (status, answer) = call(&app, Method::GET, "/internal/status", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a peer route: {answer}");

    let with_token = |uri: &str| {
        HttpRequest::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, "Bearer t")
            .body(Body::empty())
            .unwrap()
    };
    // A client request that calls no peer, so the window has something to show.
    let (status, _) = send(&app, with_token("/kv/route/?key=a")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, views) = send(&app, with_token("/cluster/views")).await;
    assert_eq!(status, StatusCode::OK, "{views}");
    assert_eq!(views["node"], "node1");
    assert_eq!(views["ring"]["arcs"].as_array().unwrap().len(), 256);
    let nodes = views["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let (me, peer) = (&nodes[0], &nodes[1]);
    assert_eq!(
        (&me["id"], &me["self"], &me["reachable"]),
        (&json!("node1"), &json!(true), &json!(true))
    );
    let buckets = me["status"]["requests"]["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{views}");
    assert_eq!(buckets[0]["requests"], 1);
    assert_eq!(me["status"]["restore"]["state"], "idle");
    assert_eq!(
        me["status"]["peers"]["node2"]["health"], "suspect",
        "the failed call marked node2 suspect at once: {views}"
    );
    assert_eq!(
        (&peer["id"], &peer["reachable"]),
        (&json!("node2"), &json!(false))
    );
    assert_eq!(peer["error"], "unreachable", "{views}");
    assert_eq!(peer["status"], Value::Null);
}

#[tokio::test]
async fn membership_changes_need_the_secret_and_a_valid_member() {
    let app = test_app(&[("KV_CLUSTER_SECRET", "membership-secret")]);
    let (status, view) = call(&app, Method::GET, "/cluster/members", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        (view["epoch"].as_u64(), view["phase"].as_str()),
        (Some(1), Some("stable"))
    );
    assert_eq!(view["members"][0]["state"], "member");
    let join = r#"{"id": "node2", "url": "http://127.0.0.1:9"}"#;
    let (status, body) = call(&app, Method::POST, "/cluster/members", Some(join)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let with_secret = |method: Method, uri: &str, body: &str| {
        HttpRequest::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("x-kv-cluster-secret", "membership-secret")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    for bad in [
        r#"{"id": "node2"}"#,
        r#"{"id": "node 2", "url": "http://127.0.0.1:9"}"#,
        r#"{"id": "node2", "url": "ftp://x:1"}"#,
        r#"{"id": "node2", "url": "http://127.0.0.1:9", "extra": 1}"#,
        "[]",
    ] {
        let (status, body) = send(&app, with_secret(Method::POST, "/cluster/members", bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, body) = send(
        &app,
        with_secret(Method::DELETE, "/cluster/members/node1", ""),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("last_member")),
        "{body}"
    );
    let (status, body) = send(
        &app,
        with_secret(Method::DELETE, "/cluster/members/node7", ""),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_a_member")),
        "{body}"
    );
    let (status, body) = send(
        &app,
        with_secret(Method::POST, "/cluster/change/resume", ""),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("nothing_to_resume")),
        "{body}"
    );
    // Nothing changed.
    let (_, view) = call(&app, Method::GET, "/cluster/members", None).await;
    assert_eq!(view["epoch"].as_u64(), Some(1), "{view}");
}
