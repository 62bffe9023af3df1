//! Starting and stopping one metadata replica.

use crate::config::MetaConfig;
use crate::lease::Lease;
use crate::limits::*;
use crate::log_store::LogStore;
use crate::manager::Manager;
use crate::network::Network;
use crate::server::{MetaService, Proposer, proposer_loop, reader_loop};
use crate::store::{Shared, StateStore};
use crate::types::{PeerNode, Raft};
use pond_proto::rpc::meta_service::meta_server::MetaServer;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Errors that stop a replica (or keep it from starting).
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("open store in {path}: {source}")]
    Store {
        path: PathBuf,
        source: anyhow::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("grpc server: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// Open the store under `cfg.data_dir`, start Raft and the gRPC server on `cfg.listen`, and
/// return after `shutdown` resolves and everything stopped. (The error is a `MetaError`
/// inside the `anyhow::Error`, for callers that want to match on it.)
pub async fn run(
    cfg: MetaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|source| MetaError::Bind {
            addr: cfg.listen.clone(),
            source,
        })?;
    serve(cfg, listener, shutdown).await?;
    Ok(())
}

/// Like `run`, on an already bound listener (tests bind port 0 first to learn the port).
pub async fn serve(
    cfg: MetaConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetaError> {
    let node = MetaNode::start(cfg, listener).await?;
    shutdown.await;
    node.stop().await
}

/// A running replica. Exposed for in-process tests and tools.
pub struct MetaNode {
    pub id: u64,
    pub addr: SocketAddr,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl MetaNode {
    pub async fn start(cfg: MetaConfig, listener: TcpListener) -> Result<MetaNode, MetaError> {
        if !cfg.peers.iter().any(|p| p.id == cfg.id) {
            return Err(MetaError::Config(format!(
                "peers do not include this node's id {}",
                cfg.id
            )));
        }
        if cfg.token.is_empty() {
            return Err(MetaError::Config("empty cluster token".into()));
        }
        let addr = listener.local_addr().map_err(|source| MetaError::Bind {
            addr: cfg.listen.clone(),
            source,
        })?;
        let store_err = |source: anyhow::Error| MetaError::Store {
            path: cfg.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| store_err(e.into()))?;
        let log = LogStore::open(&cfg.data_dir).map_err(store_err)?;
        let mut sm = StateStore::open(&cfg.data_dir).map_err(store_err)?;
        sm.wait_for_log(log.durable());
        let shared = sm.shared.clone();

        let raft_cfg = openraft::Config {
            cluster_name: "pond-meta".into(),
            heartbeat_interval: RAFT_HEARTBEAT_MS,
            election_timeout_min: RAFT_ELECTION_MIN_MS,
            election_timeout_max: RAFT_ELECTION_MAX_MS,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs.max(1)),
            max_in_snapshot_log_to_keep: LOG_KEEP_AFTER_SNAPSHOT.min(cfg.snapshot_logs),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            install_snapshot_timeout: RAFT_SNAPSHOT_RPC_TIMEOUT.as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| MetaError::Config(e.to_string()))?;
        let network = Network::new(cfg.token.clone());
        let raft = Raft::new(cfg.id, Arc::new(raft_cfg), network, log, sm)
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;

        // Bootstrap: a fresh store on the smallest id initializes the group with every peer.
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        let min_id = cfg
            .peers
            .iter()
            .map(|p| p.id)
            .min()
            .expect("peers include self");
        if !initialized && cfg.id == min_id {
            let members: BTreeMap<u64, PeerNode> = cfg
                .peers
                .iter()
                .map(|p| {
                    (
                        p.id,
                        PeerNode {
                            addr: p.addr.clone(),
                        },
                    )
                })
                .collect();
            tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "initializing raft group");
            raft.initialize(members)
                .await
                .map_err(|e| MetaError::Raft(e.to_string()))?;
        }

        let (ptx, prx) = mpsc::channel(PROPOSE_QUEUE_MAX);
        let (rtx, rrx) = mpsc::channel(READ_QUEUE_MAX);
        let manager = Arc::new(Manager::new(
            cfg.id,
            raft.clone(),
            shared.clone(),
            ptx.clone(),
            Duration::from_millis(cfg.heartbeat_timeout_ms),
        ));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let lease = Arc::new(Lease::default());
        tasks.push(tokio::spawn(crate::lease::watch(
            raft.clone(),
            cfg.id,
            lease.clone(),
        )));
        let proposer = Proposer::new(raft.clone());
        tasks.push(tokio::spawn(proposer_loop(proposer.clone(), prx)));
        tasks.push(tokio::spawn(reader_loop(raft.clone(), shared.clone(), rrx)));
        {
            let manager = manager.clone();
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let mut iv = tokio::time::interval(COLLECTOR_INTERVAL);
                iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = iv.tick() => manager.tick().await,
                        _ = stop.changed() => break,
                    }
                }
            }));
        }
        let svc = MetaService {
            id: cfg.id,
            token: cfg.token.clone(),
            raft: raft.clone(),
            shared: shared.clone(),
            proposer,
            reader: rtx,
            manager,
            lease,
        };
        let max = pond_proto::limits::CONTROL_MESSAGE_BYTES_MAX;
        let service = MetaServer::new(svc)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let mut stop = stop_rx;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.changed().await;
                }),
        );
        tracing::info!(id = cfg.id, %addr, "meta replica started");
        Ok(MetaNode {
            id: cfg.id,
            addr,
            raft,
            shared,
            stop_tx,
            server,
            tasks,
        })
    }

    /// Stop serving, stop Raft, and flush the state machine.
    pub async fn stop(self) -> Result<(), MetaError> {
        let _ = self.stop_tx.send(true);
        let server = self.server.await;
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.raft.shutdown().await;
        // Make non-durable applies durable so the next start replays nothing.
        let db = self.shared.db.clone();
        let _ = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            txn.set_quick_repair(true);
            txn.commit()?;
            Ok(())
        })
        .await;
        tracing::info!(id = self.id, "meta replica stopped");
        match server {
            Ok(r) => r.map_err(MetaError::from),
            Err(e) => Err(MetaError::Raft(format!("server task: {e}"))),
        }
    }
}
