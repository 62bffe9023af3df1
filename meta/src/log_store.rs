//! The Raft log store openraft uses: `raft_log::Wal` files, written in the caller's task, and
//! an in-memory view (log ids, recent entry bytes, file locations) every read is served from.
//!
//! - openraft 0.9 runs every log write inside its core task and waits for it (appends
//!   included: `append_to_log` awaits the flush callback), so writes never overlap and a
//!   writer thread could not group anything but committed-index notes: each append is one
//!   `pwrite` of its records (plus any buffered committed-index record) and one `fdatasync`,
//!   done in place (`LogStore::write`), and the callback is called right after the sync.
//! - Entries are readable (`try_get_log_entries`) from the moment `append` is called: their
//!   bytes stay in memory until written, then while the cache holds them (`LOG_CACHE_BYTES`),
//!   and older ones are read back from the segment by offset.
//! - Every append is reported flushed only after its own sync, on the leader too. openraft 0.9
//!   counts the leader's flushed log in the quorum that advances the commit index, and followers
//!   apply what that index covers. Reporting the leader's own entries flushed when queued (tried
//!   here: the leader's sync overlapped replication) let an entry count as committed while
//!   durable on one follower only: if the leader then crashed before its sync, it could vote
//!   for the other follower, which never had the entry, and the follower that had applied it
//!   would have to truncate an applied entry. The state machine still waits on `LogDurable`
//!   before applying (a no-op wait now, kept as the guard).
//! - `save_committed` only buffers a record (no I/O, not waited for): it becomes durable with
//!   the next append; losing it only means a restart re-learns the commit index.

// `openraft::StorageError` is the error type the storage traits require; it is large, and
// boxing it here would only unbox it again at the trait boundary.
#![allow(clippy::result_large_err)]

use crate::raft_log::{Loc, StoredEntry, Wal, WalError, read_at};
use crate::types::{LogId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, OptionalSend, Vote};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::File;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// Bytes of written entries kept in memory for readers (replication, apply); older entries
/// are read back from their segment. Entries not yet written are always kept.
const LOG_CACHE_BYTES: usize = 64 << 20;

/// How far the local log is durable, for `StateStore::apply` (see the module docs).
#[derive(Debug)]
pub struct LogDurable {
    tx: watch::Sender<DurableState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DurableState {
    /// Every entry at or below this index that is in the log is durable.
    index: u64,
    /// A write failed: nothing becomes durable any more.
    failed: bool,
}

impl LogDurable {
    fn new(index: u64) -> LogDurable {
        LogDurable {
            tx: watch::Sender::new(DurableState {
                index,
                failed: false,
            }),
        }
    }

    /// The index below which the local log is durable.
    pub fn index(&self) -> u64 {
        self.tx.borrow().index
    }

    /// Waits until the local log is durable up to `index`; `Err` if the log writer failed.
    pub async fn wait(&self, index: u64) -> Result<(), String> {
        let mut rx = self.tx.subscribe();
        let r = rx
            .wait_for(|s| s.failed || s.index >= index)
            .await
            .map(|s| *s);
        match r {
            Ok(s) if !s.failed => Ok(()),
            Ok(_) => Err("raft log writer failed".into()),
            Err(_) => Err("raft log writer stopped".into()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut DurableState)) {
        self.tx.send_modify(f);
    }
}

/// The log files and whether a write failed (then nothing is written any more).
struct Writer {
    wal: Wal,
    failed: Option<String>,
}

/// One entry of the in-memory view.
struct Slot {
    log_id: LogId,
    generation: u64,
    /// Postcard bytes; `None` once evicted from the cache (then `loc` is set).
    bytes: Option<Arc<[u8]>>,
    /// Where the writer put it; `None` until written.
    loc: Option<Loc>,
}

#[derive(Default)]
struct Mem {
    slots: BTreeMap<u64, Slot>,
    segs: BTreeMap<u64, Arc<File>>,
    /// Written entries holding bytes, oldest first: (index, generation).
    cached: VecDeque<(u64, u64)>,
    cache_bytes: usize,
    purged: Option<LogId>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
    next_gen: u64,
}

impl Mem {
    fn drop_slot(&mut self, s: &Slot) {
        if let Some(b) = &s.bytes {
            self.cache_bytes -= b.len();
        }
    }

    fn evict(&mut self) {
        while self.cache_bytes > LOG_CACHE_BYTES {
            let Some((i, generation)) = self.cached.pop_front() else {
                break;
            };
            if let Some(s) = self.slots.get_mut(&i)
                && s.generation == generation
                && s.loc.is_some()
                && let Some(b) = s.bytes.take()
            {
                self.cache_bytes -= b.len();
            }
        }
    }
}

struct Inner {
    mem: Mutex<Mem>,
    writer: Arc<Mutex<Writer>>,
    durable: Arc<LogDurable>,
}

#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn log_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    /// Opens (creating if needed) the log in `data_dir/raftlog` and starts its writer thread.
    /// A `data_dir` holding the redb log of earlier builds (`log.redb`, format 0) is refused.
    pub fn open(data_dir: &Path) -> anyhow::Result<LogStore> {
        let old = data_dir.join("log.redb");
        anyhow::ensure!(
            !old.exists(),
            "{} is a raft log of format 0 (redb); this build reads raftlog/ format {}: \
             start this replica from an empty data directory",
            old.display(),
            crate::raft_log::FORMAT_VERSION
        );
        let (wal, rec) = Wal::open(&data_dir.join("raftlog"))?;
        let last = rec.entries.keys().next_back().copied().unwrap_or(0);
        let mut mem = Mem {
            segs: wal.segment_files(),
            purged: rec.state.purged,
            vote: rec.state.vote,
            committed: rec.committed,
            ..Mem::default()
        };
        for (i, (log_id, loc)) in rec.entries {
            mem.slots.insert(
                i,
                Slot {
                    log_id,
                    generation: 0,
                    bytes: None,
                    loc: Some(loc),
                },
            );
        }
        mem.next_gen = 1;
        let inner = Arc::new(Inner {
            mem: Mutex::new(mem),
            writer: Arc::new(Mutex::new(Writer { wal, failed: None })),
            durable: Arc::new(LogDurable::new(last)),
        });
        Ok(LogStore { inner })
    }

    /// How far this log is durable (the state machine waits on it before applying).
    pub fn durable(&self) -> Arc<LogDurable> {
        self.inner.durable.clone()
    }

    /// Runs `f` on the log files, in the caller's task: openraft's core awaits every log write
    /// before it goes on, so a hand-off to a writer thread would only add two thread wake-ups
    /// per append. On a multi-threaded runtime this blocks in place (`block_in_place` moves
    /// the worker's other tasks elsewhere); a current-thread runtime (some tests) uses the
    /// blocking pool. After a failed write every later one fails too.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Wal) -> Result<T, WalError> + Send + 'static,
    ) -> Result<T, String> {
        let writer = self.inner.writer.clone();
        let run = move || {
            let mut w = writer.lock();
            if let Some(e) = &w.failed {
                return Err(e.clone());
            }
            let r = f(&mut w.wal);
            match r {
                Ok(v) => Ok((v, w.wal.segment_files())),
                Err(e) => {
                    let e = e.to_string();
                    tracing::error!(error = %e, "raft log write failed; this replica stops making entries durable");
                    w.failed = Some(e.clone());
                    Err(e)
                }
            }
        };
        let r = if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(run)
        } else {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        };
        match r {
            Ok((v, segs)) => {
                self.inner.mem.lock().segs = segs;
                Ok(v)
            }
            Err(e) => {
                self.inner.durable.update(|s| s.failed = true);
                Err(e)
            }
        }
    }
}

/// An entry to read back from its segment: (index, location, segment file).
type OnDisk = (u64, Loc, Arc<File>);

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let lo = range.start_bound().cloned();
        let hi = range.end_bound().cloned();
        let mut parts: Vec<Result<Arc<[u8]>, OnDisk>> = Vec::new();
        {
            let m = self.inner.mem.lock();
            for (i, s) in m.slots.range((lo, hi)) {
                if let Some(b) = &s.bytes {
                    parts.push(Ok(b.clone()));
                } else if let Some(loc) = s.loc
                    && let Some(f) = m.segs.get(&loc.seg)
                {
                    parts.push(Err((*i, loc, f.clone())));
                } else {
                    return Err(log_err(
                        ErrorVerb::Read,
                        format!("entry {i} has neither bytes nor a location"),
                    ));
                }
            }
        }
        let need_file = parts.iter().any(|p| p.is_err());
        let parts: Vec<Arc<[u8]>> = if need_file {
            tokio::task::spawn_blocking(move || {
                parts
                    .into_iter()
                    .map(|p| match p {
                        Ok(b) => Ok(b),
                        Err((i, loc, f)) => read_at(&f, loc, i).map(Arc::from),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| log_err(ErrorVerb::Read, e))?
            .map_err(|e| log_err(ErrorVerb::Read, e))?
        } else {
            parts.into_iter().map(|p| p.expect("checked")).collect()
        };
        parts
            .iter()
            .map(|b| postcard::from_bytes(b).map_err(|e| log_err(ErrorVerb::Read, e)))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let m = self.inner.mem.lock();
        let last = m.slots.last_key_value().map(|(_, s)| s.log_id).or(m.purged);
        Ok(LogState {
            last_purged_log_id: m.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let vote = *vote;
        self.write(move |wal| wal.save_vote(vote))
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.inner.mem.lock().vote = Some(vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.inner.mem.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced on its own and not waited for: it is written (in order) with the next
        // group and becomes durable with the next append. Waiting here would hold openraft's
        // core task for a whole group per commit-index move. Losing it only means the restart
        // re-learns the commit index from the leader.
        self.inner.mem.lock().committed = committed;
        self.inner.writer.lock().wal.set_committed(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.mem.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            let bytes = postcard::to_stdvec(&e).map_err(|err| log_err(ErrorVerb::Write, err))?;
            encoded.push(StoredEntry {
                log_id: e.log_id,
                bytes: Arc::from(bytes),
            });
        }
        if encoded.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let gens = {
            let mut m = self.inner.mem.lock();
            // An append at or below the last index replaces the tail (as the file does).
            let cut = m.slots.split_off(&encoded[0].log_id.index);
            for s in cut.values() {
                m.drop_slot(s);
            }
            let mut gens = Vec::with_capacity(encoded.len());
            for e in &encoded {
                let generation = m.next_gen;
                m.next_gen += 1;
                m.cache_bytes += e.bytes.len();
                let old = m.slots.insert(
                    e.log_id.index,
                    Slot {
                        log_id: e.log_id,
                        generation,
                        bytes: Some(e.bytes.clone()),
                        loc: None,
                    },
                );
                if let Some(old) = old {
                    m.drop_slot(&old);
                }
                gens.push(generation);
            }
            gens
        };
        let last = encoded.last().map(|e| e.log_id.index).unwrap_or(0);
        let list = encoded.clone();
        let res = self
            .write(move |wal| {
                let locs = wal.append(&list)?;
                wal.sync()?;
                Ok(locs)
            })
            .await;
        match res {
            Ok(locs) => {
                self.inner.durable.update(|s| s.index = s.index.max(last));
                let mut m = self.inner.mem.lock();
                for ((e, generation), loc) in encoded.iter().zip(gens).zip(locs) {
                    let i = e.log_id.index;
                    if let Some(s) = m.slots.get_mut(&i)
                        && s.generation == generation
                    {
                        s.loc = Some(loc);
                        if s.bytes.is_some() {
                            m.cached.push_back((i, generation));
                        }
                    }
                }
                m.evict();
                drop(m);
                callback.log_io_completed(Ok(()));
            }
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e))),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        {
            let mut m = self.inner.mem.lock();
            let cut = m.slots.split_off(&from);
            for s in cut.values() {
                m.drop_slot(s);
            }
        }
        self.write(move |wal| wal.truncate(from))
            .await
            .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        self.inner
            .durable
            .update(|s| s.index = s.index.min(from.saturating_sub(1)));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(move |wal| wal.purge(log_id))
            .await
            .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        let mut m = self.inner.mem.lock();
        let keep = m.slots.split_off(&(log_id.index + 1));
        let gone = std::mem::replace(&mut m.slots, keep);
        for s in gone.values() {
            m.drop_slot(s);
        }
        if m.purged.is_none_or(|p| p.index < log_id.index) {
            m.purged = Some(log_id);
        }
        Ok(())
    }
}
