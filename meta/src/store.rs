//! The state machine store (`state.redb`) and snapshots (`snapshots/`).
//!
//! Apply transactions commit with `Durability::None`: the Raft log is the durable record, and
//! after a crash openraft re-applies committed entries past the last durable `last_applied`.
//! Before a snapshot is cut (and the log purged behind it) one durable commit makes every
//! earlier apply durable, so the state machine is never behind a purged log.

use crate::cluster::ClusterState;
use crate::namespace::{ApplyError, Tx};
use crate::tables::*;
use crate::types::{Batch, BatchReply, ClusterCmd, LogId, Op, OpReply, StorageError, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StoredMembership,
};
use parking_lot::RwLock;
use pond_proto::cluster::RoutingInfo;
use pond_proto::meta::{ClusterReply, Timestamp};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub type Membership = StoredMembership<u64, crate::types::PeerNode>;

/// State shared by the state machine, the gRPC handlers and the cluster manager.
pub struct Shared {
    pub db: Arc<Database>,
    /// The applied cluster map (small; copied from each apply transaction).
    pub cluster: RwLock<ClusterState>,
    /// Index of the last applied entry.
    pub applied: AtomicU64,
}

impl Shared {
    pub fn routing(&self) -> RoutingInfo {
        self.cluster.read().routing.clone()
    }
}

pub struct StateStore {
    pub shared: Arc<Shared>,
    snap_dir: PathBuf,
    /// The file being received by `begin_receiving_snapshot`.
    receiving: Option<PathBuf>,
    /// Entries applied since the last durable apply.
    since_durable: u64,
    /// How far the local Raft log is durable: apply waits for it (the leader's log reports its
    /// own entries flushed before they are, see `log_store`).
    log_durable: Option<Arc<crate::log_store::LogDurable>>,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::other(e.to_string()),
    )
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::Snapshot(None),
        verb,
        std::io::Error::other(e.to_string()),
    )
}

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

fn read_meta_value<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, BoxErr> {
    let txn = db.begin_read()?;
    let t = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match t.get(key)? {
        None => Ok(None),
        Some(v) => Ok(Some(postcard::from_bytes(v.value())?)),
    }
}

/// Apply a whole list of entries in one redb transaction. Pure function of the entries and
/// the previous state (never reads a clock).
pub fn apply_entries(
    db: &Database,
    cluster: ClusterState,
    entries: Vec<Entry<TypeConfig>>,
    durable: bool,
) -> Result<(Vec<BatchReply>, ClusterState, Option<LogId>), BoxErr> {
    let mut txn = db.begin_write()?;
    if durable {
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
    } else {
        txn.set_durability(Durability::None)?;
    }
    let mut replies = Vec::with_capacity(entries.len());
    let mut last = None;
    let cluster = {
        let mut tx = Tx::open(&txn, cluster).map_err(apply_err)?;
        let mut membership: Option<Membership> = None;
        for e in entries {
            last = Some(e.log_id);
            tx.ensure_root().map_err(apply_err)?;
            match e.payload {
                EntryPayload::Blank => replies.push(BatchReply::default()),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(e.log_id), m));
                    replies.push(BatchReply::default());
                }
                EntryPayload::Normal(batch) => replies.push(apply_batch(&mut tx, batch)?),
            }
        }
        if let Some(l) = &last {
            tx.meta
                .insert(K_LAST_APPLIED, postcard::to_stdvec(l)?.as_slice())?;
        }
        if let Some(m) = &membership {
            tx.meta
                .insert(K_MEMBERSHIP, postcard::to_stdvec(m)?.as_slice())?;
        }
        tx.finish().map_err(apply_err)?
    };
    txn.commit()?;
    Ok((replies, cluster, last))
}

fn apply_err(e: ApplyError) -> BoxErr {
    match e {
        ApplyError::Store(e) => Box::new(e),
        ApplyError::Op(e) => format!("unexpected refusal outside an op: {e}").into(),
    }
}

/// Apply one batch. Refusals become per-op errors; store failures abort the transaction.
pub fn apply_batch(tx: &mut Tx<'_>, batch: Batch) -> Result<BatchReply, BoxErr> {
    tx.now = batch.now;
    if let Err(e) = tx.stamp_root_if_unset() {
        return Err(apply_err(e));
    }
    let mut out = Vec::with_capacity(batch.ops.len());
    for op in batch.ops {
        let r = match op {
            Op::Meta { origin, req } => tx.apply_meta(origin, &req)?.map(OpReply::Meta),
            Op::Cluster(cmd) => match apply_cluster(tx, cmd) {
                Ok(r) => Ok(r),
                Err(ApplyError::Op(e)) => Err(e),
                Err(ApplyError::Store(e)) => return Err(Box::new(e)),
            },
        };
        out.push(r);
    }
    Ok(BatchReply(out))
}

fn apply_cluster(tx: &mut Tx<'_>, cmd: ClusterCmd) -> Result<OpReply, ApplyError> {
    match cmd {
        ClusterCmd::Register {
            node,
            data_addr,
            targets,
        } => {
            tx.cluster.register(node, &data_addr, &targets);
            Ok(OpReply::Done)
        }
        ClusterCmd::Report {
            node,
            targets,
            usage,
        } => {
            tx.cluster.report(node, &targets, usage);
            Ok(OpReply::Done)
        }
        ClusterCmd::NodeDown { node } => {
            tx.cluster.node_down(node);
            Ok(OpReply::Done)
        }
        ClusterCmd::BootstrapChains { replicas } => {
            let table = tx.cluster.bootstrap_chains(replicas)?;
            Ok(OpReply::Cluster(ClusterReply::Bootstrapped(table)))
        }
        ClusterCmd::GcDone { tasks } => {
            for t in tasks {
                tx.gc_done(t.inode, t.chain)?;
            }
            Ok(OpReply::Done)
        }
        ClusterCmd::ExpandTrash => {
            tx.expand_trash()?;
            Ok(OpReply::Done)
        }
        ClusterCmd::ExpireLeases => {
            tx.expire_leases()?;
            Ok(OpReply::Done)
        }
    }
}

/// Tables copied into a snapshot, with their one-byte tags in the snapshot file.
type BytesTable = TableDefinition<'static, &'static [u8], &'static [u8]>;
type U64Table = TableDefinition<'static, u64, &'static [u8]>;
const BYTES_TABLES: [(u8, BytesTable); 3] = [(2, DIRENTS), (6, DEDUP), (11, XATTRS)];
const U64_TABLES: [(u8, U64Table); 4] = [(1, INODES), (4, GC), (7, DEDUP_ORDER), (9, LEASES)];
const TAG_CLIENT_SESSIONS: u8 = 10;
const TAG_SESSIONS: u8 = 3;
const TAG_TRASH: u8 = 5;
const TAG_META: u8 = 8;
const TAG_END: u8 = 0xFF;
const SNAP_MAGIC: &[u8; 8] = b"PONDSNAP";
/// Meta keys that travel in a snapshot (last_applied and membership come from its meta).
const SNAP_META_KEYS: [&str; 5] = [
    K_FORMAT,
    K_NEXT_INODE,
    K_ROUND_ROBIN,
    K_DEDUP_SEQ,
    K_CLUSTER,
];

fn write_rec(w: &mut impl Write, tag: u8, k: &[u8], v: &[u8]) -> std::io::Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&(k.len() as u32).to_le_bytes())?;
    w.write_all(k)?;
    w.write_all(&(v.len() as u32).to_le_bytes())?;
    w.write_all(v)
}

/// Stream the whole state of a read transaction into `w` (no full copy in memory).
fn dump(txn: &redb::ReadTransaction, w: &mut impl Write) -> Result<(), BoxErr> {
    w.write_all(SNAP_MAGIC)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes())?;
    for (tag, def) in U64_TABLES {
        let t = txn.open_table(def)?;
        for item in t.iter()? {
            let (k, v) = item?;
            write_rec(w, tag, &k.value().to_be_bytes(), v.value())?;
        }
    }
    for (tag, def) in BYTES_TABLES {
        let t = txn.open_table(def)?;
        for item in t.iter()? {
            let (k, v) = item?;
            write_rec(w, tag, k.value(), v.value())?;
        }
    }
    let t = txn.open_table(SESSIONS)?;
    for item in t.iter()? {
        let (k, _) = item?;
        write_rec(w, TAG_SESSIONS, k.value(), &[])?;
    }
    let t = txn.open_table(CLIENT_SESSIONS)?;
    for item in t.iter()? {
        let (k, _) = item?;
        write_rec(w, TAG_CLIENT_SESSIONS, k.value(), &[])?;
    }
    let t = txn.open_table(TRASH)?;
    for item in t.iter()? {
        let (k, _) = item?;
        write_rec(w, TAG_TRASH, &k.value().to_be_bytes(), &[])?;
    }
    let t = txn.open_table(META)?;
    for key in SNAP_META_KEYS {
        if let Some(v) = t.get(key)? {
            write_rec(w, TAG_META, key.as_bytes(), v.value())?;
        }
    }
    w.write_all(&[TAG_END])?;
    Ok(())
}

fn read_exact_vec(r: &mut impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn be_u64(k: &[u8]) -> Result<u64, BoxErr> {
    Ok(u64::from_be_bytes(
        k.try_into().map_err(|_| "snapshot: bad u64 key")?,
    ))
}

/// Replace the whole state with a snapshot file's contents, in one durable transaction.
fn load(
    db: &Database,
    r: &mut impl Read,
    meta: &SnapshotMeta<u64, crate::types::PeerNode>,
) -> Result<(), BoxErr> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != SNAP_MAGIC {
        return Err("snapshot: bad magic".into());
    }
    let version = read_u32(r)?;
    if version != FORMAT_VERSION {
        return Err(
            format!("snapshot: format {version}, this build reads {FORMAT_VERSION}").into(),
        );
    }
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.delete_table(INODES)?;
    txn.delete_table(GC)?;
    txn.delete_table(DEDUP_ORDER)?;
    txn.delete_table(DIRENTS)?;
    txn.delete_table(DEDUP)?;
    txn.delete_table(SESSIONS)?;
    txn.delete_table(CLIENT_SESSIONS)?;
    txn.delete_table(LEASES)?;
    txn.delete_table(TRASH)?;
    txn.delete_table(META)?;
    txn.delete_table(XATTRS)?;
    {
        let mut inodes = txn.open_table(INODES)?;
        let mut gc = txn.open_table(GC)?;
        let mut dorder = txn.open_table(DEDUP_ORDER)?;
        let mut dirents = txn.open_table(DIRENTS)?;
        let mut dedup = txn.open_table(DEDUP)?;
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut client_sessions = txn.open_table(CLIENT_SESSIONS)?;
        let mut leases = txn.open_table(LEASES)?;
        let mut trash = txn.open_table(TRASH)?;
        let mut xattrs = txn.open_table(XATTRS)?;
        let mut m = txn.open_table(META)?;
        loop {
            let mut tag = [0u8; 1];
            r.read_exact(&mut tag)?;
            if tag[0] == TAG_END {
                break;
            }
            let kl = read_u32(r)? as usize;
            let k = read_exact_vec(r, kl)?;
            let vl = read_u32(r)? as usize;
            let v = read_exact_vec(r, vl)?;
            match tag[0] {
                1 => {
                    inodes.insert(be_u64(&k)?, v.as_slice())?;
                }
                4 => {
                    gc.insert(be_u64(&k)?, v.as_slice())?;
                }
                7 => {
                    dorder.insert(be_u64(&k)?, v.as_slice())?;
                }
                2 => {
                    dirents.insert(k.as_slice(), v.as_slice())?;
                }
                6 => {
                    dedup.insert(k.as_slice(), v.as_slice())?;
                }
                11 => {
                    xattrs.insert(k.as_slice(), v.as_slice())?;
                }
                TAG_SESSIONS => {
                    sessions.insert(k.as_slice(), ())?;
                }
                9 => {
                    leases.insert(be_u64(&k)?, v.as_slice())?;
                }
                TAG_CLIENT_SESSIONS => {
                    client_sessions.insert(k.as_slice(), ())?;
                }
                TAG_TRASH => {
                    trash.insert(be_u64(&k)?, ())?;
                }
                TAG_META => {
                    let key = std::str::from_utf8(&k)?;
                    if !SNAP_META_KEYS.contains(&key) {
                        return Err(format!("snapshot: unexpected meta key {key:?}").into());
                    }
                    m.insert(key, v.as_slice())?;
                }
                t => return Err(format!("snapshot: unknown record tag {t}").into()),
            }
        }
        if let Some(l) = &meta.last_log_id {
            m.insert(K_LAST_APPLIED, postcard::to_stdvec(l)?.as_slice())?;
        }
        m.insert(
            K_MEMBERSHIP,
            postcard::to_stdvec(&meta.last_membership)?.as_slice(),
        )?;
        m.insert(K_SNAPSHOT, postcard::to_stdvec(meta)?.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

fn load_cluster(db: &Database) -> Result<ClusterState, BoxErr> {
    let routing: Option<RoutingInfo> = read_meta_value(db, K_CLUSTER)?;
    Ok(ClusterState::from_routing(routing.unwrap_or_default()))
}

impl StateStore {
    pub fn open(dir: &Path) -> anyhow::Result<StateStore> {
        let db = Database::create(dir.join("state.redb"))?;
        {
            let txn = db.begin_write()?;
            let format: Option<Vec<u8>> = {
                let mut m = txn.open_table(META)?;
                let v = m.get(K_FORMAT)?.map(|g| g.value().to_vec());
                if v.is_none() {
                    m.insert(K_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())?;
                }
                v
            };
            if let Some(v) = format {
                let got = u32::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("bad format marker"))?,
                );
                anyhow::ensure!(
                    got == FORMAT_VERSION,
                    "state.redb has format {got}, this build reads {FORMAT_VERSION}"
                );
            }
            txn.open_table(INODES)?;
            txn.open_table(DIRENTS)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(CLIENT_SESSIONS)?;
            txn.open_table(LEASES)?;
            txn.open_table(GC)?;
            txn.open_table(TRASH)?;
            txn.open_table(DEDUP)?;
            txn.open_table(DEDUP_ORDER)?;
            txn.open_table(XATTRS)?;
            txn.commit()?;
        }
        let snap_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snap_dir)?;
        // Half-built or half-received snapshots of a crashed run.
        for e in std::fs::read_dir(&snap_dir)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "tmp") {
                std::fs::remove_file(e.path())?;
            }
        }
        let cluster = load_cluster(&db).map_err(|e| anyhow::anyhow!("load cluster map: {e}"))?;
        let applied: Option<LogId> = read_meta_value(&db, K_LAST_APPLIED)
            .map_err(|e| anyhow::anyhow!("read last applied: {e}"))?;
        let shared = Arc::new(Shared {
            db: Arc::new(db),
            cluster: RwLock::new(cluster),
            applied: AtomicU64::new(applied.map(|l| l.index).unwrap_or(0)),
        });
        Ok(StateStore {
            shared,
            snap_dir,
            receiving: None,
            since_durable: 0,
            log_durable: None,
        })
    }

    /// Makes `apply` wait until the local log is durable up to the entries it applies.
    pub fn wait_for_log(&mut self, durable: Arc<crate::log_store::LogDurable>) {
        self.log_durable = Some(durable);
    }

    fn snap_path(&self, id: &str) -> PathBuf {
        self.snap_dir.join(format!("{id}.snap"))
    }
}

/// Builds snapshots from a consistent redb read transaction.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    snap_dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let dir = self.snap_dir.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || -> Result<_, BoxErr> {
            // 1. make every earlier apply durable (the log behind this snapshot gets purged).
            //    Quick-repair stores the allocator state, so opening after a crash does not
            //    walk the whole (possibly large) state file.
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.set_quick_repair(true);
            txn.commit()?;
            // 2. dump a consistent view.
            let rtxn = db.begin_read()?;
            let (last, membership) = {
                let m = rtxn.open_table(META)?;
                let last: Option<LogId> = match m.get(K_LAST_APPLIED)? {
                    Some(v) => Some(postcard::from_bytes(v.value())?),
                    None => None,
                };
                let mem: Membership = match m.get(K_MEMBERSHIP)? {
                    Some(v) => postcard::from_bytes(v.value())?,
                    None => Membership::default(),
                };
                (last, mem)
            };
            let id = match &last {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
                None => "0-0-0".to_string(),
            };
            let tmp = dir.join(format!("{id}.tmp"));
            {
                let f = std::fs::File::create(&tmp)?;
                let mut w = BufWriter::new(f);
                dump(&rtxn, &mut w)?;
                let f = w.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
            }
            let path = dir.join(format!("{id}.snap"));
            std::fs::rename(&tmp, &path)?;
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: membership,
                snapshot_id: id,
            };
            // 3. record it as the current snapshot, then drop older files.
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut m = txn.open_table(META)?;
                m.insert(K_SNAPSHOT, postcard::to_stdvec(&meta)?.as_slice())?;
            }
            txn.commit()?;
            remove_other_snapshots(&dir, &path);
            Ok((meta, path))
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(f),
        })
    }
}

fn remove_other_snapshots(dir: &Path, keep: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p != keep && p.extension().is_some_and(|x| x == "snap") {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let db = self.shared.db.clone();
        tokio::task::spawn_blocking(move || -> Result<_, BoxErr> {
            let last: Option<LogId> = read_meta_value(&db, K_LAST_APPLIED)?;
            let mem: Option<Membership> = read_meta_value(&db, K_MEMBERSHIP)?;
            Ok((last, mem.unwrap_or_default()))
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Read, e))?
        .map_err(|e| sm_err(ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchReply>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Nothing is applied (answered, readable) before the local log holds it durably: with
        // the followers that acknowledged it, a majority.
        if let (Some(d), Some(last)) = (&self.log_durable, entries.last()) {
            d.wait(last.log_id.index)
                .await
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        }
        let shared = self.shared.clone();
        let cluster = shared.cluster.read().clone();
        self.since_durable += entries.len() as u64;
        let durable = self.since_durable >= crate::limits::STATE_DURABLE_EVERY_ENTRIES;
        if durable {
            self.since_durable = 0;
        }
        let run = move || apply_entries(&shared.db, cluster, entries, durable);
        // On a multi-threaded runtime the apply runs right here (`block_in_place` moves this
        // worker's other tasks elsewhere): no hop to the blocking pool and back on every
        // commit. A current-thread runtime (some tests) cannot block, so it hops.
        let res = if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(run)
        } else {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|e| sm_err(ErrorVerb::Write, e))?
        };
        let (replies, cluster, last) = res.map_err(|e| sm_err(ErrorVerb::Write, e))?;
        *self.shared.cluster.write() = cluster;
        if let Some(l) = last {
            self.shared.applied.store(l.index, Ordering::Release);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.shared.db.clone(),
            snap_dir: self.snap_dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self
            .snap_dir
            .join(format!("recv-{}.tmp", rand::random::<u64>()));
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        if let Some(old) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, crate::types::PeerNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut f = snapshot.into_std().await;
        let db = self.shared.db.clone();
        let meta2 = meta.clone();
        let target = self.snap_path(&meta.snapshot_id);
        let received = self.receiving.take();
        let dir = self.snap_dir.clone();
        let cluster = tokio::task::spawn_blocking(move || -> Result<ClusterState, BoxErr> {
            use std::io::Seek;
            f.sync_all()?;
            f.seek(std::io::SeekFrom::Start(0))?;
            load(&db, &mut BufReader::new(&mut f), &meta2)?;
            match received {
                Some(p) => std::fs::rename(&p, &target)?,
                None => {
                    f.seek(std::io::SeekFrom::Start(0))?;
                    let mut out = std::fs::File::create(&target)?;
                    std::io::copy(&mut f, &mut out)?;
                    out.sync_all()?;
                }
            }
            remove_other_snapshots(&dir, &target);
            load_cluster(&db)
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        *self.shared.cluster.write() = cluster;
        if let Some(l) = &meta.last_log_id {
            self.shared.applied.store(l.index, Ordering::Release);
        }
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let meta: Option<SnapshotMeta<u64, crate::types::PeerNode>> =
            read_meta_value(&self.shared.db, K_SNAPSHOT)
                .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let Some(meta) = meta else { return Ok(None) };
        let path = self.snap_path(&meta.snapshot_id);
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(f),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(snap_err(ErrorVerb::Read, e)),
        }
    }
}

/// Now as a `Timestamp` (leader side only; apply never calls this).
pub fn now() -> Timestamp {
    Timestamp::now()
}
