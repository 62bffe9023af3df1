//! Bounds of the file API, each with the reason for its number. Data-plane transport bounds
//! live in `net::limits`, wire-format bounds in `pond_proto::data` and `pond_proto::limits`.

use std::time::Duration;

/// How often the routing table is polled (`GetRouting { have }`) when nothing forces a refresh.
/// Storage heartbeats every ~1 s and the cluster manager marks a node offline after a few
/// missed ones; polling every 2 s keeps the client within one heartbeat timeout of the truth
/// while costing one tiny read per client per 2 s. Errors (`StaleChainVersion`,
/// `TargetNotServing`, a dead head) force an immediate refresh anyway.
pub const ROUTING_POLL_MS: u64 = 2_000;

/// Forced routing refreshes are coalesced: at most one per this interval unless the caller saw
/// a version mismatch (which always refreshes). Stops a storm of failing reads from turning
/// into a storm of meta reads.
pub const ROUTING_REFRESH_MIN_INTERVAL_MS: u64 = 100;

/// Time budget for retrying one chunk operation across replicas and routing changes. A dead
/// chain head is only replaced after the cluster manager's heartbeat timeout (several seconds)
/// plus one routing poll; 30 s covers that with margin, and beyond it the caller gets EIO
/// rather than hanging.
pub const CHUNK_RETRY_BUDGET_MS: u64 = 30_000;

/// Attempts per chunk operation within the time budget: enough to walk every replica of the
/// longest chain (`CHAIN_TARGETS_MAX` = 8) twice with routing refreshes in between.
pub const CHUNK_RETRY_ATTEMPTS_MAX: u32 = 24;

/// First retry backoff; doubled per attempt up to `RETRY_BACKOFF_MAX_MS`. 20 ms is longer than
/// a loopback reconnect and much shorter than a human notices.
pub const RETRY_BACKOFF_MIN_MS: u64 = 20;
/// Backoff cap: half a routing poll, so a waiting retry sees the next routing version quickly.
pub const RETRY_BACKOFF_MAX_MS: u64 = 1_000;

/// A replica that just failed a call is avoided for this long when choosing where to read
/// (unless it is the only one left), so one dead node does not cost every read a timeout.
pub const REPLICA_PENALTY_MS: u64 = 3_000;

/// Write-behind: dirty bytes buffered per open inode before the buffer is flushed even if no
/// chunk is complete. 8 MiB absorbs the kernel's 1 MiB FUSE writes and small random writes
/// while bounding what a crash of the client can lose (an application that needs durability
/// calls fsync).
pub const WRITE_BUFFER_BYTES_MAX: usize = 8 << 20;

/// Write-behind: bytes buffered or in flight per open inode. 64 MiB = 16 default chunks, enough
/// to keep a stripe of several chains busy at loopback speed, and at least one largest chunk (a
/// direct full-chunk write must fit); a writer beyond it waits (backpressure) instead of growing
/// memory.
pub const WRITE_INFLIGHT_BYTES_MAX: usize = 64 << 20;

/// Dirty extents per chunk before the buffer flushes that chunk: random 4 KiB writes would
/// otherwise make merging quadratic.
pub const WRITE_EXTENTS_PER_CHUNK_MAX: usize = 64;

/// A buffered write of at least this many bytes reserves room behind it for the writes that
/// follow (sequential writers: FUSE's 1 MiB writes, `write_all` of big buffers), so the
/// extent grows by one allocation instead of doubling: each doubling copied the extent and
/// faulted in fresh pages (1 MiB writes into a 4 MiB chunk copied 3 MiB more than they wrote).
pub const WRITE_SEQUENTIAL_RESERVE_MIN: usize = 64 << 10;
/// At most this much room is reserved beyond the bytes an extent holds (untouched room costs
/// address space, not memory).
pub const WRITE_SEQUENTIAL_RESERVE_MAX: usize = 8 << 20;

/// Read pieces grouped into one batched read per storage node (the wire allows more; this
/// keeps one reply frame ≤ `READ_BATCH_BYTES_MAX` and latency of the first piece low).
pub const READ_BATCH_ITEMS_MAX: usize = 1024;

/// Chunk pieces of one read or flush in flight at once (per call). Bounds the tasks and
/// reply buffers one large read can create: 64 × 4 MiB = 256 MiB worst case for 4 MiB chunks
/// is avoided by also bounding bytes (`READ_INFLIGHT_BYTES_MAX`).
pub const PIECES_IN_FLIGHT_MAX: usize = 64;

/// Bytes of replies one read call may have outstanding.
pub const READ_INFLIGHT_BYTES_MAX: usize = 64 << 20;

/// Largest single read or write call on a file (one `pread`/`pwrite`): larger transfers are
/// split by `put`/`get` and by callers. 256 MiB keeps one call's buffers bounded.
pub const IO_CALL_BYTES_MAX: usize = 256 << 20;

/// Entries per readdir page requested from meta (the server caps at `READDIR_PAGE_MAX`).
pub const READDIR_PAGE: u32 = 1024;

/// Requests of one batched I/O submission (`batch::BatchIo`). Matches the USRBIO ring sizes
/// people use for data loaders (a few thousand samples per batch).
pub const BATCH_REQUESTS_MAX: usize = 16_384;

/// Batched I/O requests executing at once per submission.
pub const BATCH_IN_FLIGHT_MAX: usize = 256;

/// Transfer unit of `put`/`get` (whole-file copy): 4 default chunks, so a stripe of 4 chains
/// is written in parallel per step.
pub const COPY_STEP_BYTES: usize = 16 << 20;

/// Lease of a client's open-file sessions in meta (renewed every third of it). A client that
/// dies keeps its open-unlinked files alive this long; a client cut off from meta this long
/// loses its sessions (meta answers the next renewal `StaleHandle` and a new lease starts).
pub const SESSION_LEASE_MS: u64 = 30_000;

/// Attributes (and names) the namespace cache (`cache.rs`) holds before it starts over:
/// 65,536 × ~300 B ≈ 20 MB, more than the working set of a stat sweep over a large directory.
pub const META_CACHE_ENTRIES_MAX: usize = 1 << 16;

/// Lookup misses in one directory (within the cache TTL) after which the directory is listed
/// with attributes into the cache. 2: one miss is a single open or stat; the second says
/// "sweep" (`ls -l`, `find`, a loader stat-ing its samples).
pub const DIR_PREFETCH_MISSES: u32 = 2;

/// Entries a directory prefetch fetches at most (4 `ReadDirPlus` pages of `READDIR_PAGE`):
/// a bound on what one lookup miss may cost.
pub const DIR_PREFETCH_ENTRIES_MAX: usize = 4 * READDIR_PAGE as usize;

pub fn routing_poll() -> Duration {
    Duration::from_millis(ROUTING_POLL_MS)
}

const _: () = assert!(WRITE_BUFFER_BYTES_MAX <= WRITE_INFLIGHT_BYTES_MAX);
const _: () = assert!(pond_proto::limits::CHUNK_BYTES_MAX as usize <= WRITE_INFLIGHT_BYTES_MAX);
const _: () = assert!(READ_BATCH_ITEMS_MAX <= pond_proto::data::READ_BATCH_ITEMS_MAX);
const _: () = assert!(RETRY_BACKOFF_MIN_MS <= RETRY_BACKOFF_MAX_MS);

/// A chunk's preferred replica is read from while it has at most this many requests
/// outstanding beyond the least-loaded replica of the chain (routing.rs): enough for a
/// sequential reader's read-ahead within one chunk, few enough that a hot chunk's reads still
/// spread over every replica.
pub const READ_AFFINITY_SLACK: u32 = 8;

/// A file opened read-only is held in meta by a session registered this long after the open,
/// in the background, if a handle is still open then: a short read (open, read, close) costs
/// no meta commit at all. Until then the file is held by meta's GC grace
/// (`pond_meta::limits::GC_GRACE`, 5 s: unlinked files' chunks are deleted no sooner).
pub const READ_SESSION_DELAY_MS: u64 = 50;
/// A read-only handle whose file was unlinked before its session could be registered reads on
/// for at most this long after the open (inside meta's 5 s GC grace), then answers ESTALE
/// instead of reading chunks that may be gone.
pub const READ_UNREGISTERED_SAFE_MS: u64 = 4_000;
