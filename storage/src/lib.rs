//! `pond-storage`: the storage server. Each node runs one chunk engine per target (a directory),
//! serves the data plane (`server`), replicates writes along chains with CRAQ (`node`), refills
//! returning targets (resync, in `node`), verifies and repairs chunk copies (`scrub`), and
//! heartbeats to the metadata service (`heartbeat`), which hands back routing tables and GC
//! tasks.
//!
//! **Invariant:** a write is acknowledged only after every target that receives writes for its
//! chain has it durably: data blocks fsynced, then the chunk record committed.
//! **Invariant:** the data path never calls meta; roles come from the cached routing table,
//! which can also be injected (`Node::set_routing`) — tests run chains without meta.
//! **Invariant:** a committed chunk version is never modified in place (copy-on-write blocks).
//!
//! On-disk format, protocols and the frame format: `docs/storage.md`.

pub mod heartbeat;
pub mod limits;
pub mod node;
pub mod scrub;
pub mod server;
pub mod store;

pub use node::{Node, TargetSetup, TestBug};
pub use store::{ChunkStore, StoreError};

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::engine::Engine;
use store::file::FileBackend;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Completes when the stop flag turns true (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// `pond storage --config FILE`: one storage node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageConfig {
    pub node_id: u32,
    /// Data-plane listen address `host:port` (port 0: any free port).
    pub listen: String,
    /// Address other nodes and clients use; default: the bound listen address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Meta service gRPC addresses.
    pub meta: Vec<String>,
    /// Cluster token (shared secret).
    pub token: String,
    pub targets: Vec<TargetConfig>,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Scrubber read rate per target (0 disables the scrubber).
    #[serde(default = "default_scrub_rate")]
    pub scrub_bytes_per_sec: u64,
    /// Pause between scrub passes.
    #[serde(default = "default_scrub_interval")]
    pub scrub_interval_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetConfig {
    pub id: u64,
    /// Directory of the target (created if missing).
    pub path: PathBuf,
    /// Space the target may use; default: the free space of its filesystem at start.
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
}

fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_scrub_rate() -> u64 {
    limits::SCRUB_BYTES_PER_SEC
}
fn default_scrub_interval() -> u64 {
    limits::SCRUB_PASS_INTERVAL_MS
}

impl StorageConfig {
    pub fn from_toml(s: &str) -> Result<StorageConfig, StorageError> {
        let c: StorageConfig =
            toml::from_str(s).map_err(|e| StorageError::Config(e.to_string()))?;
        if c.targets.is_empty() {
            return Err(StorageError::Config("no targets".into()));
        }
        let mut ids: Vec<u64> = c.targets.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != c.targets.len() {
            return Err(StorageError::Config("duplicate target ids".into()));
        }
        Ok(c)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("bad storage config: {0}")]
    Config(String),
    #[error("open target {target} at {path}: {source}")]
    OpenTarget {
        target: u64,
        path: PathBuf,
        source: StoreError,
    },
    #[error("bind data plane on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Opens a target directory: the chunk engine over `blocks.dat` + `chunks.redb`.
pub fn open_target(cfg: &TargetConfig) -> Result<TargetSetup, StorageError> {
    let wrap = |source| StorageError::OpenTarget {
        target: cfg.id,
        path: cfg.path.clone(),
        source,
    };
    let backend = FileBackend::open(&cfg.path, cfg.capacity_bytes).map_err(wrap)?;
    let engine = Engine::open(backend).map_err(wrap)?;
    Ok(TargetSetup {
        id: pond_proto::TargetId(cfg.id),
        store: Arc::new(engine),
        member_marker: Some(cfg.path.join("member")),
    })
}

/// How to run a node (the parts of `StorageConfig` that are not about opening targets).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub node_id: pond_proto::NodeId,
    pub listen: String,
    pub advertise: Option<String>,
    pub token: String,
    /// Empty: no heartbeats (routing is injected).
    pub meta: Vec<String>,
    pub heartbeat_interval: Duration,
    /// `None` disables the scrubber.
    pub scrub: Option<(u64, Duration)>,
}

/// A running storage node.
pub struct StorageServer {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    /// The advertised data-plane address.
    pub data_addr: String,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl StorageServer {
    pub async fn start(
        opts: ServerOptions,
        targets: Vec<TargetSetup>,
    ) -> Result<StorageServer, StorageError> {
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .map_err(|source| StorageError::Bind {
                addr: opts.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StorageError::Bind {
            addr: opts.listen.clone(),
            source,
        })?;
        let data_addr = opts.advertise.clone().unwrap_or_else(|| addr.to_string());
        let node = Node::new(opts.node_id, opts.token.clone(), targets);
        if let Some(bug) = node.test_bug() {
            tracing::warn!(
                node = %opts.node_id,
                bug = bug.name(),
                "!!! {}={} IS SET: TEST-ONLY FAULT INJECTION, this storage node violates the \
                 replication protocol on purpose (writes are acknowledged before the chain \
                 commits them). Never run it with data you care about. !!!",
                node::TestBug::ENV,
                bug.name()
            );
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let span = tracing::info_span!("storage", node = %opts.node_id);
        tasks
            .spawn(server::serve(node.clone(), listener, stop_rx.clone()).instrument(span.clone()));
        for t in node.targets() {
            // Resync driver: reacts to routing changes, re-checks periodically after failures.
            let (n, t2, mut stop2) = (node.clone(), t.clone(), stop_rx.clone());
            let mut rx = node.subscribe_routing();
            tasks.spawn(
                async move {
                    loop {
                        n.maybe_resync(&t2).await;
                        tokio::select! {
                            _ = crate::stopped(&mut stop2) => return,
                            _ = rx.changed() => {}
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
                .instrument(span.clone()),
            );
            if let Some((rate, pause)) = opts.scrub
                && rate > 0
            {
                let (n, t2, mut stop2) = (node.clone(), t.clone(), stop_rx.clone());
                tasks.spawn(
                    async move {
                        tokio::select! {
                            _ = crate::stopped(&mut stop2) => {}
                            _ = scrub::scrub_loop(n, t2, rate, pause) => {}
                        }
                    }
                    .instrument(span.clone()),
                );
            }
        }
        if !opts.meta.is_empty() {
            let link = heartbeat::MetaLink::new(opts.meta.clone(), opts.token.clone());
            tasks.spawn(
                heartbeat::heartbeat_loop(
                    node.clone(),
                    link,
                    data_addr.clone(),
                    opts.heartbeat_interval,
                    stop_rx,
                )
                .instrument(span.clone()),
            );
        }
        tracing::info!(node = %opts.node_id, %addr, targets = node.targets().count(), "storage node serving");
        Ok(StorageServer {
            node,
            addr,
            data_addr,
            stop,
            tasks,
        })
    }

    /// Stops serving and waits for every task, so the targets are closed when it returns.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        // Repair/GC tasks hold the node briefly; the stores close when the last Arc drops.
        let node = self.node;
        for _ in 0..200 {
            if Arc::strong_count(&node) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Runs a storage node until `shutdown` completes: opens the chunk engines, serves the data
/// plane, heartbeats to meta, resyncs and scrubs, then shuts down cleanly.
pub async fn run(
    cfg: StorageConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let targets = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            cfg.targets
                .iter()
                .map(open_target)
                .collect::<Result<Vec<_>, _>>()
        })
        .await??
    };
    let opts = ServerOptions {
        node_id: pond_proto::NodeId(cfg.node_id),
        listen: cfg.listen.clone(),
        advertise: cfg.advertise.clone(),
        token: cfg.token.clone(),
        meta: cfg.meta.clone(),
        heartbeat_interval: Duration::from_millis(cfg.heartbeat_interval_ms.max(10)),
        scrub: Some((
            cfg.scrub_bytes_per_sec,
            Duration::from_millis(cfg.scrub_interval_ms),
        )),
    };
    let server = StorageServer::start(opts, targets).await?;
    shutdown.await;
    tracing::info!(node = cfg.node_id, "storage node shutting down");
    server.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_toml() {
        let c = StorageConfig::from_toml(
            r#"
            node_id = 3
            listen = "127.0.0.1:0"
            meta = ["127.0.0.1:7000"]
            token = "t"
            [[targets]]
            id = 301
            path = "/tmp/x"
            capacity_bytes = 1000000
            "#,
        )
        .unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.heartbeat_interval_ms, 1000);
        assert_eq!(c.targets[0].capacity_bytes, Some(1_000_000));
        assert!(StorageConfig::from_toml("node_id = 1").is_err());
    }
}
