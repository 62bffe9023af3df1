//! The Raft log store openraft uses: `raft_log::Wal` files written by one writer thread with
//! group commit, and an in-memory view (log ids, recent entry bytes, file locations) that
//! every read is served from.
//!
//! - Every mutation (append, vote, committed, truncate, purge) goes through one bounded queue
//!   to the writer thread, in call order. The writer drains what has queued and writes it as
//!   **one** group: one `pwrite` of all the records and one `fdatasync` (see `raft_log`).
//! - Entries are readable (`try_get_log_entries`) from the moment `append` returns: their
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

// `openraft::StorageError` is the error type the storage traits require; it is large, and
// boxing it here would only unbox it again at the trait boundary.
#![allow(clippy::result_large_err)]

use crate::raft_log::{Loc, StoredEntry, Wal, read_at};
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
use tokio::sync::{mpsc, oneshot, watch};

/// Commands queued to the writer thread (bounded: openraft has few appends in flight).
const WRITER_QUEUE_MAX: usize = 1024;
/// Commands the writer folds into one group at most.
const WRITER_GROUP_MAX: usize = 256;
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

type Done = oneshot::Sender<Result<(), String>>;

enum Cmd {
    Append {
        /// (generation, entry): the generation tells a re-appended index from the old one.
        entries: Vec<(u64, StoredEntry)>,
        callback: LogFlushed<TypeConfig>,
    },
    Committed(Option<LogId>),
    Vote {
        vote: Vote<u64>,
        done: Done,
    },
    Truncate {
        from: u64,
        done: Done,
    },
    Purge {
        upto: LogId,
        done: Done,
    },
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
    tx: mpsc::Sender<Cmd>,
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
        let durable = Arc::new(LogDurable::new(last));
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_MAX);
        let inner = Arc::new(Inner {
            mem: Mutex::new(mem),
            tx,
            durable: durable.clone(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(wal, rx, weak, durable))?;
        Ok(LogStore { inner })
    }

    /// How far this log is durable (the state machine waits on it before applying).
    pub fn durable(&self) -> Arc<LogDurable> {
        self.inner.durable.clone()
    }

    async fn send(&self, cmd: Cmd, verb: ErrorVerb) -> Result<(), StorageError> {
        self.inner
            .tx
            .send(cmd)
            .await
            .map_err(|_| log_err(verb, "raft log writer stopped"))
    }

    async fn call(
        &self,
        make: impl FnOnce(Done) -> Cmd,
        subject: ErrorSubject<u64>,
        verb: ErrorVerb,
    ) -> Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        self.send(make(done), verb).await?;
        rx.await
            .map_err(|_| io_err(subject.clone(), verb, "raft log writer stopped"))?
            .map_err(|e| io_err(subject, verb, e))
    }
}

/// The writer thread: writes each group of queued commands with one sync.
fn writer_loop(
    mut wal: Wal,
    mut rx: mpsc::Receiver<Cmd>,
    inner: std::sync::Weak<Inner>,
    durable: Arc<LogDurable>,
) {
    let mut failed: Option<String> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < WRITER_GROUP_MAX {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let mut written: Vec<(u64, u64, Loc)> = Vec::new();
        let res = match &failed {
            Some(e) => Err(e.clone()),
            None => write_group(&mut wal, &group, &mut written).map_err(|e| e.to_string()),
        };
        if let Err(e) = &res {
            if failed.is_none() {
                tracing::error!(error = %e, "raft log write failed; this replica stops making entries durable");
            }
            failed = Some(e.clone());
            durable.update(|s| s.failed = true);
        } else {
            // The log is durable up to the last append, minus whatever a later truncate cut.
            durable.update(|s| {
                for c in &group {
                    match c {
                        Cmd::Append { entries, .. } => {
                            if let Some((_, e)) = entries.last() {
                                s.index = s.index.max(e.log_id.index);
                            }
                        }
                        Cmd::Truncate { from, .. } => s.index = s.index.min(from.saturating_sub(1)),
                        _ => {}
                    }
                }
            });
            if let Some(inner) = inner.upgrade() {
                let mut m = inner.mem.lock();
                m.segs = wal.segment_files();
                for (i, generation, loc) in written {
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
            }
        }
        for c in group {
            match c {
                Cmd::Append { callback, .. } => {
                    callback.log_io_completed(res.clone().map_err(std::io::Error::other));
                }
                Cmd::Vote { done, .. } | Cmd::Truncate { done, .. } | Cmd::Purge { done, .. } => {
                    let _ = done.send(res.clone());
                }
                Cmd::Committed(_) => {}
            }
        }
    }
}

fn write_group(
    wal: &mut Wal,
    group: &[Cmd],
    written: &mut Vec<(u64, u64, Loc)>,
) -> Result<(), crate::raft_log::WalError> {
    let mut sync = false;
    for c in group {
        match c {
            Cmd::Append { entries, .. } => {
                let list: Vec<StoredEntry> = entries.iter().map(|(_, e)| e.clone()).collect();
                let locs = wal.append(&list)?;
                for ((generation, e), loc) in entries.iter().zip(locs) {
                    written.push((e.log_id.index, *generation, loc));
                }
                sync = true;
            }
            Cmd::Committed(c) => wal.set_committed(*c)?,
            Cmd::Vote { vote, .. } => wal.save_vote(*vote)?,
            Cmd::Truncate { from, .. } => wal.truncate(*from)?,
            Cmd::Purge { upto, .. } => wal.purge(*upto)?,
        }
    }
    if sync {
        wal.sync()
    } else {
        // Committed-index records alone are not synced (durable with the next append).
        wal.write_unsynced()
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
        self.call(
            |done| Cmd::Vote { vote, done },
            ErrorSubject::Vote,
            ErrorVerb::Write,
        )
        .await?;
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
        self.send(Cmd::Committed(committed), ErrorVerb::Write).await
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
        let entries = {
            let mut m = self.inner.mem.lock();
            // An append at or below the last index replaces the tail (as the file does).
            let cut = m.slots.split_off(&encoded[0].log_id.index);
            for s in cut.values() {
                m.drop_slot(s);
            }
            let mut out = Vec::with_capacity(encoded.len());
            for e in encoded {
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
                out.push((generation, e));
            }
            out
        };
        self.send(Cmd::Append { entries, callback }, ErrorVerb::Write)
            .await
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
        self.call(
            |done| Cmd::Truncate { from, done },
            ErrorSubject::Logs,
            ErrorVerb::Delete,
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.call(
            |done| Cmd::Purge { upto: log_id, done },
            ErrorSubject::Logs,
            ErrorVerb::Delete,
        )
        .await?;
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
