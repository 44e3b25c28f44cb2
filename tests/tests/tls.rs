//! A TLS cluster: every node serves HTTPS with a certificate of a test CA,
//! nodes call each other with mutual TLS (`KV_TLS_CLIENT_AUTH=internal`),
//! and each node speaks TLS to its own Redis (`rediss://`, with the node's
//! certificate). The seed's seven scenarios pass on it, and what TLS must
//! refuse is refused.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use kv_tests::seed::{scenario_i, scenario_ii, scenario_v, scenario_vii};
use kv_tests::smtp::{Auth, SmtpSink};
use kv_tests::{
    Cluster, Options, TEST_SECRET, json, key_with_primary, make_certificates, read_json,
    tls_client_config, wait_for,
};
use reqwest::Method;

const ADMIN_TOKEN: &str = "an-operator-token-for-tests";

async fn node_status(c: &Cluster, at: usize, of: &str) -> Option<String> {
    let mut redis = c.try_redis(at).await?;
    redis::cmd("GET")
        .arg(format!("node_status:{of}"))
        .query_async(&mut redis)
        .await
        .ok()?
}

async fn wait_status(c: &Cluster, at: usize, of: &str, want: &str) {
    wait_for(
        &format!("node_status:{of} = {want} in node{}'s Redis", at + 1),
        Duration::from_secs(20),
        || async { (node_status(c, at, of).await.as_deref() == Some(want)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenarios_pass_over_tls() {
    let sink = SmtpSink::start(0, Auth::None).await;
    let mut c = Cluster::start(
        Options {
            workers: 1,
            tls: true,
            ..Options::default()
        }
        .env("KV_HEARTBEAT_INTERVAL_S", "0.3")
        .env("KV_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("EMAIL_HOST", "127.0.0.1")
        .env("EMAIL_PORT", &sink.port.to_string())
        .env("EMAIL_TLS", "none")
        .env("EMAIL_FROM", "kv@example.test")
        .env("EMAIL_TO", "ops@example.test")
        .env("EMAIL_ALERTS", "off"),
    )
    .await;
    assert!(c.url(0).starts_with("https://"));
    assert!(c.redis_url(0).starts_with("rediss://"));

    // I, II, V, VII: CRUD, replication, consistency levels, the chain.
    scenario_i(&c).await;
    scenario_ii(&c).await;
    scenario_v(&c).await;
    scenario_vii(&c).await;

    // VI: one e-mail per write (sent by the worker, which reached its
    // Redis over TLS to take the job).
    let (status, body) = c.put(0, "email_test", json!({"hello": "tls"})).await;
    assert_eq!(status, 200, "{body}");
    wait_for(
        "the e-mail of email_test",
        Duration::from_secs(20),
        || async {
            sink.all()
                .iter()
                .any(|m| m.contains("Subject: [kvstore] write: email_test"))
                .then_some(())
        },
    )
    .await;

    // IV: heartbeats recorded in Redis (read here over rediss://).
    wait_status(&c, 0, "node1", "up").await;
    wait_status(&c, 0, "node2", "up").await;

    // III: node2 stops; a key it owns is written through node1 and kept as
    // a hint; node2 is marked down, starts again, and restores the key.
    let key = key_with_primary(&c, "node2", "crash_test").await;
    c.kill_api(1);
    wait_status(&c, 0, "node2", "down").await;
    let (status, body) = c.put(0, &key, json!("written while node2 was down")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["hints"],
        json!([{"owner": "node2", "holder": "node1"}]),
        "{body}"
    );
    c.restart_api(1).await;
    wait_for("node2 to restore the key", Duration::from_secs(30), || {
        let (c, key) = (&c, &key);
        async move {
            let snap = c.snapshot(1).await;
            (snap.get(key).map(|r| r["value"].clone())
                == Some(json!("written while node2 was down")))
            .then_some(())
        }
    })
    .await;
    wait_status(&c, 0, "node2", "up").await;

    refusals(&c).await;
    kvctl_over_tls(&c);
    healthcheck_over_tls(&c);
    join_over_tls(&mut c).await;
}

/// `api healthcheck` (the container health check) speaks TLS to a node
/// that serves it, checking its certificate: exit 0, and 1 when the
/// certificate does not verify against the CA given.
fn healthcheck_over_tls(c: &Cluster) {
    let dir = c.tls_dir();
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let node = &c.nodes[0];
    let check = |ca: String| {
        let mut cmd = std::process::Command::new(kv_tests::binary("api"));
        cmd.arg("healthcheck")
            .env_clear()
            .env("KV_NODE_ID", &node.id)
            .env("KV_LISTEN", format!("{}:{}", node.host, node.api_port))
            .env("KV_PEERS", format!("{}={}", node.id, c.url(0)))
            .env("KV_TLS_CERT", file("node1.pem"))
            .env("KV_TLS_KEY", file("node1.key"))
            .env("KV_TLS_CA", ca);
        kv_tests::run_bounded(&mut cmd, None, Duration::from_secs(30))
    };
    let out = check(file("ca.pem"));
    assert_eq!(out.code, Some(0), "{out:?}");
    let rogue = c.dir.join("rogue-ca").join("ca.pem");
    let out = check(rogue.to_string_lossy().into_owned());
    assert_eq!(
        out.code,
        Some(1),
        "an unverified node is unhealthy: {out:?}"
    );
}

/// `kvctl` against the HTTPS API: it trusts the cluster's CA with
/// `--ca-cert`, fails to connect without it (exit 5), and takes the admin
/// token for membership commands.
fn kvctl_over_tls(c: &Cluster) {
    let ca = c.tls_dir().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let kvctl = |args: &[&str]| {
        let mut cmd = std::process::Command::new(kv_tests::binary("kvctl"));
        cmd.env_remove("KV_URL")
            .env_remove("KV_CLUSTER_SECRET")
            .env_remove("KV_ADMIN_TOKEN")
            .env_remove("KV_CA_CERT")
            .args(["--url", &c.url(1)])
            .args(args);
        kv_tests::run_bounded(&mut cmd, None, Duration::from_secs(30))
    };
    let out = kvctl(&["--ca-cert", ca, "put", "via-kvctl", "\"tls\""]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = kvctl(&["--ca-cert", ca, "get", "via-kvctl", "--raw"]);
    assert_eq!((out.code, out.stdout.trim()), (Some(0), "tls"), "{out:?}");
    let out = kvctl(&["get", "via-kvctl"]);
    assert_eq!(
        out.code,
        Some(5),
        "an unknown CA is a connection failure: {out:?}"
    );
    let out = kvctl(&["--ca-cert", ca, "--admin-token", ADMIN_TOKEN, "resume"]);
    assert_eq!(out.code, Some(2), "nothing to resume, but allowed: {out:?}");
    let out = kvctl(&[
        "--ca-cert",
        ca,
        "--admin-token",
        "a-wrong-token-of-length",
        "resume",
    ]);
    assert_eq!(out.code, Some(6), "{out:?}");
}

/// A fourth node joins the TLS cluster (asked with the admin token): it
/// pulls its share from the others over mutual TLS, and every key written
/// above reads through it.
async fn join_over_tls(c: &mut Cluster) {
    let before = c.snapshot(0).await;
    assert!(before.len() > 5, "{before:?}");
    let n4 = c.add_node().await;
    let (status, body) = read_json(
        c.http
            .post(format!("{}/cluster/members", c.url(0)))
            .header("x-kv-admin-token", ADMIN_TOKEN)
            .json(&json!({"id": c.nodes[n4].id, "url": c.url(n4)}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let view = c.change_finished(0, Duration::from_secs(90)).await.unwrap();
    assert_eq!(view["change"]["state"], "done", "{view}");
    assert_eq!(view["members"].as_array().unwrap().len(), 4, "{view}");
    for (key, record) in &before {
        let (status, body) = c.get(n4, key).await;
        if record["deleted"] == true {
            assert_eq!(status, 404, "{key}: {body}");
        } else {
            assert_eq!((status, &body["value"]), (200, &record["value"]), "{key}");
        }
    }
    assert!(
        !c.snapshot(n4).await.is_empty(),
        "node4 holds its share of the keys"
    );
}

/// A client trusting the CA in `trusted`, presenting `name`'s certificate
/// from `issued` (a folder of `scripts/gen-certs.sh`).
fn presenting(trusted: &std::path::Path, issued: &std::path::Path, name: &str) -> reqwest::Client {
    kv_tests::client_builder()
        .timeout(Duration::from_secs(15))
        .no_proxy()
        .tls_backend_preconfigured(tls_client_config(
            &trusted.join("ca.pem"),
            Some((
                &issued.join(format!("{name}.pem")),
                &issued.join(format!("{name}.key")),
            )),
        ))
        .build()
        .unwrap()
}

/// What a TLS cluster refuses: plain HTTP, internal calls without a client
/// certificate, a certificate of another CA, a plain-HTTP member; and the
/// admin token stands in for the secret on membership routes only.
async fn refusals(c: &Cluster) {
    // Plain HTTP to the HTTPS port: no answer.
    let plain = kv_tests::http_client(None);
    let url = c.url(0).replacen("https://", "http://", 1);
    assert!(plain.get(format!("{url}/health")).send().await.is_err());

    // The cluster secret alone does not open internal routes: mutual TLS
    // asks for the node's certificate too.
    let (status, body) = c.admin(Method::GET, 0, "/internal/status", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("client certificate"),
        "{body}"
    );
    let dir = c.tls_dir();
    let as_node2 = presenting(&dir, &dir, "node2");
    let (status, body) = read_json(
        as_node2
            .get(format!("{}/internal/status", c.url(0)))
            .header("x-kv-cluster-secret", TEST_SECRET)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // ...and the certificate alone does not either.
    let (status, _) = read_json(
        as_node2
            .get(format!("{}/internal/status", c.url(0)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    // A certificate from another CA fails the handshake.
    let rogue = c.dir.join("rogue-ca");
    make_certificates(&rogue, "node2", "127.0.0.1");
    let impostor = presenting(&dir, &rogue, "node2");
    let refused = impostor
        .get(format!("{}/internal/status", c.url(0)))
        .header("x-kv-cluster-secret", TEST_SECRET)
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // A client that does not trust the cluster's CA does not talk to it.
    let untrusting = kv_tests::http_client(Some(&rogue.join("ca.pem")));
    assert!(
        untrusting
            .get(format!("{}/health", c.url(0)))
            .send()
            .await
            .is_err()
    );

    // A TLS cluster takes no plain-HTTP member.
    let (status, body) = c
        .admin(
            Method::POST,
            0,
            "/cluster/members",
            Some(json!({"id": "node9", "url": "http://127.0.0.1:1"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("https://")
    );

    // The admin token opens membership routes (here: nothing to resume),
    // a wrong one does not, and it opens no internal route.
    let with_token = |token: &str| {
        c.http
            .post(format!("{}/cluster/change/resume", c.url(0)))
            .header("x-kv-admin-token", token)
    };
    let (status, body) = read_json(with_token(ADMIN_TOKEN).send().await.unwrap()).await;
    assert_ne!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "nothing_to_resume", "{body}");
    let (status, _) = read_json(with_token("a-wrong-token-of-length").send().await.unwrap()).await;
    assert_eq!(status, 403);
    let (status, _) = read_json(
        as_node2
            .get(format!("{}/internal/status", c.url(0)))
            .header("x-kv-admin-token", ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
}
