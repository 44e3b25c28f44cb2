//! Hash summaries for anti-entropy: a two-level Merkle tree (root over
//! [`MERKLE_BUCKETS`] leaves) of the records two nodes should both hold.
//!
//! A record's leaf is fixed by its key (`bucket_of`); a leaf's hash is the
//! wrapping sum of XXH3 hashes of `(key, version)` of its records, so it does
//! not depend on scan order and is cheap to build in one pass. Two nodes
//! compare roots first; only when they differ do they compare leaves, and
//! only the records of differing leaves move. A node that is already
//! identical to a peer therefore moves no record at all.
//!
//! Only records whose preference list holds *both* nodes are summarised:
//! those are the ones the two must agree on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::record::Version;
use super::ring::{Ring, key_position};

/// Leaves of the tree. 1024 keeps a summary under ~20 KB and a leaf of a
/// 10,000-key store at about 10 records.
pub const MERKLE_BUCKETS: usize = 1024;
const BUCKET_SHIFT: u32 = 64 - 10;
const DIGEST_SEED: u64 = 0x6d65_726b_6c65_0001;

/// The leaf a key belongs to: the top 10 bits of its ring position.
pub fn bucket_of(key: &str) -> u16 {
    // The shift leaves 10 bits, so the value always fits in u16.
    (key_position(key) >> BUCKET_SHIFT) as u16
}

/// Hash of one record's identity: key and version (not the value: two
/// records with the same version carry the same value).
pub fn record_digest(key: &str, version: &Version) -> u64 {
    let text = format!("{key}\u{0}{version}");
    xxh3_64_with_seed(text.as_bytes(), DIGEST_SEED)
}

/// Whether both `a` and `b` are among the key's first `n` replicas.
pub fn shared_by(ring: &Ring, n: usize, key: &str, a: &str, b: &str) -> bool {
    let list = ring.preference_list(key, n);
    list.contains(&a) && list.contains(&b)
}

/// One leaf: how many records and the sum of their digests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    pub count: u32,
    pub digest: u64,
}

/// A sparse two-level tree: leaves by bucket, and the root over them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub leaves: BTreeMap<u16, Leaf>,
}

impl Summary {
    pub fn add(&mut self, key: &str, version: &Version) {
        let leaf = self.leaves.entry(bucket_of(key)).or_default();
        leaf.count = leaf.count.saturating_add(1);
        leaf.digest = leaf.digest.wrapping_add(record_digest(key, version));
    }

    /// Records summarised.
    pub fn records(&self) -> u64 {
        self.leaves.values().map(|l| u64::from(l.count)).sum()
    }

    /// The root hash: equal roots mean equal trees (up to hash collisions).
    pub fn root(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.leaves.len() * 14);
        for (bucket, leaf) in &self.leaves {
            bytes.extend_from_slice(&bucket.to_le_bytes());
            bytes.extend_from_slice(&leaf.count.to_le_bytes());
            bytes.extend_from_slice(&leaf.digest.to_le_bytes());
        }
        xxh3_64_with_seed(&bytes, DIGEST_SEED)
    }

    /// Buckets whose leaves differ (present on one side only, or unequal).
    pub fn diff(&self, other: &Summary) -> Vec<u16> {
        if self.root() == other.root() {
            return Vec::new();
        }
        let mut out: Vec<u16> = self
            .leaves
            .iter()
            .filter(|(b, leaf)| other.leaves.get(b) != Some(leaf))
            .map(|(b, _)| *b)
            .chain(
                other
                    .leaves
                    .keys()
                    .filter(|b| !self.leaves.contains_key(b))
                    .copied(),
            )
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hlc::Timestamp;
    use proptest::prelude::*;

    fn v(w: u64) -> Version {
        Version::new(Timestamp::new(w, 0), "n1")
    }

    #[test]
    fn identical_sets_have_equal_roots_in_any_order() {
        let mut a = Summary::default();
        let mut b = Summary::default();
        for i in 0..100 {
            a.add(&format!("k{i}"), &v(i));
        }
        for i in (0..100).rev() {
            b.add(&format!("k{i}"), &v(i));
        }
        assert_eq!(a.root(), b.root());
        assert!(a.diff(&b).is_empty());
        assert_eq!(a.records(), 100);
    }

    #[test]
    fn a_newer_version_changes_exactly_its_bucket() {
        let mut a = Summary::default();
        let mut b = Summary::default();
        for i in 0..50 {
            a.add(&format!("k{i}"), &v(i));
            b.add(&format!("k{i}"), &v(if i == 7 { 999 } else { i }));
        }
        assert_eq!(a.diff(&b), vec![bucket_of("k7")]);
        // A missing record shows up too, from either side.
        let mut c = a.clone();
        c.add("extra", &v(1));
        assert_eq!(a.diff(&c), vec![bucket_of("extra")]);
        assert_eq!(c.diff(&a), vec![bucket_of("extra")]);
        assert_eq!(a.diff(&Summary::default()).len(), a.leaves.len());
    }

    proptest! {
        #[test]
        fn diff_finds_every_differing_key(keys in proptest::collection::btree_set("[a-z]{1,8}", 1..80), changed in proptest::collection::vec(any::<prop::sample::Index>(), 0..5)) {
            let keys: Vec<String> = keys.into_iter().collect();
            let mut a = Summary::default();
            let mut b = Summary::default();
            let changed: Vec<usize> = changed.iter().map(|i| i.index(keys.len())).collect();
            for (i, k) in keys.iter().enumerate() {
                a.add(k, &v(1));
                b.add(k, &v(if changed.contains(&i) { 2 } else { 1 }));
            }
            let diff = a.diff(&b);
            for i in &changed {
                prop_assert!(diff.contains(&bucket_of(&keys[*i])));
            }
            if changed.is_empty() {
                prop_assert!(diff.is_empty());
            }
        }
    }
}
