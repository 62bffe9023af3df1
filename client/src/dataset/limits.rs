//! Bounds of the dataset layer, each with the reason for its number.

/// Largest sample: one sample is read by one batched request set and held in memory whole;
/// the file API's largest single call (`IO_CALL_BYTES_MAX`, 256 MiB) is the natural ceiling.
pub const SAMPLE_BYTES_MAX: u64 = crate::limits::IO_CALL_BYTES_MAX as u64;

/// Samples in one batch read: bounds the planning vectors and the pieces handed to one
/// `read_chunks` call. 65,536 × 4 KiB = 256 MiB, far beyond any real training batch.
pub const BATCH_SAMPLES_MAX: usize = 65_536;

/// Bytes of one batch: a batch is assembled in memory; with `PREFETCH_BATCHES_MAX` in flight
/// this bounds a reader's memory to 16 GiB in the worst case (the defaults use far less).
pub const BATCH_BYTES_MAX: u64 = 1 << 30;

/// Batches a reader keeps in flight. Two or three hide a round trip; 16 is plenty for any
/// network and keeps memory bounded (`BATCH_BYTES_MAX` each).
pub const PREFETCH_BATCHES_MAX: usize = 16;

/// Files a dataset may span (shards of an index, files of a fixed-record set): each holds one
/// open file (a meta session-less read open, a few hundred bytes of state).
pub const DATASET_FILES_MAX: usize = 1 << 16;

/// Index entries checked by one CRC: 4,096 × 16 B = 64 KiB blocks, so a flipped bit is
/// located to a block of entries and checking costs one pass at ~7 GB/s.
pub const INDEX_BLOCK_ENTRIES: u64 = 4_096;

/// Largest index: 2^28 entries × 16 B = 4 GiB of entries is beyond any single-index dataset
/// we expect; the index is read whole into memory (the sampler, not the index, is O(1)).
pub const INDEX_SAMPLES_MAX: u64 = 1 << 28;

/// Ranks × workers a sampler may be split over.
pub const WORLD_SIZE_MAX: u32 = 1 << 20;

/// Default shard size of `pack`: big enough that the shard count stays small (one open file
/// each), small enough that a failed pack loses little and shards spread over chains.
pub const SHARD_BYTES_DEFAULT: u64 = 256 << 20;

/// Bytes `pack` buffers before writing to a shard (one write call).
pub const PACK_WRITE_BYTES: usize = 8 << 20;

/// Largest Parquet footer (file metadata) read when opening a Parquet row set: footers are
/// kilobytes to a few MiB even for thousands of row groups; this refuses a garbage length
/// before allocating for it.
pub const PARQUET_FOOTER_BYTES_MAX: u64 = 64 << 20;

/// Attempts of `Dataset::open` when the dataset is replaced while it opens: a replace is one
/// rename, so a second attempt succeeds unless replaces come back to back.
pub const OPEN_ATTEMPTS_MAX: u32 = 5;

const _: () = assert!(SAMPLE_BYTES_MAX <= u32::MAX as u64, "entry length is a u32");
const _: () = assert!(BATCH_BYTES_MAX >= SAMPLE_BYTES_MAX);
