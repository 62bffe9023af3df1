//! `pond bench SUITE [--quick]`: starts its own local clusters (or uses `--cluster`) and runs
//! the suites of the `pond-bench` crate, each figure next to a same-run baseline.

use anyhow::{Context, Result, bail};
use pond_client::config::ClusterFile;
use pond_client::meta_client::MetaClient;
use std::path::Path;
use std::process::Command;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Suite: meta | all.
    pub suite: String,
    /// Short runs (CI): fewer operations per client.
    #[arg(long)]
    pub quick: bool,
}

/// A temporary cluster started with `pond up --detach`, stopped on drop.
struct TempCluster {
    dir: tempfile::TempDir,
}

impl TempCluster {
    fn start(meta: u32, storage: u32) -> Result<TempCluster> {
        let dir = tempfile::Builder::new().prefix("pond-bench-").tempdir()?;
        let exe = std::env::current_exe()?;
        let st = Command::new(exe)
            .args(["up", "--detach", "--dir"])
            .arg(dir.path())
            .args(["--meta", &meta.to_string(), "--storage", &storage.to_string()])
            .args(["--targets-per-node", "1", "--replicas", &storage.min(3).max(1).to_string()])
            .status()
            .context("run pond up")?;
        if !st.success() {
            bail!("pond up failed for the benchmark cluster");
        }
        Ok(TempCluster { dir })
    }

    fn cluster_file(&self) -> Result<ClusterFile> {
        Ok(ClusterFile::load(&self.dir.path().join("cluster.toml"))?)
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if let Ok(exe) = std::env::current_exe() {
            let _ = Command::new(exe).args(["down", "--dir"]).arg(self.dir.path()).status();
        }
    }
}

async fn meta_suite(cluster: Option<&Path>, quick: bool) -> Result<()> {
    let opts = pond_bench::meta::MetaBenchOpts {
        clients: vec![1, 4, 16, 64],
        files_per_client: if quick { 40 } else { 400 },
    };
    if let Some(p) = cluster {
        let cf = ClusterFile::load(p)?;
        let c = MetaClient::connect(cf.meta_addrs(), cf.token).map_err(|e| anyhow::anyhow!("{e}"))?;
        return pond_bench::meta::run(&c, "given cluster", &opts).await;
    }
    for replicas in [1u32, 3] {
        let tc = TempCluster::start(replicas, 1)?;
        let cf = tc.cluster_file()?;
        let c = MetaClient::connect(cf.meta_addrs(), cf.token).map_err(|e| anyhow::anyhow!("{e}"))?;
        pond_bench::meta::run(&c, &format!("{replicas} replica(s)"), &opts).await?;
    }
    Ok(())
}

pub fn bench(cluster: Option<&Path>, args: BenchArgs) -> Result<()> {
    super::print_machine();
    let rt = super::runtime()?;
    match args.suite.as_str() {
        "meta" | "all" => rt.block_on(meta_suite(cluster, args.quick)),
        other => bail!("unknown suite {other:?} (have: meta, all)"),
    }
}
