//! `pond-compute`: the near-data executor every storage server hosts (DESIGN.md §5).
//!
//! A task (see `pond_client::dataframe::wire`) names Parquet files in pond, SQL with `{0}`,
//! `{1}` placeholders, and where the result goes. The executor copies the task's input files
//! from pond into a per-task directory (through the client read path, which today prefers any
//! serving replica: the chunk-engine fast path is a documented gap), opens a fresh in-memory
//! DuckDB locked to that directory, runs the SQL with the task's memory limit, thread cap and
//! deadline, and returns an Arrow IPC stream or rows, or writes Parquet into pond with this
//! node as chain head.
//!
//! **Invariant:** this is the only crate that links DuckDB, and only with the `duckdb` feature
//! (prebuilt `libduckdb.so`, see `fetch-duckdb.sh` and docs/compute.md). Without it the crate
//! builds, [`DUCKDB_LINKED`] is false, and [`serve`] and the `local_*` helpers fail loudly.
//! **Invariant:** task SQL never reaches a file outside its task directory, the network, or a
//! DuckDB setting: `enable_external_access = false`, `allowed_directories`, `lock_configuration`.
//! **Invariant:** a failing, slow or memory-hungry task ends as a `TaskFailure` reply; it never
//! panics the process (each task has its own DuckDB instance and memory limit).

#[cfg(feature = "duckdb")]
pub mod engine;
pub mod limits;
#[cfg(feature = "duckdb")]
mod server;

use pond_client::Client;
use pond_client::dataframe::wire::RowSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Whether this build links DuckDB (the `duckdb` feature).
pub const DUCKDB_LINKED: bool = cfg!(feature = "duckdb");

/// What `pond storage` gives its executor.
#[derive(Clone, Debug)]
pub struct ComputeConfig {
    /// Storage node id of the hosting server (reported in task stats, used for placement).
    pub node_id: u32,
    /// Listen address `host:port` (port 0: any free port).
    pub listen: String,
    /// Address clients use; default: the bound listen address.
    pub advertise: Option<String>,
    /// Cluster token every task must carry.
    pub token: String,
    /// Where per-task directories (input copies, spill, output) are created; emptied of old
    /// task directories at start.
    pub work_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error(
        "pond-compute was built without DuckDB: build with `--features pond-compute/duckdb` and \
         DUCKDB_LIB_DIR set (run compute/fetch-duckdb.sh; see docs/compute.md)"
    )]
    NoDuckDb,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A bound executor: know its address before serving.
pub struct Executor {
    #[cfg(feature = "duckdb")]
    listener: tokio::net::TcpListener,
    #[cfg(feature = "duckdb")]
    shared: Arc<server::Shared>,
    addr: SocketAddr,
    advertise: String,
}

/// Where executors announce themselves: one file per storage node holding `host:port`.
/// (Until routing carries executor addresses: see docs/compute.md.)
pub const REGISTRY_DIR: &str = pond_client::dataframe::REGISTRY_DIR;

impl Executor {
    /// Binds the listener and prepares the work directory. `local` is the storage node this
    /// executor lives in: task inputs whose chunks it holds are read from its chunk engines
    /// directly (in-process), the rest through `client`.
    pub async fn bind(
        cfg: ComputeConfig,
        client: Arc<Client>,
        local: Option<Arc<pond_storage::Node>>,
    ) -> Result<Executor, ComputeError> {
        #[cfg(not(feature = "duckdb"))]
        {
            let _ = (cfg, client, local);
            Err(ComputeError::NoDuckDb)
        }
        #[cfg(feature = "duckdb")]
        {
            use anyhow::Context;
            let listener = tokio::net::TcpListener::bind(&cfg.listen)
                .await
                .with_context(|| format!("bind compute listener {}", cfg.listen))?;
            let addr = listener.local_addr().context("local addr")?;
            std::fs::create_dir_all(&cfg.work_dir)
                .with_context(|| format!("create {}", cfg.work_dir.display()))?;
            // Task directories of a previous run are garbage (their tasks died with it).
            for e in std::fs::read_dir(&cfg.work_dir)
                .context("list work dir")?
                .flatten()
            {
                if e.file_name().to_string_lossy().starts_with("task-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let advertise = cfg.advertise.clone().unwrap_or_else(|| addr.to_string());
            let shared = Arc::new(server::Shared {
                node: cfg.node_id,
                token: cfg.token,
                work_dir: cfg.work_dir,
                client,
                local,
                slots: Arc::new(tokio::sync::Semaphore::new(limits::TASKS_MAX)),
            });
            Ok(Executor {
                listener,
                shared,
                addr,
                advertise,
            })
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    /// Writes `REGISTRY_DIR/node-<id>` = the advertised address, creating the registry, so
    /// clients find this executor at once (`run` also does it, lazily).
    pub async fn register(&self) -> Result<(), ComputeError> {
        #[cfg(not(feature = "duckdb"))]
        {
            Err(ComputeError::NoDuckDb)
        }
        #[cfg(feature = "duckdb")]
        {
            use anyhow::Context;
            let c = &self.shared.client;
            c.mkdir_all(REGISTRY_DIR, 0o755)
                .await
                .context("create registry dir")?;
            server::register_if_needed(&self.shared, &self.advertise)
                .await
                .map_err(|e| ComputeError::Internal(anyhow::anyhow!("{e}")))?;
            Ok(())
        }
    }

    /// Serves tasks until `shutdown` resolves, and keeps this executor's address in the
    /// registry whenever the registry exists (a `Session` creates it). Tasks in flight are
    /// dropped with it (their callers see the connection close and retry elsewhere).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        #[cfg(feature = "duckdb")]
        {
            let reg = server::registry_loop(self.shared.clone(), self.advertise.clone());
            tokio::select! {
                _ = server::accept_loop(self.listener, self.shared) => {}
                _ = reg => {}
                _ = shutdown => {}
            }
        }
        #[cfg(not(feature = "duckdb"))]
        {
            shutdown.await
        }
    }
}

/// What `pond storage` calls next to its storage server: connects a client to meta (retrying
/// until meta answers or `shutdown`), binds, and serves until `shutdown`.
pub async fn serve(
    cfg: ComputeConfig,
    cluster: pond_client::config::ClusterFile,
    local: Option<Arc<pond_storage::Node>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ComputeError> {
    if !DUCKDB_LINKED {
        return Err(ComputeError::NoDuckDb);
    }
    tokio::pin!(shutdown);
    let client = loop {
        tokio::select! {
            c = Client::connect(&cluster) => match c {
                Ok(c) => break Arc::new(c),
                Err(e) => tracing::info!(error = %e, "compute: meta not reachable yet; retrying"),
            },
            _ = &mut shutdown => return Ok(()),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(limits::CLIENT_CONNECT_RETRY_MS)) => {}
            _ = &mut shutdown => return Ok(()),
        }
    };
    let ex = Executor::bind(cfg, client, local).await?;
    tracing::info!(addr = %ex.advertise(), "compute executor serving");
    ex.run(shutdown).await;
    Ok(())
}

/// Runs `sql` in an unrestricted single-process DuckDB and returns its rows (for comparing
/// pond's answers with plain DuckDB, and for generating test data).
pub fn local_rows(sql: &str) -> Result<RowSet, ComputeError> {
    #[cfg(feature = "duckdb")]
    {
        engine::local_rows(sql).map_err(|e| ComputeError::Internal(anyhow::anyhow!("{e}")))
    }
    #[cfg(not(feature = "duckdb"))]
    {
        let _ = sql;
        Err(ComputeError::NoDuckDb)
    }
}

/// Runs statements in an unrestricted single-process DuckDB.
pub fn local_exec(sql: &str) -> Result<(), ComputeError> {
    #[cfg(feature = "duckdb")]
    {
        engine::local_exec(sql).map_err(|e| ComputeError::Internal(anyhow::anyhow!("{e}")))
    }
    #[cfg(not(feature = "duckdb"))]
    {
        let _ = sql;
        Err(ComputeError::NoDuckDb)
    }
}
