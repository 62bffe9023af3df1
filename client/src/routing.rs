//! The client's cached routing table and replica choice.
//!
//! - The table (`RoutingInfo`) is fetched from meta at start, polled every
//!   `ROUTING_POLL_MS` with `GetRouting { have }` (meta answers only when it has a newer
//!   version), and refreshed at once when a storage node says our chain version is stale or the
//!   target is not serving.
//! - Writes go to the chain head (`write_targets()[0]`).
//! - Reads of a chunk go to its *preferred* replica (chosen by a hash of the chunk id among
//!   the chain's serving replicas) unless that one has more than `READ_AFFINITY_SLACK`
//!   requests outstanding beyond the least-loaded one; then to the least-loaded replica, with
//!   a rotating tie-break. Replicas that failed a call in the last `REPLICA_PENALTY_MS` are
//!   skipped unless none is left. The preference keeps one chunk's reads on one node: its page
//!   cache holds the chunk once instead of in three places, a second pass finds it there, and
//!   a sequential reader's ranges arrive at that node in order (docs/storage.md, "Cold
//!   sequential reads").

use crate::error::{ClientError, Result};
use crate::limits;
use crate::service::MetaService;
use parking_lot::{Mutex, RwLock};
use pond_proto::cluster::{RoutingInfo, TargetInfo};
use pond_proto::data::ChainRef;
use pond_proto::meta::{ClusterReply, ClusterRequest};
use pond_proto::{ChainId, ChunkId, ErrorCode, NodeId, PondError, RoutingVersion, TargetId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The table if meta has a newer one than `have`.
async fn fetch(meta: &dyn MetaService, have: RoutingVersion) -> Result<Option<RoutingInfo>> {
    match meta.cluster(ClusterRequest::GetRouting { have }).await? {
        ClusterReply::Routing(r) => Ok(r),
        other => Err(ClientError::new(
            ErrorCode::Malformed,
            format!("GetRouting answered {other:?}"),
        )),
    }
}

/// Where one chunk request goes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Route {
    pub at: ChainRef,
    pub node: NodeId,
    pub addr: String,
}

#[derive(Default, Clone, Copy, Debug)]
struct Load {
    outstanding: u32,
    penalty_until: Option<Instant>,
}

pub struct RoutingCache {
    current: RwLock<Arc<RoutingInfo>>,
    source: Arc<dyn MetaService>,
    /// Serialises refreshes; holds the time of the last fetch.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    load: Mutex<HashMap<TargetId, Load>>,
    rotate: AtomicU64,
}

impl RoutingCache {
    pub fn new(source: Arc<dyn MetaService>) -> RoutingCache {
        RoutingCache {
            current: RwLock::new(Arc::new(RoutingInfo::default())),
            source,
            refresh: tokio::sync::Mutex::new(None),
            load: Mutex::new(HashMap::new()),
            rotate: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Arc<RoutingInfo> {
        self.current.read().clone()
    }

    pub fn version(&self) -> RoutingVersion {
        self.current.read().version
    }

    /// Installs `info` if it is newer than what we have. Returns whether it was installed.
    pub fn install(&self, info: RoutingInfo) -> bool {
        let mut cur = self.current.write();
        if info.version > cur.version {
            tracing::debug!(from = %cur.version, to = %info.version, "routing table updated");
            *cur = Arc::new(info);
            true
        } else {
            false
        }
    }

    /// Fetches a newer table. `seen`: the version the caller found wanting (a storage node
    /// refused it); if someone already installed a newer one, that is returned without a fetch.
    /// Without `seen` the fetch is rate-limited to one per `ROUTING_REFRESH_MIN_INTERVAL_MS`.
    pub async fn refresh(&self, seen: Option<RoutingVersion>) -> Result<Arc<RoutingInfo>> {
        if let Some(v) = seen
            && self.version() > v
        {
            return Ok(self.current());
        }
        let mut last = self.refresh.lock().await;
        if let Some(v) = seen
            && self.version() > v
        {
            return Ok(self.current());
        }
        let min = Duration::from_millis(limits::ROUTING_REFRESH_MIN_INTERVAL_MS);
        if seen.is_none()
            && let Some(t) = *last
            && t.elapsed() < min
        {
            return Ok(self.current());
        }
        let have = self.version();
        let fetched = fetch(&*self.source, have).await;
        *last = Some(Instant::now());
        if let Some(info) = fetched? {
            self.install(info);
        }
        Ok(self.current())
    }

    /// Polls meta for newer tables until the cache is dropped.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<RoutingCache> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(cache) = weak.upgrade() else { return };
                let have = cache.version();
                match fetch(&*cache.source, have).await {
                    Ok(Some(info)) => {
                        cache.install(info);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "routing poll failed"),
                }
            }
        })
    }

    /// The head of `chain`, where writes, truncates and removals go.
    pub fn head(&self, chain: ChainId) -> Result<Route> {
        let info = self.current();
        head_of(&info, chain)
    }

    /// A serving replica of `chain` for a read, avoiding `exclude` (replicas that already failed
    /// this request).
    /// `chunk`: the chunk read, whose preferred replica is tried first (`None`: least-loaded).
    pub fn reader(
        &self,
        chain: ChainId,
        exclude: &[TargetId],
        chunk: Option<ChunkId>,
    ) -> Result<Route> {
        let info = self.current();
        let now = Instant::now();
        let rot = self.rotate.fetch_add(1, Ordering::Relaxed);
        let load = self.load.lock();
        let prefer = chunk.map(affinity);
        let t = choose_replica(&info, chain, exclude, now, rot, prefer, |t| {
            load.get(&t).copied().unwrap_or_default()
        })
        .ok_or_else(|| {
            ClientError::new(
                ErrorCode::TargetNotServing,
                format!("chain {chain} has no serving replica left to read from"),
            )
        })?;
        route_to(&info, chain, t)
    }

    /// Counts a request outstanding on `target` until the guard drops.
    pub fn begin(self: &Arc<Self>, target: TargetId) -> Outstanding {
        self.load.lock().entry(target).or_default().outstanding += 1;
        Outstanding {
            cache: self.clone(),
            target,
        }
    }

    /// Marks `target` as having just failed a call.
    pub fn penalize(&self, target: TargetId) {
        let until = Instant::now() + Duration::from_millis(limits::REPLICA_PENALTY_MS);
        self.load.lock().entry(target).or_default().penalty_until = Some(until);
    }

    pub fn outstanding(&self, target: TargetId) -> u32 {
        self.load
            .lock()
            .get(&target)
            .map(|l| l.outstanding)
            .unwrap_or(0)
    }
}

/// Decrements the outstanding count of a target when dropped.
pub struct Outstanding {
    cache: Arc<RoutingCache>,
    target: TargetId,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        let mut load = self.cache.load.lock();
        let l = load
            .get_mut(&self.target)
            .expect("begin() created the entry");
        assert!(l.outstanding > 0, "outstanding count underflow");
        l.outstanding -= 1;
    }
}

pub(crate) fn head_of(info: &RoutingInfo, chain: ChainId) -> Result<Route> {
    let Some(head) = info.write_targets(chain).first().map(|t| t.id) else {
        let msg = if info.chains.contains_key(&chain) {
            format!("chain {chain} has no target receiving writes")
        } else {
            format!("chain {chain} is not in routing table {}", info.version)
        };
        return Err(ClientError::Pond(PondError::new(
            ErrorCode::Unavailable,
            msg,
        )));
    };
    route_to(info, chain, head)
}

fn route_to(info: &RoutingInfo, chain: ChainId, target: TargetId) -> Result<Route> {
    let c = info.chains.get(&chain).expect("caller found the chain");
    let t = info.targets.get(&target).expect("caller found the target");
    let addr = info.node_addr(t.node).ok_or_else(|| {
        ClientError::new(
            ErrorCode::Unavailable,
            format!("node {} has no address", t.node),
        )
    })?;
    Ok(Route {
        at: ChainRef {
            chain,
            chain_version: c.version,
            target,
        },
        node: t.node,
        addr: addr.to_string(),
    })
}

/// A well-mixed hash of a chunk id, choosing its preferred replica.
fn affinity(chunk: ChunkId) -> u64 {
    let (a, b) = chunk.0.split_at(8);
    let a = u64::from_be_bytes(a.try_into().expect("8 bytes"));
    let b = u64::from_be_bytes(b.try_into().expect("8 bytes"));
    // splitmix64's finaliser over both halves.
    let mut z = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Choice among the serving replicas of `chain` not in `exclude`; penalised replicas only when
/// nothing else is left. With `prefer`, the replica it picks (by target id order) unless it has
/// more than `READ_AFFINITY_SLACK` requests outstanding beyond the least-loaded one; otherwise
/// the least-loaded, `rot` breaking ties in rotation.
fn choose_replica(
    info: &RoutingInfo,
    chain: ChainId,
    exclude: &[TargetId],
    now: Instant,
    rot: u64,
    prefer: Option<u64>,
    load: impl Fn(TargetId) -> Load,
) -> Option<TargetId> {
    let cands: Vec<&TargetInfo> = info
        .serving_targets(chain)
        .into_iter()
        .filter(|t| !exclude.contains(&t.id) && info.node_addr(t.node).is_some())
        .collect();
    if cands.is_empty() {
        return None;
    }
    let penalised = |t: &TargetInfo| load(t.id).penalty_until.is_some_and(|u| u > now);
    let healthy: Vec<&TargetInfo> = cands.iter().copied().filter(|t| !penalised(t)).collect();
    let pool = if healthy.is_empty() { cands } else { healthy };
    let min = pool
        .iter()
        .map(|t| load(t.id).outstanding)
        .min()
        .expect("pool is not empty");
    if let Some(key) = prefer {
        let mut ids: Vec<TargetId> = pool.iter().map(|t| t.id).collect();
        ids.sort();
        let p = ids[(key % ids.len() as u64) as usize];
        if load(p).outstanding <= min + limits::READ_AFFINITY_SLACK {
            return Some(p);
        }
    }
    let best: Vec<&TargetInfo> = pool
        .into_iter()
        .filter(|t| load(t.id).outstanding == min)
        .collect();
    Some(best[(rot % best.len() as u64) as usize].id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use pond_proto::ChainVersion;
    use pond_proto::cluster::{ChainInfo, LocalState, NodeInfo, PublicState};
    use pond_proto::meta::{MetaReply, MetaRequest};
    use std::sync::atomic::AtomicU32;

    /// Chain 1: targets 11 (node 1), 12 (node 2), 13 (node 3), head first.
    pub(crate) fn table(version: u64, states: [PublicState; 3]) -> RoutingInfo {
        let mut info = RoutingInfo {
            version: RoutingVersion(version),
            ..Default::default()
        };
        for n in 1..=3u32 {
            info.nodes.insert(
                NodeId(n),
                NodeInfo {
                    id: NodeId(n),
                    data_addr: format!("127.0.0.1:{}", 9000 + n),
                    alive: true,
                },
            );
        }
        for (i, s) in states.iter().enumerate() {
            let id = TargetId(11 + i as u64);
            info.targets.insert(
                id,
                TargetInfo {
                    id,
                    node: NodeId(1 + i as u32),
                    chain: ChainId(1),
                    public_state: *s,
                    local_state: LocalState::UpToDate,
                    used_bytes: 0,
                    capacity_bytes: 0,
                },
            );
        }
        info.chains.insert(
            ChainId(1),
            ChainInfo {
                id: ChainId(1),
                version: ChainVersion(version as u32),
                targets: vec![TargetId(11), TargetId(12), TargetId(13)],
            },
        );
        info
    }

    use PublicState::*;

    #[test]
    fn head_is_first_writable() {
        let info = table(1, [Serving, Serving, Serving]);
        let r = head_of(&info, ChainId(1)).unwrap();
        assert_eq!(r.at.target, TargetId(11));
        assert_eq!(r.at.chain_version, ChainVersion(1));
        assert_eq!(r.addr, "127.0.0.1:9001");
        let info = table(2, [Offline, Serving, Syncing]);
        assert_eq!(head_of(&info, ChainId(1)).unwrap().at.target, TargetId(12));
        let info = table(3, [Offline, LastSrv, Waiting]);
        assert_eq!(
            head_of(&info, ChainId(1)).unwrap_err().code(),
            ErrorCode::Unavailable
        );
        assert_eq!(
            head_of(&info, ChainId(9)).unwrap_err().code(),
            ErrorCode::Unavailable
        );
    }

    #[test]
    fn reads_go_to_least_outstanding_serving_replica() {
        let info = table(1, [Serving, Serving, Syncing]);
        let now = Instant::now();
        let loads: HashMap<TargetId, Load> = [
            (
                TargetId(11),
                Load {
                    outstanding: 5,
                    penalty_until: None,
                },
            ),
            (
                TargetId(12),
                Load {
                    outstanding: 2,
                    penalty_until: None,
                },
            ),
        ]
        .into();
        let l = |t| loads.get(&t).copied().unwrap_or_default();
        // 13 is syncing: never read from it even though it is idle.
        for rot in 0..4 {
            assert_eq!(
                choose_replica(&info, ChainId(1), &[], now, rot, None, l),
                Some(TargetId(12))
            );
        }
        assert_eq!(
            choose_replica(&info, ChainId(1), &[TargetId(12)], now, 0, None, l),
            Some(TargetId(11))
        );
        assert_eq!(
            choose_replica(
                &info,
                ChainId(1),
                &[TargetId(11), TargetId(12)],
                now,
                0,
                None,
                l
            ),
            None
        );
    }

    #[test]
    fn a_chunk_keeps_its_preferred_replica_until_it_is_busier_than_the_slack() {
        let info = table(1, [Serving, Serving, Serving]);
        let now = Instant::now();
        let idle = |_| Load::default();
        // Every rotation picks the same replica for one chunk; chunks spread over all three.
        let mut seen = std::collections::BTreeSet::new();
        for index in 0..64 {
            let key = affinity(ChunkId::new(pond_proto::InodeId(7), index));
            let picks: std::collections::BTreeSet<_> = (0..6)
                .filter_map(|r| choose_replica(&info, ChainId(1), &[], now, r, Some(key), idle))
                .collect();
            assert_eq!(picks.len(), 1, "chunk {index}: {picks:?}");
            seen.extend(picks);
        }
        assert_eq!(seen.len(), 3, "chunks spread over every replica: {seen:?}");
        // Busy beyond the slack: the least-loaded replica instead; at the slack: still preferred.
        let key = affinity(ChunkId::new(pond_proto::InodeId(7), 0));
        let pref = choose_replica(&info, ChainId(1), &[], now, 0, Some(key), idle).unwrap();
        let busy = |n: u32| {
            move |t: TargetId| Load {
                outstanding: if t == pref { n } else { 0 },
                penalty_until: None,
            }
        };
        let slack = limits::READ_AFFINITY_SLACK;
        assert_eq!(
            choose_replica(&info, ChainId(1), &[], now, 0, Some(key), busy(slack)),
            Some(pref)
        );
        let other = choose_replica(&info, ChainId(1), &[], now, 0, Some(key), busy(slack + 1));
        assert!(other.is_some() && other != Some(pref));
        // An excluded (failed) preferred replica is never chosen.
        let alt = choose_replica(&info, ChainId(1), &[pref], now, 0, Some(key), idle);
        assert!(alt.is_some() && alt != Some(pref));
    }

    #[test]
    fn ties_rotate_and_penalised_replicas_are_last_resort() {
        let info = table(1, [Serving, Serving, Serving]);
        let now = Instant::now();
        let idle = |_| Load::default();
        let picks: std::collections::BTreeSet<_> = (0..3)
            .filter_map(|r| choose_replica(&info, ChainId(1), &[], now, r, None, idle))
            .collect();
        assert_eq!(picks.len(), 3, "ties spread over every replica");
        let later = now + Duration::from_secs(1);
        let pen = |t: TargetId| Load {
            outstanding: 0,
            penalty_until: (t != TargetId(13)).then_some(later),
        };
        for rot in 0..3 {
            assert_eq!(
                choose_replica(&info, ChainId(1), &[], now, rot, None, pen),
                Some(TargetId(13))
            );
        }
        // Only penalised replicas left: still read (better than failing).
        assert!(choose_replica(&info, ChainId(1), &[TargetId(13)], now, 0, None, pen).is_some());
        // Penalties expire.
        let after = later + Duration::from_millis(1);
        let picks: std::collections::BTreeSet<_> = (0..3)
            .filter_map(|r| choose_replica(&info, ChainId(1), &[], after, r, None, pen))
            .collect();
        assert_eq!(picks.len(), 3);
    }

    struct Fake {
        table: Mutex<RoutingInfo>,
        fetches: AtomicU32,
    }

    impl MetaService for Fake {
        fn op(&self, req: MetaRequest) -> BoxFuture<'_, Result<MetaReply, PondError>> {
            Box::pin(
                async move { Err(PondError::new(ErrorCode::NotSupported, format!("{req:?}"))) },
            )
        }
        fn cluster(&self, req: ClusterRequest) -> BoxFuture<'_, Result<ClusterReply, PondError>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let t = self.table.lock().clone();
            Box::pin(async move {
                let ClusterRequest::GetRouting { have } = req else {
                    unreachable!("only routing")
                };
                Ok(ClusterReply::Routing((t.version > have).then_some(t)))
            })
        }
    }

    #[tokio::test]
    async fn refresh_installs_newer_tables_and_coalesces() {
        let fake = Arc::new(Fake {
            table: Mutex::new(table(1, [Serving, Serving, Serving])),
            fetches: AtomicU32::new(0),
        });
        let cache = Arc::new(RoutingCache::new(fake.clone()));
        cache.refresh(Some(RoutingVersion(0))).await.unwrap();
        assert_eq!(cache.version(), RoutingVersion(1));
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
        // A caller that saw version 0 fails: the newer table is already here, no fetch.
        cache.refresh(Some(RoutingVersion(0))).await.unwrap();
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
        // Unforced refreshes right after a fetch are coalesced.
        cache.refresh(None).await.unwrap();
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
        // The head dies: meta moves it to the end and bumps versions.
        *fake.table.lock() = table(2, [Offline, Serving, Serving]);
        let stale = cache.version();
        let info = cache.refresh(Some(stale)).await.unwrap();
        assert_eq!(info.version, RoutingVersion(2));
        assert_eq!(cache.head(ChainId(1)).unwrap().at.target, TargetId(12));
        // Older tables never replace newer ones.
        assert!(!cache.install(table(1, [Serving, Serving, Serving])));
        assert_eq!(cache.version(), RoutingVersion(2));
    }

    #[tokio::test]
    async fn poller_picks_up_changes_and_outstanding_counts() {
        let fake = Arc::new(Fake {
            table: Mutex::new(table(1, [Serving, Serving, Serving])),
            fetches: AtomicU32::new(0),
        });
        let cache = Arc::new(RoutingCache::new(fake.clone()));
        let poller = cache.spawn_poller(Duration::from_millis(10));
        tokio::time::timeout(Duration::from_secs(5), async {
            while cache.version() != RoutingVersion(1) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        poller.abort();
        let r1 = cache.reader(ChainId(1), &[], None).unwrap();
        let g = cache.begin(r1.at.target);
        assert_eq!(cache.outstanding(r1.at.target), 1);
        let r2 = cache.reader(ChainId(1), &[], None).unwrap();
        assert_ne!(r1.at.target, r2.at.target, "busy replica avoided");
        drop(g);
        assert_eq!(cache.outstanding(r1.at.target), 0);
        cache.penalize(TargetId(11));
        for _ in 0..5 {
            assert_ne!(
                cache.reader(ChainId(1), &[], None).unwrap().at.target,
                TargetId(11)
            );
        }
    }
}
