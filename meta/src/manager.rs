//! The cluster manager, active on the Raft leader (DESIGN.md §3).
//!
//! Heartbeats are tracked in memory; a Raft entry is proposed only when something changes:
//! a new node or target, a local-state change, a node passing the heartbeat timeout, usage
//! figures (at most every `USAGE_UPDATE_INTERVAL`), finished GC tasks. A new leader gives
//! every node a full timeout of grace before declaring it down.

use crate::cluster::admitted_local;
use crate::lease::{Lease, LeaseDecision};
use crate::limits::*;
use crate::server::{Proposal, not_leader};
use crate::store::Shared;
use crate::tables::{GC, GcRec, LEASES, TRASH};
use crate::types::{ClusterCmd, Op, OpReply, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use pond_proto::cluster::{GcTask, Heartbeat, HeartbeatReply, PublicState, RoutingInfo};
use pond_proto::{
    ChainId, ChainVersion, ErrorCode, InodeId, NodeId, PondError, RoutingVersion, TargetId,
};
use redb::{ReadableDatabase, ReadableTable};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Default)]
struct MgrState {
    /// The term in which this replica became leader (None: not leader).
    leader_term: Option<u64>,
    /// When this replica became leader of `leader_term`.
    leader_since: Option<Instant>,
    last_seen: HashMap<NodeId, Instant>,
    last_usage: HashMap<NodeId, Instant>,
    gc_issued: HashMap<(InodeId, ChainId), Instant>,
    /// When this leader first saw each GC record (`GC_GRACE`).
    gc_first_seen: HashMap<InodeId, Instant>,
    /// Per syncing target, the routing version in which this leader first saw it syncing
    /// (the version that made it syncing, or a later one: never an earlier one). An "up to
    /// date" counts only from a node that has installed that table (`admitted_local`).
    syncing_since: HashMap<TargetId, SyncingSince>,
}

/// Longest a heartbeat waits for a read-index round when the leader lease cannot vouch for
/// this replica's leadership. Well inside the storage node's heartbeat deadline (3 s), so a
/// deposed leader's refusal leaves the node time to try the next meta replica.
pub const HEARTBEAT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

/// How a heartbeat gets its leadership confirmation. An answered heartbeat renews the storage
/// node's lease (it serves for `FENCE_AFTER_MS`, 3.5 s, from sending it), so only a replica
/// that no other leader can have replaced may answer: a deposed leader cut off from the
/// majority still sees itself as leader in its local Raft metrics, and its answers kept a
/// node serving an old chain after the majority side had declared it offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// The leader lease holds (a quorum acknowledged an AppendEntries sent less than
    /// `READ_LEASE` ago, and this term's first entry is applied).
    Lease,
    /// Leader by its own metrics but the lease cannot vouch: run a read-index round.
    ReadIndex,
    /// Not the leader: refuse.
    Refuse,
}

/// The heartbeat gate as a pure function of the lease decision.
pub fn confirmation(d: LeaseDecision) -> Confirmation {
    match d {
        LeaseDecision::Local => Confirmation::Lease,
        LeaseDecision::NotLeader => Confirmation::Refuse,
        LeaseDecision::NoAck | LeaseDecision::Expired | LeaseDecision::NotCaughtUp => {
            Confirmation::ReadIndex
        }
    }
}

/// When a target was seen syncing: the routing version, and its chain's version then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncingSince {
    pub routing: RoutingVersion,
    pub chain: ChainVersion,
}

/// Record the routing version at which each syncing target is first seen syncing; forget
/// targets that left syncing. A chain whose version moved since the record may have taken the
/// target out of syncing and back in between two looks, so its record restarts at the current
/// version (later than the true one at worst: the node needs one more heartbeat to catch up,
/// as every reply carries the newest table).
pub fn note_syncing(since: &mut HashMap<TargetId, SyncingSince>, routing: &RoutingInfo) {
    since.retain(|t, _| {
        routing
            .targets
            .get(t)
            .is_some_and(|i| i.public_state == PublicState::Syncing)
    });
    for t in routing.targets.values() {
        if t.public_state != PublicState::Syncing {
            continue;
        }
        let Some(chain) = routing.chains.get(&t.chain).map(|c| c.version) else {
            continue;
        };
        let now = SyncingSince {
            routing: routing.version,
            chain,
        };
        let e = since.entry(t.id).or_insert(now);
        if e.chain != chain {
            *e = now;
        }
    }
}

/// The heartbeat with each target's claim replaced by what it counts as (`admitted_local`).
pub fn admitted(
    routing: &RoutingInfo,
    hb: &Heartbeat,
    since: &HashMap<TargetId, SyncingSince>,
) -> Heartbeat {
    let mut out = hb.clone();
    for r in &mut out.targets {
        if let Some(info) = routing.targets.get(&r.id)
            && info.node == hb.node
        {
            r.local_state = admitted_local(
                info,
                r.local_state,
                hb.routing_version,
                since.get(&r.id).map(|s| s.routing),
            );
        }
    }
    out
}

pub struct Manager {
    id: u64,
    raft: Raft,
    shared: Arc<Shared>,
    proposer: mpsc::Sender<Proposal>,
    timeout: Duration,
    st: parking_lot::Mutex<MgrState>,
}

impl Manager {
    pub fn new(
        id: u64,
        raft: Raft,
        shared: Arc<Shared>,
        proposer: mpsc::Sender<Proposal>,
        timeout: Duration,
    ) -> Manager {
        Manager {
            id,
            raft,
            shared,
            proposer,
            timeout,
            st: parking_lot::Mutex::new(MgrState::default()),
        }
    }

    /// Ok if this replica is the leader; otherwise `NotLeader` with a hint.
    pub fn leader_check(&self) -> Result<(), PondError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.id) && m.state.is_leader() {
            Ok(())
        } else {
            Err(not_leader(m.current_leader))
        }
    }

    async fn propose(&self, cmd: ClusterCmd) -> Result<OpReply, PondError> {
        let (tx, rx) = oneshot::channel();
        self.proposer
            .send(Proposal {
                op: Op::Cluster(cmd),
                tx,
            })
            .await
            .map_err(|_| PondError::new(ErrorCode::Unavailable, "shutting down"))?;
        rx.await
            .map_err(|_| PondError::new(ErrorCode::Unavailable, "proposal dropped"))?
    }

    /// Track leadership changes; a fresh leader starts every node's timeout from now.
    fn observe_leadership(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader == Some(self.id) && m.state.is_leader();
        let mut st = self.st.lock();
        if !leader {
            if st.leader_term.is_some() {
                *st = MgrState::default();
            }
            return false;
        }
        if st.leader_term != Some(m.current_term) {
            let now = Instant::now();
            st.leader_term = Some(m.current_term);
            st.leader_since = Some(now);
            st.last_seen = self
                .shared
                .routing()
                .nodes
                .keys()
                .map(|n| (*n, now))
                .collect();
            st.last_usage.clear();
            st.gc_issued.clear();
            st.gc_first_seen.clear();
            st.syncing_since.clear();
        }
        true
    }

    /// Confirm that no other leader can exist before answering a heartbeat: the leader lease
    /// when it holds, else a read-index round bounded by `HEARTBEAT_CONFIRM_TIMEOUT`.
    ///
    /// Why the storage lease cannot outlast it: with the lease, a quorum acknowledged an
    /// AppendEntries sent at A > now - `READ_LEASE` >= S - `READ_LEASE`, S being when the node
    /// sent the heartbeat; with a read index, A >= now >= S. No later leader is elected before
    /// A, and a new leader gives every node `heartbeat_timeout_ms` (5 s) of grace before it
    /// declares it offline, so nothing can move the node's chains on before A + 5 s >= S +
    /// 4.2 s, while the node serves only until S + 3.5 s (`FENCE_AFTER_MS` in storage).
    async fn confirm_leadership(&self, lease: &Lease) -> Result<(), PondError> {
        match confirmation(lease.decide(READ_LEASE)) {
            Confirmation::Lease => Ok(()),
            Confirmation::Refuse => Err(not_leader(self.raft.metrics().borrow().current_leader)),
            Confirmation::ReadIndex => {
                let res = tokio::time::timeout(
                    HEARTBEAT_CONFIRM_TIMEOUT,
                    self.raft.ensure_linearizable(),
                )
                .await;
                match res {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                        Err(not_leader(f.leader_id))
                    }
                    Ok(Err(e)) => Err(PondError::new(ErrorCode::Unavailable, e.to_string())),
                    Err(_) => Err(PondError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "leadership not confirmed within {} ms; try another meta replica",
                            HEARTBEAT_CONFIRM_TIMEOUT.as_millis()
                        ),
                    )),
                }
            }
        }
    }

    /// Answer a storage node's heartbeat. Only a leader whose leadership is confirmed
    /// (`confirm_leadership`) answers: the answer renews the node's serving lease.
    pub async fn heartbeat(
        &self,
        hb: Heartbeat,
        lease: &Lease,
    ) -> Result<HeartbeatReply, PondError> {
        if !self.observe_leadership() {
            return Err(not_leader(self.raft.metrics().borrow().current_leader));
        }
        self.confirm_leadership(lease).await?;
        let now = Instant::now();
        let usage_due = {
            let mut st = self.st.lock();
            st.last_seen.insert(hb.node, now);
            let due = st
                .last_usage
                .get(&hb.node)
                .is_none_or(|t| now.duration_since(*t) >= USAGE_UPDATE_INTERVAL);
            if due {
                st.last_usage.insert(hb.node, now);
            }
            due
        };
        let routing = self.shared.routing();
        let counted = {
            let mut st = self.st.lock();
            note_syncing(&mut st.syncing_since, &routing);
            admitted(&routing, &hb, &st.syncing_since)
        };
        if let Some(cmd) = change_for(&routing, &counted, usage_due) {
            self.propose(cmd).await?;
        }
        if !hb.gc_done.is_empty() {
            {
                let mut st = self.st.lock();
                for t in &hb.gc_done {
                    st.gc_issued.remove(&(t.inode, t.chain));
                    st.gc_first_seen.remove(&t.inode);
                }
            }
            self.propose(ClusterCmd::GcDone {
                tasks: hb.gc_done.clone(),
            })
            .await?;
        }
        let routing = self.shared.routing();
        let gc = self.gc_tasks_for(&routing, hb.node)?;
        Ok(HeartbeatReply {
            routing: (routing.version > hb.routing_version).then_some(routing),
            gc,
        })
    }

    /// Pending GC tasks for chains whose head is on `node`, skipping recently issued ones.
    fn gc_tasks_for(&self, routing: &RoutingInfo, node: NodeId) -> Result<Vec<GcTask>, PondError> {
        let internal =
            |e: redb::Error| PondError::new(ErrorCode::Internal, format!("read gc list: {e}"));
        let txn = self
            .shared
            .db
            .begin_read()
            .map_err(|e| internal(e.into()))?;
        let t = txn.open_table(GC).map_err(|e| internal(e.into()))?;
        let now = Instant::now();
        let mut out = Vec::new();
        let mut st = self.st.lock();
        // Bounded scan: a node with nothing to do among the first records waits for them to
        // be collected by the others.
        for item in t
            .iter()
            .map_err(|e| internal(e.into()))?
            .take(GC_TASKS_PER_HEARTBEAT_MAX * 64)
        {
            let (k, v) = item.map_err(|e| internal(e.into()))?;
            let Ok(rec) = postcard::from_bytes::<GcRec>(v.value()) else {
                continue;
            };
            if !st.gc_first_seen.contains_key(&InodeId(k.value()))
                && st.gc_first_seen.len() >= GC_SEEN_MAX
            {
                st.gc_first_seen.clear();
            }
            let first = *st.gc_first_seen.entry(InodeId(k.value())).or_insert(now);
            if now.duration_since(first) < GC_GRACE {
                continue;
            }
            for chain in rec.pending {
                let head = routing.write_targets(chain).first().map(|t| t.node);
                if head != Some(node) {
                    continue;
                }
                let key = (InodeId(k.value()), chain);
                if st
                    .gc_issued
                    .get(&key)
                    .is_some_and(|t| now.duration_since(*t) < GC_TASK_REISSUE)
                {
                    continue;
                }
                st.gc_issued.insert(key, now);
                out.push(GcTask {
                    inode: key.0,
                    chain,
                    from_index: 0,
                });
                if out.len() >= GC_TASKS_PER_HEARTBEAT_MAX {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Does any client lease have a deadline before now?
    fn lease_expired(&self) -> Result<bool, PondError> {
        let now = crate::namespace::timestamp_nanos(crate::store::now());
        let r = (|| -> Result<bool, redb::Error> {
            let txn = self.shared.db.begin_read()?;
            let t = txn.open_table(LEASES)?;
            for item in t.iter()? {
                let (_, v) = item?;
                let deadline = v.value().try_into().map(u64::from_be_bytes).unwrap_or(0);
                if deadline <= now {
                    return Ok(true);
                }
            }
            Ok(false)
        })();
        r.map_err(|e| PondError::new(ErrorCode::Internal, e.to_string()))
    }

    /// Periodic leader work: declare silent nodes down, advance the tree collector.
    pub async fn tick(&self) {
        if !self.observe_leadership() {
            return;
        }
        let routing = self.shared.routing();
        let now = Instant::now();
        let down: Vec<NodeId> = {
            let mut st = self.st.lock();
            routing
                .nodes
                .values()
                .filter(|n| n.alive)
                .filter(|n| {
                    let seen = *st.last_seen.entry(n.id).or_insert(now);
                    now.duration_since(seen) > self.timeout
                })
                .map(|n| n.id)
                .collect()
        };
        for node in down {
            tracing::warn!(%node, timeout_ms = self.timeout.as_millis() as u64, "storage node silent, marking its targets offline");
            if let Err(e) = self.propose(ClusterCmd::NodeDown { node }).await {
                tracing::debug!(error = %e, "propose node down");
            }
        }
        // Client leases past their deadline (by this leader's clock; apply decides with the
        // entry's time). Not right after an election: see `LEASE_EXPIRY_GRACE`.
        let settled = self
            .st
            .lock()
            .leader_since
            .is_some_and(|t| t.elapsed() >= LEASE_EXPIRY_GRACE);
        if settled
            && matches!(self.lease_expired(), Ok(true))
            && let Err(e) = self.propose(ClusterCmd::ExpireLeases).await
        {
            tracing::debug!(error = %e, "propose lease expiry");
        }
        // Removed trees: a few bounded steps per tick, so a huge tree is detached at
        // ~TRASH_STEPS_PER_TICK x TRASH_STEP_ENTRIES_MAX entries per tick without starving
        // client writes (each step is one Raft entry in the same proposer queue).
        for _ in 0..TRASH_STEPS_PER_TICK {
            let trash = (|| -> Result<bool, redb::Error> {
                let txn = self.shared.db.begin_read()?;
                let t = txn.open_table(TRASH)?;
                Ok(t.first()?.is_some())
            })();
            if !matches!(trash, Ok(true)) {
                break;
            }
            if let Err(e) = self.propose(ClusterCmd::ExpandTrash).await {
                tracing::debug!(error = %e, "propose trash step");
                break;
            }
        }
    }
}

/// The Raft command a heartbeat calls for, if any (pure function of the applied map).
pub fn change_for(routing: &RoutingInfo, hb: &Heartbeat, usage_due: bool) -> Option<ClusterCmd> {
    let known = routing.nodes.get(&hb.node);
    let registered = known.is_some_and(|n| n.data_addr == hb.data_addr)
        && hb.targets.iter().all(|r| {
            routing
                .targets
                .get(&r.id)
                .is_some_and(|t| t.node == hb.node)
        });
    if !registered {
        return Some(ClusterCmd::Register {
            node: hb.node,
            data_addr: hb.data_addr.clone(),
            targets: hb.targets.clone(),
        });
    }
    let alive = known.is_some_and(|n| n.alive);
    let state_changed = hb.targets.iter().any(|r| {
        routing
            .targets
            .get(&r.id)
            .is_some_and(|t| t.local_state != r.local_state)
    });
    let usage_changed = usage_due
        && hb.targets.iter().any(|r| {
            routing.targets.get(&r.id).is_some_and(|t| {
                t.used_bytes != r.used_bytes || t.capacity_bytes != r.capacity_bytes
            })
        });
    if !alive || state_changed || usage_changed {
        return Some(ClusterCmd::Report {
            node: hb.node,
            targets: hb.targets.clone(),
            usage: usage_due,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterState;
    use pond_proto::cluster::{LocalState, TargetReport};

    fn hb(state: LocalState, used: u64) -> Heartbeat {
        Heartbeat {
            node: NodeId(1),
            data_addr: "127.0.0.1:1".into(),
            targets: vec![TargetReport {
                id: TargetId(1),
                local_state: state,
                used_bytes: used,
                capacity_bytes: 100,
            }],
            routing_version: RoutingVersion(0),
            gc_done: vec![],
        }
    }

    #[test]
    fn heartbeat_proposes_only_on_change() {
        let mut c = ClusterState::default();
        let h = hb(LocalState::UpToDate, 1);
        assert!(matches!(
            change_for(&c.routing, &h, false),
            Some(ClusterCmd::Register { .. })
        ));
        c.register(h.node, &h.data_addr, &h.targets);
        assert!(
            change_for(&c.routing, &h, false).is_none(),
            "nothing changed"
        );
        assert!(
            change_for(&c.routing, &h, true).is_none(),
            "usage unchanged"
        );
        assert!(
            change_for(&c.routing, &hb(LocalState::UpToDate, 2), false).is_none(),
            "usage not due"
        );
        assert!(matches!(
            change_for(&c.routing, &hb(LocalState::UpToDate, 2), true),
            Some(ClusterCmd::Report { usage: true, .. })
        ));
        assert!(matches!(
            change_for(&c.routing, &hb(LocalState::Online, 1), false),
            Some(ClusterCmd::Report { .. })
        ));
        let mut moved = h.clone();
        moved.data_addr = "127.0.0.1:2".into();
        assert!(matches!(
            change_for(&c.routing, &moved, false),
            Some(ClusterCmd::Register { .. })
        ));
        let mut more = h.clone();
        more.targets.push(TargetReport {
            id: TargetId(2),
            local_state: LocalState::UpToDate,
            used_bytes: 0,
            capacity_bytes: 0,
        });
        assert!(matches!(
            change_for(&c.routing, &more, false),
            Some(ClusterCmd::Register { .. })
        ));
        c.node_down(NodeId(1));
        assert!(
            matches!(
                change_for(&c.routing, &h, false),
                Some(ClusterCmd::Report { .. })
            ),
            "back from the dead"
        );
    }

    #[test]
    fn only_a_confirmed_leader_answers_heartbeats() {
        use crate::lease::{LeaseView, decide};
        assert_eq!(confirmation(LeaseDecision::Local), Confirmation::Lease);
        assert_eq!(confirmation(LeaseDecision::NotLeader), Confirmation::Refuse);
        for d in [
            LeaseDecision::NoAck,
            LeaseDecision::Expired,
            LeaseDecision::NotCaughtUp,
        ] {
            assert_eq!(confirmation(d), Confirmation::ReadIndex, "{d:?}");
        }
        // A deposed leader on the minority side of a partition: its own metrics still say
        // leader, but no quorum acknowledged anything for seconds. The lease does not vouch.
        let deposed = LeaseView {
            is_leader: true,
            current_term: 7,
            applied_term: Some(7),
            millis_since_quorum_ack: Some(4_000),
        };
        assert_eq!(
            confirmation(decide(&deposed, Duration::ZERO, READ_LEASE)),
            Confirmation::ReadIndex
        );
        // Fresh acknowledgement, but the view itself was recorded long ago (no metrics change
        // since: the watcher saw nothing new because nothing was acknowledged).
        let quiet = LeaseView {
            millis_since_quorum_ack: Some(10),
            ..deposed
        };
        assert_eq!(
            confirmation(decide(&quiet, Duration::from_secs(2), READ_LEASE)),
            Confirmation::ReadIndex
        );
        assert_eq!(
            confirmation(decide(&quiet, Duration::ZERO, READ_LEASE)),
            Confirmation::Lease
        );
        let follower = LeaseView {
            is_leader: false,
            ..quiet
        };
        assert_eq!(
            confirmation(decide(&follower, Duration::ZERO, READ_LEASE)),
            Confirmation::Refuse
        );
    }

    fn node_hb(node: u32, target: u64, state: LocalState, version: RoutingVersion) -> Heartbeat {
        Heartbeat {
            node: NodeId(node),
            data_addr: format!("127.0.0.1:{node}"),
            targets: vec![TargetReport {
                id: TargetId(target),
                local_state: state,
                used_bytes: 0,
                capacity_bytes: 100,
            }],
            routing_version: version,
            gc_done: vec![],
        }
    }

    /// What the leader's heartbeat handler does with `hb`, applied to `c`.
    fn deliver(c: &mut ClusterState, since: &mut HashMap<TargetId, SyncingSince>, hb: &Heartbeat) {
        note_syncing(since, &c.routing);
        let counted = admitted(&c.routing, hb, since);
        match change_for(&c.routing, &counted, false) {
            Some(ClusterCmd::Register {
                node,
                data_addr,
                targets,
            }) => c.register(node, &data_addr, &targets),
            Some(ClusterCmd::Report {
                node,
                targets,
                usage,
            }) => c.report(node, &targets, usage),
            None => {}
            Some(other) => panic!("unexpected {other:?}"),
        }
    }

    fn state_of(c: &ClusterState, t: u64) -> (PublicState, LocalState) {
        let i = &c.routing.targets[&TargetId(t)];
        (i.public_state, i.local_state)
    }

    /// Three nodes with one target each (target id = node id), one chain over them.
    fn one_chain() -> (ClusterState, HashMap<TargetId, SyncingSince>) {
        let mut c = ClusterState::default();
        let mut since = HashMap::new();
        for n in 1..=3 {
            let h = node_hb(n, n as u64, LocalState::UpToDate, RoutingVersion(0));
            deliver(&mut c, &mut since, &h);
        }
        c.bootstrap_chains(3).unwrap();
        (c, since)
    }

    #[test]
    fn stale_up_to_date_from_a_frozen_node_does_not_promote_its_syncing_target() {
        use PublicState as P;
        let (mut c, mut since) = one_chain();
        // Node 3 freezes (SIGSTOP) holding this table; meta declares it down.
        let frozen_at = c.routing.version;
        c.node_down(NodeId(3));
        assert_eq!(state_of(&c, 3).0, P::Offline);
        // It wakes up; its first heartbeat was built before the freeze: "up to date", old table.
        let stale = node_hb(3, 3, LocalState::UpToDate, frozen_at);
        deliver(&mut c, &mut since, &stale);
        assert_eq!(state_of(&c, 3), (P::Syncing, LocalState::Online));
        let became_syncing = c.routing.version;
        // The reply is lost: the node sends the same stale claim again, and other nodes'
        // reports re-run the chain's state table. The target stays syncing.
        deliver(&mut c, &mut since, &stale);
        c.report(
            NodeId(1),
            &node_hb(1, 1, LocalState::UpToDate, became_syncing).targets,
            true,
        );
        assert_eq!(state_of(&c, 3), (P::Syncing, LocalState::Online));
        // The same claim admitted as is (the rule this test covers) would promote it.
        let mut unguarded = c.clone();
        unguarded.report(NodeId(3), &stale.targets, false);
        assert_eq!(state_of(&unguarded, 3).0, P::Serving);
        // The node installs the syncing table: it drops its claim and resyncs (online) ...
        let now = c.routing.version;
        assert!(now >= became_syncing);
        deliver(&mut c, &mut since, &node_hb(3, 3, LocalState::Online, now));
        assert_eq!(state_of(&c, 3).0, P::Syncing);
        // ... and an "up to date" reported with that table ends the sync.
        deliver(
            &mut c,
            &mut since,
            &node_hb(3, 3, LocalState::UpToDate, now),
        );
        assert_eq!(state_of(&c, 3), (P::Serving, LocalState::UpToDate));
        note_syncing(&mut since, &c.routing);
        assert!(since.is_empty(), "no target syncing any more");
    }

    #[test]
    fn syncing_since_is_never_earlier_than_the_syncing_table() {
        use PublicState as P;
        let (mut c, mut since) = one_chain();
        c.node_down(NodeId(3));
        deliver(
            &mut c,
            &mut since,
            &node_hb(3, 3, LocalState::Online, RoutingVersion(0)),
        );
        assert_eq!(state_of(&c, 3).0, P::Syncing);
        note_syncing(&mut since, &c.routing);
        let first = since[&TargetId(3)];
        assert_eq!(first.routing, c.routing.version);
        // Another target of the chain goes down: the chain moves on while 3 stays syncing,
        // and the record restarts at the newer table.
        c.node_down(NodeId(2));
        assert_eq!(state_of(&c, 3).0, P::Syncing);
        note_syncing(&mut since, &c.routing);
        let second = since[&TargetId(3)];
        assert!(second.routing > first.routing);
        // A claim made with the older table no longer counts.
        let info = &c.routing.targets[&TargetId(3)];
        assert_eq!(
            admitted_local(
                info,
                LocalState::UpToDate,
                first.routing,
                Some(second.routing)
            ),
            LocalState::Online
        );
        // Leaving syncing forgets the record.
        c.node_down(NodeId(3));
        note_syncing(&mut since, &c.routing);
        assert!(!since.contains_key(&TargetId(3)));
    }
}
