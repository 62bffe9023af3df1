//! Durable Raft log and vote in `log.redb`, written by one writer thread with group commit.
//!
//! - Every mutation (append, vote, committed, truncate, purge) goes through one bounded queue
//!   to the writer thread, in call order. The writer drains what has queued and commits it as
//!   **one** redb transaction: one `fdatasync` covers every append that arrived while the
//!   previous one was syncing (group commit).
//! - Entries are readable (`try_get_log_entries`) from the moment `append` returns: until the
//!   writer has committed them they are served from an in-memory `pending` map, so the leader's
//!   replication streams can ship them to followers while the local sync runs.
//! - Every append is reported flushed only after its own sync, on the leader too. openraft 0.9
//!   counts the leader's flushed log in the quorum that advances the commit index, and followers
//!   apply what that index covers. Reporting the leader's own entries flushed when queued (tried
//!   here: the leader's sync overlapped replication) let an entry count as committed while
//!   durable on one follower only: if the leader then crashed before its sync, it could vote
//!   for the other follower, which never had the entry, and the follower that had applied it
//!   would have to truncate an applied entry. The win of that shortcut (one sync instead of two
//!   in a row per commit) is not worth a window where committed state can diverge; group
//!   commit (one sync for everything queued) stays. The state machine still waits on
//!   `LogDurable` before applying (a no-op wait now, kept as the guard).

// `openraft::StorageError` is the error type the storage traits require; it is large, and
// boxing it here would only unbox it again at the trait boundary.
#![allow(clippy::result_large_err)]

use crate::types::{LogId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, OptionalSend, Vote};
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// index -> postcard `Entry<TypeConfig>`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// "vote" | "committed" | "purged" -> postcard value.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// Commands queued to the writer thread (bounded: openraft has few appends in flight).
const WRITER_QUEUE_MAX: usize = 1024;
/// Commands the writer folds into one transaction at most.
const WRITER_GROUP_MAX: usize = 256;

/// How far the local log is durable, for `StateStore::apply` (see the module docs).
#[derive(Debug)]
pub struct LogDurable {
    tx: watch::Sender<DurableState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DurableState {
    /// Every entry at or below this index that is in the log is durable.
    index: u64,
    /// A commit failed: nothing becomes durable any more.
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

/// An entry queued for the writer and readable until it is committed.
#[derive(Clone)]
struct Pending {
    log_id: LogId,
    bytes: Arc<[u8]>,
}

enum Cmd {
    Append {
        entries: Vec<(u64, Pending)>,
        callback: Option<LogFlushed<TypeConfig>>,
    },
    State {
        key: &'static str,
        bytes: Vec<u8>,
        durable: bool,
        done: oneshot::Sender<Result<(), String>>,
    },
    Truncate {
        from: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Purge {
        log_id: LogId,
        done: oneshot::Sender<Result<(), String>>,
    },
}

struct Inner {
    db: Arc<Database>,
    pending: Mutex<BTreeMap<u64, Pending>>,
    /// The last vote saved (durably) by this replica.
    vote: Mutex<Option<Vote<u64>>>,
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

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

impl LogStore {
    /// Opens (creating if needed) the log in `path` and starts its writer thread.
    pub fn open(path: &Path) -> anyhow::Result<LogStore> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(STATE)?;
        txn.commit()?;
        let (last, vote) = {
            let txn = db.begin_read()?;
            let t = txn.open_table(LOG)?;
            let last = t.last()?.map(|(k, _)| k.value()).unwrap_or(0);
            let s = txn.open_table(STATE)?;
            let vote: Option<Vote<u64>> = match s.get("vote")? {
                Some(v) => Some(postcard::from_bytes(v.value())?),
                None => None,
            };
            (last, vote)
        };
        let db = Arc::new(db);
        let durable = Arc::new(LogDurable::new(last));
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_MAX);
        let inner = Arc::new(Inner {
            db: db.clone(),
            pending: Mutex::new(BTreeMap::new()),
            vote: Mutex::new(vote),
            tx,
            durable: durable.clone(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(db, rx, weak, durable))?;
        Ok(LogStore { inner })
    }

    /// How far this log is durable (the state machine waits on it before applying).
    pub fn durable(&self) -> Arc<LogDurable> {
        self.inner.durable.clone()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| log_err(ErrorVerb::Read, e))?
    }

    fn get_state<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StorageError> {
        let r = || -> Result<Option<T>, BoxErr> {
            let txn = db.begin_read()?;
            let t = txn.open_table(STATE)?;
            match t.get(key)? {
                None => Ok(None),
                Some(v) => Ok(Some(postcard::from_bytes(v.value())?)),
            }
        };
        r().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn send(&self, cmd: Cmd, verb: ErrorVerb) -> Result<(), StorageError> {
        self.inner
            .tx
            .send(cmd)
            .await
            .map_err(|_| log_err(verb, "raft log writer stopped"))
    }

    async fn put_state<T: Serialize>(
        &self,
        key: &'static str,
        v: &T,
        durable: bool,
    ) -> Result<(), StorageError> {
        let bytes =
            postcard::to_stdvec(v).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let (done, rx) = oneshot::channel();
        self.send(
            Cmd::State {
                key,
                bytes,
                durable,
                done,
            },
            ErrorVerb::Write,
        )
        .await?;
        rx.await
            .map_err(|_| io_err(ErrorSubject::Store, ErrorVerb::Write, "writer stopped"))?
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }
}

/// The writer thread: folds queued commands into one transaction per round.
fn writer_loop(
    db: Arc<Database>,
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
        let res = match &failed {
            Some(e) => Err(e.clone()),
            None => commit_group(&db, &group).map_err(|e| e.to_string()),
        };
        if let Err(e) = &res {
            if failed.is_none() {
                tracing::error!(error = %e, "raft log commit failed; this replica stops making entries durable");
            }
            failed = Some(e.clone());
            durable.update(|s| s.failed = true);
        } else {
            // The log is durable up to the last append, minus whatever a later truncate cut.
            durable.update(|s| {
                for c in &group {
                    match c {
                        Cmd::Append { entries, .. } => {
                            if let Some((i, _)) = entries.last() {
                                s.index = s.index.max(*i);
                            }
                        }
                        Cmd::Truncate { from, .. } => s.index = s.index.min(from.saturating_sub(1)),
                        _ => {}
                    }
                }
            });
            if let Some(inner) = inner.upgrade() {
                let mut p = inner.pending.lock();
                for c in &group {
                    if let Cmd::Append { entries, .. } = c {
                        for (i, e) in entries {
                            if p.get(i).is_some_and(|q| q.log_id == e.log_id) {
                                p.remove(i);
                            }
                        }
                    }
                }
            }
        }
        for c in group {
            match c {
                Cmd::Append { callback, .. } => {
                    if let Some(cb) = callback {
                        cb.log_io_completed(res.clone().map_err(std::io::Error::other));
                    }
                }
                Cmd::State { done, .. } | Cmd::Truncate { done, .. } | Cmd::Purge { done, .. } => {
                    let _ = done.send(res.clone());
                }
            }
        }
    }
}

fn commit_group(db: &Database, group: &[Cmd]) -> Result<(), BoxErr> {
    let durable = group.iter().any(|c| match c {
        Cmd::State { durable, .. } => *durable,
        _ => true,
    });
    let mut txn = db.begin_write()?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut state = txn.open_table(STATE)?;
        for c in group {
            match c {
                Cmd::Append { entries, .. } => {
                    for (i, e) in entries {
                        log.insert(*i, &*e.bytes)?;
                    }
                }
                Cmd::State { key, bytes, .. } => {
                    state.insert(*key, bytes.as_slice())?;
                }
                Cmd::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false)?;
                }
                Cmd::Purge { log_id, .. } => {
                    // In the same transaction as the removal: the purge marker is never older
                    // than the missing entries.
                    state.insert("purged", postcard::to_stdvec(log_id)?.as_slice())?;
                    log.retain_in(..=log_id.index, |_, _| false)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let lo = match range.start_bound() {
            Bound::Included(x) => Bound::Included(*x),
            Bound::Excluded(x) => Bound::Excluded(*x),
            Bound::Unbounded => Bound::Unbounded,
        };
        let hi = match range.end_bound() {
            Bound::Included(x) => Bound::Included(*x),
            Bound::Excluded(x) => Bound::Excluded(*x),
            Bound::Unbounded => Bound::Unbounded,
        };
        // Pending entries first, then the committed ones: an entry leaves `pending` only after
        // its commit, so a transaction begun after this copy sees whatever left it meanwhile.
        let pending: BTreeMap<u64, Pending> = self
            .inner
            .pending
            .lock()
            .range((lo, hi))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        // Only unsynced entries asked for (the leader replicating what it just appended): no
        // need to read the file.
        let first_pending = pending.keys().next().copied();
        let only_pending = match (first_pending, lo) {
            (Some(f), Bound::Included(l)) => f == l,
            (Some(f), Bound::Excluded(l)) => Some(f) == l.checked_add(1),
            _ => false,
        } && pending
            .keys()
            .zip(pending.keys().skip(1))
            .all(|(a, b)| a + 1 == *b);
        let stored: Vec<(u64, Vec<u8>)> = if only_pending {
            Vec::new()
        } else {
            self.blocking(move |db| {
                let r = || -> Result<Vec<(u64, Vec<u8>)>, BoxErr> {
                    let txn = db.begin_read()?;
                    let t = txn.open_table(LOG)?;
                    let mut out = Vec::new();
                    for item in t.range::<u64>((lo, hi))? {
                        let (k, v) = item?;
                        out.push((k.value(), v.value().to_vec()));
                    }
                    Ok(out)
                };
                r().map_err(|e| log_err(ErrorVerb::Read, e))
            })
            .await?
        };
        let mut merged: BTreeMap<u64, Arc<[u8]>> =
            stored.into_iter().map(|(k, v)| (k, Arc::from(v))).collect();
        for (k, p) in pending {
            merged.insert(k, p.bytes);
        }
        let mut out = Vec::with_capacity(merged.len());
        for (_, b) in merged {
            out.push(postcard::from_bytes(&b).map_err(|e| log_err(ErrorVerb::Read, e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let pending_last = self
            .inner
            .pending
            .lock()
            .last_key_value()
            .map(|(_, p)| p.log_id);
        let (purged, stored_last) = self
            .blocking(|db| {
                let purged: Option<LogId> = LogStore::get_state(db, "purged")?;
                let r = || -> Result<Option<LogId>, BoxErr> {
                    let txn = db.begin_read()?;
                    let t = txn.open_table(LOG)?;
                    match t.last()? {
                        None => Ok(None),
                        Some((_, v)) => {
                            let e: Entry<TypeConfig> = postcard::from_bytes(v.value())?;
                            Ok(Some(e.log_id))
                        }
                    }
                };
                let last = r().map_err(|e| log_err(ErrorVerb::Read, e))?;
                Ok((purged, last))
            })
            .await?;
        let last = match (pending_last, stored_last) {
            (Some(p), Some(s)) => Some(if p.index >= s.index { p } else { s }),
            (p, s) => p.or(s),
        }
        .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_state("vote", vote, true).await?;
        *self.inner.vote.lock() = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(*self.inner.vote.lock())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own and not waited for: it is written (in order) with the next
        // group and becomes durable with the next append. Waiting here would hold openraft's
        // core task for a whole group commit per commit-index move. Losing it only means the
        // restart re-learns the commit index from the leader.
        let bytes = postcard::to_stdvec(&committed)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let (done, _ignored) = oneshot::channel();
        self.send(
            Cmd::State {
                key: "committed",
                bytes,
                durable: false,
                done,
            },
            ErrorVerb::Write,
        )
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.blocking(|db| Ok(LogStore::get_state::<Option<LogId>>(db, "committed")?.flatten()))
            .await
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
            encoded.push((
                e.log_id.index,
                Pending {
                    log_id: e.log_id,
                    bytes: Arc::from(bytes),
                },
            ));
        }
        if encoded.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        {
            let mut p = self.inner.pending.lock();
            for (i, e) in &encoded {
                p.insert(*i, e.clone());
            }
        }
        self.send(
            Cmd::Append {
                entries: encoded,
                callback: Some(callback),
            },
            ErrorVerb::Write,
        )
        .await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.inner.pending.lock().retain(|i, _| *i < from);
        let (done, rx) = oneshot::channel();
        self.send(Cmd::Truncate { from, done }, ErrorVerb::Delete)
            .await?;
        rx.await
            .map_err(|_| log_err(ErrorVerb::Delete, "writer stopped"))?
            .map_err(|e| log_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        self.send(Cmd::Purge { log_id, done }, ErrorVerb::Delete)
            .await?;
        rx.await
            .map_err(|_| log_err(ErrorVerb::Delete, "writer stopped"))?
            .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        self.inner.pending.lock().retain(|i, _| *i > log_id.index);
        Ok(())
    }
}
