//! `kvctl` as a real process against a real 3-node cluster (with a client
//! token, passed as KV_API_TOKEN): the seed's scenarios I-VII end to end
//! through it (VI, e-mail, is left to tests/tests/email.rs), `--json`
//! answers that parse, and the exit codes scripts rely on: 3 not found,
//! 4 unavailable, 2 bad input, 6 unauthorized, 5 no connection or timeout.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use kv_tests::{
    Cluster, Options, Output, TEST_SECRET, binary, free_port, json, run_bounded, wait_for,
};
use serde_json::Value;

const TOKEN: &str = "kvctl-test-token";

/// Runs kvctl against the cluster's nodes.
struct Kvctl {
    urls: Vec<String>,
}

impl Kvctl {
    fn new(c: &Cluster) -> Kvctl {
        Kvctl {
            urls: (0..c.nodes.len()).map(|i| c.url(i)).collect(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(binary("kvctl"));
        cmd.env_remove("KV_URL").env("KV_API_TOKEN", TOKEN);
        cmd
    }

    /// `kvctl --url <node i> args...`.
    fn at(&self, i: usize, args: &[&str]) -> Output {
        self.with_stdin(i, args, None)
    }

    fn with_stdin(&self, i: usize, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.command();
        cmd.arg("--url").arg(&self.urls[i]).args(args);
        run_bounded(&mut cmd, stdin, Duration::from_secs(30))
    }

    /// `kvctl --json ...` that must succeed; its stdout parsed.
    fn json(&self, i: usize, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.at(i, &all);
        assert_eq!(out.code, Some(0), "kvctl {args:?}: {out:?}");
        parse(&out)
    }
}

fn parse(out: &Output) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--json output does not parse ({e}): {out:?}"))
}

fn ok(out: &Output) -> &str {
    assert_eq!(out.code, Some(0), "{out:?}");
    &out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_drives_the_seed_scenarios() {
    let mut c = Cluster::start(
        Options {
            workers: 1,
            ..Options::default()
        }
        .env("KV_API_TOKEN", TOKEN)
        .env("KV_HEARTBEAT_INTERVAL_S", "1"),
    )
    .await;
    let k = Kvctl::new(&c);

    // --help documents the exit codes; completions for three shells.
    let help = k.at(0, &["--help"]);
    assert!(ok(&help).contains("Exit codes"), "{help:?}");
    for shell in ["bash", "zsh", "fish"] {
        let out = k.at(0, &["completions", shell]);
        assert!(ok(&out).contains("kvctl"), "{shell}: {out:?}");
    }

    // I. Basic CRUD: put (argument, stdin, file), get, delete, get → not found.
    let out = k.at(0, &["put", "username123", "mci_admin", "--string"]);
    assert!(
        ok(&out).starts_with("stored username123 at version "),
        "{out:?}"
    );
    assert_eq!(ok(&k.at(0, &["get", "username123"])), "\"mci_admin\"\n");
    assert_eq!(
        ok(&k.at(0, &["get", "username123", "--raw"])),
        "mci_admin\n"
    );
    let got = k.json(0, &["get", "username123"]);
    assert_eq!(got["value"], "mci_admin");
    assert!(
        got["version"].as_str().unwrap().ends_with(":node1"),
        "{got}"
    );
    let written = k.json(0, &["put", "typed", "{\"a\": [1, 2.5, null]}"]);
    assert!(written["acks"].as_array().unwrap().len() >= 2, "{written}");
    assert_eq!(
        k.json(1, &["get", "typed"])["value"],
        json!({"a": [1, 2.5, null]})
    );
    let out = k.with_stdin(0, &["put", "from-stdin"], Some(b"{\"n\": 7}\n"));
    ok(&out);
    assert_eq!(k.json(2, &["get", "from-stdin"])["value"], json!({"n": 7}));
    let out = k.with_stdin(0, &["put", "raw-stdin", "--string"], Some(b"line\n"));
    ok(&out);
    assert_eq!(k.json(0, &["get", "raw-stdin"])["value"], "line");
    let file = c.dir.join("value.json");
    std::fs::write(&file, "[\"from\", \"file\"]").unwrap();
    ok(&k.at(0, &["put", "from-file", "--file", file.to_str().unwrap()]));
    assert_eq!(
        k.json(1, &["get", "from-file"])["value"],
        json!(["from", "file"])
    );
    let out = k.at(0, &["delete", "username123"]);
    assert!(ok(&out).starts_with("deleted username123"), "{out:?}");
    let out = k.at(0, &["get", "username123"]);
    assert_eq!(out.code, Some(3), "not found: {out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    let out = k.at(0, &["--json", "get", "username123"]);
    assert_eq!(out.code, Some(3), "{out:?}");
    let body = parse(&out);
    assert_eq!(
        (&body["key"], &body["value"]),
        (&json!("username123"), &Value::Null)
    );

    // II. Replication: backup1 through node1 shows in node2's own snapshot;
    // PUT at node A, GET at node B.
    ok(&k.at(0, &["put", "backup1", "{\"saved\": true}"]));
    wait_for(
        "backup1 in node2's snapshot",
        Duration::from_secs(10),
        || async {
            let snap = k.json(1, &["snapshot", "--limit", "1000"]);
            assert_eq!(snap["node"], "node2");
            (snap["data"]["backup1"] == json!({"saved": true})).then_some(())
        },
    )
    .await;
    let page = k.at(1, &["snapshot"]);
    assert!(ok(&page).contains("backup1"), "{page:?}");
    ok(&k.at(0, &["put", "key-x", "42", "--consistency", "quorum"]));
    assert_eq!(ok(&k.at(1, &["get", "key-x"])), "42\n");

    // IV. Heartbeat: node1's Redis says node_status:node1 = up (through /cluster/).
    wait_for("heartbeat status up", Duration::from_secs(20), || async {
        let view = k.json(0, &["cluster"]);
        let nodes = view["nodes"].as_array().unwrap().clone();
        nodes
            .iter()
            .all(|n| n["heartbeat_status"] == "up")
            .then_some(())
    })
    .await;
    let table = k.at(0, &["cluster"]);
    let text = ok(&table);
    assert!(text.contains("NODE") && text.contains("node1*"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("node")).count(),
        3,
        "{text}"
    );

    // III. A node down: a write whose primary is node2 goes through node1.
    let mut key = None;
    for n in 0..1000 {
        let candidate = format!("crash_test{n}");
        if k.json(0, &["route", &candidate])["primary"] == "node2" {
            key = Some(candidate);
            break;
        }
    }
    let key = key.expect("a key whose primary is node2");
    let route = k.at(0, &["route", &key]);
    assert!(ok(&route).contains("primary   node2"), "{route:?}");
    c.kill_api(1);
    let out = k.at(1, &["get", &key]);
    assert_eq!(out.code, Some(5), "connection failure: {out:?}");
    assert!(out.stderr.contains("cannot reach"), "{out:?}");
    let written = k.json(0, &["put", &key, "\"written while node2 was down\""]);
    assert!(
        !written["acks"]
            .as_array()
            .unwrap()
            .contains(&json!("node2")),
        "{written}"
    );
    wait_for(
        "node1 to see node2 down",
        Duration::from_secs(20),
        || async {
            let view = k.json(0, &["cluster"]);
            view["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == "node2" && n["status"] != "up")
                .then_some(())
        },
    )
    .await;
    // All three replicas cannot answer: 503 → exit 4, saying which answered.
    let out = k.at(0, &["put", "needs-all", "1", "--consistency", "all"]);
    assert_eq!(out.code, Some(4), "unavailable: {out:?}");
    assert!(out.stderr.contains("HTTP 503"), "{out:?}");
    let out = k.at(
        0,
        &["--json", "put", "needs-all", "1", "--consistency", "all"],
    );
    assert_eq!(out.code, Some(4), "{out:?}");
    assert!(parse(&out)["error"]["code"].is_string(), "{out:?}");
    // node2 back: restore through kvctl, then its own snapshot holds the key.
    c.restart_api(1).await;
    let restored = k.json(1, &["restore"]);
    assert!(restored["peers"].is_array(), "{restored}");
    ok(&k.at(1, &["restore"]));
    wait_for("node2 to hold the key", Duration::from_secs(20), || async {
        let snap = k.json(1, &["snapshot", "--limit", "10000"]);
        (snap["data"][key.as_str()] == "written while node2 was down").then_some(())
    })
    .await;
    assert_eq!(
        k.json(1, &["get", &key])["value"],
        "written while node2 was down"
    );
    // explain: every node's view; with --repair the replicas agree after.
    let explained = k.json(0, &["explain", &key, "--repair"]);
    assert_eq!(explained["key"], json!(key));
    wait_for("the replicas to agree", Duration::from_secs(20), || async {
        (k.json(0, &["explain", &key])["agree"] == true).then_some(())
    })
    .await;
    let out = k.at(0, &["explain", &key]);
    assert!(ok(&out).contains("the replicas agree"), "{out:?}");

    // A batch from stdin: one row per operation, in order.
    let ops = br#"[{"op": "put", "key": "kb", "value": [1, 2]}, {"op": "get", "key": "kb"}, {"op": "get", "key": "kb-missing"}]"#;
    let out = k.with_stdin(0, &["batch"], Some(ops));
    let table = ok(&out);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{out:?}");
    assert!(
        rows[1].contains("put") && rows[1].contains("200"),
        "{out:?}"
    );
    assert!(rows[2].contains("[1,2]"), "{out:?}");
    assert!(
        rows[3].contains("404") && rows[3].contains("missing"),
        "{out:?}"
    );
    let out = k.with_stdin(
        1,
        &["--json", "batch", "-"],
        Some(br#"{"ops": [{"op": "delete", "key": "kb"}]}"#),
    );
    assert_eq!(parse(&out)["results"][0]["status"], 200, "{out:?}");
    let out = k.with_stdin(1, &["batch"], Some(br#"[{"op": "put", "key": "kb"}]"#));
    assert_eq!(out.code, Some(2), "a bad batch: {out:?}");
    assert!(out.stderr.contains("ops[0]"), "{out:?}");

    // Listing: one page with the command for the next, or --all pages.
    let ops = br#"[{"op": "put", "key": "ls/a", "value": 1}, {"op": "put", "key": "ls/b", "value": 2}, {"op": "put", "key": "ls/c", "value": 3}]"#;
    ok(&k.with_stdin(0, &["batch"], Some(ops)));
    let out = k.at(1, &["list", "--prefix", "ls/", "--limit", "2"]);
    let text = ok(&out);
    assert!(text.contains("ls/a") && text.contains("ls/b"), "{out:?}");
    assert!(!text.contains("ls/c"), "{out:?}");
    assert!(text.contains("more: kvctl list --cursor"), "{out:?}");
    let page = k.json(1, &["list", "--prefix", "ls/", "--limit", "2"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let next = k.json(2, &["list", "--prefix", "ls/", "--cursor", &cursor]);
    assert_eq!(next["items"][0]["key"], "ls/c", "{next}");
    assert!(next["next_cursor"].is_null(), "{next}");
    let out = k.at(
        2,
        &[
            "list",
            "--prefix",
            "ls/",
            "--limit",
            "1",
            "--all",
            "--keys-only",
        ],
    );
    let text = ok(&out);
    for key in ["ls/a", "ls/b", "ls/c"] {
        assert!(text.contains(key), "{out:?}");
    }
    assert!(text.ends_with("3 key(s)\n"), "{out:?}");
    let out = k.at(
        2,
        &["--json", "list", "--prefix", "ls/", "--limit", "2", "--all"],
    );
    assert_eq!(
        ok(&out).lines().count(),
        2,
        "one JSON page per line: {out:?}"
    );
    let out = k.at(0, &["list", "--limit", "0"]);
    assert_eq!(out.code, Some(2), "a bad limit: {out:?}");

    // Watch: one line per change until interrupted; a bad resume point is bad input.
    let mut watch = k
        .command()
        .args(["--url", &k.urls[0], "watch", "--prefix", "kw/"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Written until the watch (subscribed once its request arrives) shows it.
    let line = wait_for(
        "kvctl watch prints the change",
        Duration::from_secs(20),
        || {
            let k = &k;
            let rx = &rx;
            async move {
                ok(&k.at(1, &["put", "kw/1", r#"{"w": 1}"#]));
                tokio::time::sleep(Duration::from_millis(200)).await;
                rx.try_iter().find(|l| l.contains("kw/1"))
            }
        },
    )
    .await;
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        line.contains("put") && line.contains(r#"{"w":1}"#),
        "{line}"
    );
    let out = k.at(0, &["watch", "--last-event-id", "nope"]);
    assert_eq!(out.code, Some(2), "a bad resume point: {out:?}");

    // V. Format and bad input: JSON errors, exit 2.
    let out = k.at(0, &["put", "k", "not json"]);
    assert_eq!(out.code, Some(2), "a value that is not JSON: {out:?}");
    assert!(out.stderr.contains("--string"), "{out:?}");
    let long_key = "k".repeat(2000);
    let out = k.at(0, &["put", &long_key, "1"]);
    assert_eq!(out.code, Some(2), "a key over the limit: {out:?}");
    assert!(out.stderr.contains("HTTP 400"), "{out:?}");
    let out = k.at(0, &["--json", "get", &long_key]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(parse(&out)["error"]["code"].is_string(), "{out:?}");
    let out = k.at(0, &["put", "k"]);
    assert_eq!(out.code, Some(2), "no value and empty stdin: {out:?}");
    let out = k.at(0, &["frobnicate"]);
    assert_eq!(out.code, Some(2), "an unknown command: {out:?}");
    // Unauthorized: a wrong token (the flag wins over KV_API_TOKEN).
    let out = k.at(0, &["--token", "wrong", "get", "key-x"]);
    assert_eq!(out.code, Some(6), "{out:?}");
    let mut cmd = Command::new(binary("kvctl"));
    cmd.env_remove("KV_API_TOKEN")
        .env("KV_URL", c.url(2))
        .args(["get", "key-x"]);
    let out = run_bounded(&mut cmd, None, Duration::from_secs(30));
    assert_eq!(out.code, Some(6), "no token: {out:?}");
    // KV_URL picks the node when --url is not given.
    let mut cmd = k.command();
    cmd.env("KV_URL", c.url(2)).args(["--json", "get", "key-x"]);
    let out = run_bounded(&mut cmd, None, Duration::from_secs(30));
    assert_eq!(parse(&out)["value"], 42, "{out:?}");
    // No node on the port → 5; a node that never answers → 5 after --timeout.
    let mut cmd = k.command();
    cmd.args([
        "--url",
        &format!("http://127.0.0.1:{}", free_port()),
        "get",
        "a",
    ]);
    let out = run_bounded(&mut cmd, None, Duration::from_secs(30));
    assert_eq!(out.code, Some(5), "{out:?}");
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let mut cmd = k.command();
    cmd.args(["--url", &url, "--timeout", "0.5", "get", "a"]);
    let started = Instant::now();
    let out = run_bounded(&mut cmd, None, Duration::from_secs(30));
    assert_eq!(out.code, Some(5), "{out:?}");
    assert!(out.stderr.contains("did not answer"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);

    // VI (e-mail) is tested with a real SMTP server in tests/tests/email.rs.

    // VII. The chain: PUT at node1, GET at node2, DELETE at node3, GET at node1 → not found.
    ok(&k.at(0, &["put", "test1", "v", "--string"]));
    assert_eq!(ok(&k.at(1, &["get", "test1", "--raw"])), "v\n");
    let deleted = k.json(2, &["delete", "test1"]);
    assert_eq!(deleted["deleted"], true, "{deleted}");
    let out = k.at(0, &["--json", "get", "test1"]);
    assert_eq!(out.code, Some(3), "{out:?}");
    let body = parse(&out);
    assert_eq!(
        (&body["key"], &body["value"]),
        (&json!("test1"), &Value::Null)
    );
}

/// Membership through kvctl: the member table, a join and a leave that
/// wait for the data to move, and the refusals an operator can meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_grows_and_shrinks_the_cluster() {
    let mut c = Cluster::start(Options::default().env("KV_API_TOKEN", TOKEN)).await;
    let n4 = c.add_node().await;
    let k = Kvctl::new(&c);
    for i in 0..50 {
        ok(&k.at(0, &["put", &format!("m{i}"), &i.to_string()]));
    }
    let view = k.json(0, &["members"]);
    assert_eq!(view["members"].as_array().unwrap().len(), 3, "{view}");
    assert!(
        ok(&k.at(0, &["members"])).contains("node3"),
        "the member table"
    );
    // Without the secret, or with a wrong one: refused before anything changes.
    let url4 = c.url(n4);
    let out = k.at(0, &["join", "node4", &url4]);
    assert_eq!(out.code, Some(2), "no secret: {out:?}");
    let out = k.at(0, &["--secret", "wrong-secret", "join", "node4", &url4]);
    assert_eq!(out.code, Some(6), "a wrong secret: {out:?}");
    let out = k.at(0, &["--secret", TEST_SECRET, "join", "node 4", &url4]);
    assert_eq!(out.code, Some(2), "a bad id: {out:?}");
    // The join, waiting until node4 holds its share.
    let done = k.json(
        0,
        &["--secret", TEST_SECRET, "join", "node4", &url4, "--wait"],
    );
    assert_eq!(done["change"]["state"], "done", "{done}");
    assert_eq!(done["members"].as_array().unwrap().len(), 4, "{done}");
    let out = k.at(n4, &["--json", "get", "m7"]);
    assert_eq!(
        parse(&out)["value"],
        7,
        "read through the new member: {out:?}"
    );
    // node1 leaves through node2; then node1 is not a member any more.
    let done = k.json(1, &["--secret", TEST_SECRET, "leave", "node1", "--wait"]);
    assert_eq!(done["members"].as_array().unwrap().len(), 3, "{done}");
    let out = k.at(0, &["get", "m7"]);
    assert_eq!(out.code, Some(4), "a node that left answers 503: {out:?}");
    for i in [1, 2, n4] {
        let out = k.at(i, &["--json", "get", "m42"]);
        assert_eq!(parse(&out)["value"], 42, "{out:?}");
    }
    // Nothing to resume once the change is done.
    let out = k.at(1, &["--secret", TEST_SECRET, "resume"]);
    assert_eq!(out.code, Some(2), "{out:?}");
}
