//! Raft type configuration and the log-entry payload.
//!
//! A log entry carries a `Batch`: the leader's clock reading (so apply never reads a clock)
//! and many operations, each answered separately. These types are persisted in the Raft log
//! (postcard), so changing them needs a format-version bump (`store::FORMAT_VERSION`).

use pond_proto::cluster::{GcTask, LocalState, TargetReport};
use pond_proto::meta::{ClusterReply, MetaReply, MetaRequest, Timestamp};
use pond_proto::{ClientId, NodeId, PondError, RequestId, TargetId};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// Node description in the Raft membership: the gRPC address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub addr: String,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Batch,
        R = BatchReply,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

// Silence an unused-import lint when the default snapshot type changes.
#[allow(dead_code)]
type _Unused = Cursor<Vec<u8>>;

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type StorageError = openraft::StorageError<u64>;

/// One Raft entry's payload.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Batch {
    /// Stamped by the leader when the batch was cut.
    pub now: Timestamp,
    pub ops: Vec<Op>,
}

/// (client, request) identifying a retried write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub client: ClientId,
    pub request: RequestId,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    Meta {
        origin: Option<Origin>,
        req: MetaRequest,
    },
    Cluster(ClusterCmd),
}

/// Cluster-map mutations, proposed by the leader's cluster manager.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClusterCmd {
    /// A node's first heartbeat, or its address or target set changed.
    Register {
        node: NodeId,
        data_addr: String,
        targets: Vec<TargetReport>,
    },
    /// Local states (and optionally usage) reported by a live node; marks the node alive.
    Report {
        node: NodeId,
        targets: Vec<TargetReport>,
        usage: bool,
    },
    /// The node passed the heartbeat timeout: all its targets are locally offline.
    NodeDown {
        node: NodeId,
    },
    BootstrapChains {
        replicas: u32,
    },
    GcDone {
        tasks: Vec<GcTask>,
    },
    /// Detach up to `TRASH_STEP_ENTRIES_MAX` entries of removed trees.
    ExpandTrash,
    /// End client leases whose deadline passed at the entry's time (up to
    /// `LEASE_EXPIRE_CLIENTS_MAX`), dropping their sessions.
    ExpireLeases,
}

/// A target's state as the cluster manager records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reported {
    pub target: TargetId,
    pub local: LocalState,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OpReply {
    Meta(MetaReply),
    Cluster(ClusterReply),
    Done,
}

/// One result per op of the batch, in order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BatchReply(pub Vec<Result<OpReply, PondError>>);
