//! E-mail on every write, through the queue, against a real SMTP server on
//! loopback (a small sink in the test harness).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use kv_tests::smtp::{Auth, SmtpSink};
use kv_tests::{Cluster, Options, json, wait_for};

fn mail_options(port: u16, workers: usize) -> Options {
    Options {
        workers,
        ..Options::default()
    }
    .env("EMAIL_HOST", "127.0.0.1")
    .env("EMAIL_PORT", &port.to_string())
    .env("EMAIL_TLS", "none")
    .env("EMAIL_FROM", "kv@example.test")
    .env("EMAIL_TO", "ops@example.test")
    .env("EMAIL_TIMEOUT_S", "2")
    .env("EMAIL_ALERTS", "off")
    .env("KV_JOB_BACKOFF_BASE_MS", "200")
    .env("KV_JOB_BACKOFF_MAX_MS", "1000")
}

fn subjects(sink: &SmtpSink) -> Vec<String> {
    sink.all()
        .iter()
        .filter_map(|m| {
            m.lines()
                .find(|l| l.starts_with("Subject: "))
                .map(|l| l["Subject: ".len()..].to_owned())
        })
        .collect()
}

/// Seed scenario VI, with workers and without.
async fn scenario_vi(sync: &str) {
    let sink = SmtpSink::start(0, Auth::None).await;
    let workers = if sync == "on" { 1 } else { 0 };
    let c = Cluster::start(mail_options(sink.port, workers).env("KV_BACKGROUND_SYNC", sync)).await;
    let (status, body) = c.put(0, "email_test", json!({"hello": "mail"})).await;
    assert_eq!(status, 200, "{body}");
    wait_for("one message", Duration::from_secs(15), || async {
        (sink.count() >= 1).then_some(())
    })
    .await;
    let message = &sink.all()[0];
    for needle in [
        "Subject: [kvstore] write: email_test",
        "email_test",
        "node1",
        "hello",
        body["version"].as_str().unwrap(),
    ] {
        assert!(message.contains(needle), "{needle} missing in\n{message}");
    }
    // Exactly one: once the queue is idle, still one message.
    if sync == "on" {
        wait_for(
            "the e-mail queue to be idle",
            Duration::from_secs(10),
            || async {
                let view = c.cluster_view(0).await;
                let q = view["jobs"]["queues"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|q| q["queue"] == "kv:node1:q:email")
                    .unwrap()
                    .clone();
                (q["depth"] == 0 && q["in_flight"] == 0).then_some(())
            },
        )
        .await;
    }
    assert_eq!(sink.count(), 1, "{:?}", subjects(&sink));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_vi_sends_one_mail_per_write() {
    scenario_vi("on").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_vi_without_workers() {
    scenario_vi("off").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_do_not_wait_for_a_down_smtp_server_and_mail_arrives_later() {
    let port = kv_tests::free_port();
    let c = Cluster::start(mail_options(port, 1).env("KV_JOB_ATTEMPTS_MAX", "50")).await;
    let (status, body) = c.put(0, "while-smtp-down", json!(1)).await;
    assert_eq!(status, 200, "{body}");
    // The write was acknowledged with its mail only queued, not sent.
    let view = c.cluster_view(0).await;
    assert_eq!(view["stats"]["mail_enqueued"], 1, "{view}");
    assert_eq!(view["jobs"]["counters"]["mail_sent"], 0, "{view}");
    wait_for(
        "a failed send to be retried",
        Duration::from_secs(15),
        || async {
            let failed = c.cluster_view(0).await["jobs"]["counters"]["mail_failed"]
                .as_u64()
                .unwrap_or(0);
            (failed >= 1).then_some(())
        },
    )
    .await;
    let sink = SmtpSink::start(port, Auth::None).await;
    wait_for(
        "the mail once the server is up",
        Duration::from_secs(20),
        || async { (sink.count() >= 1).then_some(()) },
    )
    .await;
    assert!(sink.all()[0].contains("while-smtp-down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_authentication_is_dead_lettered_and_writes_go_on() {
    let sink = SmtpSink::start(0, Auth::Refuse).await;
    let c = Cluster::start(
        mail_options(sink.port, 1)
            .env("EMAIL_HOST_USER", "kv@example.test")
            .env("EMAIL_HOST_PASSWORD", "wrong-password"),
    )
    .await;
    let (status, body) = c.put(0, "auth-refused", json!(1)).await;
    assert_eq!(status, 200, "{body}");
    let view = wait_for("a dead letter", Duration::from_secs(20), || async {
        let view = c.cluster_view(0).await;
        (view["jobs"]["dead_letters"].as_u64().unwrap_or(0) >= 1).then_some(view)
    })
    .await;
    let letter = &view["jobs"]["dead_newest"][0];
    assert_eq!(letter["queue"], "kv:node1:q:email", "{letter}");
    assert!(
        letter["reason"].as_str().unwrap().contains("permanent"),
        "{letter}"
    );
    assert_eq!(
        letter["attempts"], 1,
        "a permanent error is not retried: {letter}"
    );
    assert!(
        !letter["reason"]
            .as_str()
            .unwrap()
            .contains("wrong-password"),
        "no secret in reasons"
    );
    assert_eq!(sink.count(), 0);
    // Writes are unaffected, and the password never reaches the logs.
    assert_eq!(c.put(1, "still-writing", json!(2)).await.0, 200);
    assert!(!c.api_log(0).contains("wrong-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_writes_a_hundred_mails_even_when_a_worker_dies() {
    let sink = SmtpSink::start(0, Auth::None).await;
    let mut c =
        Cluster::start(mail_options(sink.port, 0).env("EMAIL_RATE_PER_MINUTE", "1000")).await;
    for n in 0..100 {
        let (status, body) = c.put(n % 3, &format!("mail-{n}"), json!(n)).await;
        assert_eq!(status, 200, "{body}");
    }
    // Each node queued the mails of the writes it coordinated; start one
    // worker on node1 and kill it mid-way, then let others finish.
    c.spawn_worker(0);
    wait_for("some mails sent", Duration::from_secs(20), || async {
        (sink.count() >= 5).then_some(())
    })
    .await;
    c.kill_worker(0, 0);
    let at_kill = sink.count();
    for i in 0..3 {
        c.spawn_worker(i);
    }
    wait_for("100 distinct mails", Duration::from_secs(40), || async {
        let keys: std::collections::BTreeSet<String> = subjects(&sink).into_iter().collect();
        (keys.len() >= 100).then_some(())
    })
    .await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for s in subjects(&sink) {
        *seen.entry(s).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "100 writes: {} messages, {} distinct, {duplicates} duplicates ({at_kill} sent before the worker was killed)",
        sink.count(),
        seen.len()
    );
    assert_eq!(seen.len(), 100);
    // A duplicate is possible only if the worker died between the SMTP send
    // and recording it as sent; we allow at most the batch in flight.
    assert!(duplicates <= 4, "{duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_bound_writes_are_summed_up_in_one_digest() {
    let sink = SmtpSink::start(0, Auth::None).await;
    let c = Cluster::start(
        mail_options(sink.port, 1)
            .env("EMAIL_RATE_PER_MINUTE", "5")
            .env("EMAIL_RATE_WINDOW_S", "3")
            .env("EMAIL_KEY_PATTERNS", "bulk-*"),
    )
    .await;
    // Not matching the filter: no mail at all.
    assert_eq!(c.put(0, "quiet-key", json!(0)).await.0, 200);
    for n in 0..20 {
        assert_eq!(c.put(0, &format!("bulk-{n}"), json!(n)).await.0, 200);
    }
    // Writes may straddle two rate windows; each window sends at most 5
    // single mails and sums up the rest in one digest at its end.
    let count = |sink: &SmtpSink| {
        let subjects = subjects(sink);
        let singles = subjects
            .iter()
            .filter(|s| s.contains("write: bulk-"))
            .count();
        let digests: Vec<usize> = subjects
            .iter()
            .filter(|s| s.contains("more writes"))
            .map(|s| s.split_whitespace().nth(1).unwrap().parse().unwrap())
            .collect();
        (singles, digests)
    };
    let (singles, digests) = wait_for(
        "every write mailed or summed up",
        Duration::from_secs(30),
        || async {
            let (singles, digests) = count(&sink);
            (singles + digests.iter().sum::<usize>() >= 20).then_some((singles, digests))
        },
    )
    .await;
    eprintln!("rate bound: {singles} single mails + digests {digests:?}");
    assert!(
        !digests.is_empty() && singles <= 5 * (digests.len() + 1),
        "{singles} singles, digests {digests:?}"
    );
    assert_eq!(
        singles + digests.iter().sum::<usize>(),
        20,
        "every write once"
    );
    assert!(!subjects(&sink).iter().any(|s| s.contains("quiet-key")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_when_a_node_goes_down_and_one_when_it_is_back() {
    let sink = SmtpSink::start(0, Auth::None).await;
    let mut c = Cluster::start(
        mail_options(sink.port, 1)
            .env("EMAIL_ALERTS", "on")
            .env("KV_HEARTBEAT_INTERVAL_S", "0.3"),
    )
    .await;
    let status_in = |at: usize| {
        let c = &c;
        async move {
            let mut redis = c.redis(at).await;
            redis::cmd("GET")
                .arg("node_status:node3")
                .query_async::<Option<String>>(&mut redis)
                .await
                .ok()
                .flatten()
        }
    };
    wait_for("node3 up everywhere", Duration::from_secs(10), || async {
        (status_in(0).await.as_deref() == Some("up") && status_in(1).await.as_deref() == Some("up"))
            .then_some(())
    })
    .await;
    c.kill_api(2);
    wait_for("the down alert", Duration::from_secs(15), || async {
        subjects(&sink)
            .iter()
            .any(|s| s == "[kvstore] node3 is down")
            .then_some(())
    })
    .await;
    // Both live nodes saw the change; only one mail went out.
    let c2 = &c;
    wait_for(
        "node2 to see node3 down too",
        Duration::from_secs(10),
        || async move {
            let mut redis = c2.redis(1).await;
            let s: Option<String> = redis::cmd("GET")
                .arg("node_status:node3")
                .query_async(&mut redis)
                .await
                .ok()
                .flatten();
            (s.as_deref() == Some("down")).then_some(())
        },
    )
    .await;
    c.restart_api(2).await;
    wait_for("the up alert", Duration::from_secs(15), || async {
        subjects(&sink)
            .iter()
            .any(|s| s == "[kvstore] node3 is up")
            .then_some(())
    })
    .await;
    let all = subjects(&sink);
    assert_eq!(
        all.iter()
            .filter(|s| *s == "[kvstore] node3 is down")
            .count(),
        1,
        "{all:?}"
    );
    assert_eq!(
        all.iter().filter(|s| *s == "[kvstore] node3 is up").count(),
        1,
        "{all:?}"
    );
}
