//! `pond meta` and `pond storage`: run one role from its TOML config until SIGINT/SIGTERM.

use anyhow::{Context, Result};
use std::path::Path;

fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("read config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutdown signal received");
}

pub fn run_meta(config: &Path) -> Result<()> {
    let cfg: pond_meta::MetaConfig = read_config(config)?;
    super::runtime()?.block_on(pond_meta::run(cfg, shutdown_signal()))
}

/// Optional `[compute]` table of a storage config (read beside `StorageConfig`, which ignores it).
#[derive(Debug, Default, serde::Deserialize)]
struct ComputeToml {
    #[serde(default)]
    compute: ComputeSection,
}

#[derive(Debug, serde::Deserialize)]
struct ComputeSection {
    /// Host the DuckDB executor (only in builds with the `duckdb` feature).
    #[serde(default = "yes")]
    enabled: bool,
    /// Executor listen address; default: the data-plane host, any free port.
    #[serde(default)]
    listen: Option<String>,
    /// Per-task directories; default: `compute/` next to the first target.
    #[serde(default)]
    work_dir: Option<std::path::PathBuf>,
}

impl Default for ComputeSection {
    fn default() -> Self {
        ComputeSection {
            enabled: true,
            listen: None,
            work_dir: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// `pond storage`: the storage server and, when this binary links DuckDB, the near-data
/// executor next to it (docs/compute.md). The executor never blocks the data path: it connects
/// to meta in the background and a failure of it is logged, not fatal.
pub fn run_storage(config: &Path) -> Result<()> {
    let cfg: pond_storage::StorageConfig = read_config(config)?;
    let compute: ComputeToml = read_config(config)?;
    super::runtime()?.block_on(async move {
        if !(pond_compute::DUCKDB_LINKED && compute.compute.enabled) {
            return pond_storage::run(cfg, shutdown_signal()).await;
        }
        let targets = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || {
                cfg.targets
                    .iter()
                    .map(pond_storage::open_target)
                    .collect::<Result<Vec<_>, _>>()
            })
            .await??
        };
        let opts = pond_storage::ServerOptions {
            node_id: pond_proto::NodeId(cfg.node_id),
            listen: cfg.listen.clone(),
            advertise: cfg.advertise.clone(),
            token: cfg.token.clone(),
            meta: cfg.meta.clone(),
            heartbeat_interval: std::time::Duration::from_millis(cfg.heartbeat_interval_ms.max(10)),
            scrub: Some((
                cfg.scrub_bytes_per_sec,
                std::time::Duration::from_millis(cfg.scrub_interval_ms),
            )),
        };
        let server = pond_storage::StorageServer::start(opts, targets).await?;
        let host = server.addr.ip().to_string();
        let work_dir = compute.compute.work_dir.clone().unwrap_or_else(|| {
            cfg.targets
                .first()
                .and_then(|t| t.path.parent().map(|p| p.join("compute")))
                .unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("pond-compute-{}", cfg.node_id))
                })
        });
        let ccfg = pond_compute::ComputeConfig {
            node_id: cfg.node_id,
            listen: compute
                .compute
                .listen
                .clone()
                .unwrap_or_else(|| format!("{host}:0")),
            advertise: None,
            token: cfg.token.clone(),
            work_dir,
        };
        let cluster = pond_client::config::ClusterFile {
            token: cfg.token.clone(),
            meta: cfg
                .meta
                .iter()
                .enumerate()
                .map(|(i, a)| pond_client::config::MetaEndpoint {
                    id: i as u64 + 1,
                    addr: a.clone(),
                    pid: None,
                })
                .collect(),
            storage: Vec::new(),
        };
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let node = server.node.clone();
        let exec = tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            if let Err(e) = pond_compute::serve(ccfg, cluster, Some(node), stop).await {
                tracing::error!(error = %e, "compute executor stopped; storage keeps serving");
            }
        });
        shutdown_signal().await;
        tracing::info!(node = cfg.node_id, "storage node shutting down");
        let _ = stop_tx.send(true);
        let _ = exec.await;
        server.stop().await;
        Ok(())
    })
}
