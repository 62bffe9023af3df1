//! The cluster manager, active on the Raft leader (DESIGN.md §3).
//!
//! Heartbeats are tracked in memory; a Raft entry is proposed only when something changes:
//! a new node or target, a local-state change, a node passing the heartbeat timeout, usage
//! figures (at most every `USAGE_UPDATE_INTERVAL`), finished GC tasks. A new leader gives
//! every node a full timeout of grace before declaring it down.

use crate::limits::*;
use crate::server::{Proposal, not_leader};
use crate::store::Shared;
use crate::tables::{GC, GcRec, LEASES, TRASH};
use crate::types::{ClusterCmd, Op, OpReply, Raft};
use pond_proto::cluster::{GcTask, Heartbeat, HeartbeatReply, RoutingInfo};
use pond_proto::{ChainId, ErrorCode, InodeId, NodeId, PondError};
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
        }
        true
    }

    pub async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatReply, PondError> {
        if !self.observe_leadership() {
            return Err(not_leader(self.raft.metrics().borrow().current_leader));
        }
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
        if let Some(cmd) = change_for(&routing, &hb, usage_due) {
            self.propose(cmd).await?;
        }
        if !hb.gc_done.is_empty() {
            {
                let mut st = self.st.lock();
                for t in &hb.gc_done {
                    st.gc_issued.remove(&(t.inode, t.chain));
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
    use pond_proto::{RoutingVersion, TargetId};

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
}
