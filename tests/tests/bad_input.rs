//! Bad input gets a clear JSON 4xx and changes nothing.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use kv_tests::{Cluster, Options, TEST_SECRET, json};
use reqwest::Method;

/// method, path, content type, body, expected status, expected error code.
type Case = (
    Method,
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_a_json_4xx_and_stores_nothing() {
    let c = Cluster::start(
        Options::default()
            .env("KV_KEY_BYTES_MAX", "16")
            .env("KV_VALUE_BYTES_MAX", "64"),
    )
    .await;
    let json_type = "application/json";
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/kv/",
            json_type,
            b"{not json".to_vec(),
            400,
            "bad_json",
        ),
        (
            Method::POST,
            "/kv/",
            json_type,
            b"".to_vec(),
            400,
            "bad_json",
        ),
        (
            Method::POST,
            "/kv/",
            json_type,
            b"[1,2]".to_vec(),
            400,
            "bad_json",
        ),
        (
            Method::POST,
            "/kv/",
            json_type,
            br#"{"value": 1}"#.to_vec(),
            400,
            "missing_key",
        ),
        (
            Method::POST,
            "/kv/",
            json_type,
            br#"{"key": "", "value": 1}"#.to_vec(),
            400,
            "bad_key",
        ),
        (
            Method::POST,
            "/kv/",
            json_type,
            br#"{"key": 12, "value": 1}"#.to_vec(),
            400,
            "bad_key",
        ),
        (
            Method::POST,
            "/kv/",
            json_type,
            br#"{"key": "k"}"#.to_vec(),
            400,
            "missing_value",
        ),
        (
            Method::POST,
            "/kv/",
            json_type,
            br#"{"key": "k", "value": 1, "vaule": 2}"#.to_vec(),
            400,
            "bad_json",
        ),
        (
            Method::POST,
            "/kv/",
            json_type,
            br#"{"key": "a\u0000b", "value": 1}"#.to_vec(),
            400,
            "bad_key",
        ),
        // Key one byte over the limit of 16.
        (
            Method::POST,
            "/kv/",
            json_type,
            br#"{"key": "12345678901234567", "value": 1}"#.to_vec(),
            400,
            "bad_key",
        ),
        // Value over its limit of 64 bytes.
        (
            Method::POST,
            "/kv/",
            json_type,
            format!(r#"{{"key": "big", "value": "{}"}}"#, "x".repeat(80)).into_bytes(),
            400,
            "value_too_large",
        ),
        (
            Method::POST,
            "/kv/",
            "text/html",
            br#"{"key": "k", "value": 1}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            Method::PUT,
            "/kv/pathkey",
            json_type,
            br#"{"key": "other", "value": 1}"#.to_vec(),
            400,
            "key_mismatch",
        ),
        (
            Method::GET,
            "/kv/",
            json_type,
            Vec::new(),
            400,
            "missing_key",
        ),
        (
            Method::GET,
            "/kv/?key=",
            json_type,
            Vec::new(),
            400,
            "bad_key",
        ),
        (
            Method::DELETE,
            "/kv/",
            json_type,
            Vec::new(),
            400,
            "missing_key",
        ),
        (
            Method::GET,
            "/kv/?key=a&consistency=most",
            json_type,
            Vec::new(),
            400,
            "bad_consistency",
        ),
        (
            Method::GET,
            "/snapshot/?limit=0",
            json_type,
            Vec::new(),
            400,
            "bad_query",
        ),
        (
            Method::GET,
            "/snapshot/?cursor=-1",
            json_type,
            Vec::new(),
            400,
            "bad_query",
        ),
        (
            Method::POST,
            "/restore/?from=node9",
            json_type,
            Vec::new(),
            400,
            "unknown_node",
        ),
        (
            Method::GET,
            "/nowhere",
            json_type,
            Vec::new(),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/snapshot/",
            json_type,
            Vec::new(),
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, ctype, body, status, code) in cases {
        let (got, answer) = c.raw(method.clone(), 0, path, ctype, body.clone()).await;
        assert_eq!(
            got,
            status,
            "{method} {path} {:?}: {answer}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(answer["error"]["code"], code, "{method} {path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // Nesting within serde's limit but over ours.
    let deep = format!(
        r#"{{"key": "deep", "value": {}{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let (status, answer) = c
        .raw(Method::POST, 0, "/kv/", json_type, deep.into_bytes())
        .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (400, json!("value_too_deep"))
    );

    // A body over the request limit: 413.
    // (Small enough to sit in socket buffers, so the client reads the answer.)
    let huge = vec![b' '; 64 * 1024];
    let (status, answer) = c.raw(Method::POST, 0, "/kv/", json_type, huge).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large");

    // Nothing was stored anywhere.
    for i in 0..3 {
        let snap = c.snapshot(i).await;
        assert!(snap.is_empty(), "node{} stored {snap:?}", i + 1);
    }

    // Keys at the limit, with odd characters, still work and round-trip exactly.
    for key in ["1234567890123456", "../a%2Fb", "emoji😀", "שלום"] {
        let (status, body) = c.put(0, key, json!("ok")).await;
        assert_eq!(status, 200, "{key}: {body}");
        let (status, body) = c.get(1, key).await;
        assert_eq!((status, body["key"].as_str().unwrap()), (200, key));
    }
    // The node is still healthy.
    assert_eq!(c.request(Method::GET, 0, "/health", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_need_the_cluster_secret_and_refuse_future_versions() {
    let c = Cluster::start(
        Options {
            nodes: 1,
            ..Options::default()
        }
        .env("KV_API_TOKEN", "client-token-1"),
    )
    .await;
    let far_future = "99999999999999:0:node1";
    let body = json!({"from": "node9", "records": [{"key": "bomb", "record": {"version": far_future, "value": 1}}]});

    let apply = "/internal/apply";
    let (status, answer) = post(&c, apply, Auth::None, &body).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    assert_eq!(
        post(&c, apply, Auth::Secret("wrong-secret"), &body).await.0,
        403
    );

    // A client token is not a cluster secret: internal routes still refuse it.
    for path in [
        "/internal/apply",
        "/internal/read",
        "/internal/merkle",
        "/internal/buckets",
    ] {
        let (status, answer) = post(&c, path, Auth::Bearer("client-token-1"), &body).await;
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (401, json!("unauthorized")),
            "{path}: {answer}"
        );
        let (status, _) = post(&c, path, Auth::Secret("client-token-1"), &body).await;
        assert_eq!(status, 403, "{path}");
    }

    // With the secret, a version far in the future is refused, not stored.
    let (status, answer) = post(&c, apply, Auth::Secret(TEST_SECRET), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"], json!(["refused"]));

    // Nesting 100,000 deep (within the default body limit) is a parse error, not a crash.
    let deep = format!(
        r#"{{"key": "deep", "value": {}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let resp = c
        .http
        .post(format!("{}/kv/", c.url(0)))
        .bearer_auth("client-token-1")
        .body(deep)
        .send()
        .await
        .unwrap();
    let (status, answer) = kv_tests::read_json(resp).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (400, json!("bad_json")),
        "{answer}"
    );

    // Client token: missing → 401, wrong → 403, right → 200; /health stays open.
    let (status, answer) = c.get(0, "bomb").await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    let resp = c
        .http
        .get(format!("{}/kv/?key=bomb", c.url(0)))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(kv_tests::read_json(resp).await.0, 403);
    let resp = c
        .http
        .get(format!("{}/kv/?key=bomb", c.url(0)))
        .bearer_auth("client-token-1")
        .send()
        .await
        .unwrap();
    let (status, answer) = kv_tests::read_json(resp).await;
    assert_eq!(status, 404, "the bomb was not stored: {answer}");
    assert_eq!(c.request(Method::GET, 0, "/health", None).await.0, 200);

    // The cluster secret and the client token never leave the node: not in
    // /cluster/, /metrics or any error, nor in the log.
    let mut seen = String::new();
    for path in ["/cluster/", "/metrics", "/kv/?key=x", "/internal/read"] {
        let resp = c
            .http
            .get(format!("{}{path}", c.url(0)))
            .bearer_auth("client-token-1")
            .send()
            .await
            .unwrap();
        seen.push_str(&resp.text().await.unwrap());
    }
    seen.push_str(&c.api_log(0));
    assert!(!seen.contains(TEST_SECRET), "cluster secret leaked");
    assert!(!seen.contains("client-token-1"), "client token leaked");
}

/// How a request authenticates itself.
enum Auth<'a> {
    None,
    /// `x-kv-cluster-secret`.
    Secret(&'a str),
    /// `Authorization: Bearer` (the client token).
    Bearer(&'a str),
}

/// POSTs `body` as JSON to node 0's `path`; status and JSON answer.
async fn post(
    c: &Cluster,
    path: &str,
    auth: Auth<'_>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = c.http.post(format!("{}{path}", c.url(0))).json(body);
    req = match auth {
        Auth::None => req,
        Auth::Secret(secret) => req.header("x-kv-cluster-secret", secret),
        Auth::Bearer(token) => req.bearer_auth(token),
    };
    kv_tests::read_json(req.send().await.unwrap()).await
}
