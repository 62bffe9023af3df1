//! The cluster map (nodes, targets, chains, chain tables) and the public-state table of
//! DESIGN.md §3. `next_chain` is a pure function; the rest applies `ClusterCmd`s
//! deterministically and bumps chain and routing versions on every change.

use pond_proto::cluster::{
    ChainInfo, ChainTable, LocalState, NodeInfo, PublicState, RoutingInfo, TargetInfo, TargetReport,
};
use pond_proto::limits::CHAIN_TARGETS_MAX;
use pond_proto::{ChainId, ChainTableId, ErrorCode, NodeId, PondError, RoutingVersion, TargetId};
use std::collections::BTreeMap;

/// The replicated cluster map, kept in memory and persisted as one record when it changes.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub routing: RoutingInfo,
    pub dirty: bool,
}

/// Chain id 0 marks a target that belongs to no chain yet.
pub const NO_CHAIN: ChainId = ChainId(0);

/// One target of a chain as the table sees it: id, current public state, reported local state.
pub type ChainMember = (TargetId, PublicState, LocalState);

/// The public-state transition of one chain (DESIGN.md §3). Input: the chain's targets in
/// order with their public and local states. Output: the new order (serving first, then
/// syncing, waiting, and targets that are down at the end) with new public states.
pub fn next_chain(members: &[ChainMember]) -> Vec<(TargetId, PublicState)> {
    use LocalState as L;
    use PublicState as P;
    let serving_stays = |except: usize| {
        members
            .iter()
            .enumerate()
            .any(|(i, (_, p, l))| i != except && *p == P::Serving && *l != L::Offline)
    };
    let serving_uptodate = |except: usize| {
        members
            .iter()
            .enumerate()
            .any(|(i, (_, p, l))| i != except && *p == P::Serving && *l == L::UpToDate)
    };
    let lastsrv_returns = members
        .iter()
        .any(|(_, p, l)| *p == P::LastSrv && *l != L::Offline);
    let lastsrv_kept = members
        .iter()
        .any(|(_, p, l)| *p == P::LastSrv && *l == L::Offline);
    let mut lastsrv_given = lastsrv_kept || lastsrv_returns;
    // (rank, position, target, state); rank orders the chain.
    let mut out: Vec<(u8, usize, TargetId, PublicState)> = Vec::with_capacity(members.len());
    for (i, (t, p, l)) in members.iter().enumerate() {
        let np = match (*p, *l) {
            (P::Serving, L::Offline) => {
                if serving_stays(usize::MAX) || lastsrv_given {
                    P::Offline
                } else {
                    // The only serving target (or the first of several failing together).
                    lastsrv_given = true;
                    P::LastSrv
                }
            }
            (P::LastSrv, L::Offline) => P::LastSrv,
            (_, L::Offline) => P::Offline,
            // A last-serving target that is back has the newest data: it serves again and
            // the others sync from it.
            (P::LastSrv, _) => P::Serving,
            (P::Serving, L::UpToDate) => P::Serving,
            // A serving target that says it needs a sync stops serving unless nobody else can.
            (P::Serving, L::Online) => {
                if serving_uptodate(i) {
                    P::Waiting
                } else {
                    P::Serving
                }
            }
            (P::Syncing, L::UpToDate) => P::Serving,
            (P::Syncing, L::Online) => P::Syncing,
            // Back from offline, or waiting: recovery has to run first.
            (P::Waiting, _) | (P::Offline, _) => P::Waiting,
        };
        let was_down = matches!(*p, P::Offline | P::LastSrv);
        let rank = match np {
            P::Serving => 0,
            P::Syncing => 1,
            P::Waiting => 2,
            P::LastSrv | P::Offline if was_down => 3,
            P::LastSrv | P::Offline => 4,
        };
        out.push((rank, i, *t, np));
    }
    // Syncing needs a serving predecessor; at most one per chain.
    let has_serving = out.iter().any(|o| o.3 == P::Serving);
    let has_syncing = out.iter().any(|o| o.3 == P::Syncing);
    if has_serving
        && !has_syncing
        && let Some(o) = out
            .iter_mut()
            .filter(|o| o.3 == P::Waiting)
            .min_by_key(|o| o.1)
    {
        o.3 = P::Syncing;
        o.0 = 1;
    }
    if !has_serving {
        // No serving predecessor: a syncing target cannot continue.
        for o in out.iter_mut().filter(|o| o.3 == P::Syncing) {
            o.3 = P::Waiting;
            o.0 = 2;
        }
    }
    out.sort_by_key(|o| (o.0, o.1));
    out.into_iter().map(|o| (o.2, o.3)).collect()
}

/// The local state a heartbeat's report counts as (the admission rule in front of the state
/// table). `up_to_date` is what the node claims; it is believed only where it cannot be stale:
///
/// * a target not in a chain yet, or serving / last serving: as reported;
/// * a syncing target: only when the node's heartbeat says it has installed a routing table at
///   least as new as `syncing_since`, the table in which the target became syncing. A node
///   frozen (SIGSTOP) before it saw that table still reports the "up to date" of before its
///   freeze; promoting the target on it would serve a replica that missed writes. The node
///   drops its own claim once it sees itself syncing, so the first claim built with the new
///   table is a real sync result. `None` (not recorded) is treated as not yet known.
/// * a waiting or offline target in a chain: counted as `online`. The state table does not
///   look at the claim there, but the target may become syncing before the report applies,
///   and then the claim would be taken as the end of a sync that never ran.
pub fn admitted_local(
    info: &TargetInfo,
    reported: LocalState,
    node_version: RoutingVersion,
    syncing_since: Option<RoutingVersion>,
) -> LocalState {
    if reported != LocalState::UpToDate || info.chain == NO_CHAIN {
        return reported;
    }
    match info.public_state {
        PublicState::Serving | PublicState::LastSrv => reported,
        PublicState::Syncing if syncing_since.is_some_and(|v| node_version >= v) => reported,
        PublicState::Syncing | PublicState::Waiting | PublicState::Offline => LocalState::Online,
    }
}

impl ClusterState {
    pub fn from_routing(routing: RoutingInfo) -> ClusterState {
        ClusterState {
            routing,
            dirty: false,
        }
    }

    /// Re-run the state table on one chain; bumps its version if anything changed.
    fn refresh_chain(&mut self, chain: ChainId) -> bool {
        let r = &mut self.routing;
        let Some(info) = r.chains.get(&chain) else {
            return false;
        };
        let members: Vec<ChainMember> = info
            .targets
            .iter()
            .filter_map(|t| {
                r.targets
                    .get(t)
                    .map(|ti| (*t, ti.public_state, ti.local_state))
            })
            .collect();
        let next = next_chain(&members);
        let before: Vec<(TargetId, PublicState)> = members.iter().map(|m| (m.0, m.1)).collect();
        if next == before {
            return false;
        }
        for (t, p) in &next {
            if let Some(ti) = r.targets.get_mut(t) {
                // Entering syncing: any "up to date" on record was reported before the table
                // that makes the target syncing existed, so it says nothing about this sync.
                if *p == PublicState::Syncing
                    && ti.public_state != PublicState::Syncing
                    && ti.local_state == LocalState::UpToDate
                {
                    ti.local_state = LocalState::Online;
                }
                ti.public_state = *p;
            }
        }
        let info = r.chains.get_mut(&chain).expect("chain looked up above");
        info.targets = next.into_iter().map(|(t, _)| t).collect();
        info.version = info.version.next();
        true
    }

    fn finish_change(&mut self, before: &RoutingInfo, chains: impl IntoIterator<Item = ChainId>) {
        let mut seen = Vec::new();
        for c in chains {
            if c != NO_CHAIN && !seen.contains(&c) {
                seen.push(c);
                self.refresh_chain(c);
            }
        }
        if self.routing != *before {
            self.routing.version = RoutingVersion(before.version.0 + 1);
            self.dirty = true;
        }
    }

    fn chains_of_node(&self, node: NodeId) -> Vec<ChainId> {
        self.routing
            .targets
            .values()
            .filter(|t| t.node == node)
            .map(|t| t.chain)
            .collect()
    }

    /// First heartbeat of a node, or its address or targets changed.
    pub fn register(&mut self, node: NodeId, data_addr: &str, targets: &[TargetReport]) {
        let before = self.routing.clone();
        self.routing.nodes.insert(
            node,
            NodeInfo {
                id: node,
                data_addr: data_addr.to_string(),
                alive: true,
            },
        );
        for r in targets {
            let e = self.routing.targets.entry(r.id).or_insert(TargetInfo {
                id: r.id,
                node,
                chain: NO_CHAIN,
                public_state: PublicState::Waiting,
                local_state: r.local_state,
                used_bytes: 0,
                capacity_bytes: 0,
            });
            e.node = node;
            e.local_state = r.local_state;
            e.used_bytes = r.used_bytes;
            e.capacity_bytes = r.capacity_bytes;
        }
        let chains = self.chains_of_node(node);
        self.finish_change(&before, chains);
    }

    /// Local states (and usage, when `usage`) from a live node.
    pub fn report(&mut self, node: NodeId, targets: &[TargetReport], usage: bool) {
        let before = self.routing.clone();
        if let Some(n) = self.routing.nodes.get_mut(&node) {
            n.alive = true;
        }
        for r in targets {
            if let Some(t) = self.routing.targets.get_mut(&r.id)
                && t.node == node
            {
                t.local_state = r.local_state;
                if usage {
                    t.used_bytes = r.used_bytes;
                    t.capacity_bytes = r.capacity_bytes;
                }
            }
        }
        let chains = self.chains_of_node(node);
        self.finish_change(&before, chains);
    }

    /// The node passed the heartbeat timeout.
    pub fn node_down(&mut self, node: NodeId) {
        let before = self.routing.clone();
        if let Some(n) = self.routing.nodes.get_mut(&node) {
            n.alive = false;
        }
        for t in self.routing.targets.values_mut().filter(|t| t.node == node) {
            t.local_state = LocalState::Offline;
        }
        let chains = self.chains_of_node(node);
        self.finish_change(&before, chains);
    }

    /// Build chains of `replicas` targets on distinct nodes and one chain table over them.
    pub fn bootstrap_chains(&mut self, replicas: u32) -> Result<ChainTable, PondError> {
        if !self.routing.chains.is_empty() {
            return Err(PondError::new(ErrorCode::Exists, "chains already exist"));
        }
        let replicas = replicas as usize;
        if replicas == 0 || replicas > CHAIN_TARGETS_MAX {
            return Err(PondError::new(
                ErrorCode::InvalidArgument,
                format!("replicas must be 1..={CHAIN_TARGETS_MAX}"),
            ));
        }
        // Unassigned, alive targets per node, in id order.
        let mut free: BTreeMap<NodeId, Vec<TargetId>> = BTreeMap::new();
        for t in self.routing.targets.values() {
            if t.chain == NO_CHAIN && t.local_state != LocalState::Offline {
                free.entry(t.node).or_default().push(t.id);
            }
        }
        if free.len() < replicas {
            return Err(PondError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{replicas} replicas need targets on {replicas} nodes, have {}",
                    free.len()
                ),
            ));
        }
        let before = self.routing.clone();
        let mut chains = Vec::new();
        loop {
            // The `replicas` nodes with the most free targets (ties: lower node id) give one
            // target each, so targets spread evenly and every chain spans distinct nodes.
            let mut nodes: Vec<(usize, NodeId)> = free
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| (v.len(), *n))
                .collect();
            if nodes.len() < replicas {
                break;
            }
            nodes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let id = ChainId(chains.len() as u32 + 1);
            let mut targets = Vec::with_capacity(replicas);
            for (_, n) in nodes.into_iter().take(replicas) {
                let t = free.get_mut(&n).expect("node listed").remove(0);
                targets.push(t);
            }
            // Round-robin the head so heads spread over nodes too.
            let rot = chains.len() % replicas;
            targets.rotate_left(rot);
            for t in &targets {
                let ti = self.routing.targets.get_mut(t).expect("free target exists");
                ti.chain = id;
                ti.public_state = PublicState::Serving;
            }
            self.routing.chains.insert(
                id,
                ChainInfo {
                    id,
                    version: pond_proto::ChainVersion(1),
                    targets,
                },
            );
            chains.push(id);
        }
        let table = ChainTable {
            id: ChainTableId(1),
            chains,
        };
        self.routing.chain_tables.insert(table.id, table.clone());
        self.finish_change(&before, Vec::new());
        Ok(table)
    }

    /// Head of a chain: its first target that receives writes.
    pub fn head_node(&self, chain: ChainId) -> Option<NodeId> {
        self.routing.write_targets(chain).first().map(|t| t.node)
    }
}

#[cfg(test)]
mod tests;
