//! E-mail notifications as data: the job payload, key filters, the value
//! preview and the message text. Sending lives in `crate::mail`.

use serde::{Deserialize, Serialize};

/// Longest value preview in a notification, in characters.
pub const PREVIEW_CHARS_MAX: usize = 200;
/// Keys listed in one digest message.
pub const DIGEST_KEYS_SHOWN_MAX: usize = 50;

/// What a notification is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MailKind {
    /// A client write (or delete) acknowledged by the cluster.
    Write {
        key: String,
        /// Safe, truncated preview of the value; `None` for a delete.
        preview: Option<String>,
        version: String,
    },
    /// Writes over the rate bound, summed up.
    Digest { count: u64, keys: Vec<String> },
    /// A node changed status (seen by the heartbeat).
    Alert { about: String, status: String },
}

/// The e-mail job: one per acknowledged client write, digest or alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailJob {
    /// Stable id: a re-delivered job carries the same one, so a send that
    /// already succeeded is not repeated.
    pub id: String,
    /// The node that coordinated the write (or saw the change).
    pub node: String,
    pub time_ms: u64,
    #[serde(flatten)]
    pub kind: MailKind,
    #[serde(default)]
    pub attempt: u32,
}

impl MailJob {
    /// Subject and plain-text body.
    pub fn render(&self) -> (String, String) {
        let time = format_utc(self.time_ms);
        match &self.kind {
            MailKind::Write {
                key,
                preview,
                version,
            } => {
                let (what, value) = match preview {
                    Some(p) => ("write", p.as_str()),
                    None => ("delete", "(deleted)"),
                };
                let subject = format!("[kvstore] {what}: {}", one_line(key, 80));
                let body = format!(
                    "A {what} was acknowledged by the cluster.\n\nkey:     {}\nvalue:   {value}\nnode:    {}\nversion: {version}\ntime:    {time}\n",
                    one_line(key, 1024),
                    self.node
                );
                (subject, body)
            }
            MailKind::Digest { count, keys } => {
                let subject = format!("[kvstore] {count} more writes on {}", self.node);
                let mut body = format!(
                    "{count} writes on {} went over the notification rate limit and are summed up here.\n\nkeys (first {}):\n",
                    self.node,
                    keys.len()
                );
                for key in keys {
                    body.push_str("  ");
                    body.push_str(&one_line(key, 200));
                    body.push('\n');
                }
                body.push_str(&format!("\ntime: {time}\n"));
                (subject, body)
            }
            MailKind::Alert { about, status } => (
                format!("[kvstore] {about} is {status}"),
                format!(
                    "The heartbeat of {} found {about} {status} at {time}.\n",
                    self.node
                ),
            ),
        }
    }
}

/// A preview of a JSON text: at most `max_chars` characters, control
/// characters replaced, an ellipsis when cut.
pub fn preview(json: &str, max_chars: usize) -> String {
    let mut out: String = json
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if json.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

fn one_line(s: &str, max_chars: usize) -> String {
    preview(s, max_chars)
}

/// Glob match with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether a key notifies: no patterns means every key.
pub fn key_notifies(patterns: &[String], key: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| glob_match(p, key))
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC` from milliseconds since the epoch.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("user:*", "user:42"));
        assert!(!glob_match("user:*", "order:1"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*_test", "email_test"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(key_notifies(&[], "k"));
        assert!(key_notifies(&["x*".into(), "k".into()], "k"));
        assert!(!key_notifies(&["x*".into()], "k"));
    }

    #[test]
    fn previews_are_short_and_safe() {
        assert_eq!(preview("\"abc\"", 10), "\"abc\"");
        assert_eq!(preview("abcdef", 3), "abc…");
        assert_eq!(preview("a\nb", 10), "a b");
        assert_eq!(preview("😀😀😀", 2), "😀😀…");
    }

    #[test]
    fn utc_times() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(format_utc(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(format_utc(1_796_015_047_440), "2026-11-30 05:04:07.440 UTC");
    }

    #[test]
    fn messages_name_the_key_node_and_version() {
        let job = MailJob {
            id: "m1".into(),
            node: "node1".into(),
            time_ms: 0,
            kind: MailKind::Write {
                key: "email_test".into(),
                preview: Some("\"hi\"".into()),
                version: "1:0:node1".into(),
            },
            attempt: 0,
        };
        let (subject, body) = job.render();
        assert_eq!(subject, "[kvstore] write: email_test");
        for needle in ["email_test", "\"hi\"", "node1", "1:0:node1", "1970-01-01"] {
            assert!(body.contains(needle), "{needle} in {body}");
        }
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<MailJob>(&json).unwrap(), job);
        let alert = MailJob {
            kind: MailKind::Alert {
                about: "node3".into(),
                status: "down".into(),
            },
            ..job
        };
        let json = serde_json::to_string(&alert).unwrap();
        assert_eq!(
            serde_json::from_str::<MailJob>(&json).unwrap(),
            alert,
            "{json}"
        );
        assert_eq!(alert.render().0, "[kvstore] node3 is down");
    }
}
