//! Listing keys in order across the whole cluster (`GET /kv/?prefix=…`).
//!
//! Every node keeps its keys in byte order (a sorted index beside its
//! records) and answers one bounded page of a [`KeyRange`]: the records it
//! holds there, in order, and how far it looked (`scanned_to`). The
//! coordinator asks every node and merges the pages here:
//!
//! - Only keys up to the *horizon*, the smallest `scanned_to` of the pages
//!   that stopped early, are known from every node that answered, so a page
//!   never goes past it; keys beyond it come in the next page.
//! - A key counts only when `required` of its owners (its preference list)
//!   answered, the read's quorum; otherwise the page is refused rather than
//!   silently missing the key.
//! - The newest record of each key wins, as in a read; tombstones are left
//!   out, and owners that answered with an older record (or none) are named
//!   for repair.
//!
//! The cursor is the last key the page covered, hex-encoded so it is an
//! opaque token of URL-safe characters. Paging from it with the same range
//! visits every key present for the whole listing exactly once, in order,
//! whatever the page size or the writes in between (property-tested below).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::limits::{LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX};
use super::record::Record;
use super::validate::validate_key;

/// Which keys a listing covers. Every bound given applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// Only keys that start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Only keys at or after this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Only keys before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Only keys after this one (where the previous page stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// The lowest key a range may hold: the key, and whether it is itself included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lower<'a> {
    pub key: &'a str,
    pub inclusive: bool,
}

impl KeyRange {
    pub fn contains(&self, key: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
            && self.start.as_deref().is_none_or(|s| key >= s)
            && self.end.as_deref().is_none_or(|e| key < e)
            && self.after.as_deref().is_none_or(|a| key > a)
    }

    /// Where a scan in key order starts: the largest of the lower bounds
    /// (`None`: from the first key). Of equal bounds the exclusive wins.
    pub fn lower(&self) -> Option<Lower<'_>> {
        let inclusive = [self.prefix.as_deref(), self.start.as_deref()]
            .into_iter()
            .flatten()
            .map(|key| Lower {
                key,
                inclusive: true,
            });
        let exclusive = self.after.as_deref().map(|key| Lower {
            key,
            inclusive: false,
        });
        inclusive
            .chain(exclusive)
            .max_by(|a, b| a.key.cmp(b.key).then(b.inclusive.cmp(&a.inclusive)))
    }

    /// Whether no key at or after `key` (in byte order) can be in the range,
    /// so a scan in key order may stop at `key`.
    pub fn past(&self, key: &str) -> bool {
        self.end.as_deref().is_some_and(|e| key >= e)
            || self
                .prefix
                .as_deref()
                .is_some_and(|p| key > p && !key.starts_with(p))
    }

    /// The same range, after `key`.
    pub fn resumed_after(&self, key: String) -> KeyRange {
        KeyRange {
            after: Some(key),
            ..self.clone()
        }
    }
}

/// One node's page of a range: its records in key order (tombstones
/// included), and the last key it looked at when it stopped before the end
/// of the range (`None`: it holds nothing more in the range).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePage {
    pub records: Vec<(String, Record)>,
    pub scanned_to: Option<String>,
}

/// A merged page of the cluster's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// The newest record of each key, tombstones and expired values left
    /// out, in key order.
    pub items: Vec<(String, Record)>,
    /// Where the next page starts (after this key); `None` when done.
    pub next_after: Option<String>,
    /// Owners that answered with an older record of a key, or none: (node, key, newest).
    pub repairs: Vec<(String, String, Record)>,
}

/// A key of the page whose owners did not answer in enough number.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("key {key:?}: {answered} of its owners answered, {required} required")]
pub struct ShortOfQuorum {
    pub key: String,
    pub owners: Vec<String>,
    pub answered: usize,
    pub required: usize,
}

/// How many items and bytes of values a merged page may hold at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBounds {
    pub items: usize,
    pub bytes: usize,
}

/// Merges the pages of the nodes that answered (`node id → page`) into one
/// page of the cluster's keys as of `now_ms` (a value expired by then is
/// left out like a tombstone): see the module's documentation.
pub fn merge_pages<F>(
    pages: &BTreeMap<String, NodePage>,
    owners_of: F,
    required: usize,
    bounds: PageBounds,
    now_ms: u64,
) -> Result<Merged, ShortOfQuorum>
where
    F: Fn(&str) -> Vec<String>,
{
    let horizon = pages.values().filter_map(|p| p.scanned_to.as_deref()).min();
    let mut by_key: BTreeMap<&str, Vec<(&str, &Record)>> = BTreeMap::new();
    for (node, page) in pages {
        for (key, record) in &page.records {
            if horizon.is_none_or(|h| key.as_str() <= h) {
                by_key
                    .entry(key.as_str())
                    .or_default()
                    .push((node.as_str(), record));
            }
        }
    }
    let mut merged = Merged::default();
    let mut bytes = 0usize;
    let mut keys = by_key.into_iter().peekable();
    while let Some((key, held)) = keys.next() {
        let owners = owners_of(key);
        let answered = owners.iter().filter(|o| pages.contains_key(*o)).count();
        if answered < required.min(owners.len()).max(1) {
            return Err(ShortOfQuorum {
                key: key.to_owned(),
                owners,
                answered,
                required,
            });
        }
        let Some(&(_, newest)) = held.iter().max_by(|a, b| a.1.cmp(b.1)) else {
            continue;
        };
        for owner in owners.iter().filter(|o| pages.contains_key(*o)) {
            let theirs = held.iter().find(|(n, _)| n == owner).map(|(_, r)| *r);
            if theirs.is_none_or(|r| r < newest) {
                merged
                    .repairs
                    .push((owner.clone(), key.to_owned(), newest.clone()));
            }
        }
        if let Some(value) = newest.value.as_ref().filter(|_| newest.is_live_at(now_ms)) {
            bytes = bytes.saturating_add(key.len() + value.get().len());
            merged.items.push((key.to_owned(), newest.clone()));
            if merged.items.len() >= bounds.items || bytes >= bounds.bytes {
                let more = keys.peek().is_some() || horizon.is_some();
                merged.next_after = more.then(|| key.to_owned());
                return Ok(merged);
            }
        }
    }
    merged.next_after = horizon.map(str::to_owned);
    Ok(merged)
}

/// A listing request as a client sends it (`GET /kv/?prefix=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub range: KeyRange,
    pub limit: usize,
    pub keys_only: bool,
}

/// Why a listing request was refused (HTTP 400; nothing was read).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ListError {
    #[error("limit must be a whole number from 1 to {max}")]
    BadLimit { max: usize },
    #[error("cursor is not one a listing returned")]
    BadCursor,
    #[error("{name}: {reason}")]
    BadBound { name: &'static str, reason: String },
    #[error("keys_only must be true or false")]
    BadFlag,
}

/// The query parameters that ask for a listing rather than one key.
pub const LIST_PARAMS: [&str; 6] = ["prefix", "start", "end", "cursor", "limit", "keys_only"];

/// Reads a listing's parameters: `prefix`, `start`, `end` (each a valid
/// key: an empty one is refused, as the OpenAPI document says), `cursor` (as a page returned it), `limit` (1 to
/// [`LIST_LIMIT_MAX`], default [`LIST_LIMIT_DEFAULT`]) and `keys_only`.
pub fn parse_list_query(
    params: &BTreeMap<String, String>,
    key_bytes_max: usize,
) -> Result<ListQuery, ListError> {
    let bound = |name: &'static str| -> Result<Option<String>, ListError> {
        match params.get(name).map(String::as_str) {
            None => Ok(None),
            Some(v) => validate_key(v, key_bytes_max)
                .map(|()| Some(v.to_owned()))
                .map_err(|e| ListError::BadBound {
                    name,
                    reason: e.to_string(),
                }),
        }
    };
    let limit = match params.get("limit") {
        None => LIST_LIMIT_DEFAULT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=LIST_LIMIT_MAX).contains(n))
            .ok_or(ListError::BadLimit {
                max: LIST_LIMIT_MAX,
            })?,
    };
    let keys_only = match params.get("keys_only").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ListError::BadFlag),
    };
    let after = match params.get("cursor").map(String::as_str) {
        None => None,
        Some(c) => Some(decode_cursor(c, key_bytes_max).ok_or(ListError::BadCursor)?),
    };
    Ok(ListQuery {
        range: KeyRange {
            prefix: bound("prefix")?,
            start: bound("start")?,
            end: bound("end")?,
            after,
        },
        limit,
        keys_only,
    })
}

/// The cursor of a page that stopped after `key`.
pub fn encode_cursor(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 2);
    for byte in key.bytes() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The key a cursor stands for, if it is one [`encode_cursor`] made of a
/// valid key.
pub fn decode_cursor(cursor: &str, key_bytes_max: usize) -> Option<String> {
    if !cursor.len().is_multiple_of(2) || cursor.len() > key_bytes_max.saturating_mul(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = cursor
        .as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()?;
    let key = String::from_utf8(bytes).ok()?;
    validate_key(&key, key_bytes_max).ok()?;
    Some(key)
}

#[cfg(test)]
mod tests;
