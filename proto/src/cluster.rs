//! The cluster map: nodes, targets, chains, chain tables, and the routing table that clients
//! and storage servers cache. Also the heartbeat and registration messages.

use crate::ids::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Public state of a target, as stored in its chain (DESIGN.md §3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum PublicState {
    /// Up to date: serves reads, receives writes.
    Serving,
    /// Alive, being filled by its predecessor: receives writes, no reads.
    Syncing,
    /// Alive, recovery not started.
    Waiting,
    /// Down, and it was the last serving target of its chain.
    LastSrv,
    /// Down or its disk failed.
    Offline,
}

impl PublicState {
    pub fn serves_reads(self) -> bool {
        self == PublicState::Serving
    }
    pub fn receives_writes(self) -> bool {
        matches!(self, PublicState::Serving | PublicState::Syncing)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PublicState::Serving => "serving",
            PublicState::Syncing => "syncing",
            PublicState::Waiting => "waiting",
            PublicState::LastSrv => "lastsrv",
            PublicState::Offline => "offline",
        }
    }
}

/// Local state of a target, as its storage node reports it in heartbeats.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum LocalState {
    UpToDate,
    /// Alive but not (yet) synced.
    Online,
    Offline,
}

impl LocalState {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalState::UpToDate => "uptodate",
            LocalState::Online => "online",
            LocalState::Offline => "offline",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Data-plane address (`host:port`).
    pub data_addr: String,
    /// Whether the cluster manager currently considers the node alive.
    pub alive: bool,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TargetInfo {
    pub id: TargetId,
    pub node: NodeId,
    pub chain: ChainId,
    pub public_state: PublicState,
    pub local_state: LocalState,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChainInfo {
    pub id: ChainId,
    pub version: ChainVersion,
    /// Head first. Offline targets sit at the end.
    pub targets: Vec<TargetId>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChainTable {
    pub id: ChainTableId,
    pub chains: Vec<ChainId>,
}

/// Everything a client or storage server needs to route chunk I/O without asking meta.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct RoutingInfo {
    pub version: RoutingVersion,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub targets: BTreeMap<TargetId, TargetInfo>,
    pub chains: BTreeMap<ChainId, ChainInfo>,
    pub chain_tables: BTreeMap<ChainTableId, ChainTable>,
}

impl RoutingInfo {
    /// Targets of a chain that serve reads, head first.
    pub fn serving_targets(&self, chain: ChainId) -> Vec<&TargetInfo> {
        self.chain_targets(chain)
            .filter(|t| t.public_state.serves_reads())
            .collect()
    }

    /// Targets of a chain that receive writes (serving and syncing), head first. The first
    /// one is the head the client writes to.
    pub fn write_targets(&self, chain: ChainId) -> Vec<&TargetInfo> {
        self.chain_targets(chain)
            .filter(|t| t.public_state.receives_writes())
            .collect()
    }

    fn chain_targets(&self, chain: ChainId) -> impl Iterator<Item = &TargetInfo> {
        self.chains
            .get(&chain)
            .into_iter()
            .flat_map(|c| c.targets.iter())
            .filter_map(|t| self.targets.get(t))
    }

    pub fn node_addr(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.data_addr.as_str())
    }
}

/// A target as its node reports it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TargetReport {
    pub id: TargetId,
    pub local_state: LocalState,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: NodeId,
    pub data_addr: String,
    pub targets: Vec<TargetReport>,
    /// The routing version the node has; the reply carries a newer table if there is one.
    pub routing_version: RoutingVersion,
    /// Garbage-collection tasks the node has finished since its last heartbeat.
    pub gc_done: Vec<GcTask>,
}

/// Remove the chunks of `inode` with index >= `from_index` from `chain`. Given to the node
/// that heads `chain`, which applies it through the chain like a write.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GcTask {
    pub inode: InodeId,
    pub chain: ChainId,
    pub from_index: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Present when the node's routing version is older than the leader's.
    pub routing: Option<RoutingInfo>,
    /// Chunk removals for chains this node heads.
    pub gc: Vec<GcTask>,
}
