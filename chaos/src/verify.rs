//! End-of-run checks on the cluster's own state: chains serving, namespace consistency, no
//! orphan chunks after garbage collection.

use anyhow::{Context, Result, bail};
use pond_client::client::Client;
use pond_client::net::DataClient;
use pond_proto::cluster::PublicState;
use pond_proto::data::{ChainRef, DataRequest, DataResponse};
use pond_proto::meta::FileType;
use pond_proto::{ChunkId, ErrorCode, InodeId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Waits until every target of every chain is `serving` (and its node alive).
pub async fn wait_all_serving(client: &Client, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let last = match client.refresh_routing().await {
            Ok(r) => {
                let bad: Vec<String> = r
                    .targets
                    .values()
                    .filter(|t| t.public_state != PublicState::Serving)
                    .map(|t| format!("target {} {:?}", t.id.0, t.public_state))
                    .collect();
                if bad.is_empty() && !r.chains.is_empty() {
                    return Ok(());
                }
                bad.join(", ")
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!("after {within:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every dirent names a live inode; a file's link count equals the dirents naming it; a
/// directory's is 2 + its subdirectories. Returns the violations found.
pub async fn namespace(client: &Client) -> Result<Vec<String>> {
    let mut entries: Vec<(String, pond_proto::meta::InodeAttr)> = Vec::new();
    client
        .walk("/", |p, a| entries.push((p.to_string(), a.clone())))
        .await
        .context("walk the namespace")?;
    let mut names: BTreeMap<InodeId, Vec<String>> = BTreeMap::new();
    let mut subdirs: BTreeMap<String, u32> = BTreeMap::new();
    for (p, a) in &entries {
        names.entry(a.inode).or_default().push(p.clone());
        if a.kind == FileType::Dir {
            let parent = p.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            *subdirs.entry(parent.to_string()).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (p, a) in &entries {
        match client.getattr(a.inode).await {
            Ok(live) => {
                let want = if live.kind == FileType::Dir {
                    2 + subdirs.get(p.as_str()).copied().unwrap_or(0)
                } else {
                    names[&a.inode].len() as u32
                };
                if live.nlink != want {
                    out.push(format!(
                        "namespace: {p} (inode {}) has nlink {} but {want} expected from the tree",
                        a.inode.0, live.nlink
                    ));
                }
            }
            Err(e) if e.code() == ErrorCode::NotFound => out.push(format!(
                "namespace: dirent {p} points at inode {} which does not exist",
                a.inode.0
            )),
            Err(e) => bail!("getattr {p}: {e}"),
        }
    }
    let root = client.getattr(InodeId::ROOT).await?;
    let want = 2 + subdirs.get("").copied().unwrap_or(0);
    if root.nlink != want {
        out.push(format!(
            "namespace: / has nlink {} but {want} expected",
            root.nlink
        ));
    }
    Ok(out)
}

/// Inodes that own chunks on any serving target.
async fn chunk_owners(
    client: &Client,
    data: &DataClient,
) -> Result<BTreeMap<InodeId, BTreeSet<String>>> {
    let r = client.refresh_routing().await?;
    let mut owners: BTreeMap<InodeId, BTreeSet<String>> = BTreeMap::new();
    for chain in r.chains.values() {
        for t in &chain.targets {
            let Some(ti) = r.targets.get(t) else { continue };
            let Some(node) = r.nodes.get(&ti.node) else {
                continue;
            };
            let at = ChainRef {
                chain: chain.id,
                chain_version: chain.version,
                target: *t,
            };
            let mut after: Option<ChunkId> = None;
            loop {
                let req = DataRequest::ListChunks {
                    at,
                    after,
                    limit: 4096,
                };
                let (resp, _) = data
                    .call(&node.data_addr, req, bytes::Bytes::new())
                    .await
                    .map_err(|e| anyhow::anyhow!("list chunks of target {}: {e}", t.0))?;
                let DataResponse::ChunkList { chunks, more } = resp else {
                    bail!("unexpected reply to ListChunks from target {}", t.0);
                };
                after = chunks.last().map(|c| c.chunk).or(after);
                for c in chunks {
                    owners
                        .entry(c.chunk.inode())
                        .or_default()
                        .insert(format!("target {}", t.0));
                }
                if !more {
                    break;
                }
            }
        }
    }
    Ok(owners)
}

/// Every chunk on every target belongs to a live inode, once garbage collection has had
/// `within` to catch up. Returns the violations found.
pub async fn orphan_chunks(client: &Client, token: &str, within: Duration) -> Result<Vec<String>> {
    let data = DataClient::tcp(token.to_string(), client.client_id());
    let deadline = Instant::now() + within;
    loop {
        // A routing change between reading the table and listing (a resync finishing) makes
        // a target refuse the stale chain version: list again, within the deadline.
        let owners = match chunk_owners(client, &data).await {
            Ok(o) => o,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "listing chunks; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut orphans = Vec::new();
        for (inode, targets) in &owners {
            match client.getattr(*inode).await {
                Ok(_) => {}
                Err(e) if e.code() == ErrorCode::NotFound => orphans.push(format!(
                    "orphan chunks of deleted inode {} on {:?}",
                    inode.0, targets
                )),
                Err(e) => bail!("getattr inode {}: {e}", inode.0),
            }
        }
        if orphans.is_empty() {
            return Ok(Vec::new());
        }
        if Instant::now() > deadline {
            return Ok(orphans
                .into_iter()
                .map(|o| format!("gc: {o} still present after {within:?}"))
                .collect());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
