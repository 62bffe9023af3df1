//! Bounds of the storage server, each with the reason for its number. Wire-format bounds are in
//! `pond_proto::data`, client bounds in `pond_client::net::limits`.

use pond_proto::limits::CHUNK_BYTES_MAX;

/// Copy-on-write unit of the chunk engine. A write rewrites only the 64 KiB blocks it touches,
/// so a 4 KiB random write costs one 64 KiB read-modify-write and an append never copies the
/// chunk; a 4 MiB chunk's block list is 64 entries (~1 KiB of metadata per update), a 64 MiB
/// chunk's 1024 (~12 KiB). Smaller blocks would cut write amplification for 4 KiB writes but
/// grow the metadata written per update; 64 KiB keeps both within 16×.
pub const BLOCK_BYTES: u32 = 64 << 10;
/// Checksum unit inside a block: every 4 KiB sector of a chunk has its own CRC32C, so a read
/// verifies (and reads) only the sectors it returns, and an update re-checksums only the
/// sectors it changes. 4 KiB is the page and O_DIRECT unit; a 4 MiB chunk carries 1024 sector
/// CRCs (~5 KiB of record).
pub const SECTOR_BYTES: u32 = 4096;
pub const SECTORS_PER_BLOCK: u32 = BLOCK_BYTES / SECTOR_BYTES;
/// Updates remembered per chunk in its persisted record for exactly-once retries across
/// restarts and head changes: (client, request) → (version, length) of the last 16 updates of
/// the chunk. A client retries one request at a time per chunk within its deadline, so more
/// than 16 newer updates of the same chunk before a retry arrives means the retry is long
/// stale. ~24 B each in the record.
pub const RECENT_UPDATES_MAX: usize = 16;
/// Blocks of the largest chunk.
pub const BLOCKS_PER_CHUNK_MAX: u32 = CHUNK_BYTES_MAX / BLOCK_BYTES;
/// Slots are `u32`: 2^32 × 64 KiB = 256 TiB per target, beyond any single disk here.
pub const SLOTS_PER_TARGET_MAX: u64 = u32::MAX as u64 - 1;

/// Chunk-lock stripes per target: writes to one chunk serialise at the head (DESIGN §4 step 2);
/// 4096 stripes keep unrelated chunks from contending while bounding memory.
pub const CHUNK_LOCK_STRIPES: usize = 4096;
/// Remembered (client, request) → result pairs per target for exactly-once retries. A client
/// retries within seconds; at 100k writes/s a 64k table still covers 0.6 s of history per
/// target and every retry inside a client's deadline in practice; older retries re-apply an
/// identical write (idempotent content, higher version).
pub const DEDUPE_ENTRIES_MAX: usize = 65_536;

/// Attempts to forward an update down the chain before giving up (each waits for a routing
/// change or backs off `FORWARD_RETRY_BACKOFF_MS`): ~10 s, about the meta service's heartbeat
/// timeout plus a routing refresh, so a dead successor is replaced in time.
pub const FORWARD_ATTEMPTS_MAX: u32 = 50;
pub const FORWARD_RETRY_BACKOFF_MS: u64 = 200;
/// Deadline of one hop of forwarding: one chunk write plus its successors' (see the client's
/// `CALL_DEADLINE_MS`).
pub const FORWARD_DEADLINE_MS: u64 = 8_000;

/// Requests served concurrently per connection. Bounds tasks and, with the frame limit, memory.
pub const REQUESTS_IN_FLIGHT_PER_CONN_MAX: usize = 128;
/// Bytes of request payload (writes) in flight per connection: 4 full 64 MiB chunks, or 64
/// 4 MiB writes; the reader stops reading the socket when it is exhausted (backpressure).
pub const PAYLOAD_BYTES_IN_FLIGHT_PER_CONN_MAX: u64 = 256 << 20;
/// Connections one storage node accepts; beyond it new ones are closed at once.
pub const CONNECTIONS_MAX: usize = 4096;
/// A connection must authenticate within this time.
pub const HELLO_TIMEOUT_MS: u64 = 5_000;

/// Scrubber rate: 32 MiB/s per target reads a 1 TB target in ~9 hours without hurting
/// foreground I/O on a disk that does >1 GiB/s.
pub const SCRUB_BYTES_PER_SEC: u64 = 32 << 20;
/// Pause between scrub passes.
pub const SCRUB_PASS_INTERVAL_MS: u64 = 60_000;

/// Chunks copied concurrently by one resync (sequential is simpler and the disk is the limit).
pub const RESYNC_PAGE: u32 = pond_proto::data::CHUNK_LIST_PAGE_MAX;

/// A storage node stops serving its targets once the last heartbeat meta answered was sent this
/// long ago (`Node::fenced`). Meta marks a node offline `heartbeat_timeout_ms` (5 s by default)
/// after the last heartbeat it received, and only then can a chain go on without the node;
/// 3.5 s leaves 1.5 s for the new routing to reach the other nodes and for scheduling delays,
/// while a healthy node renews every `heartbeat_interval_ms` (1 s). Must stay below meta's
/// timeout minus a margin if either is changed.
pub const FENCE_AFTER_MS: u64 = 3_500;
/// Deadline of one heartbeat RPC to meta.
pub const HEARTBEAT_DEADLINE_MS: u64 = 3_000;
/// GC tasks accepted per heartbeat reply and kept until reported done.
pub const GC_TASKS_MAX: usize = 1024;

const _: () = assert!(BLOCK_BYTES.is_multiple_of(4096), "O_DIRECT alignment");
// The fence must fall a margin before meta's default offline timeout (5000 ms).
const _: () = assert!(FENCE_AFTER_MS + 1_000 <= 5_000);
const _: () = assert!(BLOCK_BYTES.is_multiple_of(SECTOR_BYTES));
const _: () = assert!(CHUNK_BYTES_MAX.is_multiple_of(BLOCK_BYTES));
