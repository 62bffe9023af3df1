//! The production backend: one preallocated-on-demand data file of 64 KiB slots per target
//! (`blocks.dat`) and the chunk records in redb (`chunks.redb`), with a format marker.
//!
//! Data I/O goes through the target's io_uring thread (`uring::Ring`), with O_DIRECT for the
//! operation classes where it measured faster (`IoOptions`, docs/storage.md "io_uring
//! backend"); where io_uring cannot be set up at run time (EPERM/ENOSYS, e.g.
//! `kernel.io_uring_disabled`), or when `POND_STORAGE_IO=sync` forces it, positional
//! `pread`/`pwrite` + `fdatasync` on the caller's blocking thread. The choice is made once at
//! open and logged.

use super::StoreError;
use super::engine::{Backend, ChunkRec, ReadSeg};
use super::uring::{AlignedBuf, DIRECT_ALIGN, Dir, Op, Ring};
use crate::limits::BLOCK_BYTES;
use bytes::Bytes;
use pond_proto::ChunkId;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunks");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// On-disk format marker, checked on open. A future layout gets a new marker and a migration.
pub const FORMAT: &[u8] = b"pond-chunk-engine/2";
/// The previous format (one CRC per 64 KiB block, no remembered updates). Not migrated: such a
/// target is refused with advice; emptying it lets resync refill it from its chain.
const FORMAT_V1: &[u8] = b"pond-chunk-engine/1";
/// First byte of every chunk record value: the record encoding version.
const REC_V2: u8 = 2;

/// How a target does its data I/O. `from_env` reads `POND_STORAGE_IO` and
/// `POND_STORAGE_DIRECT`; tests build it directly.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IoOptions {
    /// Try io_uring (falls back to `pread`/`pwrite` if it cannot be set up); `false` forces
    /// the `pread`/`pwrite` path.
    pub uring: bool,
    /// Block writes with O_DIRECT (from an aligned copy of the block), then `fdatasync`.
    pub direct_writes: bool,
    /// Reads first take what the page cache holds, on the caller's thread (`preadv2` with
    /// `RWF_NOWAIT`, which never waits for the disk); only the missing part goes to the ring.
    pub cache_first: bool,
    /// With `cache_first`, the part the page cache misses is also read on the caller's
    /// (blocking) thread with `pread`, buffered, instead of going to the ring: each ring read
    /// was a hop to the ring thread and back, and small reads measured 10–30 % slower than
    /// `pread` end to end (docs/storage.md section 7). Ignored when O_DIRECT reads apply (they
    /// stay on the ring). Writes always use the ring.
    pub pread_misses: bool,
    /// Reads (their part that goes to the ring) of at least this many bytes with O_DIRECT into
    /// an aligned buffer (`None`: all reads buffered, through the page cache).
    pub direct_reads_from: Option<u32>,
}

impl Default for IoOptions {
    /// The measured choice (docs/storage.md "io_uring backend").
    fn default() -> IoOptions {
        IoOptions {
            uring: true,
            direct_writes: false,
            cache_first: true,
            pread_misses: true,
            direct_reads_from: None,
        }
    }
}

impl IoOptions {
    /// Environment variable choosing the I/O path: `uring` (default) or `sync`.
    pub const ENV_IO: &str = "POND_STORAGE_IO";
    /// Environment variable choosing O_DIRECT per operation class: `default` (= `none`),
    /// `none`, `writes`, `reads` (every read that misses the page cache), `all`;
    /// comma-separated (`writes,reads`). `ring-reads` in the list sends every read to the ring
    /// instead of trying the page cache first; `ring-misses` sends what the page cache misses
    /// to the ring (the default reads it with `pread` on the caller's thread).
    /// instead of trying the page cache first.
    pub const ENV_DIRECT: &str = "POND_STORAGE_DIRECT";

    pub fn from_env() -> Result<IoOptions, String> {
        IoOptions::parse(
            std::env::var(Self::ENV_IO).ok().as_deref(),
            std::env::var(Self::ENV_DIRECT).ok().as_deref(),
        )
    }

    pub fn parse(io: Option<&str>, direct: Option<&str>) -> Result<IoOptions, String> {
        let mut o = IoOptions::default();
        match io.map(str::trim).unwrap_or("") {
            "" | "uring" | "io_uring" => o.uring = true,
            "sync" | "pread" => o.uring = false,
            other => return Err(format!("{}={other:?}: want uring or sync", Self::ENV_IO)),
        }
        let d = direct.map(str::trim).unwrap_or("");
        if !matches!(d, "" | "default") {
            o.direct_writes = false;
            o.direct_reads_from = None;
            for w in d.split(',').map(str::trim) {
                match w {
                    "none" => {}
                    "ring-reads" => {
                        o.cache_first = false;
                        o.pread_misses = false;
                    }
                    "ring-misses" => o.pread_misses = false,
                    "writes" => o.direct_writes = true,
                    "reads" => o.direct_reads_from = Some(0),
                    "all" => {
                        o.direct_writes = true;
                        o.direct_reads_from = Some(0);
                    }
                    other => {
                        return Err(format!(
                            "{}={other:?}: want default, none, writes, reads, all, ring-reads, ring-misses",
                            Self::ENV_DIRECT
                        ));
                    }
                }
            }
        }
        Ok(o)
    }
}

/// The data path chosen at open.
enum DataIo {
    /// `pread`/`pwrite` + `fdatasync` on the caller's thread.
    Sync,
    Uring {
        ring: Ring,
        /// `blocks.dat` opened with O_DIRECT, when some class uses it and the filesystem
        /// supports it.
        direct: Option<File>,
    },
}

/// Counts of read requests by the path that served them (since open).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReadPaths {
    /// Wholly from the page cache on the caller's thread.
    pub cached: u64,
    /// (Partly) through the ring, buffered.
    pub ring_buffered: u64,
    /// (Partly) through the ring with O_DIRECT.
    pub ring_direct: u64,
    /// (Partly) with `pread` on the caller's thread after a page-cache miss.
    pub pread: u64,
}

pub struct FileBackend {
    read_paths: [std::sync::atomic::AtomicU64; 4],
    dir: PathBuf,
    data: File,
    db: Database,
    capacity_bytes: Option<u64>,
    io: DataIo,
    opts: IoOptions,
}

fn internal(e: impl std::fmt::Display, what: &str) -> StoreError {
    StoreError::Internal(anyhow::anyhow!("{what}: {e}"))
}

impl FileBackend {
    /// Opens (creating if needed) the target directory `dir`, with the I/O options of the
    /// environment (`IoOptions::from_env`).
    pub fn open(dir: &Path, capacity_bytes: Option<u64>) -> Result<FileBackend, StoreError> {
        let opts = IoOptions::from_env().map_err(|e| internal(e, "storage I/O options"))?;
        FileBackend::open_with(dir, capacity_bytes, opts)
    }

    /// Opens (creating if needed) the target directory `dir` with the given I/O options.
    pub fn open_with(
        dir: &Path,
        capacity_bytes: Option<u64>,
        opts: IoOptions,
    ) -> Result<FileBackend, StoreError> {
        std::fs::create_dir_all(dir)?;
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("blocks.dat"))?;
        let db = Database::create(dir.join("chunks.redb"))
            .map_err(|e| internal(e, "open chunks.redb"))?;
        let txn = db.begin_write().map_err(|e| internal(e, "begin"))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| internal(e, "open meta table"))?;
            let existing = meta
                .get("format")
                .map_err(|e| internal(e, "read format"))?
                .map(|v| v.value().to_vec());
            match existing {
                Some(f) if f == FORMAT => {}
                Some(f) if f == FORMAT_V1 => {
                    return Err(internal(
                        "it was written by an older pond (pond-chunk-engine/1, one CRC per \
                         64 KiB block); this version keeps 4 KiB sector CRCs and does not \
                         migrate: empty the target directory and let resync refill it from \
                         its chain",
                        "old chunk engine format",
                    ));
                }
                Some(f) => {
                    return Err(internal(
                        String::from_utf8_lossy(&f),
                        "unknown chunk engine format",
                    ));
                }
                None => {
                    meta.insert("format", FORMAT)
                        .map_err(|e| internal(e, "write format"))?;
                }
            }
            txn.open_table(CHUNKS)
                .map_err(|e| internal(e, "open chunks table"))?;
        }
        txn.commit().map_err(|e| internal(e, "commit format"))?;
        let (io, opts) = Self::choose_io(dir, opts);
        Ok(FileBackend {
            read_paths: Default::default(),
            dir: dir.to_path_buf(),
            data,
            db,
            capacity_bytes,
            io,
            opts,
        })
    }

    /// Sets up io_uring (and the O_DIRECT descriptor) if asked and possible; logs the choice.
    fn choose_io(dir: &Path, mut opts: IoOptions) -> (DataIo, IoOptions) {
        let sync_opts = IoOptions {
            uring: false,
            direct_writes: false,
            cache_first: false,
            pread_misses: false,
            direct_reads_from: None,
        };
        if !opts.uring {
            tracing::info!(dir = %dir.display(), "chunk engine data I/O: pread/pwrite ({}=sync)", IoOptions::ENV_IO);
            return (DataIo::Sync, sync_opts);
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ring = match Ring::new(&name) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "chunk engine data I/O: io_uring unavailable (io_uring_setup failed; \
                     kernel.io_uring_disabled?), falling back to pread/pwrite"
                );
                return (DataIo::Sync, sync_opts);
            }
        };
        let direct = if opts.direct_writes || opts.direct_reads_from.is_some() {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(dir.join("blocks.dat"))
            {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "O_DIRECT not supported here; buffered I/O only");
                    opts.direct_writes = false;
                    opts.direct_reads_from = None;
                    None
                }
            }
        } else {
            None
        };
        tracing::info!(
            dir = %dir.display(),
            direct_writes = opts.direct_writes,
            direct_reads_from = ?opts.direct_reads_from,
            "chunk engine data I/O: io_uring"
        );
        (DataIo::Uring { ring, direct }, opts)
    }

    /// Which paths served reads so far (io_uring backend; the `pread` path counts nothing).
    pub fn read_paths(&self) -> ReadPaths {
        let n = |i: usize| self.read_paths[i].load(std::sync::atomic::Ordering::Relaxed);
        ReadPaths {
            cached: n(0),
            ring_buffered: n(1),
            ring_direct: n(2),
            pread: n(3),
        }
    }

    fn count_read(&self, path: usize) {
        self.read_paths[path].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The I/O options in effect (after any fallback): `uring` is false on the
    /// `pread`/`pwrite` path.
    pub fn io_options(&self) -> IoOptions {
        self.opts
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_path(&self) -> PathBuf {
        self.dir.join("blocks.dat")
    }

    /// Byte offset of a slot in `blocks.dat`.
    pub fn slot_offset(slot: u32) -> u64 {
        slot as u64 * BLOCK_BYTES as u64
    }
}

impl Backend for FileBackend {
    fn blocking(&self) -> bool {
        true
    }

    fn write_block(&self, slot: u32, data: &[u8]) -> std::io::Result<()> {
        self.write_blocks(&[(slot, data)], false)
    }

    fn write_blocks(&self, blocks: &[(u32, &[u8])], sync: bool) -> std::io::Result<()> {
        let DataIo::Uring { ring, direct } = &self.io else {
            for (slot, data) in blocks {
                self.data.write_all_at(data, Self::slot_offset(*slot))?;
            }
            if sync {
                self.data.sync_data()?;
            }
            return Ok(());
        };
        // O_DIRECT: an aligned, zero-padded copy per block (slots are 64 KiB aligned, so
        // offsets are too; the padding past a short last block stays inside its slot).
        let mut copies = Vec::new();
        let ops: Vec<Op> = match direct.as_ref().filter(|_| self.opts.direct_writes) {
            Some(df) => {
                copies.extend(blocks.iter().map(|(_, d)| AlignedBuf::copy_padded(d)));
                blocks
                    .iter()
                    .zip(copies.iter_mut())
                    .map(|((slot, _), b)| Op {
                        dir: Dir::Write,
                        fd: df.as_raw_fd(),
                        len: b.room() as u32,
                        need: b.room() as u32,
                        buf: b.as_mut_ptr(),
                        offset: Self::slot_offset(*slot),
                    })
                    .collect()
            }
            None => blocks
                .iter()
                .map(|(slot, d)| Op {
                    dir: Dir::Write,
                    fd: self.data.as_raw_fd(),
                    buf: d.as_ptr() as *mut u8,
                    len: d.len() as u32,
                    need: d.len() as u32,
                    offset: Self::slot_offset(*slot),
                })
                .collect(),
        };
        // SAFETY: `blocks` and `copies` outlive the call; writes only read their buffers;
        // the descriptors live as long as `self`.
        unsafe { ring.run(ops, sync.then(|| self.data.as_raw_fd())) }
    }

    fn read_range(&self, slot: u32, at: u32, len: u32) -> std::io::Result<Bytes> {
        let seg = ReadSeg {
            slot,
            at,
            len,
            dst: 0,
        };
        self.read_segments(&[seg], len as usize)
    }

    fn read_into(&self, slot: u32, at: u32, buf: &mut [u8]) -> std::io::Result<()> {
        let off = Self::slot_offset(slot) + at as u64;
        match &self.io {
            DataIo::Sync => self.data.read_exact_at(buf, off),
            DataIo::Uring { ring, .. } => {
                let op = Op {
                    dir: Dir::Read,
                    fd: self.data.as_raw_fd(),
                    buf: buf.as_mut_ptr(),
                    len: buf.len() as u32,
                    need: buf.len() as u32,
                    offset: off,
                };
                // SAFETY: `buf` is exclusively borrowed for the call.
                unsafe { ring.run(vec![op], None) }
            }
        }
    }

    fn read_segments_nowait(
        &self,
        segs: &[ReadSeg],
        total: usize,
    ) -> std::io::Result<Option<Bytes>> {
        // Only where reads use the page cache (not the O_DIRECT-read setups). A kernel
        // without `RWF_NOWAIT` answers every such read short, which sends it to `read_segments`.
        if self.opts.direct_reads_from.is_some() {
            return Ok(None);
        }
        let merged = coalesce(segs);
        let mut buf = AlignedBuf::for_overwrite(total);
        let mut filled = Vec::with_capacity(merged.len());
        for s in &merged {
            let off = Self::slot_offset(s.slot) + s.at as u64;
            let dst = &mut buf.room_mut()[s.dst..s.dst + s.len as usize];
            if cached_read(&self.data, dst, off) < s.len as usize {
                return Ok(None);
            }
            filled.push((s.dst, s.dst + s.len as usize));
        }
        self.count_read(0);
        buf.zero_outside(&mut filled);
        Ok(Some(Bytes::from_owner(buf)))
    }

    fn read_segments(&self, segs: &[ReadSeg], total: usize) -> std::io::Result<Bytes> {
        // Blocks of a chunk written in order usually sit in consecutive slots: one read each
        // run instead of one per 64 KiB block (fewer syscalls, and one disk request per run).
        let merged = coalesce(segs);
        let segs = &merged[..];
        let DataIo::Uring { ring, direct } = &self.io else {
            let mut out = vec![0u8; total];
            for s in segs {
                self.data.read_exact_at(
                    &mut out[s.dst..s.dst + s.len as usize],
                    Self::slot_offset(s.slot) + s.at as u64,
                )?;
            }
            return Ok(Bytes::from(out));
        };
        // A reused buffer: what no segment fills (holes between them) is zeroed once the
        // reads are done (after them: an O_DIRECT read may write past its segment's end).
        let mut buf = AlignedBuf::for_overwrite(total);
        let mut filled: Vec<(usize, usize)> = segs
            .iter()
            .map(|s| (s.dst, s.dst + s.len as usize))
            .collect();
        let mut missing = Vec::new();
        let segs = if self.opts.cache_first {
            // What the page cache holds is copied on this thread, without a hop to the ring
            // (a ring thread copying warm data for 8 callers measured 3x slower than the
            // callers doing it); the rest, from the first byte not cached on, goes to the ring.
            for s in segs {
                let off = Self::slot_offset(s.slot) + s.at as u64;
                let dst = &mut buf.room_mut()[s.dst..s.dst + s.len as usize];
                let got = cached_read(&self.data, dst, off);
                if got < s.len as usize {
                    missing.push(ReadSeg {
                        slot: s.slot,
                        at: s.at + got as u32,
                        len: s.len - got as u32,
                        dst: s.dst + got,
                    });
                }
            }
            if missing.is_empty() {
                self.count_read(0);
                buf.zero_outside(&mut filled);
                return Ok(Bytes::from_owner(buf));
            }
            if self.opts.pread_misses && self.opts.direct_reads_from.is_none() {
                self.count_read(3);
                for s in &missing {
                    let off = Self::slot_offset(s.slot) + s.at as u64;
                    let dst = &mut buf.room_mut()[s.dst..s.dst + s.len as usize];
                    self.data.read_exact_at(dst, off)?;
                }
                buf.zero_outside(&mut filled);
                return Ok(Bytes::from_owner(buf));
            }
            &missing[..]
        } else {
            segs
        };
        let a = DIRECT_ALIGN as u64;
        let ring_bytes: u64 = segs.iter().map(|s| s.len as u64).sum();
        // O_DIRECT needs aligned file offsets and buffer positions; lengths are rounded up
        // (the room of the buffer is whole 4 KiB units). Only the last segment may end off a
        // 4 KiB boundary (the chunk's end), so rounding never overlaps the next segment.
        let direct_fd = direct.as_ref().filter(|_| {
            self.opts
                .direct_reads_from
                .is_some_and(|m| ring_bytes >= m as u64)
                && segs.iter().enumerate().all(|(i, s)| {
                    (s.at as u64).is_multiple_of(a)
                        && (s.dst as u64).is_multiple_of(a)
                        && (i + 1 == segs.len() || (s.len as u64).is_multiple_of(a))
                })
        });
        self.count_read(if direct_fd.is_some() { 2 } else { 1 });
        let room = buf.room();
        let base = buf.as_mut_ptr();
        let ops = segs
            .iter()
            .map(|s| {
                let (fd, len) = match direct_fd {
                    Some(f) => (
                        f.as_raw_fd(),
                        (s.len as usize).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN,
                    ),
                    None => (self.data.as_raw_fd(), s.len as usize),
                };
                assert!(s.dst + len <= room, "read segment outside its buffer");
                Op {
                    dir: Dir::Read,
                    fd,
                    // In bounds: checked just above.
                    buf: base.wrapping_add(s.dst),
                    len: len as u32,
                    need: s.len,
                    offset: Self::slot_offset(s.slot) + s.at as u64,
                }
            })
            .collect();
        // SAFETY: `buf` is owned here and outlives the call; the segments do not overlap.
        unsafe { ring.run(ops, None) }?;
        buf.zero_outside(&mut filled);
        Ok(Bytes::from_owner(buf))
    }

    fn sync_data(&self) -> std::io::Result<()> {
        match &self.io {
            DataIo::Sync => self.data.sync_data(),
            // SAFETY: no buffers; the descriptor lives as long as `self`.
            DataIo::Uring { ring, .. } => unsafe {
                ring.run(Vec::new(), Some(self.data.as_raw_fd()))
            },
        }
    }

    fn commit_meta(
        &self,
        batch: &[(ChunkId, Option<ChunkRec>)],
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| internal(e, "begin"))?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| internal(e, "set durability"))?;
        {
            let mut t = txn
                .open_table(CHUNKS)
                .map_err(|e| internal(e, "open chunks"))?;
            for (id, rec) in batch {
                match rec {
                    Some(r) => {
                        let mut v = vec![REC_V2];
                        v.extend(
                            postcard::to_stdvec(r)
                                .map_err(|e| internal(e, "encode chunk record"))?,
                        );
                        t.insert(&id.0[..], &v[..])
                            .map_err(|e| internal(e, "put chunk"))?;
                    }
                    None => {
                        t.remove(&id.0[..])
                            .map_err(|e| internal(e, "delete chunk"))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| match e {
            redb::CommitError::Storage(redb::StorageError::Io(io)) => StoreError::Io(io),
            e => internal(e, "commit chunk records"),
        })
    }

    fn load_meta(&self) -> Result<Vec<(ChunkId, ChunkRec)>, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| internal(e, "begin read"))?;
        let t = txn
            .open_table(CHUNKS)
            .map_err(|e| internal(e, "open chunks"))?;
        let mut out = Vec::new();
        for item in t
            .range::<&[u8]>(..)
            .map_err(|e| internal(e, "scan chunks"))?
        {
            let (k, v) = item.map_err(|e| internal(e, "scan chunks"))?;
            let key: [u8; 16] = k
                .value()
                .try_into()
                .map_err(|_| internal("bad key length", "chunk key"))?;
            let v = v.value();
            if v.first() != Some(&REC_V2) {
                return Err(internal(
                    format!("{:?}", v.first()),
                    "unknown chunk record version",
                ));
            }
            let rec: ChunkRec =
                postcard::from_bytes(&v[1..]).map_err(|e| internal(e, "decode chunk record"))?;
            out.push((ChunkId(key), rec));
        }
        Ok(out)
    }

    fn capacity_slots(&self, used: u64) -> u64 {
        let bytes = match self.capacity_bytes {
            Some(c) => c,
            None => free_bytes(&self.dir).unwrap_or(0) + used * BLOCK_BYTES as u64,
        };
        bytes / BLOCK_BYTES as u64
    }

    fn slot_bound(&self) -> std::io::Result<u64> {
        Ok(self.data.metadata()?.len().div_ceil(BLOCK_BYTES as u64))
    }

    fn release_from(&self, first: u32) -> std::io::Result<()> {
        let end = Self::slot_offset(first);
        if self.data.metadata()?.len() > end {
            self.data.set_len(end)?;
            self.data.sync_all()?;
        }
        Ok(())
    }
}

/// Reads what the page cache holds of `buf.len()` bytes at `off` without waiting for the disk
/// (`preadv2` with `RWF_NOWAIT`); returns how many leading bytes arrived (0 on a miss, an
/// error, or a filesystem without `RWF_NOWAIT`: the caller reads the rest another way).
/// `segs` with neighbours merged where both the file range and the buffer range continue
/// exactly (slot offsets are `slot * BLOCK_BYTES`, so a merged segment may run past its first
/// slot into the next ones).
fn coalesce(segs: &[ReadSeg]) -> Vec<ReadSeg> {
    let mut out: Vec<ReadSeg> = Vec::with_capacity(segs.len());
    for s in segs {
        if let Some(last) = out.last_mut() {
            let file_end = FileBackend::slot_offset(last.slot) + last.at as u64 + last.len as u64;
            let file_start = FileBackend::slot_offset(s.slot) + s.at as u64;
            if file_end == file_start
                && last.dst + last.len as usize == s.dst
                && let Some(len) = last.len.checked_add(s.len)
            {
                last.len = len;
                continue;
            }
        }
        out.push(*s);
    }
    out
}

fn cached_read(f: &File, buf: &mut [u8], off: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        let iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: buf.len() - got,
        };
        // SAFETY: one iovec over the unread part of `buf`, which is exclusively borrowed.
        let n = unsafe {
            libc::preadv2(
                f.as_raw_fd(),
                &iov,
                1,
                (off + got as u64) as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    got
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter that
    // statvfs fully initialises on success (checked via the return value).
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(slot: u32, at: u32, len: u32, dst: usize) -> ReadSeg {
        ReadSeg { slot, at, len, dst }
    }

    #[test]
    fn coalesce_merges_only_runs_contiguous_in_file_and_buffer() {
        let b = BLOCK_BYTES;
        let key = |v: Vec<ReadSeg>| -> Vec<(u32, u32, u32, usize)> {
            v.into_iter()
                .map(|s| (s.slot, s.at, s.len, s.dst))
                .collect()
        };
        // Consecutive slots, a read starting mid-block: one segment.
        let run = [
            seg(5, 100, b - 100, 0),
            seg(6, 0, b, (b - 100) as usize),
            seg(7, 0, 10, (2 * b - 100) as usize),
        ];
        assert_eq!(key(coalesce(&run)), vec![(5, 100, 2 * b - 90, 0)]);
        // A slot out of order, a hole in the buffer (zeros kept), a block not read from 0.
        let broken = [
            seg(5, 0, b, 0),
            seg(9, 0, b, b as usize),
            seg(10, 0, b, 3 * b as usize),
            seg(11, 4096, 4096, 4 * b as usize),
        ];
        assert_eq!(coalesce(&broken).len(), 4);
        assert!(coalesce(&[]).is_empty());
    }
}
