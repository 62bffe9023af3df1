//! The namespace state machine: every `MetaRequest`, applied deterministically inside one redb
//! write transaction (writes) or answered from a read transaction (reads).
//!
//! Rule for every write: check everything first, mutate after. A request that fails leaves
//! the tables exactly as they were (the unit tests compare state before and after).

use crate::cluster::ClusterState;
use crate::limits::*;
use crate::tables::*;
use pond_proto::cluster::RoutingInfo;
use pond_proto::layout::{DirLayout, Layout, PlacementHint, validate_name};
use pond_proto::limits::*;
use pond_proto::meta::*;
use pond_proto::{ChainId, ChainTableId, ErrorCode, InodeId, PondError};
use redb::{ReadableTable, ReadableTableMetadata, Table};

/// An apply failure: either the request is refused (`Op`, answered to the caller, nothing
/// changed) or the store failed (`Store`, fatal for this replica).
#[derive(Debug)]
pub enum ApplyError {
    Op(PondError),
    Store(redb::Error),
}

impl From<PondError> for ApplyError {
    fn from(e: PondError) -> Self {
        ApplyError::Op(e)
    }
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for ApplyError {
            fn from(e: $t) -> Self { ApplyError::Store(e.into()) }
        }
    )*};
}
store_err!(
    redb::StorageError,
    redb::TableError,
    redb::CommitError,
    redb::TransactionError
);

pub type R<T> = Result<T, ApplyError>;

/// Leader time of an entry as nanoseconds since the epoch (times before 1970 count as 0).
pub fn timestamp_nanos(t: Timestamp) -> u64 {
    (t.sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(t.nsec))
}

/// Decode a `LEASES` value.
pub fn lease_deadline(v: &[u8]) -> R<u64> {
    Ok(u64::from_be_bytes(
        v.try_into().map_err(|_| corrupt("lease record"))?,
    ))
}

pub fn fail<T>(code: ErrorCode, msg: impl Into<String>) -> R<T> {
    Err(ApplyError::Op(PondError::new(code, msg)))
}

fn corrupt(what: impl Into<String>) -> ApplyError {
    ApplyError::Store(redb::Error::Corrupted(what.into()))
}

// ---------------------------------------------------------------------------------------
// Reads, generic over read-only and read-write tables.

pub fn get_inode<T: ReadableTable<u64, &'static [u8]>>(t: &T, id: InodeId) -> R<Option<InodeRec>> {
    match t.get(id.0)? {
        None => Ok(None),
        Some(v) => postcard::from_bytes(v.value())
            .map(Some)
            .map_err(|e| corrupt(format!("inode {id}: {e}"))),
    }
}

pub fn need_inode<T: ReadableTable<u64, &'static [u8]>>(t: &T, id: InodeId) -> R<InodeRec> {
    match get_inode(t, id)? {
        Some(r) => Ok(r),
        None => fail(ErrorCode::NotFound, format!("no inode {id}")),
    }
}

pub fn need_dir<T: ReadableTable<u64, &'static [u8]>>(t: &T, id: InodeId) -> R<InodeRec> {
    let r = need_inode(t, id)?;
    if r.attr.kind != FileType::Dir {
        return fail(ErrorCode::NotDir, format!("inode {id} is not a directory"));
    }
    Ok(r)
}

/// A directory that may receive new entries: a directory removed by `RemoveTree` (nlink 0,
/// waiting for the collector) is gone for POSIX purposes.
pub fn need_live_dir<T: ReadableTable<u64, &'static [u8]>>(t: &T, id: InodeId) -> R<InodeRec> {
    let r = need_dir(t, id)?;
    if r.attr.nlink == 0 {
        return fail(
            ErrorCode::NotFound,
            format!("directory {id} has been removed"),
        );
    }
    Ok(r)
}

/// The entry `parent/name`, or ENOENT naming it.
pub fn need_entry<D: ReadableTable<&'static [u8], &'static [u8]>>(
    d: &D,
    parent: InodeId,
    name: &str,
) -> R<(InodeId, FileType)> {
    match get_entry(d, parent, name)? {
        Some(e) => Ok(e),
        None => fail(
            ErrorCode::NotFound,
            format!("no entry {name:?} in {parent}"),
        ),
    }
}

pub fn get_entry<D: ReadableTable<&'static [u8], &'static [u8]>>(
    d: &D,
    parent: InodeId,
    name: &str,
) -> R<Option<(InodeId, FileType)>> {
    let k = dirent_key(parent, name);
    match d.get(k.as_slice())? {
        None => Ok(None),
        Some(v) => decode_dirent_value(v.value())
            .map(Some)
            .ok_or_else(|| corrupt(format!("dirent {parent}/{name}"))),
    }
}

pub fn dir_is_empty<D: ReadableTable<&'static [u8], &'static [u8]>>(
    d: &D,
    dir: InodeId,
) -> R<bool> {
    let (lo, hi) = dir_range(dir);
    let mut it = d.range(lo.as_slice()..hi.as_slice())?;
    Ok(it.next().is_none())
}

/// One page of a directory: entries with names strictly after `after`.
pub fn read_dir<D: ReadableTable<&'static [u8], &'static [u8]>>(
    d: &D,
    dir: InodeId,
    after: Option<&str>,
    limit: u32,
) -> R<(Vec<DirEntry>, bool)> {
    let limit = if limit == 0 {
        READDIR_PAGE_MAX
    } else {
        limit.min(READDIR_PAGE_MAX)
    } as usize;
    let (lo, hi) = dir_range(dir);
    let start = match after {
        Some(a) => {
            // Smallest key strictly greater than (dir, a): append a NUL byte, which no name
            // contains.
            let mut k = dirent_key(dir, a);
            k.push(0);
            k
        }
        None => lo.to_vec(),
    };
    let mut out = Vec::new();
    let mut more = false;
    for item in d.range(start.as_slice()..hi.as_slice())? {
        let (k, v) = item?;
        if out.len() == limit {
            more = true;
            break;
        }
        let name = dirent_name(k.value()).ok_or_else(|| corrupt("dirent name"))?;
        let (inode, kind) =
            decode_dirent_value(v.value()).ok_or_else(|| corrupt("dirent value"))?;
        out.push(DirEntry {
            name: name.to_string(),
            inode,
            kind,
        });
    }
    Ok((out, more))
}

/// A valid extended attribute name in a namespace pond stores (the kernel checks length
/// and emptiness too, the client library may not have).
pub fn check_xattr_name(name: &str) -> R<()> {
    if name.is_empty() || name.len() > XATTR_NAME_BYTES_MAX {
        return fail(
            ErrorCode::OutOfRange,
            format!("attribute name of {} bytes", name.len()),
        );
    }
    match XATTR_NAMESPACES.iter().find(|p| name.starts_with(*p)) {
        Some(p) if name.len() == p.len() => fail(
            ErrorCode::InvalidArgument,
            format!("attribute name {name:?} has nothing after its namespace"),
        ),
        Some(_) => Ok(()),
        None => fail(
            ErrorCode::NotSupported,
            format!("attribute namespace of {name:?} is not stored (user. and trusted. are)"),
        ),
    }
}

/// An inode's extended attributes: (name, value length), in name order.
pub fn list_xattrs<X: ReadableTable<&'static [u8], &'static [u8]>>(
    xattrs: &X,
    inode: InodeId,
) -> R<Vec<(String, usize)>> {
    let (lo, hi) = dir_range(inode);
    let mut out = Vec::new();
    for item in xattrs.range(lo.as_slice()..hi.as_slice())? {
        let (k, v) = item?;
        let name = std::str::from_utf8(&k.value()[8..])
            .map_err(|_| corrupt(format!("xattr name of inode {inode}")))?
            .to_string();
        out.push((name, v.value().len()));
    }
    Ok(out)
}

/// Answer a read request from a consistent view.
pub fn read<T, D, X>(
    inodes: &T,
    dirents: &D,
    xattrs: &X,
    cluster: &RoutingInfo,
    req: &MetaRequest,
) -> R<MetaReply>
where
    T: ReadableTable<u64, &'static [u8]> + ReadableTableMetadata,
    D: ReadableTable<&'static [u8], &'static [u8]>,
    X: ReadableTable<&'static [u8], &'static [u8]>,
{
    match req {
        MetaRequest::GetXattr { inode, name } => {
            need_inode(inodes, *inode)?;
            // Nothing is stored outside the stored namespaces: ENODATA, as a filesystem
            // without such attributes answers (ACL checks rely on it).
            if let Err(ApplyError::Op(e)) = check_xattr_name(name)
                && e.code == ErrorCode::NotSupported
            {
                return fail(ErrorCode::NoData, e.message);
            }
            check_xattr_name(name)?;
            match xattrs.get(xattr_key(*inode, name).as_slice())? {
                Some(v) => Ok(MetaReply::Xattr(v.value().to_vec())),
                None => fail(
                    ErrorCode::NoData,
                    format!("inode {inode} has no attribute {name:?}"),
                ),
            }
        }
        MetaRequest::ListXattr { inode } => {
            need_inode(inodes, *inode)?;
            let names = list_xattrs(xattrs, *inode)?;
            Ok(MetaReply::XattrNames(
                names.into_iter().map(|(n, _)| n).collect(),
            ))
        }
        MetaRequest::Lookup { parent, name } => {
            validate_name(name)?;
            need_dir(inodes, *parent)?;
            let (child, _) = need_entry(dirents, *parent, name)?;
            Ok(MetaReply::Attr(need_inode(inodes, child)?.attr))
        }
        MetaRequest::GetAttr { inode } => Ok(MetaReply::Attr(need_inode(inodes, *inode)?.attr)),
        MetaRequest::ReadDir { dir, after, limit } => {
            need_dir(inodes, *dir)?;
            let (entries, more) = read_dir(dirents, *dir, after.as_deref(), *limit)?;
            Ok(MetaReply::Dir { entries, more })
        }
        MetaRequest::ReadDirPlus { dir, after, limit } => {
            need_dir(inodes, *dir)?;
            let (entries, more) = read_dir(dirents, *dir, after.as_deref(), *limit)?;
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                let attr = need_inode(inodes, e.inode)?.attr;
                out.push((e, attr));
            }
            Ok(MetaReply::DirPlus { entries: out, more })
        }
        MetaRequest::ReadLink { inode } => {
            let r = need_inode(inodes, *inode)?;
            match r.symlink {
                Some(t) => Ok(MetaReply::Link(t)),
                None => fail(
                    ErrorCode::InvalidArgument,
                    format!("inode {inode} is not a symlink"),
                ),
            }
        }
        MetaRequest::Resolve { path, follow } => {
            let id = resolve(inodes, dirents, path, *follow)?;
            Ok(MetaReply::Attr(need_inode(inodes, id)?.attr))
        }
        MetaRequest::StatFs => {
            let (total_bytes, free_bytes) = logical_space(cluster);
            Ok(MetaReply::StatFs(StatFs {
                total_bytes,
                free_bytes,
                inodes: inodes.len()?,
            }))
        }
        MetaRequest::GetDirLayout { dir } => {
            let r = need_dir(inodes, *dir)?;
            match r.dir_layout.or_else(|| default_dir_layout(cluster)) {
                Some(l) => Ok(MetaReply::DirLayout(l)),
                None => fail(
                    ErrorCode::NotFound,
                    "no chain table exists yet (bootstrap chains)",
                ),
            }
        }
        _ => fail(ErrorCode::InvalidArgument, "not a read request"),
    }
}

/// Walk an absolute path. Intermediate symlinks are always followed, the last component only
/// with `follow`. Iterative: the remaining components live in a stack, not in recursion.
pub fn resolve<T, D>(inodes: &T, dirents: &D, path: &str, follow: bool) -> R<InodeId>
where
    T: ReadableTable<u64, &'static [u8]>,
    D: ReadableTable<&'static [u8], &'static [u8]>,
{
    let comps = pond_proto::layout::split_path(path)?;
    // Components still to walk, reversed (the next one is at the end).
    let mut todo: Vec<String> = comps.iter().rev().map(|s| s.to_string()).collect();
    let mut cur = InodeId::ROOT;
    let mut followed = 0usize;
    while let Some(c) = todo.pop() {
        let dir = need_dir(inodes, cur)?;
        if c == ".." {
            cur = dir.parent;
            continue;
        }
        if c == "." {
            continue;
        }
        let (child, kind) = match get_entry(dirents, cur, &c)? {
            Some(e) => e,
            None => return fail(ErrorCode::NotFound, format!("{path}: no entry {c:?}")),
        };
        let last = todo.is_empty();
        if kind == FileType::Symlink && (!last || follow) {
            followed += 1;
            if followed > SYMLINK_FOLLOW_MAX {
                return fail(ErrorCode::Loop, format!("{path}: too many symlinks"));
            }
            let target = need_inode(inodes, child)?.symlink.unwrap_or_default();
            if target.starts_with('/') {
                cur = InodeId::ROOT;
            }
            for part in target.split('/').filter(|p| !p.is_empty()).rev() {
                todo.push(part.to_string());
            }
            continue;
        }
        cur = child;
    }
    Ok(cur)
}

/// Layout of directories without their own: the lowest chain table, default chunk size.
/// Space a user can fill, as `(total, free)` bytes: every byte of a file is stored once per
/// replica of its chain, so a chain holds what its smallest replica holds (capacity) and takes
/// what its fullest replica still takes (free); the file system is the sum over chains.
/// Targets in no chain hold no file data and count for nothing. Summing the targets instead
/// (what this answered before) reported three times the space a 3-replica cluster can store.
fn logical_space(cluster: &RoutingInfo) -> (u64, u64) {
    let (mut total, mut free) = (0u64, 0u64);
    for chain in cluster.chains.values() {
        let replicas = chain.targets.iter().filter_map(|t| cluster.targets.get(t));
        let (cap, left) = replicas.fold((u64::MAX, u64::MAX), |(cap, left), t| {
            (
                cap.min(t.capacity_bytes),
                left.min(t.capacity_bytes.saturating_sub(t.used_bytes)),
            )
        });
        if cap != u64::MAX {
            total = total.saturating_add(cap);
            free = free.saturating_add(left);
        }
    }
    (total, free)
}

pub fn default_dir_layout(cluster: &RoutingInfo) -> Option<DirLayout> {
    let (id, t) = cluster.chain_tables.iter().next()?;
    Some(DirLayout {
        chain_table: *id,
        chunk_bytes: CHUNK_BYTES_DEFAULT,
        stripe: (t.chains.len() as u32).clamp(1, DEFAULT_STRIPE_MAX),
    })
}

// ---------------------------------------------------------------------------------------
// Writes.

/// Counters kept in the `meta` table, loaded once per apply transaction.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub next_inode: u64,
    pub round_robin: u64,
    pub dedup_seq: u64,
}

/// Open tables of one apply transaction.
pub struct Tx<'t> {
    pub inodes: Table<'t, u64, &'static [u8]>,
    pub dirents: Table<'t, &'static [u8], &'static [u8]>,
    pub sessions: Table<'t, &'static [u8], ()>,
    pub client_sessions: Table<'t, &'static [u8], ()>,
    pub leases: Table<'t, u64, &'static [u8]>,
    pub gc: Table<'t, u64, &'static [u8]>,
    pub trash: Table<'t, u64, ()>,
    pub xattrs: Table<'t, &'static [u8], &'static [u8]>,
    pub dedup: Table<'t, &'static [u8], &'static [u8]>,
    pub dedup_order: Table<'t, u64, &'static [u8]>,
    pub meta: Table<'t, &'static str, &'static [u8]>,
    pub counters: Counters,
    pub cluster: ClusterState,
    /// The leader's time for the batch being applied.
    pub now: Timestamp,
}

impl<'t> Tx<'t> {
    pub fn open(txn: &'t redb::WriteTransaction, cluster: ClusterState) -> R<Tx<'t>> {
        let meta = txn.open_table(META)?;
        let read_u64 = |k: &str| -> R<u64> {
            match meta.get(k)? {
                None => Ok(0),
                Some(v) => Ok(u64::from_be_bytes(
                    v.value()
                        .try_into()
                        .map_err(|_| corrupt(format!("meta {k}")))?,
                )),
            }
        };
        let counters = Counters {
            next_inode: read_u64(K_NEXT_INODE)?,
            round_robin: read_u64(K_ROUND_ROBIN)?,
            dedup_seq: read_u64(K_DEDUP_SEQ)?,
        };
        Ok(Tx {
            inodes: txn.open_table(INODES)?,
            dirents: txn.open_table(DIRENTS)?,
            sessions: txn.open_table(SESSIONS)?,
            client_sessions: txn.open_table(CLIENT_SESSIONS)?,
            leases: txn.open_table(LEASES)?,
            gc: txn.open_table(GC)?,
            trash: txn.open_table(TRASH)?,
            xattrs: txn.open_table(XATTRS)?,
            dedup: txn.open_table(DEDUP)?,
            dedup_order: txn.open_table(DEDUP_ORDER)?,
            meta,
            counters,
            cluster,
            now: Timestamp::default(),
        })
    }

    /// Write the counters (and the cluster map if it changed) back.
    pub fn finish(mut self) -> R<ClusterState> {
        let c = self.counters.clone();
        self.meta
            .insert(K_NEXT_INODE, c.next_inode.to_be_bytes().as_slice())?;
        self.meta
            .insert(K_ROUND_ROBIN, c.round_robin.to_be_bytes().as_slice())?;
        self.meta
            .insert(K_DEDUP_SEQ, c.dedup_seq.to_be_bytes().as_slice())?;
        if self.cluster.dirty {
            let bytes = postcard::to_stdvec(&self.cluster.routing)
                .map_err(|e| corrupt(format!("encode cluster map: {e}")))?;
            self.meta.insert(K_CLUSTER, bytes.as_slice())?;
            self.cluster.dirty = false;
        }
        Ok(self.cluster)
    }

    /// Create the root directory if the namespace is empty (first apply ever).
    pub fn ensure_root(&mut self) -> R<()> {
        if self.counters.next_inode == 0 {
            self.counters.next_inode = InodeId::ROOT.0 + 1;
            self.meta
                .insert(K_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())?;
        }
        if get_inode(&self.inodes, InodeId::ROOT)?.is_none() {
            let attr = self.new_attr(InodeId::ROOT, FileType::Dir, 0o755, Caller::default());
            let rec = InodeRec {
                attr,
                parent: InodeId::ROOT,
                symlink: None,
                dir_layout: None,
            };
            self.put(&rec)?;
        }
        Ok(())
    }

    /// The root is created by the first applied entry, which may be a membership entry
    /// without a leader time; the first batch then stamps the root's times (deterministic:
    /// every replica applies the same first batch).
    pub fn stamp_root_if_unset(&mut self) -> R<()> {
        if self.now == Timestamp::default() {
            return Ok(());
        }
        if let Some(mut root) = get_inode(&self.inodes, InodeId::ROOT)?
            && root.attr.ctime == Timestamp::default()
        {
            root.attr.atime = self.now;
            root.attr.mtime = self.now;
            root.attr.ctime = self.now;
            self.put(&root)?;
        }
        Ok(())
    }

    fn put(&mut self, rec: &InodeRec) -> R<()> {
        let bytes = postcard::to_stdvec(rec).map_err(|e| corrupt(format!("encode inode: {e}")))?;
        self.inodes.insert(rec.attr.inode.0, bytes.as_slice())?;
        Ok(())
    }

    fn new_attr(&self, inode: InodeId, kind: FileType, mode: u32, caller: Caller) -> InodeAttr {
        InodeAttr {
            inode,
            kind,
            mode: mode & 0o7777,
            uid: caller.uid,
            gid: caller.gid,
            nlink: if kind == FileType::Dir { 2 } else { 1 },
            size: 0,
            atime: self.now,
            mtime: self.now,
            ctime: self.now,
            layout: None,
            truncate_version: 0,
            rdev: 0,
        }
    }

    /// `new_attr` for a new entry of directory `parent`, with POSIX setgid-directory
    /// inheritance applied here, against the parent as the log orders it: in a setgid
    /// directory the new node takes the directory's group, and a new directory keeps the
    /// setgid bit. (Clients used to apply it from their cached parent attributes before
    /// sending, which cost a `GetAttr` round trip per create once their own previous create
    /// had dropped the parent from their cache; applying it twice changes nothing.)
    fn new_child_attr(
        &self,
        parent: &InodeAttr,
        inode: InodeId,
        kind: FileType,
        mode: u32,
        caller: Caller,
    ) -> InodeAttr {
        const SGID: u32 = 0o2000;
        if parent.mode & SGID == 0 {
            return self.new_attr(inode, kind, mode, caller);
        }
        let caller = Caller {
            uid: caller.uid,
            gid: parent.gid,
        };
        let mode = if kind == FileType::Dir {
            mode | SGID
        } else {
            mode
        };
        self.new_attr(inode, kind, mode, caller)
    }

    fn alloc_inode(&mut self) -> InodeId {
        let id = self.counters.next_inode;
        self.counters.next_inode = id.checked_add(1).expect("inode ids exhausted");
        InodeId(id)
    }

    fn insert_entry(
        &mut self,
        parent: InodeId,
        name: &str,
        child: InodeId,
        kind: FileType,
    ) -> R<()> {
        let k = dirent_key(parent, name);
        let v = dirent_value(child, kind);
        self.dirents.insert(k.as_slice(), v.as_slice())?;
        Ok(())
    }

    fn remove_entry(&mut self, parent: InodeId, name: &str) -> R<()> {
        let k = dirent_key(parent, name);
        self.dirents.remove(k.as_slice())?;
        Ok(())
    }

    fn touch_dir(&mut self, dir: &mut InodeRec) {
        dir.attr.mtime = self.now;
        dir.attr.ctime = self.now;
    }

    fn has_sessions(&self, inode: InodeId) -> R<bool> {
        let lo = session_key(inode, 0, 0);
        let hi = session_key(InodeId(inode.0 + 1), 0, 0);
        let mut it = self.sessions.range(lo.as_slice()..hi.as_slice())?;
        Ok(it.next().is_some())
    }

    fn open_session(&mut self, inode: InodeId, client: u64, session: u64) -> R<()> {
        self.sessions
            .insert(session_key(inode, client, session).as_slice(), ())?;
        self.client_sessions
            .insert(client_session_key(client, inode, session).as_slice(), ())?;
        Ok(())
    }

    fn close_session(&mut self, inode: InodeId, client: u64, session: u64) -> R<()> {
        self.sessions
            .remove(session_key(inode, client, session).as_slice())?;
        self.client_sessions
            .remove(client_session_key(client, inode, session).as_slice())?;
        Ok(())
    }

    /// After a session of `inode` closed: an unlinked file with no session left is garbage.
    fn collect_if_orphan(&mut self, inode: InodeId) -> R<()> {
        let Some(rec) = get_inode(&self.inodes, inode)? else {
            return Ok(());
        };
        if rec.attr.kind == FileType::File && rec.attr.nlink == 0 && !self.has_sessions(inode)? {
            self.collect(rec)?;
        }
        Ok(())
    }

    /// Drop a client's lease and every session it holds.
    fn end_lease(&mut self, client: u64) -> R<()> {
        self.leases.remove(client)?;
        let lo = client_session_key(client, InodeId(0), 0);
        let hi = client_session_key(client.wrapping_add(1), InodeId(0), 0);
        let mut held = Vec::new();
        if client == u64::MAX {
            for item in self.client_sessions.range(lo.as_slice()..)? {
                held.push(item?.0.value().to_vec());
            }
        } else {
            for item in self.client_sessions.range(lo.as_slice()..hi.as_slice())? {
                held.push(item?.0.value().to_vec());
            }
        }
        let mut inodes = Vec::with_capacity(held.len());
        for k in held {
            let inode = InodeId(u64::from_be_bytes(
                k[8..16].try_into().expect("24-byte key"),
            ));
            let session = u64::from_be_bytes(k[16..24].try_into().expect("24-byte key"));
            self.close_session(inode, client, session)?;
            inodes.push(inode);
        }
        inodes.sort();
        inodes.dedup();
        for inode in inodes {
            self.collect_if_orphan(inode)?;
        }
        Ok(())
    }

    /// End every lease whose deadline passed at this entry's time (at most
    /// `LEASE_EXPIRE_CLIENTS_MAX` per call, to bound one apply). Returns how many ended.
    pub fn expire_leases(&mut self) -> R<usize> {
        let now = timestamp_nanos(self.now);
        let mut expired = Vec::new();
        for item in self.leases.iter()? {
            let (k, v) = item?;
            if lease_deadline(v.value())? <= now {
                expired.push(k.value());
                if expired.len() >= LEASE_EXPIRE_CLIENTS_MAX {
                    break;
                }
            }
        }
        for c in &expired {
            tracing::info!(client = c, "client lease expired, dropping its sessions");
            self.end_lease(*c)?;
        }
        Ok(expired.len())
    }

    fn renew_lease(&mut self, client: u64, ttl_ms: u32, first: bool) -> R<MetaReply> {
        if !(LEASE_TTL_MIN_MS..=LEASE_TTL_MAX_MS).contains(&ttl_ms) {
            return fail(
                ErrorCode::InvalidArgument,
                format!("lease ttl {ttl_ms} ms outside {LEASE_TTL_MIN_MS}..={LEASE_TTL_MAX_MS}"),
            );
        }
        let known = self.leases.get(client)?.is_some();
        if !first && !known {
            return fail(
                ErrorCode::StaleHandle,
                format!("lease of client {client} expired; its sessions were dropped"),
            );
        }
        let deadline = timestamp_nanos(self.now).saturating_add(u64::from(ttl_ms) * 1_000_000);
        self.leases
            .insert(client, deadline.to_be_bytes().as_slice())?;
        Ok(MetaReply::Done)
    }

    /// Drop a link of a non-directory inode; the last link sends it to garbage (or leaves it
    /// for `CloseWrite` when a write session holds it).
    fn drop_link(&mut self, mut rec: InodeRec) -> R<()> {
        assert!(rec.attr.kind != FileType::Dir, "drop_link on a directory");
        rec.attr.nlink = rec.attr.nlink.saturating_sub(1);
        rec.attr.ctime = self.now;
        if rec.attr.nlink > 0 || self.has_sessions(rec.attr.inode)? {
            return self.put(&rec);
        }
        self.collect(rec)
    }

    /// Remove an inode record and its extended attributes.
    fn remove_inode(&mut self, inode: InodeId) -> R<()> {
        self.inodes.remove(inode.0)?;
        let (lo, hi) = dir_range(inode);
        self.xattrs
            .retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)?;
        Ok(())
    }

    fn set_xattr(
        &mut self,
        inode: InodeId,
        name: &str,
        value: &[u8],
        mode: XattrSetMode,
    ) -> R<MetaReply> {
        check_xattr_name(name)?;
        if value.len() > XATTR_VALUE_BYTES_MAX {
            return fail(
                ErrorCode::TooBig,
                format!(
                    "attribute value of {} bytes (at most {XATTR_VALUE_BYTES_MAX})",
                    value.len()
                ),
            );
        }
        let mut rec = need_inode(&self.inodes, inode)?;
        // As Linux: user attributes only on regular files and directories (the sticky-bit
        // and ownership rules the kernel applies before it asks us).
        if name.starts_with("user.") && !matches!(rec.attr.kind, FileType::File | FileType::Dir) {
            return fail(
                ErrorCode::NotPermitted,
                format!(
                    "user attributes only on files and directories, not {:?}",
                    rec.attr.kind
                ),
            );
        }
        let key = xattr_key(inode, name);
        let all = list_xattrs(&self.xattrs, inode)?;
        let existing = all.iter().find(|(n, _)| n == name).map(|(_, l)| *l);
        match (mode, existing) {
            (XattrSetMode::Create, Some(_)) => {
                return fail(ErrorCode::Exists, format!("attribute {name:?} exists"));
            }
            (XattrSetMode::Replace, None) => {
                return fail(
                    ErrorCode::NoData,
                    format!("no attribute {name:?} to replace"),
                );
            }
            _ => {}
        }
        let others: usize = all
            .iter()
            .filter(|(n, _)| n != name)
            .map(|(n, l)| n.len() + l)
            .sum();
        if others + name.len() + value.len() > XATTR_INODE_BYTES_MAX {
            return fail(
                ErrorCode::NoSpace,
                format!("inode {inode}'s attributes would exceed {XATTR_INODE_BYTES_MAX} bytes"),
            );
        }
        self.xattrs.insert(key.as_slice(), value)?;
        rec.attr.ctime = self.now;
        self.put(&rec)?;
        Ok(MetaReply::Attr(rec.attr))
    }

    fn remove_xattr(&mut self, inode: InodeId, name: &str) -> R<MetaReply> {
        check_xattr_name(name)?;
        let mut rec = need_inode(&self.inodes, inode)?;
        if self
            .xattrs
            .remove(xattr_key(inode, name).as_slice())?
            .is_none()
        {
            return fail(
                ErrorCode::NoData,
                format!("inode {inode} has no attribute {name:?}"),
            );
        }
        rec.attr.ctime = self.now;
        self.put(&rec)?;
        Ok(MetaReply::Attr(rec.attr))
    }

    /// Remove an unreferenced inode; files with chunks go to the garbage list.
    fn collect(&mut self, rec: InodeRec) -> R<()> {
        self.remove_inode(rec.attr.inode)?;
        if let Some(layout) = &rec.attr.layout {
            let mut pending: Vec<ChainId> = layout.chains.clone();
            pending.sort();
            pending.dedup();
            let bytes = postcard::to_stdvec(&GcRec { pending })
                .map_err(|e| corrupt(format!("encode gc: {e}")))?;
            self.gc.insert(rec.attr.inode.0, bytes.as_slice())?;
        }
        Ok(())
    }

    /// Is `dir` equal to `ancestor` or below it? Walks parent pointers up to the root.
    fn is_within(&self, dir: InodeId, ancestor: InodeId) -> R<bool> {
        let mut cur = dir;
        // Bounded: a path has at most PATH_BYTES_MAX / 2 components.
        for _ in 0..=PATH_BYTES_MAX {
            if cur == ancestor {
                return Ok(true);
            }
            if cur == InodeId::ROOT {
                return Ok(false);
            }
            cur = need_inode(&self.inodes, cur)?.parent;
        }
        Err(corrupt(format!(
            "parent chain of {dir} does not reach the root"
        )))
    }

    /// Layout for a new file in a directory with (effective) layout `dl`.
    fn choose_layout(&mut self, dl: Option<&DirLayout>, hint: PlacementHint) -> R<Option<Layout>> {
        let routing = &self.cluster.routing;
        match hint {
            PlacementHint::Any => {
                let dl = match dl.cloned().or_else(|| default_dir_layout(routing)) {
                    Some(l) => l,
                    // No chains yet: the file exists without a layout (it cannot hold data
                    // until chains are bootstrapped).
                    None => return Ok(None),
                };
                let Some(table) = routing.chain_tables.get(&dl.chain_table) else {
                    return fail(
                        ErrorCode::InvalidArgument,
                        format!("no chain table {}", dl.chain_table),
                    );
                };
                if table.chains.is_empty() {
                    return fail(
                        ErrorCode::NoSpace,
                        format!("chain table {} is empty", table.id),
                    );
                }
                let order = shuffled(&table.chains, table.id);
                let stripe = (dl.stripe as usize).min(order.len());
                let start = (self.counters.round_robin % order.len() as u64) as usize;
                self.counters.round_robin = self.counters.round_robin.wrapping_add(stripe as u64);
                let chains = (0..stripe)
                    .map(|i| order[(start + i) % order.len()])
                    .collect();
                Ok(Some(Layout {
                    chain_table: table.id,
                    chunk_bytes: dl.chunk_bytes,
                    chains,
                }))
            }
            PlacementHint::Chain(c) => {
                let Some(table) = routing
                    .chain_tables
                    .values()
                    .find(|t| t.chains.contains(&c))
                else {
                    return fail(
                        ErrorCode::InvalidArgument,
                        format!("chain {c} is in no chain table"),
                    );
                };
                let chunk_bytes = dl.map(|l| l.chunk_bytes).unwrap_or(CHUNK_BYTES_DEFAULT);
                Ok(Some(Layout {
                    chain_table: table.id,
                    chunk_bytes,
                    chains: vec![c],
                }))
            }
            PlacementHint::HeadOnNode(n) => {
                let mut cands: Vec<(ChainTableId, ChainId)> = Vec::new();
                for t in routing.chain_tables.values() {
                    for c in &t.chains {
                        let head = routing.write_targets(*c).first().map(|t| t.node);
                        if head == Some(n) {
                            cands.push((t.id, *c));
                        }
                    }
                }
                if cands.is_empty() {
                    return fail(
                        ErrorCode::InvalidArgument,
                        format!("no chain has its head on node {n}"),
                    );
                }
                let pick = cands[(self.counters.round_robin % cands.len() as u64) as usize];
                self.counters.round_robin = self.counters.round_robin.wrapping_add(1);
                let chunk_bytes = dl.map(|l| l.chunk_bytes).unwrap_or(CHUNK_BYTES_DEFAULT);
                Ok(Some(Layout {
                    chain_table: pick.0,
                    chunk_bytes,
                    chains: vec![pick.1],
                }))
            }
        }
    }

    fn dedup_get(&self, o: &crate::types::Origin) -> R<Option<Result<MetaReply, PondError>>> {
        let k = pair_key(o.client.0, o.request.0);
        match self.dedup.get(k.as_slice())? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|e| corrupt(format!("dedup record: {e}"))),
        }
    }

    fn dedup_put(&mut self, o: &crate::types::Origin, r: &Result<MetaReply, PondError>) -> R<()> {
        let k = pair_key(o.client.0, o.request.0);
        let v = postcard::to_stdvec(r).map_err(|e| corrupt(format!("encode dedup: {e}")))?;
        self.dedup.insert(k.as_slice(), v.as_slice())?;
        let seq = self.counters.dedup_seq;
        self.counters.dedup_seq += 1;
        self.dedup_order.insert(seq, k.as_slice())?;
        if seq >= DEDUP_ENTRIES_MAX {
            let old = seq - DEDUP_ENTRIES_MAX;
            let key = self.dedup_order.remove(old)?.map(|g| g.value().to_vec());
            if let Some(key) = key {
                self.dedup.remove(key.as_slice())?;
            }
        }
        Ok(())
    }

    /// Apply one namespace write, answering a retried (client, request) from the dedupe
    /// table.
    pub fn apply_meta(
        &mut self,
        origin: Option<crate::types::Origin>,
        req: &MetaRequest,
    ) -> Result<Result<MetaReply, PondError>, redb::Error> {
        if let Some(o) = &origin {
            match self.dedup_get(o) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(ApplyError::Store(e)) => return Err(e),
                Err(ApplyError::Op(e)) => return Ok(Err(e)),
            }
        }
        let r = match self.write(req) {
            Ok(r) => Ok(r),
            Err(ApplyError::Op(e)) => Err(e),
            Err(ApplyError::Store(e)) => return Err(e),
        };
        if let Some(o) = &origin {
            match self.dedup_put(o, &r) {
                Ok(()) => {}
                Err(ApplyError::Store(e)) => return Err(e),
                Err(ApplyError::Op(e)) => return Ok(Err(e)),
            }
        }
        Ok(r)
    }

    fn write(&mut self, req: &MetaRequest) -> R<MetaReply> {
        match req {
            MetaRequest::Mkdir {
                parent,
                name,
                mode,
                caller,
            } => self.mkdir(*parent, name, *mode, *caller),
            MetaRequest::Create {
                parent,
                name,
                mode,
                caller,
                exclusive,
                hint,
                session,
            } => self.create(*parent, name, *mode, *caller, *exclusive, *hint, *session),
            MetaRequest::Symlink {
                parent,
                name,
                target,
                caller,
            } => self.symlink(*parent, name, target, *caller),
            MetaRequest::Mknod {
                parent,
                name,
                kind,
                mode,
                rdev,
                caller,
            } => self.mknod(*parent, name, *kind, *mode, *rdev, *caller),
            MetaRequest::Link {
                inode,
                new_parent,
                new_name,
            } => self.link(*inode, *new_parent, new_name),
            MetaRequest::Unlink { parent, name } => self.unlink(*parent, name),
            MetaRequest::Rmdir { parent, name } => self.rmdir(*parent, name),
            MetaRequest::Rename {
                src_parent,
                src_name,
                dst_parent,
                dst_name,
                mode,
            } => self.rename(*src_parent, src_name, *dst_parent, dst_name, mode),
            MetaRequest::SetAttr { inode, set } => self.setattr(*inode, set),
            MetaRequest::SetAttrReport {
                inode,
                set,
                length,
                truncate_version,
            } => {
                // With no size in `set`, nothing in `setattr` can refuse a file after the
                // report was applied: the op applies whole or not at all.
                if set.size.is_some() {
                    return fail(
                        ErrorCode::InvalidArgument,
                        "a length report cannot carry a size change (truncate first)",
                    );
                }
                let mut rec = self.need_file(*inode)?;
                self.adopt_length(&mut rec, *length, *truncate_version)?;
                self.put(&rec)?;
                self.setattr(*inode, set)
            }
            MetaRequest::SetXattr {
                inode,
                name,
                value,
                mode,
            } => self.set_xattr(*inode, name, value, *mode),
            MetaRequest::RemoveXattr { inode, name } => self.remove_xattr(*inode, name),
            // A write session and a read session are the same record: either keeps an
            // unlinked file alive until it is closed.
            MetaRequest::OpenWrite {
                inode,
                client,
                session,
            }
            | MetaRequest::OpenSession {
                inode,
                client,
                session,
            } => {
                let rec = self.need_file(*inode)?;
                self.open_session(*inode, client.0, session.0)?;
                Ok(MetaReply::Attr(rec.attr))
            }
            MetaRequest::ReportLength {
                inode,
                length,
                truncate_version,
            } => {
                let mut rec = self.need_file(*inode)?;
                self.adopt_length(&mut rec, *length, *truncate_version)?;
                self.put(&rec)?;
                Ok(MetaReply::Attr(rec.attr))
            }
            MetaRequest::CloseWrite {
                inode,
                client,
                session,
                length,
                truncate_version,
            } => {
                let mut rec = self.need_file(*inode)?;
                self.adopt_length(&mut rec, *length, *truncate_version)?;
                self.close_session(*inode, client.0, session.0)?;
                if rec.attr.nlink == 0 && !self.has_sessions(*inode)? {
                    let attr = rec.attr.clone();
                    self.collect(rec)?;
                    return Ok(MetaReply::Attr(attr));
                }
                self.put(&rec)?;
                Ok(MetaReply::Attr(rec.attr))
            }
            MetaRequest::SetDirLayout { dir, layout } => {
                layout.validate()?;
                let mut rec = need_dir(&self.inodes, *dir)?;
                if !self
                    .cluster
                    .routing
                    .chain_tables
                    .contains_key(&layout.chain_table)
                {
                    return fail(
                        ErrorCode::InvalidArgument,
                        format!("no chain table {}", layout.chain_table),
                    );
                }
                rec.dir_layout = Some(layout.clone());
                rec.attr.ctime = self.now;
                self.put(&rec)?;
                Ok(MetaReply::Done)
            }
            MetaRequest::RemoveTree { parent, name } => self.remove_tree(*parent, name),
            MetaRequest::CloseSession {
                inode,
                client,
                session,
            } => {
                self.need_file(*inode)?;
                self.close_session(*inode, client.0, session.0)?;
                self.collect_if_orphan(*inode)?;
                Ok(MetaReply::Done)
            }
            MetaRequest::RenewLease {
                client,
                ttl_ms,
                first,
            } => self.renew_lease(client.0, *ttl_ms, *first),
            MetaRequest::EndLease { client } => {
                self.end_lease(client.0)?;
                Ok(MetaReply::Done)
            }
            r => fail(
                ErrorCode::InvalidArgument,
                format!("{r:?} is not a write request"),
            ),
        }
    }

    fn need_file(&self, inode: InodeId) -> R<InodeRec> {
        let rec = need_inode(&self.inodes, inode)?;
        match rec.attr.kind {
            FileType::File => Ok(rec),
            FileType::Dir => fail(ErrorCode::IsDir, format!("inode {inode} is a directory")),
            FileType::Symlink => fail(
                ErrorCode::InvalidArgument,
                format!("inode {inode} is a symlink"),
            ),
            k => fail(
                ErrorCode::InvalidArgument,
                format!("inode {inode} is a {k:?} node, not a file"),
            ),
        }
    }

    fn adopt_length(&mut self, rec: &mut InodeRec, length: u64, tv: u64) -> R<()> {
        if length > FILE_BYTES_MAX {
            return fail(ErrorCode::FileTooBig, format!("length {length}"));
        }
        if tv == rec.attr.truncate_version && length > rec.attr.size {
            rec.attr.size = length;
            rec.attr.mtime = self.now;
            rec.attr.ctime = self.now;
        }
        Ok(())
    }

    /// Checks shared by every op that adds `name` to `parent`.
    fn check_new_entry(&self, parent: InodeId, name: &str) -> R<InodeRec> {
        validate_name(name)?;
        let p = need_live_dir(&self.inodes, parent)?;
        if get_entry(&self.dirents, parent, name)?.is_some() {
            return fail(ErrorCode::Exists, format!("{name:?} exists in {parent}"));
        }
        Ok(p)
    }

    fn mkdir(&mut self, parent: InodeId, name: &str, mode: u32, caller: Caller) -> R<MetaReply> {
        let mut p = self.check_new_entry(parent, name)?;
        if p.attr.nlink >= LINKS_MAX {
            return fail(
                ErrorCode::TooManyLinks,
                format!("directory {parent} has too many subdirectories"),
            );
        }
        let id = self.alloc_inode();
        let attr = self.new_child_attr(&p.attr, id, FileType::Dir, mode, caller);
        let rec = InodeRec {
            attr,
            parent,
            symlink: None,
            dir_layout: p.dir_layout.clone(),
        };
        self.put(&rec)?;
        self.insert_entry(parent, name, id, FileType::Dir)?;
        p.attr.nlink += 1;
        self.touch_dir(&mut p);
        self.put(&p)?;
        Ok(MetaReply::Attr(rec.attr))
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        parent: InodeId,
        name: &str,
        mode: u32,
        caller: Caller,
        exclusive: bool,
        hint: PlacementHint,
        session: Option<(pond_proto::ClientId, pond_proto::SessionId)>,
    ) -> R<MetaReply> {
        validate_name(name)?;
        let mut p = need_live_dir(&self.inodes, parent)?;
        if let Some((child, kind)) = get_entry(&self.dirents, parent, name)? {
            if exclusive {
                return fail(ErrorCode::Exists, format!("{name:?} exists in {parent}"));
            }
            return match kind {
                FileType::Dir => fail(ErrorCode::IsDir, format!("{name:?} is a directory")),
                FileType::Symlink => fail(ErrorCode::Exists, format!("{name:?} is a symlink")),
                FileType::File => {
                    let rec = need_inode(&self.inodes, child)?;
                    if let Some((c, s)) = session {
                        self.open_session(child, c.0, s.0)?;
                    }
                    Ok(MetaReply::Attr(rec.attr))
                }
                k => fail(ErrorCode::Exists, format!("{name:?} is a {k:?} node")),
            };
        }
        if let PlacementHint::Chain(_) | PlacementHint::HeadOnNode(_) = hint {
            // Validated inside choose_layout before anything is written.
        }
        let layout = self.choose_layout(p.dir_layout.as_ref(), hint)?;
        let id = self.alloc_inode();
        let mut attr = self.new_child_attr(&p.attr, id, FileType::File, mode, caller);
        attr.layout = layout;
        let attr = self.add_leaf(&mut p, name, attr, None)?;
        if let Some((c, s)) = session {
            self.open_session(id, c.0, s.0)?;
        }
        Ok(MetaReply::Attr(attr))
    }

    /// Writes a new non-directory inode, its entry `name` in directory `p` and `p`'s new
    /// times: what create, symlink and mknod share.
    fn add_leaf(
        &mut self,
        p: &mut InodeRec,
        name: &str,
        attr: InodeAttr,
        symlink: Option<String>,
    ) -> R<InodeAttr> {
        let (id, kind) = (attr.inode, attr.kind);
        let rec = InodeRec {
            attr,
            parent: p.attr.inode,
            symlink,
            dir_layout: None,
        };
        self.put(&rec)?;
        self.insert_entry(p.attr.inode, name, id, kind)?;
        self.touch_dir(p);
        self.put(p)?;
        Ok(rec.attr)
    }

    fn symlink(
        &mut self,
        parent: InodeId,
        name: &str,
        target: &str,
        caller: Caller,
    ) -> R<MetaReply> {
        if target.is_empty() {
            return fail(ErrorCode::NotFound, "empty symlink target");
        }
        if target.len() > SYMLINK_BYTES_MAX {
            return fail(
                ErrorCode::NameTooLong,
                format!("symlink target of {} bytes", target.len()),
            );
        }
        if target.bytes().any(|b| b == 0) {
            return fail(ErrorCode::InvalidArgument, "symlink target contains NUL");
        }
        let mut p = self.check_new_entry(parent, name)?;
        let id = self.alloc_inode();
        let mut attr = self.new_child_attr(&p.attr, id, FileType::Symlink, 0o777, caller);
        attr.size = target.len() as u64;
        let attr = self.add_leaf(&mut p, name, attr, Some(target.to_string()))?;
        Ok(MetaReply::Attr(attr))
    }

    /// A FIFO, socket or device node: an inode and its entry, no data.
    fn mknod(
        &mut self,
        parent: InodeId,
        name: &str,
        kind: FileType,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> R<MetaReply> {
        if !kind.is_special() {
            return fail(
                ErrorCode::InvalidArgument,
                format!("mknod makes FIFOs, sockets and devices, not {kind:?}"),
            );
        }
        let mut p = self.check_new_entry(parent, name)?;
        let id = self.alloc_inode();
        let mut attr = self.new_child_attr(&p.attr, id, kind, mode, caller);
        if matches!(kind, FileType::CharDevice | FileType::BlockDevice) {
            attr.rdev = rdev;
        }
        let attr = self.add_leaf(&mut p, name, attr, None)?;
        Ok(MetaReply::Attr(attr))
    }

    fn link(&mut self, inode: InodeId, new_parent: InodeId, new_name: &str) -> R<MetaReply> {
        let mut rec = need_inode(&self.inodes, inode)?;
        if rec.attr.kind == FileType::Dir {
            return fail(
                ErrorCode::NotPermitted,
                "hard links to directories are not allowed",
            );
        }
        if rec.attr.nlink == 0 {
            return fail(
                ErrorCode::NotFound,
                format!("inode {inode} has been unlinked"),
            );
        }
        if rec.attr.nlink >= LINKS_MAX {
            return fail(
                ErrorCode::TooManyLinks,
                format!("inode {inode} has {} links", rec.attr.nlink),
            );
        }
        let mut p = self.check_new_entry(new_parent, new_name)?;
        rec.attr.nlink += 1;
        rec.attr.ctime = self.now;
        self.put(&rec)?;
        self.insert_entry(new_parent, new_name, inode, rec.attr.kind)?;
        self.touch_dir(&mut p);
        self.put(&p)?;
        Ok(MetaReply::Attr(rec.attr))
    }

    fn unlink(&mut self, parent: InodeId, name: &str) -> R<MetaReply> {
        validate_name(name)?;
        let mut p = need_dir(&self.inodes, parent)?;
        let (child, kind) = need_entry(&self.dirents, parent, name)?;
        if kind == FileType::Dir {
            return fail(ErrorCode::IsDir, format!("{name:?} is a directory"));
        }
        let rec = need_inode(&self.inodes, child)?;
        self.remove_entry(parent, name)?;
        self.drop_link(rec)?;
        self.touch_dir(&mut p);
        self.put(&p)?;
        Ok(MetaReply::Done)
    }

    fn rmdir(&mut self, parent: InodeId, name: &str) -> R<MetaReply> {
        validate_name(name)?;
        let mut p = need_dir(&self.inodes, parent)?;
        let (child, kind) = need_entry(&self.dirents, parent, name)?;
        if kind != FileType::Dir {
            return fail(ErrorCode::NotDir, format!("{name:?} is not a directory"));
        }
        if !dir_is_empty(&self.dirents, child)? {
            return fail(ErrorCode::NotEmpty, format!("{name:?} is not empty"));
        }
        self.remove_entry(parent, name)?;
        self.remove_inode(child)?;
        p.attr.nlink -= 1;
        self.touch_dir(&mut p);
        self.put(&p)?;
        Ok(MetaReply::Done)
    }

    fn rename(
        &mut self,
        sp: InodeId,
        sname: &str,
        dp: InodeId,
        dname: &str,
        mode: &RenameMode,
    ) -> R<MetaReply> {
        // 1. validate names and both parents.
        validate_name(sname)?;
        validate_name(dname)?;
        need_dir(&self.inodes, sp)?;
        need_live_dir(&self.inodes, dp)?;
        let Some((src, skind)) = get_entry(&self.dirents, sp, sname)? else {
            return fail(ErrorCode::NotFound, format!("no entry {sname:?} in {sp}"));
        };
        let dst = get_entry(&self.dirents, dp, dname)?;
        // 2. mode-specific existence rules.
        match (mode, dst) {
            (RenameMode::NoReplace, Some(_)) => {
                return fail(ErrorCode::Exists, format!("{dname:?} exists in {dp}"));
            }
            (RenameMode::Exchange, None) => {
                return fail(ErrorCode::NotFound, format!("no entry {dname:?} in {dp}"));
            }
            _ => {}
        }
        // 3. the same inode under both names (or the same entry): nothing to do.
        if let Some((d, _)) = dst
            && d == src
        {
            return Ok(MetaReply::Done);
        }
        // 4. a directory must not move below itself.
        if skind == FileType::Dir && sp != dp && self.is_within(dp, src)? {
            return fail(
                ErrorCode::InvalidArgument,
                format!("cannot move {sname:?} into its own subtree"),
            );
        }
        if let RenameMode::Exchange = mode {
            let (d, dkind) = dst.expect("checked above");
            if dkind == FileType::Dir && sp != dp && self.is_within(sp, d)? {
                return fail(
                    ErrorCode::InvalidArgument,
                    format!("cannot move {dname:?} into its own subtree"),
                );
            }
            return self.exchange(sp, sname, src, skind, dp, dname, d, dkind);
        }
        // 5. replace rules.
        let mut victim = None;
        if let Some((d, dkind)) = dst {
            match (skind == FileType::Dir, dkind == FileType::Dir) {
                (true, false) => {
                    return fail(ErrorCode::NotDir, format!("{dname:?} is not a directory"));
                }
                (false, true) => {
                    return fail(ErrorCode::IsDir, format!("{dname:?} is a directory"));
                }
                (true, true) => {
                    if !dir_is_empty(&self.dirents, d)? {
                        return fail(ErrorCode::NotEmpty, format!("{dname:?} is not empty"));
                    }
                }
                (false, false) => {}
            }
            victim = Some((d, dkind));
        }
        let moves_dir_across = skind == FileType::Dir && sp != dp;
        if moves_dir_across && victim.is_none() {
            let d = need_inode(&self.inodes, dp)?;
            if d.attr.nlink >= LINKS_MAX {
                return fail(
                    ErrorCode::TooManyLinks,
                    format!("directory {dp} has too many subdirectories"),
                );
            }
        }
        // 6. mutate: drop the victim, move the entry, fix link counts and times.
        if let Some((d, dkind)) = victim {
            let drec = need_inode(&self.inodes, d)?;
            if dkind == FileType::Dir {
                self.remove_inode(d)?;
                // The victim dir's ".." link to dp goes away.
                let mut dpr = need_inode(&self.inodes, dp)?;
                dpr.attr.nlink -= 1;
                self.put(&dpr)?;
            } else {
                self.drop_link(drec)?;
            }
        }
        self.remove_entry(sp, sname)?;
        self.insert_entry(dp, dname, src, skind)?;
        let mut srec = need_inode(&self.inodes, src)?;
        srec.attr.ctime = self.now;
        if skind == FileType::Dir {
            srec.parent = dp;
        }
        self.put(&srec)?;
        let mut sprec = need_inode(&self.inodes, sp)?;
        if moves_dir_across {
            sprec.attr.nlink -= 1;
        }
        self.touch_dir(&mut sprec);
        self.put(&sprec)?;
        if sp != dp {
            let mut dprec = need_inode(&self.inodes, dp)?;
            if moves_dir_across {
                dprec.attr.nlink += 1;
            }
            self.touch_dir(&mut dprec);
            self.put(&dprec)?;
        }
        Ok(MetaReply::Done)
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &mut self,
        sp: InodeId,
        sname: &str,
        src: InodeId,
        skind: FileType,
        dp: InodeId,
        dname: &str,
        dst: InodeId,
        dkind: FileType,
    ) -> R<MetaReply> {
        self.insert_entry(sp, sname, dst, dkind)?;
        self.insert_entry(dp, dname, src, skind)?;
        for (id, new_parent) in [(src, dp), (dst, sp)] {
            let mut r = need_inode(&self.inodes, id)?;
            r.attr.ctime = self.now;
            if r.attr.kind == FileType::Dir {
                r.parent = new_parent;
            }
            self.put(&r)?;
        }
        let sdir = (skind == FileType::Dir) as i64;
        let ddir = (dkind == FileType::Dir) as i64;
        let mut sprec = need_inode(&self.inodes, sp)?;
        self.touch_dir(&mut sprec);
        if sp != dp {
            sprec.attr.nlink = (sprec.attr.nlink as i64 - sdir + ddir) as u32;
        }
        self.put(&sprec)?;
        if sp != dp {
            let mut dprec = need_inode(&self.inodes, dp)?;
            dprec.attr.nlink = (dprec.attr.nlink as i64 - ddir + sdir) as u32;
            self.touch_dir(&mut dprec);
            self.put(&dprec)?;
        }
        Ok(MetaReply::Done)
    }

    fn setattr(&mut self, inode: InodeId, set: &SetAttr) -> R<MetaReply> {
        let mut rec = need_inode(&self.inodes, inode)?;
        if let Some(size) = set.size {
            match rec.attr.kind {
                FileType::Dir => {
                    return fail(ErrorCode::IsDir, format!("inode {inode} is a directory"));
                }
                FileType::File => {}
                k => {
                    return fail(
                        ErrorCode::InvalidArgument,
                        format!("inode {inode} is a {k:?}, it has no size to set"),
                    );
                }
            }
            if size > FILE_BYTES_MAX {
                return fail(ErrorCode::FileTooBig, format!("size {size}"));
            }
        }
        rec.attr.mode = set.mode_after(rec.attr.kind, rec.attr.mode);
        if let Some(u) = set.uid {
            rec.attr.uid = u;
        }
        if let Some(g) = set.gid {
            rec.attr.gid = g;
        }
        if let Some(size) = set.size {
            // Truncate or extend: a versioned operation so that length reports racing it are
            // refused. The caller trims chunks beyond the new size on storage.
            rec.attr.size = size;
            rec.attr.truncate_version += 1;
            rec.attr.mtime = self.now;
        }
        if let Some(a) = set.atime {
            rec.attr.atime = a;
        }
        if let Some(m) = set.mtime {
            rec.attr.mtime = m;
        }
        rec.attr.ctime = self.now;
        self.put(&rec)?;
        Ok(MetaReply::Attr(rec.attr))
    }

    fn remove_tree(&mut self, parent: InodeId, name: &str) -> R<MetaReply> {
        validate_name(name)?;
        let mut p = need_dir(&self.inodes, parent)?;
        let (child, kind) = need_entry(&self.dirents, parent, name)?;
        self.remove_entry(parent, name)?;
        if kind == FileType::Dir {
            p.attr.nlink -= 1;
            self.detach_dir(child)?;
        } else {
            let rec = need_inode(&self.inodes, child)?;
            self.drop_link(rec)?;
        }
        self.touch_dir(&mut p);
        self.put(&p)?;
        Ok(MetaReply::Done)
    }

    /// Put a directory on the trash list; nlink 0 marks it removed (no new entries).
    fn detach_dir(&mut self, dir: InodeId) -> R<()> {
        if let Some(mut rec) = get_inode(&self.inodes, dir)? {
            rec.attr.nlink = 0;
            rec.attr.ctime = self.now;
            self.put(&rec)?;
        }
        self.trash.insert(dir.0, ())?;
        Ok(())
    }

    /// One bounded step of the collector over removed trees: detach up to
    /// `TRASH_STEP_ENTRIES_MAX` entries; subdirectories join the trash list, files lose a
    /// link. A directory whose entries are all gone is dropped. Returns whether trash remains.
    pub fn expand_trash(&mut self) -> R<bool> {
        let mut budget = TRASH_STEP_ENTRIES_MAX;
        while budget > 0 {
            let Some(dir) = self.trash.first()?.map(|(k, _)| InodeId(k.value())) else {
                return Ok(false);
            };
            let (entries, _) = read_dir(
                &self.dirents,
                dir,
                None,
                budget.min(READDIR_PAGE_MAX as usize) as u32,
            )?;
            if entries.is_empty() {
                self.trash.remove(dir.0)?;
                self.remove_inode(dir)?;
                continue;
            }
            budget = budget.saturating_sub(entries.len());
            for e in entries {
                self.remove_entry(dir, &e.name)?;
                match e.kind {
                    FileType::Dir => self.detach_dir(e.inode)?,
                    _ => {
                        if let Some(rec) = get_inode(&self.inodes, e.inode)? {
                            self.drop_link(rec)?;
                        }
                    }
                }
            }
        }
        Ok(self.trash.first()?.is_some())
    }

    /// A node finished deleting `inode`'s chunks on `chain`.
    pub fn gc_done(&mut self, inode: InodeId, chain: ChainId) -> R<()> {
        let rec: Option<GcRec> = match self.gc.get(inode.0)? {
            None => None,
            Some(v) => Some(
                postcard::from_bytes(v.value()).map_err(|e| corrupt(format!("gc record: {e}")))?,
            ),
        };
        let Some(mut rec) = rec else { return Ok(()) };
        rec.pending.retain(|c| *c != chain);
        if rec.pending.is_empty() {
            self.gc.remove(inode.0)?;
        } else {
            let bytes =
                postcard::to_stdvec(&rec).map_err(|e| corrupt(format!("encode gc: {e}")))?;
            self.gc.insert(inode.0, bytes.as_slice())?;
        }
        Ok(())
    }
}

/// Deterministic shuffle of a chain table (seeded by its id) so that consecutive files start
/// at different chains and neighbouring chains in the table do not always pair up.
pub fn shuffled(chains: &[ChainId], seed: ChainTableId) -> Vec<ChainId> {
    let mut v = chains.to_vec();
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (seed.0 as u64);
    let mut next = || {
        // splitmix64
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests;
