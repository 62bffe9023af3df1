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

pub fn run_storage(config: &Path) -> Result<()> {
    let cfg: pond_storage::StorageConfig = read_config(config)?;
    super::runtime()?.block_on(pond_storage::run(cfg, shutdown_signal()))
}
