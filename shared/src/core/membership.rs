//! What this node believes about each peer: up, suspect or down.
//!
//! Pure bookkeeping; the coordinator reports each call's outcome with the
//! current time, and asks whether a peer is worth calling now. A failed call
//! marks a peer suspect at once; `down_after_failures` failures in a row mark
//! it down, and requests then route around it without waiting for the
//! heartbeat, trying it again once `retry_after_ms` have passed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Health of a peer as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Answered its last call.
    Up,
    /// Its last call failed; not yet confirmed down.
    Suspect,
    /// Failed `down_after_failures` calls in a row.
    Down,
    /// Never contacted yet.
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Suspect => "suspect",
            Health::Down => "down",
            Health::Unknown => "unknown",
        }
    }
}

/// The state of one peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerState {
    pub health: Health,
    pub last_seen_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

impl Default for PeerState {
    fn default() -> Self {
        PeerState {
            health: Health::Unknown,
            last_seen_ms: None,
            last_failure_ms: None,
            consecutive_failures: 0,
            last_error: None,
        }
    }
}

/// A health change worth logging and counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub node: String,
    pub from: Health,
    pub to: Health,
}

/// Peer states of one node.
#[derive(Debug, Clone)]
pub struct Membership {
    peers: BTreeMap<String, PeerState>,
    retry_after_ms: u64,
    down_after_failures: u32,
}

impl Membership {
    pub fn new<I: IntoIterator<Item = String>>(
        peers: I,
        retry_after_ms: u64,
        down_after_failures: u32,
    ) -> Self {
        Membership {
            peers: peers
                .into_iter()
                .map(|p| (p, PeerState::default()))
                .collect(),
            retry_after_ms,
            down_after_failures: down_after_failures.max(1),
        }
    }

    /// Follows a new peer list (the topology changed): peers still listed
    /// keep their state, new ones start unknown, the others are dropped.
    pub fn set_peers<I: IntoIterator<Item = String>>(&mut self, peers: I) {
        let wanted: std::collections::BTreeSet<String> = peers.into_iter().collect();
        self.peers.retain(|p, _| wanted.contains(p));
        for peer in wanted {
            self.peers.entry(peer).or_default();
        }
    }

    pub fn get(&self, node: &str) -> Option<&PeerState> {
        self.peers.get(node)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &PeerState)> {
        self.peers.iter()
    }

    pub fn health(&self, node: &str) -> Health {
        self.peers.get(node).map_or(Health::Unknown, |p| p.health)
    }

    /// Records a successful call.
    pub fn success(&mut self, node: &str, now_ms: u64) -> Option<Transition> {
        let peer = self.peers.get_mut(node)?;
        let from = peer.health;
        peer.health = Health::Up;
        peer.last_seen_ms = Some(now_ms);
        peer.consecutive_failures = 0;
        peer.last_error = None;
        (from != Health::Up).then(|| Transition {
            node: node.to_owned(),
            from,
            to: Health::Up,
        })
    }

    /// Records a failed call.
    pub fn failure(&mut self, node: &str, reason: &str, now_ms: u64) -> Option<Transition> {
        let down_after = self.down_after_failures;
        let peer = self.peers.get_mut(node)?;
        let from = peer.health;
        peer.consecutive_failures = peer.consecutive_failures.saturating_add(1);
        peer.last_failure_ms = Some(now_ms);
        peer.last_error = Some(reason.chars().take(200).collect());
        peer.health = if peer.consecutive_failures >= down_after {
            Health::Down
        } else {
            Health::Suspect
        };
        (from != peer.health).then(|| Transition {
            node: node.to_owned(),
            from,
            to: peer.health,
        })
    }

    /// Whether a request should call `node` now: yes unless it is down and
    /// failed less than `retry_after_ms` ago.
    pub fn should_call(&self, node: &str, now_ms: u64) -> bool {
        match self.peers.get(node) {
            None => false,
            Some(peer) => match (peer.health, peer.last_failure_ms) {
                (Health::Down, Some(failed_ms)) => {
                    now_ms.saturating_sub(failed_ms) >= self.retry_after_ms
                }
                _ => true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_marks_suspect_then_down_and_success_heals() {
        let mut m = Membership::new(["a".to_owned()], 1_000, 2);
        assert!(m.should_call("a", 0));
        let t = m.failure("a", "refused", 10).unwrap();
        assert_eq!((t.from, t.to), (Health::Unknown, Health::Suspect));
        assert!(m.should_call("a", 20), "one failure only makes it suspect");
        let t = m.failure("a", "refused", 1_010).unwrap();
        assert_eq!(t.to, Health::Down);
        assert!(
            !m.should_call("a", 1_500),
            "down: skipped for retry_after_ms"
        );
        assert!(m.should_call("a", 2_010));
        assert!(
            m.failure("a", "refused", 2_010).is_none(),
            "no transition while down"
        );
        let t = m.success("a", 3_000).unwrap();
        assert_eq!((t.from, t.to), (Health::Down, Health::Up));
        assert_eq!(m.get("a").unwrap().last_seen_ms, Some(3_000));
        assert!(m.should_call("a", 3_001));
        assert!(!m.should_call("unknown-node", 0));
    }

    #[test]
    fn a_new_peer_list_keeps_known_states() {
        let mut m = Membership::new(["a".to_owned(), "b".to_owned()], 1_000, 1);
        m.failure("a", "refused", 5);
        m.set_peers(["a".to_owned(), "c".to_owned()]);
        assert_eq!(m.health("a"), Health::Down);
        assert_eq!(m.health("c"), Health::Unknown);
        assert!(m.get("b").is_none());
    }
}
