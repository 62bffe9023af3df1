//! The Raft log on disk: append-only segment files with CRC-framed records, one `pwrite` and
//! one `fdatasync` per group of appends, plus a tiny two-slot state file for the vote and the
//! purge point. Synchronous and single-threaded: `log_store::LogStore` runs it on its writer
//! thread and keeps the in-memory view openraft reads from.
//!
//! ```text
//! raftlog/
//!   state                      two 512-byte slots (A/B), the newer valid one wins
//!   00000000000000000001.seg   first entry index in the name; 16-byte header, then records
//!   spare                      the next segment, already zero-filled (renamed on roll)
//! ```
//!
//! - Segment header: `PONDRLOG`, format (u32 LE), CRC32C of those 12 bytes (u32 LE).
//! - Record: payload length (u32 LE), CRC32C of everything after the CRC field (u32 LE), kind
//!   (1 entry, 2 committed index), 3 zero bytes, index (u64 LE), payload (postcard). The bytes
//!   after the last record are always zero: segments are zero-filled before use, a truncate
//!   zeroes what it cuts and opening zeroes a torn tail, so a stale record can never follow
//!   the end of the log.
//! - Segments are zero-filled and synced before they are used, so an append overwrites
//!   allocated blocks and its `fdatasync` has no file-size or extent change to journal.
//! - Opening scans every segment: a record with a bad length, CRC or kind, or an entry whose
//!   index does not follow the previous one, ends the log (a write torn by a crash; nothing
//!   after it was synced, so nothing after it was acknowledged). The tail is cut, zeroed and
//!   synced, and later segments are removed.
//! - State slot: `PONDRSTA`, format (u32 LE), payload length (u32 LE), sequence (u64 LE),
//!   CRC32C (u32 LE) of format, length, sequence and payload, then postcard `StateRec`. A write
//!   goes to the slot not holding the newest state, so a torn write leaves the other intact.

use crate::types::LogId;
use openraft::Vote;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// On-disk format of `raftlog/`. A directory of another format (or the redb `log.redb` of
/// format 0) is refused with an error naming both.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of a fresh segment. Each is zero-filled ahead of use (a background thread prepares
/// the next one); at ~200 bytes per create this is ~40k creates per segment.
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// Largest record accepted (an entry is at most ~1 MiB of ops plus framing; AppendEntries
/// messages are capped at 16 MiB).
pub const RECORD_BYTES_MAX: u64 = 32 << 20;

const SEG_MAGIC: &[u8; 8] = b"PONDRLOG";
const SEG_HEADER: u64 = 16;
const REC_HEADER: u64 = 20;
const KIND_ENTRY: u8 = 1;
const KIND_COMMITTED: u8 = 2;
const STATE_MAGIC: &[u8; 8] = b"PONDRSTA";
const STATE_SLOT: u64 = 512;
const STATE_HEADER: usize = 28;
const ZERO_CHUNK: usize = 1 << 20;

/// Errors of the log files.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("raft log io: {0}")]
    Io(#[from] io::Error),
    #[error("raft log format: {0}")]
    Format(String),
    #[error("raft log encoding: {0}")]
    Encode(#[from] postcard::Error),
}

type Result<T> = std::result::Result<T, WalError>;

/// What the state file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRec {
    pub vote: Option<Vote<u64>>,
    pub purged: Option<LogId>,
    pub committed: Option<LogId>,
}

/// Where one entry's record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// The segment (its first index, the file name).
    pub seg: u64,
    /// Offset of the record header in the segment.
    pub off: u64,
    /// Payload length.
    pub len: u32,
}

/// One entry as stored: its log id and postcard bytes.
#[derive(Clone, Debug)]
pub struct StoredEntry {
    pub log_id: LogId,
    pub bytes: Arc<[u8]>,
}

/// What opening found.
pub struct Recovered {
    pub state: StateRec,
    /// The newest committed index recorded (log records or state file).
    pub committed: Option<LogId>,
    /// Every entry after the purge point: log id and location.
    pub entries: BTreeMap<u64, (LogId, Loc)>,
    /// Bytes cut from a torn tail (0 after a clean stop).
    pub torn_bytes: u64,
}

struct Seg {
    first: u64,
    file: Arc<File>,
    cap: u64,
    /// End of the last record (everything after is zero).
    end: u64,
}

/// The log files. Not thread-safe: one owner (the writer thread).
pub struct Wal {
    dir: PathBuf,
    segs: Vec<Seg>,
    /// Records of the current group not yet written to the last segment.
    buf: Vec<u8>,
    /// Segments written since the last sync (by first index).
    dirty: Vec<u64>,
    index: BTreeMap<u64, Loc>,
    state: StateRec,
    state_file: File,
    state_seq: u64,
    committed: Option<LogId>,
    spare: Option<std::thread::JoinHandle<io::Result<()>>>,
}

fn crc(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p))
}

fn seg_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn seg_header() -> [u8; SEG_HEADER as usize] {
    let mut h = [0u8; SEG_HEADER as usize];
    h[..8].copy_from_slice(SEG_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let c = crc(&[&h[..12]]);
    h[12..16].copy_from_slice(&c.to_le_bytes());
    h
}

fn write_zeros(f: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK.min((to - from) as usize).max(1)];
    let mut off = from;
    while off < to {
        let n = ((to - off) as usize).min(zeros.len());
        f.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Writes a zero-filled segment of `cap` bytes with its header at `path` (via a temp file),
/// synced and renamed into place.
fn prepare_segment(dir: &Path, path: &Path, cap: u64) -> io::Result<()> {
    let tmp = dir.join(format!(
        "{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("seg")
    ));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    write_zeros(&f, 0, cap)?;
    f.write_all_at(&seg_header(), 0)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn encode_record(out: &mut Vec<u8>, kind: u8, index: u64, payload: &[u8]) {
    let mut h = [0u8; REC_HEADER as usize];
    h[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8] = kind;
    h[12..20].copy_from_slice(&index.to_le_bytes());
    let c = crc(&[&h[8..20], payload]);
    h[4..8].copy_from_slice(&c.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
}

/// Parses the record at `off` of `data`: `(kind, index, payload range, next offset)`, or
/// `None` where the log ends.
fn parse_record(data: &[u8], off: usize) -> Option<(u8, u64, std::ops::Range<usize>, usize)> {
    let h = data.get(off..off + REC_HEADER as usize)?;
    let len = u32::from_le_bytes(h[0..4].try_into().ok()?) as usize;
    let want = u32::from_le_bytes(h[4..8].try_into().ok()?);
    let kind = h[8];
    if !(kind == KIND_ENTRY || kind == KIND_COMMITTED) || h[9..12] != [0, 0, 0] {
        return None;
    }
    let index = u64::from_le_bytes(h[12..20].try_into().ok()?);
    let start = off + REC_HEADER as usize;
    let payload = data.get(start..start.checked_add(len)?)?;
    if crc(&[&h[8..20], payload]) != want {
        return None;
    }
    Some((kind, index, start..start + len, start + len))
}

fn read_state(f: &File) -> Result<Option<(u64, StateRec)>> {
    let mut best: Option<(u64, StateRec)> = None;
    for slot in 0..2u64 {
        let mut b = vec![0u8; STATE_SLOT as usize];
        match f.read_exact_at(&mut b, slot * STATE_SLOT) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e.into()),
        }
        if &b[..8] != STATE_MAGIC {
            continue;
        }
        let format = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        let want = u32::from_le_bytes(b[24..28].try_into().expect("4 bytes"));
        let Some(payload) = b.get(STATE_HEADER..STATE_HEADER + len) else {
            continue;
        };
        if crc(&[&b[8..24], payload]) != want {
            continue;
        }
        if format != FORMAT_VERSION {
            return Err(WalError::Format(format!(
                "raftlog/state has format {format}, this build reads {FORMAT_VERSION}"
            )));
        }
        let rec: StateRec = postcard::from_bytes(payload)?;
        if best.as_ref().is_none_or(|(s, _)| seq > *s) {
            best = Some((seq, rec));
        }
    }
    Ok(best)
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, cutting a torn tail.
    pub fn open(dir: &Path) -> Result<(Wal, Recovered)> {
        let fresh = !dir.exists();
        std::fs::create_dir_all(dir)?;
        if fresh && let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let state_path = dir.join("state");
        let state_exists = state_path.exists();
        let state_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&state_path)?;
        let mut firsts = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                std::fs::remove_file(e.path())?;
            } else if let Some(stem) = name.strip_suffix(".seg") {
                let first = stem
                    .parse::<u64>()
                    .map_err(|_| WalError::Format(format!("unexpected file raftlog/{name}")))?;
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let (state_seq, state) = match read_state(&state_file)? {
            Some(s) => s,
            None if !firsts.is_empty() => {
                return Err(WalError::Format(
                    "raftlog/ has segments but no valid state file".into(),
                ));
            }
            None => (0, StateRec::default()),
        };
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segs: Vec::new(),
            buf: Vec::new(),
            dirty: Vec::new(),
            index: BTreeMap::new(),
            committed: state.committed,
            state: state.clone(),
            state_file,
            state_seq,
            spare: None,
        };
        if !state_exists || state_seq == 0 {
            wal.write_state()?;
            sync_dir(dir)?;
        }
        let purged = state.purged.map(|l| l.index);
        let mut entries: BTreeMap<u64, (LogId, Loc)> = BTreeMap::new();
        let mut last: Option<u64> = None;
        let mut last_term = 0u64;
        let mut torn_bytes = 0u64;
        let mut cut_after: Option<usize> = None;
        for (si, &first) in firsts.iter().enumerate() {
            let path = dir.join(seg_name(first));
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let data = std::fs::read(&path)?;
            if data.len() < SEG_HEADER as usize || data[..16] != seg_header() {
                let format = data
                    .get(8..12)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                if data.get(..8) == Some(SEG_MAGIC.as_slice()) && format != Some(FORMAT_VERSION) {
                    return Err(WalError::Format(format!(
                        "segment {} has format {format:?}, this build reads {FORMAT_VERSION}",
                        path.display()
                    )));
                }
                return Err(WalError::Format(format!(
                    "segment {} has a bad header",
                    path.display()
                )));
            }
            let mut off = SEG_HEADER as usize;
            let mut torn = false;
            while let Some((kind, index, payload, next)) = parse_record(&data, off) {
                if kind == KIND_ENTRY {
                    let skip = purged.is_some_and(|p| index <= p);
                    if !skip {
                        // Indexes only grow (openraft appends contiguously; a record
                        // going back is stale and ends the log).
                        if last.is_some_and(|l| index <= l) {
                            torn = true;
                            break;
                        }
                        let e: openraft::Entry<crate::types::TypeConfig> =
                            match postcard::from_bytes(&data[payload.clone()]) {
                                Ok(e) => e,
                                Err(_) => {
                                    torn = true;
                                    break;
                                }
                            };
                        if e.log_id.index != index || e.log_id.leader_id.term < last_term {
                            torn = true;
                            break;
                        }
                        last_term = e.log_id.leader_id.term;
                        entries.insert(
                            index,
                            (
                                e.log_id,
                                Loc {
                                    seg: first,
                                    off: off as u64,
                                    len: payload.len() as u32,
                                },
                            ),
                        );
                        last = Some(index);
                    }
                } else {
                    let c: Option<LogId> = match postcard::from_bytes(&data[payload.clone()]) {
                        Ok(c) => c,
                        Err(_) => {
                            torn = true;
                            break;
                        }
                    };
                    if c.map(|l| l.index) > wal.committed.map(|l| l.index) {
                        wal.committed = c;
                    }
                }
                off = next;
            }
            if !torn && data[off..].iter().any(|b| *b != 0) {
                torn = true;
            }
            let cap = data.len() as u64;
            wal.segs.push(Seg {
                first,
                file: Arc::new(file),
                cap,
                end: off as u64,
            });
            if torn {
                torn_bytes = data[off..]
                    .iter()
                    .rposition(|b| *b != 0)
                    .map(|p| p as u64 + 1)
                    .unwrap_or(0);
                cut_after = Some(si);
                break;
            }
        }
        if let Some(si) = cut_after {
            let seg = &wal.segs[si];
            tracing::warn!(
                segment = %seg_name(seg.first),
                offset = seg.end,
                bytes = torn_bytes,
                "raft log: cutting a torn tail"
            );
            write_zeros(&seg.file, seg.end, seg.cap)?;
            seg.file.sync_data()?;
            for &first in &firsts[si + 1..] {
                std::fs::remove_file(dir.join(seg_name(first)))?;
            }
            sync_dir(dir)?;
        }
        // A committed index is never above the log it came with.
        if let (Some(c), Some(l)) = (wal.committed, last)
            && c.index > l
        {
            wal.committed = None;
        }
        // Segments holding only purged entries (a crash between the purge and the removal).
        wal.remove_purged_segments()?;
        wal.index = entries.iter().map(|(i, (_, l))| (*i, *l)).collect();
        if wal.segs.is_empty() {
            wal.roll(purged.map(|p| p + 1).unwrap_or(0), 0)?;
        }
        wal.start_spare();
        let rec = Recovered {
            state: wal.state.clone(),
            committed: wal.committed,
            entries,
            torn_bytes,
        };
        Ok((wal, rec))
    }

    /// The open segment files, for readers (first index -> file).
    pub fn segment_files(&self) -> BTreeMap<u64, Arc<File>> {
        self.segs
            .iter()
            .map(|s| (s.first, s.file.clone()))
            .collect()
    }

    fn spare_path(&self) -> PathBuf {
        self.dir.join("spare")
    }

    fn start_spare(&mut self) {
        if self.spare.is_some() || self.spare_path().exists() {
            return;
        }
        let dir = self.dir.clone();
        let path = self.spare_path();
        self.spare = std::thread::Builder::new()
            .name("raft-log-spare".into())
            .spawn(move || prepare_segment(&dir, &path, SEGMENT_BYTES))
            .ok();
    }

    /// Starts a new segment whose first entry will be `first`, big enough for `need` bytes of
    /// records.
    fn roll(&mut self, first: u64, need: u64) -> Result<()> {
        let path = self.dir.join(seg_name(first));
        if self.segs.iter().any(|s| s.first == first) {
            return Err(WalError::Format(format!(
                "segment {} already exists",
                path.display()
            )));
        }
        let cap = SEGMENT_BYTES.max((SEG_HEADER + need).next_multiple_of(4096));
        if let Some(h) = self.spare.take() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "raft log: preparing a spare segment"),
                Err(_) => tracing::warn!("raft log: spare segment thread panicked"),
            }
        }
        let spare = self.spare_path();
        let spare_ok = cap == SEGMENT_BYTES
            && std::fs::metadata(&spare).is_ok_and(|m| m.len() == SEGMENT_BYTES);
        if spare_ok {
            std::fs::rename(&spare, &path)?;
            sync_dir(&self.dir)?;
        } else {
            prepare_segment(&self.dir, &path, cap)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        self.segs.push(Seg {
            first,
            file: Arc::new(file),
            cap,
            end: SEG_HEADER,
        });
        self.start_spare();
        Ok(())
    }

    fn last_seg(&mut self) -> &mut Seg {
        self.segs.last_mut().expect("the log always has a segment")
    }

    /// Writes the buffered records to the last segment (no sync).
    fn flush_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let seg = self.last_seg();
        let off = seg.end - buf.len() as u64;
        seg.file.write_all_at(&buf, off)?;
        let first = seg.first;
        if !self.dirty.contains(&first) {
            self.dirty.push(first);
        }
        self.buf = buf;
        self.buf.clear();
        Ok(())
    }

    /// Reserves room for a record of `len` payload bytes whose entry index (if any) is
    /// `next_entry`, rolling to a new segment if the last one is full. Returns the offset.
    fn reserve(&mut self, len: u64, next_entry: u64) -> Result<u64> {
        let need = REC_HEADER + len;
        if need > RECORD_BYTES_MAX {
            return Err(WalError::Format(format!(
                "record of {len} bytes is too large"
            )));
        }
        let seg = self.last_seg();
        if seg.end + need > seg.cap {
            self.flush_buf()?;
            self.roll(next_entry, need)?;
        }
        let seg = self.last_seg();
        let off = seg.end;
        seg.end += need;
        Ok(off)
    }

    /// Adds entries (postcard `Entry` bytes) to the current group; returns where each went.
    /// Nothing is durable before `sync`.
    pub fn append(&mut self, entries: &[StoredEntry]) -> Result<Vec<Loc>> {
        let mut locs = Vec::with_capacity(entries.len());
        for e in entries {
            let index = e.log_id.index;
            // openraft truncates before it overwrites; an append at or below the last index
            // replaces the tail all the same (the file stays strictly increasing).
            if self.index.keys().next_back().is_some_and(|l| *l >= index) {
                self.truncate(index)?;
            }
            let off = self.reserve(e.bytes.len() as u64, index)?;
            encode_record(&mut self.buf, KIND_ENTRY, index, &e.bytes);
            let loc = Loc {
                seg: self.last_seg().first,
                off,
                len: e.bytes.len() as u32,
            };
            self.index.insert(index, loc);
            locs.push(loc);
        }
        Ok(locs)
    }

    /// Records the committed index in the current group: buffered only, written and made
    /// durable with the next append (no I/O here). If the last segment has no room for it,
    /// it is kept in memory and saved with the next state write (vote, purge) instead: the
    /// committed index is a hint that only shortens a restart.
    pub fn set_committed(&mut self, committed: Option<LogId>) {
        self.committed = committed;
        let Ok(payload) = postcard::to_stdvec(&committed) else {
            return;
        };
        let need = REC_HEADER + payload.len() as u64;
        let seg = self.last_seg();
        if seg.end + need > seg.cap {
            return;
        }
        seg.end += need;
        encode_record(
            &mut self.buf,
            KIND_COMMITTED,
            committed.map(|l| l.index).unwrap_or(0),
            &payload,
        );
    }

    /// Writes what the group holds and makes it durable: one `pwrite` and one `fdatasync` per
    /// segment touched (one, unless the group crossed into a new segment).
    pub fn sync(&mut self) -> Result<()> {
        self.flush_buf()?;
        for first in std::mem::take(&mut self.dirty) {
            if let Some(s) = self.segs.iter().find(|s| s.first == first) {
                s.file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Writes what the group holds without syncing (tests: a crash between write and sync).
    #[cfg(test)]
    pub fn write_unsynced(&mut self) -> Result<()> {
        self.flush_buf()
    }

    fn write_state(&mut self) -> Result<()> {
        let payload = postcard::to_stdvec(&self.state)?;
        if STATE_HEADER + payload.len() > STATE_SLOT as usize {
            return Err(WalError::Format("state record too large".into()));
        }
        let seq = self.state_seq + 1;
        // Whole slots: the file is always two slots long.
        let mut b = vec![0u8; STATE_SLOT as usize];
        b[..8].copy_from_slice(STATE_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b[16..24].copy_from_slice(&seq.to_le_bytes());
        let c = crc(&[&b[8..24], &payload]);
        b[24..28].copy_from_slice(&c.to_le_bytes());
        b[STATE_HEADER..STATE_HEADER + payload.len()].copy_from_slice(&payload);
        self.state_file.write_all_at(&b, (seq % 2) * STATE_SLOT)?;
        self.state_file.sync_data()?;
        self.state_seq = seq;
        Ok(())
    }

    /// Saves the vote durably (its own small write and sync).
    pub fn save_vote(&mut self, vote: Vote<u64>) -> Result<()> {
        self.state.vote = Some(vote);
        self.state.committed = self.committed;
        self.write_state()
    }

    /// Removes every entry from `from` on, durably: the cut bytes are zeroed and synced and
    /// later segments are removed before anything else is written.
    pub fn truncate(&mut self, from: u64) -> Result<()> {
        self.flush_buf()?;
        let Some(loc) = self.index.get(&from).copied() else {
            // Nothing at or after `from` in the files (entries are contiguous).
            if self.index.keys().next_back().is_some_and(|l| *l >= from) {
                return Err(WalError::Format(format!(
                    "truncate at missing index {from}"
                )));
            }
            return Ok(());
        };
        let mut removed = false;
        while self.segs.last().is_some_and(|s| s.first > loc.seg) {
            let s = self.segs.pop().expect("checked");
            std::fs::remove_file(self.dir.join(seg_name(s.first)))?;
            self.dirty.retain(|d| *d != s.first);
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        let seg = self.last_seg();
        debug_assert_eq!(seg.first, loc.seg);
        write_zeros(&seg.file, loc.off, seg.end)?;
        seg.end = loc.off;
        seg.file.sync_data()?;
        self.index.split_off(&from);
        if self.committed.is_some_and(|c| c.index >= from) {
            self.committed = None;
        }
        Ok(())
    }

    /// Forgets every entry up to `upto` durably (state file first), then removes segments that
    /// hold nothing newer.
    pub fn purge(&mut self, upto: LogId) -> Result<()> {
        self.flush_buf()?;
        if self.state.purged.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        self.state.purged = Some(upto);
        self.state.committed = self.committed;
        self.write_state()?;
        self.index = self.index.split_off(&(upto.index + 1));
        self.remove_purged_segments()
    }

    /// Removes every segment (but the last) whose entries are all purged.
    fn remove_purged_segments(&mut self) -> Result<()> {
        let Some(p) = self.state.purged.map(|l| l.index) else {
            return Ok(());
        };
        let mut n = 0;
        while self.segs.len() > 1 && self.segs[1].first <= p + 1 {
            let s = self.segs.remove(0);
            std::fs::remove_file(self.dir.join(seg_name(s.first)))?;
            self.dirty.retain(|d| *d != s.first);
            n += 1;
        }
        if n > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    pub fn state(&self) -> &StateRec {
        &self.state
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // A spare being prepared finishes before the directory may go away.
        if let Some(h) = self.spare.take() {
            let _ = h.join();
        }
    }
}

/// Reads one entry's payload at `loc` from `file`, checking its frame.
pub fn read_at(file: &File, loc: Loc, index: u64) -> Result<Vec<u8>> {
    let mut b = vec![0u8; REC_HEADER as usize + loc.len as usize];
    file.read_exact_at(&mut b, loc.off)?;
    match parse_record(&b, 0) {
        Some((KIND_ENTRY, i, payload, _)) if i == index => Ok(b[payload].to_vec()),
        _ => Err(WalError::Format(format!(
            "entry {index}: bad record at {}:{}",
            seg_name(loc.seg),
            loc.off
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Batch, TypeConfig};
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn lid(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64, pad: usize) -> StoredEntry {
        let e: Entry<TypeConfig> = Entry {
            log_id: lid(term, index),
            payload: EntryPayload::Normal(Batch {
                now: Default::default(),
                ops: Vec::new(),
            }),
        };
        let mut bytes = postcard::to_stdvec(&e).unwrap();
        // Padding after the entry: postcard ignores trailing bytes, the record keeps them,
        // which lets tests make records of any size.
        bytes.extend(std::iter::repeat_n(0xAB, pad));
        StoredEntry {
            log_id: e.log_id,
            bytes: bytes.into(),
        }
    }

    fn indexes(r: &Recovered) -> Vec<(u64, u64)> {
        r.entries
            .values()
            .map(|(l, _)| (l.leader_id.term, l.index))
            .collect()
    }

    fn seg_path(dir: &Path, first: u64) -> PathBuf {
        dir.join(seg_name(first))
    }

    #[test]
    fn reopen_returns_synced_entries_vote_and_committed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("raftlog");
        {
            let (mut w, r) = Wal::open(&dir).unwrap();
            assert!(r.entries.is_empty());
            w.append(&[entry(1, 0, 0), entry(1, 1, 0), entry(1, 2, 0)])
                .unwrap();
            w.set_committed(Some(lid(1, 1)));
            w.sync().unwrap();
            w.save_vote(Vote::new_committed(1, 1)).unwrap();
        }
        let (_w, r) = Wal::open(&dir).unwrap();
        assert_eq!(indexes(&r), vec![(1, 0), (1, 1), (1, 2)]);
        assert_eq!(r.committed, Some(lid(1, 1)));
        assert_eq!(r.state.vote, Some(Vote::new_committed(1, 1)));
        assert_eq!(r.torn_bytes, 0);
    }

    #[test]
    fn torn_tail_is_cut_and_zeroed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("raftlog");
        let loc2;
        {
            let (mut w, _) = Wal::open(&dir).unwrap();
            let locs = w
                .append(&[entry(1, 0, 10), entry(1, 1, 10), entry(1, 2, 10)])
                .unwrap();
            loc2 = locs[2];
            w.sync().unwrap();
        }
        // A crash in the middle of the last record's write: its tail never reached the disk.
        let f = OpenOptions::new()
            .write(true)
            .open(seg_path(&dir, 0))
            .unwrap();
        let end = loc2.off + REC_HEADER + loc2.len as u64;
        f.write_all_at(&[0u8; 8], end - 8).unwrap();
        drop(f);
        let (mut w, r) = Wal::open(&dir).unwrap();
        assert_eq!(indexes(&r), vec![(1, 0), (1, 1)]);
        assert!(r.torn_bytes > 0);
        let data = std::fs::read(seg_path(&dir, 0)).unwrap();
        assert!(
            data[loc2.off as usize..].iter().all(|b| *b == 0),
            "tail zeroed"
        );
        // The log goes on from the cut.
        w.append(&[entry(2, 2, 0)]).unwrap();
        w.sync().unwrap();
        drop(w);
        let (_w, r) = Wal::open(&dir).unwrap();
        assert_eq!(indexes(&r), vec![(1, 0), (1, 1), (2, 2)]);
        assert_eq!(r.torn_bytes, 0);
    }

    #[test]
    fn a_stale_record_after_a_torn_one_does_not_come_back() {
        // Pages of one group reach the disk out of order: entry 1's record is lost, entry 2's
        // survives. After the cut, a shorter entry 1 from a new term followed by a crash must
        // not let the old entry 2 (term 1) reappear behind it.
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("raftlog");
        let locs;
        {
            let (mut w, _) = Wal::open(&dir).unwrap();
            locs = w
                .append(&[entry(1, 0, 0), entry(1, 1, 40), entry(1, 2, 0)])
                .unwrap();
            w.sync().unwrap();
        }
        let f = OpenOptions::new()
            .write(true)
            .open(seg_path(&dir, 0))
            .unwrap();
        f.write_all_at(&[0xFF; 4], locs[1].off + 4).unwrap();
        drop(f);
        let (mut w, r) = Wal::open(&dir).unwrap();
        assert_eq!(indexes(&r), vec![(1, 0)]);
        // Same size as the lost record: the old entry 2 would sit right behind it.
        w.append(&[entry(2, 1, 40)]).unwrap();
        w.sync().unwrap();
        drop(w);
        let (_w, r) = Wal::open(&dir).unwrap();
        assert_eq!(indexes(&r), vec![(1, 0), (2, 1)]);
    }

    #[test]
    fn write_without_sync_then_crash_keeps_the_synced_prefix() {
        // Simulates a power loss between the pwrite and the fdatasync: the unsynced bytes are
        // dropped (here: replaced by what the disk held before, zeros) or kept whole; either
        // way the synced prefix is intact and the log is contiguous.
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("raftlog");
        let (before, synced_end);
        {
            let (mut w, _) = Wal::open(&dir).unwrap();
            w.append(&[entry(1, 0, 0), entry(1, 1, 0)]).unwrap();
            w.sync().unwrap();
            synced_end = w.segs.last().unwrap().end;
            before = std::fs::read(seg_path(&dir, 0)).unwrap();
            w.append(&[entry(1, 2, 100), entry(1, 3, 100)]).unwrap();
            w.write_unsynced().unwrap();
        }
        let after = std::fs::read(seg_path(&dir, 0)).unwrap();
        assert_ne!(before, after, "the unsynced group was written");
        // Lost: the page cache never reached the disk.
        std::fs::write(seg_path(&dir, 0), &before).unwrap();
        let (_w, r) = Wal::open(&dir).unwrap();
        assert_eq!(indexes(&r), vec![(1, 0), (1, 1)]);
        // Half lost: the first half of the unsynced bytes made it.
        let mut half = after.clone();
        let mid = synced_end as usize + (after.len() - synced_end as usize) / 2;
        let stop = synced_end as usize + 300;
        half[stop.min(mid)..].copy_from_slice(&before[stop.min(mid)..]);
        std::fs::write(seg_path(&dir, 0), &half).unwrap();
        let (_w, r) = Wal::open(&dir).unwrap();
        let got = indexes(&r);
        assert!(
            got.starts_with(&[(1, 0), (1, 1)]) && got.len() <= 4,
            "{got:?}"
        );
        assert!(got.windows(2).all(|p| p[0].1 + 1 == p[1].1));
    }

    #[test]
    fn truncate_removes_entries_durably_and_zeroes_them() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("raftlog");
        {
            let (mut w, _) = Wal::open(&dir).unwrap();
            w.append(&(0..10).map(|i| entry(1, i, 0)).collect::<Vec<_>>())
                .unwrap();
            w.sync().unwrap();
            w.truncate(5).unwrap();
            // Re-appending the same size at the cut leaves nothing stale behind it.
            w.append(&[entry(2, 5, 0)]).unwrap();
            w.sync().unwrap();
        }
        let (mut w, r) = Wal::open(&dir).unwrap();
        assert_eq!(
            indexes(&r),
            vec![(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 5)]
        );
        // An append below the end replaces the tail.
        w.append(&[entry(3, 3, 0)]).unwrap();
        w.sync().unwrap();
        drop(w);
        let (mut w, r) = Wal::open(&dir).unwrap();
        assert_eq!(indexes(&r), vec![(1, 0), (1, 1), (1, 2), (3, 3)]);
        // Truncating past the end changes nothing.
        w.truncate(9).unwrap();
        w.truncate(0).unwrap();
        drop(w);
        let (mut w, r) = Wal::open(&dir).unwrap();
        assert!(r.entries.is_empty());
        // An entry at or below the purge point is not part of the log when it is opened.
        w.purge(lid(3, 10)).unwrap();
        w.append(&[entry(3, 10, 0), entry(3, 11, 0)]).unwrap();
        w.sync().unwrap();
        drop(w);
        let (_w, r) = Wal::open(&dir).unwrap();
        assert_eq!(indexes(&r), vec![(3, 11)]);
    }

    #[test]
    fn truncate_and_purge_across_segments() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("raftlog");
        // ~1 MiB records: 8 per segment, 30 entries span four segments.
        let big = (1 << 20) - 200;
        {
            let (mut w, _) = Wal::open(&dir).unwrap();
            for i in 0..30 {
                w.append(&[entry(1, i, big)]).unwrap();
                w.sync().unwrap();
            }
            assert!(w.segs.len() >= 4, "{} segments", w.segs.len());
            w.truncate(12).unwrap();
            assert!(w.segs.iter().all(|s| s.first <= 12));
            w.append(&[entry(2, 12, 0), entry(2, 13, 0)]).unwrap();
            w.set_committed(Some(lid(2, 13)));
            w.sync().unwrap();
            w.purge(lid(1, 9)).unwrap();
            assert_eq!(w.segs.len(), 1, "segments of purged entries removed");
        }
        let (mut w, r) = Wal::open(&dir).unwrap();
        assert_eq!(r.state.purged, Some(lid(1, 9)));
        assert_eq!(
            indexes(&r),
            vec![(1, 10), (1, 11), (2, 12), (2, 13)],
            "entries after the purge point"
        );
        assert_eq!(r.committed, Some(lid(2, 13)));
        // Purge beyond the end of the log: the next entry follows the purge point.
        w.purge(lid(3, 100)).unwrap();
        w.append(&[entry(3, 101, 0)]).unwrap();
        w.sync().unwrap();
        drop(w);
        let (_w, r) = Wal::open(&dir).unwrap();
        assert_eq!(indexes(&r), vec![(3, 101)]);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_lost_tail_segment_write_drops_later_segments() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("raftlog");
        let big = (1 << 20) - 200;
        let firsts: Vec<u64>;
        {
            let (mut w, _) = Wal::open(&dir).unwrap();
            for i in 0..12 {
                w.append(&[entry(1, i, big)]).unwrap();
            }
            w.sync().unwrap();
            firsts = w.segs.iter().map(|s| s.first).collect();
        }
        assert!(firsts.len() >= 2);
        // The end of the first segment is torn: the later segment must go with it.
        let p = seg_path(&dir, firsts[0]);
        let data = std::fs::read(&p).unwrap();
        let last_nz = data.iter().rposition(|b| *b != 0).unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0u8; 16], (last_nz - 16) as u64).unwrap();
        drop(f);
        let (_w, r) = Wal::open(&dir).unwrap();
        let got = indexes(&r);
        assert_eq!(got.len() as u64, firsts[1] - 1);
        assert!(!seg_path(&dir, firsts[1]).exists());
    }

    #[test]
    fn state_survives_a_torn_slot_write() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("raftlog");
        {
            let (mut w, _) = Wal::open(&dir).unwrap();
            w.save_vote(Vote::new(1, 1)).unwrap();
            w.save_vote(Vote::new(2, 1)).unwrap();
        }
        // The write of vote 2 is torn.
        let (w, _) = Wal::open(&dir).unwrap();
        let slot = w.state_seq % 2;
        drop(w);
        let f = OpenOptions::new()
            .write(true)
            .open(dir.join("state"))
            .unwrap();
        f.write_all_at(&[0x55; 4], slot * STATE_SLOT + 16).unwrap();
        drop(f);
        let (_w, r) = Wal::open(&dir).unwrap();
        assert_eq!(r.state.vote, Some(Vote::new(1, 1)));
    }

    #[test]
    fn another_format_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("raftlog");
        {
            let (mut w, _) = Wal::open(&dir).unwrap();
            w.append(&[entry(1, 0, 0)]).unwrap();
            w.sync().unwrap();
        }
        let f = OpenOptions::new()
            .write(true)
            .open(seg_path(&dir, 0))
            .unwrap();
        f.write_all_at(&99u32.to_le_bytes(), 8).unwrap();
        drop(f);
        let err = Wal::open(&dir).err().expect("refused").to_string();
        assert!(err.contains("format"), "{err}");
    }

    #[test]
    fn read_at_checks_the_frame() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("raftlog");
        let (mut w, _) = Wal::open(&dir).unwrap();
        let e = entry(1, 0, 5);
        let locs = w.append(std::slice::from_ref(&e)).unwrap();
        w.sync().unwrap();
        let files = w.segment_files();
        let f = &files[&locs[0].seg];
        assert_eq!(read_at(f, locs[0], 0).unwrap(), e.bytes.to_vec());
        assert!(read_at(f, locs[0], 1).is_err());
    }
}
