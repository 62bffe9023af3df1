//! Durable Raft log and vote in `log.redb`. Every append commits with
//! `Durability::Immediate` (one fsync) before openraft is told the entries are flushed.

// `openraft::StorageError` is the error type the storage traits require; it is large, and
// boxing it here would only unbox it again at the trait boundary.
#![allow(clippy::result_large_err)]

use crate::types::{LogId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, OptionalSend, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

/// index -> postcard `Entry<TypeConfig>`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// "vote" | "committed" | "purged" -> postcard value.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn log_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    pub fn open(path: &Path) -> anyhow::Result<LogStore> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(STATE)?;
        txn.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| log_err(ErrorVerb::Write, e))?
    }

    fn get_state<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StorageError> {
        let r = || -> Result<Option<T>, Box<dyn std::error::Error>> {
            let txn = db.begin_read()?;
            let t = txn.open_table(STATE)?;
            match t.get(key)? {
                None => Ok(None),
                Some(v) => Ok(Some(postcard::from_bytes(v.value())?)),
            }
        };
        r().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    fn put_state<T: Serialize>(
        db: &Database,
        key: &str,
        v: &T,
        d: Durability,
    ) -> Result<(), StorageError> {
        let r = || -> Result<(), Box<dyn std::error::Error>> {
            let bytes = postcard::to_stdvec(v)?;
            let mut txn = db.begin_write()?;
            txn.set_durability(d)?;
            {
                let mut t = txn.open_table(STATE)?;
                t.insert(key, bytes.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        };
        r().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }
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
        self.blocking(move |db| {
            let r = || -> Result<Vec<Entry<TypeConfig>>, Box<dyn std::error::Error>> {
                let txn = db.begin_read()?;
                let t = txn.open_table(LOG)?;
                let mut out = Vec::new();
                for item in t.range::<u64>((lo, hi))? {
                    let (_, v) = item?;
                    out.push(postcard::from_bytes(v.value())?);
                }
                Ok(out)
            };
            r().map_err(|e| log_err(ErrorVerb::Read, e))
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.blocking(|db| {
            let purged: Option<LogId> = LogStore::get_state(db, "purged")?;
            let r = || -> Result<Option<LogId>, Box<dyn std::error::Error>> {
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
            let last = r().map_err(|e| log_err(ErrorVerb::Read, e))?.or(purged);
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |db| LogStore::put_state(db, "vote", &vote, Durability::Immediate))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.blocking(|db| LogStore::get_state(db, "vote")).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: it becomes durable with the next append. Losing it only
        // means the restart re-learns the commit index from the leader.
        self.blocking(move |db| LogStore::put_state(db, "committed", &committed, Durability::None))
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
            encoded.push((e.log_id.index, bytes));
        }
        let res = self
            .blocking(move |db| {
                let r = || -> Result<(), Box<dyn std::error::Error>> {
                    let mut txn = db.begin_write()?;
                    txn.set_durability(Durability::Immediate)?;
                    {
                        let mut t = txn.open_table(LOG)?;
                        for (i, b) in &encoded {
                            t.insert(*i, b.as_slice())?;
                        }
                    }
                    txn.commit()?;
                    Ok(())
                };
                r().map_err(|e| log_err(ErrorVerb::Write, e))
            })
            .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |db| {
            let r = || -> Result<(), Box<dyn std::error::Error>> {
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                {
                    let mut t = txn.open_table(LOG)?;
                    t.retain_in(log_id.index.., |_, _| false)?;
                }
                txn.commit()?;
                Ok(())
            };
            r().map_err(|e| log_err(ErrorVerb::Delete, e))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |db| {
            let r = || -> Result<(), Box<dyn std::error::Error>> {
                let bytes = postcard::to_stdvec(&log_id)?;
                let mut txn = db.begin_write()?;
                // Durable: the purge marker must never be older than the missing entries.
                txn.set_durability(Durability::Immediate)?;
                {
                    let mut s = txn.open_table(STATE)?;
                    s.insert("purged", bytes.as_slice())?;
                    let mut t = txn.open_table(LOG)?;
                    t.retain_in(..=log_id.index, |_, _| false)?;
                }
                txn.commit()?;
                Ok(())
            };
            r().map_err(|e| log_err(ErrorVerb::Delete, e))
        })
        .await
    }
}
