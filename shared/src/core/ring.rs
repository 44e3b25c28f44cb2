//! Consistent hashing with virtual nodes.
//!
//! Placement must be identical on every node, across restarts and builds, so
//! the hash is fixed: **XXH3-64 with seed [`RING_SEED`]** over the raw UTF-8
//! bytes. A key sits at `xxh3_64_with_seed(key, RING_SEED)`; node `id` owns the
//! tokens `xxh3_64_with_seed("{id}#{i}", RING_SEED)` for `i` in `0..vnodes`.
//! A key's preference list is the first `n` *distinct* nodes met walking the
//! ring clockwise (upwards, wrapping at `u64::MAX`) from the key's position;
//! the first of them is the key's primary.
//!
//! Ties between two tokens at the same position (astronomically rare) are
//! broken by node id, so the order is still total and deterministic.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The fixed seed of the placement hash. Changing it moves every key.
pub const RING_SEED: u64 = 0x6b76_7374_6f72_6531; // "kvstore1"

/// Position of a key on the ring.
pub fn key_position(key: &str) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), RING_SEED)
}

/// Position of virtual node `index` of node `node_id`.
pub fn token_position(node_id: &str, index: usize) -> u64 {
    xxh3_64_with_seed(format!("{node_id}#{index}").as_bytes(), RING_SEED)
}

/// A token on the ring: a position owned by one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Token {
    position: u64,
    node: usize,
}

/// An immutable ring built from a node list.
#[derive(Debug, Clone)]
pub struct Ring {
    nodes: Vec<String>,
    tokens: Vec<Token>,
    vnodes: usize,
}

impl Ring {
    /// Builds a ring. Node ids are sorted and de-duplicated first, so the
    /// ring does not depend on the order the operator listed them in.
    pub fn new<I, S>(nodes: I, vnodes: usize) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        nodes.sort();
        nodes.dedup();
        let vnodes = vnodes.max(1);
        let mut tokens = Vec::with_capacity(nodes.len() * vnodes);
        for (node, id) in nodes.iter().enumerate() {
            for index in 0..vnodes {
                tokens.push(Token {
                    position: token_position(id, index),
                    node,
                });
            }
        }
        // Ties on position are broken by node index, i.e. by sorted node id.
        tokens.sort();
        Ring {
            nodes,
            tokens,
            vnodes,
        }
    }

    /// The distinct node ids on the ring, sorted.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Virtual nodes per node.
    pub fn vnodes(&self) -> usize {
        self.vnodes
    }

    /// Number of distinct nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the ring has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The first `n` distinct nodes clockwise from the key; primary first.
    /// Returns fewer than `n` only when the ring has fewer nodes.
    pub fn preference_list(&self, key: &str, n: usize) -> Vec<&str> {
        self.walk_from(key_position(key))
            .take(n.min(self.nodes.len()))
            .collect()
    }

    /// Every distinct node, in clockwise order from the key. The first `n`
    /// are the preference list; the rest are the fallbacks a sloppy quorum
    /// uses, in the order it should try them.
    pub fn walk(&self, key: &str) -> Vec<&str> {
        self.walk_from(key_position(key)).collect()
    }

    /// The first `n` distinct nodes clockwise from a ring position (the
    /// preference list of every key at that position).
    pub fn preference_list_at(&self, position: u64, n: usize) -> Vec<&str> {
        self.walk_from(position)
            .take(n.min(self.nodes.len()))
            .collect()
    }

    /// Positions of the tokens in `lo..hi` (ascending). Every key position in
    /// `lo..=hi` maps to the same first token unless such a token lies
    /// between: keys up to it map to it, keys after it to the next one.
    pub fn token_positions_in(&self, lo: u64, hi: u64) -> impl Iterator<Item = u64> + '_ {
        let start = self.tokens.partition_point(|t| t.position < lo);
        self.tokens[start..]
            .iter()
            .map(|t| t.position)
            .take_while(move |p| *p < hi)
    }

    fn walk_from(&self, position: u64) -> impl Iterator<Item = &str> {
        let start = self.tokens.partition_point(|t| t.position < position);
        let len = self.tokens.len();
        let mut seen = vec![false; self.nodes.len()];
        // Stops at the last distinct node instead of visiting every token.
        (0..len)
            .map(move |step| self.tokens[(start + step) % len].node)
            .filter(move |&node| !std::mem::replace(&mut seen[node], true))
            .take(self.nodes.len())
            .map(|node| self.nodes[node].as_str())
    }

    /// Share of the ring (fraction of the hash space) each node is primary for,
    /// in the order of [`Ring::nodes`]. Shown in `/cluster/`.
    pub fn ownership(&self) -> Vec<f64> {
        let mut owned = vec![0u128; self.nodes.len()];
        let len = self.tokens.len();
        for (i, token) in self.tokens.iter().enumerate() {
            // Token i owns (previous token, token i].
            let previous = if i == 0 {
                self.tokens[len - 1].position
            } else {
                self.tokens[i - 1].position
            };
            let span = token.position.wrapping_sub(previous);
            owned[token.node] += u128::from(span);
        }
        if len == 1 {
            return vec![1.0];
        }
        let total = 2f64.powi(64);
        owned.iter().map(|&o| o as f64 / total).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn three() -> Ring {
        Ring::new(["node1", "node2", "node3"], 128)
    }

    #[test]
    fn hash_is_pinned() {
        // If this changes, every stored key moves: never change it silently.
        assert_eq!(key_position(""), xxh3_64_with_seed(b"", RING_SEED));
        assert_eq!(key_position("username123"), key_position("username123"));
        assert_ne!(key_position("a"), key_position("b"));
        let ring = three();
        let owners: Vec<&str> = ring.preference_list("username123", 3);
        let again = Ring::new(["node3", "node1", "node2", "node1"], 128);
        assert_eq!(owners, again.preference_list("username123", 3));
    }

    #[test]
    fn preference_list_is_capped_by_cluster_size() {
        let ring = three();
        assert_eq!(ring.preference_list("k", 5).len(), 3);
        assert_eq!(ring.preference_list("k", 1).len(), 1);
        assert!(
            Ring::new(Vec::<String>::new(), 8)
                .preference_list("k", 3)
                .is_empty()
        );
    }

    #[test]
    fn ownership_sums_to_one_and_is_balanced() {
        let ring = three();
        let shares = ring.ownership();
        let sum: f64 = shares.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9, "sum {sum}");
        for share in shares {
            assert!(share > 0.2 && share < 0.47, "share {share}");
        }
    }

    proptest! {
        #[test]
        fn preference_list_has_distinct_nodes(key in ".{0,40}", n in 1usize..6, size in 1usize..8) {
            let nodes: Vec<String> = (0..size).map(|i| format!("n{i}")).collect();
            let ring = Ring::new(nodes, 16);
            let list = ring.preference_list(&key, n);
            prop_assert_eq!(list.len(), n.min(size));
            let mut sorted = list.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), list.len());
            // The walk starts with the preference list.
            prop_assert_eq!(&ring.walk(&key)[..list.len()], &list[..]);
        }

        #[test]
        fn adding_a_node_moves_little(keys in proptest::collection::vec(".{1,20}", 200..400)) {
            let before = Ring::new(["a", "b", "c", "d"], 64);
            let after = Ring::new(["a", "b", "c", "d", "e"], 64);
            let moved = keys
                .iter()
                .filter(|k| {
                    let old = before.preference_list(k, 1)[0];
                    let new = after.preference_list(k, 1)[0];
                    // A key may only move to the new node, never between old ones.
                    if old != new {
                        assert_eq!(new, "e");
                    }
                    old != new
                })
                .count();
            // Ideal is 1/5 of the keys; allow generous slack for small samples.
            prop_assert!(moved * 100 <= keys.len() * 40, "moved {} of {}", moved, keys.len());
        }
    }
}
