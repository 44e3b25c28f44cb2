//! Cluster membership as data: which nodes own the ring, at which epoch, and
//! where a membership change stands; and [`Placement`], the replica sets
//! every operation derives from it.
//!
//! A [`Topology`] is a value with an epoch. Every node keeps the newest one it
//! has seen (in Redis, so it survives restarts) and every internal call
//! carries its epoch: a node that hears of a newer topology adopts it, and a
//! call stamped with an older epoch is refused with the newer topology, so
//! the caller catches up instead of placing keys by a ring it no longer
//! shares. Of two topologies the one with the higher [`Topology::rank`]
//! wins: the epoch, then (equal epochs with different contents, which only
//! a misconfiguration makes) a digest of the contents, so every node picks
//! the same one.
//!
//! A change (a node joins or leaves) is not one step but three epochs, so
//! that no acknowledged write is ever missed by a read, whichever epoch the
//! coordinating and reading nodes are at (they differ by at most one, since
//! the next epoch is issued only once every node has taken the previous):
//!
//! | phase      | writes go to            | reads ask        |
//! |------------|-------------------------|------------------|
//! | `stable`   | current owners          | current owners   |
//! | `moving`   | current ∪ next owners   | current owners   |
//! | `switched` | current ∪ next owners   | next owners      |
//! | `stable`   | next owners (now current) | the same       |
//!
//! During `moving` the new owners pull what they gain (anti-entropy over
//! [`Placement::holders`]); `switched` is issued only after they have. A
//! write during a change needs W acknowledgements among the current owners
//! *and* W among the next ones ([`Placement::write_set`]), so a quorum read
//! on either side meets it. Old owners drop what they no longer hold only
//! after the final `stable` epoch is taken by every node.
//!
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use crate::core::limits::CLUSTER_NODES_MAX;
use crate::core::quorum::Consistency;
use crate::core::ring::Ring;

/// Where a membership change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// No change: `next` is empty.
    Stable,
    /// Writes go to both owner sets, reads to the current one; the next
    /// owners pull their share.
    Moving,
    /// Writes still go to both, reads to the next owners.
    Switched,
}

/// A node's part in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Owns keys now and after the change in progress (if any).
    Member,
    /// Gains keys in the change in progress; holds no data of its own before.
    Joining,
    /// Owns keys now but not after the change in progress.
    Leaving,
}

/// The cluster's membership at one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub epoch: u64,
    /// Every node of `current` and `next`: id → base URL.
    pub nodes: BTreeMap<String, String>,
    /// The owners of the ring now.
    pub current: BTreeSet<String>,
    /// The owners once the change in progress completes (`None`: stable).
    pub next: Option<BTreeSet<String>>,
    pub phase: Phase,
}

/// One member as `GET /cluster/members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    pub id: String,
    pub url: String,
    pub state: MemberState,
}

/// Why a membership change cannot start.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChangeError {
    #[error("a membership change is already in progress (epoch {epoch}, phase {phase:?})")]
    InProgress { epoch: u64, phase: Phase },
    #[error("node {0:?} is already a member")]
    AlreadyMember(String),
    #[error("node {0:?} is not a member")]
    NotMember(String),
    #[error("the URL {url:?} is already node {owner:?}'s")]
    UrlTaken { url: String, owner: String },
    #[error("the last member cannot leave")]
    LastMember,
    #[error("a cluster has at most {CLUSTER_NODES_MAX} nodes")]
    TooMany,
    #[error("no membership change is in progress")]
    NothingToResume,
}

impl Topology {
    /// The topology every node of a new cluster starts from, given the same
    /// `KV_PEERS`: epoch 1, every listed node a member.
    pub fn seed(nodes: BTreeMap<String, String>) -> Self {
        Topology {
            epoch: 1,
            current: nodes.keys().cloned().collect(),
            nodes,
            next: None,
            phase: Phase::Stable,
        }
    }

    /// What a node started to join a running cluster knows: the seeds'
    /// URLs, no owner, epoch 0 (any real topology supersedes it).
    pub fn joining(seeds: BTreeMap<String, String>) -> Self {
        Topology {
            epoch: 0,
            nodes: seeds,
            current: BTreeSet::new(),
            next: None,
            phase: Phase::Stable,
        }
    }

    /// A digest of the contents (not the epoch), to order equal epochs.
    pub fn digest(&self) -> u64 {
        // BTreeMap/BTreeSet serialise in order: the same contents give the
        // same bytes on every node.
        let bytes = serde_json::to_vec(&(&self.nodes, &self.current, &self.next, self.phase))
            .unwrap_or_default();
        xxh3_64(&bytes)
    }

    /// The order in which topologies supersede one another.
    pub fn rank(&self) -> (u64, u64) {
        (self.epoch, self.digest())
    }

    /// Whether `self` should replace `other`.
    pub fn supersedes(&self, other: &Topology) -> bool {
        self.rank() > other.rank()
    }

    pub fn is_stable(&self) -> bool {
        self.phase == Phase::Stable
    }

    /// The node's part, or `None` when it is not in the topology.
    pub fn state_of(&self, id: &str) -> Option<MemberState> {
        let now = self.current.contains(id);
        match &self.next {
            None => now.then_some(MemberState::Member),
            Some(next) => match (now, next.contains(id)) {
                (true, true) => Some(MemberState::Member),
                (true, false) => Some(MemberState::Leaving),
                (false, true) => Some(MemberState::Joining),
                (false, false) => None,
            },
        }
    }

    /// Whether the node owns or is about to own keys (it may coordinate).
    pub fn is_member(&self, id: &str) -> bool {
        self.state_of(id).is_some()
    }

    /// Every node of the topology with its part, by id.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.nodes
            .iter()
            .filter_map(|(id, url)| {
                self.state_of(id).map(|state| MemberInfo {
                    id: id.clone(),
                    url: url.clone(),
                    state,
                })
            })
            .collect()
    }

    /// The nodes in `state`, with their URLs.
    pub fn nodes_in(&self, state: MemberState) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .filter(|(id, _)| self.state_of(id) == Some(state))
            .map(|(id, url)| (id.clone(), url.clone()))
            .collect()
    }

    /// Every node but `me` that takes part (owners now or next).
    pub fn peers_of(&self, me: &str) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|id| *id != me && self.is_member(id))
            .cloned()
            .collect()
    }

    /// The nodes that gain keys in the change in progress (they pull).
    pub fn gaining(&self) -> Vec<String> {
        self.next.iter().flatten().cloned().collect()
    }

    /// Starts a change: `join` adds a node (id, URL), `leave` removes one.
    /// Only from a stable topology; the result is `moving` at the next epoch.
    pub fn change(
        &self,
        join: Option<(&str, &str)>,
        leave: Option<&str>,
    ) -> Result<Topology, ChangeError> {
        if !self.is_stable() {
            return Err(ChangeError::InProgress {
                epoch: self.epoch,
                phase: self.phase,
            });
        }
        let mut next = self.current.clone();
        let mut nodes = self.nodes.clone();
        if let Some((id, url)) = join {
            if self.current.contains(id) {
                return Err(ChangeError::AlreadyMember(id.to_owned()));
            }
            if let Some((owner, _)) = self
                .nodes
                .iter()
                .find(|(other, u)| u.as_str() == url && other.as_str() != id)
            {
                return Err(ChangeError::UrlTaken {
                    url: url.to_owned(),
                    owner: owner.clone(),
                });
            }
            if next.len() >= CLUSTER_NODES_MAX {
                return Err(ChangeError::TooMany);
            }
            next.insert(id.to_owned());
            nodes.insert(id.to_owned(), url.to_owned());
        }
        if let Some(id) = leave {
            if !next.remove(id) {
                return Err(ChangeError::NotMember(id.to_owned()));
            }
            if next.is_empty() {
                return Err(ChangeError::LastMember);
            }
        }
        // Nodes known only as seeds are dropped.
        nodes.retain(|id, _| self.current.contains(id) || next.contains(id));
        Ok(Topology {
            epoch: self.epoch + 1,
            nodes,
            current: self.current.clone(),
            next: Some(next),
            phase: Phase::Moving,
        })
    }

    /// The node that resumes a change in progress no node drives: the
    /// first, by id, of the nodes that own keys after it and are `up`
    /// (this node's view). Every node computes the same one from the same
    /// topology and health, so, most of the time, one node resumes. Two
    /// that do are safe too (the steps are deterministic), only wasteful.
    /// `None` when stable or when no such node is up.
    pub fn resumer(&self, up: impl Fn(&str) -> bool) -> Option<&str> {
        self.next
            .as_ref()?
            .iter()
            .map(String::as_str)
            .find(|id| up(id))
    }

    /// The next step of the change in progress (`moving` → `switched` →
    /// `stable`), at the next epoch; `None` when stable.
    pub fn advance(&self) -> Option<Topology> {
        let next = self.next.clone()?;
        Some(match self.phase {
            Phase::Stable => return None,
            Phase::Moving => Topology {
                epoch: self.epoch + 1,
                phase: Phase::Switched,
                ..self.clone()
            },
            Phase::Switched => {
                let mut nodes = self.nodes.clone();
                nodes.retain(|id, _| next.contains(id));
                Topology {
                    epoch: self.epoch + 1,
                    nodes,
                    current: next,
                    next: None,
                    phase: Phase::Stable,
                }
            }
        })
    }
}

/// Replica sets derived from a [`Topology`]: one ring for reads, and during
/// a change the other owner set's ring too.
#[derive(Debug, Clone)]
pub struct Placement {
    read: Ring,
    other: Option<Ring>,
    n: usize,
}

/// Where a write goes and how many must acknowledge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSet {
    /// The read owners first (primary first), then the other set's extras.
    pub replicas: Vec<String>,
    /// Nodes beyond `replicas` in ring order: a sloppy quorum's fallbacks.
    pub fallbacks: Vec<String>,
    pub required: usize,
}

impl Placement {
    /// `n` is the configured replication factor (each ring caps it at its size).
    pub fn new(topology: &Topology, vnodes: usize, n: usize) -> Self {
        let current = Ring::new(topology.current.iter().cloned(), vnodes);
        let next = topology
            .next
            .as_ref()
            .map(|next| Ring::new(next.iter().cloned(), vnodes));
        let (read, other) = match (topology.phase, next) {
            (Phase::Switched, Some(next)) => (next, Some(current)),
            (_, next) => (current, next),
        };
        Placement {
            read,
            other,
            n: n.max(1),
        }
    }

    /// The ring reads are placed by.
    pub fn ring(&self) -> &Ring {
        &self.read
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Whether a change is in progress (two owner sets).
    pub fn is_changing(&self) -> bool {
        self.other.is_some()
    }

    /// The replicas a read asks: the read ring's first N, primary first.
    pub fn read_replicas(&self, key: &str) -> Vec<&str> {
        self.read.preference_list(key, self.n)
    }

    /// Every node that should hold `key`: the read owners, then (during a
    /// change) the other set's owners not among them.
    pub fn holders(&self, key: &str) -> Vec<&str> {
        let mut holders = self.read.preference_list(key, self.n);
        if let Some(other) = &self.other {
            for node in other.preference_list(key, self.n) {
                if !holders.contains(&node) {
                    holders.push(node);
                }
            }
        }
        holders
    }

    /// [`Placement::holders`] of every key at a ring position.
    pub fn holders_at(&self, position: u64) -> Vec<&str> {
        let mut holders = self.read.preference_list_at(position, self.n);
        if let Some(other) = &self.other {
            for node in other.preference_list_at(position, self.n) {
                if !holders.contains(&node) {
                    holders.push(node);
                }
            }
        }
        holders
    }

    /// Token positions of either ring in `lo..hi`, ascending: between two of
    /// them every position has the same holders.
    pub fn token_positions_in(&self, lo: u64, hi: u64) -> Vec<u64> {
        let mut positions: Vec<u64> = self.read.token_positions_in(lo, hi).collect();
        if let Some(other) = &self.other {
            positions.extend(other.token_positions_in(lo, hi));
            positions.sort_unstable();
            positions.dedup();
        }
        positions
    }

    /// Where a write of `key` at `consistency` goes. During a change the
    /// write needs W of the read owners A *and* W of the other owners B:
    /// `required` = max(W(|A|) + |B∖A|, W(|B|) + |A∖B|) of A ∪ B. At most
    /// |B∖A| acknowledgements come from outside A, so at least W(|A|) come
    /// from A; likewise for B.
    pub fn write_set(&self, key: &str, consistency: Consistency) -> WriteSet {
        let a = self.read.preference_list(key, self.n);
        let mut required = consistency.required(a.len());
        let mut replicas: Vec<String> = a.iter().map(|s| (*s).to_owned()).collect();
        if let Some(other) = &self.other {
            let b = other.preference_list(key, self.n);
            let only_b = b.iter().filter(|x| !a.contains(x)).count();
            let only_a = a.iter().filter(|x| !b.contains(x)).count();
            required = (required + only_b).max(consistency.required(b.len()) + only_a);
            for node in b {
                if !a.contains(&node) {
                    replicas.push(node.to_owned());
                }
            }
        }
        let mut fallbacks: Vec<String> = Vec::new();
        let walks = std::iter::once(&self.read).chain(self.other.as_ref());
        for ring in walks {
            for node in ring.walk(key) {
                if !replicas.iter().any(|r| r == node) && !fallbacks.iter().any(|f| f == node) {
                    fallbacks.push(node.to_owned());
                }
            }
        }
        WriteSet {
            required: required.min(replicas.len()),
            replicas,
            fallbacks,
        }
    }

    /// Every node of either ring, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes: BTreeSet<String> = self.read.nodes().iter().cloned().collect();
        if let Some(other) = &self.other {
            nodes.extend(other.nodes().iter().cloned());
        }
        nodes.into_iter().collect()
    }
}

/// Share of the hash space (0 to 1) each node holds in the change's next
/// owner set but not in the current one: what it must pull. Empty when
/// the topology is stable.
pub fn gained_shares(topology: &Topology, vnodes: usize, n: usize) -> BTreeMap<String, f64> {
    let mut gained = BTreeMap::new();
    let Some(next) = &topology.next else {
        return gained;
    };
    let current = Ring::new(topology.current.iter().cloned(), vnodes);
    let next = Ring::new(next.iter().cloned(), vnodes);
    let mut cuts: Vec<u64> = current
        .token_positions_in(0, u64::MAX)
        .chain(next.token_positions_in(0, u64::MAX))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let space = 2f64.powi(64);
    for (i, &cut) in cuts.iter().enumerate() {
        // Keys in (previous cut, cut] meet the same first tokens.
        let previous = if i == 0 {
            cuts[cuts.len() - 1]
        } else {
            cuts[i - 1]
        };
        let span = match cut.wrapping_sub(previous) {
            0 => space,
            span => span as f64,
        };
        let before = current.preference_list_at(cut, n);
        for node in next.preference_list_at(cut, n) {
            if !before.contains(&node) {
                *gained.entry(node.to_owned()).or_insert(0.0) += span / space;
            }
        }
    }
    gained
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn urls(ids: &[&str]) -> BTreeMap<String, String> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| ((*id).to_owned(), format!("http://127.0.0.1:{}", 8001 + i)))
            .collect()
    }

    #[test]
    fn a_join_takes_three_epochs_and_ends_stable() {
        let t1 = Topology::seed(urls(&["a", "b", "c"]));
        let t2 = t1
            .change(Some(("d", "http://127.0.0.1:8004")), None)
            .unwrap();
        assert_eq!((t2.epoch, t2.phase), (2, Phase::Moving));
        assert_eq!(t2.state_of("d"), Some(MemberState::Joining));
        assert_eq!(t2.state_of("a"), Some(MemberState::Member));
        assert!(matches!(
            t2.change(None, Some("a")),
            Err(ChangeError::InProgress { .. })
        ));
        let t3 = t2.advance().unwrap();
        assert_eq!((t3.epoch, t3.phase), (3, Phase::Switched));
        let t4 = t3.advance().unwrap();
        assert_eq!((t4.epoch, t4.phase), (4, Phase::Stable));
        assert_eq!(t4.current.len(), 4);
        assert_eq!(t4.state_of("d"), Some(MemberState::Member));
        assert!(t4.advance().is_none());
        assert!(t4.supersedes(&t3) && t3.supersedes(&t2) && t2.supersedes(&t1));
        assert_eq!(
            t2.nodes_in(MemberState::Joining),
            vec![("d".to_owned(), "http://127.0.0.1:8004".to_owned())]
        );
        assert!(t2.nodes_in(MemberState::Leaving).is_empty());
    }

    #[test]
    fn a_leave_drops_the_node_at_the_end() {
        let t1 = Topology::seed(urls(&["a", "b", "c"]));
        let t2 = t1.change(None, Some("c")).unwrap();
        assert_eq!(t2.state_of("c"), Some(MemberState::Leaving));
        let end = t2.advance().and_then(|t| t.advance()).unwrap();
        assert_eq!(end.state_of("c"), None);
        assert!(!end.nodes.contains_key("c"));
        assert_eq!(end.peers_of("a"), vec!["b".to_owned()]);
    }

    #[test]
    fn bad_changes_are_refused() {
        let t1 = Topology::seed(urls(&["a"]));
        assert_eq!(
            t1.change(Some(("a", "http://x:1")), None),
            Err(ChangeError::AlreadyMember("a".into()))
        );
        assert_eq!(
            t1.change(None, Some("z")),
            Err(ChangeError::NotMember("z".into()))
        );
        assert_eq!(t1.change(None, Some("a")), Err(ChangeError::LastMember));
        assert!(matches!(
            t1.change(Some(("b", "http://127.0.0.1:8001")), None),
            Err(ChangeError::UrlTaken { .. })
        ));
    }

    #[test]
    fn equal_epochs_resolve_the_same_way_everywhere() {
        let a = Topology::seed(urls(&["a", "b", "c"]));
        let b = Topology::seed(urls(&["a", "b", "c", "d"]));
        assert_eq!(a.epoch, b.epoch);
        assert_ne!(a.supersedes(&b), b.supersedes(&a));
        assert!(!a.supersedes(&a.clone()));
        assert!(a.supersedes(&Topology::joining(urls(&["a"]))));
    }

    #[test]
    fn a_joining_node_gains_about_its_share() {
        let t = Topology::seed(urls(&["a", "b", "c", "d"]));
        let join = t
            .change(Some(("e", "http://127.0.0.1:8005")), None)
            .unwrap();
        let gained = gained_shares(&join, 128, 3);
        // With N = 3 of 5 nodes, e holds about 3/5 of the keys afterwards
        // (128 tokens per node leave some spread), all new to it.
        let e = gained["e"];
        assert!((0.45..0.75).contains(&e), "{e}");
        // Nobody else gains: a join only moves keys to the new node.
        assert_eq!(gained.len(), 1, "{gained:?}");
        assert!(gained_shares(&t, 128, 3).is_empty());
    }

    #[test]
    fn stable_placement_is_the_ring() {
        let t = Topology::seed(urls(&["a", "b", "c", "d", "e"]));
        let p = Placement::new(&t, 16, 3);
        let ring = Ring::new(["a", "b", "c", "d", "e"], 16);
        for key in ["x", "y", "username123"] {
            assert_eq!(p.read_replicas(key), ring.preference_list(key, 3));
            assert_eq!(p.holders(key), ring.preference_list(key, 3));
            let w = p.write_set(key, Consistency::Quorum);
            assert_eq!(w.replicas.len(), 3);
            assert_eq!(w.required, 2);
            assert_eq!(w.fallbacks.len(), 2);
        }
    }

    proptest! {
        /// Whatever subset acknowledges, reaching `required` of the write
        /// set means W of each owner set: a quorum read on either side,
        /// before or after the switch, meets the write.
        #[test]
        fn a_write_during_a_change_meets_both_quorums(
            key in ".{1,12}",
            size in 1usize..7,
            join in any::<bool>(),
            phase_switched in any::<bool>(),
            acks_mask in any::<u16>(),
            level in 0usize..3,
        ) {
            let ids: Vec<String> = (0..size).map(|i| format!("n{i}")).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let t1 = Topology::seed(urls(&refs));
            let change = if join {
                t1.change(Some(("new", "http://127.0.0.1:9999")), None)
            } else {
                t1.change(None, Some("n0"))
            };
            let Ok(mut t) = change else { return Ok(()); };
            if phase_switched {
                t = t.advance().unwrap();
            }
            let consistency = [Consistency::One, Consistency::Quorum, Consistency::All][level];
            let p = Placement::new(&t, 8, 3);
            let w = p.write_set(&key, consistency);
            let current = Ring::new(t.current.iter().cloned(), 8);
            let next = Ring::new(t.next.clone().unwrap(), 8);
            let a = current.preference_list(&key, 3);
            let b = next.preference_list(&key, 3);
            // Every owner of either set is written to.
            for node in a.iter().chain(b.iter()) {
                prop_assert!(w.replicas.iter().any(|r| r == node));
            }
            let acked: Vec<&String> = w
                .replicas
                .iter()
                .enumerate()
                .filter(|(i, _)| acks_mask & (1 << i) != 0)
                .map(|(_, r)| r)
                .collect();
            if acked.len() >= w.required {
                let in_a = acked.iter().filter(|r| a.contains(&r.as_str())).count();
                let in_b = acked.iter().filter(|r| b.contains(&r.as_str())).count();
                prop_assert!(in_a >= consistency.required(a.len()));
                prop_assert!(in_b >= consistency.required(b.len()));
            }
            // Holders are exactly both sets; fallbacks are everyone else.
            let holders = p.holders(&key);
            prop_assert_eq!(holders.len(), w.replicas.len());
            prop_assert_eq!(w.replicas.len() + w.fallbacks.len(), t.nodes.len());
        }
    }

    #[test]
    fn the_resumer_is_the_first_owner_after_the_change_that_is_up() {
        let stable = Topology::seed(urls(&["a", "b", "c"]));
        assert_eq!(stable.resumer(|_| true), None);
        // a leaves, d joins: the owners after are b, c, d.
        let joining = stable
            .change(Some(("d", "http://127.0.0.1:8004")), Some("a"))
            .unwrap();
        assert_eq!(joining.resumer(|_| true), Some("b"));
        assert_eq!(joining.resumer(|id| id != "b"), Some("c"));
        assert_eq!(joining.resumer(|id| id == "d"), Some("d"));
        // The leaving node never resumes; nobody up, nobody resumes.
        assert_eq!(joining.resumer(|id| id == "a"), None);
        let switched = joining.advance().unwrap();
        assert_eq!(switched.resumer(|_| true), Some("b"));
    }
}
