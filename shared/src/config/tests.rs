//! Tests of [`Config::from_lookup`] as a whole; those of one part are next
//! to it (`email.rs`, `env.rs`).

use super::*;
use std::collections::HashMap;

#[test]
fn redis_password_is_encoded_and_redacted() {
    let c = config(&[("REDIS_HOST", "r1"), ("REDIS_PASSWORD", "p@ss:w/rd")]).unwrap();
    assert_eq!(c.redis_url, "redis://:p%40ss%3Aw%2Frd@r1:6379/0");
    assert_eq!(c.redis_url_redacted(), "redis://***@r1:6379/0");
    let c = config(&[
        ("KV_PEER_SOURCE_ADDR", "127.0.0.12"),
        ("KV_CLOCK_OFFSET_MS", "-2000"),
    ])
    .unwrap();
    assert_eq!(c.peer_source_addr, Some("127.0.0.12".parse().unwrap()));
    assert_eq!(c.clock_offset_ms, -2000);
    assert_eq!(
        config(&[("KV_PEER_SOURCE_ADDR", "nope")]).unwrap_err().var,
        "KV_PEER_SOURCE_ADDR"
    );
    assert_eq!(
        config(&[("KV_CLOCK_OFFSET_MS", "9999999")])
            .unwrap_err()
            .var,
        "KV_CLOCK_OFFSET_MS"
    );
}

pub(super) fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|name| map.get(name).cloned())
}

#[test]
fn defaults_follow_the_seed() {
    let c = config(&[]).unwrap();
    assert_eq!(c.node_id, "node1");
    assert_eq!(c.redis_url, "redis://127.0.0.1:6379/0");
    assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    // Not capped here: each ring caps N at its size, and the cluster may grow.
    assert_eq!(c.replication_factor, 3);
    assert!(!c.join);
    assert!(c.background_sync);
    let c = config(&[("REDIS_HOST", "redis1"), ("REDIS_PORT", "6380")]).unwrap();
    assert_eq!(c.redis_url, "redis://redis1:6380/0");
}

#[test]
fn peers_and_replication() {
    let c = config(&[
        ("KV_NODE_ID", "node2"),
        (
            "KV_PEERS",
            "node1=http://a:1, node2=http://b:2/ ,node3=http://c:3",
        ),
        ("KV_REPLICATION_FACTOR", "5"),
    ])
    .unwrap();
    assert_eq!(c.nodes.len(), 3);
    assert_eq!(c.nodes["node2"], "http://b:2");
    // Not capped here: each ring caps N at its size, and the cluster may grow.
    assert_eq!(c.replication_factor, 5);
    // A node started to join may be missing from its seeds; otherwise not.
    let seeds = [
        ("KV_NODE_ID", "node4"),
        ("KV_PEERS", "node1=http://a:1,node2=http://b:2"),
    ];
    assert!(config(&seeds).is_err());
    let joining = config(&[seeds[0], seeds[1], ("KV_JOIN", "1")]).unwrap();
    assert!(joining.join);
    assert_eq!(joining.move_bytes_per_s, Some(64 * 1024 * 1024));
}

#[test]
fn tls_peers_redis_and_admin_token() {
    let tls = [
        ("KV_TLS_CERT", "/etc/kv/node1.pem"),
        ("KV_TLS_KEY", "/etc/kv/node1.key"),
    ];
    let c = config(&[
        tls[0],
        tls[1],
        ("KV_PEERS", "node1=https://a:1,node2=https://b:2"),
        ("REDIS_URL", "rediss://:pw@r:6380/0"),
        ("KV_REDIS_TLS_CA", "/etc/kv/ca.pem"),
        ("KV_ADMIN_TOKEN", "an-operator-token-0123"),
    ])
    .unwrap();
    assert!(c.tls.serves_tls());
    assert_eq!(c.nodes["node2"], "https://b:2");
    assert_eq!(c.redis_url, "rediss://:pw@r:6380/0");
    assert!(c.redis_tls.ca.is_some());
    assert!(c.admin_token.is_some());
    // Alone, a TLS node's own URL is https.
    assert_eq!(
        config(&[tls[0], tls[1]]).unwrap().nodes["node1"],
        "https://127.0.0.1:8001"
    );
    // Its scheme must match whether it serves TLS, either way.
    let e = config(&[tls[0], tls[1], ("KV_PEERS", "node1=http://a:1")]).unwrap_err();
    assert_eq!(e.var, "KV_PEERS");
    assert!(e.message.contains("https://"), "{e}");
    let e = config(&[("KV_PEERS", "node1=https://a:1")]).unwrap_err();
    assert!(e.message.contains("KV_TLS_CERT"), "{e}");
    // The admin token is long, and is not the cluster secret.
    let e = config(&[("KV_ADMIN_TOKEN", "short")]).unwrap_err();
    assert_eq!(e.var, "KV_ADMIN_TOKEN");
    let e = config(&[
        ("KV_CLUSTER_SECRET", "the-same-secret-0123"),
        ("KV_ADMIN_TOKEN", "the-same-secret-0123"),
    ])
    .unwrap_err();
    assert!(e.message.contains("differ"), "{e}");
}

#[test]
fn bad_values_name_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("KV_NODE_ID", "bad id")], "KV_NODE_ID"),
        (&[("KV_LISTEN", "nowhere")], "KV_LISTEN"),
        (&[("KV_PEERS", "node2=http://b:2")], "KV_PEERS"),
        (&[("KV_PEERS", "node1=ftp://x")], "KV_PEERS"),
        (&[("KV_PEERS", "node1=http://a,node1=http://b")], "KV_PEERS"),
        (
            &[("KV_REPLICATION_FACTOR", "three")],
            "KV_REPLICATION_FACTOR",
        ),
        (&[("KV_REPLICATION_FACTOR", "0")], "KV_REPLICATION_FACTOR"),
        (&[("KV_WRITE_CONSISTENCY", "most")], "KV_WRITE_CONSISTENCY"),
        (&[("REDIS_PORT", "70000")], "REDIS_PORT"),
        (&[("REDIS_URL", "http://x")], "REDIS_URL"),
        (&[("KV_REDIS_TLS_CERT", "c.pem")], "KV_REDIS_TLS_KEY"),
        (&[("KV_PEERS", "node1=https://")], "KV_PEERS"),
        (&[("KV_CLUSTER_SECRET", "short")], "KV_CLUSTER_SECRET"),
        (&[("KV_VALUE_BYTES_MAX", "0")], "KV_VALUE_BYTES_MAX"),
        (
            &[("KV_HEARTBEAT_INTERVAL_S", "0")],
            "KV_HEARTBEAT_INTERVAL_S",
        ),
        (&[("KV_BACKGROUND_SYNC", "maybe")], "KV_BACKGROUND_SYNC"),
        (&[("KV_PEER_TIMEOUT_MS", "0")], "KV_PEER_TIMEOUT_MS"),
        (&[("KV_WATCH_LOG_LEN", "20000000")], "KV_WATCH_LOG_LEN"),
        (&[("KV_WATCH_LOG_LEN", "-1")], "KV_WATCH_LOG_LEN"),
    ];
    for (vars, var) in cases {
        let e = config(vars).unwrap_err();
        assert_eq!(e.var, *var, "{vars:?} gave {e}");
        assert!(e.to_string().starts_with(var));
    }
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = config(&[
        ("KV_CLUSTER_SECRET", "s3cret-cluster"),
        ("KV_API_TOKEN", "t0ken-client"),
    ])
    .unwrap();
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("s3cret-cluster") && !shown.contains("t0ken-client"),
        "{shown}"
    );
    assert_eq!(c.cluster_secret.0, "s3cret-cluster");
}

#[test]
fn grace_must_outlast_the_hint_window() {
    let e = config(&[("KV_TOMBSTONE_GRACE_S", "10"), ("KV_HINT_WINDOW_S", "10")]).unwrap_err();
    assert_eq!(e.var, "KV_TOMBSTONE_GRACE_S");
    assert!(e.to_string().contains("KV_HINT_WINDOW_S"), "{e}");
    // The default hint window (3 h) is above a 2 s grace.
    assert!(config(&[("KV_TOMBSTONE_GRACE_S", "2")]).is_err());
    assert!(config(&[("KV_TOMBSTONE_GRACE_S", "2"), ("KV_HINT_WINDOW_S", "1")]).is_ok());
}

#[test]
fn periodic_work_follows_intervals_or_cron_schedules() {
    use crate::core::jobs::PeriodicTask;
    use crate::core::schedule::Schedule;
    let c = config(&[]).unwrap();
    let every = |s: u64| Some(Schedule::every(Duration::from_secs(s)));
    assert_eq!(c.schedules.get(PeriodicTask::Heartbeat).cloned(), every(30));
    assert_eq!(
        c.schedules.get(PeriodicTask::HintDelivery).cloned(),
        every(1)
    );
    assert_eq!(
        c.schedules.get(PeriodicTask::AntiEntropy).cloned(),
        every(60)
    );
    assert_eq!(c.schedules.get(PeriodicTask::Gc).cloned(), every(300));
    // 0 switches an interval task off; a cron expression replaces the interval.
    let c = config(&[
        ("KV_GC_INTERVAL_S", "0"),
        ("KV_ANTI_ENTROPY_INTERVAL_S", "0"),
        ("KV_ANTI_ENTROPY_SCHEDULE", "0 0 3 * * *"),
        ("KV_HEARTBEAT_SCHEDULE", "*/10 * * * * *"),
    ])
    .unwrap();
    assert!(c.schedules.get(PeriodicTask::Gc).is_none());
    assert_eq!(
        c.schedules.get(PeriodicTask::AntiEntropy).cloned(),
        Schedule::cron("0 0 3 * * *").ok()
    );
    assert_eq!(
        c.schedules.get(PeriodicTask::Heartbeat).cloned(),
        Schedule::cron("*/10 * * * * *").ok()
    );
    // A bad expression names its variable.
    for var in [
        "KV_HEARTBEAT_SCHEDULE",
        "KV_HINT_DELIVERY_SCHEDULE",
        "KV_ANTI_ENTROPY_SCHEDULE",
        "KV_GC_SCHEDULE",
    ] {
        let e = config(&[(var, "*/5 * * * *")]).unwrap_err();
        assert_eq!(e.var, var);
        assert!(e.to_string().starts_with(var), "{e}");
    }
}
