//! docker-compose.yml passes every `KV_*` and `EMAIL_*` variable the code
//! reads to the containers: a variable added to the configuration without
//! its line in the compose file fails here (a list kept in two places
//! drifts). No Docker needed.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use kv_tests::repo_root;

/// Read by the code but deliberately not passed through, with the reason.
const NOT_PASSED: &[(&str, &str)] = &[
    ("KV_NODE_ID", "set per service"),
    ("KV_LISTEN", "set per service"),
    ("KV_PEERS", "the compose topology, set in x-node-env"),
    (
        "KV_PEER_SOURCE_ADDR",
        "an address of the host, not of a container",
    ),
];

/// Every `"KV_..."` / `"EMAIL_..."` string literal in the Rust files under `dir`.
fn variables_in(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            variables_in(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for literal in text.split('"').skip(1).step_by(2) {
                let is_name = (literal.starts_with("KV_") || literal.starts_with("EMAIL_"))
                    && literal
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if is_name {
                    found.insert(literal.to_owned());
                }
            }
        }
    }
}

#[test]
fn compose_passes_every_variable_the_nodes_read() {
    let root = repo_root();
    let mut read = BTreeSet::new();
    for crate_dir in ["shared/src", "api/src", "worker/src"] {
        variables_in(&root.join(crate_dir), &mut read);
    }
    // A sanity check that the scan sees the configuration at all.
    for known in ["KV_NODE_ID", "KV_API_TOKEN", "EMAIL_HOST", "KV_WORKER_NAME"] {
        assert!(read.contains(known), "the scan missed {known}: {read:?}");
    }
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let keys: BTreeSet<&str> = compose
        .lines()
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k.trim()))
        .collect();
    let missing: Vec<&String> = read
        .iter()
        .filter(|v| !keys.contains(v.as_str()))
        .filter(|v| !NOT_PASSED.iter().any(|(name, _)| name == v))
        .collect();
    assert!(
        missing.is_empty(),
        "docker-compose.yml (x-node-env) does not pass {missing:?} to the containers; \
         add `NAME:` lines (a bare name passes the value from .env or the shell)"
    );
}
