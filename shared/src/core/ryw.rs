//! What a read-your-writes token (`min_version`) can ask of the cluster,
//! judged by time alone. Pure; `node::ryw` does the looking.
//!
//! A token is a version a write answered. Two kinds of token cannot be
//! waited for:
//!
//! - one stamped beyond the drift bound from now: no write of this cluster
//!   was answered with it (a node refuses such stamps), so it is bad input;
//! - one older than the tombstone grace, when no replica holds the key: the
//!   write it names may have been a deletion whose tombstone was collected
//!   after the grace, and "missing" is then the newest state there is.
//!   (A value write older than the grace is never missing: values are not
//!   collected.)

use super::record::Version;

/// How a token relates to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAge {
    /// Stamped beyond `now + drift`: no write answered it.
    Future,
    /// Within the grace: the record it names must be found (or waited for).
    Recent,
    /// Older than the grace: a key no replica holds meets it.
    BeyondGrace,
}

/// Classifies `min` at `now_ms`, with the cluster's drift bound and
/// tombstone grace (both in ms).
pub fn token_age(min: &Version, now_ms: u64, drift_max_ms: u64, grace_ms: u64) -> TokenAge {
    let wall = min.ts.wall_ms;
    if wall > now_ms.saturating_add(drift_max_ms) {
        TokenAge::Future
    } else if now_ms.saturating_sub(wall) > grace_ms {
        TokenAge::BeyondGrace
    } else {
        TokenAge::Recent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hlc::Timestamp;
    use proptest::prelude::*;

    fn v(wall: u64) -> Version {
        Version::new(Timestamp::new(wall, 0), "n1")
    }

    #[test]
    fn classifies_the_three_ages() {
        let now = 1_000_000;
        assert_eq!(token_age(&v(now + 61), now, 60, 500), TokenAge::Future);
        assert_eq!(token_age(&v(now + 60), now, 60, 500), TokenAge::Recent);
        assert_eq!(token_age(&v(now - 500), now, 60, 500), TokenAge::Recent);
        assert_eq!(
            token_age(&v(now - 501), now, 60, 500),
            TokenAge::BeyondGrace
        );
        assert_eq!(token_age(&v(0), now, 60, 500), TokenAge::BeyondGrace);
    }

    proptest! {
        /// Ages are ordered with the token's wall time: a later token is
        /// never judged older.
        #[test]
        fn later_tokens_are_never_older(a in 0u64..u64::MAX / 2, d in 0u64..1_000_000,
                                        now in 0u64..u64::MAX / 2, drift in 0u64..100_000,
                                        grace in 0u64..1_000_000) {
            let rank = |t: TokenAge| match t {
                TokenAge::BeyondGrace => 0,
                TokenAge::Recent => 1,
                TokenAge::Future => 2,
            };
            let early = token_age(&v(a), now, drift, grace);
            let late = token_age(&v(a + d), now, drift, grace);
            prop_assert!(rank(early) <= rank(late));
        }
    }
}
