//! Bounds of the executor, each with its reason.

/// Tasks one executor runs at once. Each task is its own DuckDB instance with its own memory
/// limit and threads, so this times `TaskLimits::memory_bytes` bounds the executor's memory;
/// 4 keeps a 2-core node from thrashing while a slow task waits on input.
pub const TASKS_MAX: usize = 4;

/// Largest memory limit a task may ask for: a task must never be able to starve the data path
/// of the storage process that hosts it.
pub const TASK_MEMORY_BYTES_MAX: u64 = 8 << 30;

/// Smallest memory limit DuckDB runs useful work in.
pub const TASK_MEMORY_BYTES_MIN: u64 = 16 << 20;

/// Largest thread count a task may ask for.
pub const TASK_THREADS_MAX: u32 = 16;

/// Longest deadline a task may ask for (1 hour).
pub const TASK_DEADLINE_MS_MAX: u64 = 3_600_000;

/// Inputs one task may name (files over all inputs).
pub const TASK_FILES_MAX: usize = 4096;

/// Spill space per task, as a multiple of its memory limit (DuckDB's `max_temp_directory_size`):
/// lets big aggregations spill into the task's own directory without filling the disk.
pub const TASK_SPILL_FACTOR: u64 = 4;

/// Time to receive the hello and the task after accepting a connection.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Pieces in which a Parquet output is copied into pond.
pub const OUTPUT_COPY_BYTES: usize = 8 << 20;

/// How often an executor checks that its address is in the registry (`REGISTRY_DIR`). The
/// registry exists only once a session asked for executors, so that clusters that never run a
/// query keep their namespace untouched; one stat per node per period is the cost.
pub const REGISTRY_POLL_MS: u64 = 2_000;

/// Pause between attempts to connect the executor's client while meta is not up yet.
pub const CLIENT_CONNECT_RETRY_MS: u64 = 1_000;

/// Bytes asked of the local chunk engine in one read batch.
pub const LOCAL_READ_BATCH_BYTES: u64 = 16 << 20;

/// Input files one task copies in at once (each file's reads and writes are pipelined too):
/// tasks of a reduce stage name one small file per map task, and one at a time made them wait
/// on open/stat/close round trips.
pub const FETCH_FILES_PARALLEL: usize = 4;

/// Chunks asked of the local chunk engine in one read batch.
pub const LOCAL_READ_BATCH_ITEMS: usize = 256;

/// Buckets one repartitioning task may write (each is a file in pond).
pub const BUCKETS_MAX: usize = 1024;
