//! `pond-meta`: the metadata service. A Raft group (openraft, storage v2) whose log lives in
//! `raftlog/` (append-only segment files, `raft_log`) and whose state machine — the namespace and the cluster map — lives in
//! `state.redb` under the replica's data directory. The leader also runs the cluster manager
//! (heartbeats, target states, chain and routing versions, garbage collection hand-out).
//!
//! **Invariant:** every mutation is one op inside a Raft entry (`types::Batch`), applied
//! deterministically; the leader stamps the time into the entry and apply never reads a clock.
//! **Invariant:** the namespace lives on disk (redb), never wholly in memory; only the small
//! cluster map is cached in memory.
//! **Invariant:** every RPC carries the cluster token, Raft RPCs included.
//!
//! Entry points: `run` (what `pond meta` calls), `MetaNode::start` (tests).
//! On-disk layout and design notes: `docs/meta.md`.

pub mod cluster;
pub mod config;
pub mod lease;
pub mod limits;
pub mod log_store;
pub mod manager;
pub mod namespace;
pub mod network;
pub mod node;
pub mod raft_log;
pub mod server;
pub mod store;
pub mod tables;
pub mod types;

pub use config::{MetaConfig, MetaPeer};
pub use node::{MetaError, MetaNode, run, serve};
