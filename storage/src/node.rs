//! One storage node: its targets, its view of the routing table, and the CRAQ protocol
//! (DESIGN.md §4) that every data-plane request runs through.
//!
//! Roles come only from the routing table (`RoutingInfo`, fed by heartbeats or injected by
//! tests): a target reads when it is publicly `serving` and locally up to date, and receives
//! writes when publicly `serving` (and up to date) or `syncing`. Its successor is the next
//! write-receiving target of its chain; the "tail" asked in version queries is the last
//! serving target.

use crate::limits::*;
use crate::store::{ChunkInfo, ChunkStore, Mutation, StoreError, VersionInfo};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pond_client::net::{DataClient, NetError};
use pond_proto::cluster::{GcTask, LocalState, PublicState, RoutingInfo, TargetInfo};
use pond_proto::data::*;
use pond_proto::limits::CHUNK_BYTES_MAX;
use pond_proto::*;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// Runs a store call, on a blocking thread when the store does disk I/O.
pub async fn on_store<T: Send + 'static>(
    store: &Arc<dyn ChunkStore>,
    f: impl FnOnce(&dyn ChunkStore) -> T + Send + 'static,
) -> T {
    if store.blocking() {
        let s = store.clone();
        tokio::task::spawn_blocking(move || f(&*s))
            .await
            .expect("chunk store call panicked")
    } else {
        f(&**store)
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> PondError {
    PondError::new(code, msg)
}

fn store_err(e: StoreError) -> PondError {
    e.to_pond()
}

/// Bounded (client, request, chunk) → reply memory for exactly-once retries. The chunk is part
/// of the key because one logical write spanning chunks may carry one request id.
type DedupeKey = (ClientId, RequestId, ChunkId);

#[derive(Default)]
struct Dedupe {
    map: HashMap<DedupeKey, UpdateReply>,
    order: VecDeque<DedupeKey>,
}

impl Dedupe {
    fn get(&self, k: DedupeKey) -> Option<UpdateReply> {
        self.map.get(&k).copied()
    }
    fn put(&mut self, k: DedupeKey, r: UpdateReply) {
        if self.map.insert(k, r).is_none() {
            self.order.push_back(k);
            while self.order.len() > DEDUPE_ENTRIES_MAX {
                let old = self.order.pop_front().expect("nonempty");
                self.map.remove(&old);
            }
        }
    }
}

/// Deliberate protocol violations for the chaos suite (`POND_TEST_BUG` in the storage
/// process's environment). Never set in production: each one breaks a guarantee on purpose so
/// that the checkers can be shown to catch it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TestBug {
    /// `early-ack`: the head acknowledges a client write once it has stored it (pending) and
    /// started forwarding it, without waiting for the commit to come back from the tail. An
    /// acked write can then be lost (or never reach the tail) if the chain fails meanwhile.
    EarlyAck,
}

impl TestBug {
    pub const ENV: &'static str = "POND_TEST_BUG";

    pub fn parse(s: &str) -> Option<TestBug> {
        match s.trim() {
            "early-ack" => Some(TestBug::EarlyAck),
            _ => None,
        }
    }

    /// The bug named by `POND_TEST_BUG`, if any (an unknown name is logged and ignored).
    pub fn from_env() -> Option<TestBug> {
        let v = std::env::var(Self::ENV).ok()?;
        if v.is_empty() {
            return None;
        }
        let bug = TestBug::parse(&v);
        if bug.is_none() {
            tracing::warn!(value = %v, "unknown {} value; ignored", Self::ENV);
        }
        bug
    }

    pub fn name(self) -> &'static str {
        match self {
            TestBug::EarlyAck => "early-ack",
        }
    }
}

/// A target as its node runs it.
pub struct Target {
    pub id: TargetId,
    pub store: Arc<dyn ChunkStore>,
    local: Mutex<LocalState>,
    /// Written once the target served in a chain: a restart then begins `online` (it may have
    /// missed writes) instead of `uptodate`.
    member_marker: Option<PathBuf>,
    locks: Box<[Arc<tokio::sync::Mutex<()>>]>,
    dedupe: Mutex<Dedupe>,
    /// (chain, chain version) whose syncing successor this target finished filling.
    resynced: Mutex<Option<(ChainId, ChainVersion)>>,
    /// (chain, chain version) under which this target, syncing, was told `SyncDone`: the only
    /// way a target that is publicly waiting or syncing may be locally up to date.
    synced_at: Mutex<Option<(ChainId, ChainVersion)>>,
    resync_running: AtomicBool,
    repairing: Mutex<std::collections::HashSet<ChunkId>>,
    /// Chunk ranges (inode, first index) being removed here (GC, truncate): a resync must not
    /// copy them to the syncing successor, which may already have removed them.
    removing: Mutex<Vec<(InodeId, u64)>>,
    /// Held (shared) by a resync around each chunk it copies; a removal takes it exclusively
    /// once after announcing its range, so no copy of the range is still in flight.
    resync_gate: tokio::sync::RwLock<()>,
    /// Corrupt chunk copies found (reads + scrubber) and repaired.
    pub corrupt_found: AtomicU64,
    pub repaired: AtomicU64,
}

/// How a node gets a target.
pub struct TargetSetup {
    pub id: TargetId,
    pub store: Arc<dyn ChunkStore>,
    /// File whose existence means "this target has served in a chain before".
    pub member_marker: Option<PathBuf>,
}

impl Target {
    fn new(s: TargetSetup) -> Target {
        let was_member = s.member_marker.as_ref().is_some_and(|p| p.exists());
        let local = if was_member {
            LocalState::Online
        } else {
            LocalState::UpToDate
        };
        Target {
            id: s.id,
            store: s.store,
            local: Mutex::new(local),
            member_marker: s.member_marker,
            locks: (0..CHUNK_LOCK_STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            dedupe: Mutex::default(),
            resynced: Mutex::new(None),
            synced_at: Mutex::new(None),
            resync_running: AtomicBool::new(false),
            repairing: Mutex::default(),
            removing: Mutex::default(),
            resync_gate: tokio::sync::RwLock::new(()),
            corrupt_found: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
        }
    }

    pub fn local_state(&self) -> LocalState {
        *self.local.lock()
    }

    /// Whether `chunk` is in a range being removed on this target.
    fn being_removed(&self, chunk: ChunkId) -> bool {
        self.removing
            .lock()
            .iter()
            .any(|&(inode, from)| chunk.inode() == inode && chunk.index() >= from)
    }

    /// The chunk's lock stripe. Owned, so a guard can move into a task (the `early-ack` test
    /// bug keeps the chunk locked until its background commit).
    async fn lock(&self, chunk: ChunkId) -> tokio::sync::OwnedMutexGuard<()> {
        self.stripe(chunk).lock_owned().await
    }

    fn try_lock(&self, chunk: ChunkId) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.stripe(chunk).try_lock_owned().ok()
    }

    fn stripe(&self, chunk: ChunkId) -> Arc<tokio::sync::Mutex<()>> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in chunk.0 {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        self.locks[(h % self.locks.len() as u64) as usize].clone()
    }
}

/// A target's place in its chain, from one routing table.
#[derive(Clone, Debug)]
pub struct View {
    pub chain: ChainId,
    pub chain_version: ChainVersion,
    pub me: TargetInfo,
    /// Targets receiving writes, head first.
    pub writers: Vec<TargetInfo>,
    pub pos: Option<usize>,
    /// Last serving target (answers version queries).
    pub tail: Option<TargetInfo>,
}

impl View {
    pub fn successor(&self) -> Option<&TargetInfo> {
        self.pos.and_then(|p| self.writers.get(p + 1))
    }
    pub fn is_head(&self) -> bool {
        self.pos == Some(0)
    }
    pub fn at(&self, t: &TargetInfo) -> ChainRef {
        ChainRef {
            chain: self.chain,
            chain_version: self.chain_version,
            target: t.id,
        }
    }
}

pub struct Node {
    pub id: NodeId,
    token: String,
    routing: watch::Sender<Arc<RoutingInfo>>,
    targets: BTreeMap<TargetId, Arc<Target>>,
    peers: DataClient,
    gc_done: Mutex<Vec<GcTask>>,
    gc_running: Mutex<std::collections::HashSet<(InodeId, ChainId, u64)>>,
    request_seq: AtomicU64,
    /// Test-only fault (`TestBug`), from the environment at start or set by a test.
    test_bug: Mutex<Option<TestBug>>,
    /// Heartbeat lease: `None` while no heartbeat loop runs (tests feeding routing directly);
    /// otherwise when the last heartbeat that meta answered was sent (`None` before the first).
    lease: Mutex<Option<Option<std::time::Instant>>>,
}

impl Node {
    pub fn new(id: NodeId, token: String, targets: Vec<TargetSetup>) -> Arc<Node> {
        // Servers forward with their node id as client id; request ids are fresh per call.
        let client = ClientId((1 << 63) | id.0 as u64);
        let peers = DataClient::tcp(token.clone(), client)
            .with_deadline(Duration::from_millis(FORWARD_DEADLINE_MS));
        Arc::new(Node {
            id,
            token,
            routing: watch::Sender::new(Arc::new(RoutingInfo::default())),
            targets: targets
                .into_iter()
                .map(|s| (s.id, Arc::new(Target::new(s))))
                .collect(),
            peers,
            gc_done: Mutex::default(),
            gc_running: Mutex::default(),
            request_seq: AtomicU64::new(1),
            test_bug: Mutex::new(TestBug::from_env()),
            lease: Mutex::new(None),
        })
    }

    /// From now on this node serves only while its last answered heartbeat was sent less than
    /// `FENCE_AFTER_MS` ago (called by the heartbeat loop before its first heartbeat).
    pub fn arm_lease(&self) {
        let mut l = self.lease.lock();
        if l.is_none() {
            *l = Some(None);
        }
    }

    /// Meta answered a heartbeat sent at `sent` (and its routing, if any, is installed).
    pub fn renew_lease(&self, sent: std::time::Instant) {
        let mut l = self.lease.lock();
        if let Some(cur) = l.as_mut()
            && cur.is_none_or(|c| c < sent)
        {
            *cur = Some(sent);
        }
    }

    /// True when this node must not serve its targets: meta may have declared it offline
    /// (it marks a node offline `heartbeat_timeout_ms`, 5 s by default, after the last
    /// heartbeat it received, which is after we sent it), and the chain may have gone on
    /// without us. A node frozen (SIGSTOP, a long pause) or cut off from meta stops here
    /// instead of answering from an old routing table, until a heartbeat gets through.
    pub fn fenced(&self) -> bool {
        Self::lease_expired(*self.lease.lock(), std::time::Instant::now())
    }

    fn lease_expired(lease: Option<Option<std::time::Instant>>, now: std::time::Instant) -> bool {
        match lease {
            None => false,
            Some(None) => true,
            Some(Some(sent)) => {
                now.saturating_duration_since(sent) >= Duration::from_millis(FENCE_AFTER_MS)
            }
        }
    }

    fn fence_check(&self) -> Result<(), PondError> {
        if self.fenced() {
            return Err(err(
                ErrorCode::TargetNotServing,
                format!(
                    "node {} has no recent heartbeat lease; not serving",
                    self.id
                ),
            ));
        }
        Ok(())
    }

    /// Turns a deliberate protocol violation on or off (tests; the process-level switch is
    /// `POND_TEST_BUG`).
    pub fn set_test_bug(&self, bug: Option<TestBug>) {
        if let Some(b) = bug {
            tracing::warn!(node = %self.id, bug = b.name(), "TEST BUG ENABLED: this node violates the replication protocol on purpose");
        }
        *self.test_bug.lock() = bug;
    }

    pub fn test_bug(&self) -> Option<TestBug> {
        *self.test_bug.lock()
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.targets.values()
    }

    pub fn target(&self, id: TargetId) -> Option<&Arc<Target>> {
        self.targets.get(&id)
    }

    pub fn routing(&self) -> Arc<RoutingInfo> {
        self.routing.borrow().clone()
    }

    pub fn subscribe_routing(&self) -> watch::Receiver<Arc<RoutingInfo>> {
        self.routing.subscribe()
    }

    /// Installs a routing table (from a heartbeat reply, or a test acting as meta). Older
    /// tables are ignored. Applies the role rules to local states.
    pub fn set_routing(&self, r: RoutingInfo) {
        let r = Arc::new(r);
        let newer = self.routing.send_if_modified(|cur| {
            if r.version >= cur.version && **cur != *r {
                *cur = r.clone();
                true
            } else {
                false
            }
        });
        if newer {
            for t in self.targets.values() {
                if let Some(info) = r.targets.get(&t.id) {
                    tracing::debug!(routing = %r.version, target = %t.id, chain = %info.chain,
                        chain_version = ?r.chains.get(&info.chain).map(|c| c.version),
                        public = info.public_state.as_str(), local = ?t.local_state(),
                        "routing installed");
                }
            }
            self.apply_roles(&r);
        }
    }

    fn apply_roles(&self, r: &RoutingInfo) {
        for t in self.targets.values() {
            let Some(info) = r.targets.get(&t.id) else {
                continue;
            };
            let chain_now = r.chains.get(&info.chain).map(|c| (c.id, c.version));
            let synced_now = chain_now.is_some() && *t.synced_at.lock() == chain_now;
            let mut local = t.local.lock();
            match (info.public_state, *local) {
                // Publicly waiting or syncing, yet locally up to date without a resync under
                // this chain version: the chain went on without us while we could not hear
                // about it (a node frozen by SIGSTOP past meta's heartbeat timeout wakes up to
                // a table where it is already waiting/syncing, never having seen itself
                // offline). Our copy misses the writes acknowledged meanwhile, and reporting
                // `uptodate` would make meta turn the syncing target serving (as the tail)
                // before any resync: stale reads. Stop and let the resync fill us first.
                // (A fresh target not yet placed in a chain is waiting too; it keeps its
                // state.)
                (PublicState::Waiting | PublicState::Syncing, LocalState::UpToDate)
                    if chain_now.is_some() && !synced_now =>
                {
                    tracing::warn!(target = %t.id, state = info.public_state.as_str(),
                        "target is waiting/syncing in its chain but was up to date before; \
                         stops serving until resynced");
                    *local = LocalState::Online;
                }
                // DESIGN §3: publicly offline while we think we serve: we may be partitioned
                // away and writes may have gone on without us. Stop serving until resynced.
                (PublicState::Offline | PublicState::LastSrv, LocalState::UpToDate) => {
                    tracing::warn!(target = %t.id, state = info.public_state.as_str(),
                        "target declared down while serving; stops serving until resynced");
                    *local = LocalState::Online;
                }
                // Meta keeps a target serving that reports `online` only when no other target
                // of its chain is serving and up to date (a restarted last replica, or the
                // whole cluster restarting): its data is the best there is, so serve it.
                (PublicState::Serving, LocalState::Online) => {
                    let peer_up = r.chains.get(&info.chain).is_some_and(|c| {
                        c.targets.iter().any(|o| {
                            *o != t.id
                                && r.targets.get(o).is_some_and(|o| {
                                    o.public_state == PublicState::Serving
                                        && o.local_state == LocalState::UpToDate
                                })
                        })
                    });
                    if !peer_up {
                        tracing::info!(target = %t.id, "serving again: no other up-to-date replica in the chain");
                        *local = LocalState::UpToDate;
                    }
                }
                (PublicState::Serving, LocalState::UpToDate) => {
                    if let Some(m) = &t.member_marker
                        && !m.exists()
                        && let Err(e) = std::fs::write(m, b"member\n")
                    {
                        tracing::warn!(target = %t.id, error = %e, "cannot write member marker");
                    }
                }
                _ => {}
            }
        }
    }

    /// Local states of all targets.
    pub fn local_states(&self) -> Vec<(TargetId, LocalState)> {
        self.targets
            .values()
            .map(|t| (t.id, t.local_state()))
            .collect()
    }

    pub fn take_gc_done(&self) -> Vec<GcTask> {
        std::mem::take(&mut *self.gc_done.lock())
    }

    pub(crate) fn requeue_gc_done(&self, tasks: Vec<GcTask>) {
        self.gc_done.lock().extend(tasks);
    }

    /// The client id this node uses for requests it originates (GC, re-drives).
    fn server_client(&self) -> ClientId {
        ClientId((1 << 63) | self.id.0 as u64)
    }

    fn next_request(&self) -> RequestId {
        RequestId(self.request_seq.fetch_add(1, Ordering::Relaxed))
    }

    fn target_or_err(&self, id: TargetId) -> Result<&Arc<Target>, PondError> {
        self.targets.get(&id).ok_or_else(|| {
            err(
                ErrorCode::TargetNotServing,
                format!("no target {id} on node {}", self.id),
            )
        })
    }

    /// The target's place in its chain according to `r`.
    pub fn view(&self, r: &RoutingInfo, target: TargetId) -> Result<View, PondError> {
        let me = r
            .targets
            .get(&target)
            .ok_or_else(|| {
                err(
                    ErrorCode::StaleChainVersion,
                    format!("target {target} not in routing"),
                )
            })?
            .clone();
        let chain = r.chains.get(&me.chain).ok_or_else(|| {
            err(
                ErrorCode::StaleChainVersion,
                format!("chain {} not in routing", me.chain),
            )
        })?;
        let writers: Vec<TargetInfo> = r.write_targets(chain.id).into_iter().cloned().collect();
        let pos = writers.iter().position(|t| t.id == target);
        let tail = r.serving_targets(chain.id).last().map(|t| (*t).clone());
        Ok(View {
            chain: chain.id,
            chain_version: chain.version,
            me,
            writers,
            pos,
            tail,
        })
    }

    /// Step 1 of every hop: the request's chain version must be ours.
    fn checked_view(&self, at: &ChainRef) -> Result<(Arc<RoutingInfo>, View), PondError> {
        self.fence_check()?;
        let r = self.routing();
        let v = self.view(&r, at.target)?;
        if v.chain != at.chain {
            return Err(err(
                ErrorCode::StaleChainVersion,
                format!(
                    "target {} is in chain {}, not {}",
                    at.target, v.chain, at.chain
                ),
            ));
        }
        if v.chain_version != at.chain_version {
            return Err(err(
                ErrorCode::StaleChainVersion,
                format!(
                    "chain {}: have version {}, got {}",
                    v.chain, v.chain_version, at.chain_version
                ),
            ));
        }
        Ok((r, v))
    }

    fn readable(t: &Target, v: &View) -> bool {
        v.me.public_state == PublicState::Serving && t.local_state() == LocalState::UpToDate
    }

    fn writable(t: &Target, v: &View) -> bool {
        match v.me.public_state {
            PublicState::Serving => t.local_state() == LocalState::UpToDate,
            PublicState::Syncing => true,
            _ => false,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Dispatch.
    // -----------------------------------------------------------------------------------------

    /// Serves one authenticated request.
    pub async fn handle(
        self: &Arc<Self>,
        req: DataRequest,
        payload: Bytes,
    ) -> (DataResponse, Bytes) {
        let span = tracing::debug_span!("data_req", node = %self.id, req = req.name());
        let res = async {
            match req {
                DataRequest::Hello { .. } => Err(err(ErrorCode::Malformed, "hello after hello")),
                DataRequest::Update(u) => self
                    .handle_update(u, payload)
                    .await
                    .map(|r| (DataResponse::Update(r), Bytes::new())),
                DataRequest::Read { items } => self.handle_read(items).await,
                DataRequest::QueryVersion { at, chunk } => self.handle_query_version(at, chunk),
                DataRequest::RemoveRange {
                    at,
                    inode,
                    from_index,
                    client,
                    request,
                    forwarded,
                } => self
                    .handle_remove_range(at, inode, from_index, client, request, forwarded)
                    .await
                    .map(|n| (DataResponse::Removed { chunks: n }, Bytes::new())),
                DataRequest::QueryLength { at, inode } => self.handle_query_length(at, inode),
                DataRequest::ListChunks { at, after, limit } => self.handle_list(at, after, limit),
                DataRequest::SyncInstall {
                    at,
                    chunk,
                    version,
                    committed_under,
                    crc,
                } => {
                    self.handle_sync_install(at, chunk, version, committed_under, crc, payload)
                        .await
                }
                DataRequest::SyncRemove { at, chunk } => self.handle_sync_remove(at, chunk).await,
                DataRequest::SyncDone { at } => self.handle_sync_done(at).await,
                DataRequest::RdmaConnect { .. } => Err(err(
                    ErrorCode::NotSupported,
                    "this storage node does not accept RDMA connections; use TCP",
                )),
                DataRequest::TargetStates => Ok((
                    DataResponse::TargetStates {
                        targets: self.local_states(),
                    },
                    Bytes::new(),
                )),
            }
        }
        .instrument(span)
        .await;
        match res {
            Ok(ok) => ok,
            Err(e) => (DataResponse::Error(e), Bytes::new()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Write path.
    // -----------------------------------------------------------------------------------------

    #[tracing::instrument(skip_all, fields(chain = %req.at.chain, target = %req.at.target, chunk = %req.chunk, client = %req.client, req = %req.request))]
    async fn handle_update(
        self: &Arc<Self>,
        req: UpdateReq,
        data: Bytes,
    ) -> Result<UpdateReply, PondError> {
        // 0. The payload must be what the sender checksummed, and fit the chunk. It is
        // checksummed per chunk sector (one pass) and the pieces combined: the store reuses
        // the sector CRCs instead of checksumming the bytes again.
        let payload_at = match req.op {
            UpdateOp::Write { offset } => offset as u64,
            _ => 0,
        };
        let pieces = crate::store::crc::piece_crcs(payload_at, &data);
        if crate::store::crc::combine_pieces(payload_at, data.len() as u64, &pieces) != req.crc {
            return Err(err(ErrorCode::Checksum, "update payload CRC mismatch"));
        }
        if req.chunk_bytes == 0 || req.chunk_bytes > CHUNK_BYTES_MAX {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("chunk size {}", req.chunk_bytes),
            ));
        }
        let fits = match req.op {
            UpdateOp::Write { offset } => {
                offset as u64 + data.len() as u64 <= req.chunk_bytes as u64
            }
            UpdateOp::Replace => data.len() as u64 <= req.chunk_bytes as u64,
            UpdateOp::Truncate { length } => length <= req.chunk_bytes && data.is_empty(),
            UpdateOp::Remove => data.is_empty(),
        };
        if !fits {
            return Err(err(ErrorCode::InvalidArgument, "update outside the chunk"));
        }
        let t = self.target_or_err(req.at.target)?.clone();
        // 1. Chain version and role.
        let (_, view) = self.checked_view(&req.at)?;
        if !Self::writable(&t, &view) {
            return Err(err(
                ErrorCode::TargetNotServing,
                format!("target {} does not take writes", t.id),
            ));
        }
        if req.version.is_none() && !view.is_head() {
            return Err(err(
                ErrorCode::TargetNotServing,
                format!("target {} is not the head", t.id),
            ));
        }
        // 2. Updates of one chunk are serialised (at the head this orders the chain).
        let guard = t.lock(req.chunk).await;
        if req.op == UpdateOp::Remove {
            self.forward_remove_chunk(&t, &req).await?;
            on_store(&t.store, move |s| s.remove(req.chunk))
                .await
                .map_err(store_err)?;
            return Ok(UpdateReply {
                version: ChunkVersion(0),
                length: 0,
            });
        }
        let origin = (req.client, req.request);
        let key = (req.client, req.request, req.chunk);
        if let Some(r) = t.dedupe.lock().get(key) {
            return Ok(r);
        }
        let chunk = req.chunk;
        let info = on_store(&t.store, move |s| s.info(chunk))
            .await
            .unwrap_or_default();
        let u = match req.version {
            None => {
                // Head. A retry whose first attempt committed (possibly through an earlier
                // head that has since failed) is found by its origin.
                // The chunk's record remembers its last updates (persisted with it), so this
                // also holds after a restart.
                if let Some((version, length)) = t.store.applied(chunk, req.client, req.request) {
                    let r = UpdateReply { version, length };
                    t.dedupe.lock().put(key, r);
                    return Ok(r);
                }
                let mut committed = info.committed;
                if let Some(p) = info.pending {
                    // A leftover pending version (an update whose chain write did not finish,
                    // maybe under a previous head): finish it first, so the successors that
                    // may already have committed it stay consistent with us.
                    let c = self.redrive_pending(&t, &req, p).await?;
                    if p.origin == Some(origin) {
                        let r = UpdateReply {
                            version: c.version,
                            length: c.length,
                        };
                        t.dedupe.lock().put(key, r);
                        return Ok(r);
                    }
                    committed = Some(c);
                }
                committed.map(|c| c.version).unwrap_or_default().next()
            }
            Some(u) => {
                // 3. Middle/tail: check u against our committed version.
                let committed = info.committed_version();
                // A full replace of the version we hold but with other content means our copy
                // diverged (we committed an update the rest of the chain never did, e.g. as a
                // tail that failed before replying): take the chain's content.
                let diverged = req.op == UpdateOp::Replace
                    && info.committed.is_some_and(|c| {
                        c.version == u && c.crc != crate::store::content_digest(&data)
                    });
                // An incremental update numbered like our committed version but from another
                // request: the versions diverged (a predecessor reused `u` after losing track
                // of an update we committed). Acking it as "already applied" would lose it;
                // ask for the whole chunk instead, which the `diverged` rule then installs.
                let reused = req.op != UpdateOp::Replace
                    && info
                        .committed
                        .is_some_and(|c| c.version == u && c.origin.is_some_and(|o| o != origin));
                if reused {
                    return Err(err(
                        ErrorCode::VersionGap,
                        format!("chunk {chunk}: version {u} committed here by another request"),
                    ));
                }
                if u <= committed && !diverged {
                    let len = info.committed.map(|c| c.length).unwrap_or(0);
                    return Ok(UpdateReply {
                        version: u,
                        length: len,
                    });
                }
                if req.op != UpdateOp::Replace && u != committed.next() {
                    return Err(err(
                        ErrorCode::VersionGap,
                        format!("chunk {chunk}: got version {u}, committed {committed}"),
                    ));
                }
                u
            }
        };
        // 4. Store it as the pending version. A replica with a successor does not wait for
        // its data sync here: the sync runs beside the forward, as part of making the pending
        // record durable (step 5), so the chain's data syncs overlap instead of adding up.
        // The pending version is visible at once (reads here ask the tail), and the reply
        // still waits for the sync, so an ack means durable on every replica as before.
        let staged = self
            .stage(
                &t,
                &req,
                u,
                view.chain_version,
                data.clone(),
                Some(origin),
                pieces,
                view.successor().is_none(),
            )
            .await?;
        if req.version.is_none() && self.test_bug() == Some(TestBug::EarlyAck) {
            return Ok(self.early_ack(t, req, u, staged, data, guard).await);
        }
        // 5. Forward down the chain and, meanwhile, make our pending record durable (its data
        // is already); 6. commit when the successor replied. With the pending version durable
        // before we reply, a middle or head commits lazily (no fsync on the way back up the
        // chain): a crash can only turn its commit back into that pending version, which CRAQ
        // resolves as for any update in flight. The tail commits durably (it answers version
        // queries). Serial fsyncs per chain write: 2 per replica on the way down + 1 at the
        // tail, instead of 2 per replica (see docs/storage.md, "Write path latency").
        let mut maybe_delivered = false;
        let forward = self.forward_update(&t, &req, u, data, &mut maybe_delivered);
        let (forwarded, persisted) = if view.successor().is_some() {
            let persist = on_store(&t.store, |s| s.persist_records());
            let (f, p) = tokio::join!(forward, persist);
            (f, Some(p))
        } else {
            (forward.await, None)
        };
        let handed_on = match forwarded {
            Ok(h) => h,
            Err(e) => {
                if maybe_delivered {
                    // A successor may have stored (and the tail committed) `u`: dropping it here
                    // would let the next update reuse `u` with other content, which the
                    // successors would then ack as "already applied" (an acknowledged update
                    // lost). Keep it pending: the next update of the chunk, or a retry of this
                    // one, re-drives it first. Report it as retryable, never as a definitive
                    // rejection, so our predecessor keeps its pending copy too.
                    tracing::info!(chunk = %chunk, version = %u, error = %e, "forward failed after it may have reached the successor; keeping the pending version");
                    return Err(err(
                        ErrorCode::Unavailable,
                        format!("update {u} of {chunk} in doubt: {e}"),
                    ));
                }
                // If our pending record was made durable, so is its removal: a refused
                // update must not come back as pending after a crash.
                let durable = matches!(persisted, Some(Ok(())));
                let _ = on_store(&t.store, move |s| {
                    s.abort(chunk, u)?;
                    if durable {
                        s.persist_records()?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await;
                return Err(e);
            }
        };
        // Lazily only when a successor committed `u` (we are not the tail) and our pending
        // record is durable; otherwise (tail, the successor vanished meanwhile, the record
        // sync failed) durably, as before.
        let lazy = handed_on && matches!(persisted, Some(Ok(())));
        if let Some(Err(e)) = &persisted {
            tracing::warn!(chunk = %chunk, version = %u, error = %e, "making the pending record durable failed; committing durably");
        }
        // The durable case as a lazy commit plus `persist_records`, so that tails (and
        // heads and middles whose record sync failed) share group commits too.
        let c = on_store(&t.store, move |s| {
            let c = s.commit_lazy(chunk, u)?;
            if !lazy {
                s.persist_records()?;
            }
            Ok(c)
        })
        .await
        .map_err(|e| {
            self.offline_if_failed(&t);
            store_err(e)
        })?;
        debug_assert_eq!(c.version, staged.version);
        let r = UpdateReply {
            version: u,
            length: c.length,
        };
        t.dedupe.lock().put(key, r);
        Ok(r)
    }

    /// A target whose store can no longer make anything durable (a data sync failed) stops
    /// serving for good: reported `offline`, meta takes it out of its chain. Its pending
    /// versions were never acknowledged by it; the successors that committed them keep them.
    fn offline_if_failed(&self, t: &Target) {
        if t.store.failed() {
            let mut local = t.local.lock();
            if *local != LocalState::Offline {
                tracing::error!(target = %t.id, "data sync failed; target goes offline");
                *local = LocalState::Offline;
            }
        }
    }

    /// `TestBug::EarlyAck`: forwards and commits in the background (still holding the chunk
    /// lock) and acknowledges at once. Deliberately wrong: the ack no longer implies that any
    /// replica but the head has the write, nor that the head committed it.
    async fn early_ack(
        self: &Arc<Self>,
        t: Arc<Target>,
        req: UpdateReq,
        u: ChunkVersion,
        staged: VersionInfo,
        data: Bytes,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> UpdateReply {
        let reply = UpdateReply {
            version: u,
            length: staged.length,
        };
        let node = self.clone();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let span = tracing::warn_span!("early_ack", chunk = %req.chunk, version = %u);
        tokio::spawn(
            async move {
                let _guard = guard;
                let chunk = req.chunk;
                let key = (req.client, req.request, chunk);
                let mut maybe_delivered = false;
                let fwd = node.forward_update(&t, &req, u, data, &mut maybe_delivered);
                tokio::pin!(fwd);
                // Poll the forward once (it queues the frame to the successor), then ack.
                let first = futures::poll!(&mut fwd);
                let _ = started_tx.send(());
                let res = match first {
                    std::task::Poll::Ready(r) => r,
                    std::task::Poll::Pending => fwd.await,
                };
                match res {
                    Ok(_) => match on_store(&t.store, move |s| s.commit(chunk, u)).await {
                        Ok(_) => {
                            t.dedupe.lock().put(key, reply);
                        }
                        Err(e) => tracing::warn!(error = %e, "early-ack: commit failed"),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "early-ack: forward failed after the ack");
                        let _ = on_store(&t.store, move |s| s.abort(chunk, u)).await;
                    }
                }
            }
            .instrument(span),
        );
        let _ = started_rx.await;
        reply
    }

    async fn stage(
        self: &Arc<Self>,
        t: &Arc<Target>,
        req: &UpdateReq,
        u: ChunkVersion,
        cv: ChainVersion,
        data: Bytes,
        origin: Option<(ClientId, RequestId)>,
        payload_crcs: Vec<u32>,
        sync: bool,
    ) -> Result<VersionInfo, PondError> {
        let (chunk, op) = (req.chunk, req.op);
        let res = on_store(&t.store, move |s| {
            let m = match op {
                UpdateOp::Write { offset } => Mutation::Write {
                    offset,
                    data: &data,
                },
                UpdateOp::Replace => Mutation::Replace { data: &data },
                UpdateOp::Truncate { length } => Mutation::Truncate { length },
                UpdateOp::Remove => unreachable!("remove is not staged"),
            };
            if sync {
                s.stage_with(chunk, u, cv, m, origin, Some(&payload_crcs))
            } else {
                s.stage_unsynced(chunk, u, cv, m, origin, Some(&payload_crcs))
            }
        })
        .await;
        res.map_err(|e| {
            if let StoreError::Checksum { .. } = e {
                // The committed copy we build on is damaged: repair it in the background; the
                // sender retries (Checksum is retryable).
                self.spawn_repair(t.clone(), chunk);
            }
            store_err(e)
        })
    }

    async fn redrive_pending(
        self: &Arc<Self>,
        t: &Arc<Target>,
        req: &UpdateReq,
        p: VersionInfo,
    ) -> Result<VersionInfo, PondError> {
        tracing::info!(chunk = %req.chunk, version = %p.version, "re-driving a leftover pending version");
        // The pending version's own origin travels with it: successors record it for
        // exactly-once retries, and recording the origin of the update that triggered the
        // re-drive would make a retry of that update look applied when it never was.
        let (client, request) = p
            .origin
            .unwrap_or((self.server_client(), self.next_request()));
        let chunk = req.chunk;
        let (data, crc) = on_store(&t.store, move |s| s.read_crc(chunk, p.version, 0, u32::MAX))
            .await
            .map_err(store_err)?;
        // `forward_update` sends a replace's payload with the request's CRC as is.
        let replace = UpdateReq {
            op: UpdateOp::Replace,
            client,
            request,
            crc,
            ..req.clone()
        };
        let mut maybe_delivered = false;
        self.forward_update(t, &replace, p.version, data, &mut maybe_delivered)
            .await?;
        // Durable: nothing made the pending record durable before this commit.
        on_store(&t.store, move |s| s.commit(chunk, p.version))
            .await
            .map_err(store_err)
    }

    /// Whether a failed forward may still have been stored by the successor (and committed
    /// further down): everything but a refused connection or a rejection the successor makes
    /// before it stages anything.
    fn maybe_delivered(e: &NetError) -> bool {
        match e {
            NetError::Connect { .. } => false,
            NetError::Remote(r) => !matches!(
                r.code,
                ErrorCode::StaleChainVersion
                    | ErrorCode::TargetNotServing
                    | ErrorCode::VersionGap
                    | ErrorCode::Checksum
                    | ErrorCode::NoSpace
                    | ErrorCode::InvalidArgument
                    | ErrorCode::Malformed
                    | ErrorCode::Unauthenticated
            ),
            _ => true,
        }
    }

    fn forward_retryable(code: ErrorCode) -> bool {
        matches!(
            code,
            ErrorCode::StaleChainVersion
                | ErrorCode::TargetNotServing
                | ErrorCode::Timeout
                | ErrorCode::Unavailable
                | ErrorCode::Checksum
                | ErrorCode::VersionGap
        )
    }

    /// Waits for a routing change or the backoff, whichever comes first.
    async fn backoff(rx: &mut watch::Receiver<Arc<RoutingInfo>>) {
        let _ = tokio::time::timeout(
            Duration::from_millis(FORWARD_RETRY_BACKOFF_MS),
            rx.changed(),
        )
        .await;
    }

    /// Sends pending `u` to the successor the current routing names, retrying (within
    /// budget) across successor failures and chain changes. Returns when the successor has
    /// committed it (`true`), or at once when this target is the last writer, the tail
    /// (`false`).
    async fn forward_update(
        self: &Arc<Self>,
        t: &Arc<Target>,
        req: &UpdateReq,
        u: ChunkVersion,
        data: Bytes,
        maybe_delivered: &mut bool,
    ) -> Result<bool, PondError> {
        let mut rx = self.routing.subscribe();
        // A full replace carries the whole content of `u` already (verified on receipt):
        // forward it as is instead of reading it back from the store.
        let mut full: Option<(Bytes, u32)> =
            (req.op == UpdateOp::Replace).then(|| (data.clone(), req.crc));
        let mut force_full = false;
        let mut last = err(ErrorCode::Unavailable, "no attempt");
        for _attempt in 0..FORWARD_ATTEMPTS_MAX {
            let r = rx.borrow_and_update().clone();
            let view = self.view(&r, t.id)?;
            self.fence_check()?;
            if !Self::writable(t, &view) {
                return Err(err(
                    ErrorCode::TargetNotServing,
                    format!("target {} lost its write role", t.id),
                ));
            }
            let Some(succ) = view.successor().cloned() else {
                return Ok(false);
            };
            let Some(addr) = r.node_addr(succ.node).map(str::to_string) else {
                last = err(
                    ErrorCode::Unavailable,
                    format!("no address for node {}", succ.node),
                );
                Self::backoff(&mut rx).await;
                continue;
            };
            // A syncing successor gets the whole chunk (DESIGN §4 recovery step 1).
            let whole = force_full
                || req.op == UpdateOp::Replace
                || succ.public_state == PublicState::Syncing;
            let (op, payload, crc) = if whole {
                if full.is_none() {
                    let chunk = req.chunk;
                    let (b, crc) = on_store(&t.store, move |s| s.read_crc(chunk, u, 0, u32::MAX))
                        .await
                        .map_err(store_err)?;
                    full = Some((b, crc));
                }
                let (b, crc) = full.clone().expect("just set");
                (UpdateOp::Replace, b, crc)
            } else {
                // The payload we verified on receipt: its CRC travels on unchanged.
                (req.op, data.clone(), req.crc)
            };
            let fwd = UpdateReq {
                at: view.at(&succ),
                chunk: req.chunk,
                op,
                chunk_bytes: req.chunk_bytes,
                crc,
                version: Some(u),
                client: req.client,
                request: req.request,
            };
            match self.peers.send_update(&addr, fwd, payload).await {
                Ok(_) => return Ok(true),
                Err(e) => {
                    *maybe_delivered |= Self::maybe_delivered(&e);
                    let code = e.code();
                    if !Self::forward_retryable(code) {
                        return Err(e.into_pond());
                    }
                    if code == ErrorCode::VersionGap {
                        // The successor missed an update: send it the whole chunk instead.
                        force_full = true;
                    }
                    tracing::debug!(succ = %succ.id, error = %e, "forward failed; retrying");
                    last = e.into_pond();
                    Self::backoff(&mut rx).await;
                }
            }
        }
        tracing::warn!(target = %t.id, error = %last, "giving up forwarding after {FORWARD_ATTEMPTS_MAX} attempts");
        Err(err(
            ErrorCode::Unavailable,
            format!("successor unreachable: {last}"),
        ))
    }

    async fn forward_remove_chunk(
        self: &Arc<Self>,
        t: &Arc<Target>,
        req: &UpdateReq,
    ) -> Result<(), PondError> {
        let mut rx = self.routing.subscribe();
        let mut last = err(ErrorCode::Unavailable, "no attempt");
        for _ in 0..FORWARD_ATTEMPTS_MAX {
            let r = rx.borrow_and_update().clone();
            let view = self.view(&r, t.id)?;
            let Some(succ) = view.successor().cloned() else {
                return Ok(());
            };
            let Some(addr) = r.node_addr(succ.node).map(str::to_string) else {
                Self::backoff(&mut rx).await;
                continue;
            };
            let fwd = UpdateReq {
                at: view.at(&succ),
                version: Some(ChunkVersion(0)),
                ..req.clone()
            };
            match self.peers.update(&addr, fwd, Bytes::new()).await {
                Ok(_) => return Ok(()),
                Err(e) if Self::forward_retryable(e.code()) => {
                    last = e.into_pond();
                    Self::backoff(&mut rx).await;
                }
                Err(e) => return Err(e.into_pond()),
            }
        }
        Err(err(
            ErrorCode::Unavailable,
            format!("successor unreachable: {last}"),
        ))
    }

    // -----------------------------------------------------------------------------------------
    // Remove ranges (GC, truncate) and length queries.
    // -----------------------------------------------------------------------------------------

    #[tracing::instrument(skip(self), fields(node = %self.id))]
    async fn handle_remove_range(
        self: &Arc<Self>,
        at: ChainRef,
        inode: InodeId,
        from_index: u64,
        client: ClientId,
        request: RequestId,
        forwarded: bool,
    ) -> Result<u64, PondError> {
        let t = self.target_or_err(at.target)?.clone();
        let (_, view) = self.checked_view(&at)?;
        if !Self::writable(&t, &view) {
            return Err(err(
                ErrorCode::TargetNotServing,
                format!("target {} does not take writes", t.id),
            ));
        }
        if !forwarded && !view.is_head() {
            return Err(err(
                ErrorCode::TargetNotServing,
                format!("target {} is not the head", t.id),
            ));
        }
        // Announce the range before the successors remove it: a resync from here to a
        // syncing successor would otherwise copy back chunks it has just removed (and that we
        // remove below), leaving them on the successor for good.
        struct Removing<'a>(&'a Target, (InodeId, u64));
        impl Drop for Removing<'_> {
            fn drop(&mut self) {
                let mut l = self.0.removing.lock();
                if let Some(i) = l.iter().position(|r| *r == self.1) {
                    l.swap_remove(i);
                }
            }
        }
        t.removing.lock().push((inode, from_index));
        let _removing = Removing(&t, (inode, from_index));
        drop(t.resync_gate.write().await);
        // Successors first, so that a chunk is gone from the tail before the head: a reader
        // never sees a chunk come back.
        let mut rx = self.routing.subscribe();
        let mut done = false;
        let mut last = err(ErrorCode::Unavailable, "no attempt");
        for _ in 0..FORWARD_ATTEMPTS_MAX {
            let r = rx.borrow_and_update().clone();
            let view = self.view(&r, t.id)?;
            let Some(succ) = view.successor().cloned() else {
                done = true;
                break;
            };
            let Some(addr) = r.node_addr(succ.node).map(str::to_string) else {
                Self::backoff(&mut rx).await;
                continue;
            };
            let fwd = DataRequest::RemoveRange {
                at: view.at(&succ),
                inode,
                from_index,
                client,
                request,
                forwarded: true,
            };
            match self.peers.call(&addr, fwd, Bytes::new()).await {
                Ok(_) => {
                    done = true;
                    break;
                }
                Err(e) if Self::forward_retryable(e.code()) => {
                    last = e.into_pond();
                    Self::backoff(&mut rx).await;
                }
                Err(e) => return Err(e.into_pond()),
            }
        }
        if !done {
            return Err(err(
                ErrorCode::Unavailable,
                format!("successor unreachable: {last}"),
            ));
        }
        let from = ChunkId::new(inode, from_index);
        let to = ChunkId::last_of(inode);
        let mut removed = 0;
        loop {
            let page = t
                .store
                .list(Bound::Included(from), Bound::Included(to), 1024);
            if page.is_empty() {
                break;
            }
            for (c, _) in page {
                let _g = t.lock(c).await;
                if on_store(&t.store, move |s| s.remove(c))
                    .await
                    .map_err(store_err)?
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn handle_query_length(
        &self,
        at: ChainRef,
        inode: InodeId,
    ) -> Result<(DataResponse, Bytes), PondError> {
        let t = self.target_or_err(at.target)?;
        let (_, view) = self.checked_view(&at)?;
        if !Self::readable(t, &view) {
            return Err(err(
                ErrorCode::TargetNotServing,
                format!("target {} does not serve reads", t.id),
            ));
        }
        let mut last = None;
        let mut from = Bound::Included(ChunkId::first_of(inode));
        loop {
            let page = t
                .store
                .list(from, Bound::Included(ChunkId::last_of(inode)), 4096);
            let Some((c, _)) = page.last() else { break };
            from = Bound::Excluded(*c);
            for (c, info) in page.iter().rev() {
                if let Some(v) = info.committed {
                    last = Some((c.index(), v.length));
                    break;
                }
            }
        }
        Ok((DataResponse::Length { last }, Bytes::new()))
    }

    fn handle_query_version(
        &self,
        at: ChainRef,
        chunk: ChunkId,
    ) -> Result<(DataResponse, Bytes), PondError> {
        let t = self.target_or_err(at.target)?;
        let (_, view) = self.checked_view(&at)?;
        // Only a target that serves reads may say which version is committed: a target meta
        // lists as serving while it knows it missed writes (locally `online`, waiting for its
        // resync) would name an older version.
        if !Self::readable(t, &view) {
            return Err(err(
                ErrorCode::TargetNotServing,
                format!("target {} does not serve reads", t.id),
            ));
        }
        let info = t.store.info(chunk).unwrap_or_default();
        if info
            .pending
            .is_some_and(|p| p.chain_version != view.chain_version)
        {
            // See `settle_in_doubt`: our committed version may be older than what the previous
            // tail served. The asker retries; a read here (or the next update) settles it.
            return Err(err(
                ErrorCode::Unavailable,
                format!("chunk {chunk}: an update from an older chain is in doubt here"),
            ));
        }
        Ok((
            DataResponse::Version(info.committed_version()),
            Bytes::new(),
        ))
    }

    // -----------------------------------------------------------------------------------------
    // Read path.
    // -----------------------------------------------------------------------------------------

    /// Which version of `chunk` a read on `t` returns (CRAQ apportioned query).
    async fn read_version(
        self: &Arc<Self>,
        t: &Arc<Target>,
        r: &RoutingInfo,
        view: &View,
        info: &ChunkInfo,
        chunk: ChunkId,
    ) -> Result<Option<VersionInfo>, PondError> {
        let Some(p) = info.pending else {
            return Ok(info.committed);
        };
        let tail = view
            .tail
            .as_ref()
            .ok_or_else(|| err(ErrorCode::TargetNotServing, "chain has no serving tail"))?;
        if tail.id == view.me.id {
            if p.chain_version == view.chain_version {
                // Staged as the tail, which commits as soon as it stores: nobody else has it
                // yet, so the committed version is the truth.
                return Ok(info.committed);
            }
            // Staged as a middle under an older chain: the tail of that chain may have
            // committed it and served it, so it must not be skipped now that we are the tail.
            return self.settle_in_doubt(t, view, chunk, p).await;
        }
        let addr = r.node_addr(tail.node).ok_or_else(|| {
            err(
                ErrorCode::Unavailable,
                format!("no address for node {}", tail.node),
            )
        })?;
        let q = DataRequest::QueryVersion {
            at: view.at(tail),
            chunk,
        };
        let answer = self
            .peers
            .call(addr, q, Bytes::new())
            .await
            .map_err(NetError::into_pond)?;
        if let (DataResponse::Version(v), _) = &answer {
            tracing::debug!(target = %t.id, %chunk, tail = %tail.id, tail_version = %v,
                pending = %p.version, "read asked the tail");
        }
        match answer {
            (DataResponse::Version(v), _) if v == p.version => Ok(Some(p)),
            (DataResponse::Version(v), _) if v == info.committed_version() => Ok(info.committed),
            (DataResponse::Version(v), _) => Err(err(
                ErrorCode::Unavailable,
                format!(
                    "tail has version {v} of {chunk}, we have {} / pending {}",
                    info.committed_version(),
                    p.version
                ),
            )),
            _ => Err(err(ErrorCode::Malformed, "unexpected version query reply")),
        }
    }

    /// A tail's pending version staged under an older chain version (its update may have
    /// been committed by the old tail, or may be committed later by a re-drive): commits it,
    /// as any retry or re-drive from the predecessors would, and returns it. If an update of
    /// the chunk is in progress here, the read is retried instead.
    ///
    /// "Tail" here is the last *serving* target; a syncing target may follow it and receive
    /// its writes. Then the version is first handed on (a re-drive, full replace) and only
    /// then committed: committed here means committed on every write-receiving target after
    /// us, which the head relies on when it acks a retry from the committed record. Before,
    /// it was committed here alone; a syncing successor whose resync had already passed the
    /// chunk never got it, the retry of its update was acked from our record, and after a
    /// failover to that successor the acknowledged write was gone (chaos seed 3, netns).
    async fn settle_in_doubt(
        self: &Arc<Self>,
        t: &Arc<Target>,
        view: &View,
        chunk: ChunkId,
        p: VersionInfo,
    ) -> Result<Option<VersionInfo>, PondError> {
        let busy = || {
            err(
                ErrorCode::Unavailable,
                format!(
                    "chunk {chunk}: update {} in doubt at the new tail",
                    p.version
                ),
            )
        };
        let Some(_g) = t.try_lock(chunk) else {
            return Err(busy());
        };
        let now = on_store(&t.store, move |s| s.info(chunk))
            .await
            .unwrap_or_default();
        match now.pending {
            Some(q) if q.version == p.version && q.chain_version == p.chain_version => {
                self.settle_locked(t, view, chunk, q).await.map(Some)
            }
            _ => Err(busy()),
        }
    }

    /// `settle_in_doubt` with the chunk lock held and `p` known to be the pending version.
    async fn settle_locked(
        self: &Arc<Self>,
        t: &Arc<Target>,
        view: &View,
        chunk: ChunkId,
        p: VersionInfo,
    ) -> Result<VersionInfo, PondError> {
        if view.successor().is_some() {
            // Only what the re-drive reads from `p` matters: a whole-chunk replace.
            let req = UpdateReq {
                at: view.at(&view.me),
                chunk,
                op: UpdateOp::Replace,
                chunk_bytes: CHUNK_BYTES_MAX,
                crc: 0,
                version: None,
                client: self.server_client(),
                request: self.next_request(),
            };
            tracing::info!(%chunk, version = %p.version, "tail hands an update staged under an older chain to its syncing successor");
            return self.redrive_pending(t, &req, p).await;
        }
        tracing::info!(%chunk, version = %p.version, "tail commits an update staged under an older chain");
        on_store(&t.store, move |s| s.commit(chunk, p.version))
            .await
            .map_err(store_err)
    }

    async fn handle_read(
        self: &Arc<Self>,
        items: Vec<ReadItem>,
    ) -> Result<(DataResponse, Bytes), PondError> {
        if items.len() > READ_BATCH_ITEMS_MAX {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("{} read items", items.len()),
            ));
        }
        let r = self.routing();
        // 1. Resolve, role-check and pick a version per item.
        type Job = (
            Arc<Target>,
            ChunkId,
            ChunkVersion,
            u32,
            u32,
            ChainVersion,
            u32,
        );
        let mut jobs: Vec<Result<Option<Job>, PondError>> = Vec::with_capacity(items.len());
        let mut budget = READ_BATCH_BYTES_MAX;
        for it in &items {
            let job = async {
                let t = self.target_or_err(it.at.target)?.clone();
                let (_, view) = self.checked_view(&it.at)?;
                if !Self::readable(&t, &view) {
                    return Err(err(
                        ErrorCode::TargetNotServing,
                        format!("target {} does not serve reads", t.id),
                    ));
                }
                let info = t.store.info(it.chunk).unwrap_or_default();
                let chosen = self.read_version(&t, &r, &view, &info, it.chunk).await;
                tracing::debug!(target = %t.id, chunk = %it.chunk, chain = %view.chain,
                    chain_version = %view.chain_version,
                    committed = %info.committed_version(),
                    pending = ?info.pending.map(|p| (p.version, p.chain_version)),
                    tail = ?view.tail.as_ref().map(|x| x.id),
                    answer = ?chosen.as_ref().map(|o| o.map(|v| v.version)),
                    "read answered");
                let Some(v) = chosen? else {
                    return Ok(None);
                };
                let n = (v.length.saturating_sub(it.offset)).min(it.length) as u64;
                if n > budget {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        "read batch exceeds the reply size limit",
                    ));
                }
                budget -= n;
                Ok(Some((
                    t,
                    it.chunk,
                    v.version,
                    it.offset,
                    it.length,
                    v.chain_version,
                    v.length,
                )))
            }
            .await;
            jobs.push(job);
        }
        // 2. Read and verify: what the page cache (or memory) holds right here, the rest in
        // one blocking task for the batch. A hop to a blocking thread for every read cost a
        // cached 4 KiB read most of its time on this 2-core machine.
        type Done = Result<
            Option<(
                Arc<Target>,
                ChunkId,
                ChunkVersion,
                ChainVersion,
                u32,
                Result<(Bytes, u32), StoreError>,
            )>,
            PondError,
        >;
        let mut done: Vec<Option<Done>> = Vec::with_capacity(jobs.len());
        let mut waiting = Vec::new();
        for (i, j) in jobs.into_iter().enumerate() {
            match j {
                Ok(Some((t, c, v, off, len, cv, clen))) => {
                    let now = if t.store.blocking() {
                        t.store.read_crc_nowait(c, v, off, len)
                    } else {
                        Some(t.store.read_crc(c, v, off, len))
                    };
                    match now {
                        Some(res) => done.push(Some(Ok(Some((t, c, v, cv, clen, res))))),
                        None => {
                            done.push(None);
                            waiting.push((i, (t, c, v, off, len, cv, clen)));
                        }
                    }
                }
                other => done.push(Some(other.map(|_| None))),
            }
        }
        if !waiting.is_empty() {
            let read = tokio::task::spawn_blocking(move || {
                waiting
                    .into_iter()
                    .map(|(i, (t, c, v, off, len, cv, clen))| {
                        let res = t.store.read_crc(c, v, off, len);
                        (i, (t, c, v, cv, clen, res))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .expect("read task panicked");
            for (i, d) in read {
                done[i] = Some(Ok(Some(d)));
            }
        }
        let done = done.into_iter().map(|d| d.expect("every item read"));
        // The data must have been read while the lease held: a node frozen between the role
        // check and here may have been replaced meanwhile.
        self.fence_check()?;
        // 3. Assemble the reply; damaged copies are reported and repaired in the background.
        let mut out = Vec::with_capacity(done.len());
        let mut bufs = Vec::with_capacity(done.len());
        for d in done {
            match d {
                Err(e) => out.push(Err(e)),
                Ok(None) => out.push(Ok(ReadOk {
                    version: ChunkVersion(0),
                    chain_version: ChainVersion(0),
                    chunk_length: 0,
                    bytes: 0,
                    crc: crc32c::crc32c(&[]),
                })),
                Ok(Some((t, c, v, cv, clen, res))) => match res {
                    Ok((b, crc)) => {
                        out.push(Ok(ReadOk {
                            version: v,
                            chain_version: cv,
                            chunk_length: clen,
                            bytes: b.len() as u32,
                            crc,
                        }));
                        bufs.push(b);
                    }
                    Err(e) => {
                        if let StoreError::Checksum { .. } = e {
                            tracing::warn!(target = %t.id, chunk = %c, error = %e, "corrupt chunk copy; repairing");
                            t.corrupt_found.fetch_add(1, Ordering::Relaxed);
                            self.spawn_repair(t.clone(), c);
                        }
                        out.push(Err(store_err(e)));
                    }
                },
            }
        }
        let payload = match bufs.len() {
            0 => Bytes::new(),
            1 => bufs.pop().expect("one"),
            _ => {
                let mut all = BytesMut::with_capacity(bufs.iter().map(|b| b.len()).sum());
                for b in bufs {
                    all.extend_from_slice(&b);
                }
                all.freeze()
            }
        };
        Ok((DataResponse::Read { items: out }, payload))
    }

    // -----------------------------------------------------------------------------------------
    // Repair.
    // -----------------------------------------------------------------------------------------

    pub(crate) fn spawn_repair(self: &Arc<Self>, t: Arc<Target>, chunk: ChunkId) {
        if !t.repairing.lock().insert(chunk) {
            return;
        }
        let node = self.clone();
        let span = tracing::info_span!("repair", target = %t.id, chunk = %chunk);
        tokio::spawn(
            async move {
                let res = node.repair(&t, chunk).await;
                t.repairing.lock().remove(&chunk);
                match res {
                    Ok(true) => {
                        t.repaired.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("repaired from a good replica");
                    }
                    Ok(false) => tracing::info!("no repair needed (chunk changed meanwhile)"),
                    Err(e) => tracing::warn!(error = %e, "repair failed; the scrubber will retry"),
                }
            }
            .instrument(span),
        );
    }

    /// Rewrites the committed copy of `chunk` on `t` from another serving replica.
    pub async fn repair(
        self: &Arc<Self>,
        t: &Arc<Target>,
        chunk: ChunkId,
    ) -> Result<bool, PondError> {
        let _g = t.lock(chunk).await;
        let info = t.store.info(chunk).unwrap_or_default();
        let Some(mine) = info.committed else {
            return Ok(false);
        };
        let r = self.routing();
        let view = self.view(&r, t.id)?;
        let mut last = err(ErrorCode::Unavailable, "no other serving replica");
        for other in r.serving_targets(view.chain) {
            if other.id == t.id {
                continue;
            }
            let Some(addr) = r.node_addr(other.node) else {
                continue;
            };
            let item = ReadItem {
                at: view.at(other),
                chunk,
                offset: 0,
                length: u32::MAX,
            };
            match self.peers.read_chunks(addr, vec![item]).await {
                Ok(mut v) => match v.pop() {
                    Some(Ok((ok, data))) if ok.version == mine.version => {
                        let (ver, cv) = (ok.version, ok.chain_version);
                        on_store(&t.store, move |s| s.install(chunk, ver, cv, &data))
                            .await
                            .map_err(store_err)?;
                        return Ok(true);
                    }
                    Some(Ok((ok, _))) => {
                        last = err(
                            ErrorCode::Unavailable,
                            format!("replica {} has version {}", other.id, ok.version),
                        );
                    }
                    Some(Err(e)) => last = e,
                    None => last = err(ErrorCode::Malformed, "empty read reply"),
                },
                Err(e) => last = e.into_pond(),
            }
        }
        Err(last)
    }

    // -----------------------------------------------------------------------------------------
    // Resync (receiving side).
    // -----------------------------------------------------------------------------------------

    fn syncing_target(&self, at: &ChainRef) -> Result<Arc<Target>, PondError> {
        let t = self.target_or_err(at.target)?.clone();
        let (_, view) = self.checked_view(at)?;
        if view.me.public_state != PublicState::Syncing {
            return Err(err(
                ErrorCode::TargetNotServing,
                format!("target {} is not syncing", t.id),
            ));
        }
        Ok(t)
    }

    fn handle_list(
        &self,
        at: ChainRef,
        after: Option<ChunkId>,
        limit: u32,
    ) -> Result<(DataResponse, Bytes), PondError> {
        let t = self.target_or_err(at.target)?;
        self.checked_view(&at)?;
        let limit = limit.clamp(1, CHUNK_LIST_PAGE_MAX) as usize;
        let from = after.map(Bound::Excluded).unwrap_or(Bound::Unbounded);
        let page = t.store.list(from, Bound::Unbounded, limit + 1);
        let more = page.len() > limit;
        let chunks = page
            .iter()
            .take(limit)
            .filter_map(|(c, i)| i.summary(*c))
            .collect();
        // A page of only pending chunks still advances: report `more` with what we have.
        Ok((DataResponse::ChunkList { chunks, more }, Bytes::new()))
    }

    async fn handle_sync_install(
        self: &Arc<Self>,
        at: ChainRef,
        chunk: ChunkId,
        version: ChunkVersion,
        committed_under: ChainVersion,
        crc: u32,
        data: Bytes,
    ) -> Result<(DataResponse, Bytes), PondError> {
        if crc32c::crc32c(&data) != crc {
            return Err(err(ErrorCode::Checksum, "sync payload CRC mismatch"));
        }
        if data.len() > CHUNK_BYTES_MAX as usize {
            return Err(err(ErrorCode::InvalidArgument, "sync payload too large"));
        }
        let t = self.syncing_target(&at)?;
        let _g = t.lock(chunk).await;
        on_store(&t.store, move |s| {
            s.install(chunk, version, committed_under, &data)
        })
        .await
        .map_err(store_err)?;
        Ok((DataResponse::Done, Bytes::new()))
    }

    async fn handle_sync_remove(
        self: &Arc<Self>,
        at: ChainRef,
        chunk: ChunkId,
    ) -> Result<(DataResponse, Bytes), PondError> {
        let t = self.syncing_target(&at)?;
        let _g = t.lock(chunk).await;
        on_store(&t.store, move |s| s.remove(chunk))
            .await
            .map_err(store_err)?;
        Ok((DataResponse::Done, Bytes::new()))
    }

    async fn handle_sync_done(
        self: &Arc<Self>,
        at: ChainRef,
    ) -> Result<(DataResponse, Bytes), PondError> {
        let t = self.syncing_target(&at)?;
        let dropped = self.drop_stale_pending(&t, at.chain_version).await?;
        if dropped > 0 {
            tracing::info!(target = %t.id, dropped, "dropped pending versions left from before the resync");
        }
        // Recorded before the state flips, so a routing update in between keeps it.
        *t.synced_at.lock() = Some((at.chain, at.chain_version));
        *t.local.lock() = LocalState::UpToDate;
        tracing::info!(target = %t.id, chain = %at.chain, "resync done; target is up to date");
        Ok((DataResponse::Done, Bytes::new()))
    }

    /// Aborts every pending version of `t` staged under another chain version than `cv`:
    /// updates left in doubt before the target went away (or before a crash). The resync
    /// compares committed versions only, so without this a leftover would later be committed
    /// by a re-drive (as head) or by `settle_in_doubt` (as tail) on top of newer acknowledged
    /// updates, bringing an old value back. Pending versions forwarded to us during the sync
    /// carry the current chain version and stay.
    async fn drop_stale_pending(
        self: &Arc<Self>,
        t: &Arc<Target>,
        cv: ChainVersion,
    ) -> Result<u64, PondError> {
        let mut dropped = 0;
        let mut from = Bound::Unbounded;
        loop {
            let page = t.store.list(from, Bound::Unbounded, 1024);
            let Some((lastc, _)) = page.last() else { break };
            from = Bound::Excluded(*lastc);
            for (c, info) in page {
                if info.pending.is_none_or(|p| p.chain_version == cv) {
                    continue;
                }
                let _g = t.lock(c).await;
                let Some(p) = t.store.info(c).and_then(|i| i.pending) else {
                    continue;
                };
                if p.chain_version == cv {
                    continue;
                }
                on_store(&t.store, move |s| s.abort(c, p.version))
                    .await
                    .map_err(store_err)?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    // -----------------------------------------------------------------------------------------
    // Resync (sending side) and GC, driven by background loops.
    // -----------------------------------------------------------------------------------------

    /// If `t` is the predecessor of a syncing target that it has not filled yet under the
    /// current chain version, fills it (DESIGN §4 recovery, steps 2–4).
    pub async fn maybe_resync(self: &Arc<Self>, t: &Arc<Target>) {
        if self.fenced() {
            return;
        }
        let r = self.routing();
        let Ok(view) = self.view(&r, t.id) else {
            return;
        };
        if !Self::readable(t, &view) {
            return;
        }
        let Some(succ) = view.successor().cloned() else {
            return;
        };
        if succ.public_state != PublicState::Syncing {
            return;
        }
        if *t.resynced.lock() == Some((view.chain, view.chain_version)) {
            return;
        }
        if t.resync_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let span = tracing::info_span!("resync", from = %t.id, to = %succ.id, chain = %view.chain, version = %view.chain_version);
        let res = self
            .resync(t, &r, &view, &succ)
            .instrument(span.clone())
            .await;
        t.resync_running.store(false, Ordering::Release);
        let _e = span.enter();
        match res {
            Ok((sent, removed)) => {
                tracing::info!(sent, removed, "resync complete");
                *t.resynced.lock() = Some((view.chain, view.chain_version));
            }
            Err(e) => tracing::warn!(error = %e, "resync interrupted; will retry"),
        }
    }

    async fn resync(
        self: &Arc<Self>,
        t: &Arc<Target>,
        r: &RoutingInfo,
        view: &View,
        succ: &TargetInfo,
    ) -> Result<(u64, u64), PondError> {
        let addr = r
            .node_addr(succ.node)
            .ok_or_else(|| {
                err(
                    ErrorCode::Unavailable,
                    format!("no address for node {}", succ.node),
                )
            })?
            .to_string();
        let at = view.at(succ);
        let still_current = |node: &Node| {
            node.routing().chains.get(&view.chain).map(|c| c.version) == Some(view.chain_version)
        };
        // 2. The returning target's chunk list.
        let mut theirs: BTreeMap<ChunkId, ChunkSummary> = BTreeMap::new();
        let mut after = None;
        loop {
            let req = DataRequest::ListChunks {
                at,
                after,
                limit: RESYNC_PAGE,
            };
            let (resp, _) = self
                .peers
                .call(&addr, req, Bytes::new())
                .await
                .map_err(NetError::into_pond)?;
            let DataResponse::ChunkList { chunks, more } = resp else {
                return Err(err(ErrorCode::Malformed, "unexpected list reply"));
            };
            after = chunks.last().map(|c| c.chunk).or(after);
            for c in chunks {
                theirs.insert(c.chunk, c);
            }
            if !more {
                break;
            }
        }
        // 3. Delete what only they have, then send what is missing or different. Deleting
        // first matters when the returning target is full: what it missed while away includes
        // the removal of chunks (GC of deleted files, truncates) whose space the copies need;
        // sending first failed with no space on every retry and the chain never healed (chaos
        // seed 1: a capped node killed after its filler file was unlinked).
        let (mut sent, mut removed) = (0u64, 0u64);
        let only_theirs: Vec<ChunkId> = theirs
            .keys()
            .copied()
            .filter(|c| t.store.info(*c).is_none())
            .collect();
        for c in only_theirs {
            removed += self.sync_remove_if_absent(t, &addr, at, c).await?;
            theirs.remove(&c);
        }
        let mut from = Bound::Unbounded;
        loop {
            if !still_current(self) {
                return Err(err(
                    ErrorCode::StaleChainVersion,
                    "chain changed during resync",
                ));
            }
            let page = t.store.list(from, Bound::Unbounded, 256);
            let Some((lastc, _)) = page.last() else { break };
            from = Bound::Excluded(*lastc);
            for (c, _) in page {
                let _gate = t.resync_gate.read().await;
                let _g = t.lock(c).await;
                let mut info = t.store.info(c).unwrap_or_default();
                // An update staged here under an older chain is in doubt: it may have been
                // acknowledged (committed by the tail of that chain), and the copy below
                // compares committed versions only, while `SyncDone` drops such leftovers on
                // the other side. Settle it first, as a read here would (it reaches the
                // syncing target as a full replace): before, a whole chain restarted under
                // load lost an acknowledged write this way (chaos seed 3, netns: every
                // replica held it only as pending or was resynced from one that did).
                if let Some(p) = info.pending
                    && p.chain_version != view.chain_version
                {
                    self.settle_locked(t, view, c, p).await?;
                    info = t.store.info(c).unwrap_or_default();
                }
                let other = theirs.remove(&c);
                let Some(mine) = info.summary(c) else {
                    continue;
                };
                if t.being_removed(c) {
                    // Removed on the successor by the same removal (forwarded before ours).
                    continue;
                }
                if other.is_some_and(|o| {
                    o.version == mine.version && o.crc == mine.crc && o.length == mine.length
                }) {
                    continue;
                }
                let v = mine.version;
                let (data, crc) = on_store(&t.store, move |s| s.read_crc(c, v, 0, u32::MAX))
                    .await
                    .map_err(store_err)?;
                let req = DataRequest::SyncInstall {
                    at,
                    chunk: c,
                    version: mine.version,
                    committed_under: mine.chain_version,
                    crc,
                };
                self.peers
                    .call(&addr, req, data)
                    .await
                    .map_err(NetError::into_pond)?;
                sent += 1;
            }
        }
        // What is left of their list: chunks this target does not list (gone here while the
        // copy ran, or only ever pending).
        for (c, _) in theirs {
            removed += self.sync_remove_if_absent(t, &addr, at, c).await?;
        }
        // 4. Done.
        if !still_current(self) {
            return Err(err(
                ErrorCode::StaleChainVersion,
                "chain changed during resync",
            ));
        }
        self.peers
            .call(&addr, DataRequest::SyncDone { at }, Bytes::new())
            .await
            .map_err(NetError::into_pond)?;
        Ok((sent, removed))
    }

    /// Removes `c` on the syncing successor unless this target holds a committed version of
    /// it (created meanwhile: it reached them as a full replace). Returns how many it removed.
    async fn sync_remove_if_absent(
        &self,
        t: &Arc<Target>,
        addr: &str,
        at: ChainRef,
        c: ChunkId,
    ) -> Result<u64, PondError> {
        let _g = t.lock(c).await;
        if t.store.info(c).and_then(|i| i.committed).is_some() {
            return Ok(0);
        }
        self.peers
            .call(addr, DataRequest::SyncRemove { at, chunk: c }, Bytes::new())
            .await
            .map_err(NetError::into_pond)?;
        Ok(1)
    }

    /// Applies GC tasks from meta for chains this node heads; finished ones are reported in
    /// the next heartbeat.
    pub fn accept_gc(self: &Arc<Self>, tasks: Vec<GcTask>) {
        for task in tasks.into_iter().take(GC_TASKS_MAX) {
            let key = (task.inode, task.chain, task.from_index);
            if !self.gc_running.lock().insert(key) {
                continue;
            }
            let node = self.clone();
            let span = tracing::info_span!("gc", inode = %task.inode, chain = %task.chain, from = task.from_index);
            tokio::spawn(
                async move {
                    let res = node.run_gc(&task).await;
                    node.gc_running.lock().remove(&key);
                    match res {
                        Ok(n) => {
                            tracing::info!(removed = n, "gc task done");
                            node.gc_done.lock().push(task);
                        }
                        Err(e) => tracing::warn!(error = %e, "gc task failed; meta will hand it out again"),
                    }
                }
                .instrument(span),
            );
        }
    }

    async fn run_gc(self: &Arc<Self>, task: &GcTask) -> Result<u64, PondError> {
        let r = self.routing();
        let head = r
            .write_targets(task.chain)
            .first()
            .map(|t| (*t).clone())
            .ok_or_else(|| {
                err(
                    ErrorCode::Unavailable,
                    format!("chain {} has no head", task.chain),
                )
            })?;
        if head.node != self.id {
            return Err(err(
                ErrorCode::TargetNotServing,
                format!("node {} does not head chain {}", self.id, task.chain),
            ));
        }
        let version = r
            .chains
            .get(&task.chain)
            .map(|c| c.version)
            .unwrap_or_default();
        let at = ChainRef {
            chain: task.chain,
            chain_version: version,
            target: head.id,
        };
        let client = ClientId((1 << 63) | self.id.0 as u64);
        self.handle_remove_range(
            at,
            task.inode,
            task.from_index,
            client,
            self.next_request(),
            false,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn lease_rules() {
        let now = Instant::now();
        let fence = Duration::from_millis(FENCE_AFTER_MS);
        // No heartbeat loop (routing injected directly): never fenced.
        assert!(!Node::lease_expired(None, now));
        // Heartbeat loop running, nothing answered yet: fenced.
        assert!(Node::lease_expired(Some(None), now));
        // Renewed just now, or a moment short of the bound: serving.
        assert!(!Node::lease_expired(Some(Some(now)), now));
        assert!(!Node::lease_expired(
            Some(Some(now)),
            now + fence - Duration::from_millis(1)
        ));
        // At or past the bound (a node frozen by SIGSTOP wakes up here): fenced.
        assert!(Node::lease_expired(Some(Some(now)), now + fence));
        assert!(Node::lease_expired(
            Some(Some(now)),
            now + Duration::from_secs(9)
        ));
    }

    /// A table with one target (101 on node 1) in `public` state, in chain 1 at `cv` (or in no
    /// chain yet).
    fn one_target_table(version: u64, chain: Option<u32>, public: PublicState) -> RoutingInfo {
        let mut r = RoutingInfo {
            version: RoutingVersion(version),
            ..Default::default()
        };
        r.targets.insert(
            TargetId(101),
            TargetInfo {
                id: TargetId(101),
                node: NodeId(1),
                chain: ChainId(if chain.is_some() { 1 } else { 0 }),
                public_state: public,
                local_state: LocalState::UpToDate,
                used_bytes: 0,
                capacity_bytes: 0,
            },
        );
        if let Some(cv) = chain {
            r.chains.insert(
                ChainId(1),
                pond_proto::cluster::ChainInfo {
                    id: ChainId(1),
                    version: ChainVersion(cv),
                    targets: vec![TargetId(101)],
                },
            );
        }
        r
    }

    fn mem_node() -> Arc<Node> {
        let engine =
            crate::store::engine::Engine::open(crate::store::mem::MemBackend::new(1 << 24))
                .expect("open an in-memory engine");
        let store: Arc<dyn ChunkStore> = Arc::new(engine);
        Node::new(
            NodeId(1),
            "token".into(),
            vec![TargetSetup {
                id: TargetId(101),
                store,
                member_marker: None,
            }],
        )
    }

    #[test]
    fn up_to_date_target_seen_waiting_or_syncing_in_a_chain_needs_a_resync() {
        let state = |n: &Node| n.local_states()[0].1;
        // A fresh target not placed in a chain yet is "waiting": it stays up to date.
        let n = mem_node();
        n.set_routing(one_target_table(1, None, PublicState::Waiting));
        assert_eq!(state(&n), LocalState::UpToDate);
        // Serving at chain version 3; then (having missed the offline table in between, as a
        // frozen node does) syncing at version 5: it goes online.
        n.set_routing(one_target_table(2, Some(3), PublicState::Serving));
        assert_eq!(state(&n), LocalState::UpToDate);
        n.set_routing(one_target_table(5, Some(5), PublicState::Syncing));
        assert_eq!(state(&n), LocalState::Online);
        // A sync finished under version 5 makes it up to date, and a newer table (another
        // chain changed) with the same chain version keeps it so...
        *n.targets[&TargetId(101)].synced_at.lock() = Some((ChainId(1), ChainVersion(5)));
        *n.targets[&TargetId(101)].local.lock() = LocalState::UpToDate;
        n.set_routing(one_target_table(6, Some(5), PublicState::Syncing));
        assert_eq!(state(&n), LocalState::UpToDate);
        // ...but not once the chain moved on while it was still syncing: sync again.
        n.set_routing(one_target_table(7, Some(6), PublicState::Syncing));
        assert_eq!(state(&n), LocalState::Online);
        // Waiting counts like syncing.
        let n = mem_node();
        n.set_routing(one_target_table(1, Some(1), PublicState::Serving));
        n.set_routing(one_target_table(3, Some(3), PublicState::Waiting));
        assert_eq!(state(&n), LocalState::Online);
    }

    #[test]
    fn maybe_delivered_classification() {
        let remote = |code| NetError::Remote(PondError::new(code, "x"));
        // Rejected before staging: the successor has nothing; the sender may drop its copy.
        for code in [
            ErrorCode::StaleChainVersion,
            ErrorCode::TargetNotServing,
            ErrorCode::VersionGap,
            ErrorCode::NoSpace,
        ] {
            assert!(!Node::maybe_delivered(&remote(code)), "{code:?}");
        }
        // Timed out, lost connection, or failed further down: it may have been committed.
        assert!(Node::maybe_delivered(&remote(ErrorCode::Unavailable)));
        assert!(Node::maybe_delivered(&remote(ErrorCode::Timeout)));
        assert!(Node::maybe_delivered(&NetError::Timeout(
            Duration::from_secs(8)
        )));
        assert!(Node::maybe_delivered(&NetError::Closed));
    }
}
