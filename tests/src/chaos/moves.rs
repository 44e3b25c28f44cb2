//! The membership-move fault: a node leaves the cluster through another
//! node (`DELETE /cluster/members/{id}`), and when the fault is undone it
//! joins again (`POST /cluster/members`) once the leave is done. Each wait
//! is bounded; a change refused because another one runs is retried.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::Cluster;

/// How long a leave or a join may take before the fault counts as failed.
const CHANGE_WAIT: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(250);

/// The node that drives the moves of node `i`: the next one.
fn driver(c: &Cluster, i: usize) -> usize {
    (i + 1) % c.nodes.len()
}

/// Starts node `i`'s leave (not waiting for it).
pub(super) async fn leave(c: &Cluster, i: usize) -> Result<(), String> {
    let path = format!("/cluster/members/{}", c.nodes[i].id);
    start(c, driver(c, i), reqwest::Method::DELETE, &path, None).await
}

/// Waits for node `i`'s leave to end, then joins it again and waits for that.
pub(super) async fn join_again(c: &Cluster, i: usize) -> Result<(), String> {
    let via = driver(c, i);
    finished(c, via).await?;
    let (_, view) = c
        .request(reqwest::Method::GET, via, "/cluster/members", None)
        .await;
    let member = view["members"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["id"] == c.nodes[i].id.as_str()));
    if member {
        // The leave was abandoned: nothing to join again.
        return Ok(());
    }
    let body = json!({"id": c.nodes[i].id, "url": c.url(i)});
    start(
        c,
        via,
        reqwest::Method::POST,
        "/cluster/members",
        Some(body),
    )
    .await?;
    finished(c, via).await
}

/// Sends a change to node `via`, retrying while another change runs.
async fn start(
    c: &Cluster,
    via: usize,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(), String> {
    let deadline = Instant::now() + CHANGE_WAIT;
    loop {
        let (status, answer) = c.admin(method.clone(), via, path, body.clone()).await;
        match (status, answer["error"]["code"].as_str()) {
            (202, _) => return Ok(()),
            (409, Some("change_in_progress")) | (503, _) if Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
            }
            _ => {
                return Err(format!(
                    "{method} {path} via node{}: {status} {answer}",
                    via + 1
                ));
            }
        }
    }
}

/// Waits until the change node `via` drives is done or abandoned.
async fn finished(c: &Cluster, via: usize) -> Result<(), String> {
    c.change_finished(via, CHANGE_WAIT).await.map(|_| ())
}
