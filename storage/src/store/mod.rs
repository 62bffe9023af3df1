//! The chunk store seam (`ChunkStore`) and its implementation, the block engine
//! (`engine::Engine`) over two backends: files + redb (`file::FileBackend`, production) and
//! memory (`mem::MemBackend`, benchmarks and simulation). One conformance suite runs against
//! both (`conformance`).

pub mod crc;
pub mod engine;
pub mod file;
pub mod mem;
pub mod uring;

#[cfg(test)]
mod conformance;

use bytes::Bytes;
use pond_proto::data::ChunkSummary;
use pond_proto::{ChainVersion, ChunkId, ChunkVersion, ClientId, ErrorCode, PondError, RequestId};
use std::ops::Bound;

/// Checksum of a chunk's content as stores record it (`VersionInfo::crc`): CRC32C over the
/// CRC32C and length of each `SECTOR_BYTES` piece. The engine keeps the sector CRCs anyway, so
/// it maintains this digest from them alone — no re-read and no CRC combination — and equal
/// content always gives an equal digest.
pub fn content_digest(data: &[u8]) -> u32 {
    digest_of(
        data.chunks(crate::limits::SECTOR_BYTES as usize)
            .map(|b| (crc32c::crc32c(b), b.len() as u32)),
    )
}

pub(crate) fn digest_of(blocks: impl Iterator<Item = (u32, u32)>) -> u32 {
    let mut acc = 0;
    for (crc, len) in blocks {
        let mut rec = [0u8; 8];
        rec[..4].copy_from_slice(&crc.to_le_bytes());
        rec[4..].copy_from_slice(&len.to_le_bytes());
        acc = crc32c::crc32c_append(acc, &rec);
    }
    acc
}

/// One version of a chunk, as the store describes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VersionInfo {
    pub version: ChunkVersion,
    /// Chain version the update was made under.
    pub chain_version: ChainVersion,
    pub length: u32,
    /// `content_digest` of the content.
    pub crc: u32,
    /// The client request that produced it, for exactly-once retries across head changes.
    pub origin: Option<(ClientId, RequestId)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ChunkInfo {
    pub committed: Option<VersionInfo>,
    pub pending: Option<VersionInfo>,
}

impl ChunkInfo {
    pub fn committed_version(&self) -> ChunkVersion {
        self.committed.map(|v| v.version).unwrap_or_default()
    }

    pub fn summary(&self, chunk: ChunkId) -> Option<ChunkSummary> {
        self.committed.map(|c| ChunkSummary {
            chunk,
            version: c.version,
            chain_version: c.chain_version,
            length: c.length,
            crc: c.crc,
        })
    }
}

/// A change staged as the pending version, always relative to the committed content.
#[derive(Clone, Copy, Debug)]
pub enum Mutation<'a> {
    Write { offset: u32, data: &'a [u8] },
    Replace { data: &'a [u8] },
    Truncate { length: u32 },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Space {
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no space left on target")]
    NoSpace,
    #[error("checksum mismatch in chunk {chunk} block {block}")]
    Checksum { chunk: ChunkId, block: u32 },
    #[error("chunk {chunk} has no version {version}")]
    NoSuchVersion {
        chunk: ChunkId,
        version: ChunkVersion,
    },
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// A failpoint fired (tests only): the engine must be dropped and reopened.
    #[error("injected crash at {0:?}")]
    Crashed(CrashPoint),
    #[error("chunk store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NoSpace => ErrorCode::NoSpace,
            StoreError::Checksum { .. } => ErrorCode::Checksum,
            StoreError::NoSuchVersion { .. } => ErrorCode::Unavailable,
            StoreError::OutOfRange(_) => ErrorCode::InvalidArgument,
            StoreError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) => ErrorCode::NoSpace,
            StoreError::Crashed(_) | StoreError::Io(_) => ErrorCode::Io,
            StoreError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn to_pond(&self) -> PondError {
        PondError::new(self.code(), self.to_string())
    }
}

/// Where the engine can be told to "crash" (return `Crashed` and do nothing more), to test that
/// reopening recovers a consistent state from every window of an update.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CrashPoint {
    /// Blocks allocated, nothing written.
    BeforeDataWrite,
    /// Half of the new blocks written (a torn write), not synced.
    MidDataWrite,
    /// All new blocks written, not synced.
    AfterDataWrite,
    /// Blocks synced, metadata not committed.
    AfterDataSync,
    /// Metadata committed, in-memory index not updated yet.
    AfterMetaCommit,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 5] = [
        CrashPoint::BeforeDataWrite,
        CrashPoint::MidDataWrite,
        CrashPoint::AfterDataWrite,
        CrashPoint::AfterDataSync,
        CrashPoint::AfterMetaCommit,
    ];
}

/// Chunks of one target. Methods are blocking when `blocking()` says so (call them from a
/// blocking thread). Invariants every implementation keeps:
/// - the committed version is never modified in place: `stage` builds a new pending version
///   next to it, `commit` switches atomically;
/// - every byte returned by `read` was checked against the CRC32C it was stored with;
/// - after a crash, each chunk is exactly as of its last completed `stage`/`commit`/`install`/
///   `remove` (a pending version may be lost, never half applied).
pub trait ChunkStore: Send + Sync + 'static {
    /// Whether calls block on disk I/O.
    fn blocking(&self) -> bool;

    fn info(&self, chunk: ChunkId) -> Option<ChunkInfo>;

    /// Bytes `offset..offset+length` (clamped to the version's length) of `version`, which
    /// must be the committed or the pending version.
    fn read(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        offset: u32,
        length: u32,
    ) -> Result<Bytes, StoreError>;

    /// Stores `m` applied to the committed content as the pending version `version`,
    /// replacing any pending version. Durable data before it returns (metadata may become
    /// durable only with the next `commit`).
    fn stage(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        chain_version: ChainVersion,
        m: Mutation<'_>,
        origin: Option<(ClientId, RequestId)>,
    ) -> Result<VersionInfo, StoreError>;

    /// `stage`, given the CRC32C of each sector piece of the payload (`crc::piece_crcs` of a
    /// `Write`'s offset and data, or of a `Replace`'s data at offset 0) that the caller already
    /// computed while verifying it, so the store does not checksum those bytes again.
    fn stage_with(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        chain_version: ChainVersion,
        m: Mutation<'_>,
        origin: Option<(ClientId, RequestId)>,
        payload_crcs: Option<&[u32]>,
    ) -> Result<VersionInfo, StoreError> {
        let _ = payload_crcs;
        self.stage(chunk, version, chain_version, m, origin)
    }

    /// `stage_with`, except that the new data need not be durable when it returns: it is
    /// made durable by the next durable record change (`persist_records`, `commit`, ...),
    /// which syncs the data before the records, so no durable record ever names data that is
    /// not. For a replica that forwards the update meanwhile and makes the version durable
    /// (`persist_records`) before it replies. The pending version is visible to `info` at
    /// once. If that data sync fails, the store makes nothing durable any more (every later
    /// durable change fails). Default: `stage_with`.
    fn stage_unsynced(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        chain_version: ChainVersion,
        m: Mutation<'_>,
        origin: Option<(ClientId, RequestId)>,
        payload_crcs: Option<&[u32]>,
    ) -> Result<VersionInfo, StoreError> {
        self.stage_with(chunk, version, chain_version, m, origin, payload_crcs)
    }

    /// Whether the store stopped making changes durable after a failed data sync.
    fn failed(&self) -> bool {
        false
    }

    /// `read` plus the CRC32C of the returned bytes.
    fn read_crc(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        offset: u32,
        length: u32,
    ) -> Result<(Bytes, u32), StoreError> {
        let b = self.read(chunk, version, offset, length)?;
        let c = crc32c::crc32c(&b);
        Ok((b, c))
    }

    /// `read_crc` if it can be answered without waiting for the disk (from memory or the
    /// page cache), else `None` (nothing was waited for): lets a caller on an async thread
    /// answer cached reads at once and hand only the rest to a blocking thread. Default:
    /// `None` (always ask `read_crc`).
    fn read_crc_nowait(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        offset: u32,
        length: u32,
    ) -> Option<Result<(Bytes, u32), StoreError>> {
        let _ = (chunk, version, offset, length);
        None
    }

    /// The committed result of client request `(client, request)` on `chunk`, if it is one of
    /// the updates the chunk's record remembers (exactly-once retries, also after a restart).
    fn applied(
        &self,
        chunk: ChunkId,
        client: ClientId,
        request: RequestId,
    ) -> Option<(ChunkVersion, u32)> {
        let c = self.info(chunk)?.committed?;
        (c.origin == Some((client, request))).then_some((c.version, c.length))
    }

    /// Makes pending `version` the committed one, durably. Committing the already committed
    /// version is a no-op.
    fn commit(&self, chunk: ChunkId, version: ChunkVersion) -> Result<VersionInfo, StoreError>;

    /// `commit` whose switch becomes durable only with the next durable change (any `commit`,
    /// `install`, `remove` or `persist_records`): a crash before that leaves `version` pending
    /// as it was staged, never half applied. For a replica that made the pending version
    /// durable with `persist_records` after staging it and that does not answer version
    /// queries (not the tail): a pending version after a crash is what CRAQ already handles
    /// (reads ask the tail, the head re-drives it, a resync replaces it). Slots the switch
    /// frees are not reused before the next durable change. Default: `commit`.
    fn commit_lazy(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
    ) -> Result<VersionInfo, StoreError> {
        self.commit(chunk, version)
    }

    /// Makes every record change made so far durable (pending versions staged before the call
    /// survive a crash). Default: nothing to do (a store whose records are always durable).
    fn persist_records(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Drops pending `version` (an update the chain refused), keeping the committed one.
    /// Dropping a version that is not pending is a no-op.
    fn abort(&self, chunk: ChunkId, version: ChunkVersion) -> Result<(), StoreError>;

    /// Sets the committed content directly (resync and repair), dropping any pending version.
    fn install(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        chain_version: ChainVersion,
        data: &[u8],
    ) -> Result<VersionInfo, StoreError>;

    /// Deletes a chunk (both versions). Returns whether it existed.
    fn remove(&self, chunk: ChunkId) -> Result<bool, StoreError>;

    /// Chunks in key order within the bounds, at most `limit`.
    fn list(
        &self,
        from: Bound<ChunkId>,
        to: Bound<ChunkId>,
        limit: usize,
    ) -> Vec<(ChunkId, ChunkInfo)>;

    fn space(&self) -> Space;

    /// For tools and tests that need the concrete store (see `downcast_file`).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The file engine behind a store, if it is one.
pub fn downcast_file(
    s: &std::sync::Arc<dyn ChunkStore>,
) -> Option<&engine::Engine<file::FileBackend>> {
    s.as_any().downcast_ref()
}
