//! Namespace requests and replies of the metadata service.

use crate::cluster::{ChainTable, Heartbeat, HeartbeatReply, RoutingInfo};
use crate::error::PondError;
use crate::ids::*;
use crate::layout::{DirLayout, Layout, PlacementHint};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    /// Named pipe (`mkfifo`): only its inode lives in pond; the kernel of each host does the
    /// piping.
    Fifo,
    /// Unix socket node (`bind` on a path): an inode only, like a FIFO.
    Socket,
    /// Character device node: an inode with a device number (`rdev`).
    CharDevice,
    /// Block device node: an inode with a device number (`rdev`).
    BlockDevice,
}

impl FileType {
    /// FIFOs, sockets and device nodes: inodes without data in pond (`mknod`).
    pub fn is_special(self) -> bool {
        matches!(
            self,
            FileType::Fifo | FileType::Socket | FileType::CharDevice | FileType::BlockDevice
        )
    }
}

/// Nanoseconds since the Unix epoch, stamped by the Raft leader so that apply is deterministic.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    /// The wall clock now (a clock before 1970 reads as the epoch).
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InodeAttr {
    pub inode: InodeId,
    pub kind: FileType,
    /// Permission bits including suid/sgid/sticky (no file-type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Files only.
    pub layout: Option<Layout>,
    /// Bumped by every truncate, so length reports that raced one can be refused.
    pub truncate_version: u64,
    /// Device number of a character or block device node (Linux `dev_t` encoding); 0 for
    /// every other kind.
    pub rdev: u64,
}

/// Which attributes a setattr changes; `None` leaves one unchanged.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Truncate or extend.
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
}

impl SetAttr {
    /// The permission bits an inode of `kind` with `mode` has after this change: the mode
    /// set (its permission bits), else, for a change of owner or group of a non-directory,
    /// `mode` without set-user-ID, and without set-group-ID when the group may execute
    /// (without group execute it marks mandatory locking, which Linux keeps) — Linux's chown
    /// rule. Meta applies it against the mode as its log orders it, so a client needs no read
    /// of the inode before a chown.
    pub fn mode_after(&self, kind: FileType, mode: u32) -> u32 {
        const SUID: u32 = 0o4000;
        const SGID: u32 = 0o2000;
        const XGRP: u32 = 0o010;
        if let Some(m) = self.mode {
            return m & 0o7777;
        }
        if (self.uid.is_none() && self.gid.is_none()) || kind == FileType::Dir {
            return mode;
        }
        let m = mode & !SUID;
        if m & XGRP != 0 { m & !SGID } else { m }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub inode: InodeId,
    pub kind: FileType,
}

/// The caller, for ownership of new inodes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RenameMode {
    /// POSIX rename: replace a compatible target.
    Replace,
    /// RENAME_NOREPLACE: fail with EEXIST if the target exists.
    NoReplace,
    /// RENAME_EXCHANGE: atomically swap the two entries.
    Exchange,
}

/// gRPC metadata key carrying the caller's `ClientId` (decimal) on write requests. Together
/// with `REQUEST_ID_HEADER` it lets the state machine answer a retried write from its dedupe
/// table instead of applying it twice.
pub const CLIENT_ID_HEADER: &str = "x-pond-client";
/// gRPC metadata key carrying the `RequestId` (decimal), unique per client.
pub const REQUEST_ID_HEADER: &str = "x-pond-request";

/// A namespace request. Reads are served linearizably through the leader; writes are applied
/// as Raft log entries (many requests may share one entry).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum MetaRequest {
    // --- reads ---
    Lookup {
        parent: InodeId,
        name: String,
    },
    GetAttr {
        inode: InodeId,
    },
    /// Entries with names strictly after `after`, in name order, at most `limit`.
    ReadDir {
        dir: InodeId,
        after: Option<String>,
        limit: u32,
    },
    /// Like `ReadDir`, with each entry's attributes (FUSE `readdirplus`).
    ReadDirPlus {
        dir: InodeId,
        after: Option<String>,
        limit: u32,
    },
    ReadLink {
        inode: InodeId,
    },
    /// Resolve an absolute path (no symlink following in the last component unless
    /// `follow` is set).
    Resolve {
        path: String,
        follow: bool,
    },
    StatFs,
    GetDirLayout {
        dir: InodeId,
    },
    /// The value of one extended attribute (`NoData` when the inode has none by that name).
    GetXattr {
        inode: InodeId,
        name: String,
    },
    /// The names of an inode's extended attributes, in byte order.
    ListXattr {
        inode: InodeId,
    },
    // --- writes ---
    Mkdir {
        parent: InodeId,
        name: String,
        mode: u32,
        caller: Caller,
    },
    /// Create a file; with `exclusive` an existing entry is EEXIST, otherwise an existing
    /// file is returned as is. Opens a write session when `session` is given.
    Create {
        parent: InodeId,
        name: String,
        mode: u32,
        caller: Caller,
        exclusive: bool,
        hint: PlacementHint,
        session: Option<(ClientId, SessionId)>,
    },
    Symlink {
        parent: InodeId,
        name: String,
        target: String,
        caller: Caller,
    },
    Link {
        inode: InodeId,
        new_parent: InodeId,
        new_name: String,
    },
    Unlink {
        parent: InodeId,
        name: String,
    },
    Rmdir {
        parent: InodeId,
        name: String,
    },
    Rename {
        src_parent: InodeId,
        src_name: String,
        dst_parent: InodeId,
        dst_name: String,
        mode: RenameMode,
    },
    SetAttr {
        inode: InodeId,
        set: SetAttr,
    },
    /// Open an existing file for writing.
    OpenWrite {
        inode: InodeId,
        client: ClientId,
        session: SessionId,
    },
    /// Report the highest written offset (at fsync and periodically); adopted when larger
    /// and no truncate raced it.
    ReportLength {
        inode: InodeId,
        length: u64,
        truncate_version: u64,
    },
    /// Close a write session, reporting the final length.
    CloseWrite {
        inode: InodeId,
        client: ClientId,
        session: SessionId,
        length: u64,
        truncate_version: u64,
    },
    SetDirLayout {
        dir: InodeId,
        layout: DirLayout,
    },
    /// Detach a whole tree in one request; the collector deletes it in the background.
    RemoveTree {
        parent: InodeId,
        name: String,
    },
    /// Register an open file (for reading) so that it survives an unlink by anyone until
    /// `CloseSession`. A session of a client that holds a lease (`RenewLease`) ends when the
    /// lease expires; without a lease it lasts until closed.
    OpenSession {
        inode: InodeId,
        client: ClientId,
        session: SessionId,
    },
    /// End a session opened by `OpenSession`, `OpenWrite` or `Create { session }` without
    /// reporting a length. The last session of an unlinked file sends it to garbage.
    CloseSession {
        inode: InodeId,
        client: ClientId,
        session: SessionId,
    },
    /// Start (`first`) or renew this client's lease: its sessions live until `ttl_ms` after
    /// the leader applies this. A renewal (`first: false`) of a lease that already expired is
    /// `StaleHandle`: the client's sessions were dropped (its unlinked open files may be
    /// gone); it must start a new lease with `first: true`.
    RenewLease {
        client: ClientId,
        ttl_ms: u32,
        first: bool,
    },
    /// End this client's lease and every session it holds (clean shutdown).
    EndLease {
        client: ClientId,
    },
    /// Create a FIFO, socket or device node (`kind.is_special()`); `rdev` only for devices.
    Mknod {
        parent: InodeId,
        name: String,
        kind: FileType,
        mode: u32,
        rdev: u64,
        caller: Caller,
    },
    /// Set an extended attribute (`setxattr(2)`; `mode` carries `XATTR_CREATE` /
    /// `XATTR_REPLACE`). Names are `user.` or `trusted.`, at most `XATTR_NAME_BYTES_MAX`
    /// bytes; values at most `XATTR_VALUE_BYTES_MAX`. Changes the inode's ctime.
    SetXattr {
        inode: InodeId,
        name: String,
        value: Vec<u8>,
        mode: XattrSetMode,
    },
    /// Remove an extended attribute (`NoData` if absent). Changes the inode's ctime.
    RemoveXattr {
        inode: InodeId,
        name: String,
    },
    /// `ReportLength` then `SetAttr` of a file, as one operation: what setting the times of a
    /// file with unreported writes needs (the length report's mtime stamp comes first, the
    /// times set win), in one commit instead of two. Appended last: postcard numbers variants
    /// by position, so logs and dedup records written before it still decode.
    SetAttrReport {
        inode: InodeId,
        set: SetAttr,
        length: u64,
        truncate_version: u64,
    },
}

/// `setxattr(2)` flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum XattrSetMode {
    /// Create or replace.
    Any,
    /// `XATTR_CREATE`: `Exists` if the attribute is already there.
    Create,
    /// `XATTR_REPLACE`: `NoData` if it is not.
    Replace,
}

impl MetaRequest {
    /// Short name of the operation, for tracing spans and logs.
    pub fn name(&self) -> &'static str {
        match self {
            MetaRequest::Lookup { .. } => "lookup",
            MetaRequest::GetAttr { .. } => "getattr",
            MetaRequest::ReadDir { .. } => "readdir",
            MetaRequest::ReadDirPlus { .. } => "readdirplus",
            MetaRequest::ReadLink { .. } => "readlink",
            MetaRequest::Resolve { .. } => "resolve",
            MetaRequest::StatFs => "statfs",
            MetaRequest::GetDirLayout { .. } => "get_dir_layout",
            MetaRequest::Mkdir { .. } => "mkdir",
            MetaRequest::Create { .. } => "create",
            MetaRequest::Symlink { .. } => "symlink",
            MetaRequest::Link { .. } => "link",
            MetaRequest::Unlink { .. } => "unlink",
            MetaRequest::Rmdir { .. } => "rmdir",
            MetaRequest::Rename { .. } => "rename",
            MetaRequest::SetAttr { .. } => "setattr",
            MetaRequest::OpenWrite { .. } => "open_write",
            MetaRequest::ReportLength { .. } => "report_length",
            MetaRequest::CloseWrite { .. } => "close_write",
            MetaRequest::SetDirLayout { .. } => "set_dir_layout",
            MetaRequest::RemoveTree { .. } => "remove_tree",
            MetaRequest::OpenSession { .. } => "open_session",
            MetaRequest::CloseSession { .. } => "close_session",
            MetaRequest::RenewLease { .. } => "renew_lease",
            MetaRequest::EndLease { .. } => "end_lease",
            MetaRequest::Mknod { .. } => "mknod",
            MetaRequest::GetXattr { .. } => "getxattr",
            MetaRequest::ListXattr { .. } => "listxattr",
            MetaRequest::SetXattr { .. } => "setxattr",
            MetaRequest::RemoveXattr { .. } => "removexattr",
            MetaRequest::SetAttrReport { .. } => "setattr_report",
        }
    }
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            MetaRequest::Lookup { .. }
                | MetaRequest::GetAttr { .. }
                | MetaRequest::ReadDir { .. }
                | MetaRequest::ReadDirPlus { .. }
                | MetaRequest::ReadLink { .. }
                | MetaRequest::Resolve { .. }
                | MetaRequest::StatFs
                | MetaRequest::GetDirLayout { .. }
                | MetaRequest::GetXattr { .. }
                | MetaRequest::ListXattr { .. }
        )
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StatFs {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub inodes: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum MetaReply {
    Attr(InodeAttr),
    Dir {
        entries: Vec<DirEntry>,
        more: bool,
    },
    /// Reply to `ReadDirPlus`.
    DirPlus {
        entries: Vec<(DirEntry, InodeAttr)>,
        more: bool,
    },
    Link(String),
    StatFs(StatFs),
    DirLayout(DirLayout),
    Done,
    /// Reply to `GetXattr`.
    Xattr(Vec<u8>),
    /// Reply to `ListXattr`.
    XattrNames(Vec<String>),
}

pub type MetaResult = Result<MetaReply, PondError>;

/// Cluster-manager requests (storage nodes, admin tools).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ClusterRequest {
    Heartbeat(Heartbeat),
    /// The current routing table if newer than `have`.
    GetRouting {
        have: RoutingVersion,
    },
    /// Build chains of `replicas` targets each from the registered targets (each chain's
    /// replicas on distinct nodes) and a chain table over them. Refused if chains exist.
    BootstrapChains {
        replicas: u32,
    },
    /// Raft membership and leadership of the meta group.
    MetaStatus,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MetaMember {
    pub id: u64,
    pub addr: String,
    pub is_leader: bool,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ClusterReply {
    Heartbeat(HeartbeatReply),
    Routing(Option<RoutingInfo>),
    Bootstrapped(ChainTable),
    MetaStatus {
        leader: Option<u64>,
        members: Vec<MetaMember>,
        last_applied: u64,
    },
}

/// An opaque Raft message (postcard-encoded openraft request/response, owned by `meta`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RaftMessage {
    pub payload: Vec<u8>,
}
