//! Protocol-wide bounds, each with the reason for its number. Crate-local limits live in each
//! crate's own `limits.rs`.

/// POSIX NAME_MAX on Linux.
pub const NAME_BYTES_MAX: usize = 255;
/// POSIX PATH_MAX on Linux (including the terminating NUL there; we count bytes without it).
pub const PATH_BYTES_MAX: usize = 4096;
/// Symlink targets are paths.
pub const SYMLINK_BYTES_MAX: usize = PATH_BYTES_MAX;
/// Smallest chunk: 64 KiB keeps per-chunk metadata overhead below 0.1%.
pub const CHUNK_BYTES_MIN: u32 = 64 << 10;
/// Largest chunk: 64 MiB bounds the memory of one full-chunk replace during resync.
pub const CHUNK_BYTES_MAX: u32 = 64 << 20;
/// Default chunk: 4 MiB, as 3FS; large enough for sequential throughput, small enough to stripe.
pub const CHUNK_BYTES_DEFAULT: u32 = 4 << 20;
/// A chain longer than 8 replicas costs more latency than it buys durability.
pub const CHAIN_TARGETS_MAX: usize = 8;
/// A file may spread over at most this many chains.
pub const STRIPE_MAX: u32 = 256;
/// Largest control-plane message (a readdir page or a routing table of a big cluster).
pub const CONTROL_MESSAGE_BYTES_MAX: usize = 16 << 20;
/// Largest readdir page a server returns, whatever the client asked for.
pub const READDIR_PAGE_MAX: u32 = 4096;
/// Hard links to one inode (ext4's limit).
pub const LINKS_MAX: u32 = 65_000;
/// Largest file size: 2^63 - 1 (what `off_t` can address).
pub const FILE_BYTES_MAX: u64 = i64::MAX as u64;
/// Symlinks followed during one path resolution (Linux MAXSYMLINKS).
pub const SYMLINK_FOLLOW_MAX: usize = 40;
/// Longest extended attribute name, namespace prefix included (Linux XATTR_NAME_MAX).
pub const XATTR_NAME_BYTES_MAX: usize = 255;
/// Largest extended attribute value (Linux XATTR_SIZE_MAX).
pub const XATTR_VALUE_BYTES_MAX: usize = 64 << 10;
/// Extended attributes of one inode, names and values together: bounds a listing and what
/// one inode can hold of the state machine (ext4 allows about one block; 1 MiB is generous).
pub const XATTR_INODE_BYTES_MAX: usize = 1 << 20;
/// Namespaces stored: `user.` (files and directories) and `trusted.` (the kernel admits only
/// CAP_SYS_ADMIN callers). `security.` and `system.` (capabilities, ACLs) are refused.
pub const XATTR_NAMESPACES: [&str; 2] = ["user.", "trusted."];

const _: () = assert!(CHUNK_BYTES_MIN.is_power_of_two());
const _: () = assert!(CHUNK_BYTES_MAX.is_power_of_two());
const _: () = assert!(CHUNK_BYTES_MAX.is_multiple_of(4096), "O_DIRECT alignment");
