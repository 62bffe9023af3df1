//! Every bound of the metadata service, with where its number comes from.

use std::time::Duration;

/// Write requests waiting for the proposer. A full queue pushes back on gRPC handlers (they
/// await a slot) instead of growing memory without bound; 4096 is 64 clients x 64 in flight.
pub const PROPOSE_QUEUE_MAX: usize = 4096;
/// Operations in one Raft entry. One entry is one fsync on every replica, so bigger batches
/// amortise more; 512 small ops stay well below `ENTRY_BYTES_SOFT_MAX` and keep one apply
/// transaction short (a few ms) so reads are not starved.
pub const BATCH_OPS_MAX: usize = 512;
/// A batch stops growing once its encoded requests pass this size (a snapshot chunk and an
/// AppendEntries message must fit in `CONTROL_MESSAGE_BYTES_MAX` = 16 MiB with room to spare).
pub const ENTRY_BYTES_SOFT_MAX: usize = 1 << 20;
/// Raft entries the proposer keeps in flight at once. Fewer slots make bigger batches; on this
/// 2-core machine (3 replicas + 64 clients in one process, `throughput_smoke`) 1, 2 and 4 slots
/// gave ~7.0k, ~6.3k and ~4.8k creates/s; 2 keeps some pipelining for real network latency.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 2;
/// Reads waiting for a read-index round. Same reasoning as `PROPOSE_QUEUE_MAX`.
pub const READ_QUEUE_MAX: usize = 8192;
/// Reads answered behind one `ensure_linearizable` round.
pub const READ_BATCH_MAX: usize = 1024;
/// Remembered (client, request) replies for retried writes. A client retries within its
/// ~10 s budget; at 20k writes/s that is 200k ops, so 262k entries cover a full budget.
pub const DEDUP_ENTRIES_MAX: u64 = 1 << 18;
/// Client lease TTLs accepted by `RenewLease`. At least 2 s: a client renews about every
/// third of its TTL, and a leader election (~1-2 s) must not cost a live client its sessions.
/// At most 10 min: a dead client's unlinked open files are collected within one TTL.
pub const LEASE_TTL_MIN_MS: u32 = 2_000;
pub const LEASE_TTL_MAX_MS: u32 = 600_000;
/// Expired leases ended per Raft entry (each drops all of a client's sessions): bounds one apply.
pub const LEASE_EXPIRE_CLIENTS_MAX: usize = 64;
/// A new leader waits this long before expiring leases: deadlines were stamped by an earlier
/// leader's clock (a guard against clock offsets between replicas), and clients that renewed
/// during the election need a moment to find the new leader. Live clients renew every third
/// of their TTL, long before their deadline, so this only delays the GC of dead clients.
pub const LEASE_EXPIRY_GRACE: Duration = Duration::from_secs(5);
/// Entries of a removed tree the collector detaches per Raft entry: bounds one apply.
pub const TRASH_STEP_ENTRIES_MAX: usize = 1024;
/// Collector steps per tick: 8 x 1024 entries per 200 ms is ~40k entries/s of tree removal.
pub const TRASH_STEPS_PER_TICK: usize = 8;
/// How often the leader's collector looks for trash and stale nodes.
pub const COLLECTOR_INTERVAL: Duration = Duration::from_millis(200);
/// GC tasks handed to one node per heartbeat; a node deletes a few hundred files' chunks per
/// second, more only queues on the node.
pub const GC_TASKS_PER_HEARTBEAT_MAX: usize = 256;
/// Chunks of an unlinked file are handed out for deletion only once this leader has known the
/// file's GC record this long (a new leader starts counting afresh). Clients open files for
/// reading without waiting for a session and register it shortly after
/// (`pond_client::limits::READ_SESSION_DELAY_MS`); a reader whose file was unlinked before its
/// session landed reads on for `READ_UNREGISTERED_SAFE_MS` (4 s) at most, inside this grace.
pub const GC_GRACE: Duration = Duration::from_secs(5);
/// Most GC records whose first sighting a leader remembers; past it the table starts over
/// (every record's grace starts again: later deletion, never earlier).
pub const GC_SEEN_MAX: usize = 1 << 20;
/// A GC task handed out but not reported done is handed out again after this long.
pub const GC_TASK_REISSUE: Duration = Duration::from_secs(30);
/// Used/capacity figures are proposed at most this often per node (they only feed statfs).
pub const USAGE_UPDATE_INTERVAL: Duration = Duration::from_secs(10);
/// Deadline of one Raft RPC (append, vote). Openraft passes its own TTL; this caps it.
pub const RAFT_RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one snapshot chunk (up to `SNAPSHOT_CHUNK_BYTES`).
pub const RAFT_SNAPSHOT_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Snapshot chunk: 4 MiB is well below the 16 MiB control-message cap.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 << 20;
/// Deadline of a client request inside the server (proposal or read-index wait).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// Default chunk size and stripe for directories without a layout.
pub const DEFAULT_STRIPE_MAX: u32 = 8;
/// Raft timing: heartbeat 100 ms, election 800..1600 ms (loopback and LAN; fsync is ~3 ms).
pub const RAFT_HEARTBEAT_MS: u64 = 100;
pub const RAFT_ELECTION_MIN_MS: u64 = 800;
pub const RAFT_ELECTION_MAX_MS: u64 = 1600;
/// Leader-lease reads (`lease.rs`): served locally while a quorum acknowledged an
/// AppendEntries sent less than this long ago. openraft's followers refuse votes for
/// `RAFT_ELECTION_MAX_MS` after hearing from the leader, so half of it leaves 800 ms for clock
/// drift and metric-reporting delay; heartbeats (100 ms) keep the acknowledgement far younger.
pub const READ_LEASE: Duration = Duration::from_millis(RAFT_ELECTION_MAX_MS / 2);
/// Apply commits are not fsynced (the log is durable); every this many entries one is, so
/// that redb can reuse freed pages (it only does after a durable commit) and a crash replays
/// at most this many entries.
pub const STATE_DURABLE_EVERY_ENTRIES: u64 = 1024;
/// Log entries kept after a snapshot so a briefly lagging follower catches up from the log
/// instead of receiving a whole snapshot.
pub const LOG_KEEP_AFTER_SNAPSHOT: u64 = 1000;

const _: () = assert!(BATCH_OPS_MAX <= PROPOSE_QUEUE_MAX);
const _: () = assert!(READ_BATCH_MAX <= READ_QUEUE_MAX);
const _: () = assert!(RAFT_HEARTBEAT_MS * 4 < RAFT_ELECTION_MIN_MS);
const _: () = assert!(READ_LEASE.as_millis() as u64 * 2 <= RAFT_ELECTION_MAX_MS);
const _: () = assert!(RAFT_HEARTBEAT_MS * 4 < READ_LEASE.as_millis() as u64);
const _: () =
    assert!((SNAPSHOT_CHUNK_BYTES as usize) < pond_proto::limits::CONTROL_MESSAGE_BYTES_MAX / 2);
