//! `GET /kv/watch/`: the changes a node stores, as server-sent events,
//! against three real nodes — every change of the prefix in version order
//! per key, through a node failure; a watcher that reconnects with
//! `Last-Event-ID` misses nothing; a watcher that stops reading is told
//! `too_slow` and disconnected without slowing writes; bad input is 400.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kv_tests::{Cluster, Options, json};
use serde_json::Value;
use shared::core::record::Version;
use shared::core::watch::LogPosition;

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

/// A watch stream read event by event.
struct Watcher {
    resp: reqwest::Response,
    buf: String,
}

impl Watcher {
    async fn open(c: &Cluster, i: usize, query: &str, last_id: Option<&str>) -> Watcher {
        let mut req = c
            .http
            .get(format!("{}/kv/watch/?{query}", c.url(i)))
            .timeout(Duration::from_secs(120));
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("text/event-stream"), "{ctype}");
        Watcher {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (comments skipped), within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Sse> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                ev.data = serde_json::from_str(&data).unwrap();
                return Some(ev);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }
}

async fn put_all(c: &Cluster, i: usize, keys: &[String], value: Value, consistency: &str) {
    for k in keys {
        let (status, body) = c.put_with(i, k, value.clone(), consistency).await;
        assert_eq!(status, 200, "{body}");
    }
}

fn version(ev: &Sse) -> Version {
    ev.data["version"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_every_change_of_its_prefix_in_order_through_a_node_failure() {
    let mut c = Cluster::start(Options::default()).await;
    let mut w = Watcher::open(&c, 0, "prefix=w%2F", None).await;
    let keys: Vec<String> = (0..20).map(|i| format!("w/{i:02}")).collect();
    put_all(&c, 1, &keys, json!(1), "all").await;
    put_all(&c, 1, &["other/x".to_owned()], json!(1), "all").await;
    // node3 dies; the writes go on through node2 (node1 and node2 ack).
    c.kill_api(2);
    put_all(&c, 1, &keys, json!(2), "quorum").await;
    let (status, body) = c.delete(1, "w/05").await;
    assert_eq!(status, 200, "{body}");

    let mut last: BTreeMap<String, (Version, Value, String)> = BTreeMap::new();
    let mut events = 0;
    let done = |last: &BTreeMap<String, (Version, Value, String)>| {
        keys.iter().all(|k| match last.get(k) {
            Some((_, _, kind)) if k == "w/05" => kind == "delete",
            Some((_, value, _)) => *value == json!(2),
            None => false,
        })
    };
    while !done(&last) {
        let ev = w
            .next(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("events stopped after {events}: {last:?}"));
        events += 1;
        let key = ev.data["key"].as_str().unwrap().to_owned();
        assert!(key.starts_with("w/"), "{ev:?}");
        assert!(ev.id.is_some(), "{ev:?}");
        let v = version(&ev);
        if let Some((prev, _, _)) = last.get(&key) {
            assert!(v >= *prev, "{key}: {v} after {prev}");
        }
        assert_eq!(ev.data["deleted"] == true, ev.event == "delete", "{ev:?}");
        last.insert(key, (v, ev.data["value"].clone(), ev.event));
    }
    eprintln!("{events} events for 41 changes of 20 keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_reconnects_with_last_event_id_misses_nothing() {
    let c = Cluster::start(Options::default()).await;
    let mut w = Watcher::open(&c, 0, "prefix=r%2F", None).await;
    let first: Vec<String> = (0..10).map(|i| format!("r/a{i}")).collect();
    put_all(&c, 2, &first, json!("x"), "all").await;
    // Three events, then the watcher goes away.
    let mut seen: Vec<String> = Vec::new();
    let mut last_id = String::new();
    for _ in 0..3 {
        let ev = w.next(Duration::from_secs(20)).await.expect("an event");
        seen.push(ev.data["key"].as_str().unwrap().to_owned());
        last_id = ev.id.unwrap();
    }
    drop(w);
    let second: Vec<String> = (0..10).map(|i| format!("r/b{i}")).collect();
    put_all(&c, 1, &second, json!("y"), "all").await;
    // Back with Last-Event-ID: every change after it, then the live ones.
    let mut w = Watcher::open(&c, 0, "prefix=r%2F", Some(&last_id)).await;
    let live = "r/c0".to_owned();
    put_all(&c, 1, std::slice::from_ref(&live), json!("z"), "all").await;
    let mut want: Vec<String> = first.iter().chain(&second).cloned().collect();
    want.push(live);
    while !want.iter().all(|k| seen.contains(k)) {
        let ev = w
            .next(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("missing after resume: seen {seen:?}"));
        assert_ne!(ev.event, "reset", "{ev:?}");
        let id: LogPosition = ev.id.as_deref().unwrap().parse().unwrap();
        assert!(id > last_id.parse().unwrap(), "{ev:?} not after {last_id}");
        seen.push(ev.data["key"].as_str().unwrap().to_owned());
    }

    for (query, code) in [
        ("last_event_id=yesterday", "bad_last_event_id"),
        ("prefix=r&limit=3", "bad_query"),
    ] {
        let (status, body) = c
            .request(
                reqwest::Method::GET,
                1,
                &format!("/kv/watch/?{query}"),
                None,
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
}

/// A watcher that stops reading while writes go on: the feed never waits
/// for it (every write is acknowledged), and once it is more than the
/// buffer's 256 batches behind it gets an `error` event `too_slow` and the
/// stream ends; a new watch works at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_too_slow_for_the_feed_is_told_and_disconnected() {
    let c = Cluster::start(Options::default().env("KV_BACKGROUND_SYNC", "off")).await;
    let mut w = Watcher::open(&c, 0, "prefix=slow%2F", None).await;
    // 64 KiB values, one write per request: each lands in its own feed
    // batch. The socket buffers hold some megabytes of events; 1,000
    // writes (64 MiB of events) overflow them and the 256 batches behind.
    let value = json!("v".repeat(64 * 1024));
    let keys: Vec<String> = (0..1000).map(|i| format!("slow/{i:04}")).collect();
    put_all(&c, 0, &keys, value, "one").await;
    let mut events = 0usize;
    let last = loop {
        let ev = w
            .next(Duration::from_secs(30))
            .await
            .expect("the stream ends with an error event, not silence");
        events += 1;
        if ev.event != "put" {
            break ev;
        }
        assert!(
            events <= keys.len(),
            "every change was delivered: never too slow?"
        );
    };
    assert_eq!(last.event, "error", "{last:?}");
    assert_eq!(last.data["code"], "too_slow", "{last:?}");
    assert!(
        w.next(Duration::from_secs(10)).await.is_none(),
        "the stream ends after too_slow"
    );
    eprintln!("too_slow after {} of {} put events", events - 1, keys.len());
    // The node still serves watchers.
    let mut again = Watcher::open(&c, 0, "prefix=slow%2F", None).await;
    put_all(&c, 1, &["slow/after".to_owned()], json!(1), "all").await;
    let ev = again.next(Duration::from_secs(20)).await.expect("an event");
    assert_eq!(ev.data["key"], "slow/after", "{ev:?}");
}

/// A watcher that comes back after the change log was trimmed past its
/// last event is told so first (`reset`: list the keys again); one that
/// comes back within the log is not. The log is 20 changes here, and 300
/// writes each append an entry of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resuming_after_changes_the_log_dropped_is_told_to_list_again() {
    let c = Cluster::start(
        Options {
            nodes: 1,
            ..Options::default()
        }
        .env("KV_WATCH_LOG_LEN", "20"),
    )
    .await;
    let mut w = Watcher::open(&c, 0, "prefix=t%2F", None).await;
    put_all(&c, 0, &["t/first".to_owned()], json!(1), "one").await;
    let ev = w.next(Duration::from_secs(20)).await.expect("an event");
    let old_id = ev.id.expect("an id");
    drop(w);
    let many: Vec<String> = (0..300).map(|i| format!("t/m{i}")).collect();
    put_all(&c, 0, &many, json!(2), "one").await;

    let mut w = Watcher::open(&c, 0, "prefix=t%2F", Some(&old_id)).await;
    let ev = w.next(Duration::from_secs(20)).await.expect("an event");
    assert_eq!(ev.event, "reset", "{ev:?}");
    assert_eq!(ev.data["code"], "changes_dropped");
    drop(w);

    // Within the log: no reset, the next change comes first.
    let mut w = Watcher::open(&c, 0, "prefix=t%2F", None).await;
    put_all(&c, 0, &["t/last".to_owned()], json!(3), "one").await;
    let recent_id = w
        .next(Duration::from_secs(20))
        .await
        .and_then(|ev| ev.id)
        .expect("an event with an id");
    drop(w);
    let mut w = Watcher::open(&c, 0, "prefix=t%2F", Some(&recent_id)).await;
    put_all(&c, 0, &["t/after".to_owned()], json!(4), "one").await;
    let ev = w.next(Duration::from_secs(20)).await.expect("an event");
    assert_eq!(
        (ev.event.as_str(), ev.data["key"].as_str()),
        ("put", Some("t/after")),
        "{ev:?}"
    );
}
