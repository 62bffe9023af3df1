//! The block engine: chunks as lists of copy-on-write 64 KiB blocks (`BLOCK_BYTES`) in a slot
//! space, with the chunk records (committed + pending version, each a block list plus one
//! CRC32C per 4 KiB sector, `SECTOR_BYTES`) in a metadata store. A `Backend` supplies the slot
//! I/O and the metadata store.
//!
//! Checksums: a read verifies exactly the sectors it returns (a 4 KiB read reads and checks
//! 4 KiB, not its 64 KiB block) and derives the CRC of the returned range from the sector
//! CRCs (`crc::combine`); an update checksums only the sectors it changes, reusing the
//! caller's payload sector CRCs and the base version's CRCs of untouched sectors. Sectors
//! copied unchanged from the base version keep their CRC without being re-verified: damage in
//! them stays detectable. A partially overwritten sector is verified before it is merged, so
//! damage is never laundered into a valid CRC.
//!
//! Update protocol (every window is covered by `CrashPoint` tests):
//! 1. plan the new block list from the committed one: untouched blocks are shared, touched
//!    blocks get fresh slots (never overwriting a slot a version points at);
//! 2. write the new blocks (read-modify-write for partially covered ones), then sync them;
//! 3. commit the new chunk record in one metadata batch;
//! 4. update the in-memory index and hand slots no version references any more to the
//!    allocator, deferred until no reader that might still use them is in flight.
//!
//! On open the allocator is rebuilt from the records alone, so slots written by an update that
//! never reached step 3 are free again: orphaned space is reclaimed without a log.
//!
//! **Precondition:** calls that change one chunk are serialised by the caller (the replica's
//! chunk lock); calls for different chunks may run concurrently.

use super::*;
use crate::limits::*;
use bytes::BytesMut;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A hole: a block of zeros with no slot.
pub const HOLE: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlockRef {
    pub slot: u32,
    pub len: u32,
}

/// One client update the chunk remembers: `(client, request)` produced `version`, after which
/// the chunk was `length` bytes long.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Applied {
    pub client: u64,
    pub request: u64,
    pub version: u32,
    pub length: u32,
}

/// One version of a chunk on disk.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VersionRec {
    pub version: u32,
    pub chain_version: u32,
    pub length: u32,
    /// `content_digest` of the content (from `sectors`).
    pub crc: u32,
    pub origin: Option<(u64, u64)>,
    pub blocks: Vec<BlockRef>,
    /// CRC32C of each `SECTOR_BYTES` piece of the content, in order (the last may be short).
    pub sectors: Vec<u32>,
    /// The last `RECENT_UPDATES_MAX` client updates that led to this version, newest last.
    pub recent: Vec<Applied>,
}

impl VersionRec {
    fn info(&self) -> VersionInfo {
        VersionInfo {
            version: ChunkVersion(self.version),
            chain_version: ChainVersion(self.chain_version),
            length: self.length,
            crc: self.crc,
            origin: self.origin.map(|(c, r)| (ClientId(c), RequestId(r))),
        }
    }

    fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.blocks.iter().map(|b| b.slot).filter(|s| *s != HOLE)
    }

    /// The shape every reader relies on: block and sector lists that fit the length.
    fn check(&self) -> Result<(), String> {
        let len = self.length as u64;
        if len > pond_proto::limits::CHUNK_BYTES_MAX as u64 {
            return Err(format!("length {len}"));
        }
        let bb = BLOCK_BYTES as u64;
        if self.blocks.len() as u64 != len.div_ceil(bb) {
            return Err(format!("{} blocks for length {len}", self.blocks.len()));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if b.len as u64 != bb.min(len - i as u64 * bb) {
                return Err(format!("block {i} of length {}", b.len));
            }
        }
        if self.sectors.len() as u64 != len.div_ceil(SB) {
            return Err(format!(
                "{} sector CRCs for length {len}",
                self.sectors.len()
            ));
        }
        Ok(())
    }

    /// Sector CRCs of block `i`.
    fn block_sectors(&self, i: usize) -> &[u32] {
        let from = (i * SECTORS_PER_BLOCK as usize).min(self.sectors.len());
        let to = ((i + 1) * SECTORS_PER_BLOCK as usize).min(self.sectors.len());
        &self.sectors[from..to]
    }
}

/// The persisted record of a chunk (value of the metadata table, after a format byte).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ChunkRec {
    pub committed: Option<VersionRec>,
    pub pending: Option<VersionRec>,
}

#[derive(Clone, Default)]
struct Entry {
    committed: Option<Arc<VersionRec>>,
    pending: Option<Arc<VersionRec>>,
}

impl Entry {
    fn info(&self) -> ChunkInfo {
        ChunkInfo {
            committed: self.committed.as_ref().map(|v| v.info()),
            pending: self.pending.as_ref().map(|v| v.info()),
        }
    }

    fn rec(&self) -> ChunkRec {
        ChunkRec {
            committed: self.committed.as_deref().cloned(),
            pending: self.pending.as_deref().cloned(),
        }
    }

    fn slots(&self) -> HashSet<u32> {
        let mut s = HashSet::new();
        for v in self.committed.iter().chain(self.pending.iter()) {
            s.extend(v.slots());
        }
        s
    }

    fn is_empty(&self) -> bool {
        self.committed.is_none() && self.pending.is_none()
    }
}

/// One piece of a multi-block read: bytes `at..at + len` of `slot`, to land at `dst` in the
/// reply buffer.
#[derive(Clone, Copy, Debug)]
pub struct ReadSeg {
    pub slot: u32,
    pub at: u32,
    pub len: u32,
    pub dst: usize,
}

/// Slot I/O and the metadata store under an `Engine`.
pub trait Backend: Send + Sync + 'static {
    fn blocking(&self) -> bool;
    fn write_block(&self, slot: u32, data: &[u8]) -> std::io::Result<()>;
    /// Writes several blocks (a backend may have them in flight together), then makes them
    /// durable if `sync`.
    fn write_blocks(&self, blocks: &[(u32, &[u8])], sync: bool) -> std::io::Result<()> {
        for (slot, data) in blocks {
            self.write_block(*slot, data)?;
        }
        if sync {
            self.sync_data()?;
        }
        Ok(())
    }
    /// A `total`-byte buffer of zeros with each segment's bytes read into it (a backend may
    /// have the segments in flight together).
    fn read_segments(&self, segs: &[ReadSeg], total: usize) -> std::io::Result<Bytes> {
        let mut out = BytesMut::zeroed(total);
        for s in segs {
            self.read_into(s.slot, s.at, &mut out[s.dst..s.dst + s.len as usize])?;
        }
        Ok(out.freeze())
    }
    /// `read_segments` if it can be done without waiting for the disk (everything is in
    /// memory: the page cache, or the backend's own), else `Ok(None)` — nothing is waited
    /// for. Default: backends that never wait read as usual.
    fn read_segments_nowait(
        &self,
        segs: &[ReadSeg],
        total: usize,
    ) -> std::io::Result<Option<Bytes>> {
        if self.blocking() {
            return Ok(None);
        }
        self.read_segments(segs, total).map(Some)
    }
    /// Bytes `at..at + len` of a slot (`UnexpectedEof` if they were never written).
    fn read_range(&self, slot: u32, at: u32, len: u32) -> std::io::Result<Bytes>;
    /// Reads bytes `at..at + buf.len()` of a slot into `buf`, for reads that span blocks and
    /// assemble their reply in place.
    fn read_into(&self, slot: u32, at: u32, buf: &mut [u8]) -> std::io::Result<()>;
    /// Makes every written block durable.
    fn sync_data(&self) -> std::io::Result<()>;
    /// Applies all puts (`Some`) and deletes (`None`) atomically; durably if `durable`
    /// (a non-durable commit becomes durable with the next durable one, or is lost whole).
    fn commit_meta(
        &self,
        batch: &[(ChunkId, Option<ChunkRec>)],
        durable: bool,
    ) -> Result<(), StoreError>;
    fn load_meta(&self) -> Result<Vec<(ChunkId, ChunkRec)>, StoreError>;
    /// Slots the target may use, given `used` slots in use now.
    fn capacity_slots(&self, used: u64) -> u64;
    /// Slots from `first` on are unused: the backend may release their space.
    fn release_from(&self, first: u32) -> std::io::Result<()>;
    /// One past the highest slot that can hold data (data is durable before the record that
    /// names it, so a record naming a slot at or beyond this is damaged).
    fn slot_bound(&self) -> std::io::Result<u64>;
}

type Failpoint = Arc<dyn Fn(CrashPoint) -> bool + Send + Sync>;

struct Allocator {
    /// Slots `>= next` were never handed out since open.
    next: u32,
    free: Vec<u32>,
    /// Freed slots waiting until no reader that started before their release is in flight;
    /// released in FIFO order (see `Engine::reader`).
    deferred: VecDeque<(Arc<()>, Vec<u32>)>,
    epoch: Arc<()>,
    /// Slots referenced by some version, or deferred.
    in_use: u64,
    capacity: u64,
    /// Slots a lazy (non-durable) commit stopped referencing, tagged with a sequence number:
    /// the durable records may still name them (a crash would bring the old version back), so
    /// they are released only once a durable commit that started after them succeeded.
    /// Each entry keeps the reader epoch of its release, like `deferred`.
    lazy: VecDeque<(u64, Arc<()>, Vec<u32>)>,
    lazy_seq: u64,
}

impl Allocator {
    fn reclaim(&mut self) {
        while let Some((e, _)) = self.deferred.front() {
            if Arc::strong_count(e) > 1 {
                break;
            }
            let (_, slots) = self.deferred.pop_front().expect("front exists");
            self.in_use -= slots.len() as u64;
            self.free.extend(slots);
        }
    }

    fn alloc(&mut self, n: usize) -> Result<Vec<u32>, StoreError> {
        self.reclaim();
        let fresh_room = self.capacity.saturating_sub(self.next as u64);
        let free_now = self.free.len() as u64;
        // Deferred slots count as used; they come back once readers drain.
        if free_now + fresh_room < n as u64 || self.in_use + n as u64 > self.capacity {
            return Err(StoreError::NoSpace);
        }
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.free.pop() {
                Some(s) => out.push(s),
                None => {
                    out.push(self.next);
                    self.next += 1;
                }
            }
        }
        self.in_use += n as u64;
        Ok(out)
    }

    /// Slots nothing references any more; reusable once current readers finish.
    fn release(&mut self, slots: Vec<u32>) {
        if slots.is_empty() {
            return;
        }
        let old = std::mem::replace(&mut self.epoch, Arc::new(()));
        self.deferred.push_back((old, slots));
        self.reclaim();
    }

    /// Slots a lazy commit stopped referencing: released after the next durable commit.
    fn release_lazy(&mut self, slots: Vec<u32>) {
        if slots.is_empty() {
            return;
        }
        self.lazy_seq += 1;
        let old = std::mem::replace(&mut self.epoch, Arc::new(()));
        self.lazy.push_back((self.lazy_seq, old, slots));
    }

    /// A durable commit that started when `lazy_seq` was `upto` succeeded: every lazy release
    /// up to it is covered.
    fn durable_upto(&mut self, upto: u64) {
        let mut any = false;
        while self.lazy.front().is_some_and(|(seq, _, _)| *seq <= upto) {
            let (_, epoch, slots) = self.lazy.pop_front().expect("front exists");
            self.deferred.push_back((epoch, slots));
            any = true;
        }
        if any {
            self.reclaim();
        }
    }

    /// Undo an `alloc` whose slots were never referenced.
    fn unalloc(&mut self, slots: Vec<u32>) {
        self.in_use -= slots.len() as u64;
        self.free.extend(slots);
    }
}

struct State {
    index: BTreeMap<ChunkId, Entry>,
    alloc: Allocator,
}

pub struct Engine<B: Backend> {
    backend: B,
    state: Mutex<State>,
    failpoint: Mutex<Option<Failpoint>>,
    sync: RecordSync,
}

/// Group commit for `persist_records`: record transactions are counted as they complete;
/// a durable commit covers every transaction counted before it began, so a caller whose
/// changes a durable commit already covers returns without one, and callers that queue behind
/// a durable commit in progress share the next one (one fsync for many concurrent updates
/// instead of one each).
#[derive(Default)]
struct RecordSync {
    /// Record transactions committed, counted in commit order: the lock is held across each
    /// commit (redb serialises write transactions anyway), so a durable one numbered `n` makes
    /// every one numbered up to `n` durable.
    txns: Mutex<u64>,
    /// `txns`, readable without waiting for a commit in progress.
    published: std::sync::atomic::AtomicU64,
    /// Every transaction numbered up to this is durable.
    durable: std::sync::atomic::AtomicU64,
    /// Serialises `persist_records`' own durable commits.
    lock: Mutex<()>,
    /// Durable record commits made (each one fsync of the record database).
    durable_commits: std::sync::atomic::AtomicU64,
    /// Blocks were written without a data sync (`stage_unsynced`) since the last one: the
    /// next durable record commit syncs the data first, so no durable record ever names a
    /// block that is not durable. Set after the blocks are written and before the record
    /// naming them is published; swapped under `txns`.
    data_dirty: std::sync::atomic::AtomicBool,
    /// A data sync failed. Pages whose write-back failed may be gone while a later
    /// `fdatasync` succeeds, so nothing is made durable any more: every durable commit fails
    /// until the target is reopened (and resynced).
    data_sync_failed: std::sync::atomic::AtomicBool,
    /// Data syncs made for durable record commits (not those made while staging).
    deferred_syncs: std::sync::atomic::AtomicU64,
}

static ZEROS: [u8; BLOCK_BYTES as usize] = [0; BLOCK_BYTES as usize];

const SB: u64 = SECTOR_BYTES as u64;

fn sectors_digest(sectors: &[u32], length: u32) -> u32 {
    super::digest_of(sectors.iter().enumerate().map(|(i, c)| {
        let start = i as u32 * SECTOR_BYTES;
        (*c, (length - start).min(SECTOR_BYTES))
    }))
}

/// How one block of the new version is produced.
enum Plan<'a> {
    Keep(BlockRef),
    Hole(u32),
    /// New block of `len` bytes: the old block `base` (if any) truncated/zero-extended, with
    /// `data` laid over it at `at`.
    Fresh {
        base: Option<BlockRef>,
        len: u32,
        at: u32,
        data: &'a [u8],
    },
}

/// How `publish` commits a record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Publish {
    /// Durable before it returns (and every earlier record change with it).
    Durable,
    /// Not durable (a pending version, which a crash may lose whole); freed slots are
    /// reusable at once (nothing durable that survives a crash can name them and be read).
    NotDurable,
    /// Not durable, and the durable records may still name the slots it frees (a committed
    /// version replaced by a lazy commit): those wait for the next durable commit.
    Lazy,
}

/// What `materialize` made: the new block list, its sector CRCs, and the slots it allocated.
type Materialized = (Vec<BlockRef>, Vec<u32>, Vec<u32>);

/// The payload of an update as `write_plans` sees it: its chunk offset and, when the caller
/// has them, the CRC32C of each of its sector pieces.
#[derive(Clone, Copy)]
struct Payload<'a> {
    offset: u64,
    crcs: Option<&'a [u32]>,
}

impl<B: Backend> Engine<B> {
    /// Opens a target: loads every chunk record and rebuilds the allocator from them, which
    /// reclaims the slots of updates interrupted before their metadata commit.
    pub fn open(backend: B) -> Result<Engine<B>, StoreError> {
        let recs = backend.load_meta()?;
        let mut index = BTreeMap::new();
        let mut used = HashSet::new();
        let bound = backend.slot_bound().map_err(StoreError::Io)?;
        for (id, rec) in recs {
            for v in rec.committed.iter().chain(rec.pending.iter()) {
                v.check().map_err(|why| {
                    StoreError::Internal(anyhow::anyhow!("bad record of chunk {id}: {why}"))
                })?;
            }
            let e = Entry {
                committed: rec.committed.map(Arc::new),
                pending: rec.pending.map(Arc::new),
            };
            for s in e.slots() {
                // A slot past the data file is a damaged record; refusing it here also keeps
                // the free list below (built over every slot under the highest) sized by the
                // data file rather than by a number read from disk.
                if u64::from(s) >= bound {
                    return Err(StoreError::Internal(anyhow::anyhow!(
                        "bad record of chunk {id}: slot {s} beyond the {bound} slots of the data file"
                    )));
                }
                // A slot shared by two chunks would mean a lost update or a bug; refuse to
                // open rather than serve one chunk's bytes as another's.
                if !used.insert(s) {
                    return Err(StoreError::Internal(anyhow::anyhow!(
                        "slot {s} referenced by more than one chunk (at {id})"
                    )));
                }
            }
            if !e.is_empty() {
                index.insert(id, e);
            }
        }
        let next = used.iter().max().map(|m| m + 1).unwrap_or(0);
        let free: Vec<u32> = (0..next).filter(|s| !used.contains(s)).collect();
        backend.release_from(next)?;
        let in_use = used.len() as u64;
        let capacity = backend.capacity_slots(in_use).min(SLOTS_PER_TARGET_MAX);
        let alloc = Allocator {
            next,
            free,
            deferred: VecDeque::new(),
            epoch: Arc::new(()),
            in_use,
            capacity,
            lazy: VecDeque::new(),
            lazy_seq: 0,
        };
        Ok(Engine {
            backend,
            state: Mutex::new(State { index, alloc }),
            failpoint: Mutex::new(None),
            sync: RecordSync::default(),
        })
    }

    /// Slots of the committed version's blocks (holes excluded), for tools and tests that
    /// need to find a chunk's bytes on disk.
    pub fn committed_slots(&self, chunk: ChunkId) -> Vec<u32> {
        let st = self.state.lock();
        st.index
            .get(&chunk)
            .and_then(|e| e.committed.as_ref())
            .map(|c| c.slots().collect())
            .unwrap_or_default()
    }

    /// Durable record commits made since open (each one fsync of the record database).
    pub fn durable_record_commits(&self) -> u64 {
        self.sync.durable_commits.load(Ordering::Relaxed)
    }

    /// Data syncs made by durable record commits for blocks staged without one.
    pub fn deferred_data_syncs(&self) -> u64 {
        self.sync.deferred_syncs.load(Ordering::Relaxed)
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Test hook: `f` returning true at a point makes the operation stop there with
    /// `StoreError::Crashed`, as if the process was killed (nothing after it runs).
    pub fn set_failpoint(&self, f: Option<Arc<dyn Fn(CrashPoint) -> bool + Send + Sync>>) {
        *self.failpoint.lock() = f;
    }

    fn crash(&self, p: CrashPoint) -> Result<(), StoreError> {
        let fp = self.failpoint.lock().clone();
        match fp {
            Some(f) if f(p) => Err(StoreError::Crashed(p)),
            _ => Ok(()),
        }
    }

    /// Snapshot of an entry plus a reader guard that keeps its slots from being reused.
    fn reader(&self, chunk: ChunkId) -> (Entry, Arc<()>) {
        let st = self.state.lock();
        (
            st.index.get(&chunk).cloned().unwrap_or_default(),
            st.alloc.epoch.clone(),
        )
    }

    fn eof_is_damage(chunk: ChunkId, block: u64) -> impl Fn(std::io::Error) -> StoreError {
        move |e| {
            // A block cut off by a truncated data file is damage like a bad CRC.
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StoreError::Checksum {
                    chunk,
                    block: block as u32,
                }
            } else {
                e.into()
            }
        }
    }

    /// Writes the planned blocks, syncs them, returns the new block list and sector CRCs. On
    /// error the allocated slots are returned to the allocator (except after an injected
    /// crash, where nothing runs any more, as in a killed process).
    /// `stage_with`; with `sync` false the new blocks are written but not synced (see
    /// `ChunkStore::stage_unsynced`).
    #[allow(clippy::too_many_arguments)]
    fn stage_inner(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        chain_version: ChainVersion,
        m: Mutation<'_>,
        origin: Option<(ClientId, RequestId)>,
        payload_crcs: Option<&[u32]>,
        sync: bool,
    ) -> Result<VersionInfo, StoreError> {
        // 1. plan against the committed version (holding a reader guard: we read its blocks).
        let (old, _guard) = self.reader(chunk);
        let base = old.committed.as_deref();
        let (base_blocks, base_len) = match base {
            Some(c) => (c.blocks.as_slice(), c.length),
            None => (&[][..], 0),
        };
        if let Mutation::Write { offset, data } = m
            && offset as u64 + data.len() as u64 > pond_proto::limits::CHUNK_BYTES_MAX as u64
        {
            return Err(StoreError::OutOfRange(format!(
                "write end {}",
                offset as u64 + data.len() as u64
            )));
        }
        let (plans, new_len) = Self::plan(base_blocks, base_len, m)?;
        let payload = match m {
            Mutation::Write { offset, data } => Some((offset as u64, data.len())),
            Mutation::Replace { data } => Some((0, data.len())),
            Mutation::Truncate { .. } => None,
        }
        .map(|(offset, n)| Payload {
            offset,
            // Used only if they describe this payload's pieces.
            crcs: payload_crcs.filter(|c| c.len() == crc::pieces(offset, n as u64).count()),
        });
        // 2. write (+ sync, unless deferred) the new blocks.
        let (blocks, sectors, fresh) = self.materialize(chunk, plans, base, payload, sync)?;
        let mut recent = base.map(|b| b.recent.clone()).unwrap_or_default();
        if let Some((c, r)) = origin {
            recent.retain(|a| (a.client, a.request) != (c.0, r.0));
            recent.push(Applied {
                client: c.0,
                request: r.0,
                version: version.0,
                length: new_len,
            });
            let extra = recent.len().saturating_sub(RECENT_UPDATES_MAX);
            recent.drain(..extra);
        }
        let rec = Self::version_rec(
            version,
            chain_version,
            (blocks, sectors),
            new_len,
            origin,
            recent,
        );
        let info = rec.info();
        // 3.+4. the pending version replaces any previous pending one.
        let new = Entry {
            committed: old.committed.clone(),
            pending: Some(Arc::new(rec)),
        };
        // Not durable yet: a pending version lost in a crash is allowed; `commit` (or
        // `persist_records`) is durable and makes this record durable with it.
        self.publish(chunk, &old, new, fresh, Publish::NotDurable)?;
        Ok(info)
    }

    /// `read_crc`; with `nowait`, `Ok(None)` instead of waiting for the disk.
    fn read_crc_inner(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        offset: u32,
        length: u32,
        nowait: bool,
    ) -> Result<Option<(Bytes, u32)>, StoreError> {
        let (entry, _guard) = self.reader(chunk);
        // Pending first: it only shares a number with the committed version while it replaces
        // a diverged copy, and then it is the content wanted.
        let v = [entry.pending.as_ref(), entry.committed.as_ref()]
            .into_iter()
            .flatten()
            .find(|v| v.version == version.0)
            .ok_or(StoreError::NoSuchVersion { chunk, version })?;
        let start = (offset as u64).min(v.length as u64);
        let end = (offset as u64 + length as u64).min(v.length as u64);
        if start == end {
            return Ok(Some((Bytes::new(), 0)));
        }
        let bb = BLOCK_BYTES as u64;
        // Only the sectors holding the range are read and verified.
        let (s0, s1) = (start / SB, (end - 1) / SB);
        let (rs, re) = (s0 * SB, ((s1 + 1) * SB).min(v.length as u64));
        let (b0, b1) = (rs / bb, (re - 1) / bb);
        let data = if b0 == b1 {
            let b = &v.blocks[b0 as usize];
            let at = (rs - b0 * bb) as usize;
            if b.slot == HOLE {
                Bytes::from_static(&ZEROS[at..at + (re - rs) as usize])
            } else if nowait {
                let seg = ReadSeg {
                    slot: b.slot,
                    at: at as u32,
                    len: (re - rs) as u32,
                    dst: 0,
                };
                match self
                    .backend
                    .read_segments_nowait(&[seg], (re - rs) as usize)
                    .map_err(Self::eof_is_damage(chunk, b0))?
                {
                    Some(d) => d,
                    None => return Ok(None),
                }
            } else {
                self.backend
                    .read_range(b.slot, at as u32, (re - rs) as u32)
                    .map_err(Self::eof_is_damage(chunk, b0))?
            }
        } else {
            // Spanning blocks: one buffer, every block's piece read into place (together,
            // where the backend can); holes stay zeros. The reply is a slice of it.
            let segs: Vec<ReadSeg> = (b0..=b1)
                .filter(|i| v.blocks[*i as usize].slot != HOLE)
                .map(|i| {
                    let b = &v.blocks[i as usize];
                    let lo = rs.max(i * bb);
                    let hi = re.min(i * bb + b.len as u64);
                    ReadSeg {
                        slot: b.slot,
                        at: (lo - i * bb) as u32,
                        len: (hi - lo) as u32,
                        dst: (lo - rs) as usize,
                    }
                })
                .collect();
            if nowait {
                match self
                    .backend
                    .read_segments_nowait(&segs, (re - rs) as usize)
                    .map_err(Self::eof_is_damage(chunk, b0))?
                {
                    Some(d) => d,
                    None => return Ok(None),
                }
            } else {
                self.backend
                    .read_segments(&segs, (re - rs) as usize)
                    .map_err(Self::eof_is_damage(chunk, b0))?
            }
        };
        if data.len() as u64 != re - rs {
            return Err(StoreError::Checksum {
                chunk,
                block: b0 as u32,
            });
        }
        let spb = SECTORS_PER_BLOCK as u64;
        let mut acc = 0;
        for s in s0..=s1 {
            let (ss, se) = (s * SB, ((s + 1) * SB).min(v.length as u64));
            let stored = v.sectors[s as usize];
            if v.blocks[(s / spb) as usize].slot != HOLE
                && crc32c::crc32c(&data[(ss - rs) as usize..(se - rs) as usize]) != stored
            {
                return Err(StoreError::Checksum {
                    chunk,
                    block: (s / spb) as u32,
                });
            }
            // The reply's CRC from the verified sector CRCs; only partial edge sectors are
            // checksummed again (at most two pieces under 4 KiB).
            let (ps, pe) = (ss.max(start), se.min(end));
            let c = if (ps, pe) == (ss, se) {
                stored
            } else {
                crc32c::crc32c(&data[(ps - rs) as usize..(pe - rs) as usize])
            };
            acc = crc::combine(acc, c, pe - ps);
        }
        Ok(Some((
            data.slice((start - rs) as usize..(end - rs) as usize),
            acc,
        )))
    }

    fn materialize(
        &self,
        chunk: ChunkId,
        plans: Vec<Plan<'_>>,
        base: Option<&VersionRec>,
        payload: Option<Payload<'_>>,
        sync: bool,
    ) -> Result<Materialized, StoreError> {
        let fresh = plans
            .iter()
            .filter(|p| matches!(p, Plan::Fresh { .. }))
            .count();
        let first = self.state.lock().alloc.alloc(fresh);
        let slots = match first {
            // Slots freed by lazy commits come back only after a durable commit: make one.
            Err(StoreError::NoSpace) if !self.state.lock().alloc.lazy.is_empty() => {
                self.persist_records()?;
                self.state.lock().alloc.alloc(fresh)?
            }
            r => r?,
        };
        let res = self.write_plans(chunk, plans, &slots, base, payload, sync);
        match res {
            Ok((blocks, sectors)) => Ok((blocks, sectors, slots)),
            Err(e) => {
                if !matches!(e, StoreError::Crashed(_)) {
                    self.state.lock().alloc.unalloc(slots);
                }
                Err(e)
            }
        }
    }

    fn write_plans(
        &self,
        chunk: ChunkId,
        plans: Vec<Plan<'_>>,
        slots: &[u32],
        base: Option<&VersionRec>,
        payload: Option<Payload<'_>>,
        sync: bool,
    ) -> Result<(Vec<BlockRef>, Vec<u32>), StoreError> {
        self.crash(CrashPoint::BeforeDataWrite)?;
        let mut out = Vec::with_capacity(plans.len());
        let mut sectors = Vec::with_capacity(plans.len() * SECTORS_PER_BLOCK as usize);
        let mut next_slot = slots.iter();
        // (slot, content) of every fresh block, written together once all are built.
        let mut writes: Vec<(u32, std::borrow::Cow<'_, [u8]>)> = Vec::with_capacity(slots.len());
        for (i, p) in plans.into_iter().enumerate() {
            match p {
                Plan::Keep(b) => {
                    let base = base.expect("kept blocks come from a base version");
                    sectors.extend_from_slice(base.block_sectors(i));
                    out.push(b);
                }
                Plan::Hole(len) => {
                    sectors.extend(
                        crc::pieces(0, len as u64).map(|(s, e)| crc::zeros((e - s) as u32)),
                    );
                    out.push(BlockRef { slot: HOLE, len });
                }
                Plan::Fresh {
                    base: bref,
                    len,
                    at,
                    data,
                } => {
                    let b_start = i as u64 * BLOCK_BYTES as u64;
                    let full = at == 0 && data.len() == len as usize;
                    let base_len = bref.filter(|_| !full).map(|b| b.len).unwrap_or(0);
                    let base_secs: &[u32] = match base {
                        Some(v) if base_len > 0 => v.block_sectors(i),
                        _ => &[],
                    };
                    // The old bytes this block keeps (never read when the write covers it).
                    let old = match bref {
                        Some(b) if base_len > 0 => {
                            let want = base_len.min(len.div_ceil(SECTOR_BYTES) * SECTOR_BYTES);
                            let o = self
                                .backend
                                .read_range(b.slot, 0, want)
                                .map_err(Self::eof_is_damage(chunk, i as u64))?;
                            if o.len() != want as usize {
                                return Err(StoreError::Checksum {
                                    chunk,
                                    block: i as u32,
                                });
                            }
                            o
                        }
                        _ => Bytes::new(),
                    };
                    let content: std::borrow::Cow<'_, [u8]> = if full {
                        data.into()
                    } else {
                        let mut buf = vec![0u8; len as usize];
                        let n = (base_len.min(len)) as usize;
                        buf[..n].copy_from_slice(&old[..n]);
                        buf[at as usize..at as usize + data.len()].copy_from_slice(data);
                        buf.into()
                    };
                    let (d_lo, d_hi) = (at as u64, at as u64 + data.len() as u64);
                    for (k, (ks, ke)) in crc::pieces(0, len as u64).enumerate() {
                        let covered = !data.is_empty() && d_lo <= ks && ke <= d_hi;
                        let touched = !data.is_empty() && d_lo < ke && d_hi > ks;
                        let bke = (ks + SB).min(base_len as u64);
                        let c = if covered {
                            match payload.and_then(|p| {
                                let idx = (b_start + ks) / SB - p.offset / SB;
                                p.crcs.and_then(|c| c.get(idx as usize).copied())
                            }) {
                                Some(c) => c,
                                None => crc32c::crc32c(&content[ks as usize..ke as usize]),
                            }
                        } else if !touched && bke == ke && base_len as u64 >= ke {
                            // Untouched and the same length as in the base: keep its CRC.
                            base_secs[k]
                        } else if !touched && base_len as u64 <= ks {
                            crc::zeros((ke - ks) as u32)
                        } else {
                            // Partly overwritten or resized: check the old part first, so
                            // damage is never sealed under a fresh CRC.
                            if base_len as u64 > ks
                                && crc32c::crc32c(&old[ks as usize..bke as usize]) != base_secs[k]
                            {
                                return Err(StoreError::Checksum {
                                    chunk,
                                    block: i as u32,
                                });
                            }
                            crc32c::crc32c(&content[ks as usize..ke as usize])
                        };
                        sectors.push(c);
                    }
                    let slot = *next_slot.next().expect("one slot per fresh block");
                    writes.push((slot, content));
                    out.push(BlockRef { slot, len });
                }
            }
        }
        let writes: Vec<(u32, &[u8])> = writes.iter().map(|(s, c)| (*s, &c[..])).collect();
        if self.failpoint.lock().is_none() {
            // All blocks in one request and the data sync right behind them.
            if !writes.is_empty() {
                self.backend.write_blocks(&writes, sync)?;
            }
        } else {
            // With a failpoint set, in steps, so a crash can land between them: half of the
            // blocks (a torn write), the rest, the sync.
            let half = writes.len() / 2;
            self.backend.write_blocks(&writes[..half], false)?;
            if half > 0 {
                self.crash(CrashPoint::MidDataWrite)?;
            }
            self.backend.write_blocks(&writes[half..], false)?;
            self.crash(CrashPoint::AfterDataWrite)?;
            if !writes.is_empty() && sync {
                self.backend.sync_data()?;
            }
            self.crash(CrashPoint::AfterDataSync)?;
        }
        if !sync && !writes.is_empty() {
            self.sync.data_dirty.store(true, Ordering::SeqCst);
        }
        Ok((out, sectors))
    }

    /// Plans `m` over `base` (the committed block list).
    fn plan<'a>(
        base: &[BlockRef],
        base_len: u32,
        m: Mutation<'a>,
    ) -> Result<(Vec<Plan<'a>>, u32), StoreError> {
        let bb = BLOCK_BYTES as u64;
        let (new_len, w_off, data): (u64, u64, &[u8]) = match m {
            Mutation::Write { offset, data } => (
                (base_len as u64).max(offset as u64 + data.len() as u64),
                offset as u64,
                data,
            ),
            Mutation::Replace { data } => (data.len() as u64, 0, data),
            Mutation::Truncate { length } => (length as u64, 0, &[][..]),
        };
        if new_len > pond_proto::limits::CHUNK_BYTES_MAX as u64 {
            return Err(StoreError::OutOfRange(format!("chunk length {new_len}")));
        }
        let replace = matches!(m, Mutation::Replace { .. });
        let w_end = w_off + data.len() as u64;
        let nblocks = new_len.div_ceil(bb);
        let mut plans = Vec::with_capacity(nblocks as usize);
        for i in 0..nblocks {
            let (b_start, b_end) = (i * bb, ((i + 1) * bb).min(new_len));
            let len = (b_end - b_start) as u32;
            let old = if replace {
                None
            } else {
                base.get(i as usize).copied()
            };
            let touched = !data.is_empty() && w_off < b_end && w_end > b_start;
            if touched {
                let from = w_off.max(b_start);
                let to = w_end.min(b_end);
                // A block the write covers whole is not read: nothing of it survives.
                let whole = from == b_start && to == b_end;
                plans.push(Plan::Fresh {
                    base: old.filter(|b| b.slot != HOLE && !whole),
                    len,
                    at: (from - b_start) as u32,
                    data: &data[(from - w_off) as usize..(to - w_off) as usize],
                });
                continue;
            }
            match old {
                Some(b) if b.len == len => plans.push(Plan::Keep(b)),
                // Length changed (truncate cut it, or it was the short last block and the
                // chunk grew): rewrite it, unless it is a hole.
                Some(b) if b.slot == HOLE => plans.push(Plan::Hole(len)),
                Some(b) => plans.push(Plan::Fresh {
                    base: Some(b),
                    len,
                    at: 0,
                    data: &[],
                }),
                None => plans.push(Plan::Hole(len)),
            }
        }
        Ok((plans, new_len as u32))
    }

    /// One record transaction, numbered in commit order (see `RecordSync`).
    fn commit_records(
        &self,
        batch: &[(ChunkId, Option<ChunkRec>)],
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut n = self.sync.txns.lock();
        if durable {
            if self.sync.data_sync_failed.load(Ordering::SeqCst) {
                return Err(StoreError::Io(std::io::Error::other(
                    "an earlier data sync failed; nothing more is made durable on this target",
                )));
            }
            if self.sync.data_dirty.swap(false, Ordering::SeqCst) {
                self.sync.deferred_syncs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.backend.sync_data() {
                    self.sync.data_sync_failed.store(true, Ordering::SeqCst);
                    return Err(StoreError::Io(e));
                }
            }
        }
        self.backend.commit_meta(batch, durable)?;
        *n += 1;
        self.sync.published.store(*n, Ordering::SeqCst);
        if durable {
            self.sync.durable.fetch_max(*n, Ordering::SeqCst);
            self.sync.durable_commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Persists `new` for `chunk` and swaps it into the index; frees what `old` referenced and
    /// `new` does not. `fresh` are the slots allocated for this update (freed on failure).
    fn publish(
        &self,
        chunk: ChunkId,
        old: &Entry,
        new: Entry,
        fresh: Vec<u32>,
        how: Publish,
    ) -> Result<(), StoreError> {
        let rec = if new.is_empty() {
            None
        } else {
            Some(new.rec())
        };
        let durable = how == Publish::Durable;
        let upto = self.state.lock().alloc.lazy_seq;
        if let Err(e) = self.commit_records(&[(chunk, rec)], durable) {
            self.state.lock().alloc.unalloc(fresh);
            return Err(e);
        }
        self.crash(CrashPoint::AfterMetaCommit)?;
        let keep = new.slots();
        let dead: Vec<u32> = old
            .slots()
            .into_iter()
            .filter(|s| !keep.contains(s))
            .collect();
        let mut st = self.state.lock();
        if new.is_empty() {
            st.index.remove(&chunk);
        } else {
            st.index.insert(chunk, new);
        }
        match how {
            Publish::Lazy => st.alloc.release_lazy(dead),
            Publish::Durable => {
                st.alloc.durable_upto(upto);
                st.alloc.release(dead);
            }
            Publish::NotDurable => st.alloc.release(dead),
        }
        Ok(())
    }

    /// Makes pending `version` the committed one (see `ChunkStore::commit`/`commit_lazy`).
    fn commit_as(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        how: Publish,
    ) -> Result<VersionInfo, StoreError> {
        let (old, _guard) = self.reader(chunk);
        // A pending version with this number wins over a committed one with the same number
        // (a full replace that corrects a diverged copy during resync).
        let Some(p) = old.pending.clone().filter(|p| p.version == version.0) else {
            return match &old.committed {
                Some(c) if c.version == version.0 => Ok(c.info()),
                _ => Err(StoreError::NoSuchVersion { chunk, version }),
            };
        };
        let info = p.info();
        let new = Entry {
            committed: Some(p),
            pending: None,
        };
        self.publish(chunk, &old, new, Vec::new(), how)?;
        Ok(info)
    }

    fn version_rec(
        version: ChunkVersion,
        chain_version: ChainVersion,
        (blocks, sectors): (Vec<BlockRef>, Vec<u32>),
        length: u32,
        origin: Option<(ClientId, RequestId)>,
        recent: Vec<Applied>,
    ) -> VersionRec {
        VersionRec {
            version: version.0,
            chain_version: chain_version.0,
            length,
            crc: sectors_digest(&sectors, length),
            origin: origin.map(|(c, r)| (c.0, r.0)),
            blocks,
            sectors,
            recent,
        }
    }
}

impl<B: Backend> ChunkStore for Engine<B> {
    fn blocking(&self) -> bool {
        self.backend.blocking()
    }

    fn info(&self, chunk: ChunkId) -> Option<ChunkInfo> {
        self.state.lock().index.get(&chunk).map(|e| e.info())
    }

    fn read(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        offset: u32,
        length: u32,
    ) -> Result<Bytes, StoreError> {
        self.read_crc(chunk, version, offset, length)
            .map(|(b, _)| b)
    }

    fn read_crc(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        offset: u32,
        length: u32,
    ) -> Result<(Bytes, u32), StoreError> {
        self.read_crc_inner(chunk, version, offset, length, false)
            .map(|o| o.expect("a waiting read always returns data"))
    }

    fn read_crc_nowait(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        offset: u32,
        length: u32,
    ) -> Option<Result<(Bytes, u32), StoreError>> {
        self.read_crc_inner(chunk, version, offset, length, true)
            .transpose()
    }

    fn stage(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        chain_version: ChainVersion,
        m: Mutation<'_>,
        origin: Option<(ClientId, RequestId)>,
    ) -> Result<VersionInfo, StoreError> {
        self.stage_with(chunk, version, chain_version, m, origin, None)
    }

    fn stage_with(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        chain_version: ChainVersion,
        m: Mutation<'_>,
        origin: Option<(ClientId, RequestId)>,
        payload_crcs: Option<&[u32]>,
    ) -> Result<VersionInfo, StoreError> {
        self.stage_inner(chunk, version, chain_version, m, origin, payload_crcs, true)
    }

    fn failed(&self) -> bool {
        self.sync.data_sync_failed.load(Ordering::SeqCst)
    }

    fn stage_unsynced(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        chain_version: ChainVersion,
        m: Mutation<'_>,
        origin: Option<(ClientId, RequestId)>,
        payload_crcs: Option<&[u32]>,
    ) -> Result<VersionInfo, StoreError> {
        self.stage_inner(
            chunk,
            version,
            chain_version,
            m,
            origin,
            payload_crcs,
            false,
        )
    }

    fn applied(
        &self,
        chunk: ChunkId,
        client: ClientId,
        request: RequestId,
    ) -> Option<(ChunkVersion, u32)> {
        let st = self.state.lock();
        let c = st.index.get(&chunk)?.committed.as_ref()?;
        c.recent
            .iter()
            .rev()
            .find(|a| (a.client, a.request) == (client.0, request.0))
            .map(|a| (ChunkVersion(a.version), a.length))
    }

    fn commit(&self, chunk: ChunkId, version: ChunkVersion) -> Result<VersionInfo, StoreError> {
        self.commit_as(chunk, version, Publish::Durable)
    }

    fn commit_lazy(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
    ) -> Result<VersionInfo, StoreError> {
        self.commit_as(chunk, version, Publish::Lazy)
    }

    fn persist_records(&self) -> Result<(), StoreError> {
        let want = self.sync.published.load(Ordering::SeqCst);
        if self.sync.durable.load(Ordering::SeqCst) >= want {
            return Ok(());
        }
        let _one = self.sync.lock.lock();
        // A durable commit that began after our changes may have finished while we waited.
        if self.sync.durable.load(Ordering::SeqCst) >= want {
            return Ok(());
        }
        let upto = self.state.lock().alloc.lazy_seq;
        self.commit_records(&[], true)?;
        self.state.lock().alloc.durable_upto(upto);
        Ok(())
    }

    fn abort(&self, chunk: ChunkId, version: ChunkVersion) -> Result<(), StoreError> {
        let (old, _guard) = self.reader(chunk);
        if old.pending.as_ref().is_none_or(|p| p.version != version.0) {
            return Ok(());
        }
        let new = Entry {
            committed: old.committed.clone(),
            pending: None,
        };
        self.publish(chunk, &old, new, Vec::new(), Publish::NotDurable)
    }

    fn install(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        chain_version: ChainVersion,
        data: &[u8],
    ) -> Result<VersionInfo, StoreError> {
        let (old, _guard) = self.reader(chunk);
        let (plans, len) = Self::plan(&[], 0, Mutation::Replace { data })?;
        let payload = Payload {
            offset: 0,
            crcs: None,
        };
        let (blocks, sectors, fresh) = self.materialize(chunk, plans, None, Some(payload), true)?;
        let rec = Self::version_rec(
            version,
            chain_version,
            (blocks, sectors),
            len,
            None,
            Vec::new(),
        );
        let info = rec.info();
        self.publish(
            chunk,
            &old,
            Entry {
                committed: Some(Arc::new(rec)),
                pending: None,
            },
            fresh,
            Publish::Durable,
        )?;
        Ok(info)
    }

    fn remove(&self, chunk: ChunkId) -> Result<bool, StoreError> {
        let (old, _guard) = self.reader(chunk);
        if old.is_empty() {
            return Ok(false);
        }
        self.publish(chunk, &old, Entry::default(), Vec::new(), Publish::Durable)?;
        Ok(true)
    }

    fn list(
        &self,
        from: Bound<ChunkId>,
        to: Bound<ChunkId>,
        limit: usize,
    ) -> Vec<(ChunkId, ChunkInfo)> {
        let st = self.state.lock();
        st.index
            .range((from, to))
            .take(limit)
            .map(|(k, e)| (*k, e.info()))
            .collect()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn space(&self) -> Space {
        let mut st = self.state.lock();
        st.alloc.reclaim();
        Space {
            used_bytes: st.alloc.in_use * BLOCK_BYTES as u64,
            capacity_bytes: st.alloc.capacity * BLOCK_BYTES as u64,
        }
    }
}
