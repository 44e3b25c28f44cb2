//! The dashboard (`/ui/`) in a real headless Chromium (Debian's
//! `chromium`) against a real 3-node cluster with a client token: the page
//! asks for the token, shows three nodes up once it has one, and shows a
//! node whose API was SIGKILLed as down within seconds; a screenshot is
//! saved (in the cluster's folder, and at `$UI_SCREENSHOT` when set).
//!
//! Chromium runs as a process per page load: `--dump-dom` prints the DOM
//! after the page's scripts ran for `--virtual-time-budget` ms of page time
//! (the page polls `/cluster/views` every 2 s, so a load sees a few polls).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kv_tests::{Cluster, Options, json, wait_for};

const TOKEN: &str = "ui-test-token";
/// Page time each load runs its scripts for (two or three polls).
const PAGE_TIME_MS: u32 = 3_000;
/// Wall time one Chromium run may take on a loaded machine.
const CHROMIUM_RUN_MAX: Duration = Duration::from_secs(30);

/// Debian's `chromium` (or `$CHROMIUM`), or a failure that says what to do.
fn chromium() -> PathBuf {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the dashboard test needs Debian's headless chromium, and it is not installed: \
             run `apt-get install -y chromium` (.ci/run installs it), or point $CHROMIUM at one"
        )
    })
}

/// Runs Chromium once, each run with its own profile, and returns stdout.
struct Browser {
    bin: PathBuf,
    dir: PathBuf,
    runs: AtomicU32,
}

impl Browser {
    fn new(dir: &Path) -> Browser {
        let dir = dir.join("chromium");
        std::fs::create_dir_all(&dir).unwrap();
        Browser {
            bin: chromium(),
            dir,
            runs: AtomicU32::new(0),
        }
    }

    async fn run(&self, args: &[String], url: &str) -> String {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.join(format!("run-{n}.out"));
        let err_path = self.dir.join(format!("run-{n}.err"));
        let mut child = Command::new(&self.bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--mute-audio",
            ])
            .arg(format!(
                "--user-data-dir={}",
                self.dir.join(format!("profile-{n}")).display()
            ))
            .arg(format!("--virtual-time-budget={PAGE_TIME_MS}"))
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > CHROMIUM_RUN_MAX {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium did not finish within {CHROMIUM_RUN_MAX:?} (log: {})",
                    err_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status.success(),
            "chromium failed ({status}); log: {}",
            err_path.display()
        );
        let _ = std::fs::remove_dir_all(self.dir.join(format!("profile-{n}")));
        std::fs::read_to_string(&out_path).unwrap()
    }

    /// The page's DOM after its scripts ran.
    async fn dom(&self, url: &str) -> String {
        self.run(&["--dump-dom".to_owned()], url).await
    }

    /// A 1280x900 PNG of the page.
    async fn screenshot(&self, url: &str, path: &Path) {
        let _ = std::fs::remove_file(path);
        self.run(
            &[
                "--window-size=1280,900".to_owned(),
                format!("--screenshot={}", path.display()),
            ],
            url,
        )
        .await;
        let png = std::fs::read(path)
            .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
        assert!(
            png.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            path.display()
        );
    }
}

/// The health the page shows for `node` (`tr.node-row[data-health]`).
fn health_in(dom: &str, node: &str) -> Option<String> {
    let at = dom.find(&format!("data-node=\"{node}\" data-health=\""))?;
    let rest = &dom[at..];
    let start = rest.find("data-health=\"")? + "data-health=\"".len();
    let len = rest[start..].find('"')?;
    Some(rest[start..start + len].to_owned())
}

/// What `observer` says of `node` in the health matrix.
fn seen_in(dom: &str, observer: &str, node: &str) -> Option<String> {
    let needle = format!("data-observer=\"{observer}\" data-node=\"{node}\" data-seen=\"");
    let at = dom.find(&needle)? + needle.len();
    let len = dom[at..].find('"')?;
    Some(dom[at..at + len].to_owned())
}

fn page_state(dom: &str) -> Option<&str> {
    let needle = "<body data-state=\"";
    let at = dom.find(needle)? + needle.len();
    let len = dom[at..].find('"')?;
    Some(&dom[at..at + len])
}

/// Some client traffic through every running node, for the charts.
async fn traffic(c: &Cluster, nodes: &[usize], rounds: usize) {
    for round in 0..rounds {
        for &i in nodes {
            let key = format!("ui-{i}-{round}");
            let put = c
                .http
                .post(format!("{}/kv/", c.url(i)))
                .bearer_auth(TOKEN)
                .json(&json!({"key": key, "value": {"round": round}}))
                .send()
                .await
                .unwrap();
            assert!(put.status().is_success(), "{}", put.status());
            let get = c
                .http
                .get(format!("{}/kv/{key}", c.url(i)))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert!(get.status().is_success(), "{}", get.status());
        }
    }
}

#[tokio::test]
async fn dashboard_shows_the_cluster_and_a_dead_node() {
    let browser_check = chromium();
    assert!(browser_check.exists());
    let mut c = Cluster::start(
        Options {
            workers: 1,
            ..Options::default()
        }
        .env("KV_API_TOKEN", TOKEN),
    )
    .await;
    let browser = Browser::new(&c.dir);
    let page = format!("{}/ui/", c.url(0));
    // The token travels in the fragment, which never reaches a server; the
    // page keeps it in localStorage (each run here has a fresh profile).
    let page_with_token = format!("{page}#token={TOKEN}");

    // Without the token the page says it needs one.
    let dom = browser.dom(&page).await;
    assert_eq!(page_state(&dom), Some("auth"), "{dom}");
    assert!(dom.contains("requires a client token"), "{dom}");

    // With it: three nodes, each up (the nodes started one after another,
    // so a node's first probes may still be settling: poll).
    traffic(&c, &[0, 1, 2], 10).await;
    let dom = wait_for(
        "the page to show three nodes up",
        Duration::from_secs(30),
        || async {
            let dom = browser.dom(&page_with_token).await;
            let all_up = ["node1", "node2", "node3"]
                .iter()
                .all(|n| health_in(&dom, n).as_deref() == Some("up"));
            (page_state(&dom) == Some("live") && all_up).then_some(dom)
        },
    )
    .await;
    assert!(dom.contains("data-up=\"3\" data-total=\"3\""), "{dom}");
    assert!(dom.contains("3/3 nodes answer"), "{dom}");
    browser
        .screenshot(&page_with_token, &c.dir.join("dashboard-all-up.png"))
        .await;

    // SIGKILL node2's API: the page shows it down within seconds.
    c.kill_api(1);
    let killed = Instant::now();
    let dom = wait_for(
        "the page to show node2 down",
        Duration::from_secs(20),
        || async {
            let dom = browser.dom(&page_with_token).await;
            (health_in(&dom, "node2").as_deref() == Some("down")).then_some(dom)
        },
    )
    .await;
    let took = killed.elapsed();
    eprintln!("the page showed node2 down {took:?} after its API was killed");
    assert_eq!(health_in(&dom, "node1").as_deref(), Some("up"), "{dom}");
    assert_eq!(health_in(&dom, "node3").as_deref(), Some("up"), "{dom}");
    assert!(dom.contains("2/3 nodes answer"), "{dom}");
    assert_eq!(
        seen_in(&dom, "node2", "node1").as_deref(),
        Some("unreachable"),
        "node2's own row cannot be read: {dom}"
    );

    // node1's own failure detector marks it too (probes every second).
    traffic(&c, &[0, 2], 10).await;
    let dom = wait_for(
        "node1 to see node2 down",
        Duration::from_secs(15),
        || async {
            let dom = browser.dom(&page_with_token).await;
            (seen_in(&dom, "node1", "node2").as_deref() == Some("down")
                && seen_in(&dom, "node3", "node2").as_deref() == Some("down"))
            .then_some(dom)
        },
    )
    .await;
    assert_eq!(
        seen_in(&dom, "node1", "node3").as_deref(),
        Some("up"),
        "{dom}"
    );

    let shot = c.dir.join("dashboard-node2-down.png");
    browser.screenshot(&page_with_token, &shot).await;
    eprintln!("screenshot: {}", shot.display());
    if let Ok(path) = std::env::var("UI_SCREENSHOT") {
        std::fs::copy(&shot, &path)
            .unwrap_or_else(|e| panic!("cannot copy the screenshot to {path}: {e}"));
        let all_up = Path::new(&path).with_extension("all-up.png");
        std::fs::copy(c.dir.join("dashboard-all-up.png"), &all_up).unwrap();
        eprintln!("screenshots also at {path} and {}", all_up.display());
    }
}
