//! Input checks shared by the HTTP API, the peers and the configuration.

use thiserror::Error;

use super::limits::NODE_ID_BYTES_MAX;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("key must not be empty")]
    Empty,
    #[error("key is {len_bytes} bytes, the limit is {max_bytes} bytes")]
    TooLong { len_bytes: usize, max_bytes: usize },
    #[error("key must not contain control characters (found U+{0:04X})")]
    ControlChar(u32),
}

/// A key is non-empty UTF-8 of at most `max_bytes` bytes, without control
/// characters (NUL, newlines, escapes), which break logs and tools.
pub fn validate_key(key: &str, max_bytes: usize) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > max_bytes {
        return Err(KeyError::TooLong {
            len_bytes: key.len(),
            max_bytes,
        });
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(KeyError::ControlChar(u32::from(c)));
    }
    Ok(())
}

/// Why a node id was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("node id must be 1-{NODE_ID_BYTES_MAX} characters of A-Z a-z 0-9 _ -, got {0:?}")]
pub struct NodeIdError(pub String);

/// Node ids appear in versions, Redis key names and URLs: keep them plain.
pub fn validate_node_id(id: &str) -> Result<(), NodeIdError> {
    let ok = !id.is_empty()
        && id.len() <= NODE_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NodeIdError(id.chars().take(80).collect()))
    }
}

/// Depth of nesting of a JSON value (a scalar is depth 0).
pub fn json_depth(value: &serde_json::Value) -> usize {
    // Iterative, so a hostile value cannot overflow our stack here.
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            serde_json::Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            serde_json::Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(validate_key("", 10), Err(KeyError::Empty));
        assert!(validate_key("a/../b %2F ✓ שלום 😀", 100).is_ok());
        assert_eq!(
            validate_key("abc", 2),
            Err(KeyError::TooLong {
                len_bytes: 3,
                max_bytes: 2
            })
        );
        assert_eq!(validate_key("a\0b", 10), Err(KeyError::ControlChar(0)));
        assert_eq!(validate_key("a\nb", 10), Err(KeyError::ControlChar(10)));
        // The limit is in bytes, not characters.
        assert!(validate_key("é", 1).is_err());
    }

    #[test]
    fn node_ids() {
        assert!(validate_node_id("node1").is_ok());
        assert!(validate_node_id("a-b_C9").is_ok());
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("a:b").is_err());
        assert!(validate_node_id("a b").is_err());
        assert!(validate_node_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn depth() {
        let v: serde_json::Value = serde_json::from_str(r#"{"a":[[1]],"b":2}"#).unwrap();
        assert_eq!(json_depth(&v), 3);
        assert_eq!(json_depth(&serde_json::Value::Null), 0);
    }
}
