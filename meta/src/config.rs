//! Configuration of one metadata replica (loaded from TOML by the `pond` binary).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One member of the initial Raft membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaPeer {
    pub id: u64,
    /// gRPC address (`host:port`) other replicas and clients use.
    pub addr: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetaConfig {
    /// This replica's Raft node id (unique, non-zero is not required).
    pub id: u64,
    /// gRPC listen address (`host:port`); port 0 picks a free port (see `run_with_ready`).
    pub listen: String,
    /// Directory holding `log.redb`, `state.redb` and `snapshots/`.
    pub data_dir: PathBuf,
    /// Shared cluster token every RPC must carry.
    pub token: String,
    /// Full initial membership, including this replica.
    pub peers: Vec<MetaPeer>,
    /// A storage node silent longer than this has its targets marked offline.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
    /// Build a snapshot and purge the log after this many entries.
    #[serde(default = "default_snapshot_logs")]
    pub snapshot_logs: u64,
}

fn default_heartbeat_timeout_ms() -> u64 {
    5000
}

fn default_snapshot_logs() -> u64 {
    10_000
}

impl MetaConfig {
    /// The address of peer `id`, if it is a member.
    pub fn peer_addr(&self, id: u64) -> Option<&str> {
        self.peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.addr.as_str())
    }
}
