//! The seeded fault schedule and its execution against a [`pond_tests::Cluster`].
//!
//! The schedule (kinds, victims, durations, gaps) is a pure function of the seed, so a seed
//! names a run; which process is the meta leader or which nodes share a chain is looked up
//! when the fault fires. Every fault undoes itself (restart, SIGCONT) before the next one
//! starts, so when the schedule ends every process runs again. All waits use the monotonic
//! clock (tokio timers), never the wall clock.

use crate::netns::{self, Net, role_name};
use anyhow::{Context, Result, bail};
use pond_client::client::Client;
use pond_proto::cluster::RoutingInfo;
use pond_tests::{Cluster, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a process, restart it after `down`.
    Kill { role: Role, down: Duration },
    /// SIGKILL whichever meta replica leads, restart it after `down`.
    KillLeader { down: Duration },
    /// SIGKILL the nodes of two targets of one chain, the second `gap` after the first;
    /// restart both after `down`.
    KillChainPair {
        pick: u64,
        gap: Duration,
        down: Duration,
    },
    /// SIGSTOP a process, SIGCONT it after `frozen` (a node that wakes up late).
    Pause { role: Role, frozen: Duration },
    /// Flip bytes in `regions` used 64 KiB slots of one target's `blocks.dat`.
    Corrupt { node: u32, pick: u64, regions: u32 },
    /// Restart a storage node with its targets' capacity just above their use, write a big
    /// file until a target refuses with NoSpace, then unlink it.
    Fill { node: u32 },
    // Network faults (`--netns` only; see `netns.rs`). Each heals after `down`.
    /// Set a node's bridge port down: cut from every other node and the clients.
    Isolate { role: Role, down: Duration },
    /// Split the meta replicas into a minority (with the leader if `leader_side`, else
    /// followers picked by `pick`) and the majority; meta↔meta traffic across the split is
    /// dropped, clients and storage still reach both sides.
    MetaSplit {
        leader_side: bool,
        pick: u64,
        down: Duration,
    },
    /// Cut the link between two neighbours of one chain (by `pick`); both still reach meta
    /// and the clients.
    ChainLinkCut { pick: u64, down: Duration },
    /// Cut a storage node from every meta replica (no heartbeats) while clients and its
    /// peers still reach it.
    MetaCut { node: u32, down: Duration },
    /// Drop `percent` % of a node's packets in each direction, at random.
    Lossy {
        role: Role,
        percent: u32,
        down: Duration,
    },
    /// Rate-limit both directions of a node's link (`tc tbf`): `kbit` kbit/s, packets that
    /// would queue longer than `latency_ms` dropped.
    Slow {
        role: Role,
        kbit: u32,
        latency_ms: u32,
        down: Duration,
    },
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill9+restart",
            Fault::KillLeader { .. } => "kill9 meta leader",
            Fault::KillChainPair { .. } => "kill9 two nodes of a chain",
            Fault::Pause { .. } => "SIGSTOP/SIGCONT",
            Fault::Corrupt { .. } => "corrupt chunk file",
            Fault::Fill { .. } => "fill a target",
            Fault::Isolate { .. } => "net: isolate a node",
            Fault::MetaSplit { .. } => "net: split meta minority/majority",
            Fault::ChainLinkCut { .. } => "net: cut a chain link",
            Fault::MetaCut { .. } => "net: cut a storage node from meta",
            Fault::Lossy { .. } => "net: packet loss",
            Fault::Slow { .. } => "net: slow link",
        }
    }

    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Fault::Isolate { .. }
                | Fault::MetaSplit { .. }
                | Fault::ChainLinkCut { .. }
                | Fault::MetaCut { .. }
                | Fault::Lossy { .. }
                | Fault::Slow { .. }
        )
    }
}

/// A fault and the pause before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub after: Duration,
    pub fault: Fault,
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..=hi))
}

/// The schedule for `seed`: more faults than fit in `total`. Outages range up to 9 s, past
/// the cluster manager's 5 s heartbeat timeout, so some of them cause failovers and resyncs.
/// Every kind appears at least once, the fill exactly once.
pub fn schedule(seed: u64, total: Duration, meta: u32, storage: u32) -> Vec<Scheduled> {
    let mut rng = StdRng::seed_from_u64(seed);
    // The first rounds go through every kind once (in a seeded order), then random picks.
    let mut first: Vec<u32> = (0..6).collect();
    shuffle(&mut rng, &mut first);
    picks(rng, first, 6, total, meta, storage)
}

fn shuffle(rng: &mut StdRng, v: &mut [u32]) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

/// The schedule of `pond chaos --netns` for `seed`: the six network kinds first (in a seeded
/// order), then the six process kinds of [`schedule`], then random picks among all but the
/// fill. A separate stream so that [`schedule`] (runs without `--netns`) stays exactly what
/// it was for every seed.
pub fn schedule_netns(seed: u64, total: Duration, meta: u32, storage: u32) -> Vec<Scheduled> {
    // A different stream than `schedule` for the same seed, by design: its own kinds.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_746e_7300_0000);
    let mut net: Vec<u32> = (6..12).collect();
    shuffle(&mut rng, &mut net);
    let mut process: Vec<u32> = (0..6).collect();
    shuffle(&mut rng, &mut process);
    let first: Vec<u32> = net.into_iter().chain(process).collect();
    picks(rng, first, 12, total, meta, storage)
}

/// Faults until `total` is used up: the kinds in `first`, then random kinds below `kinds`
/// except the fill (there is one fill per run), each followed by a 1–4 s pause.
fn picks(
    mut rng: StdRng,
    first: Vec<u32>,
    kinds: u32,
    total: Duration,
    meta: u32,
    storage: u32,
) -> Vec<Scheduled> {
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    let mut k = 0usize;
    while t < total {
        let kind = if k < first.len() {
            first[k]
        } else {
            loop {
                let c = rng.random_range(0..kinds);
                if c != 5 {
                    break c;
                }
            }
        };
        k += 1;
        let fault = fault_of(kind, &mut rng, meta, storage);
        let after = ms(&mut rng, 1000, 4000);
        // A lower bound of a fault's length: the run stops the schedule at its duration.
        t += after + Duration::from_secs(1);
        out.push(Scheduled { after, fault });
    }
    out
}

/// Fault kind `kind` (0–5 process faults, 5 the fill; 6–11 network faults) with its
/// parameters drawn from `rng`.
fn fault_of(kind: u32, rng: &mut StdRng, meta: u32, storage: u32) -> Fault {
    let any_role = |rng: &mut StdRng| {
        if rng.random_bool(0.35) {
            Role::Meta(rng.random_range(1..=meta as u64))
        } else {
            Role::Storage(rng.random_range(1..=storage))
        }
    };
    match kind {
        0 => Fault::Kill {
            role: any_role(rng),
            down: ms(rng, 500, 9000),
        },
        1 => Fault::KillLeader {
            down: ms(rng, 500, 8000),
        },
        2 => Fault::KillChainPair {
            pick: rng.random(),
            gap: ms(rng, 200, 2000),
            down: ms(rng, 1000, 8000),
        },
        3 => Fault::Pause {
            role: any_role(rng),
            frozen: ms(rng, 500, 9000),
        },
        4 => Fault::Corrupt {
            node: rng.random_range(1..=storage),
            pick: rng.random(),
            regions: rng.random_range(1..=3),
        },
        5 => Fault::Fill {
            node: rng.random_range(1..=storage),
        },
        6 => Fault::Isolate {
            role: any_role(rng),
            down: ms(rng, 1000, 9000),
        },
        7 => Fault::MetaSplit {
            leader_side: rng.random_bool(0.6),
            pick: rng.random(),
            down: ms(rng, 2000, 10000),
        },
        8 => Fault::ChainLinkCut {
            pick: rng.random(),
            down: ms(rng, 1000, 9000),
        },
        9 => Fault::MetaCut {
            node: rng.random_range(1..=storage),
            down: ms(rng, 1000, 9000),
        },
        10 => Fault::Lossy {
            role: any_role(rng),
            percent: rng.random_range(5..=40),
            down: ms(rng, 3000, 10000),
        },
        _ => Fault::Slow {
            role: any_role(rng),
            kbit: rng.random_range(256..=4096),
            latency_ms: rng.random_range(100..=1000),
            down: ms(rng, 3000, 10000),
        },
    }
}

/// What happened, for the report.
#[derive(Clone, Debug)]
pub struct Injected {
    pub at_s: f64,
    pub kind: &'static str,
    pub what: String,
}

pub struct Executor<'a> {
    pub cluster: &'a mut Cluster,
    pub client: Client,
    pub storage_nodes: u32,
    pub meta_nodes: u32,
    /// The namespaces of a `--netns` run (network faults need them).
    pub net: Option<&'a Net>,
    pub t0: std::time::Instant,
    pub log: Vec<Injected>,
    /// Storage nodes whose targets got a capacity limit (left in place for the run).
    pub capped: Vec<u32>,
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Executor<'_> {
    fn note(&mut self, kind: &'static str, what: String) {
        let at_s = self.t0.elapsed().as_secs_f64();
        println!("chaos: [{at_s:7.2}s] {kind}: {what}");
        self.log.push(Injected { at_s, kind, what });
    }

    async fn kill_restart(&mut self, role: Role, down: Duration) -> Result<()> {
        blocking(|| self.cluster.kill9(role))?;
        tokio::time::sleep(down).await;
        blocking(|| self.cluster.restart(role))
    }

    pub async fn apply(&mut self, fault: &Fault) -> Result<()> {
        match fault {
            Fault::Kill { role, down } => {
                self.note(fault.kind(), format!("{role:?} down for {down:?}"));
                self.kill_restart(*role, *down).await?;
            }
            Fault::KillLeader { down } => {
                let l = self.cluster.leader(Duration::from_secs(30)).await?;
                self.note(fault.kind(), format!("leader meta-{l} down for {down:?}"));
                self.kill_restart(Role::Meta(l), *down).await?;
            }
            Fault::KillChainPair { pick, gap, down } => {
                let routing = self.client.refresh_routing().await?;
                let (chain, a, b) = chain_pair(&routing, *pick).context("pick a chain")?;
                self.note(
                    fault.kind(),
                    format!("chain {chain}: storage-{a}, then storage-{b} {gap:?} later, both down for {down:?}"),
                );
                blocking(|| self.cluster.kill9(Role::Storage(a)))?;
                tokio::time::sleep(*gap).await;
                blocking(|| self.cluster.kill9(Role::Storage(b)))?;
                tokio::time::sleep(*down).await;
                blocking(|| self.cluster.restart(Role::Storage(a)))?;
                blocking(|| self.cluster.restart(Role::Storage(b)))?;
            }
            Fault::Pause { role, frozen } => {
                self.note(fault.kind(), format!("{role:?} frozen for {frozen:?}"));
                self.cluster.pause(*role)?;
                tokio::time::sleep(*frozen).await;
                self.cluster.resume(*role)?;
            }
            Fault::Corrupt {
                node,
                pick,
                regions,
            } => {
                let what = corrupt(self.cluster.path(), *node, *pick, *regions)?;
                self.note(fault.kind(), what);
            }
            Fault::Fill { node } => {
                let what = self.fill(*node).await?;
                self.note(fault.kind(), what);
            }
            _ => {
                let net = self
                    .net
                    .context("a network fault needs --netns (namespaces)")?;
                let r = self.network(net, fault).await;
                if r.is_err() {
                    // A fault that failed half-way must not outlive its turn.
                    let undone = blocking(|| net.heal_all());
                    if !undone.is_empty() {
                        println!("chaos: healed after a failed network fault: {undone:?}");
                    }
                }
                r?;
            }
        }
        Ok(())
    }

    /// Applies a network fault, waits its duration, heals it.
    async fn network(&mut self, net: &Net, fault: &Fault) -> Result<()> {
        let kind = fault.kind();
        match fault {
            Fault::Isolate { role, down } => {
                self.note(kind, format!("{} cut off for {down:?}", role_name(*role)));
                blocking(|| net.set_link(*role, false))?;
                tokio::time::sleep(*down).await;
                blocking(|| net.set_link(*role, true))?;
            }
            Fault::MetaSplit {
                leader_side,
                pick,
                down,
            } => {
                let leader = self.cluster.leader(Duration::from_secs(30)).await?;
                let (minority, majority) = meta_split(self.meta_nodes, leader, *leader_side, *pick);
                self.note(
                    kind,
                    format!(
                        "meta {minority:?} | {majority:?} (leader meta-{leader} on the {} side) for {down:?}",
                        if minority.contains(&leader) {
                            "minority"
                        } else {
                            "majority"
                        }
                    ),
                );
                let addrs = |ids: &[u64]| -> Vec<_> {
                    ids.iter().map(|&i| netns::addr(Role::Meta(i))).collect()
                };
                let (min_a, maj_a) = (addrs(&minority), addrs(&majority));
                blocking(|| -> Result<()> {
                    for &m in &minority {
                        net.block(Role::Meta(m), &maj_a)?;
                    }
                    for &m in &majority {
                        net.block(Role::Meta(m), &min_a)?;
                    }
                    Ok(())
                })?;
                tokio::time::sleep(*down).await;
                blocking(|| -> Result<()> {
                    for m in minority.iter().chain(&majority) {
                        net.unblock(Role::Meta(*m))?;
                    }
                    Ok(())
                })?;
            }
            Fault::ChainLinkCut { pick, down } => {
                let routing = self.client.refresh_routing().await?;
                let (chain, a, b) = chain_link(&routing, *pick).context("pick a chain link")?;
                self.note(
                    kind,
                    format!("chain {chain}: link storage-{a} <-> storage-{b} cut for {down:?}"),
                );
                let (ra, rb) = (Role::Storage(a), Role::Storage(b));
                blocking(|| -> Result<()> {
                    net.block(ra, &[netns::addr(rb)])?;
                    net.block(rb, &[netns::addr(ra)])?;
                    Ok(())
                })?;
                tokio::time::sleep(*down).await;
                blocking(|| -> Result<()> {
                    net.unblock(ra)?;
                    net.unblock(rb)?;
                    Ok(())
                })?;
            }
            Fault::MetaCut { node, down } => {
                self.note(
                    kind,
                    format!("storage-{node} cut from every meta replica for {down:?}"),
                );
                let metas: Vec<_> = (1..=self.meta_nodes as u64)
                    .map(|i| netns::addr(Role::Meta(i)))
                    .collect();
                let r = Role::Storage(*node);
                blocking(|| net.block(r, &metas))?;
                tokio::time::sleep(*down).await;
                blocking(|| net.unblock(r))?;
            }
            Fault::Lossy {
                role,
                percent,
                down,
            } => {
                self.note(
                    kind,
                    format!(
                        "{} drops {percent}% of its packets for {down:?}",
                        role_name(*role)
                    ),
                );
                blocking(|| net.lossy(*role, *percent))?;
                tokio::time::sleep(*down).await;
                blocking(|| net.unblock(*role))?;
            }
            Fault::Slow {
                role,
                kbit,
                latency_ms,
                down,
            } => {
                self.note(
                    kind,
                    format!(
                        "{} link limited to {kbit} kbit/s, {latency_ms} ms queue, for {down:?}",
                        role_name(*role)
                    ),
                );
                blocking(|| net.slow(*role, *kbit, *latency_ms))?;
                tokio::time::sleep(*down).await;
                blocking(|| net.unslow(*role))?;
            }
            other => bail!("not a network fault: {other:?}"),
        }
        Ok(())
    }

    async fn fill(&mut self, node: u32) -> Result<String> {
        let cfg_path = self
            .cluster
            .path()
            .join(format!("storage-{node}/storage.toml"));
        blocking(|| self.cluster.kill9(Role::Storage(node)))?;
        let text = std::fs::read_to_string(&cfg_path)?;
        let mut cfg: toml::Value = toml::from_str(&text)?;
        let targets = cfg
            .get_mut("targets")
            .and_then(|t| t.as_array_mut())
            .context("storage config has no targets")?;
        const HEADROOM: u64 = 8 << 20;
        for t in targets.iter_mut() {
            let path = PathBuf::from(t.get("path").and_then(|p| p.as_str()).unwrap_or(""));
            let used = std::fs::metadata(path.join("blocks.dat"))
                .map(|m| m.len())
                .unwrap_or(0);
            t.as_table_mut().context("target entry")?.insert(
                "capacity_bytes".into(),
                toml::Value::Integer((used + HEADROOM) as i64),
            );
        }
        std::fs::write(&cfg_path, toml::to_string_pretty(&cfg)?)?;
        blocking(|| self.cluster.restart(Role::Storage(node)))?;
        self.capped.push(node);
        // Write until refused (NoSpace) or a bound, then remove the file.
        let path = "/chaos/fill/big";
        let mut written = 0u64;
        let mut refused = None;
        let piece = vec![0xA5u8; 4 << 20];
        let bound = 256u64 << 20;
        let started = std::time::Instant::now();
        match tokio::time::timeout(Duration::from_secs(60), async {
            let h = self.client.create_file(path).await?;
            while written < bound && started.elapsed() < Duration::from_secs(40) {
                match h.pwrite(written, &piece).await {
                    Ok(_) => {}
                    Err(e) => return Ok::<_, pond_client::error::ClientError>(Some(e)),
                }
                if let Err(e) = h.fsync().await {
                    return Ok(Some(e));
                }
                written += piece.len() as u64;
            }
            let _ = h.close().await;
            Ok(None)
        })
        .await
        {
            Ok(Ok(r)) => refused = r.map(|e| e.to_string()),
            Ok(Err(e)) => refused = Some(format!("(create) {e}")),
            Err(_) => {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.client.unlink_path(path)).await;
        Ok(format!(
            "storage-{node} capped at use + 8 MiB; filler wrote {} MiB, then {}; file unlinked",
            written >> 20,
            refused
                .map(|e| format!("was refused: {e}"))
                .unwrap_or_else(|| "stopped at its bound without a refusal".into())
        ))
    }
}

/// Two nodes holding targets of one chain (head and one more), by `pick`.
fn chain_pair(r: &RoutingInfo, pick: u64) -> Option<(String, u32, u32)> {
    let chains: Vec<_> = r.chains.values().filter(|c| c.targets.len() >= 2).collect();
    if chains.is_empty() {
        return None;
    }
    let c = chains[(pick % chains.len() as u64) as usize];
    let mut nodes: Vec<u32> = Vec::new();
    for t in &c.targets {
        if let Some(ti) = r.targets.get(t)
            && !nodes.contains(&ti.node.0)
        {
            nodes.push(ti.node.0);
        }
    }
    if nodes.len() < 2 {
        return None;
    }
    let second = 1 + (pick / 7 % (nodes.len() as u64 - 1)) as usize;
    Some((format!("{}", c.id.0), nodes[0], nodes[second]))
}

/// The minority and majority of a meta split: the minority holds `(meta - 1) / 2` replicas
/// (at least one), with the leader if `leader_side`, the rest picked by `pick`.
fn meta_split(meta: u32, leader: u64, leader_side: bool, pick: u64) -> (Vec<u64>, Vec<u64>) {
    let size = ((meta as usize - 1) / 2).max(1);
    let mut rest: Vec<u64> = (1..=meta as u64).filter(|&i| i != leader).collect();
    let mut minority = Vec::new();
    if leader_side {
        minority.push(leader);
    }
    let mut p = pick;
    while minority.len() < size && !rest.is_empty() {
        let i = (p % rest.len() as u64) as usize;
        p /= 7;
        minority.push(rest.remove(i));
    }
    minority.sort();
    let majority: Vec<u64> = (1..=meta as u64)
        .filter(|i| !minority.contains(i))
        .collect();
    (minority, majority)
}

/// Two neighbours in one chain (by `pick`): the chain's nodes in chain order, and the link
/// between positions i and i + 1.
fn chain_link(r: &RoutingInfo, pick: u64) -> Option<(String, u32, u32)> {
    let chains: Vec<_> = r.chains.values().filter(|c| c.targets.len() >= 2).collect();
    if chains.is_empty() {
        return None;
    }
    let c = chains[(pick % chains.len() as u64) as usize];
    let mut nodes: Vec<u32> = Vec::new();
    for t in &c.targets {
        if let Some(ti) = r.targets.get(t)
            && !nodes.contains(&ti.node.0)
        {
            nodes.push(ti.node.0);
        }
    }
    if nodes.len() < 2 {
        return None;
    }
    let i = (pick / 7 % (nodes.len() as u64 - 1)) as usize;
    Some((format!("{}", c.id.0), nodes[i], nodes[i + 1]))
}

/// Flips 16 bytes in `regions` random used slots of one of `node`'s targets.
fn corrupt(dir: &Path, node: u32, pick: u64, regions: u32) -> Result<String> {
    use std::os::unix::fs::FileExt;
    let node_dir = dir.join(format!("storage-{node}"));
    let mut targets: Vec<PathBuf> = std::fs::read_dir(&node_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("blocks.dat").exists())
        .collect();
    targets.sort();
    if targets.is_empty() {
        bail!("storage-{node} has no blocks.dat yet");
    }
    let t = &targets[(pick % targets.len() as u64) as usize];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.join("blocks.dat"))?;
    let len = f.metadata()?.len();
    let slots = len / (64 << 10);
    if slots == 0 {
        return Ok(format!(
            "{}: blocks.dat empty, nothing to corrupt",
            t.display()
        ));
    }
    let mut rng = StdRng::seed_from_u64(pick);
    let mut hit = BTreeMap::new();
    for _ in 0..regions {
        let slot = rng.random_range(0..slots);
        let off = slot * (64 << 10) + rng.random_range(0..(64 << 10) - 16);
        let mut b = [0u8; 16];
        f.read_exact_at(&mut b, off)?;
        for x in b.iter_mut() {
            *x ^= 0x5A;
        }
        f.write_all_at(&b, off)?;
        hit.insert(slot, off);
    }
    Ok(format!(
        "{}/blocks.dat: 16 bytes flipped in slots {:?}",
        t.display(),
        hit.keys().collect::<Vec<_>>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_a_function_of_the_seed_and_covers_every_kind() {
        let a = schedule(7, Duration::from_secs(60), 3, 4);
        let b = schedule(7, Duration::from_secs(60), 3, 4);
        assert_eq!(a, b);
        let kinds: std::collections::BTreeSet<&str> = a.iter().map(|s| s.fault.kind()).collect();
        assert_eq!(kinds.len(), 6, "{kinds:?}");
        assert_eq!(
            a.iter()
                .filter(|s| matches!(s.fault, Fault::Fill { .. }))
                .count(),
            1
        );
        assert_ne!(a, schedule(8, Duration::from_secs(60), 3, 4));
        // Runs without --netns never get a network fault, however long.
        assert!(
            !schedule(7, Duration::from_secs(3600), 3, 4)
                .iter()
                .any(|s| s.fault.is_network())
        );
    }

    #[test]
    fn netns_schedule_starts_with_every_network_kind_then_every_process_kind() {
        let a = schedule_netns(7, Duration::from_secs(60), 3, 4);
        assert_eq!(a, schedule_netns(7, Duration::from_secs(60), 3, 4));
        assert_ne!(a, schedule_netns(8, Duration::from_secs(60), 3, 4));
        assert!(a[..6].iter().all(|s| s.fault.is_network()), "{a:?}");
        let net: std::collections::BTreeSet<&str> = a[..6].iter().map(|s| s.fault.kind()).collect();
        assert_eq!(net.len(), 6, "{net:?}");
        let long = schedule_netns(7, Duration::from_secs(1200), 3, 4);
        let kinds: std::collections::BTreeSet<&str> = long.iter().map(|s| s.fault.kind()).collect();
        assert_eq!(kinds.len(), 12, "{kinds:?}");
        assert_eq!(
            long.iter()
                .filter(|s| matches!(s.fault, Fault::Fill { .. }))
                .count(),
            1
        );
        // The process kinds keep their meaning: roles and nodes within the cluster.
        for s in &long {
            match s.fault {
                Fault::MetaCut { node, .. } => assert!((1..=4).contains(&node)),
                Fault::Lossy { percent, .. } => assert!((5..=40).contains(&percent)),
                _ => {}
            }
        }
    }

    #[test]
    fn meta_split_makes_a_minority_and_a_majority() {
        for leader in 1..=3 {
            for pick in 0..20 {
                let (min, maj) = meta_split(3, leader, true, pick);
                assert_eq!(min, vec![leader]);
                assert_eq!(maj.len(), 2);
                let (min, maj) = meta_split(3, leader, false, pick);
                assert_eq!(min.len(), 1);
                assert!(!min.contains(&leader) && maj.contains(&leader));
            }
        }
        let (min, maj) = meta_split(5, 2, true, 3);
        assert_eq!((min.len(), maj.len()), (2, 3));
        assert!(min.contains(&2));
    }

    #[test]
    fn the_ci_seed_starts_every_network_fault_early() {
        // tests/it/chaos.rs runs `--quick --netns --seed 3 --duration 50` and expects all six
        // network kinds: the sixth must start well inside the 50 s (the executor adds a
        // little per fault on top of these lower bounds).
        let s = schedule_netns(3, Duration::from_secs(50), 3, 4);
        let mut start = Duration::ZERO;
        for x in &s[..6] {
            start += x.after;
            let down = match &x.fault {
                Fault::Isolate { down, .. }
                | Fault::MetaSplit { down, .. }
                | Fault::ChainLinkCut { down, .. }
                | Fault::MetaCut { down, .. }
                | Fault::Lossy { down, .. }
                | Fault::Slow { down, .. } => *down,
                other => panic!("not a network fault first: {other:?}"),
            };
            if x == &s[5] {
                assert!(start < Duration::from_secs(40), "sixth starts at {start:?}");
            }
            start += down;
        }
    }
}
