//! Typed identifiers. Every id and counter has its own newtype so that, for example, a
//! `ChainVersion` can never be passed where a `ChunkVersion` is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A storage or meta node.
    NodeId(u32)
);
id_type!(
    /// One replica slot on one disk of one storage node (a directory here).
    TargetId(u64)
);
id_type!(
    /// A replication chain: an ordered list of targets, head first.
    ChainId(u32)
);
id_type!(
    /// Bumped on every membership or public-state change of a chain.
    ChainVersion(u32)
);
id_type!(
    /// A list of chains that a file's chunks are spread over.
    ChainTableId(u32)
);
id_type!(
    /// Inode number. Allocated by the metadata state machine, never reused.
    InodeId(u64)
);
id_type!(
    /// Version of one chunk's content; the head assigns `committed + 1` to each update.
    ChunkVersion(u32)
);
id_type!(
    /// Version of the whole routing table (nodes, targets, chains).
    RoutingVersion(u64)
);
id_type!(
    /// A client process instance (random at start-up), for exactly-once retries.
    ClientId(u64)
);
impl ClientId {
    /// A new client id from the kernel's entropy (`getrandom(2)`), top bit clear (ids with the
    /// top bit set name storage nodes acting as clients of their successors).
    ///
    /// Never from a user-space RNG: a process forked from one that already drew numbers (a
    /// PyTorch DataLoader worker) starts with a copy of its thread-local RNG, so parent and
    /// child would draw the same id, and the exactly-once caches of meta and storage would
    /// answer one client's requests with the replies to the other's.
    pub fn fresh() -> ClientId {
        ClientId(os_random_u64() >> 1)
    }
}

/// 64 random bits from `getrandom(2)`; panics only if the kernel refuses (no entropy source
/// at all), which leaves no safe id to use.
pub fn os_random_u64() -> u64 {
    let mut buf = [0u8; 8];
    let mut got = 0usize;
    while got < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            assert!(
                err.kind() == std::io::ErrorKind::Interrupted,
                "getrandom(2) failed: {err}"
            );
            continue;
        }
        got += n as usize;
    }
    u64::from_ne_bytes(buf)
}

id_type!(
    /// A request number, unique per `ClientId`.
    RequestId(u64)
);
id_type!(
    /// A write session (a file opened for writing by one client).
    SessionId(u64)
);

impl InodeId {
    /// The root directory.
    pub const ROOT: InodeId = InodeId(1);
}

impl ChainVersion {
    pub fn next(self) -> ChainVersion {
        ChainVersion(self.0.checked_add(1).expect("chain version overflow"))
    }
}

impl ChunkVersion {
    pub fn next(self) -> ChunkVersion {
        ChunkVersion(self.0.checked_add(1).expect("chunk version overflow"))
    }
}

/// Chunk key: inode id then chunk index, both big-endian, so the chunks of one file sort
/// together and in order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 16]);

impl ChunkId {
    pub fn new(inode: InodeId, index: u64) -> ChunkId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&inode.0.to_be_bytes());
        b[8..].copy_from_slice(&index.to_be_bytes());
        ChunkId(b)
    }

    pub fn inode(&self) -> InodeId {
        InodeId(u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes")))
    }

    pub fn index(&self) -> u64 {
        u64::from_be_bytes(self.0[8..].try_into().expect("8 bytes"))
    }

    /// Smallest chunk id of an inode (range scans over one file).
    pub fn first_of(inode: InodeId) -> ChunkId {
        ChunkId::new(inode, 0)
    }

    /// Largest chunk id of an inode.
    pub fn last_of(inode: InodeId) -> ChunkId {
        ChunkId::new(inode, u64::MAX)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({}:{})", self.inode(), self.index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn chunk_id_roundtrip(i in any::<u64>(), n in any::<u64>()) {
            let c = ChunkId::new(InodeId(i), n);
            prop_assert_eq!(c.inode(), InodeId(i));
            prop_assert_eq!(c.index(), n);
        }

        #[test]
        fn chunk_ids_sort_by_inode_then_index(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
            let ca = ChunkId::new(InodeId(a.0), a.1);
            let cb = ChunkId::new(InodeId(b.0), b.1);
            prop_assert_eq!(ca.cmp(&cb), a.cmp(&b));
        }
    }
}
