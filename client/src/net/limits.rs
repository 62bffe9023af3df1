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
