//! The compose cluster: `docker compose up --build --scale worker1=3` with
//! the registry-free override and an env file as a user's `.env`, then: the
//! file's KV_* and EMAIL_* variables in every container, three distinct
//! workers of node1 that each take jobs, the seed's scenarios through the
//! containers, a `docker compose stop node2` / `start node2` (scenario III)
//! and a network partition. Run by `make compose-test` (ignored by `make
//! test`: it needs a Docker engine and the host ports 8001-8004).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kv_tests::{json, read_json, send_json, wait_for};
use serde_json::Value;

const PROJECT: &str = "kvcompose";

/// node1's worker containers (`--scale worker1=3`).
const NODE1_WORKERS: usize = 3;

/// The test's `.env` (given with `--env-file`, so a developer's own `.env`
/// does not apply): short periods, workers that log each job they run, and
/// two variables compose has no default for, to see them reach containers.
const ENV_FILE: &str = "\
KV_HEARTBEAT_INTERVAL_S=1
KV_ANTI_ENTROPY_INTERVAL_S=5
KV_CLUSTER_SECRET=compose-test-cluster-secret
RUST_LOG=info,worker=debug
KV_JOB_ATTEMPTS_MAX=9
EMAIL_RATE_PER_MINUTE=61
";

fn env_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("kvcompose-{}.env", std::process::id()));
    std::fs::write(&path, ENV_FILE).expect("write the env file");
    path
}

/// `docker compose` (v2) when present, else `docker-compose` (v1).
fn compose_cmd() -> Vec<String> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if v2 {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `docker compose --env-file <test env> -p kvcompose -f docker-compose.yml
/// -f docker-compose.local.yml`.
fn compose_command() -> Command {
    let cmd = compose_cmd();
    let mut command = Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        .arg("--env-file")
        .arg(env_file())
        .args([
            "-p",
            PROJECT,
            "-f",
            "docker-compose.yml",
            "-f",
            "docker-compose.local.yml",
        ])
        .current_dir(root());
    command
}

fn compose(args: &[&str]) -> String {
    let out = compose_command()
        .args(args)
        .output()
        .expect("run docker compose");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "compose {args:?} failed:\n{text}");
    text
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A container's log (stdout and stderr).
fn docker_logs(container: &str) -> String {
    let out = Command::new("docker")
        .args(["logs", container])
        .output()
        .expect("run docker logs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Tears the cluster down, volumes included, however the test ends.
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(out) = compose_command().args(["logs", "--tail", "30"]).output()
        {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
        let _ = compose_command()
            .args(["--profile", "grow", "down", "-v", "--remove-orphans"])
            .output();
        let _ = std::fs::remove_file(env_file());
    }
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    fn url(i: usize) -> String {
        format!("http://127.0.0.1:{}", 8001 + i)
    }
    async fn send(
        &self,
        method: reqwest::Method,
        i: usize,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let req = self.http.request(method, format!("{}{path}", Self::url(i)));
        send_json(req, path, body).await
    }
    async fn put(&self, i: usize, key: &str, value: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::PUT,
            i,
            "/kv/",
            Some(json!({"key": key, "value": value})),
        )
        .await
    }
    async fn get(&self, i: usize, key: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::GET,
            i,
            &format!("/kv/?key={}", kv_tests::encode(key)),
            None,
        )
        .await
    }
    async fn snapshot_has(&self, i: usize, key: &str) -> bool {
        let (_, body) = self
            .send(reqwest::Method::GET, i, "/snapshot/?limit=10000", None)
            .await;
        body["data"].get(key).is_some()
    }
    async fn healthy(&self, i: usize) -> bool {
        self.http
            .get(format!("{}/health", Self::url(i)))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and host ports 8001-8004; run with make compose-test"]
async fn compose_cluster_runs_the_seed_scenarios() {
    let started = Instant::now();
    let _teardown = Teardown;
    compose(&["--profile", "grow", "down", "-v", "--remove-orphans"]);
    compose(&[
        "up",
        "-d",
        "--build",
        "--scale",
        &format!("worker1={NODE1_WORKERS}"),
    ]);
    let c = Client {
        http: kv_tests::client_builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap(),
    };
    for i in 0..3 {
        wait_for(
            &format!("node{} healthy", i + 1),
            Duration::from_secs(90),
            || async { c.healthy(i).await.then_some(()) },
        )
        .await;
    }
    eprintln!("compose cluster healthy after {:?}", started.elapsed());

    // Every variable of the env file reached the API and worker containers;
    // one set nowhere stays unset (the code's default holds).
    for container in ["node1_1", "node3_1", "worker1_1", "worker2_1"] {
        let env = docker(&[
            "inspect",
            "-f",
            "{{range .Config.Env}}{{println .}}{{end}}",
            &format!("{PROJECT}_{container}"),
        ]);
        for expected in [
            "KV_JOB_ATTEMPTS_MAX=9",
            "EMAIL_RATE_PER_MINUTE=61",
            "KV_HEARTBEAT_INTERVAL_S=1",
            "KV_CLUSTER_SECRET=compose-test-cluster-secret",
        ] {
            assert!(
                env.lines().any(|l| l == expected),
                "{container} lacks {expected}:\n{env}"
            );
        }
        // Compose v1 lists it bare (`KV_VNODES`, which Docker documents as
        // "removed from the environment"); v2 leaves it out.
        assert!(
            !env.lines().any(|l| l.starts_with("KV_VNODES=")),
            "{container}: an unset variable must stay unset:\n{env}"
        );
    }

    // --scale worker1=3: three workers with distinct names (each container's
    // host name), each taking replication jobs from node1's queue.
    let workers: Vec<String> = (1..=NODE1_WORKERS)
        .map(|n| format!("{PROJECT}_worker1_{n}"))
        .collect();
    let hosts: Vec<String> = workers
        .iter()
        .map(|w| docker(&["inspect", "-f", "{{.Config.Hostname}}", w]))
        .collect();
    wait_for(
        "three distinct workers registered on node1's queue",
        Duration::from_secs(30),
        || async {
            let names = docker(&[
                "exec",
                &format!("{PROJECT}_redis1_1"),
                "redis-cli",
                "ZRANGE",
                "kv:node1:q:replicate:workers",
                "0",
                "-1",
            ]);
            let all = hosts
                .iter()
                .all(|h| names.lines().any(|n| n.contains(&format!("-{h}-"))));
            all.then(|| eprintln!("node1's replication workers:\n{names}"))
        },
    )
    .await;
    let mut round = 0;
    wait_for(
        "each of node1's three workers to run a replication job",
        Duration::from_secs(90),
        || {
            round += 1;
            let (c, workers) = (&c, &workers);
            let round = round;
            async move {
                // More writes through node1: each queues a job for the
                // replica that did not take part in the quorum.
                for n in 0..20 {
                    let (status, body) = c.put(0, &format!("scaled-{round}-{n}"), json!(n)).await;
                    assert_eq!(status, 200, "{body}");
                }
                workers
                    .iter()
                    .all(|w| docker_logs(w).contains("replication job run"))
                    .then_some(())
            }
        },
    )
    .await;
    for w in &workers {
        let logs = docker_logs(w);
        eprintln!(
            "{w}: {} replication jobs run",
            logs.matches("replication job run").count()
        );
        assert!(
            !logs.contains("still active within threshold"),
            "{w}: workers collided on their name:\n{logs}"
        );
    }

    // I. CRUD.
    assert_eq!(
        c.send(
            reqwest::Method::POST,
            0,
            "/kv/",
            Some(json!({"key": "username123", "value": "mci_admin"}))
        )
        .await
        .0,
        200
    );
    assert_eq!(c.get(0, "username123").await.1["value"], "mci_admin");
    assert_eq!(
        c.send(reqwest::Method::DELETE, 0, "/kv/?key=username123", None)
            .await
            .0,
        200
    );
    assert_eq!(c.get(0, "username123").await.0, 404);
    // II. Replication: node2's own snapshot shows backup1; PUT at A, GET at B.
    assert_eq!(c.put(0, "backup1", json!("saved")).await.0, 200);
    wait_for("backup1 on node2", Duration::from_secs(10), || async {
        c.snapshot_has(1, "backup1").await.then_some(())
    })
    .await;
    assert_eq!(c.put(0, "key-x", json!(42)).await.0, 200);
    assert_eq!(c.get(1, "key-x").await.1["value"], 42);
    // IV. Heartbeat status in node1's Redis.
    wait_for(
        "node_status:node1 = up",
        Duration::from_secs(20),
        || async {
            (docker(&[
                "exec",
                &format!("{PROJECT}_redis1_1"),
                "redis-cli",
                "GET",
                "node_status:node1",
            ]) == "up")
                .then_some(())
        },
    )
    .await;
    // V. JSON errors through the containers.
    let (status, body) = c
        .send(reqwest::Method::POST, 2, "/kv/", Some(json!({"value": 1})))
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("missing_key"))
    );
    // VII. Chain.
    assert_eq!(c.put(0, "test1", json!("v")).await.0, 200);
    assert_eq!(c.get(1, "test1").await.1["value"], "v");
    assert_eq!(
        c.send(reqwest::Method::DELETE, 2, "/kv/?key=test1", None)
            .await
            .0,
        200
    );
    let (status, body) = c.get(0, "test1").await;
    assert_eq!(
        (status, &body["key"], &body["value"]),
        (404, &json!("test1"), &json!(null))
    );

    // III. docker compose stop node2; PUT a key whose primary is node2 through node1; start node2.
    let mut key = String::new();
    for n in 0..1000 {
        let k = format!("crash_test{n}");
        let (_, route) = c
            .send(
                reqwest::Method::GET,
                0,
                &format!("/kv/route/?key={k}"),
                None,
            )
            .await;
        if route["primary"] == "node2" {
            key = k;
            break;
        }
    }
    assert!(!key.is_empty());
    compose(&["stop", "node2"]);
    let (status, body) = c.put(0, &key, json!("while node2 was stopped")).await;
    assert_eq!(status, 200, "{body}");
    compose(&["start", "node2"]);
    wait_for("node2 healthy again", Duration::from_secs(60), || async {
        c.healthy(1).await.then_some(())
    })
    .await;
    wait_for(
        "node2 to restore the key",
        Duration::from_secs(30),
        || async { c.snapshot_has(1, &key).await.then_some(()) },
    )
    .await;

    // Partition: cut node3 off the network; quorum writes go on; reconnect; converge.
    let network = format!("{PROJECT}_default");
    let node3 = format!("{PROJECT}_node3_1");
    docker(&["network", "disconnect", &network, &node3]);
    let mut written = Vec::new();
    for n in 0..10 {
        let k = format!("partition-{n}");
        let (status, body) = c.put(n % 2, &k, json!(n)).await;
        assert_eq!(status, 200, "{body}");
        written.push(k);
    }
    // With its service name as an alias again, as compose gave it: without
    // it the others cannot resolve "node3" any more.
    docker(&["network", "connect", "--alias", "node3", &network, &node3]);
    wait_for(
        "node3 to converge after the partition",
        Duration::from_secs(60),
        || async {
            for k in &written {
                if !c.snapshot_has(2, k).await {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    // Growth: the "grow" profile's node4 starts outside the cluster, is
    // added with the cluster secret, and serves every key once its share
    // has moved.
    compose(&["--profile", "grow", "up", "-d", "node4", "worker4"]);
    wait_for("node4 healthy", Duration::from_secs(90), || async {
        c.healthy(3).await.then_some(())
    })
    .await;
    let (status, body) = c.get(3, &written[0]).await;
    assert_eq!(status, 503, "not a member yet: {body}");
    let resp = c
        .http
        .post(format!("{}/cluster/members", Client::url(0)))
        .header("x-kv-cluster-secret", "compose-test-cluster-secret")
        .json(&json!({"id": "node4", "url": "http://node4:8004"}))
        .send()
        .await
        .expect("join");
    let (status, body) = read_json(resp).await;
    assert_eq!(status, 202, "{body}");
    wait_for(
        "node4's join to finish",
        Duration::from_secs(90),
        || async {
            let (_, view) = c
                .send(reqwest::Method::GET, 0, "/cluster/members", None)
                .await;
            assert_ne!(view["change"]["state"], "abandoned", "{view}");
            (view["change"]["state"] == "done").then_some(())
        },
    )
    .await;
    let (_, view) = c
        .send(reqwest::Method::GET, 3, "/cluster/members", None)
        .await;
    assert_eq!(view["members"].as_array().map(Vec::len), Some(4), "{view}");
    for (n, k) in written.iter().enumerate() {
        let (status, body) = c.get(3, k).await;
        assert_eq!(
            (status, body["value"].as_u64()),
            (200, Some(n as u64)),
            "{k}: {body}"
        );
    }
    eprintln!("compose test passed in {:?}", started.elapsed());
}
