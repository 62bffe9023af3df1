//! In-memory stand-ins for meta and storage, for unit tests of the file API without a cluster.
//! The fake storage speaks the real data-plane messages through the real `DataClient`, checks
//! chain versions and heads like a storage node, and can delay, fail or refuse calls so retry,
//! failover and ordering paths run.

use crate::net::{DataClient, NetError, Transport};
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use pond_proto::cluster::*;
use pond_proto::data::*;
use pond_proto::layout::Layout;
use pond_proto::meta::*;
use pond_proto::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// 3 nodes, 3 chains of 3 replicas (chain c has targets c*10+1..=c*10+3 on nodes 1..=3,
/// rotated so each chain has a different head node).
pub fn routing(version: u64) -> RoutingInfo {
    let mut info = RoutingInfo {
        version: RoutingVersion(version),
        ..Default::default()
    };
    for n in 1..=3u32 {
        info.nodes.insert(
            NodeId(n),
            NodeInfo {
                id: NodeId(n),
                data_addr: format!("node{n}"),
                alive: true,
            },
        );
    }
    for c in 1..=3u32 {
        let mut targets = Vec::new();
        for r in 0..3u32 {
            let id = TargetId((c * 10 + r + 1) as u64);
            let node = NodeId((c + r - 1) % 3 + 1);
            info.targets.insert(
                id,
                TargetInfo {
                    id,
                    node,
                    chain: ChainId(c),
                    public_state: PublicState::Serving,
                    local_state: LocalState::UpToDate,
                    used_bytes: 0,
                    capacity_bytes: 1 << 40,
                },
            );
            targets.push(id);
        }
        info.chains.insert(
            ChainId(c),
            ChainInfo {
                id: ChainId(c),
                version: ChainVersion(1),
                targets,
            },
        );
    }
    info.chain_tables.insert(
        ChainTableId(1),
        ChainTable {
            id: ChainTableId(1),
            chains: vec![ChainId(1), ChainId(2), ChainId(3)],
        },
    );
    info
}

pub const TEST_CHUNK: u32 = 64 << 10;

#[derive(Clone)]
struct Node {
    attr: InodeAttr,
    link: Option<String>,
}

struct MetaState {
    inodes: HashMap<InodeId, Node>,
    dirents: BTreeMap<(InodeId, String), InodeId>,
    sessions: HashMap<InodeId, u32>,
    next: u64,
    routing: RoutingInfo,
}

/// A small namespace state machine: enough of meta's semantics for file I/O tests.
pub struct FakeMeta {
    st: Mutex<MetaState>,
    pub ops: AtomicU64,
    /// `OpenSession` and `OpenWrite` requests answered (commits in a real meta).
    pub session_opens: AtomicU64,
}

fn err<T>(code: ErrorCode, m: &str) -> Result<T, PondError> {
    Err(PondError::new(code, m))
}

impl FakeMeta {
    pub fn new() -> Arc<FakeMeta> {
        let root = InodeAttr {
            inode: InodeId::ROOT,
            kind: FileType::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            layout: None,
            truncate_version: 0,
            rdev: 0,
        };
        let mut inodes = HashMap::new();
        inodes.insert(
            InodeId::ROOT,
            Node {
                attr: root,
                link: None,
            },
        );
        Arc::new(FakeMeta {
            st: Mutex::new(MetaState {
                inodes,
                dirents: BTreeMap::new(),
                sessions: HashMap::new(),
                next: 2,
                routing: routing(1),
            }),
            ops: AtomicU64::new(0),
            session_opens: AtomicU64::new(0),
        })
    }

    pub fn set_routing(&self, info: RoutingInfo) {
        self.st.lock().routing = info;
    }

    pub fn routing(&self) -> RoutingInfo {
        self.st.lock().routing.clone()
    }

    pub fn attr(&self, inode: InodeId) -> Option<InodeAttr> {
        self.st.lock().inodes.get(&inode).map(|n| n.attr.clone())
    }

    pub fn set_mtime(&self, inode: InodeId, t: Timestamp) {
        if let Some(n) = self.st.lock().inodes.get_mut(&inode) {
            n.attr.mtime = t;
        }
    }

    pub fn sessions(&self, inode: InodeId) -> u32 {
        self.st.lock().sessions.get(&inode).copied().unwrap_or(0)
    }

    fn apply(&self, req: MetaRequest) -> Result<MetaReply, PondError> {
        self.ops.fetch_add(1, Ordering::Relaxed);
        let mut st = self.st.lock();
        let st = &mut *st;
        let get = |st: &MetaState, i: InodeId| {
            st.inodes
                .get(&i)
                .cloned()
                .ok_or_else(|| PondError::new(ErrorCode::NotFound, "inode"))
        };
        match req {
            MetaRequest::GetAttr { inode } => Ok(MetaReply::Attr(get(st, inode)?.attr)),
            MetaRequest::Lookup { parent, name } => {
                let i = *st
                    .dirents
                    .get(&(parent, name))
                    .ok_or_else(|| PondError::new(ErrorCode::NotFound, "name"))?;
                Ok(MetaReply::Attr(get(st, i)?.attr))
            }
            MetaRequest::Resolve { path, .. } => {
                let mut cur = InodeId::ROOT;
                for c in pond_proto::layout::split_path(&path)? {
                    cur = *st
                        .dirents
                        .get(&(cur, c.to_string()))
                        .ok_or_else(|| PondError::new(ErrorCode::NotFound, "path"))?;
                }
                Ok(MetaReply::Attr(get(st, cur)?.attr))
            }
            MetaRequest::ReadDir { dir, after, limit } => {
                let mut entries = Vec::new();
                let mut more = false;
                for ((d, name), i) in st.dirents.range((dir, after.clone().unwrap_or_default())..) {
                    if *d != dir {
                        break;
                    }
                    if Some(name) == after.as_ref() {
                        continue;
                    }
                    if entries.len() == limit as usize {
                        more = true;
                        break;
                    }
                    let kind = st.inodes[i].attr.kind;
                    entries.push(DirEntry {
                        name: name.clone(),
                        inode: *i,
                        kind,
                    });
                }
                Ok(MetaReply::Dir { entries, more })
            }
            MetaRequest::Mkdir {
                parent,
                name,
                mode,
                caller,
            }
            | MetaRequest::Create {
                parent,
                name,
                mode,
                caller,
                ..
            } if st.dirents.contains_key(&(parent, name.clone())) => {
                let _ = (mode, caller);
                err(ErrorCode::Exists, "exists")
            }
            MetaRequest::Mkdir {
                parent,
                name,
                mode,
                caller,
            } => {
                get(st, parent)?;
                let id = InodeId(st.next);
                st.next += 1;
                let attr = InodeAttr {
                    inode: id,
                    kind: FileType::Dir,
                    mode,
                    uid: caller.uid,
                    gid: caller.gid,
                    nlink: 2,
                    size: 0,
                    atime: Timestamp::default(),
                    mtime: Timestamp::default(),
                    ctime: Timestamp::default(),
                    layout: None,
                    truncate_version: 0,
                    rdev: 0,
                };
                st.inodes.insert(
                    id,
                    Node {
                        attr: attr.clone(),
                        link: None,
                    },
                );
                st.dirents.insert((parent, name), id);
                Ok(MetaReply::Attr(attr))
            }
            MetaRequest::Create {
                parent,
                name,
                mode,
                caller,
                session,
                ..
            } => {
                get(st, parent)?;
                let id = InodeId(st.next);
                st.next += 1;
                let attr = InodeAttr {
                    inode: id,
                    kind: FileType::File,
                    mode,
                    uid: caller.uid,
                    gid: caller.gid,
                    nlink: 1,
                    size: 0,
                    atime: Timestamp::default(),
                    mtime: Timestamp::default(),
                    ctime: Timestamp::default(),
                    layout: Some(Layout {
                        chain_table: ChainTableId(1),
                        chunk_bytes: TEST_CHUNK,
                        chains: vec![ChainId(2), ChainId(3), ChainId(1)],
                    }),
                    truncate_version: 0,
                    rdev: 0,
                };
                st.inodes.insert(
                    id,
                    Node {
                        attr: attr.clone(),
                        link: None,
                    },
                );
                st.dirents.insert((parent, name), id);
                if session.is_some() {
                    *st.sessions.entry(id).or_default() += 1;
                }
                Ok(MetaReply::Attr(attr))
            }
            MetaRequest::Symlink {
                parent,
                name,
                target,
                caller,
            } => {
                let id = InodeId(st.next);
                st.next += 1;
                let attr = InodeAttr {
                    inode: id,
                    kind: FileType::Symlink,
                    mode: 0o777,
                    uid: caller.uid,
                    gid: caller.gid,
                    nlink: 1,
                    size: target.len() as u64,
                    atime: Timestamp::default(),
                    mtime: Timestamp::default(),
                    ctime: Timestamp::default(),
                    layout: None,
                    truncate_version: 0,
                    rdev: 0,
                };
                st.inodes.insert(
                    id,
                    Node {
                        attr: attr.clone(),
                        link: Some(target),
                    },
                );
                st.dirents.insert((parent, name), id);
                Ok(MetaReply::Attr(attr))
            }
            MetaRequest::ReadLink { inode } => get(st, inode)?
                .link
                .map(MetaReply::Link)
                .ok_or_else(|| PondError::new(ErrorCode::InvalidArgument, "not a link")),
            MetaRequest::Unlink { parent, name } => {
                let id = st
                    .dirents
                    .remove(&(parent, name))
                    .ok_or_else(|| PondError::new(ErrorCode::NotFound, "name"))?;
                let n = st.inodes.get_mut(&id).expect("entry points at inode");
                n.attr.nlink -= 1;
                if n.attr.nlink == 0 && st.sessions.get(&id).copied().unwrap_or(0) == 0 {
                    st.inodes.remove(&id);
                }
                Ok(MetaReply::Done)
            }
            MetaRequest::SetAttr { inode, set } => set_attr(st, inode, set),
            MetaRequest::SetAttrReport {
                inode,
                set,
                length,
                truncate_version,
            } => {
                adopt_length(st, inode, length, truncate_version)?;
                set_attr(st, inode, set)
            }
            MetaRequest::CloseSession { inode, .. } => {
                let s = st
                    .sessions
                    .get_mut(&inode)
                    .expect("CloseSession of an open session");
                assert!(*s > 0, "session count underflow");
                *s -= 1;
                if *s == 0 && st.inodes.get(&inode).is_some_and(|n| n.attr.nlink == 0) {
                    st.inodes.remove(&inode);
                }
                Ok(MetaReply::Done)
            }
            MetaRequest::OpenWrite { inode, .. } | MetaRequest::OpenSession { inode, .. } => {
                self.session_opens.fetch_add(1, Ordering::Relaxed);
                let a = get(st, inode)?.attr;
                *st.sessions.entry(inode).or_default() += 1;
                Ok(MetaReply::Attr(a))
            }
            MetaRequest::ReportLength {
                inode,
                length,
                truncate_version,
            } => Ok(MetaReply::Attr(adopt_length(
                st,
                inode,
                length,
                truncate_version,
            )?)),
            MetaRequest::CloseWrite {
                inode,
                length,
                truncate_version,
                ..
            } => {
                let a = adopt_length(st, inode, length, truncate_version)?;
                let s = st
                    .sessions
                    .get_mut(&inode)
                    .expect("CloseWrite of an open session");
                assert!(*s > 0, "session count underflow");
                *s -= 1;
                if *s == 0 && a.nlink == 0 {
                    st.inodes.remove(&inode);
                }
                Ok(MetaReply::Attr(a))
            }
            MetaRequest::StatFs => Ok(MetaReply::StatFs(StatFs {
                total_bytes: 1 << 40,
                free_bytes: 1 << 39,
                inodes: st.inodes.len() as u64,
            })),
            other => err(
                ErrorCode::NotSupported,
                &format!("fake meta does not do {other:?}"),
            ),
        }
    }
}

impl crate::service::MetaService for FakeMeta {
    fn op(&self, req: MetaRequest) -> BoxFuture<'_, Result<MetaReply, PondError>> {
        let r = self.apply(req);
        Box::pin(async move { r })
    }

    fn cluster(&self, req: ClusterRequest) -> BoxFuture<'_, Result<ClusterReply, PondError>> {
        let r = match req {
            ClusterRequest::GetRouting { have } => {
                let t = self.st.lock().routing.clone();
                Ok(ClusterReply::Routing((t.version > have).then_some(t)))
            }
            other => err(ErrorCode::NotSupported, &format!("{other:?}")),
        };
        Box::pin(async move { r })
    }
}

/// How the fake storage misbehaves.
#[derive(Default)]
pub struct Faults {
    /// Calls to these node addresses fail with `Unavailable` (the node is down).
    pub down: Vec<String>,
    /// Random delay of up to this many ms per call (reorders concurrent calls).
    pub jitter_ms: u64,
    /// Reads of these targets answer a checksum error.
    pub corrupt: Vec<TargetId>,
}

/// Chunk contents per chain (replicas of a chain share one copy: replication is storage's
/// business, the client only needs one consistent view per chain).
pub struct FakeStorage {
    pub chunks: Mutex<HashMap<ChunkId, Vec<u8>>>,
    pub routing: Mutex<RoutingInfo>,
    pub faults: Mutex<Faults>,
    pub calls: AtomicU64,
    pub reads_by_target: Mutex<HashMap<TargetId, u64>>,
    applied: Mutex<HashMap<(ClientId, RequestId), UpdateReply>>,
}

impl FakeStorage {
    pub fn new(routing: RoutingInfo) -> Arc<FakeStorage> {
        Arc::new(FakeStorage {
            chunks: Mutex::new(HashMap::new()),
            routing: Mutex::new(routing),
            faults: Mutex::new(Faults::default()),
            calls: AtomicU64::new(0),
            reads_by_target: Mutex::new(HashMap::new()),
            applied: Mutex::new(HashMap::new()),
        })
    }

    pub fn data_client(self: &Arc<Self>) -> DataClient {
        DataClient::new(self.clone(), ClientId(42)).with_deadline(Duration::from_secs(5))
    }

    fn check(&self, addr: &str, at: &ChainRef, head: bool) -> Result<(), PondError> {
        let r = self.routing.lock();
        let Some(c) = r.chains.get(&at.chain) else {
            return err(ErrorCode::StaleChainVersion, "unknown chain");
        };
        if c.version != at.chain_version {
            return err(ErrorCode::StaleChainVersion, "chain version");
        }
        let Some(t) = r.targets.get(&at.target) else {
            return err(ErrorCode::TargetNotServing, "unknown target");
        };
        if r.node_addr(t.node) != Some(addr) {
            return err(ErrorCode::TargetNotServing, "target not on this node");
        }
        if head && r.write_targets(at.chain).first().map(|t| t.id) != Some(at.target) {
            return err(ErrorCode::TargetNotServing, "not the head");
        }
        if !head && !t.public_state.serves_reads() {
            return err(ErrorCode::TargetNotServing, "not serving");
        }
        Ok(())
    }

    fn handle(
        &self,
        addr: &str,
        req: DataRequest,
        payload: Bytes,
    ) -> Result<(DataResponse, Bytes), PondError> {
        match req {
            DataRequest::Update(u) => {
                self.check(addr, &u.at, true)?;
                if let Some(r) = self.applied.lock().get(&(u.client, u.request)) {
                    return Ok((DataResponse::Update(*r), Bytes::new()));
                }
                assert_eq!(crc32c::crc32c(&payload), u.crc, "client computes the CRC");
                let mut chunks = self.chunks.lock();
                let length = match u.op {
                    UpdateOp::Write { offset } => {
                        assert!(
                            offset as usize + payload.len() <= u.chunk_bytes as usize,
                            "write within chunk"
                        );
                        let c = chunks.entry(u.chunk).or_default();
                        let end = offset as usize + payload.len();
                        if c.len() < end {
                            c.resize(end, 0);
                        }
                        c[offset as usize..end].copy_from_slice(&payload);
                        c.len()
                    }
                    UpdateOp::Truncate { length } => {
                        let c = chunks.entry(u.chunk).or_default();
                        c.resize(length as usize, 0);
                        c.len()
                    }
                    UpdateOp::Remove => {
                        chunks.remove(&u.chunk);
                        0
                    }
                    UpdateOp::Replace => unreachable!("clients never replace"),
                };
                let r = UpdateReply {
                    version: ChunkVersion(1),
                    length: length as u32,
                };
                self.applied.lock().insert((u.client, u.request), r);
                Ok((DataResponse::Update(r), Bytes::new()))
            }
            DataRequest::Read { items } => {
                let chunks = self.chunks.lock();
                let corrupt = self.faults.lock().corrupt.clone();
                let mut out = Vec::new();
                let mut payload = Vec::new();
                for it in items {
                    if let Err(e) = self.check(addr, &it.at, false) {
                        out.push(Err(e));
                        continue;
                    }
                    *self.reads_by_target.lock().entry(it.at.target).or_default() += 1;
                    if corrupt.contains(&it.at.target) {
                        out.push(Err(PondError::new(ErrorCode::Checksum, "bad block")));
                        continue;
                    }
                    let c = chunks.get(&it.chunk);
                    let data: &[u8] = match c {
                        Some(c) if (it.offset as usize) < c.len() => {
                            &c[it.offset as usize
                                ..(it.offset as usize + it.length as usize).min(c.len())]
                        }
                        _ => &[],
                    };
                    out.push(Ok(ReadOk {
                        version: ChunkVersion(c.is_some() as u32),
                        chain_version: it.at.chain_version,
                        chunk_length: c.map(|c| c.len() as u32).unwrap_or(0),
                        bytes: data.len() as u32,
                        crc: crc32c::crc32c(data),
                    }));
                    payload.extend_from_slice(data);
                }
                Ok((DataResponse::Read { items: out }, Bytes::from(payload)))
            }
            DataRequest::RemoveRange {
                at,
                inode,
                from_index,
                client,
                request,
                ..
            } => {
                self.check(addr, &at, true)?;
                let _ = (client, request);
                let r = self.routing.lock().clone();
                let mut chunks = self.chunks.lock();
                let before = chunks.len();
                chunks.retain(|c, _| {
                    !(c.inode() == inode
                        && c.index() >= from_index
                        && chain_of_chunk(&r, c) == Some(at.chain))
                });
                Ok((
                    DataResponse::Removed {
                        chunks: (before - chunks.len()) as u64,
                    },
                    Bytes::new(),
                ))
            }
            other => err(
                ErrorCode::NotSupported,
                &format!("fake storage does not do {}", other.name()),
            ),
        }
    }
}

/// Which chain holds a chunk, by the fixed test layout (chains 2, 3, 1).
fn chain_of_chunk(_r: &RoutingInfo, c: &ChunkId) -> Option<ChainId> {
    Some([ChainId(2), ChainId(3), ChainId(1)][(c.index() % 3) as usize])
}

impl Transport for FakeStorage {
    fn call<'a>(
        &'a self,
        addr: &'a str,
        req: DataRequest,
        payload: Bytes,
        _deadline: Duration,
    ) -> BoxFuture<'a, Result<(DataResponse, Bytes), NetError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let (down, jitter) = {
                let f = self.faults.lock();
                (f.down.iter().any(|d| d == addr), f.jitter_ms)
            };
            if jitter > 0 {
                let ms = rand::random::<u64>() % (jitter + 1);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if down {
                return Err(NetError::Closed);
            }
            match self.handle(addr, req, payload) {
                Ok(r) => Ok(r),
                Err(e) => Ok((DataResponse::Error(e), Bytes::new())),
            }
        })
    }
}

/// A client over fake meta and storage.
pub async fn client() -> (crate::Client, Arc<FakeMeta>, Arc<FakeStorage>) {
    let meta = FakeMeta::new();
    let storage = FakeStorage::new(meta.routing());
    let c = client_of(&meta, &storage).await;
    (c, meta, storage)
}

/// Another client of the same fake cluster.
pub async fn client_of(meta: &Arc<FakeMeta>, storage: &Arc<FakeStorage>) -> crate::Client {
    let opts = crate::ClientOptions {
        caller: Caller {
            uid: 1000,
            gid: 1000,
        },
        routing_poll: Duration::from_millis(50),
        meta_deadline: Duration::from_secs(10),
        chunk_retry_budget: Duration::from_secs(3),
        cache_ttl: Duration::ZERO,
    };
    crate::Client::with_parts(meta.clone(), storage.data_client(), opts)
        .await
        .expect("fake client")
}

/// `SetAttr` as meta applies it (the parts the client tests rely on).
fn set_attr(st: &mut MetaState, inode: InodeId, set: SetAttr) -> Result<MetaReply, PondError> {
    let n = st
        .inodes
        .get_mut(&inode)
        .ok_or_else(|| PondError::new(ErrorCode::NotFound, "inode"))?;
    if let Some(s) = set.size {
        n.attr.size = s;
        n.attr.truncate_version += 1;
    }
    n.attr.mode = set.mode_after(n.attr.kind, n.attr.mode);
    if let Some(u) = set.uid {
        n.attr.uid = u;
    }
    if let Some(g) = set.gid {
        n.attr.gid = g;
    }
    if let Some(t) = set.mtime {
        n.attr.mtime = t;
    }
    Ok(MetaReply::Attr(n.attr.clone()))
}

/// `ReportLength` / `CloseWrite` as meta applies them: a larger length of the current truncate
/// version is adopted and stamps the time of the report.
fn adopt_length(
    st: &mut MetaState,
    inode: InodeId,
    length: u64,
    truncate_version: u64,
) -> Result<InodeAttr, PondError> {
    let n = st
        .inodes
        .get_mut(&inode)
        .ok_or_else(|| PondError::new(ErrorCode::NotFound, "inode"))?;
    if n.attr.truncate_version == truncate_version && length > n.attr.size {
        n.attr.size = length;
        n.attr.mtime = Timestamp::now();
        n.attr.ctime = n.attr.mtime;
    }
    Ok(n.attr.clone())
}
