//! `pond status [--json]`: meta members, storage nodes with their targets, chains.

use anyhow::{Context, Result};
use pond_client::config::ClusterFile;
use pond_client::meta_client::MetaClient;
use pond_proto::RoutingVersion;
use pond_proto::cluster::RoutingInfo;
use pond_proto::meta::{ClusterReply, ClusterRequest, MetaMember};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub struct Snapshot {
    pub leader: Option<u64>,
    pub members: Vec<MetaMember>,
    /// Per member: its last applied log index if it answered `MetaStatus` itself within
    /// `PROBE_DEADLINE`, `None` if it did not (down, or cut off). Membership alone cannot say:
    /// a dead replica stays a member.
    pub answered: BTreeMap<u64, Option<u64>>,
    pub routing: RoutingInfo,
}

/// How long `status` waits for each meta member's own answer.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// Asks the member at `addr` itself (no failover to the others) for its status.
async fn probe(addr: &str, token: &str) -> Option<u64> {
    let c = MetaClient::connect(vec![addr.to_string()], token.to_string()).ok()?;
    match tokio::time::timeout(PROBE_DEADLINE, c.cluster(ClusterRequest::MetaStatus)).await {
        Ok(Ok(ClusterReply::MetaStatus { last_applied, .. })) => Some(last_applied),
        _ => None,
    }
}

pub async fn fetch(client: &MetaClient, token: &str) -> Result<Snapshot> {
    let (leader, members) = match client
        .cluster(ClusterRequest::MetaStatus)
        .await
        .context("ask meta for its status")?
    {
        ClusterReply::MetaStatus {
            leader, members, ..
        } => (leader, members),
        other => anyhow::bail!("unexpected reply to MetaStatus: {other:?}"),
    };
    let routing = match client
        .cluster(ClusterRequest::GetRouting {
            have: RoutingVersion(0),
        })
        .await
        .context("fetch the routing table")?
    {
        ClusterReply::Routing(r) => r.unwrap_or_default(),
        other => anyhow::bail!("unexpected reply to GetRouting: {other:?}"),
    };
    let probes: Vec<_> = members
        .iter()
        .map(|m| {
            let (addr, token) = (m.addr.clone(), token.to_string());
            (
                m.id,
                tokio::spawn(async move { probe(&addr, &token).await }),
            )
        })
        .collect();
    let mut answered = BTreeMap::new();
    for (id, p) in probes {
        answered.insert(id, p.await.ok().flatten());
    }
    Ok(Snapshot {
        leader,
        members,
        answered,
        routing,
    })
}

/// "leader", "follower", or "down" for a member that did not answer for itself.
fn role(s: &Snapshot, id: u64) -> &'static str {
    match s.answered.get(&id) {
        Some(None) => "down",
        _ if s.leader == Some(id) => "leader",
        _ => "follower",
    }
}

pub fn to_json(cf: &ClusterFile, s: &Snapshot) -> Value {
    let meta: Vec<Value> = s
        .members
        .iter()
        .map(|m| {
            let pid = cf.meta.iter().find(|e| e.id == m.id).and_then(|e| e.pid);
            json!({
                "id": m.id,
                "addr": m.addr,
                "role": role(s, m.id),
                "last_applied": s.answered.get(&m.id).copied().flatten(),
                "pid": pid,
            })
        })
        .collect();
    let storage: Vec<Value> = s
        .routing
        .nodes
        .values()
        .map(|n| {
            let pid = cf.storage.iter().find(|e| e.id == n.id.0).and_then(|e| e.pid);
            let targets: Vec<Value> = s
                .routing
                .targets
                .values()
                .filter(|t| t.node == n.id)
                .map(|t| {
                    json!({
                        "id": t.id.0,
                        "chain": t.chain.0,
                        "public_state": t.public_state.as_str(),
                        "local_state": t.local_state.as_str(),
                        "used_bytes": t.used_bytes,
                        "capacity_bytes": t.capacity_bytes,
                    })
                })
                .collect();
            json!({ "id": n.id.0, "addr": n.data_addr, "alive": n.alive, "pid": pid, "targets": targets })
        })
        .collect();
    let chains: Vec<Value> = s
        .routing
        .chains
        .values()
        .map(|c| {
            json!({
                "id": c.id.0,
                "version": c.version.0,
                "targets": c.targets.iter().map(|t| t.0).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "routing_version": s.routing.version.0,
        "meta": meta,
        "storage": storage,
        "chains": chains,
    })
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub fn print_table(cf: &ClusterFile, s: &Snapshot) {
    println!(
        "meta (leader: {})",
        s.leader.map(|l| l.to_string()).unwrap_or("none".into())
    );
    for m in &s.members {
        let pid = cf.meta.iter().find(|e| e.id == m.id).and_then(|e| e.pid);
        let applied = match s.answered.get(&m.id).copied().flatten() {
            Some(a) => format!("applied {a}"),
            None => format!("no answer in {} s", PROBE_DEADLINE.as_secs()),
        };
        println!(
            "  {:>3}  {:<21} {:<8} {:<20} {}",
            m.id,
            m.addr,
            match role(s, m.id) {
                "down" => "DOWN",
                r => r,
            },
            applied,
            pid.map(|p| format!("pid {p}")).unwrap_or_default()
        );
    }
    let (mut used, mut cap) = (0u64, 0u64);
    println!("storage ({} nodes)", s.routing.nodes.len());
    for n in s.routing.nodes.values() {
        println!(
            "  {:>3}  {:<21} {}",
            n.id.0,
            n.data_addr,
            if n.alive { "alive" } else { "DOWN" }
        );
        for t in s.routing.targets.values().filter(|t| t.node == n.id) {
            used += t.used_bytes;
            cap += t.capacity_bytes;
            println!(
                "       target {:>6}  chain {:>4}  {:<8} ({:<8})  {} / {}",
                t.id.0,
                t.chain.0,
                t.public_state.as_str(),
                t.local_state.as_str(),
                human_bytes(t.used_bytes),
                human_bytes(t.capacity_bytes)
            );
        }
    }
    println!(
        "chains ({}, routing version {})",
        s.routing.chains.len(),
        s.routing.version.0
    );
    for c in s.routing.chains.values() {
        let names: Vec<String> = c
            .targets
            .iter()
            .map(|t| {
                let st = s
                    .routing
                    .targets
                    .get(t)
                    .map(|x| x.public_state.as_str())
                    .unwrap_or("?");
                format!("{}:{st}", t.0)
            })
            .collect();
        println!(
            "  {:>4}  v{:<4} {}",
            c.id.0,
            c.version.0,
            names.join(" -> ")
        );
    }
    println!(
        "capacity: {} used of {}",
        human_bytes(used),
        human_bytes(cap)
    );
}

pub fn status(cluster: Option<&Path>, json_out: bool) -> Result<()> {
    let cf = super::load_cluster(cluster)?;
    let rt = super::runtime()?;
    let snap = rt.block_on(async {
        let client = MetaClient::connect(cf.meta_addrs(), cf.token.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        fetch(&client, &cf.token).await
    });
    let snap = match snap {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "pond: cannot reach the cluster at {}: {e:#}",
                cf.meta_addrs().join(", ")
            );
            std::process::exit(2);
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&to_json(&cf, &snap))?);
    } else {
        print_table(&cf, &snap);
    }
    Ok(())
}
