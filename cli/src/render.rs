//! Text for people: each function turns one node answer into what `kvctl`
//! prints without `--json`. Pure (JSON in, text out) and lenient: a field
//! a node does not send shows as `-`, so an older or newer node still
//! renders.

use std::fmt::Write as _;

use serde_json::Value;

/// Longest value preview in tables, in characters.
const PREVIEW_CHARS_MAX: usize = 40;

/// A field as text: strings bare, `null`/missing as `-`, the rest as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A list as `a, b, c` (`-` when empty or missing), each item as [`item`].
fn list(v: &Value) -> String {
    match v.as_array() {
        Some(items) if !items.is_empty() => items.iter().map(item).collect::<Vec<_>>().join(", "),
        _ => "-".to_owned(),
    }
}

/// One item of a list: a node id as is; a failure `{"node", "code"}` as
/// `node3 (unreachable)`; a hint `{"owner", "holder"}` as `node3 (on node1)`;
/// anything else as JSON.
fn item(v: &Value) -> String {
    match (
        v.get("node"),
        v.get("code"),
        v.get("owner"),
        v.get("holder"),
    ) {
        (Some(node), Some(code), _, _) => format!("{} ({})", text(node), text(code)),
        (_, _, Some(owner), Some(holder)) => format!("{} (on {})", text(owner), text(holder)),
        (_, _, Some(owner), None) => text(owner),
        _ => text(v),
    }
}

/// Compact JSON cut to [`PREVIEW_CHARS_MAX`] characters.
fn preview(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= PREVIEW_CHARS_MAX {
        return s;
    }
    let cut: String = s.chars().take(PREVIEW_CHARS_MAX - 1).collect();
    format!("{cut}…")
}

/// Rows as a table with a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `get`: the value as pretty JSON; with `raw`, a string value unquoted.
pub fn value(body: &Value, raw: bool) -> String {
    let v = &body["value"];
    match (raw, v) {
        (true, Value::String(s)) => format!("{s}\n"),
        _ => format!(
            "{}\n",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        ),
    }
}

/// `put` and `delete`: what was stored where.
pub fn write(body: &Value) -> String {
    let verb = if body["deleted"] == Value::Bool(true) {
        "deleted"
    } else {
        "stored"
    };
    let mut out = format!(
        "{verb} {} at version {}\n",
        text(&body["key"]),
        text(&body["version"])
    );
    if let Some(at) = body["expires_at"].as_u64() {
        let _ = writeln!(out, "  expires at {at} (ms since the Unix epoch)");
    }
    let _ = writeln!(
        out,
        "  acknowledged by {} ({} needs {}; replicas {})",
        list(&body["acks"]),
        text(&body["consistency"]),
        text(&body["required"]),
        list(&body["replicas"])
    );
    for (field, label) in [
        ("pending", "queued for"),
        ("failed", "failed"),
        ("hints", "hints kept"),
    ] {
        if body[field].as_array().is_some_and(|a| !a.is_empty()) {
            let _ = writeln!(out, "  {label}: {}", list(&body[field]));
        }
    }
    if body["sloppy"] == Value::Bool(true) {
        out.push_str("  sloppy quorum: a fallback node stood in for a replica that is down\n");
    }
    out
}

/// `batch`: one row per operation, in order: its status and what it
/// returned (a value, a version, or the error's code).
pub fn batch(body: &Value) -> String {
    let rows: Vec<Vec<String>> = body["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let outcome = if r["error"].is_object() {
                text(&r["error"]["code"])
            } else if r["op"] == "get" && r["status"] == 200 {
                preview(&r["value"])
            } else if r["deleted"] == Value::Bool(true) && r["op"] == "get" {
                "deleted".to_owned()
            } else if r["op"] == "get" {
                "missing".to_owned()
            } else {
                "ok".to_owned()
            };
            vec![
                i.to_string(),
                text(&r["op"]),
                text(&r["key"]),
                text(&r["status"]),
                text(&r["version"]),
                outcome,
            ]
        })
        .collect();
    table(&["#", "OP", "KEY", "STATUS", "VERSION", "RESULT"], &rows)
}

/// `route`: the preference list with each replica's health.
pub fn route(body: &Value) -> String {
    let replicas = body["replicas"].as_array().cloned().unwrap_or_default();
    let shown: Vec<String> = replicas
        .iter()
        .map(|r| {
            let id = text(r);
            let health = text(&body["health"][id.as_str()]);
            format!("{id} ({health})")
        })
        .collect();
    format!(
        "key       {}\nposition  {}\nprimary   {}\nreplicas  {}\n",
        text(&body["key"]),
        text(&body["position"]),
        text(&body["primary"]),
        if shown.is_empty() {
            "-".to_owned()
        } else {
            shown.join(", ")
        }
    )
}

/// One stored record (`{"version", "value"}` or `{"version", "deleted"}`).
fn record(r: &Value) -> String {
    if r.is_null() {
        return "none".to_owned();
    }
    if r["deleted"] == Value::Bool(true) {
        return format!("{} deleted", text(&r["version"]));
    }
    format!("{} {}", text(&r["version"]), preview(&r["value"]))
}

/// `explain`: each node's own view of the key and whether replicas agree.
pub fn explain(body: &Value) -> String {
    let mut out = format!(
        "key {}: replicas {}\n",
        text(&body["key"]),
        list(&body["replicas"])
    );
    if body["agree"] == Value::Bool(true) {
        out.push_str("  the replicas agree\n");
    } else {
        let _ = writeln!(
            out,
            "  the replicas do not agree; stale: {}",
            list(&body["stale"])
        );
    }
    let _ = writeln!(out, "  newest: {}", record(&body["newest"]));
    let rows: Vec<Vec<String>> = body["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let view = &n["view"];
            let hints: Vec<String> = view["hints"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|h| format!("for {}", text(&h["owner"])))
                .collect();
            let jobs: Vec<String> = view["jobs"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|j| format!("to {} ({})", text(&j["target"]), text(&j["state"])))
                .collect();
            vec![
                text(&n["node"]),
                if n["replica"] == Value::Bool(true) {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
                if view.is_null() {
                    "-".to_owned()
                } else {
                    record(&view["record"])
                },
                if hints.is_empty() {
                    "-".to_owned()
                } else {
                    hints.join(", ")
                },
                if jobs.is_empty() {
                    "-".to_owned()
                } else {
                    jobs.join(", ")
                },
                text(&n["error"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &["NODE", "REPLICA", "RECORD", "HINTS", "JOBS", "ERROR"],
        &rows,
    ));
    if let Some(repaired) = body["repaired"].as_array() {
        let done: Vec<String> = repaired
            .iter()
            .map(|r| format!("{} {}", text(&r["node"]), text(&r["outcome"])))
            .collect();
        let _ = writeln!(
            out,
            "repair: {}",
            if done.is_empty() {
                "nothing to repair".to_owned()
            } else {
                done.join(", ")
            }
        );
    }
    out
}

/// `cluster`: a status table of the nodes as the asked node sees them.
pub fn cluster(body: &Value) -> String {
    let mut out = format!(
        "asked {}: N={}, reads {}, writes {}, background sync {}, records {}, restore {}\n",
        text(&body["node"]),
        text(&body["replication_factor"]),
        text(&body["read_consistency"]),
        text(&body["write_consistency"]),
        match &body["background_sync"] {
            Value::Bool(true) => "on".to_owned(),
            Value::Bool(false) => "off".to_owned(),
            other => text(other),
        },
        text(&body["records"]),
        match &body["restore"] {
            Value::Object(r) => r
                .get("state")
                .map_or_else(|| preview(&body["restore"]), text),
            other => text(other),
        },
    );
    let rows: Vec<Vec<String>> = body["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let mut id = text(&n["id"]);
            if n["self"] == Value::Bool(true) {
                id.push('*');
            }
            vec![
                id,
                text(&n["status"]),
                text(&n["heartbeat_status"]),
                text(&n["hints_held_here"]),
                n["ring_share"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0)),
                text(&n["url"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &["NODE", "STATUS", "HEARTBEAT", "HINTS HERE", "RING", "URL"],
        &rows,
    ));
    out.push_str(
        "(* the node asked; STATUS is its routing view, HEARTBEAT what its Redis holds)\n",
    );
    out
}

/// `restore`: what the pull from peers moved.
pub fn restore(body: &Value) -> String {
    let mut out = format!(
        "{} restored from {} peer(s) in {} ms: {} leaves differed, {} records received, {} stored\n",
        text(&body["node"]),
        text(&body["peers_synced"]),
        text(&body["elapsed_ms"]),
        text(&body["leaves_differing"]),
        text(&body["received"]),
        text(&body["stored"]),
    );
    let rows: Vec<Vec<String>> = body["peers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                text(&p["node"]),
                text(&p["leaves_differing"]),
                text(&p["received"]),
                text(&p["stored"]),
                text(&p["error"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &["PEER", "LEAVES", "RECEIVED", "STORED", "ERROR"],
            &rows,
        ));
    }
    out
}

/// `snapshot`: one page of a node's own data, and how to get the next one.
pub fn snapshot(body: &Value) -> String {
    let empty = serde_json::Map::new();
    let data = body["data"].as_object().unwrap_or(&empty);
    let mut out = format!(
        "{}: {} record(s) on this page, {} in all\n",
        text(&body["node"]),
        data.len(),
        text(&body["total_records"]),
    );
    let rows: Vec<Vec<String>> = data
        .iter()
        .map(|(k, v)| vec![k.clone(), preview(v)])
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(&["KEY", "VALUE"], &rows));
    }
    if let Some(cursor) = body["next_cursor"].as_str() {
        let _ = writeln!(out, "more: kvctl snapshot --cursor {cursor}");
    }
    out
}

/// `list`: one page of the cluster's keys, and how to get the next one.
pub fn listing(body: &Value) -> String {
    let items = body["items"].as_array().map_or(0, Vec::len);
    let mut out = listing_rows(body);
    let _ = writeln!(out, "{items} key(s)");
    if let Some(cursor) = body["next_cursor"].as_str() {
        let _ = writeln!(
            out,
            "more: kvctl list --cursor {cursor} (with the same range)"
        );
    }
    out
}

/// The rows of one page of a listing: key, value (unless keys only), version.
pub fn listing_rows(body: &Value) -> String {
    let items = body["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let with_values = items.iter().any(|i| i.get("value").is_some());
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let mut row = vec![text(&i["key"])];
            if with_values {
                row.push(preview(&i["value"]));
            }
            row.push(text(&i["version"]));
            row
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let head: &[&str] = if with_values {
        &["KEY", "VALUE", "VERSION"]
    } else {
        &["KEY", "VERSION"]
    };
    table(head, &rows)
}

/// `watch`: one event as a line: id, kind, key, version, value.
pub fn watch_line(event: &str, id: Option<&str>, data: &Value) -> String {
    let value = if data["deleted"] == true {
        "-".to_owned()
    } else {
        preview(&data["value"])
    };
    format!(
        "{}  {event:<6}  {}  {}  {value}\n",
        id.unwrap_or("-"),
        text(&data["key"]),
        text(&data["version"]),
    )
}

/// An error answer's extra fields (which nodes answered, where a failed
/// write was stored or queued), one line each.
pub fn error_details(body: &Value) -> String {
    let mut out = String::new();
    if let Some(error) = body["error"].as_object() {
        for (k, v) in error {
            if k != "code" && k != "message" {
                let shown = if v.is_array() { list(v) } else { text(v) };
                let _ = writeln!(out, "  {k}: {shown}");
            }
        }
    }
    out
}

/// `GET /cluster/members`: the epoch and phase, a member table, and the
/// change the node drives.
pub fn members(body: &Value) -> String {
    let mut out = format!(
        "asked {}: topology epoch {}, {}\n",
        text(&body["node"]),
        text(&body["epoch"]),
        text(&body["phase"])
    );
    let rows: Vec<Vec<String>> = body["members"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| vec![text(&m["id"]), text(&m["state"]), text(&m["url"])])
        .collect();
    out.push_str(&table(&["node", "state", "url"], &rows));
    let change = &body["change"];
    if change.is_object() {
        let what = match (change["join"].as_str(), change["leave"].as_str()) {
            (Some(id), _) => format!("{id} joins"),
            (None, Some(id)) => format!("{id} leaves"),
            _ => "change".to_owned(),
        };
        out.push_str(&format!(
            "change: {what}: {} at epoch {} ({})\n",
            text(&change["state"]),
            text(&change["epoch"]),
            text(&change["phase"])
        ));
        if let Some(moves) = change["moves"].as_object() {
            for (node, m) in moves {
                out.push_str(&format!(
                    "  {node}: pulled {} records ({} bytes, {}/{} ranges) in {} ms, cleanup removed {}\n",
                    text(&m["records"]),
                    text(&m["bytes"]),
                    text(&m["ranges_pulled"]),
                    text(&m["ranges"]),
                    text(&m["pull_ms"]),
                    text(&m["removed"])
                ));
            }
        }
    }
    let pulling = &body["pulling"];
    if pulling.is_object() {
        out.push_str(&format!(
            "pulling now from {}: {}/{} ranges, {} records ({} bytes)\n",
            text(&pulling["node"]),
            text(&pulling["leaves_pulled"]),
            text(&pulling["leaves_wanted"]),
            text(&pulling["received"]),
            text(&pulling["bytes_received"])
        ));
    }
    out
}

/// The answer of a join, leave or resume: the change started.
pub fn change_started(body: &Value) -> String {
    let mut out = format!(
        "change started at epoch {}; follow it with: kvctl members\n",
        text(&body["epoch"])
    );
    if let Some(planned) = body["planned"].as_object() {
        for (node, share) in planned {
            out.push_str(&format!(
                "  {node} gains {:.1}% of the hash space\n",
                share.as_f64().unwrap_or(0.0) * 100.0
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_prints_json_or_a_raw_string() {
        let body = json!({"key": "k", "value": "mci_admin"});
        assert_eq!(value(&body, false), "\"mci_admin\"\n");
        assert_eq!(value(&body, true), "mci_admin\n");
        assert_eq!(
            value(&json!({"value": {"a": 1}}), true),
            "{\n  \"a\": 1\n}\n"
        );
    }

    #[test]
    fn a_write_names_its_version_and_replicas() {
        let out = write(&json!({
            "key": "k", "version": "1:0:node1", "deleted": false, "consistency": "quorum",
            "required": 2, "replicas": ["node2", "node1", "node3"], "acks": ["node1", "node3"],
            "failed": [], "pending": ["node2"], "hints": [], "sloppy": true
        }));
        assert!(out.starts_with("stored k at version 1:0:node1\n"), "{out}");
        assert!(
            out.contains("acknowledged by node1, node3 (quorum needs 2"),
            "{out}"
        );
        assert!(out.contains("queued for: node2"), "{out}");
        assert!(out.contains("sloppy quorum"), "{out}");
        assert!(!out.contains("failed"), "{out}");
    }

    #[test]
    fn tables_pad_columns_and_missing_fields_show_a_dash() {
        let out = cluster(&json!({
            "node": "node1",
            "nodes": [
                {"id": "node1", "self": true, "status": "up", "ring_share": 0.5, "url": "http://a"},
                {"id": "node22", "status": "down", "url": "http://b"}
            ]
        }));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("asked node1: N=-"), "{out}");
        assert_eq!(
            lines[1],
            "NODE    STATUS  HEARTBEAT  HINTS HERE  RING   URL"
        );
        assert_eq!(
            lines[2],
            "node1*  up      -          -           50.0%  http://a"
        );
        assert_eq!(
            lines[3],
            "node22  down    -          -           -      http://b"
        );
    }

    #[test]
    fn failures_and_hints_read_as_nodes() {
        let out = error_details(&json!({"error": {
            "code": "consistency_unreachable", "message": "m",
            "failed": [{"code": "unreachable", "error": "cannot be reached", "node": "node3"}],
            "hinted_for": [{"holder": "node1", "owner": "node3"}],
            "stored_on": ["node1", "node2"], "queued_for": [], "required": 3
        }}));
        assert!(out.contains("  failed: node3 (unreachable)\n"), "{out}");
        assert!(out.contains("  hinted_for: node3 (on node1)\n"), "{out}");
        assert!(out.contains("  stored_on: node1, node2\n"), "{out}");
        assert!(out.contains("  queued_for: -\n"), "{out}");
        assert!(!out.contains("message"), "{out}");
    }

    #[test]
    fn long_values_are_cut_in_tables() {
        let out = snapshot(&json!({
            "node": "node2", "total_records": 1, "next_cursor": "7",
            "data": {"k": "x".repeat(100)}
        }));
        assert!(out.contains('…'), "{out}");
        assert!(out.contains("more: kvctl snapshot --cursor 7"), "{out}");
    }

    #[test]
    fn explain_shows_each_nodes_view() {
        let out = explain(&json!({
            "key": "k", "replicas": ["node1", "node2"], "agree": false, "stale": ["node2"],
            "newest": {"version": "2:0:node1", "value": 1},
            "nodes": [
                {"node": "node1", "replica": true, "view": {"record": {"version": "2:0:node1", "value": 1},
                 "hints": [{"owner": "node2"}], "jobs": [{"target": "node2", "state": "ready"}]}},
                {"node": "node2", "replica": true, "view": null, "error": "unreachable"}
            ],
            "repaired": [{"node": "node2", "outcome": "stored"}]
        }));
        assert!(out.contains("stale: node2"), "{out}");
        assert!(out.contains("for node2"), "{out}");
        assert!(out.contains("to node2 (ready)"), "{out}");
        assert!(out.contains("unreachable"), "{out}");
        assert!(out.contains("repair: node2 stored"), "{out}");
    }
}
