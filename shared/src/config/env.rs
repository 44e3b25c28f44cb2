//! Reading one variable: parsing with a default, booleans, the peer list,
//! and the [`ConfigError`] that names the variable at fault. Also the URL
//! helpers for the Redis password (percent-encoding, redaction for logs).

use std::collections::BTreeMap;
use std::str::FromStr;

use std::time::Duration;

use super::ConfigError;
use crate::core::limits::CLUSTER_NODES_MAX;
use crate::core::schedule::Schedule;
use crate::core::validate::validate_node_id;

pub(super) fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

pub(super) fn parse_or<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(var) {
        None => Ok(default),
        Some(v) => v
            .parse::<T>()
            .map_err(|e| err(var, format!("cannot parse {v:?}: {e}"))),
    }
}

pub(super) fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(var).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "1" | "true" | "on" | "yes" => Ok(true),
            "0" | "false" | "off" | "no" => Ok(false),
            _ => Err(err(var, format!("must be on or off, got {v:?}"))),
        },
    }
}

/// A periodic task's schedule: the cron expression in `var` when it is set
/// (it replaces the interval), else `interval` (`None`: the task is off).
pub(super) fn parse_schedule(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    interval: Option<Duration>,
) -> Result<Option<Schedule>, ConfigError> {
    match get(var) {
        Some(expression) => Schedule::cron(&expression)
            .map(Some)
            .map_err(|e| err(var, e.to_string())),
        None => Ok(interval.map(Schedule::every)),
    }
}

/// Parses `id=http://host:port,id2=https://...`.
pub fn parse_peers(spec: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut nodes = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, url) = entry.split_once('=').ok_or_else(|| {
            err(
                "KV_PEERS",
                format!("entry {entry:?} must be id=http://host:port"),
            )
        })?;
        let (id, url) = (id.trim(), url.trim().trim_end_matches('/'));
        validate_node_id(id).map_err(|e| err("KV_PEERS", e.to_string()))?;
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(str::is_empty) {
            return Err(err(
                "KV_PEERS",
                format!("URL of {id} must start with http:// or https://, got {url:?}"),
            ));
        }
        if nodes.insert(id.to_owned(), url.to_owned()).is_some() {
            return Err(err("KV_PEERS", format!("node id {id:?} is listed twice")));
        }
    }
    if nodes.is_empty() {
        return Err(err("KV_PEERS", "lists no node"));
    }
    if nodes.len() > CLUSTER_NODES_MAX {
        return Err(err(
            "KV_PEERS",
            format!("lists more than {CLUSTER_NODES_MAX} nodes"),
        ));
    }
    Ok(nodes)
}

/// Percent-encodes everything but unreserved URL characters (RFC 3986).
pub(super) fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

pub(super) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://:pw@host:1/0"), "redis://***@host:1/0");
        assert_eq!(redact_url("redis://host:1/0"), "redis://host:1/0");
    }
}
