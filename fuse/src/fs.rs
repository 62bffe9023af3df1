//! The `fuse3` filesystem: every kernel request becomes a `pond_client::Client` call.
//!
//! - FUSE inode numbers are pond inode ids (the root is 1 in both); generations are 0 because
//!   pond never reuses inode ids. `forget` needs no bookkeeping.
//! - Permission checks are the kernel's (`default_permissions`): it knows the caller's
//!   supplementary groups; this layer passes the caller's uid/gid to meta for new inodes.
//! - Attributes and entries are cached by the kernel for `attr_ttl`/`entry_ttl`. An open keeps
//!   the page cache (`FOPEN_KEEP_CACHE`) only while the file is at the version the cache holds
//!   (size, mtime, truncate version from meta at this open); otherwise the kernel drops it:
//!   close-to-open consistency across clients.
//! - `O_TRUNC` is atomic (fuse3 always accepts the kernel's `FUSE_ATOMIC_O_TRUNC`): the open
//!   truncates, for `O_RDONLY | O_TRUNC` too, and the kernel cuts its cached size and pages
//!   when the open answers, *before* its own ETXTBSY check of a read-only `O_TRUNC` open. So
//!   this layer refuses such an open of a file a process of this host is executing (an open
//!   handle with the exec flag), or the exec would lose its pages mid-load.
//! - Writes go through the client's write-behind buffer; `flush` (every `close(2)`) waits for
//!   them and reports the length to meta, so `stat` after `close` is exact everywhere; `release`
//!   closes the write session.
//! - A file open here stays readable after unlink or rename-over, by this mount or any other
//!   client: the client holds a session on it in meta until its last handle is released.

use crate::MountOptions;
use crate::attr::{access_ok, errno, file_attr, from_time, kind};
use crate::dir::DirHandle;
use bytes::Bytes;
use fuse3::raw::prelude::*;
use fuse3::{Errno, Result};
use futures::Stream;
use futures::stream;
use parking_lot::Mutex;
use pond_client::{Client, ClientError, File, OpenMode};
use pond_proto::layout::PlacementHint;
use pond_proto::meta::{
    Caller, FileType as PondType, RenameMode, SetAttr as PondSetAttr, XattrSetMode,
};
use pond_proto::{ErrorCode, InodeId};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Entries handed to the kernel per readdir call: a 4 KiB readdir buffer holds ~100 plain
/// entries or ~25 with attributes; the rest of what we produce is dropped by fuse3.
const READDIR_BATCH: usize = 128;
const READDIRPLUS_BATCH: usize = 48;
/// Zeros written per step by fallocate's punch-hole/zero-range.
const ZERO_STEP_BYTES: usize = 1 << 20;
/// `FOPEN_KEEP_CACHE` of the FUSE protocol (fuse3 does not export the open flags).
const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `__FMODE_EXEC` as it arrives in `FUSE_OPEN` flags: the kernel opened the file for execve.
const FMODE_EXEC: i32 = 0x20;
/// Inodes whose page-cache version this mount remembers; past it the table starts over (the
/// next open of each forgotten file drops its cache once).
const CACHE_KEYS_MAX: usize = 1 << 16;

/// The version of a file's bytes as the kernel's page cache of this mount holds them: any
/// write (size or mtime moves) or truncate (version) from anywhere changes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct CacheKey {
    size: u64,
    mtime: pond_proto::meta::Timestamp,
    truncate_version: u64,
}

impl CacheKey {
    fn of(a: &pond_proto::meta::InodeAttr) -> CacheKey {
        CacheKey {
            size: a.size,
            mtime: a.mtime,
            truncate_version: a.truncate_version,
        }
    }
}

pub(crate) struct FileHandle {
    file: File,
    /// Bytes went through this handle (write, fallocate) since its last `flush`: only then
    /// does `close(2)` have anything to make durable or report. A handle that wrote nothing
    /// (`open(O_CREAT)` + `close`, the common create) answers `flush` at once and leaves the
    /// session to `release`, which the kernel sends without making `close(2)` wait.
    dirty: AtomicBool,
    /// Opened by the kernel for an execve (counted in `Shared::executing`).
    exec: bool,
}

/// State shared by the filesystem and the mount handle (for a clean shutdown).
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) opts: MountOptions,
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    /// Directory inode → parent inode, learned from lookups (for `..` in listings).
    parents: Mutex<HashMap<u64, u64>>,
    /// File inode → the version its page cache in this mount holds (see `open`).
    cache_keys: Mutex<HashMap<u64, CacheKey>>,
    /// File inode → handles open for execve (see the module notes on `O_TRUNC`).
    executing: Mutex<HashMap<u64, u32>>,
    /// The kernel notification channel (from `ready`), for cache invalidation.
    notify: Mutex<Option<Notify>>,
    next_fh: AtomicU64,
}

impl Shared {
    pub(crate) fn new(client: Client, opts: MountOptions) -> Shared {
        Shared {
            client,
            opts,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            parents: Mutex::new(HashMap::new()),
            cache_keys: Mutex::new(HashMap::new()),
            executing: Mutex::new(HashMap::new()),
            notify: Mutex::new(None),
            next_fh: AtomicU64::new(1),
        }
    }

    /// Closes every handle still open (unmount, daemon shutdown): buffered writes are flushed
    /// and write sessions closed.
    pub(crate) async fn close_all(&self) {
        let files: Vec<Arc<FileHandle>> = self.files.lock().drain().map(|(_, h)| h).collect();
        self.executing.lock().clear();
        self.dirs.lock().clear();
        for h in files {
            if let Err(e) = h.file.close().await {
                tracing::warn!(inode = %h.file.inode(), error = %e, "close at unmount failed");
            }
        }
    }

    pub(crate) fn open_files(&self) -> usize {
        self.files.lock().len()
    }

    /// Records that the page cache of `inode` in this mount holds the bytes of version `a`.
    fn set_cache_key(&self, a: &pond_proto::meta::InodeAttr) {
        let mut k = self.cache_keys.lock();
        if k.len() >= CACHE_KEYS_MAX && !k.contains_key(&a.inode.0) {
            k.clear();
        }
        k.insert(a.inode.0, CacheKey::of(a));
    }

    /// Whether an open may keep the page cache: the file is still at the version the cache
    /// holds. Otherwise the kernel drops it at this open and refills it from version `a`.
    fn keep_cache(&self, a: &pond_proto::meta::InodeAttr) -> bool {
        let key = CacheKey::of(a);
        let mut k = self.cache_keys.lock();
        if k.get(&a.inode.0) == Some(&key) {
            return true;
        }
        if k.len() >= CACHE_KEYS_MAX {
            k.clear();
        }
        k.insert(a.inode.0, key);
        false
    }

    /// Tells the kernel to ask for `inode`'s attributes again (its size may be stale).
    fn invalidate_attr_only(&self, inode: u64) {
        let Some(n) = self.notify.lock().clone() else {
            return;
        };
        tokio::spawn(n.invalid_inode(inode, -1, 0));
    }

    fn forget_cache_key(&self, inode: u64) {
        self.cache_keys.lock().remove(&inode);
    }
}

pub struct PondFs {
    pub(crate) s: Arc<Shared>,
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid,
        gid: req.gid,
    }
}

impl PondFs {
    /// ENOSYS when the mount serves no extended attributes (`MountOptions::xattr`).
    fn xattr_enabled(&self) -> Result<()> {
        if self.s.opts.xattr {
            Ok(())
        } else {
            Err(libc::ENOSYS.into())
        }
    }
}

/// `getxattr`/`listxattr` answer: the size alone when the caller asked for it (`size` 0),
/// ERANGE when its buffer is too small.
fn xattr_reply(v: Vec<u8>, size: u32) -> Result<ReplyXAttr> {
    let len = u32::try_from(v.len()).map_err(|_| Errno::from(libc::E2BIG))?;
    if size == 0 {
        Ok(ReplyXAttr::Size(len))
    } else if len > size {
        Err(libc::ERANGE.into())
    } else {
        Ok(ReplyXAttr::Data(Bytes::from(v)))
    }
}

fn name_of(name: &OsStr) -> Result<&str> {
    name.to_str().ok_or_else(|| Errno::from(libc::EINVAL))
}

fn fail(e: ClientError) -> Errno {
    match e.code() {
        ErrorCode::NotFound
        | ErrorCode::Exists
        | ErrorCode::NotEmpty
        | ErrorCode::NotDir
        | ErrorCode::IsDir => tracing::debug!(error = %e, "request refused"),
        ErrorCode::Io
        | ErrorCode::Internal
        | ErrorCode::Unavailable
        | ErrorCode::Timeout
        | ErrorCode::Malformed
        | ErrorCode::Checksum => tracing::warn!(error = %e, "request failed"),
        _ => tracing::debug!(error = %e, "request refused"),
    }
    errno(&e)
}

impl PondFs {
    fn entry(&self, a: &pond_proto::meta::InodeAttr) -> ReplyEntry {
        ReplyEntry {
            ttl: self.s.opts.entry_ttl,
            attr: file_attr(a),
            generation: 0,
        }
    }

    /// Fresh-enough attributes (the namespace cache answers within the TTL).
    async fn attr_cached(&self, inode: u64) -> Result<pond_proto::meta::InodeAttr> {
        let (a, _) = self
            .s
            .client
            .getattr_cached(InodeId(inode))
            .await
            .map_err(fail)?;
        Ok(a)
    }

    fn file(&self, fh: u64) -> Result<Arc<FileHandle>> {
        self.s
            .files
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Errno::from(libc::EBADF))
    }

    fn new_fh(&self) -> u64 {
        self.s.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn add_file(&self, file: File) -> u64 {
        self.add_handle(file, false)
    }

    fn add_handle(&self, file: File, exec: bool) -> u64 {
        let fh = self.new_fh();
        if exec {
            *self.s.executing.lock().entry(file.inode().0).or_insert(0) += 1;
        }
        self.s.files.lock().insert(
            fh,
            Arc::new(FileHandle {
                file,
                dirty: AtomicBool::new(false),
                exec,
            }),
        );
        fh
    }

    /// Takes handle `fh` out of the table (release), with its exec count.
    fn remove_handle(&self, fh: u64) -> Option<Arc<FileHandle>> {
        let h = self.s.files.lock().remove(&fh)?;
        if h.exec {
            let mut ex = self.s.executing.lock();
            let inode = h.file.inode().0;
            if let Some(n) = ex.get_mut(&inode) {
                *n -= 1;
                if *n == 0 {
                    ex.remove(&inode);
                }
            }
        }
        Some(h)
    }

    fn remember_parent(&self, a: &pond_proto::meta::InodeAttr, parent: u64) {
        if a.kind == pond_proto::meta::FileType::Dir {
            self.s.parents.lock().insert(a.inode.0, parent);
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.s.opts.read_only {
            return Err(libc::EROFS.into());
        }
        Ok(())
    }

    /// Pins the inode `name` in `parent` names if this mount has it open, so it stays readable
    /// after the name goes.
    async fn pin_target(&self, parent: u64, name: &str) -> Result<()> {
        if self.s.open_files() == 0 {
            return Ok(());
        }
        match self.s.client.lookup(InodeId(parent), name).await {
            Ok(a) => self.s.client.pin_if_open(a.inode).await.map_err(fail),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(fail(e)),
        }
    }

    /// Writes zeros through the client, not through the page cache: the kernel drops the
    /// range from its cache itself after a punch-hole or zero-range fallocate.
    async fn zero_range(&self, h: &FileHandle, offset: u64, len: u64) -> Result<()> {
        let zeros = vec![0u8; ZERO_STEP_BYTES.min(len as usize)];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = ((end - at) as usize).min(zeros.len());
            h.file
                .open_inode()
                .write_at(at, &zeros[..n])
                .await
                .map_err(fail)?;
            at += n as u64;
        }
        Ok(())
    }
}

impl Filesystem for PondFs {
    async fn init(&self, _req: Request) -> Result<ReplyInit> {
        let max_write = NonZeroU32::new(self.s.opts.max_write).expect("max_write checked at mount");
        let mut r = ReplyInit::new(max_write);
        // Async reads/writes the kernel keeps in flight: enough to keep several chains busy.
        r.max_background = Some(64);
        r.congestion_threshold = Some(48);
        Ok(r)
    }

    async fn ready(&self, notify: Notify) {
        *self.s.notify.lock() = Some(notify);
    }

    async fn destroy(&self, _req: Request) {
        self.s.close_all().await;
    }

    #[tracing::instrument(level = "debug", skip(self, req), fields(uid = req.uid))]
    async fn lookup(&self, req: Request, parent: u64, name: &OsStr) -> Result<ReplyEntry> {
        let Some(name) = name.to_str() else {
            return Err(libc::ENOENT.into());
        };
        let (a, left) = self
            .s
            .client
            .lookup_cached(InodeId(parent), name)
            .await
            .map_err(fail)?;
        self.remember_parent(&a, parent);
        // Only the time the answer has left: cache and kernel together stay within the TTL.
        Ok(ReplyEntry {
            ttl: left.min(self.s.opts.entry_ttl),
            attr: file_attr(&a),
            generation: 0,
        })
    }

    async fn forget(&self, _req: Request, _inode: u64, _nlookup: u64) {}

    async fn batch_forget(&self, _req: Request, _inodes: &[(u64, u64)]) {}

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn getattr(
        &self,
        _req: Request,
        inode: u64,
        _fh: Option<u64>,
        _flags: u32,
    ) -> Result<ReplyAttr> {
        let (a, left) = self
            .s
            .client
            .getattr_cached(InodeId(inode))
            .await
            .map_err(fail)?;
        Ok(ReplyAttr {
            ttl: left.min(self.s.opts.attr_ttl),
            attr: file_attr(&a),
        })
    }

    #[tracing::instrument(level = "debug", skip(self, req), fields(uid = req.uid))]
    async fn setattr(
        &self,
        req: Request,
        inode: u64,
        _fh: Option<u64>,
        set: SetAttr,
    ) -> Result<ReplyAttr> {
        self.check_writable()?;
        let _ = req;
        let p = PondSetAttr {
            mode: set.mode.map(|m| m & 0o7777),
            uid: set.uid,
            gid: set.gid,
            size: set.size,
            atime: set.atime.map(from_time),
            mtime: set.mtime.map(from_time),
        };
        let a = self
            .s
            .client
            .setattr(InodeId(inode), p)
            .await
            .map_err(fail)?;
        if a.kind == pond_proto::meta::FileType::File {
            // The kernel applied a size change to its own cache; the rest leaves bytes alone.
            self.s.set_cache_key(&a);
        }
        Ok(ReplyAttr {
            ttl: self.s.opts.attr_ttl,
            attr: file_attr(&a),
        })
    }

    #[tracing::instrument(level = "debug", skip(self, _req, value), fields(len = value.len()))]
    async fn setxattr(
        &self,
        _req: Request,
        inode: u64,
        name: &OsStr,
        value: &[u8],
        flags: u32,
        _position: u32,
    ) -> Result<()> {
        self.xattr_enabled()?;
        self.check_writable()?;
        let name = name_of(name)?;
        let mode = match flags as i32 {
            0 => XattrSetMode::Any,
            libc::XATTR_CREATE => XattrSetMode::Create,
            libc::XATTR_REPLACE => XattrSetMode::Replace,
            _ => return Err(libc::EINVAL.into()),
        };
        self.s
            .client
            .setxattr(InodeId(inode), name, value, mode)
            .await
            .map_err(fail)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn getxattr(
        &self,
        _req: Request,
        inode: u64,
        name: &OsStr,
        size: u32,
    ) -> Result<ReplyXAttr> {
        self.xattr_enabled()?;
        // The kernel asks for `security.capability` before every write (to drop file
        // capabilities) and, on the host, for `system.posix_acl_access` in permission checks
        // of callers other than the owner (an error other than ENODATA there fails the check
        // itself). pond stores neither namespace, so those answers need no request. Names
        // that are not UTF-8 cannot have been stored either.
        let Some(name) = name
            .to_str()
            .filter(|n| !n.starts_with("security.") && !n.starts_with("system."))
        else {
            return Err(libc::ENODATA.into());
        };
        let v = self
            .s
            .client
            .getxattr(InodeId(inode), name)
            .await
            .map_err(fail)?;
        xattr_reply(v, size)
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn listxattr(&self, _req: Request, inode: u64, size: u32) -> Result<ReplyXAttr> {
        self.xattr_enabled()?;
        let names = self
            .s
            .client
            .listxattr(InodeId(inode))
            .await
            .map_err(fail)?;
        let mut list = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for n in names {
            list.extend_from_slice(n.as_bytes());
            list.push(0);
        }
        xattr_reply(list, size)
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn removexattr(&self, _req: Request, inode: u64, name: &OsStr) -> Result<()> {
        self.xattr_enabled()?;
        self.check_writable()?;
        let Some(name) = name.to_str() else {
            return Err(libc::ENODATA.into());
        };
        self.s
            .client
            .removexattr(InodeId(inode), name)
            .await
            .map_err(fail)?;
        Ok(())
    }

    async fn readlink(&self, _req: Request, inode: u64) -> Result<ReplyData> {
        let t = self.s.client.readlink(InodeId(inode)).await.map_err(fail)?;
        Ok(ReplyData {
            data: Bytes::from(t.into_bytes()),
        })
    }

    #[tracing::instrument(level = "debug", skip(self, req), fields(uid = req.uid))]
    async fn symlink(
        &self,
        req: Request,
        parent: u64,
        name: &OsStr,
        link: &OsStr,
    ) -> Result<ReplyEntry> {
        self.check_writable()?;
        let (name, target) = (name_of(name)?, name_of(link)?);
        let a = self
            .s
            .client
            .symlink(InodeId(parent), name, target, caller(&req))
            .await
            .map_err(fail)?;
        Ok(self.entry(&a))
    }

    #[tracing::instrument(level = "debug", skip(self, req), fields(uid = req.uid))]
    async fn mknod(
        &self,
        req: Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<ReplyEntry> {
        self.check_writable()?;
        let name = name_of(name)?;
        let kind = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => None,
            libc::S_IFIFO => Some(PondType::Fifo),
            libc::S_IFSOCK => Some(PondType::Socket),
            libc::S_IFCHR => Some(PondType::CharDevice),
            libc::S_IFBLK => Some(PondType::BlockDevice),
            // mknod(2): EINVAL for a directory or an unknown type.
            _ => return Err(libc::EINVAL.into()),
        };
        let a = match kind {
            None => self
                .s
                .client
                .create(InodeId(parent), name, mode & 0o7777, caller(&req), true)
                .await
                .map_err(fail)?,
            Some(kind) => self
                .s
                .client
                .mknod(
                    InodeId(parent),
                    name,
                    kind,
                    mode & 0o7777,
                    u64::from(rdev),
                    caller(&req),
                )
                .await
                .map_err(fail)?,
        };
        Ok(self.entry(&a))
    }

    #[tracing::instrument(level = "debug", skip(self, req), fields(uid = req.uid))]
    async fn mkdir(
        &self,
        req: Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
    ) -> Result<ReplyEntry> {
        self.check_writable()?;
        let name = name_of(name)?;
        let a = self
            .s
            .client
            .mkdir(InodeId(parent), name, mode & 0o7777, caller(&req))
            .await
            .map_err(fail)?;
        self.remember_parent(&a, parent);
        Ok(self.entry(&a))
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn unlink(&self, _req: Request, parent: u64, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let name = name_of(name)?;
        self.pin_target(parent, name).await?;
        self.s
            .client
            .unlink(InodeId(parent), name)
            .await
            .map_err(fail)
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn rmdir(&self, _req: Request, parent: u64, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let name = name_of(name)?;
        self.s
            .client
            .rmdir(InodeId(parent), name)
            .await
            .map_err(fail)
    }

    async fn rename(
        &self,
        req: Request,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<()> {
        self.rename2(req, parent, name, new_parent, new_name, 0)
            .await
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn rename2(
        &self,
        _req: Request,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.check_writable()?;
        let (name, new_name) = (name_of(name)?, name_of(new_name)?);
        let mode = match flags {
            0 => RenameMode::Replace,
            f if f == libc::RENAME_NOREPLACE => RenameMode::NoReplace,
            f if f == libc::RENAME_EXCHANGE => RenameMode::Exchange,
            _ => return Err(libc::EINVAL.into()),
        };
        if mode == RenameMode::Replace {
            self.pin_target(new_parent, new_name).await?;
        }
        self.s
            .client
            .rename(InodeId(parent), name, InodeId(new_parent), new_name, mode)
            .await
            .map_err(fail)
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn link(
        &self,
        _req: Request,
        inode: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<ReplyEntry> {
        self.check_writable()?;
        let name = name_of(new_name)?;
        let a = self
            .s
            .client
            .link(InodeId(inode), InodeId(new_parent), name)
            .await
            .map_err(fail)?;
        Ok(self.entry(&a))
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn open(&self, _req: Request, inode: u64, flags: u32) -> Result<ReplyOpen> {
        let flags = flags as i32;
        let mode = OpenMode::from_flags(flags);
        let truncate = flags & libc::O_TRUNC != 0;
        if mode.write || truncate {
            self.check_writable()?;
        }
        // The kernel checks a write open against running executables before it gets here, a
        // read-only `O_TRUNC` open only after this open truncated (module notes).
        if truncate && !mode.write && self.s.executing.lock().contains_key(&inode) {
            return Err(libc::ETXTBSY.into());
        }
        // Close-to-open: always meta's current attributes, never the cache's (one request:
        // the session open answers with them, or for a read-only open a lease-read `GetAttr`).
        let (file, attr) = self
            .s
            .client
            .open_inode_fresh(InodeId(inode), mode, truncate)
            .await
            .map_err(fail)?;
        // The page cache survives this open when the file is still at the version it holds
        // (nothing wrote or truncated it anywhere since); otherwise the kernel drops it now and
        // must also forget the size it caches.
        let keep = !truncate && self.s.keep_cache(&attr);
        if truncate {
            self.s.forget_cache_key(inode);
        } else if !keep {
            self.s.invalidate_attr_only(inode);
        }
        Ok(ReplyOpen {
            fh: self.add_handle(file, flags & FMODE_EXEC != 0),
            flags: if keep { FOPEN_KEEP_CACHE } else { 0 },
        })
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn read(
        &self,
        _req: Request,
        _inode: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<ReplyData> {
        let h = self.file(fh)?;
        // Not `File::pread`: the kernel may read pages of a write-only handle (mmap). Not
        // through the client's read-ahead either: the kernel's (8 MiB) already keeps reads in
        // flight, and both together measured no faster (docs/client.md, "Read-ahead").
        let data = h
            .file
            .open_inode()
            .read_at(offset, size as usize)
            .await
            .map_err(fail)?;
        Ok(ReplyData { data })
    }

    #[tracing::instrument(level = "debug", skip(self, _req, data), fields(len = data.len()))]
    async fn write(
        &self,
        _req: Request,
        _inode: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        _write_flags: u32,
        _flags: u32,
    ) -> Result<ReplyWrite> {
        let h = self.file(fh)?;
        // Before the write: a `flush` racing it must see the handle dirty.
        h.dirty.store(true, Ordering::Release);
        h.file.pwrite(offset, data).await.map_err(fail)?;
        Ok(ReplyWrite {
            written: data.len() as u32,
        })
    }

    async fn statfs(&self, _req: Request, _inode: u64) -> Result<ReplyStatFs> {
        let s = self.s.client.statfs().await.map_err(fail)?;
        const BS: u64 = 4096;
        Ok(ReplyStatFs {
            blocks: s.total_bytes / BS,
            bfree: s.free_bytes / BS,
            bavail: s.free_bytes / BS,
            // Inode ids are 64-bit and never run out; report plenty free.
            files: s.inodes + (1 << 32),
            ffree: 1 << 32,
            bsize: BS as u32,
            namelen: pond_proto::limits::NAME_BYTES_MAX as u32,
            frsize: BS as u32,
        })
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn release(
        &self,
        _req: Request,
        _inode: u64,
        fh: u64,
        _flags: u32,
        _lock_owner: u64,
        _flush: bool,
    ) -> Result<()> {
        let Some(h) = self.remove_handle(fh) else {
            return Err(libc::EBADF.into());
        };
        if let Err(e) = h.file.close().await {
            // close(2) has already returned; the error was reported by flush if it happened
            // before, otherwise it can only be logged.
            tracing::warn!(inode = %h.file.inode(), error = %e, "release failed");
            return Err(errno(&e));
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn fsync(&self, _req: Request, _inode: u64, fh: u64, _datasync: bool) -> Result<()> {
        let h = self.file(fh)?;
        h.file.fsync().await.map_err(fail)
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn flush(&self, _req: Request, _inode: u64, fh: u64, _lock_owner: u64) -> Result<()> {
        let h = self.file(fh)?;
        // Nothing written through this handle since its last flush: meta already has the
        // length and mtime this close must make visible (writes of other handles are theirs
        // to flush), so no request; `release` closes the session in the background.
        if !h.file.mode().write || !h.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        // The bytes written through this mount went through its page cache: it holds exactly
        // the version meta answers with now.
        match h.file.flush_for_close().await {
            Ok(Some(a)) => self.s.set_cache_key(&a),
            Ok(None) => {}
            Err(e) => {
                h.dirty.store(true, Ordering::Release);
                return Err(fail(e));
            }
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn opendir(&self, _req: Request, inode: u64, _flags: u32) -> Result<ReplyOpen> {
        let a = self.attr_cached(inode).await?;
        if a.kind != pond_proto::meta::FileType::Dir {
            return Err(libc::ENOTDIR.into());
        }
        let parent = if inode == InodeId::ROOT.0 {
            inode
        } else {
            self.s.parents.lock().get(&inode).copied().unwrap_or(inode)
        };
        let fh = self.new_fh();
        self.s.dirs.lock().insert(
            fh,
            Arc::new(DirHandle::new(InodeId(inode), InodeId(parent))),
        );
        Ok(ReplyOpen { fh, flags: 0 })
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn readdir<'a>(
        &'a self,
        _req: Request,
        _parent: u64,
        fh: u64,
        offset: i64,
    ) -> Result<ReplyDirectory<impl Stream<Item = Result<DirectoryEntry>> + Send + 'a>> {
        let d = self
            .s
            .dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Errno::from(libc::EBADF))?;
        let listed = d
            .list(&self.s.client, offset, READDIR_BATCH)
            .await
            .map_err(fail)?;
        let entries: Vec<Result<DirectoryEntry>> = listed
            .into_iter()
            .map(|l| {
                Ok(DirectoryEntry {
                    inode: l.inode.0,
                    kind: kind(l.kind),
                    name: l.name.into(),
                    offset: l.next_offset,
                })
            })
            .collect();
        Ok(ReplyDirectory {
            entries: stream::iter(entries),
        })
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn readdirplus<'a>(
        &'a self,
        _req: Request,
        parent: u64,
        fh: u64,
        offset: u64,
        _lock_owner: u64,
    ) -> Result<ReplyDirectoryPlus<impl Stream<Item = Result<DirectoryEntryPlus>> + Send + 'a>>
    {
        let d = self
            .s
            .dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Errno::from(libc::EBADF))?;
        let listed = d
            .list(&self.s.client, offset as i64, READDIRPLUS_BATCH)
            .await
            .map_err(fail)?;
        let mut dot_attr = None;
        let mut entries = Vec::with_capacity(listed.len());
        for l in listed {
            let attr = match l.attr {
                Some(a) => {
                    self.remember_parent(&a, parent);
                    file_attr(&a)
                }
                None => {
                    // "." and "..": the kernel ignores their attributes; send the directory's.
                    if dot_attr.is_none() {
                        dot_attr = Some(self.attr_cached(d.dir.0).await?);
                    }
                    let mut fa = file_attr(dot_attr.as_ref().expect("fetched above"));
                    fa.ino = l.inode.0;
                    fa
                }
            };
            entries.push(Ok(DirectoryEntryPlus {
                inode: l.inode.0,
                generation: 0,
                kind: kind(l.kind),
                name: l.name.into(),
                offset: l.next_offset,
                attr,
                entry_ttl: self.s.opts.entry_ttl,
                attr_ttl: self.s.opts.attr_ttl,
            }));
        }
        Ok(ReplyDirectoryPlus {
            entries: stream::iter(entries),
        })
    }

    async fn releasedir(&self, _req: Request, _inode: u64, fh: u64, _flags: u32) -> Result<()> {
        self.s.dirs.lock().remove(&fh);
        Ok(())
    }

    async fn fsyncdir(&self, _req: Request, _inode: u64, _fh: u64, _datasync: bool) -> Result<()> {
        // Namespace changes are durable on a Raft majority before they are acknowledged.
        Ok(())
    }

    async fn access(&self, req: Request, inode: u64, mask: u32) -> Result<()> {
        let a = self.attr_cached(inode).await?;
        if mask as i32 & libc::W_OK != 0 && self.s.opts.read_only {
            return Err(libc::EROFS.into());
        }
        if access_ok(&a, req.uid, req.gid, mask as i32) {
            Ok(())
        } else {
            Err(libc::EACCES.into())
        }
    }

    #[tracing::instrument(level = "debug", skip(self, req), fields(uid = req.uid))]
    async fn create(
        &self,
        req: Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: u32,
    ) -> Result<ReplyCreated> {
        self.check_writable()?;
        let name = name_of(name)?;
        let flags = flags as i32;
        let om = OpenMode::from_flags(flags);
        let exclusive = flags & libc::O_EXCL != 0;
        let (mut a, file) = self
            .s
            .client
            .create_open(
                InodeId(parent),
                name,
                mode & 0o7777,
                caller(&req),
                exclusive,
                PlacementHint::Any,
                om,
            )
            .await
            .map_err(fail)?;
        if flags & libc::O_TRUNC != 0 && om.write && a.size > 0 {
            match file.truncate(0).await {
                Ok(t) => a = t,
                Err(e) => {
                    let _ = file.close().await;
                    return Err(fail(e));
                }
            }
        }
        // A new (or just truncated) file: the page cache holds nothing of it yet.
        self.s.set_cache_key(&a);
        let fh = self.add_file(file);
        Ok(ReplyCreated {
            ttl: self.s.opts.entry_ttl,
            attr: file_attr(&a),
            generation: 0,
            fh,
            flags: 0,
        })
    }

    #[tracing::instrument(level = "debug", skip(self, _req))]
    async fn fallocate(
        &self,
        _req: Request,
        _inode: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> Result<()> {
        self.check_writable()?;
        let h = self.file(fh)?;
        if !h.file.mode().write {
            return Err(libc::EBADF.into());
        }
        let end = offset
            .checked_add(length)
            .ok_or_else(|| Errno::from(libc::EFBIG))?;
        let mode = mode as i32;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        // Size or bytes change behind the page cache's back.
        self.s.forget_cache_key(h.file.inode().0);
        h.dirty.store(true, Ordering::Release);
        let size = h.file.size();
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            // Allocate: pond does not reserve space ahead (chunks are written on demand), but the
            // size change is honoured, which is what callers observe.
            0 => {
                if !keep && end > size {
                    h.file.open_inode().truncate(end).await.map_err(fail)?;
                }
                Ok(())
            }
            // Punch a hole: the range reads as zeros afterwards; the size never changes.
            m if m == libc::FALLOC_FL_PUNCH_HOLE && keep => {
                let stop = end.min(size);
                if stop > offset {
                    self.zero_range(&h, offset, stop - offset).await?;
                }
                Ok(())
            }
            m if m == libc::FALLOC_FL_ZERO_RANGE => {
                let stop = if keep { end.min(size) } else { end };
                if stop > offset {
                    self.zero_range(&h, offset, stop - offset).await?;
                }
                Ok(())
            }
            _ => Err(libc::EOPNOTSUPP.into()),
        }
    }
}
