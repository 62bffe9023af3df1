//! Subcommand implementations.

pub mod admin;
pub mod bench;
pub mod chaos;
pub mod dataset;
pub mod demo;
pub mod fs;
pub mod mount;
pub mod roles;
pub mod sql;
pub mod status;
pub mod up;

use anyhow::{Context, Result};
use pond_client::config::ClusterFile;
use std::path::{Path, PathBuf};

/// Logs go to stderr; `RUST_LOG` selects levels (default: info for pond crates, warn else).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,pond=info,pond_meta=info,pond_storage=info,pond_client=warn,pond_fuse=info,openraft=warn",
        )
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The cluster file to use: `--cluster`/`POND_CLUSTER`, else `./.pond/cluster.toml`.
pub fn cluster_path(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let default = PathBuf::from(".pond/cluster.toml");
    if default.exists() {
        return Ok(default);
    }
    anyhow::bail!(
        "no cluster file: pass --cluster FILE, set POND_CLUSTER, or start one with `pond up`"
    )
}

pub fn load_cluster(given: Option<&Path>) -> Result<ClusterFile> {
    let p = cluster_path(given)?;
    ClusterFile::load(&p).with_context(|| format!("load cluster file {}", p.display()))
}

/// A multi-threaded runtime for the async parts of a command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")
}

/// One line about the machine, printed before benchmark tables.
pub fn print_machine() {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "machine: {cpus} cpus, {} GiB memory, kernel {}",
        mem / (1024 * 1024),
        kernel.trim()
    );
}
