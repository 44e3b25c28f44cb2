//! The seed's test scenarios I, II, V and VII against a real 3-node cluster,
//! run once with background sync on (the default) and once with it off.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use kv_tests::seed::{scenario_i, scenario_ii, scenario_v, scenario_vii};
use kv_tests::{Cluster, Options};

/// With background sync on, each node runs one worker; off, none is needed.
async fn cluster(sync: &str) -> Cluster {
    let workers = if sync == "on" { 1 } else { 0 };
    Cluster::start(
        Options {
            workers,
            ..Options::default()
        }
        .env("KV_BACKGROUND_SYNC", sync),
    )
    .await
}

async fn all_scenarios(sync: &str) {
    let c = cluster(sync).await;
    scenario_i(&c).await;
    scenario_ii(&c).await;
    scenario_v(&c).await;
    scenario_vii(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenarios_with_background_sync_on() {
    all_scenarios("on").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenarios_with_background_sync_off() {
    all_scenarios("off").await;
}
