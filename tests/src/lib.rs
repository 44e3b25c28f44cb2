#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

//! Test harness: starts real `redis-server` and node processes on loopback
//! ports, in a temporary folder, and tears them down on drop.
//!
//! Binaries are taken from `KV_BIN_DIR` or, by default, from the cargo
//! target folder this test binary was built into (`make test` builds them
//! first). Every wait polls a condition with a deadline; nothing sleeps and
//! hopes.

pub mod chaos;
pub mod seed;
pub mod smtp;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use reqwest;
pub use serde_json::json;

/// The secret every test cluster shares.
pub const TEST_SECRET: &str = "test-cluster-secret";

/// The password every test cluster's Redis servers require.
pub const TEST_REDIS_PASSWORD: &str = "test-redis-password";

static CLUSTER_SEQ: AtomicU32 = AtomicU32::new(0);

/// `reqwest::Client::builder()` for every client of the tests: reqwest is
/// built without a default TLS provider (it would pull a second crypto
/// library), so the process installs rustls' `ring` first.
pub fn client_builder() -> reqwest::ClientBuilder {
    shared::config::install_default_provider();
    reqwest::Client::builder()
}

/// The harness's HTTP client: bounded, no proxy; with `ca`, it trusts that
/// CA for `https://` (and presents no certificate).
pub fn http_client(ca: Option<&Path>) -> reqwest::Client {
    let builder = client_builder().timeout(Duration::from_secs(15)).no_proxy();
    let builder = match ca {
        None => builder,
        Some(ca) => builder.tls_backend_preconfigured(tls_client_config(ca, None)),
    };
    builder.build().expect("http client")
}

/// A rustls client configuration trusting `ca`, presenting `identity`
/// (certificate and key files) when given.
pub fn tls_client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    use shared::config::{ClientAuth, TlsSettings};
    shared::config::install_default_provider();
    // The nodes' own loader: a client presents its identity under mutual TLS.
    let settings = TlsSettings {
        identity: identity.map(|(cert, key)| (cert.to_path_buf(), key.to_path_buf())),
        ca: Some(ca.to_path_buf()),
        client_auth: if identity.is_some() {
            ClientAuth::Internal
        } else {
            ClientAuth::Off
        },
    };
    std::sync::Arc::unwrap_or_clone(settings.client_config().expect("test TLS files"))
}

/// Makes (once per folder) a test CA, and a certificate for `name` valid for
/// `host`, for server and client use: `scripts/gen-certs.sh` with openssl.
pub fn make_certificates(dir: &Path, name: &str, host: &str) {
    let out = run_bounded(
        Command::new(repo_root().join("scripts/gen-certs.sh"))
            .arg(dir)
            .arg(format!("{name}:{host},localhost")),
        None,
        Duration::from_secs(60),
    );
    assert!(
        out.code == Some(0),
        "gen-certs.sh failed (is openssl installed?): {}",
        out.stderr
    );
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Ports the harness hands out: below the kernel's ephemeral range
/// (32768-60999 by default), so no outgoing connection of any process takes
/// one between the moment it is chosen and the moment a node binds it.
const TEST_PORTS: std::ops::Range<u16> = 10_000..32_000;

/// How many ports of [`TEST_PORTS`] this process has handed out: each is
/// handed out once (tests of one binary run in parallel), from a start
/// that depends on the process id.
static PORTS_HANDED: AtomicU32 = AtomicU32::new(0);

/// `count` consecutive ports of [`TEST_PORTS`] never handed out before by
/// this process, each bindable on `host` now; the first of them.
fn hand_out_ports(host: &str, count: u16) -> u16 {
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..200 {
        let n = PORTS_HANDED.fetch_add(u32::from(count), Ordering::Relaxed);
        let offset = (start + n) % span;
        if offset + u32::from(count) > span {
            continue;
        }
        let base = TEST_PORTS.start + offset as u16;
        if (0..count).all(|k| TcpListener::bind((host, base + k)).is_ok()) {
            return base;
        }
    }
    panic!("no {count} consecutive free ports on {host} in {TEST_PORTS:?}");
}

/// A free TCP port on 127.0.0.1, handed out once per test process.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A free TCP port on `host` (a loopback address), handed out once per
/// test process.
pub fn free_port_on(host: &str) -> u16 {
    hand_out_ports(host, 1)
}

/// The repository's root folder (scripts, Makefile, compose files).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A first port `base` such that `base..base + count` are all free on
/// 127.0.0.1 now and handed out to nobody else (for programs that take a
/// base port, like the local cluster's KV_API_BASE_PORT).
pub fn free_port_run(count: u16) -> u16 {
    hand_out_ports("127.0.0.1", count)
}

/// What a finished command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// The exit code (`None`: ended by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to its end with stdin from `stdin` (empty when `None`),
/// killing it and panicking if it runs longer than `timeout`.
pub fn run_bounded(command: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    use std::io::{Read, Write};
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let bytes = stdin.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    // Read both pipes in threads, so a large output cannot block the child.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Output {
        code: status.code(),
        stdout: String::from_utf8_lossy(&out_reader.join().expect("stdout reader")).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned(),
    }
}

/// Folder holding the `api` and `worker` binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KV_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.to_path_buf()
}

/// The path of a built binary (`api`, `worker`, `kvctl`) in [`bin_dir`].
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --bins` first (make test does)",
        path.display()
    );
    path
}

struct Proc(Option<Child>);

impl Proc {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    fn is_running(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Options for a test cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    /// Extra environment for every node (e.g. `KV_BACKGROUND_SYNC=off`).
    pub env: Vec<(String, String)>,
    /// Worker processes per node.
    pub workers: usize,
    /// Redis `appendfsync` policy (`always` in tests: every acknowledged
    /// write is on disk before Redis answers).
    pub appendfsync: &'static str,
    /// When set, node `i` (from 1) lives on its own address
    /// `127.0.<subnet>.<10+i>`: its API, its Redis, and the source address of
    /// its calls to peers, so links between nodes can be cut with iptables.
    /// Otherwise every node is on 127.0.0.1.
    pub subnet: Option<u8>,
    /// TLS everywhere: the harness makes a CA and a certificate per node
    /// (`scripts/gen-certs.sh`, with openssl); the nodes serve HTTPS with
    /// mutual TLS on internal routes (`KV_TLS_CLIENT_AUTH=internal`, which
    /// `env` may override), and each Redis listens on TLS only, asking for
    /// the node's certificate (`rediss://`). The harness's HTTP client
    /// trusts the CA and presents no certificate.
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            env: Vec::new(),
            workers: 0,
            appendfsync: "always",
            subnet: None,
            tls: false,
        }
    }
}

impl Options {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// One node: its Redis, its API process and its workers.
pub struct Node {
    pub id: String,
    /// The node's address (its API and its Redis listen there).
    pub host: String,
    /// Extra environment for this node only, applied on its next (re)start
    /// after `Options::env` (e.g. a clock offset).
    pub env: Vec<(String, String)>,
    /// Extra `redis-server` arguments for this node, applied on its next
    /// Redis start (e.g. `--key-load-delay` to slow its loading down).
    pub redis_args: Vec<String>,
    pub api_port: u16,
    pub redis_port: u16,
    dir: PathBuf,
    redis: Proc,
    api: Proc,
    workers: Vec<Proc>,
}

impl Node {
    /// Node `i` (from 1), not started, on fresh ports of its address.
    fn new(dir: &Path, subnet: Option<u8>, i: usize) -> Node {
        let host = match subnet {
            Some(net) => format!("127.0.{net}.{}", 10 + i),
            None => "127.0.0.1".to_owned(),
        };
        Node {
            id: format!("node{i}"),
            api_port: free_port_on(&host),
            redis_port: free_port_on(&host),
            host,
            env: Vec::new(),
            redis_args: Vec::new(),
            dir: dir.join(format!("node{i}")),
            redis: Proc(None),
            api: Proc(None),
            workers: Vec::new(),
        }
    }
}

/// A running cluster of real processes.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub dir: PathBuf,
    opts: Options,
    peers: String,
    pub http: reqwest::Client,
}

impl Cluster {
    /// Starts `opts.nodes` nodes and waits until every one answers `/health`.
    pub async fn start(opts: Options) -> Cluster {
        let seq = CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kv-test-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let nodes: Vec<Node> = (1..=opts.nodes)
            .map(|i| Node::new(&dir, opts.subnet, i))
            .collect();
        let scheme = if opts.tls { "https" } else { "http" };
        if opts.tls {
            for node in &nodes {
                make_certificates(&dir.join("tls"), &node.id, &node.host);
            }
        }
        let peers = nodes
            .iter()
            .map(|n| format!("{}={scheme}://{}:{}", n.id, n.host, n.api_port))
            .collect::<Vec<_>>()
            .join(",");
        let http = http_client(opts.tls.then(|| dir.join("tls").join("ca.pem")).as_deref());
        let mut cluster = Cluster {
            nodes,
            dir,
            opts,
            peers,
            http,
        };
        for i in 0..cluster.nodes.len() {
            cluster.start_redis(i).await;
        }
        for i in 0..cluster.nodes.len() {
            cluster.spawn_api(i);
            for _ in 0..cluster.opts.workers {
                cluster.spawn_worker(i);
            }
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_healthy(i).await;
        }
        cluster.wait_all_see_all_up().await;
        cluster
    }

    /// Starts one more node, `node{n+1}`, to join the running cluster: its
    /// Redis, API and workers, with `KV_JOIN` and the cluster's nodes as
    /// seeds. It holds no data and answers client requests with 503
    /// `not_a_member` until added (`POST /cluster/members`). Returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let node = Node::new(&self.dir, self.opts.subnet, i + 1);
        if self.opts.tls {
            make_certificates(&self.dir.join("tls"), &node.id, &node.host);
        }
        let mut node = node;
        let seeds = format!(
            "{},{}={}://{}:{}",
            self.peers,
            node.id,
            self.scheme(),
            node.host,
            node.api_port
        );
        node.env = vec![
            ("KV_JOIN".to_owned(), "1".to_owned()),
            ("KV_PEERS".to_owned(), seeds),
        ];
        self.nodes.push(node);
        self.start_redis(i).await;
        self.spawn_api(i);
        for _ in 0..self.opts.workers {
            self.spawn_worker(i);
        }
        self.wait_healthy(i).await;
        i
    }

    /// Waits until every running node's routing view has every other
    /// running node up. A node probing a peer that was not listening yet
    /// (they start one after another) marks it down until its next probe;
    /// a test writing at once would see hints where it expects jobs.
    pub async fn wait_all_see_all_up(&self) {
        wait_for(
            "every node to see every other node up",
            // Generous: a 5-node cluster starting on a loaded 2-core machine.
            Duration::from_secs(60),
            || async {
                for i in (0..self.nodes.len()).filter(|&i| self.api_running(i)) {
                    let (status, view) = self
                        .request(reqwest::Method::GET, i, "/cluster/", None)
                        .await;
                    if status == 401 {
                        // A client token guards /cluster/: nothing to check.
                        continue;
                    }
                    if status != 200 {
                        return None;
                    }
                    let all_up = view["nodes"].as_array()?.iter().all(|n| {
                        n["self"] == true
                            || n["status"] == "up"
                            || n["id"]
                                .as_str()
                                .is_some_and(|id| !self.api_running(self.index_of(id)))
                    });
                    if !all_up {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    }

    fn scheme(&self) -> &'static str {
        if self.opts.tls { "https" } else { "http" }
    }

    pub fn url(&self, i: usize) -> String {
        format!(
            "{}://{}:{}",
            self.scheme(),
            self.nodes[i].host,
            self.nodes[i].api_port
        )
    }

    /// The folder of the test CA and the nodes' certificates (`tls` on).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The URL of node `i`'s Redis, password included (`rediss://` with `tls`).
    pub fn redis_url(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let scheme = if self.opts.tls { "rediss" } else { "redis" };
        format!(
            "{scheme}://:{TEST_REDIS_PASSWORD}@{}:{}/0",
            node.host, node.redis_port
        )
    }

    /// A client of node `i`'s Redis (over TLS, with the node's certificate,
    /// when `tls` is on).
    pub fn redis_client(&self, i: usize) -> redis::Client {
        let url = self.redis_url(i);
        if !self.opts.tls {
            return redis::Client::open(url).expect("redis url");
        }
        let dir = self.tls_dir();
        let read = |name: &str| std::fs::read(dir.join(name)).expect("test certificate");
        let id = &self.nodes[i].id;
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read(&format!("{id}.pem")),
                    client_key: read(&format!("{id}.key")),
                }),
                root_cert: Some(read("ca.pem")),
            },
        )
        .expect("redis TLS client")
    }

    pub fn index_of(&self, id: &str) -> usize {
        self.nodes.iter().position(|n| n.id == id).expect("node id")
    }

    /// Starts (or restarts) node `i`'s Redis, with AOF, and waits for PING.
    /// Starts node `i`'s Redis and waits until it answers PING (which it
    /// does only once its data is loaded).
    pub async fn start_redis(&mut self, i: usize) {
        self.spawn_redis(i);
        let client = self.redis_client(i);
        wait_for("redis to answer PING", Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            }
        })
        .await;
    }

    /// Starts node `i`'s Redis without waiting for it.
    pub fn spawn_redis(&mut self, i: usize) {
        let appendfsync = self.opts.appendfsync;
        let tls = self.opts.tls.then(|| self.tls_dir());
        let node = &mut self.nodes[i];
        // With TLS, the port speaks TLS only and asks for the node's certificate.
        let port_args: Vec<String> = match &tls {
            None => vec!["--port".into(), node.redis_port.to_string()],
            Some(dir) => {
                let file = |name: String| dir.join(name).to_string_lossy().into_owned();
                vec![
                    "--port".into(),
                    "0".into(),
                    "--tls-port".into(),
                    node.redis_port.to_string(),
                    "--tls-cert-file".into(),
                    file(format!("{}.pem", node.id)),
                    "--tls-key-file".into(),
                    file(format!("{}.key", node.id)),
                    "--tls-ca-cert-file".into(),
                    file("ca.pem".into()),
                    "--tls-auth-clients".into(),
                    "yes".into(),
                ]
            }
        };
        let data = node.dir.join("redis");
        std::fs::create_dir_all(&data).expect("redis dir");
        let log = std::fs::File::create(node.dir.join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args(&port_args)
            .args(["--bind", &node.host, "--requirepass", TEST_REDIS_PASSWORD])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                appendfsync,
            ])
            .arg("--dir")
            .arg(&data)
            .args(&node.redis_args)
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        node.redis = Proc(Some(child));
    }

    fn node_env(&self, i: usize) -> Vec<(String, String)> {
        let node = &self.nodes[i];
        let mut env = vec![
            ("KV_NODE_ID".to_owned(), node.id.clone()),
            ("KV_PEERS".to_owned(), self.peers.clone()),
            (
                "KV_LISTEN".to_owned(),
                format!("{}:{}", node.host, node.api_port),
            ),
            ("REDIS_URL".to_owned(), self.redis_url(i)),
            ("KV_CLUSTER_SECRET".to_owned(), TEST_SECRET.to_owned()),
            ("KV_PEER_TIMEOUT_MS".to_owned(), "3000".to_owned()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ];
        if self.opts.subnet.is_some() {
            env.push(("KV_PEER_SOURCE_ADDR".to_owned(), node.host.clone()));
        }
        if self.opts.tls {
            let file = |name: String| self.tls_dir().join(name).to_string_lossy().into_owned();
            for (var, name) in [
                ("KV_TLS_CERT", format!("{}.pem", node.id)),
                ("KV_TLS_KEY", format!("{}.key", node.id)),
                ("KV_TLS_CA", "ca.pem".to_owned()),
                ("KV_REDIS_TLS_CERT", format!("{}.pem", node.id)),
                ("KV_REDIS_TLS_KEY", format!("{}.key", node.id)),
                ("KV_REDIS_TLS_CA", "ca.pem".to_owned()),
            ] {
                env.push((var.to_owned(), file(name)));
            }
            env.push(("KV_TLS_CLIENT_AUTH".to_owned(), "internal".to_owned()));
        }
        env.extend(self.opts.env.iter().cloned());
        env.extend(node.env.iter().cloned());
        env
    }

    fn spawn(&self, i: usize, bin: &str, log_name: &str) -> Proc {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join(log_name))
            .expect("log file");
        let log2 = log.try_clone().expect("log file");
        let child = Command::new(binary(bin))
            .envs(self.node_env(i))
            .current_dir(&node.dir)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Proc(Some(child))
    }

    fn spawn_api(&mut self, i: usize) {
        let proc = self.spawn(i, "api", "api.log");
        self.nodes[i].api = proc;
    }

    pub fn spawn_worker(&mut self, i: usize) {
        let n = self.nodes[i].workers.len();
        let proc = self.spawn(i, "worker", &format!("worker-{n}.log"));
        self.nodes[i].workers.push(proc);
    }

    /// Waits until node `i` answers `/health` with 200.
    pub async fn wait_healthy(&self, i: usize) {
        let url = format!("{}/health", self.url(i));
        let http = self.http.clone();
        wait_for(
            &format!("{} to be healthy", self.nodes[i].id),
            // Generous: start-up connects to Redis and moves legacy records
            // before serving; a loaded machine stretches that.
            Duration::from_secs(60),
            || {
                let (url, http) = (url.clone(), http.clone());
                async move {
                    let r = http.get(&url).send().await.ok()?;
                    r.status().is_success().then_some(())
                }
            },
        )
        .await;
    }

    /// Process ids of node `i`'s API and workers (for resource figures).
    pub fn pids(&self, i: usize) -> (Option<u32>, Vec<u32>) {
        let node = &self.nodes[i];
        let api = node.api.0.as_ref().map(Child::id);
        let workers = node
            .workers
            .iter()
            .filter_map(|w| w.0.as_ref().map(Child::id))
            .collect();
        (api, workers)
    }

    /// SIGKILLs node `i`'s API process.
    pub fn kill_api(&mut self, i: usize) {
        self.nodes[i].api.kill();
    }

    /// SIGKILLs node `i`'s Redis.
    pub fn kill_redis(&mut self, i: usize) {
        self.nodes[i].redis.kill();
    }

    /// Whether node `i`'s API process is running (not killed).
    pub fn api_running(&self, i: usize) -> bool {
        self.nodes[i].api.is_running()
    }

    /// Whether node `i`'s Redis is running (not killed).
    pub fn redis_running(&self, i: usize) -> bool {
        self.nodes[i].redis.is_running()
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to node `i`'s API process.
    pub fn signal_api(&self, i: usize, signal: &str) {
        if let Some(pid) = self.nodes[i].api.0.as_ref().map(Child::id) {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status()
                .expect("kill");
            assert!(status.success(), "kill -{signal} {pid} failed");
        }
    }

    /// SIGKILLs worker `w` of node `i` (it stays in the list, stopped).
    pub fn kill_worker(&mut self, i: usize, w: usize) {
        self.nodes[i].workers[w].kill();
    }

    /// Node `i`'s `/cluster/` view.
    pub async fn cluster_view(&self, i: usize) -> Value {
        let (status, body) = self
            .request(reqwest::Method::GET, i, "/cluster/", None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Starts node `i`'s workers again, up to `Options::workers` (after `kill_workers`).
    pub fn restart_workers(&mut self, i: usize) {
        while self.nodes[i].workers.len() < self.opts.workers {
            self.spawn_worker(i);
        }
    }

    /// SIGKILLs every worker of node `i`.
    pub fn kill_workers(&mut self, i: usize) {
        for w in &mut self.nodes[i].workers {
            w.kill();
        }
        self.nodes[i].workers.clear();
    }

    /// Starts node `i`'s API process again and waits for `/health`.
    pub async fn restart_api(&mut self, i: usize) {
        assert!(!self.nodes[i].api.is_running(), "kill it first");
        self.spawn_api(i);
        self.wait_healthy(i).await;
    }

    /// Wipes node `i`: SIGKILLs its API and Redis, deletes the Redis data and
    /// starts an empty Redis. The caller restarts the API (and times it).
    pub async fn wipe_node(&mut self, i: usize) {
        self.kill_api(i);
        self.kill_redis(i);
        std::fs::remove_dir_all(self.nodes[i].dir.join("redis")).expect("remove redis data");
        self.start_redis(i).await;
    }

    /// A Redis connection to node `i`'s own Redis.
    pub async fn redis(&self, i: usize) -> redis::aio::MultiplexedConnection {
        self.try_redis(i).await.expect("redis connection")
    }

    /// A Redis connection to node `i`'s own Redis, if one can be made now
    /// (the login is a command, so it waits out a `CLIENT PAUSE`, or times out).
    pub async fn try_redis(&self, i: usize) -> Option<redis::aio::MultiplexedConnection> {
        self.redis_client(i)
            .get_multiplexed_async_connection()
            .await
            .ok()
    }

    /// The log of node `i`'s API, for failure messages.
    pub fn api_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("api.log")).unwrap_or_default()
    }

    /// The logs of node `i`'s worker processes (every one started, in
    /// start order), for failure messages.
    pub fn worker_logs(&self, i: usize) -> String {
        let mut names: Vec<_> = std::fs::read_dir(&self.nodes[i].dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("worker-") && name.ends_with(".log"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(self.nodes[i].dir.join(name)).unwrap_or_default();
                format!("--- {name}\n{log}")
            })
            .collect()
    }

    // ---- HTTP helpers -------------------------------------------------

    pub async fn put(&self, i: usize, key: &str, value: Value) -> (u16, Value) {
        self.request(
            reqwest::Method::POST,
            i,
            "/kv/",
            Some(json!({ "key": key, "value": value })),
        )
        .await
    }

    pub async fn put_with(
        &self,
        i: usize,
        key: &str,
        value: Value,
        consistency: &str,
    ) -> (u16, Value) {
        let path = format!("/kv/?consistency={consistency}");
        self.request(
            reqwest::Method::PUT,
            i,
            &path,
            Some(json!({ "key": key, "value": value })),
        )
        .await
    }

    pub async fn get(&self, i: usize, key: &str) -> (u16, Value) {
        let path = format!("/kv/?key={}", encode(key));
        self.request(reqwest::Method::GET, i, &path, None).await
    }

    pub async fn get_with(&self, i: usize, key: &str, consistency: &str) -> (u16, Value) {
        let path = format!("/kv/?key={}&consistency={consistency}", encode(key));
        self.request(reqwest::Method::GET, i, &path, None).await
    }

    pub async fn delete(&self, i: usize, key: &str) -> (u16, Value) {
        let path = format!("/kv/?key={}", encode(key));
        self.request(reqwest::Method::DELETE, i, &path, None).await
    }

    /// The preference list of `key`, asked of node `i`.
    pub async fn route(&self, i: usize, key: &str) -> Vec<String> {
        let (status, body) = self
            .request(
                reqwest::Method::GET,
                i,
                &format!("/kv/route/?key={}", encode(key)),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .map(|v| v.as_str().expect("node id").to_owned())
            .collect()
    }

    /// Node `i`'s whole local snapshot (all pages), with versions and tombstones.
    pub async fn snapshot(&self, i: usize) -> serde_json::Map<String, Value> {
        let mut all = serde_json::Map::new();
        let mut cursor = "0".to_owned();
        loop {
            let path =
                format!("/snapshot/?versions=true&tombstones=true&limit=1000&cursor={cursor}");
            let (status, body) = self.request(reqwest::Method::GET, i, &path, None).await;
            assert_eq!(status, 200, "{body}");
            if let Some(data) = body["data"].as_object() {
                all.extend(data.clone());
            }
            match body["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => return all,
            }
        }
    }

    /// Sends a request and returns status and JSON body (every answer must be JSON).
    pub async fn request(
        &self,
        method: reqwest::Method,
        i: usize,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        send_json(self.to(method, i, path), path, body).await
    }

    /// A request to node `i`'s `path`, not sent yet.
    fn to(&self, method: reqwest::Method, i: usize, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.url(i), path))
    }

    /// Waits (polling, up to `timeout`) until the membership change node
    /// `via` drives is no longer running; its `/cluster/members` then.
    pub async fn change_finished(&self, via: usize, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, view) = self
                .request(reqwest::Method::GET, via, "/cluster/members", None)
                .await;
            if status == 200 && view["change"]["state"] != "running" {
                return Ok(view);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the change driven by {} did not end within {timeout:?}: {view}",
                    self.nodes[via].id
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A request with the cluster secret (membership changes, internal
    /// routes); returns status and JSON body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        i: usize,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let req = self
            .to(method, i, path)
            .header("x-kv-cluster-secret", TEST_SECRET);
        send_json(req, path, body).await
    }

    /// Sends raw bytes with a content type.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        i: usize,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let resp = self
            .to(method, i, path)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {path} failed: {e}"));
        read_json(resp).await
    }
}

/// Sends `req` with `body` as JSON (if any); status and JSON answer.
pub async fn send_json(
    mut req: reqwest::RequestBuilder,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {path} failed: {e}"));
    read_json(resp).await
}

/// Reads a response that must be JSON (panics with the text otherwise).
pub async fn read_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = resp.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("HTTP {status} answer is not JSON: {text:?}"));
    assert!(
        ctype.starts_with("application/json"),
        "HTTP {status} content-type {ctype:?}"
    );
    (status, value)
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A key (`{prefix}{n}`) whose preference list, as `route` says, satisfies `pred`.
pub async fn key_where(
    cluster: &Cluster,
    prefix: &str,
    start: usize,
    pred: impl Fn(&[String]) -> bool,
) -> (String, usize) {
    for n in start..start + 10_000 {
        let key = format!("{prefix}{n}");
        if pred(&cluster.route(0, &key).await) {
            return (key, n);
        }
    }
    panic!("no key matches");
}

/// `count` keys for which a write through node1 contacts node2 before node3
/// (so with W=2 node3 is not contacted at all and gets a replication job).
pub async fn keys_node2_before_node3(cluster: &Cluster, prefix: &str, count: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut next = 0;
    while keys.len() < count {
        let (key, n) = key_where(cluster, prefix, next, |r| {
            let p2 = r.iter().position(|x| x == "node2");
            let p3 = r.iter().position(|x| x == "node3");
            p2 < p3
        })
        .await;
        keys.push(key);
        next = n + 1;
    }
    keys
}

/// A key whose primary (first replica) is node `primary`, as `route` says.
pub async fn key_with_primary(cluster: &Cluster, primary: &str, prefix: &str) -> String {
    for n in 0..10_000 {
        let key = format!("{prefix}{n}");
        if cluster.route(0, &key).await.first().map(String::as_str) == Some(primary) {
            return key;
        }
    }
    panic!("no key with primary {primary}");
}

/// Lines of each API's log printed when a test fails.
const FAILURE_LOG_LINES: usize = 40;

/// The last `lines` lines of `text`, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            for w in &mut node.workers {
                w.kill();
            }
            node.api.kill();
            node.redis.kill();
        }
        if std::thread::panicking() {
            // CI keeps no files: the end of every API's log goes with the
            // failure.
            for (i, node) in self.nodes.iter().enumerate() {
                eprintln!(
                    "--- {}'s api.log (last {FAILURE_LOG_LINES} lines)\n{}",
                    node.id,
                    tail(&self.api_log(i), FAILURE_LOG_LINES)
                );
            }
            eprintln!("test failed; cluster files kept in {}", self.dir.display());
        } else if std::env::var_os("KV_KEEP_CLUSTER").is_some() {
            eprintln!(
                "KV_KEEP_CLUSTER: cluster files kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
