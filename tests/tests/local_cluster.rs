//! `make run`'s local cluster as a user meets it: scripts/run-cluster.sh
//! runs as a real process (the supervisor) on ports moved away from
//! 8001-8003 / 6381-6383, with the debug binaries. A SIGKILLed API is
//! reported and the other nodes keep answering and taking quorum writes;
//! a second start is refused while one runs; then the seed's scenario III
//! through `make node-stop` / `make node-start`: node2 stopped, a key whose
//! primary is node2 written through node1, node2 started, and node2's own
//! snapshot holds the key (and the writes it missed while its API was
//! dead). Ctrl-C (SIGINT to the whole process group) stops every process.
//! And `make run NODES=5`: five nodes, node5 stopped and started from
//! another shell.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{
    Output, TEST_SECRET, bin_dir, free_port_run, json, read_json, repo_root, run_bounded, wait_for,
};
use serde_json::Value;

const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// The supervisor process and what it was started with.
struct LocalCluster {
    child: Option<Child>,
    dir: PathBuf,
    api_base: u16,
    env: Vec<(String, String)>,
    http: reqwest::Client,
}

impl LocalCluster {
    fn start() -> LocalCluster {
        LocalCluster::start_with(3)
    }

    /// The script with `KV_NODES=nodes` (`make run NODES=...`).
    fn start_with(nodes: u16) -> LocalCluster {
        let dir =
            std::env::temp_dir().join(format!("kv-local-cluster-{}-{nodes}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let api_base = free_port_run(nodes);
        let redis_base = free_port_run(nodes);
        let env: Vec<(String, String)> = [
            ("KV_BIN_DIR", bin_dir().display().to_string()),
            ("KV_CLUSTER_DIR", dir.join("cluster").display().to_string()),
            ("KV_API_BASE_PORT", api_base.to_string()),
            ("KV_REDIS_BASE_PORT", redis_base.to_string()),
            ("KV_WORKERS", "1".to_owned()),
            ("KV_NODES", nodes.to_string()),
            // The repository's own .env (a developer's) must not apply.
            ("KV_ENV_FILE", String::new()),
            ("KV_CLUSTER_SECRET", TEST_SECRET.to_owned()),
            ("KV_HEARTBEAT_INTERVAL_S", "1".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let log = std::fs::File::create(dir.join("supervisor.log")).unwrap();
        let child = Command::new("bash")
            .arg(repo_root().join("scripts/run-cluster.sh"))
            .envs(env.iter().cloned())
            .env_remove("REDIS_PASSWORD")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: cleanup can reach every process it started.
            .process_group(0)
            .spawn()
            .expect("start scripts/run-cluster.sh");
        LocalCluster {
            child: Some(child),
            dir,
            api_base,
            env,
            http: kv_tests::client_builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .unwrap(),
        }
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.api_base as usize + i)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("supervisor.log")).unwrap_or_default()
    }

    /// The pid the supervisor recorded for `node`'s `role` (api, worker-1, redis).
    fn pid(&self, node: &str, role: &str) -> Option<u32> {
        let path = self
            .dir
            .join("cluster")
            .join(node)
            .join(format!("{role}.pid"));
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Whether the supervisor process still runs.
    fn supervisor_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// `make <target> NODE=<node>` from the repository, as a user types it.
    fn make(&self, target: &str, node: &str) -> Output {
        let mut cmd = Command::new("make");
        cmd.args(["--no-print-directory", "-s", "-C"])
            .arg(repo_root())
            .arg(target)
            .arg(format!("NODE={node}"))
            // Typed in another shell: without the NODES the cluster was
            // started with (the script reads them from the supervisor).
            .envs(self.env.iter().filter(|(k, _)| k != "KV_NODES").cloned())
            // A make started by cargo under `make test` passes its jobserver on.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL");
        run_bounded(&mut cmd, None, Duration::from_secs(90))
    }

    /// The script itself with `args`, bounded.
    fn script(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/run-cluster.sh"))
            .args(args)
            .envs(self.env.iter().cloned())
            .current_dir(&self.dir);
        run_bounded(&mut cmd, None, Duration::from_secs(30))
    }

    async fn request(
        &self,
        method: reqwest::Method,
        i: usize,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.url(i)));
        if let Some(body) = body {
            req = req.json(&body);
        }
        Some(read_json(req.send().await.ok()?).await)
    }

    async fn healthy(&self, i: usize) -> bool {
        self.http
            .get(format!("{}/health", self.url(i)))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Waits until the first `nodes` nodes answer `/health`.
    async fn wait_healthy(&self, nodes: usize) {
        wait_for("every node's /health", Duration::from_secs(90), || async {
            for i in 0..nodes {
                if !self.healthy(i).await {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }

    /// Waits until every node in `up` answers and sees the others of `up` up.
    async fn wait_up(&self, up: &[usize]) {
        wait_for(
            "the local cluster to be up",
            Duration::from_secs(90),
            || async {
                for &i in up {
                    let (status, view) = self
                        .request(reqwest::Method::GET, i, "/cluster/", None)
                        .await?;
                    if status != 200 {
                        return None;
                    }
                    for &j in up {
                        let seen = view["nodes"]
                            .as_array()?
                            .iter()
                            .find(|n| n["id"] == NODES[j])?;
                        if seen["self"] != true && seen["status"] != "up" {
                            return None;
                        }
                    }
                }
                Some(())
            },
        )
        .await;
    }

    async fn put(&self, i: usize, key: &str, value: Value) -> (u16, Value) {
        self.request(
            reqwest::Method::PUT,
            i,
            "/kv/?consistency=quorum",
            Some(json!({"key": key, "value": value})),
        )
        .await
        .expect("node answers")
    }

    async fn snapshot_has(&self, i: usize, keys: &[String]) -> bool {
        let Some((200, body)) = self
            .request(reqwest::Method::GET, i, "/snapshot/?limit=10000", None)
            .await
        else {
            return false;
        };
        keys.iter().all(|k| body["data"].get(k).is_some())
    }

    /// Ctrl-C as a terminal sends it: SIGINT to the supervisor's whole
    /// process group (every node process gets it too); its exit code.
    fn interrupt(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let status = Command::new("kill")
            .args(["-INT", "--", &format!("-{}", child.id())])
            .status()
            .unwrap();
        assert!(status.success(), "kill -INT to the process group");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                kill_group(child.id());
                let _ = child.wait();
                panic!("the supervisor did not stop within 60 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state says Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Whatever happened, no process of this cluster outlives the test.
            signal_quietly(child.id());
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            kill_group(child.id());
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "supervisor log:\n{}\nfiles kept in {}",
                self.log(),
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn signal_quietly(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

fn assert_ok(what: &str, out: &Output) {
    assert_eq!(out.code, Some(0), "{what} failed: {out:?}");
}

fn pid_file_exists(dir: &Path, node: &str, role: &str) -> bool {
    dir.join("cluster")
        .join(node)
        .join(format!("{role}.pid"))
        .exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_survives_a_dead_process_and_stops_and_starts_one_node() {
    let mut lc = LocalCluster::start();
    lc.wait_healthy(3).await;
    lc.wait_up(&[0, 1, 2]).await;
    wait_for(
        "the supervisor to print how to use the cluster",
        Duration::from_secs(30),
        || async { lc.log().contains("Ctrl-C stops everything").then_some(()) },
    )
    .await;
    let log = lc.log();
    assert!(
        log.contains("kvctl"),
        "make run shows how to use kvctl:\n{log}"
    );
    assert!(log.contains("make node-stop NODE=node2"), "{log}");

    // A second start while one runs is refused, naming the running one.
    let second = lc.script(&[]);
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(second.stderr.contains("already running"), "{second:?}");
    assert!(lc.supervisor_running());

    // SIGKILL node2's API: the supervisor says so, the rest keep serving.
    let api2 = lc.pid("node2", "api").expect("node2's api pid file");
    signal(api2, "KILL");
    wait_for(
        "the supervisor to report node2's API",
        Duration::from_secs(10),
        || async {
            lc.log()
                .contains(&format!("node2/api (pid {api2}) died: killed by SIGKILL"))
                .then_some(())
        },
    )
    .await;
    assert!(lc.supervisor_running(), "{}", lc.log());
    assert!(lc.healthy(0).await && lc.healthy(2).await);
    let mut missed = Vec::new();
    for n in 0..10 {
        let key = format!("while-node2-api-dead-{n}");
        let (status, body) = lc.put(if n % 2 == 0 { 0 } else { 2 }, &key, json!(n)).await;
        assert_eq!(status, 200, "quorum write with node2's API dead: {body}");
        let (status, body) = lc
            .request(
                reqwest::Method::GET,
                if n % 2 == 0 { 2 } else { 0 },
                &format!("/kv/?key={key}"),
                None,
            )
            .await
            .unwrap();
        assert_eq!((status, &body["value"]), (200, &json!(n)), "{body}");
        missed.push(key);
    }
    // The other processes still run, node2's Redis and worker included.
    for node in NODES {
        for role in ["redis", "worker-1"] {
            let pid = lc.pid(node, role).unwrap();
            assert!(alive(pid), "{node} {role} (pid {pid}) died");
        }
    }

    // Scenario III through make: stop node2 (its worker stops, its Redis stays).
    let worker2 = lc.pid("node2", "worker-1").unwrap();
    let redis2 = lc.pid("node2", "redis").unwrap();
    let out = lc.make("node-stop", "node2");
    assert_ok("make node-stop NODE=node2", &out);
    assert!(out.stdout.contains("node2 stopped"), "{out:?}");
    assert!(!alive(worker2), "node2's worker still runs");
    assert!(alive(redis2), "node2's Redis must keep running");
    assert!(!pid_file_exists(&lc.dir, "node2", "worker-1"));
    let log = lc.log();
    assert!(
        log.contains(&format!("node2/worker-1 (pid {worker2}) stopped")),
        "{log}"
    );
    assert!(
        !log.contains(&format!("node2/worker-1 (pid {worker2}) died")),
        "a stop on purpose is not a crash:\n{log}"
    );

    // A key whose primary is node2, written through node1 while node2 is down.
    let mut key = None;
    for n in 0..1000 {
        let k = format!("crash_test{n}");
        let (_, route) = lc
            .request(
                reqwest::Method::GET,
                0,
                &format!("/kv/route/?key={k}"),
                None,
            )
            .await
            .unwrap();
        if route["primary"] == "node2" {
            key = Some(k);
            break;
        }
    }
    let key = key.expect("a key whose primary is node2");
    let (status, body) = lc
        .put(0, &key, json!("written while node2 was stopped"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body["acks"].as_array().unwrap().contains(&json!("node2")),
        "{body}"
    );

    // Start node2 again: same configuration and data; it restores itself.
    let out = lc.make("node-start", "node2");
    assert_ok("make node-start NODE=node2", &out);
    assert!(out.stdout.contains("node2 started"), "{out:?}");
    assert!(lc.pid("node2", "api").is_some_and(|p| p != api2));
    assert_eq!(lc.pid("node2", "redis"), Some(redis2), "the same Redis");
    wait_for(
        "node2's worker to be started again",
        Duration::from_secs(10),
        || async { lc.pid("node2", "worker-1").filter(|&p| alive(p)) },
    )
    .await;
    missed.push(key.clone());
    wait_for(
        "node2's own snapshot to hold the key and the writes it missed",
        Duration::from_secs(60),
        || async { lc.snapshot_has(1, &missed).await.then_some(()) },
    )
    .await;
    let (status, body) = lc
        .request(reqwest::Method::GET, 1, &format!("/kv/?key={key}"), None)
        .await
        .unwrap();
    assert_eq!(
        (status, &body["value"]),
        (200, &json!("written while node2 was stopped"))
    );
    let status = lc.script(&["status"]);
    assert_ok("run-cluster.sh status", &status);
    assert!(status.stdout.contains("worker-1"), "{status:?}");

    // Ctrl-C stops every process, reports none as a crash, frees the lock.
    let pids: Vec<u32> = NODES
        .iter()
        .flat_map(|n| ["api", "worker-1", "redis"].map(|r| lc.pid(n, r).unwrap()))
        .collect();
    assert_eq!(lc.interrupt(), Some(0), "{}", lc.log());
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived the supervisor");
    }
    let log = lc.log();
    assert!(log.contains("cluster stopped"), "{log}");
    assert_eq!(
        log.matches(" died: ").count(),
        1,
        "only the SIGKILLed API is reported as a crash:\n{log}"
    );
    let after = lc.script(&["status"]);
    assert_eq!(after.code, Some(1), "{after:?}");
    assert!(
        after.stdout.contains("no local cluster is running"),
        "{after:?}"
    );
}

/// `make run NODES=5`: five nodes on consecutive ports, all listed by
/// `make status`; `make node-stop` / `make node-start` reach node5 (the
/// node list comes from the running supervisor), and a quorum write
/// while node5 is stopped leaves a hint for it that it then holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_of_five_nodes() {
    let mut lc = LocalCluster::start_with(5);
    lc.wait_healthy(5).await;
    let status = lc.make("status", "");
    assert_ok("make status", &status);
    for i in 1..=5 {
        assert!(
            status.stdout.contains(&format!("node{i}  http://")),
            "{status:?}"
        );
    }
    let stop = lc.make("node-stop", "node5");
    assert_ok("make node-stop NODE=node5", &stop);
    assert!(!lc.healthy(4).await, "node5 still answers after node-stop");
    // A key node5 replicates, written while it is stopped.
    let mut stored = None;
    for n in 0..200 {
        let key = format!("five-{n}");
        let (status, body) = lc.put(0, &key, json!(n)).await;
        assert_eq!(status, 200, "{body}");
        if body["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "node5")
        {
            assert!(
                body["hints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["owner"] == "node5"),
                "{body}"
            );
            stored = Some(key);
            break;
        }
    }
    let key = stored.expect("some key among 200 is replicated by node5");
    let start = lc.make("node-start", "node5");
    assert_ok("make node-start NODE=node5", &start);
    wait_for(
        "node5 holds the key written while it was stopped",
        Duration::from_secs(60),
        || async {
            lc.snapshot_has(4, std::slice::from_ref(&key))
                .await
                .then_some(())
        },
    )
    .await;
    assert_eq!(lc.interrupt(), Some(0), "{}", lc.log());
}
