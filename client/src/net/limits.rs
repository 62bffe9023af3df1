//! Bounds of the data-plane client, each with its reason. Wire-format bounds live in
//! `pond_proto::data`.

/// Default deadline of one data-plane call. A 64 MiB chunk at a pessimistic 100 MiB/s through
/// three fsyncing replicas takes under 2 s; 10 s leaves room for a loaded disk without letting a
/// dead peer hang a caller for long.
pub const CALL_DEADLINE_MS: u64 = 10_000;
/// Connect timeout (inside the call deadline): loopback and LAN connects take microseconds, a
/// dead host is detected by this.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Requests in flight on one connection. Enough for queue depth 64 from several callers; each
/// reply is at most one frame (`FRAME_PAYLOAD_BYTES_MAX`), so this also bounds the memory a
/// connection can pin in replies not yet consumed.
pub const IN_FLIGHT_PER_CONN_MAX: usize = 256;
/// Frames queued for the writer task of one connection before callers wait.
pub const SEND_QUEUE_PER_CONN: usize = 64;
/// Read buffer granularity: big enough that a 4 KiB read reply and its neighbours arrive in
/// one syscall.
pub const READ_BUF_BYTES: usize = 256 << 10;

/// Payloads of at least this many bytes are received into their own buffer from the receive
/// pool (`bufpool`) instead of the connection's read buffer: 64 KiB is one chunk-engine block;
/// smaller replies (4 KiB reads) keep arriving many per syscall in the shared buffer.
pub const POOLED_PAYLOAD_MIN: usize = 64 << 10;
/// Largest pooled buffer class: a 4 MiB chunk (the default chunk size) plus room to the next
/// power of two for batched read replies; bigger payloads get a one-off allocation.
pub const POOLED_CLASS_MAX: usize = 8 << 20;
/// Idle receive buffers kept per process: enough for the payloads in flight of a few busy
/// connections (8 × 4 MiB updates) without holding memory a quiet process does not need.
pub const POOL_IDLE_BYTES_MAX: usize = 64 << 20;
