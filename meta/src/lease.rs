//! Leader-lease reads: when the leader heard from a quorum recently enough, no other leader
//! can exist yet, so it answers linearizable reads from its own state machine without a
//! read-index round.
//!
//! Why it is safe: a follower that accepted an AppendEntries of this leader refuses to vote
//! for anyone else for openraft's leader lease (`election_timeout_max`) after it received it.
//! openraft's `millis_since_quorum_ack` counts from the *send* time of the newest
//! AppendEntries a quorum acknowledged, so no new leader can be elected before that send time
//! plus `election_timeout_max` (by the followers' clocks). We serve reads only while the
//! acknowledgement is younger than `READ_LEASE`, which leaves `election_timeout_max -
//! READ_LEASE` for clock-rate drift and for the delay between openraft reporting its metrics
//! and our watcher recording them (the age is counted from the moment the watcher recorded
//! the report, so that delay is the one error toward an optimistic lease, and the margin
//! covers it).
//!
//! Every write is acknowledged to its client only after the leader applied it, and a leader
//! that has applied an entry of its own term has applied everything an earlier leader
//! committed. So with a valid lease the local state contains every acknowledged write.

use crate::types::Raft;
use openraft::ServerState;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the watcher last saw in openraft's metrics, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub is_leader: bool,
    pub current_term: u64,
    /// Term of the last applied log entry (None before anything was applied).
    pub applied_term: Option<u64>,
    /// `millis_since_quorum_ack` as reported (None: not leader or not acknowledged yet).
    pub millis_since_quorum_ack: Option<u64>,
}

/// Why a read may or may not be served from the local state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Serve from local state.
    Local,
    /// Not the leader (the read-index path answers `NotLeader` with a hint).
    NotLeader,
    /// Leader, but no quorum acknowledgement on record yet.
    NoAck,
    /// Leader, acknowledgement too old: the lease may have lapsed.
    Expired,
    /// Leader of a new term that has not applied an entry of its own term yet (entries of
    /// earlier leaders may be committed but not applied here).
    NotCaughtUp,
}

/// The lease decision table, as a pure function. `observed_age` is how long ago the watcher
/// recorded `view`; the acknowledgement is then `millis_since_quorum_ack + observed_age` old.
pub fn decide(view: &LeaseView, observed_age: Duration, lease: Duration) -> LeaseDecision {
    if !view.is_leader {
        return LeaseDecision::NotLeader;
    }
    let Some(ms) = view.millis_since_quorum_ack else {
        return LeaseDecision::NoAck;
    };
    let age = Duration::from_millis(ms).saturating_add(observed_age);
    if age >= lease {
        return LeaseDecision::Expired;
    }
    if view.applied_term != Some(view.current_term) {
        return LeaseDecision::NotCaughtUp;
    }
    LeaseDecision::Local
}

/// Shared lease state, refreshed by `watch` from openraft's metrics channel.
#[derive(Default)]
pub struct Lease {
    seen: Mutex<Option<(LeaseView, Instant)>>,
}

impl Lease {
    pub fn decide(&self, lease: Duration) -> LeaseDecision {
        match *self.seen.lock() {
            None => LeaseDecision::NoAck,
            Some((view, at)) => decide(&view, at.elapsed(), lease),
        }
    }

    fn record(&self, view: LeaseView, at: Instant) {
        *self.seen.lock() = Some((view, at));
    }
}

/// Follow openraft's metrics until Raft shuts down.
pub async fn watch(raft: Raft, id: u64, lease: Arc<Lease>) {
    let mut rx = raft.metrics();
    loop {
        let view = {
            let m = rx.borrow_and_update();
            LeaseView {
                is_leader: m.state == ServerState::Leader && m.current_leader == Some(id),
                current_term: m.current_term,
                applied_term: m.last_applied.map(|l| l.leader_id.term),
                millis_since_quorum_ack: m.millis_since_quorum_ack,
            }
        };
        lease.record(view, Instant::now());
        if rx.changed().await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(800);

    fn leader(ack: Option<u64>, term: u64, applied: Option<u64>) -> LeaseView {
        LeaseView {
            is_leader: true,
            current_term: term,
            applied_term: applied,
            millis_since_quorum_ack: ack,
        }
    }

    #[test]
    fn follower_never_serves_locally() {
        let v = LeaseView {
            is_leader: false,
            current_term: 3,
            applied_term: Some(3),
            millis_since_quorum_ack: Some(0),
        };
        assert_eq!(decide(&v, Duration::ZERO, LEASE), LeaseDecision::NotLeader);
    }

    #[test]
    fn leader_without_quorum_ack_falls_back() {
        let v = leader(None, 3, Some(3));
        assert_eq!(decide(&v, Duration::ZERO, LEASE), LeaseDecision::NoAck);
    }

    #[test]
    fn fresh_ack_and_caught_up_serves_locally() {
        let v = leader(Some(50), 3, Some(3));
        assert_eq!(
            decide(&v, Duration::from_millis(10), LEASE),
            LeaseDecision::Local
        );
    }

    #[test]
    fn old_ack_expires() {
        let v = leader(Some(800), 3, Some(3));
        assert_eq!(decide(&v, Duration::ZERO, LEASE), LeaseDecision::Expired);
        let v = leader(Some(799), 3, Some(3));
        assert_eq!(decide(&v, Duration::ZERO, LEASE), LeaseDecision::Local);
    }

    #[test]
    fn age_of_the_observation_counts() {
        // Reported fresh, but the report itself is old: the ack is 100 + 750 ms old.
        let v = leader(Some(100), 3, Some(3));
        assert_eq!(
            decide(&v, Duration::from_millis(750), LEASE),
            LeaseDecision::Expired
        );
        assert_eq!(
            decide(&v, Duration::from_millis(600), LEASE),
            LeaseDecision::Local
        );
    }

    #[test]
    fn new_leader_waits_for_an_entry_of_its_term() {
        let v = leader(Some(0), 4, Some(3));
        assert_eq!(
            decide(&v, Duration::ZERO, LEASE),
            LeaseDecision::NotCaughtUp
        );
        let v = leader(Some(0), 4, None);
        assert_eq!(
            decide(&v, Duration::ZERO, LEASE),
            LeaseDecision::NotCaughtUp
        );
    }

    #[test]
    fn nothing_observed_yet_falls_back() {
        let l = Lease::default();
        assert_eq!(l.decide(LEASE), LeaseDecision::NoAck);
        l.record(leader(Some(0), 1, Some(1)), Instant::now());
        assert_eq!(l.decide(LEASE), LeaseDecision::Local);
        l.record(leader(Some(0), 1, Some(1)), Instant::now() - LEASE);
        assert_eq!(l.decide(LEASE), LeaseDecision::Expired);
    }
}
