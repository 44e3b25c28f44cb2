//! Hostile input against real nodes: every answer is a JSON 4xx (or, for
//! broken HTTP framing, a 400 or a closed connection), never a 5xx; nothing
//! is stored; the node stays healthy and its memory bounded.
//!
//! `bad_input.rs` covers the ordinary mistakes; this file covers limits to
//! the byte, odd and invalid text, duplicate JSON members, oversized and
//! mis-framed bodies, and slowloris connections. Raw TCP is used wherever an
//! HTTP client would refuse to send the request or would tidy it up.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use kv_tests::reqwest::{Method, header::HeaderValue};
use kv_tests::{Cluster, Options, encode, json, read_json};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client's own bound on reading one raw answer, so a hung server fails
/// the test instead of hanging it.
const RAW_READ_TIMEOUT: Duration = Duration::from_secs(15);
const JSON: &str = "application/json";

fn addr(c: &Cluster, i: usize) -> String {
    c.url(i).trim_start_matches("http://").to_owned()
}

/// What came back on a raw connection: every status line seen, and the
/// first answer's body.
#[derive(Debug)]
struct RawAnswer {
    statuses: Vec<u16>,
    first_body: Vec<u8>,
    text: String,
}

impl RawAnswer {
    fn first_json(&self) -> Value {
        serde_json::from_slice(&self.first_body)
            .unwrap_or_else(|_| panic!("first answer is not JSON: {:?}", self.text))
    }

    /// Never a 5xx, whatever else happened.
    fn assert_no_5xx(&self, what: &str) {
        assert!(
            self.statuses.iter().all(|s| *s < 500),
            "{what}: server error in {:?}",
            self.text
        );
    }
}

fn parse_answer(bytes: &[u8]) -> RawAnswer {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect();
    let first_body = match text.find("\r\n\r\n") {
        Some(head_end) => {
            let head = text[..head_end].to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let start = head_end + 4;
            bytes[start.min(bytes.len())..(start + len).min(bytes.len())].to_vec()
        }
        None => Vec::new(),
    };
    RawAnswer {
        statuses,
        first_body,
        text,
    }
}

/// Reads until the server closes (or resets) the connection.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(RAW_READ_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("the server answers or closes the connection");
        match read {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `request` as is; with `finish`, closes our sending side after it
/// (so the server sees the end of a truncated body). Reads to the close.
async fn raw_exchange(addr: &str, request: &[u8], finish: bool) -> RawAnswer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // A write may fail once the server has answered and closed: fine.
    let _ = stream.write_all(request).await;
    if finish {
        let _ = stream.shutdown().await;
    }
    parse_answer(&read_to_close(&mut stream).await)
}

fn head(method: &str, target: &[u8], extra: &str) -> Vec<u8> {
    let mut out = method.as_bytes().to_vec();
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: kv\r\nConnection: close\r\n{extra}\r\n").as_bytes(),
    );
    out
}

/// A request with a JSON body and a correct Content-Length.
fn with_body(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head(
        method,
        target.as_bytes(),
        &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ),
    );
    out.extend_from_slice(body);
    out
}

/// A field of `/proc/<pid>/status`, in kB.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').trim().split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

async fn assert_healthy(c: &Cluster, i: usize) {
    assert_eq!(c.request(Method::GET, i, "/health", None).await.0, 200);
    let log = c.api_log(i);
    assert!(!log.contains("panicked"), "node{} panicked:\n{log}", i + 1);
}

async fn assert_nothing_stored(c: &Cluster) {
    for i in 0..c.nodes.len() {
        let snap = c.snapshot(i).await;
        assert!(snap.is_empty(), "node{} stored {snap:?}", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_odd_text_and_duplicates() {
    let c = Cluster::start(
        Options::default()
            .env("KV_KEY_BYTES_MAX", "64")
            .env("KV_VALUE_BYTES_MAX", "64"),
    )
    .await;
    // 64 bytes: sixteen 4-byte emoji. One byte more is over.
    let key_max = "😀".repeat(16);
    let key_over = format!("{key_max}a");
    let value_max = json!("x".repeat(62)); // 64 bytes of JSON with its quotes
    let value_over = json!("x".repeat(63));
    let kq = |k: &str| format!("/kv/?key={}", encode(k));
    let kp = |k: &str| format!("/kv/{}", encode(k));

    // method, path, body, expected status, expected code.
    let mut cases: Vec<(Method, String, Vec<u8>, u16, &str)> = Vec::new();
    let body = |v: Value| serde_json::to_vec(&v).unwrap();
    // Key one byte over, in every form.
    for m in [Method::POST, Method::PUT] {
        cases.push((
            m,
            "/kv/".into(),
            body(json!({"key": key_over, "value": 1})),
            400,
            "bad_key",
        ));
    }
    cases.push((
        Method::PUT,
        kp(&key_over),
        body(json!({"value": 1})),
        400,
        "bad_key",
    ));
    for m in [Method::GET, Method::DELETE] {
        cases.push((m.clone(), kq(&key_over), vec![], 400, "bad_key"));
        cases.push((m, kp(&key_over), vec![], 400, "bad_key"));
    }
    cases.push((
        Method::GET,
        format!("/kv/route/?key={}", encode(&key_over)),
        vec![],
        400,
        "bad_key",
    ));
    // Value one byte over, both forms; whitespace does not count, bytes do.
    cases.push((
        Method::POST,
        "/kv/".into(),
        body(json!({"key": "v", "value": value_over})),
        400,
        "value_too_large",
    ));
    cases.push((
        Method::PUT,
        "/kv/v".into(),
        body(json!({"value": value_over})),
        400,
        "value_too_large",
    ));
    cases.push((
        Method::PUT,
        "/kv/v".into(),
        format!(r#"{{"value": "{}é"}}"#, "x".repeat(61)).into_bytes(),
        400,
        "value_too_large",
    ));
    // Empty keys.
    for (m, path, b) in [
        (Method::PUT, "/kv/", br#"{"value": 1}"#.to_vec()),
        (Method::PUT, "/kv/", br#"{"key": "", "value": 1}"#.to_vec()),
        (Method::DELETE, "/kv/?key=", vec![]),
        (Method::GET, "/kv/route/?key=", vec![]),
    ] {
        let code = if b.starts_with(br#"{"value"#) {
            "missing_key"
        } else {
            "bad_key"
        };
        cases.push((m, path.into(), b, 400, code));
    }
    // NUL and control characters, escaped in JSON or percent-encoded.
    for k in [
        "a\u{0}b",
        "\u{7}",
        "a\u{1f}b",
        "\u{7f}",
        "a\u{85}b",
        "line\r\nX: y",
    ] {
        cases.push((
            Method::POST,
            "/kv/".into(),
            body(json!({"key": k, "value": 1})),
            400,
            "bad_key",
        ));
        cases.push((Method::GET, kq(k), vec![], 400, "bad_key"));
        cases.push((Method::DELETE, kp(k), vec![], 400, "bad_key"));
        cases.push((
            Method::PUT,
            kp(k),
            body(json!({"value": 1})),
            400,
            "bad_key",
        ));
    }
    // A raw control character inside a JSON string is not JSON.
    cases.push((
        Method::POST,
        "/kv/".into(),
        b"{\"key\": \"a\x01b\", \"value\": 1}".to_vec(),
        400,
        "bad_json",
    ));
    // Invalid UTF-8: in the body, as a lone surrogate escape, in the query
    // and in the path (percent-encoded, so a client can send it).
    for b in [
        b"{\"key\": \"\xff\", \"value\": 1}".to_vec(),
        b"{\"key\": \"k\", \"value\": \"\xc3\x28\"}".to_vec(),
        b"{\"key\": \"k\", \"value\": \"\xed\xa0\x80\"}".to_vec(),
        br#"{"key": "\ud800", "value": 1}"#.to_vec(),
        br#"{"key": "k", "value": "\udc00"}"#.to_vec(),
    ] {
        cases.push((Method::POST, "/kv/".into(), b, 400, "bad_json"));
    }
    for q in ["%FF", "a%C3", "%C0%AF", "%ED%A0%80"] {
        cases.push((
            Method::GET,
            format!("/kv/?key={q}"),
            vec![],
            400,
            "bad_query",
        ));
        cases.push((
            Method::DELETE,
            format!("/kv/?key={q}"),
            vec![],
            400,
            "bad_query",
        ));
        cases.push((Method::GET, format!("/kv/{q}"), vec![], 400, "bad_key"));
        cases.push((Method::DELETE, format!("/kv/{q}"), vec![], 400, "bad_key"));
        cases.push((
            Method::PUT,
            format!("/kv/{q}"),
            body(json!({"value": 1})),
            400,
            "bad_key",
        ));
    }
    // A parameter given twice has no single meaning.
    cases.push((
        Method::DELETE,
        "/kv/?key=a&key=b".into(),
        vec![],
        400,
        "bad_query",
    ));
    cases.push((
        Method::GET,
        "/kv/?key=a&consistency=one&consistency=all".into(),
        vec![],
        400,
        "bad_query",
    ));
    // Duplicate JSON members: in the envelope, and anywhere inside the value.
    for b in [
        r#"{"key": "a", "key": "b", "value": 1}"#,
        r#"{"key": "a", "key": "a", "value": 1}"#,
        r#"{"key": "a", "value": 1, "value": 2}"#,
        r#"{"key": "a", "value": {"x": 1, "x": 2}}"#,
        r#"{"key": "a", "value": [{"y": {"x": 1, "x": 1}}]}"#,
        r#"{"key": "a", "value": {"x": 1, "\u0078": 2}}"#,
    ] {
        cases.push((Method::POST, "/kv/".into(), b.into(), 400, "bad_json"));
    }
    for b in [
        r#"{"value": {"x": 1, "x": 2}}"#,
        r#"{"value": 1, "value": 1}"#,
        r#"{"key": "a", "key": "a", "value": 1}"#,
    ] {
        cases.push((Method::PUT, "/kv/a".into(), b.into(), 400, "bad_json"));
    }

    for (method, path, b, status, code) in &cases {
        let (got, answer) = c.raw(method.clone(), 1, path, JSON, b.clone()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{method} {path} {:?}: {answer}",
            String::from_utf8_lossy(b)
        );
    }

    // Wrong content types: 415, also for a header that is not even text.
    for ctype in [
        "application/xml",
        "multipart/form-data; boundary=x",
        "image/png",
    ] {
        for (m, path) in [(Method::POST, "/kv/"), (Method::PUT, "/kv/a")] {
            let (got, answer) = c
                .raw(m, 0, path, ctype, br#"{"key": "a", "value": 1}"#.to_vec())
                .await;
            assert_eq!(got, 415, "{ctype}: {answer}");
            assert_eq!(answer["error"]["code"], "unsupported_media_type");
        }
    }
    let resp = c
        .http
        .post(format!("{}/kv/", c.url(0)))
        .header(
            "content-type",
            HeaderValue::from_bytes(b"application/\xffjson").unwrap(),
        )
        .body(r#"{"key": "a", "value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(read_json(resp).await.0, 415);

    // `..` in a raw path is not resolved: it names no route, and certainly
    // not /health. (An HTTP client would tidy it up, so raw TCP.)
    let answer = raw_exchange(&addr(&c, 0), &head("GET", b"/kv/../health", ""), false).await;
    assert_eq!(answer.statuses, vec![404], "{}", answer.text);
    assert_eq!(answer.first_json()["error"]["code"], "not_found");
    let answer = raw_exchange(&addr(&c, 0), &head("DELETE", b"/kv/a/../b", ""), false).await;
    assert_eq!(answer.statuses, vec![404], "{}", answer.text);
    // Raw bytes over 0x7F in the request target: refused before routing
    // (a bare 400 from the HTTP layer) or as a bad key; never stored.
    for target in [b"/kv/\xff".as_slice(), b"/kv/?key=\xff\xfe"] {
        let answer = raw_exchange(&addr(&c, 0), &head("DELETE", target, ""), false).await;
        answer.assert_no_5xx("raw non-UTF-8 target");
        assert!(
            answer.statuses.iter().all(|s| (400..500).contains(s)),
            "{}",
            answer.text
        );
    }

    assert_nothing_stored(&c).await;

    // What is valid round-trips exactly, through every form and node:
    // emoji (with joiners and flags), right-to-left text and its override
    // mark, path separators and dots, and a key exactly at the limit.
    let keys = [
        key_max.as_str(),
        "😀👨‍👩‍👧🏳️‍🌈",
        "שלום עולם",
        "مرحبا بالعالم",
        "\u{202e}txt.exe",
        "../etc/passwd",
        "a/../b",
        "a%2Fb",
        "%2F",
        "?x=1&y#z",
        "+ plus + space",
        "..",
        ".",
    ];
    let value = json!({"text": "שלום 😀 \u{202e}مرحبا", "list": [1, "é"]});
    for (n, key) in keys.iter().enumerate() {
        // Write in path form on one node (raw TCP for "." and "..", which
        // an HTTP client would resolve away)...
        let (status, answer) = if *key == "." || *key == ".." {
            let target = format!("/kv/{key}");
            let request = with_body("PUT", &target, &body(json!({"value": value})));
            let answer = raw_exchange(&addr(&c, n % 3), &request, false).await;
            (answer.statuses[0], answer.first_json())
        } else {
            c.raw(
                Method::PUT,
                n % 3,
                &kp(key),
                JSON,
                body(json!({"value": value})),
            )
            .await
        };
        assert_eq!(status, 200, "{key}: {answer}");
        assert_eq!(answer["key"], *key);
        // ...read it in query form on another and compare exactly.
        let (status, answer) = c.get((n + 1) % 3, key).await;
        assert_eq!(status, 200, "{key}: {answer}");
        assert_eq!(answer["key"].as_str(), Some(*key));
        assert_eq!(answer["value"], value, "{key}");
        // Path-form read on the third node (raw for the dot keys).
        let answer = if *key == "." || *key == ".." {
            let target = format!("/kv/{key}");
            let answer = raw_exchange(
                &addr(&c, (n + 2) % 3),
                &head("GET", target.as_bytes(), ""),
                false,
            )
            .await;
            assert_eq!(answer.statuses, vec![200], "{key}: {}", answer.text);
            answer.first_json()
        } else {
            let (status, answer) = c.request(Method::GET, (n + 2) % 3, &kp(key), None).await;
            assert_eq!(status, 200, "{key}: {answer}");
            answer
        };
        assert_eq!(answer["key"].as_str(), Some(*key));
        assert_eq!(answer["value"], value, "{key}");
    }
    // The value at its limit is accepted, byte for byte.
    let (status, answer) = c.put(0, "max", value_max.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(c.get(2, "max").await.1["value"], value_max);
    // Exactly these keys are stored, no others (no U+FFFD stand-ins).
    let stored = c.snapshot(0).await;
    let mut names: Vec<&str> = stored.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = keys.iter().copied().chain(["max"]).collect();
    want.sort_unstable();
    assert_eq!(names, want);
    for i in 0..3 {
        assert_healthy(&c, i).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_misframed_bodies() {
    let c = Cluster::start(
        Options {
            nodes: 1,
            ..Options::default()
        }
        .env("KV_VALUE_BYTES_MAX", "64"),
    )
    .await;
    let node = addr(&c, 0);
    let pid = c.pids(0).0.expect("api pid");
    assert_healthy(&c, 0).await;
    let rss_before_kb = proc_status_kb(pid, "VmRSS");

    // 100 MB announced by Content-Length, on 8 connections at once, each
    // pushing as much as it can: 413 at once, and memory stays flat.
    const ANNOUNCED: usize = 100 * 1024 * 1024;
    let pushes: Vec<_> = (0..8)
        .map(|n| {
            let node = node.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(&node).await.unwrap();
                let request = head(
                    "POST",
                    b"/kv/",
                    &format!("Content-Type: application/json\r\nContent-Length: {ANNOUNCED}\r\n"),
                );
                stream.write_all(&request).await.unwrap();
                let chunk = format!(r#"{{"key": "huge{n}", "value": "{}"#, "x".repeat(64 * 1024));
                let mut sent = 0;
                while sent < ANNOUNCED {
                    if stream.write_all(chunk.as_bytes()).await.is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                parse_answer(&read_to_close(&mut stream).await)
            })
        })
        .collect();
    for push in pushes {
        let answer = push.await.unwrap();
        assert_eq!(answer.statuses, vec![413], "{}", answer.text);
        assert_eq!(answer.first_json()["error"]["code"], "payload_too_large");
    }
    let peak_kb = proc_status_kb(pid, "VmHWM");
    assert!(
        peak_kb < rss_before_kb + 64 * 1024,
        "peak RSS {peak_kb} kB, was {rss_before_kb} kB before 800 MB were announced"
    );

    // A refused body ends the connection, and the answer says so, so that a
    // client does not pool it. (No `Connection: close` from us here: the
    // read below only ends because the server closes.)
    let cases = [
        (
            "Content-Type: text/html\r\nContent-Length: 2\r\n".to_owned(),
            b"{}".to_vec(),
            415,
        ),
        (
            format!("Content-Type: application/json\r\nContent-Length: {ANNOUNCED}\r\n"),
            vec![b' '; 1024],
            413,
        ),
    ];
    for (headers, body, status) in cases {
        let request = [
            b"POST /kv/ HTTP/1.1\r\nHost: kv\r\n".as_slice(),
            headers.as_bytes(),
            b"\r\n",
            &body,
        ]
        .concat();
        let answer = raw_exchange(&node, &request, false).await;
        assert_eq!(answer.statuses, vec![status], "{}", answer.text);
        assert!(
            answer
                .text
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{}",
            answer.text
        );
    }

    // A chunked body that grows past the limit: 413.
    let limit = 64 + 1024 * 6 + 16 * 1024;
    let mut request = head(
        "POST",
        b"/kv/",
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
    );
    let piece = "x".repeat(4096);
    let mut sent = 0;
    while sent <= limit + 8192 {
        request.extend_from_slice(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
        sent += piece.len();
    }
    let answer = raw_exchange(&node, &request, false).await;
    assert_eq!(answer.statuses, vec![413], "{}", answer.text);
    assert_eq!(answer.first_json()["error"]["code"], "payload_too_large");
    // The same body within the limit but not JSON is only a 400.
    let answer = raw_exchange(
        &node,
        &[
            head(
                "POST",
                b"/kv/",
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            ),
            format!("{:x}\r\n{piece}\r\n0\r\n\r\n", piece.len()).into_bytes(),
        ]
        .concat(),
        false,
    )
    .await;
    assert_eq!(answer.statuses, vec![400], "{}", answer.text);

    // Truncated and mis-framed bodies: a 400 or a closed connection.
    let good = br#"{"key": "framed", "value": "abcdef"}"#;
    let ctype = "Content-Type: application/json\r\n";
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "Content-Length longer than the body, then EOF",
            [
                head("POST", b"/kv/", &format!("{ctype}Content-Length: 100\r\n")),
                good.to_vec(),
            ]
            .concat(),
            true,
        ),
        (
            "Content-Length shorter than the body",
            [
                head(
                    "POST",
                    b"/kv/",
                    &format!("{ctype}Content-Length: {}\r\n", good.len() - 4),
                ),
                good.to_vec(),
            ]
            .concat(),
            false,
        ),
        (
            "Content-Length 0 with a body",
            [
                head(
                    "PUT",
                    b"/kv/framed",
                    &format!("{ctype}Content-Length: 0\r\n"),
                ),
                br#"{"value": 1}"#.to_vec(),
            ]
            .concat(),
            false,
        ),
        (
            "a chunk cut short, then EOF",
            [
                head(
                    "POST",
                    b"/kv/",
                    &format!("{ctype}Transfer-Encoding: chunked\r\n"),
                ),
                b"40\r\n{\"key\": \"framed\", \"va".to_vec(),
            ]
            .concat(),
            true,
        ),
        (
            "a chunk size that is not hex",
            [
                head(
                    "POST",
                    b"/kv/",
                    &format!("{ctype}Transfer-Encoding: chunked\r\n"),
                ),
                b"zz\r\n{}\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            false,
        ),
        (
            "Content-Length and Transfer-Encoding both",
            [
                head(
                    "POST",
                    b"/kv/",
                    &format!("{ctype}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
                ),
                b"0\r\n\r\n".to_vec(),
                good.to_vec(),
            ]
            .concat(),
            false,
        ),
        (
            "two different Content-Lengths",
            [
                head(
                    "POST",
                    b"/kv/",
                    &format!(
                        "{ctype}Content-Length: 5\r\nContent-Length: {}\r\n",
                        good.len()
                    ),
                ),
                good.to_vec(),
            ]
            .concat(),
            false,
        ),
        (
            "a negative Content-Length",
            [
                head("POST", b"/kv/", &format!("{ctype}Content-Length: -1\r\n")),
                good.to_vec(),
            ]
            .concat(),
            false,
        ),
    ];
    for (what, request, finish) in cases {
        let answer = raw_exchange(&node, &request, finish).await;
        answer.assert_no_5xx(what);
        match answer.statuses.first() {
            // Closed without an answer, or the HTTP layer's bare 400 for a
            // request it cannot frame (the router never sees those).
            None => {}
            Some(400) if answer.first_body.is_empty() => {}
            Some(400) => assert!(answer.first_json()["error"]["code"].is_string(), "{what}"),
            Some(other) => panic!("{what}: {other} in {:?}", answer.text),
        }
    }

    assert_nothing_stored(&c).await;
    assert_healthy(&c, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_starve_clients() {
    const SLOW_CONNECTIONS: usize = 200;
    let c = Cluster::start(Options {
        nodes: 1,
        ..Options::default()
    })
    .await;
    let node = addr(&c, 0);
    let mut slow = Vec::with_capacity(SLOW_CONNECTIONS);
    for _ in 0..SLOW_CONNECTIONS {
        slow.push(TcpStream::connect(&node).await.expect("connect"));
    }
    // Half of them trickle a request head one byte per tick and never end
    // it; the other half send nothing at all.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let trickle = tokio::spawn(async move {
        let partial = b"POST /kv/?key=slow HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\nX-Slow: ";
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        let mut at = 0;
        loop {
            tokio::select! {
                _ = &mut stopped => return slow,
                _ = ticker.tick() => {}
            }
            if at < partial.len() {
                for stream in slow.iter_mut().step_by(2) {
                    let _ = stream.write_all(&partial[at..=at]).await;
                }
                at += 1;
            }
        }
    });

    // Meanwhile ordinary clients, with a 1 s timeout, are served.
    let client = kv_tests::client_builder()
        .timeout(Duration::from_secs(1))
        .no_proxy()
        .build()
        .unwrap();
    for n in 0..20 {
        let resp = client
            .get(format!("{}/health", c.url(0)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("health during slowloris: {e}"));
        assert_eq!(read_json(resp).await.0, 200);
        let key = format!("busy{n}");
        let resp = client
            .post(format!("{}/kv/", c.url(0)))
            .json(&json!({"key": key, "value": n}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("write during slowloris: {e}"));
        assert_eq!(read_json(resp).await.0, 200);
        let resp = client
            .get(format!("{}/kv/?key={key}", c.url(0)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("read during slowloris: {e}"));
        let (status, answer) = read_json(resp).await;
        assert_eq!((status, answer["value"].clone()), (200, json!(n)));
    }

    stop.send(()).unwrap();
    let slow = trickle.await.unwrap();
    assert_eq!(slow.len(), SLOW_CONNECTIONS);
    drop(slow);
    assert_healthy(&c, 0).await;
    assert!(
        !c.snapshot(0).await.contains_key("slow"),
        "a request that never finished its head stored something"
    );
}
