//! Conversions between pond's namespace types and the FUSE reply types, and the errno of
//! every client error (one place).

use fuse3::raw::prelude::FileAttr;
use fuse3::{Errno, FileType as FuseType, Timestamp as FuseTime};
use pond_client::ClientError;
use pond_proto::meta::{FileType, InodeAttr, Timestamp};

/// What `st_blksize` says for files: the largest FUSE write, so `cp` and friends use big
/// buffers.
pub const FILE_BLKSIZE: u32 = 1 << 20;

pub fn errno(e: &ClientError) -> Errno {
    Errno::from(e.errno())
}

pub fn kind(k: FileType) -> FuseType {
    match k {
        FileType::File => FuseType::RegularFile,
        FileType::Dir => FuseType::Directory,
        FileType::Symlink => FuseType::Symlink,
        FileType::Fifo => FuseType::NamedPipe,
        FileType::Socket => FuseType::Socket,
        FileType::CharDevice => FuseType::CharDevice,
        FileType::BlockDevice => FuseType::BlockDevice,
    }
}

pub fn time(t: Timestamp) -> FuseTime {
    FuseTime::new(t.sec, t.nsec)
}

pub fn from_time(t: FuseTime) -> Timestamp {
    Timestamp {
        sec: t.sec,
        nsec: t.nsec,
    }
}

pub fn file_attr(a: &InodeAttr) -> FileAttr {
    FileAttr {
        ino: a.inode.0,
        size: a.size,
        // st_blocks counts 512-byte units of the logical size: pond does not expose holes.
        blocks: a.size.div_ceil(512),
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        kind: kind(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        // FUSE carries the kernel's 32-bit dev_t encoding; pond stores what mknod was given.
        rdev: a.rdev as u32,
        blksize: if a.kind == FileType::File {
            FILE_BLKSIZE
        } else {
            4096
        },
    }
}

/// `access(2)` against mode bits, for kernels that call `access` (only without
/// `default_permissions`). Root passes read/write always and execute when any x bit is set.
pub fn access_ok(a: &InodeAttr, uid: u32, gid: u32, mask: i32) -> bool {
    if mask == libc::F_OK {
        return true;
    }
    let want = (mask & 0o7) as u32;
    if uid == 0 {
        let x_needed = want & 1 != 0;
        return !x_needed || a.kind == FileType::Dir || a.mode & 0o111 != 0;
    }
    let bits = if uid == a.uid {
        (a.mode >> 6) & 0o7
    } else if gid == a.gid {
        (a.mode >> 3) & 0o7
    } else {
        a.mode & 0o7
    };
    bits & want == want
}

#[cfg(test)]
mod tests {
    use super::*;
    use pond_proto::ErrorCode;
    use pond_proto::InodeId;

    fn attr(kind: FileType, mode: u32) -> InodeAttr {
        InodeAttr {
            inode: InodeId(7),
            kind,
            mode,
            uid: 10,
            gid: 20,
            nlink: 1,
            size: 1000,
            atime: Timestamp { sec: 1, nsec: 2 },
            mtime: Timestamp {
                sec: 3,
                nsec: 999_999_999,
            },
            ctime: Timestamp { sec: 5, nsec: 6 },
            layout: None,
            truncate_version: 0,
            rdev: 0,
        }
    }

    #[test]
    fn attrs_keep_nanoseconds_and_special_bits() {
        let a = file_attr(&attr(FileType::File, 0o4755));
        assert_eq!(a.perm, 0o4755);
        assert_eq!(a.kind, FuseType::RegularFile);
        assert_eq!((a.mtime.sec, a.mtime.nsec), (3, 999_999_999));
        assert_eq!(a.blocks, 2);
        assert_eq!(a.blksize, FILE_BLKSIZE);
        assert_eq!(
            file_attr(&attr(FileType::Symlink, 0o777)).kind,
            FuseType::Symlink
        );
    }

    #[test]
    fn errnos_of_client_errors() {
        let cases = [
            (ErrorCode::NotFound, libc::ENOENT),
            (ErrorCode::Exists, libc::EEXIST),
            (ErrorCode::NotEmpty, libc::ENOTEMPTY),
            (ErrorCode::NotDir, libc::ENOTDIR),
            (ErrorCode::IsDir, libc::EISDIR),
            (ErrorCode::InvalidArgument, libc::EINVAL),
            (ErrorCode::NameTooLong, libc::ENAMETOOLONG),
            (ErrorCode::NoSpace, libc::ENOSPC),
            (ErrorCode::TooManyLinks, libc::EMLINK),
            (ErrorCode::NotSupported, libc::EOPNOTSUPP),
            (ErrorCode::Unavailable, libc::EIO),
        ];
        for (code, want) in cases {
            // fuse3 hands the kernel a negated errno; compare magnitudes.
            let e: i32 = errno(&ClientError::from(code)).into();
            assert_eq!(e.abs(), want, "{code:?}");
        }
    }

    #[test]
    fn access_checks_owner_group_other() {
        let a = attr(FileType::File, 0o640);
        assert!(access_ok(&a, 10, 99, libc::R_OK | libc::W_OK));
        assert!(access_ok(&a, 11, 20, libc::R_OK));
        assert!(!access_ok(&a, 11, 20, libc::W_OK));
        assert!(!access_ok(&a, 11, 21, libc::R_OK));
        assert!(access_ok(&a, 11, 21, libc::F_OK));
        assert!(access_ok(&a, 0, 0, libc::W_OK));
        assert!(!access_ok(&a, 0, 0, libc::X_OK));
    }
}
