//! Hash trees for anti-entropy, kept current on every write.
//!
//! **Leaves.** A record's leaf is fixed by its key: the top [`LEAF_BITS`] bits
//! of its ring position ([`leaf_of`]), so [`LEAVES`] leaves partition the
//! ring into equal arcs. A leaf holds how many records it has and the sum,
//! modulo 2^52, of their digests ([`record_digest`]: the first 52 bits of
//! SHA-1 over `key \0 version`). A sum does not depend on order, and a
//! record replaced by a newer one changes it by `new − old`, so the store
//! keeps every leaf current in the same atomic step as the write (the node
//! passes each record's digest to the Redis apply script, which computes the
//! replaced record's with `redis.sha1hex`; 52 bits keep the Lua arithmetic
//! exact in doubles). Building a tree is then a read of at
//! most [`LEAVES`] small entries, never a scan of the records.
//!
//! **Levels.** [`MIDS`] middle nodes each cover 256 consecutive leaves; a
//! middle node's hash is XXH3 over its leaves' `(index, count, digest)`, so
//! a change in any leaf changes it (no cancellation between leaves). Two
//! nodes compare middle nodes first (a few KB), then the leaves under the
//! middle nodes that differ, and move only the records of leaves that differ.
//!
//! **What two nodes compare.** Only records whose preference list holds both
//! nodes. [`leaf_sharing`] says, from the ring alone, whether a leaf's whole
//! arc is replicated by both ([`Sharing::Whole`]: the stored leaf is used as
//! it is), by not both ([`Sharing::None`]: left out), or partly (a ring
//! token falls inside the arc: [`Sharing::Part`], the shared records of that
//! leaf are digested on the fly). With N equal to the cluster size every
//! leaf is whole; otherwise at most one leaf per ring token is partial.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha1_smol::Sha1;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::record::Version;
use super::ring::key_position;
use super::topology::Placement;

/// Bits of the ring position that choose a leaf.
pub const LEAF_BITS: u32 = 16;
/// Leaves of the tree.
pub const LEAVES: usize = 1 << LEAF_BITS;
/// Middle nodes of the tree, each over [`LEAVES_PER_MID`] leaves.
pub const MIDS: usize = 256;
pub const LEAVES_PER_MID: usize = LEAVES / MIDS;
/// Digests are 52-bit numbers, summed modulo 2^52 (exact in a double).
pub const DIGEST_BITS: u32 = 52;
pub const DIGEST_MODULUS: u64 = 1 << DIGEST_BITS;
const MID_SEED: u64 = 0x6d65_726b_6c65_0002;

/// The leaf a key belongs to: the top [`LEAF_BITS`] bits of its ring position.
pub fn leaf_of(key: &str) -> u16 {
    // The shift leaves LEAF_BITS (16) bits, so the value always fits in u16.
    (key_position(key) >> (64 - LEAF_BITS)) as u16
}

/// The first ring position of a leaf's arc.
pub fn leaf_start(leaf: u16) -> u64 {
    u64::from(leaf) << (64 - LEAF_BITS)
}

/// The last ring position of a leaf's arc.
pub fn leaf_end(leaf: u16) -> u64 {
    leaf_start(leaf) | (u64::MAX >> LEAF_BITS)
}

/// The middle node above a leaf.
pub fn mid_of(leaf: u16) -> u8 {
    // 16-bit leaf, top 8 bits: always fits.
    (leaf >> 8) as u8
}

/// A leaf's name in storage: four lowercase hex digits.
pub fn leaf_field(leaf: u16) -> String {
    format!("{leaf:04x}")
}

/// The leaf a storage name stands for.
pub fn parse_leaf_field(field: &str) -> Option<u16> {
    (field.len() == 4)
        .then(|| u16::from_str_radix(field, 16).ok())
        .flatten()
}

/// Digest of one record's identity: the first 52 bits of SHA-1 over
/// `key \0 version` (not the value: two records with the same version carry
/// the same value). The Redis apply script computes exactly this.
pub fn record_digest(key: &str, version: &Version) -> u64 {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"\0");
    sha.update(version.to_string().as_bytes());
    let bytes = sha.digest().bytes();
    let mut top = [0u8; 8];
    top.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(top) >> (64 - DIGEST_BITS)
}

/// One leaf: how many records and the sum of their digests modulo 2^52.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    pub count: u64,
    pub digest: u64,
}

impl Leaf {
    pub fn add(&mut self, digest: u64) {
        self.count = self.count.saturating_add(1);
        self.digest = (self.digest + digest % DIGEST_MODULUS) % DIGEST_MODULUS;
    }

    pub fn remove(&mut self, digest: u64) {
        self.count = self.count.saturating_sub(1);
        self.digest = (self.digest + DIGEST_MODULUS - digest % DIGEST_MODULUS) % DIGEST_MODULUS;
    }

    /// The storage form `count:digest` (what the apply script writes).
    pub fn encode(&self) -> String {
        format!("{}:{}", self.count, self.digest)
    }

    pub fn parse(text: &str) -> Option<Leaf> {
        let (count, digest) = text.split_once(':')?;
        let leaf = Leaf {
            count: count.parse().ok()?,
            digest: digest.parse().ok()?,
        };
        (leaf.digest < DIGEST_MODULUS).then_some(leaf)
    }
}

/// One middle node: records under it and the hash of its leaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mid {
    pub count: u64,
    pub hash: u64,
}

/// A sparse tree: the non-empty leaves of one view of the records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    leaves: BTreeMap<u16, Leaf>,
}

impl Tree {
    /// A tree of the given leaves (empty ones are left out).
    pub fn from_leaves(leaves: impl IntoIterator<Item = (u16, Leaf)>) -> Tree {
        Tree {
            leaves: leaves.into_iter().filter(|(_, l)| l.count > 0).collect(),
        }
    }

    /// Adds one record (building a tree from records, e.g. a partial leaf).
    pub fn add(&mut self, key: &str, version: &Version) {
        self.leaves
            .entry(leaf_of(key))
            .or_default()
            .add(record_digest(key, version));
    }

    pub fn leaves(&self) -> &BTreeMap<u16, Leaf> {
        &self.leaves
    }

    /// Records in the tree.
    pub fn records(&self) -> u64 {
        self.leaves.values().map(|l| l.count).sum()
    }

    /// The middle nodes (non-empty ones only).
    pub fn mids(&self) -> BTreeMap<u8, Mid> {
        let mut out = BTreeMap::new();
        let mut current: Option<(u8, u64, Vec<u8>)> = None;
        let finish = |out: &mut BTreeMap<u8, Mid>, (mid, count, bytes): (u8, u64, Vec<u8>)| {
            out.insert(
                mid,
                Mid {
                    count,
                    hash: xxh3_64_with_seed(&bytes, MID_SEED),
                },
            );
        };
        for (leaf, l) in &self.leaves {
            let mid = mid_of(*leaf);
            if current.as_ref().is_some_and(|(m, _, _)| *m != mid)
                && let Some(done) = current.take()
            {
                finish(&mut out, done);
            }
            let entry = current.get_or_insert_with(|| (mid, 0, Vec::new()));
            entry.1 += l.count;
            entry.2.extend_from_slice(&leaf.to_le_bytes());
            entry.2.extend_from_slice(&l.count.to_le_bytes());
            entry.2.extend_from_slice(&l.digest.to_le_bytes());
        }
        if let Some(done) = current {
            finish(&mut out, done);
        }
        out
    }

    /// The leaves under the given middle nodes.
    pub fn leaves_under(&self, mids: &[u8]) -> BTreeMap<u16, Leaf> {
        let mut out = BTreeMap::new();
        for &mid in mids {
            let first = u16::from(mid) << 8;
            let last = first | 0xff;
            out.extend(self.leaves.range(first..=last).map(|(k, v)| (*k, *v)));
        }
        out
    }
}

/// Keys whose entries differ between two sparse maps (present on one side
/// only, or unequal), ascending.
pub fn differing<K: Ord + Copy, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> Vec<K> {
    let mut out: Vec<K> = a
        .iter()
        .filter(|(k, v)| b.get(k) != Some(v))
        .map(|(k, _)| *k)
        .chain(b.keys().filter(|k| !a.contains_key(k)).copied())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// How much of one leaf's arc two nodes both replicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Every key of the arc has both nodes in its preference list.
    Whole,
    /// Some keys do, some do not (a ring token falls inside the arc).
    Part,
    /// No key of the arc does.
    None,
}

/// Whether both `a` and `b` should hold the key (see [`Placement::holders`]).
pub fn shared_by(placement: &Placement, key: &str, a: &str, b: &str) -> bool {
    let holders = placement.holders(key);
    holders.contains(&a) && holders.contains(&b)
}

/// How much of `leaf`'s arc nodes `a` and `b` both hold (see the module docs).
pub fn leaf_sharing(placement: &Placement, leaf: u16, a: &str, b: &str) -> Sharing {
    let (lo, hi) = (leaf_start(leaf), leaf_end(leaf));
    // One representative position per stretch of the arc that maps to the
    // same first tokens: the arc's start, and the position after each token
    // inside it.
    let starts = std::iter::once(lo).chain(
        placement
            .token_positions_in(lo, hi)
            .into_iter()
            .map(|t| t + 1),
    );
    let (mut some, mut all) = (false, true);
    for position in starts {
        let holders = placement.holders_at(position);
        if holders.contains(&a) && holders.contains(&b) {
            some = true;
        } else {
            all = false;
        }
    }
    match (some, all) {
        (true, true) => Sharing::Whole,
        (true, false) => Sharing::Part,
        _ => Sharing::None,
    }
}

/// [`leaf_sharing`] of every leaf, indexed by leaf.
pub fn sharing_table(placement: &Placement, a: &str, b: &str) -> Vec<Sharing> {
    (0..LEAVES)
        .map(|leaf| leaf_sharing(placement, leaf as u16, a, b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hlc::Timestamp;
    use crate::core::topology::Topology;
    use proptest::prelude::*;

    fn v(w: u64) -> Version {
        Version::new(Timestamp::new(w, 0), "n1")
    }

    fn tree(records: &[(String, Version)]) -> Tree {
        let mut t = Tree::default();
        for (k, version) in records {
            t.add(k, version);
        }
        t
    }

    #[test]
    fn digest_is_pinned() {
        // The Redis apply script computes the same number with
        // redis.sha1hex (the first 13 hex digits of SHA-1): if this
        // changes, stored trees no longer match.
        let d = record_digest("k", &v(1));
        assert!(d < DIGEST_MODULUS);
        let mut sha = Sha1::new();
        sha.update(b"k\x001:0:n1");
        let hex = sha.digest().to_string();
        assert_eq!(d, u64::from_str_radix(&hex[..13], 16).unwrap());
    }

    #[test]
    fn leaf_arithmetic_is_modular_and_reversible() {
        let mut l = Leaf::default();
        let big = DIGEST_MODULUS - 1;
        l.add(big);
        l.add(5);
        assert_eq!(
            l,
            Leaf {
                count: 2,
                digest: 4
            }
        );
        l.remove(big);
        assert_eq!(
            l,
            Leaf {
                count: 1,
                digest: 5
            }
        );
        assert_eq!(Leaf::parse(&l.encode()), Some(l));
        assert_eq!(Leaf::parse("1:x"), None);
        assert_eq!(Leaf::parse(&format!("1:{DIGEST_MODULUS}")), None);
        assert_eq!(parse_leaf_field(&leaf_field(0xab0c)), Some(0xab0c));
        assert_eq!(parse_leaf_field("abc"), None);
    }

    #[test]
    fn identical_sets_have_equal_trees_in_any_order() {
        let records: Vec<(String, Version)> = (0..300).map(|i| (format!("k{i}"), v(i))).collect();
        let a = tree(&records);
        let mut reversed = records.clone();
        reversed.reverse();
        let b = tree(&reversed);
        assert_eq!(a, b);
        assert!(differing(&a.mids(), &b.mids()).is_empty());
        assert_eq!(a.records(), 300);
        assert_eq!(a.mids().values().map(|m| m.count).sum::<u64>(), 300);
    }

    #[test]
    fn a_newer_version_changes_exactly_its_leaf_and_mid() {
        let records: Vec<(String, Version)> = (0..50).map(|i| (format!("k{i}"), v(i))).collect();
        let a = tree(&records);
        let mut changed = records.clone();
        changed[7].1 = v(999);
        let b = tree(&changed);
        let leaf = leaf_of("k7");
        assert_eq!(differing(&a.mids(), &b.mids()), vec![mid_of(leaf)]);
        let under = [mid_of(leaf)];
        assert_eq!(
            differing(&a.leaves_under(&under), &b.leaves_under(&under)),
            vec![leaf]
        );
        // A missing record shows up too, from either side.
        let mut c = a.clone();
        c.add("extra", &v(1));
        assert_eq!(
            differing(&a.mids(), &c.mids()),
            vec![mid_of(leaf_of("extra"))]
        );
        assert_eq!(
            differing(&c.mids(), &a.mids()),
            vec![mid_of(leaf_of("extra"))]
        );
    }

    fn placement(ids: &[&str], vnodes: usize) -> Placement {
        let nodes = ids
            .iter()
            .map(|id| ((*id).to_owned(), format!("http://{id}:1")))
            .collect();
        Placement::new(&Topology::seed(nodes), vnodes, 3)
    }

    #[test]
    fn sharing_follows_the_ring() {
        let three = placement(&["a", "b", "c"], 16);
        // N = cluster size: every leaf is wholly shared by any two nodes.
        assert!(
            sharing_table(&three, "a", "b")
                .iter()
                .all(|s| *s == Sharing::Whole)
        );
        let five = placement(&["a", "b", "c", "d", "e"], 16);
        let table = sharing_table(&five, "a", "b");
        assert!(table.contains(&Sharing::Whole));
        assert!(table.contains(&Sharing::None));
        // At most one partial leaf per token.
        let part = table.iter().filter(|s| **s == Sharing::Part).count();
        assert!(part > 0 && part <= 5 * 16, "{part}");
    }

    proptest! {
        #[test]
        fn sharing_agrees_with_every_key(keys in proptest::collection::vec(".{1,12}", 50..150)) {
            let stable = placement(&["a", "b", "c", "d", "e"], 8);
            // During a join, both rings decide: a leaf is whole only when
            // every key of it has both nodes among its holders in either.
            let nodes = ["a", "b", "c", "d", "e"]
                .iter()
                .map(|id| ((*id).to_owned(), format!("http://{id}:1")))
                .collect();
            let joining = Topology::seed(nodes).change(Some(("f", "http://f:1")), None).unwrap();
            let moving = Placement::new(&joining, 8, 3);
            for (key, p, b) in keys.iter().flat_map(|k| [(k, &stable, "c"), (k, &moving, "f")]) {
                let leaf = leaf_of(key);
                let shared = shared_by(p, key, "a", b);
                match leaf_sharing(p, leaf, "a", b) {
                    Sharing::Whole => prop_assert!(shared, "{} in a whole leaf", key),
                    Sharing::None => prop_assert!(!shared, "{} in an unshared leaf", key),
                    Sharing::Part => {}
                }
            }
        }

        #[test]
        fn diff_finds_every_differing_leaf(keys in proptest::collection::btree_set("[a-z]{1,8}", 1..80), changed in proptest::collection::vec(any::<prop::sample::Index>(), 0..5)) {
            let keys: Vec<String> = keys.into_iter().collect();
            let changed: Vec<usize> = changed.iter().map(|i| i.index(keys.len())).collect();
            let a = tree(&keys.iter().map(|k| (k.clone(), v(1))).collect::<Vec<_>>());
            let b = tree(&keys.iter().enumerate().map(|(i, k)| (k.clone(), v(if changed.contains(&i) { 2 } else { 1 }))).collect::<Vec<_>>());
            let mids = differing(&a.mids(), &b.mids());
            let leaves = differing(&a.leaves_under(&mids), &b.leaves_under(&mids));
            for i in &changed {
                prop_assert!(leaves.contains(&leaf_of(&keys[*i])));
            }
            if changed.is_empty() {
                prop_assert!(mids.is_empty());
            }
        }
    }
}
