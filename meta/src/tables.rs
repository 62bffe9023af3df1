//! redb tables of the state machine and their key encodings (see docs/meta.md).
//!
//! All integers in keys are big-endian so that byte order is numeric order.

use pond_proto::layout::DirLayout;
use pond_proto::meta::{FileType, InodeAttr};
use pond_proto::{ChainId, InodeId};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

/// Bumped whenever a table's key or value encoding changes. Stored under `meta["format"]`.
/// 2: `InodeAttr::rdev`, FIFO/socket/device inodes (dirent kinds 4–7).
pub const FORMAT_VERSION: u32 = 2;

/// inode id -> postcard `InodeRec`.
pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
/// parent id (8 bytes BE) ++ name bytes -> child id (8 bytes BE) ++ kind (1 byte).
pub const DIRENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dirents");
/// inode (8) ++ client (8) ++ session (8) -> ().
pub const SESSIONS: TableDefinition<&[u8], ()> = TableDefinition::new("sessions");
/// garbage inode id -> postcard `GcRec` (chains still holding its chunks).
pub const GC: TableDefinition<u64, &[u8]> = TableDefinition::new("gc");
/// roots of removed trees still being detached by the collector -> ().
pub const TRASH: TableDefinition<u64, ()> = TableDefinition::new("trash");
/// client (8) ++ request (8) -> postcard `Result<OpReply, PondError>`.
pub const DEDUP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedup");
/// dedup insertion sequence -> dedup key, for FIFO eviction.
pub const DEDUP_ORDER: TableDefinition<u64, &[u8]> = TableDefinition::new("dedup_order");
/// Client leases: client id -> lease deadline (u64 BE, nanoseconds since the epoch, leader time).
pub const LEASES: TableDefinition<u64, &[u8]> = TableDefinition::new("leases");
/// Sessions by client: client (8) ++ inode (8) ++ session (8) -> () (mirror of `sessions`).
pub const CLIENT_SESSIONS: TableDefinition<&[u8], ()> = TableDefinition::new("client_sessions");
/// Scalar state: see the `K_*` keys.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Extended attributes: inode (8 bytes, big-endian) + name -> value. Added without a format
/// bump: a state from an earlier build simply has none (the table is created at open).
pub const XATTRS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("xattrs");

pub const K_FORMAT: &str = "format";
pub const K_LAST_APPLIED: &str = "last_applied";
pub const K_MEMBERSHIP: &str = "membership";
pub const K_NEXT_INODE: &str = "next_inode";
pub const K_ROUND_ROBIN: &str = "round_robin";
pub const K_DEDUP_SEQ: &str = "dedup_seq";
pub const K_CLUSTER: &str = "cluster";
pub const K_SNAPSHOT: &str = "snapshot";

/// The on-disk inode record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRec {
    pub attr: InodeAttr,
    /// Directories: the parent directory (the root is its own parent). Others: unused.
    pub parent: InodeId,
    /// Symlinks: the target.
    pub symlink: Option<String>,
    /// Directories: the default layout of new files and subdirectories.
    pub dir_layout: Option<DirLayout>,
}

/// A garbage inode: the chains that still hold (or may hold) its chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRec {
    pub pending: Vec<ChainId>,
}

pub fn dirent_key(parent: InodeId, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.0.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

/// Key of one extended attribute: the same shape as a directory entry's.
pub fn xattr_key(inode: InodeId, name: &str) -> Vec<u8> {
    dirent_key(inode, name)
}

/// Key range of all entries of `dir` (or all extended attributes of an inode):
/// `[dir, dir + 1)`.
pub fn dir_range(dir: InodeId) -> ([u8; 8], [u8; 8]) {
    (dir.0.to_be_bytes(), (dir.0 + 1).to_be_bytes())
}

pub fn dirent_value(child: InodeId, kind: FileType) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&child.0.to_be_bytes());
    v[8] = match kind {
        FileType::File => 1,
        FileType::Dir => 2,
        FileType::Symlink => 3,
        FileType::Fifo => 4,
        FileType::Socket => 5,
        FileType::CharDevice => 6,
        FileType::BlockDevice => 7,
    };
    v
}

pub fn decode_dirent_value(v: &[u8]) -> Option<(InodeId, FileType)> {
    if v.len() != 9 {
        return None;
    }
    let id = u64::from_be_bytes(v[..8].try_into().ok()?);
    let kind = match v[8] {
        1 => FileType::File,
        2 => FileType::Dir,
        3 => FileType::Symlink,
        4 => FileType::Fifo,
        5 => FileType::Socket,
        6 => FileType::CharDevice,
        7 => FileType::BlockDevice,
        _ => return None,
    };
    Some((InodeId(id), kind))
}

/// The name part of a dirent key.
pub fn dirent_name(k: &[u8]) -> Option<&str> {
    std::str::from_utf8(k.get(8..)?).ok()
}

pub fn session_key(inode: InodeId, client: u64, session: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&inode.0.to_be_bytes());
    k[8..16].copy_from_slice(&client.to_be_bytes());
    k[16..].copy_from_slice(&session.to_be_bytes());
    k
}

pub fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// `CLIENT_SESSIONS` key: client ++ inode ++ session.
pub fn client_session_key(client: u64, inode: InodeId, session: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&client.to_be_bytes());
    k[8..16].copy_from_slice(&inode.0.to_be_bytes());
    k[16..].copy_from_slice(&session.to_be_bytes());
    k
}
