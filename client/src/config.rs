//! The cluster file (`cluster.toml`): how every command finds a cluster. `pond up` writes it;
//! `--cluster FILE` or `POND_CLUSTER` points at it.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaEndpoint {
    /// Raft node id.
    pub id: u64,
    /// gRPC address `host:port`.
    pub addr: String,
    /// Process id, when `pond up` started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageEndpoint {
    /// Storage node id.
    pub id: u32,
    /// Data-plane address `host:port`.
    pub addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Shared secret carried by every RPC.
    pub token: String,
    pub meta: Vec<MetaEndpoint>,
    #[serde(default)]
    pub storage: Vec<StorageEndpoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read cluster file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parse cluster file {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("cluster file {path} lists no meta replicas")]
    NoMeta { path: String },
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<ClusterFile, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let cf: ClusterFile = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: p.clone(),
            source,
        })?;
        if cf.meta.is_empty() {
            return Err(ConfigError::NoMeta { path: p });
        }
        Ok(cf)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("cluster file serializes")
    }

    pub fn meta_addrs(&self) -> Vec<String> {
        self.meta.iter().map(|m| m.addr.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let cf = ClusterFile {
            token: "t".into(),
            meta: vec![MetaEndpoint {
                id: 1,
                addr: "127.0.0.1:1".into(),
                pid: Some(7),
            }],
            storage: vec![StorageEndpoint {
                id: 1,
                addr: "127.0.0.1:2".into(),
                pid: None,
            }],
        };
        let back: ClusterFile = toml::from_str(&cf.to_toml()).unwrap();
        assert_eq!(back, cf);
    }
}
