//! YCSB-style mixed workloads (`bench/ycsb.lua`): A (50% reads, 50%
//! updates) and B (95/5), zipfian key choice over 100,000 keys of 1 KiB,
//! for this store and for etcd, each loaded the same way first.

use std::time::Instant;

use kv_tests::json;

use super::{Point, b64, bench_cluster, env_or, http_client, measure, start_etcd};

/// The workloads: name and percentage of reads.
pub const WORKLOADS: [(&str, &str); 2] = [("YCSB-A", "50"), ("YCSB-B", "95")];

/// Keys `k0`..`k{n-1}` with 1 KiB values: through the store's batches of
/// 100, or etcd's puts, 32 requests in flight.
async fn load(url: &str, keys: usize, etcd: bool) {
    let started = Instant::now();
    let http = http_client();
    let mut tasks = tokio::task::JoinSet::new();
    let per_request = if etcd { 1 } else { 100 };
    for t in 0..32 {
        let (http, url) = (http.clone(), url.to_owned());
        tasks.spawn(async move {
            let value = "x".repeat(1022);
            let value64 = b64("x".repeat(1024).as_bytes());
            let firsts = (0..keys).step_by(per_request).skip(t).step_by(32);
            for first in firsts {
                let last = (first + per_request).min(keys);
                let request = if etcd {
                    let body =
                        json!({"key": b64(format!("k{first}").as_bytes()), "value": value64});
                    http.post(format!("{url}/v3/kv/put")).json(&body)
                } else {
                    let ops: Vec<_> = (first..last)
                        .map(|n| json!({"op": "put", "key": format!("k{n}"), "value": value}))
                        .collect();
                    http.post(format!("{url}/kv/batch"))
                        .json(&json!({ "ops": ops }))
                };
                let answer = request.send().await.expect("load request");
                assert_eq!(answer.status().as_u16(), 200, "load k{first}");
                if !etcd {
                    let body: serde_json::Value = answer.json().await.expect("batch answer");
                    let failed = body["results"].as_array().map_or(usize::MAX, |r| {
                        r.iter().filter(|r| r["status"] != 200).count()
                    });
                    assert_eq!(failed, 0, "load k{first}..k{last}: {body}");
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    eprintln!(
        "  loaded {keys} keys of 1 KiB into {} in {:.1} s",
        if etcd { "etcd" } else { "the store" },
        started.elapsed().as_secs_f64()
    );
}

/// Measures both workloads at `conns` connections on this store (and on
/// etcd unless `only_store`), each system loaded first.
pub async fn run(points: &mut Vec<Point>, conns: usize, only_store: bool) {
    let keys = env_or("BENCH_YCSB_KEYS", 100_000usize);
    let keys_text = keys.to_string();
    eprintln!("YCSB A and B: {keys} keys of 1 KiB, zipfian, {conns} connections");
    {
        let c = bench_cluster("everysec").await;
        let url = c.url(0);
        load(&url, keys, false).await;
        for (name, reads) in WORKLOADS {
            let env = [
                ("TARGET", "store"),
                ("READ_PCT", reads),
                ("KEYS", &keys_text),
            ];
            points.push(measure(
                "kvstore (AOF everysec)",
                name,
                &url,
                "ycsb.lua",
                conns,
                &env,
            ));
        }
    }
    if only_store {
        return;
    }
    let etcd = start_etcd().await;
    load(&etcd.client_url, keys, true).await;
    for (name, reads) in WORKLOADS {
        let env = [
            ("TARGET", "etcd"),
            ("READ_PCT", reads),
            ("KEYS", &keys_text),
        ];
        points.push(measure(
            "etcd 3-member",
            name,
            &etcd.client_url,
            "ycsb.lua",
            conns,
            &env,
        ));
    }
}
