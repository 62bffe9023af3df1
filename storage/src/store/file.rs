//! The production backend: one preallocated-on-demand data file of 64 KiB slots per target
//! (`blocks.dat`, positional I/O on the caller's blocking thread) and the chunk records in redb
//! (`chunks.redb`), with a format marker.

use super::StoreError;
use super::engine::{Backend, ChunkRec};
use crate::limits::BLOCK_BYTES;
use bytes::Bytes;
use pond_proto::ChunkId;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
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

pub struct FileBackend {
    dir: PathBuf,
    data: File,
    db: Database,
    capacity_bytes: Option<u64>,
}

fn internal(e: impl std::fmt::Display, what: &str) -> StoreError {
    StoreError::Internal(anyhow::anyhow!("{what}: {e}"))
}

impl FileBackend {
    /// Opens (creating if needed) the target directory `dir`.
    pub fn open(dir: &Path, capacity_bytes: Option<u64>) -> Result<FileBackend, StoreError> {
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
        Ok(FileBackend {
            dir: dir.to_path_buf(),
            data,
            db,
            capacity_bytes,
        })
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
        self.data.write_all_at(data, Self::slot_offset(slot))
    }

    fn read_range(&self, slot: u32, at: u32, len: u32) -> std::io::Result<Bytes> {
        let mut buf = vec![0u8; len as usize];
        self.data
            .read_exact_at(&mut buf, Self::slot_offset(slot) + at as u64)?;
        Ok(Bytes::from(buf))
    }

    fn read_into(&self, slot: u32, at: u32, buf: &mut [u8]) -> std::io::Result<()> {
        self.data
            .read_exact_at(buf, Self::slot_offset(slot) + at as u64)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.data.sync_data()
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
