//! The FUSE passthrough floor: a `fuse3` filesystem (the same crate and version pond's mount
//! uses, same mount options: no writeback cache, page cache dropped at open, 1 s TTLs,
//! 1 MiB max_write) that forwards every request to a local directory with plain system calls.
//! Whatever it costs over the local disk is the price of FUSE itself with this crate; pond's
//! mount cannot be faster than it.
//!
//! Mounted in-process on a dedicated thread with its own tokio runtime (the benchmark's own I/O
//! runs on plain threads), unmounted by [`PassthroughMount::unmount`] or on drop.

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use fuse3::raw::prelude::*;
use fuse3::{Errno, Result as FResult, Timestamp};
use futures::Stream;
use futures::stream;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::num::NonZeroU32;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const TTL: Duration = Duration::from_secs(1);
const MAX_WRITE: u32 = 1 << 20;

/// A directory listing taken at opendir: (inode, kind, name).
type Listing = Vec<(u64, FileType, std::ffi::OsString)>;

struct Inner {
    /// FUSE inode → path in the source directory (the root is 1).
    paths: Mutex<HashMap<u64, PathBuf>>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// Directory handles: the listing taken at opendir.
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
}

struct Passthrough {
    i: Arc<Inner>,
}

fn io_err(e: std::io::Error) -> Errno {
    Errno::from(e.raw_os_error().unwrap_or(libc::EIO))
}

fn kind_of(m: &Metadata) -> FileType {
    let ft = m.file_type();
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn attr_of(ino: u64, m: &Metadata) -> FileAttr {
    FileAttr {
        ino,
        size: m.size(),
        blocks: m.blocks(),
        atime: Timestamp::new(m.atime(), m.atime_nsec() as u32),
        mtime: Timestamp::new(m.mtime(), m.mtime_nsec() as u32),
        ctime: Timestamp::new(m.ctime(), m.ctime_nsec() as u32),
        kind: kind_of(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
    }
}

fn cpath(p: &Path) -> FResult<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::from(libc::EINVAL))
}

impl Passthrough {
    fn path(&self, ino: u64) -> FResult<PathBuf> {
        self.i
            .paths
            .lock()
            .get(&ino)
            .cloned()
            .ok_or_else(|| Errno::from(libc::ENOENT))
    }

    fn child(&self, parent: u64, name: &OsStr) -> FResult<PathBuf> {
        Ok(self.path(parent)?.join(name))
    }

    /// Registers `p` under its FUSE inode number (the local inode number) and returns the entry.
    fn entry(&self, p: PathBuf) -> FResult<ReplyEntry> {
        let m = std::fs::symlink_metadata(&p).map_err(io_err)?;
        let ino = m.ino();
        self.i.paths.lock().insert(ino, p);
        Ok(ReplyEntry {
            ttl: TTL,
            attr: attr_of(ino, &m),
            generation: 0,
        })
    }

    fn file(&self, fh: u64) -> FResult<Arc<File>> {
        self.i
            .files
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Errno::from(libc::EBADF))
    }

    fn add_file(&self, f: File) -> u64 {
        let fh = self.i.next_fh.fetch_add(1, Ordering::Relaxed);
        self.i.files.lock().insert(fh, Arc::new(f));
        fh
    }

    fn list(&self, dir: u64) -> FResult<Listing> {
        let p = self.path(dir)?;
        let mut out = vec![
            (dir, FileType::Directory, ".".into()),
            (dir, FileType::Directory, "..".into()),
        ];
        for e in std::fs::read_dir(&p).map_err(io_err)? {
            let e = e.map_err(io_err)?;
            let ft = e.file_type().map_err(io_err)?;
            let kind = if ft.is_dir() {
                FileType::Directory
            } else if ft.is_symlink() {
                FileType::Symlink
            } else {
                FileType::RegularFile
            };
            out.push((e.ino(), kind, e.file_name()));
        }
        Ok(out)
    }
}

fn open_options(flags: u32) -> OpenOptions {
    let flags = flags as i32;
    let mut oo = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => oo.write(true),
        libc::O_RDWR => oo.read(true).write(true),
        _ => oo.read(true),
    };
    if flags & libc::O_APPEND != 0 {
        oo.append(true);
    }
    if flags & libc::O_TRUNC != 0 {
        oo.truncate(true);
    }
    oo
}

impl Filesystem for Passthrough {
    async fn init(&self, _req: Request) -> FResult<ReplyInit> {
        let mut r = ReplyInit::new(NonZeroU32::new(MAX_WRITE).expect("non-zero"));
        r.max_background = Some(64);
        r.congestion_threshold = Some(48);
        Ok(r)
    }

    async fn destroy(&self, _req: Request) {
        self.i.files.lock().clear();
    }

    async fn lookup(&self, _req: Request, parent: u64, name: &OsStr) -> FResult<ReplyEntry> {
        let p = self.child(parent, name)?;
        self.entry(p)
    }

    async fn forget(&self, _req: Request, _inode: u64, _nlookup: u64) {}

    async fn getattr(
        &self,
        _req: Request,
        inode: u64,
        fh: Option<u64>,
        _flags: u32,
    ) -> FResult<ReplyAttr> {
        let m = match fh.and_then(|fh| self.i.files.lock().get(&fh).cloned()) {
            Some(f) => f.metadata().map_err(io_err)?,
            None => std::fs::symlink_metadata(self.path(inode)?).map_err(io_err)?,
        };
        Ok(ReplyAttr {
            ttl: TTL,
            attr: attr_of(inode, &m),
        })
    }

    async fn setattr(
        &self,
        _req: Request,
        inode: u64,
        fh: Option<u64>,
        set: SetAttr,
    ) -> FResult<ReplyAttr> {
        let p = self.path(inode)?;
        if let Some(size) = set.size {
            match fh.and_then(|fh| self.i.files.lock().get(&fh).cloned()) {
                Some(f) => f.set_len(size).map_err(io_err)?,
                None => OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(size))
                    .map_err(io_err)?,
            }
        }
        if let Some(mode) = set.mode {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(io_err)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            std::os::unix::fs::lchown(&p, set.uid, set.gid).map_err(io_err)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = |t: Option<Timestamp>| match t {
                Some(t) => libc::timespec {
                    tv_sec: t.sec,
                    tv_nsec: t.nsec as i64,
                },
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
            };
            let times = [ts(set.atime), ts(set.mtime)];
            let c = cpath(&p)?;
            // SAFETY: c is a valid NUL-terminated path and times points at two timespecs.
            let rc = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc != 0 {
                return Err(io_err(std::io::Error::last_os_error()));
            }
        }
        let m = std::fs::symlink_metadata(&p).map_err(io_err)?;
        Ok(ReplyAttr {
            ttl: TTL,
            attr: attr_of(inode, &m),
        })
    }

    async fn readlink(&self, _req: Request, inode: u64) -> FResult<ReplyData> {
        let t = std::fs::read_link(self.path(inode)?).map_err(io_err)?;
        Ok(ReplyData {
            data: Bytes::copy_from_slice(t.as_os_str().as_bytes()),
        })
    }

    async fn symlink(
        &self,
        _req: Request,
        parent: u64,
        name: &OsStr,
        link: &OsStr,
    ) -> FResult<ReplyEntry> {
        let p = self.child(parent, name)?;
        std::os::unix::fs::symlink(link, &p).map_err(io_err)?;
        self.entry(p)
    }

    async fn mkdir(
        &self,
        _req: Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FResult<ReplyEntry> {
        let p = self.child(parent, name)?;
        std::fs::DirBuilder::new()
            .mode(mode & !umask & 0o7777)
            .create(&p)
            .map_err(io_err)?;
        self.entry(p)
    }

    async fn unlink(&self, _req: Request, parent: u64, name: &OsStr) -> FResult<()> {
        std::fs::remove_file(self.child(parent, name)?).map_err(io_err)
    }

    async fn rmdir(&self, _req: Request, parent: u64, name: &OsStr) -> FResult<()> {
        std::fs::remove_dir(self.child(parent, name)?).map_err(io_err)
    }

    async fn rename(
        &self,
        _req: Request,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> FResult<()> {
        let (from, to) = (self.child(parent, name)?, self.child(new_parent, new_name)?);
        std::fs::rename(&from, &to).map_err(io_err)?;
        if let Ok(m) = std::fs::symlink_metadata(&to) {
            self.i.paths.lock().insert(m.ino(), to);
        }
        Ok(())
    }

    async fn link(
        &self,
        _req: Request,
        inode: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> FResult<ReplyEntry> {
        let (from, to) = (self.path(inode)?, self.child(new_parent, new_name)?);
        std::fs::hard_link(&from, &to).map_err(io_err)?;
        self.entry(to)
    }

    async fn open(&self, _req: Request, inode: u64, flags: u32) -> FResult<ReplyOpen> {
        let f = open_options(flags)
            .open(self.path(inode)?)
            .map_err(io_err)?;
        Ok(ReplyOpen {
            fh: self.add_file(f),
            flags: 0,
        })
    }

    async fn read(
        &self,
        _req: Request,
        _inode: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FResult<ReplyData> {
        let f = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = f
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(io_err)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(ReplyData {
            data: Bytes::from(buf),
        })
    }

    async fn write(
        &self,
        _req: Request,
        _inode: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        _write_flags: u32,
        _flags: u32,
    ) -> FResult<ReplyWrite> {
        self.file(fh)?.write_all_at(data, offset).map_err(io_err)?;
        Ok(ReplyWrite {
            written: data.len() as u32,
        })
    }

    async fn statfs(&self, _req: Request, inode: u64) -> FResult<ReplyStatFs> {
        let c = cpath(&self.path(inode)?)?;
        // SAFETY: statvfs is plain data; zeroed is a valid value, filled in by the call.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid path, s a valid out pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(io_err(std::io::Error::last_os_error()));
        }
        Ok(ReplyStatFs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    async fn release(
        &self,
        _req: Request,
        _inode: u64,
        fh: u64,
        _flags: u32,
        _lock_owner: u64,
        _flush: bool,
    ) -> FResult<()> {
        self.i.files.lock().remove(&fh);
        Ok(())
    }

    async fn fsync(&self, _req: Request, _inode: u64, fh: u64, datasync: bool) -> FResult<()> {
        let f = self.file(fh)?;
        if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }
        .map_err(io_err)
    }

    async fn flush(&self, _req: Request, _inode: u64, _fh: u64, _lock_owner: u64) -> FResult<()> {
        // Writes go straight to the local file; nothing is buffered here.
        Ok(())
    }

    async fn opendir(&self, _req: Request, inode: u64, _flags: u32) -> FResult<ReplyOpen> {
        let listing = self.list(inode)?;
        let fh = self.i.next_fh.fetch_add(1, Ordering::Relaxed);
        self.i.dirs.lock().insert(fh, Arc::new(listing));
        Ok(ReplyOpen { fh, flags: 0 })
    }

    async fn readdir<'a>(
        &'a self,
        _req: Request,
        _parent: u64,
        fh: u64,
        offset: i64,
    ) -> FResult<ReplyDirectory<impl Stream<Item = FResult<DirectoryEntry>> + Send + 'a>> {
        let d = self
            .i
            .dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Errno::from(libc::EBADF))?;
        let entries: Vec<FResult<DirectoryEntry>> = d
            .iter()
            .enumerate()
            .skip(offset.max(0) as usize)
            .map(|(i, (ino, kind, name))| {
                Ok(DirectoryEntry {
                    inode: *ino,
                    kind: *kind,
                    name: name.clone(),
                    offset: i as i64 + 1,
                })
            })
            .collect();
        Ok(ReplyDirectory {
            entries: stream::iter(entries),
        })
    }

    async fn readdirplus<'a>(
        &'a self,
        _req: Request,
        parent: u64,
        fh: u64,
        offset: u64,
        _lock_owner: u64,
    ) -> FResult<ReplyDirectoryPlus<impl Stream<Item = FResult<DirectoryEntryPlus>> + Send + 'a>>
    {
        let d = self
            .i
            .dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Errno::from(libc::EBADF))?;
        let dir = self.path(parent)?;
        let mut entries = Vec::new();
        for (i, (ino, kind, name)) in d.iter().enumerate().skip(offset as usize) {
            let p = if name == "." || name == ".." {
                dir.clone()
            } else {
                dir.join(name)
            };
            let m = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                // Removed since opendir: skip it, as a fresh listing would.
                Err(_) => continue,
            };
            if name != "." && name != ".." {
                self.i.paths.lock().insert(*ino, p);
            }
            let mut attr = attr_of(*ino, &m);
            attr.ino = *ino;
            entries.push(Ok(DirectoryEntryPlus {
                inode: *ino,
                generation: 0,
                kind: *kind,
                name: name.clone(),
                offset: i as i64 + 1,
                attr,
                entry_ttl: TTL,
                attr_ttl: TTL,
            }));
        }
        Ok(ReplyDirectoryPlus {
            entries: stream::iter(entries),
        })
    }

    async fn releasedir(&self, _req: Request, _inode: u64, fh: u64, _flags: u32) -> FResult<()> {
        self.i.dirs.lock().remove(&fh);
        Ok(())
    }

    async fn access(&self, _req: Request, inode: u64, mask: u32) -> FResult<()> {
        let c = cpath(&self.path(inode)?)?;
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), mask as i32) } == 0 {
            Ok(())
        } else {
            Err(io_err(std::io::Error::last_os_error()))
        }
    }

    async fn create(
        &self,
        _req: Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: u32,
    ) -> FResult<ReplyCreated> {
        let p = self.child(parent, name)?;
        let mut oo = open_options(flags);
        if flags as i32 & libc::O_ACCMODE == libc::O_RDONLY {
            // O_CREAT needs write access to the directory only; open for writing to create.
            oo.write(true);
        }
        if flags as i32 & libc::O_EXCL != 0 {
            oo.create_new(true);
        } else {
            oo.create(true);
        }
        oo.mode(mode & 0o7777);
        let f = oo.open(&p).map_err(io_err)?;
        let m = f.metadata().map_err(io_err)?;
        let ino = m.ino();
        self.i.paths.lock().insert(ino, p);
        let fh = self.add_file(f);
        Ok(ReplyCreated {
            ttl: TTL,
            attr: attr_of(ino, &m),
            generation: 0,
            fh,
            flags: 0,
        })
    }
}

/// A mounted passthrough floor.
pub struct PassthroughMount {
    mountpoint: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl PassthroughMount {
    /// Mounts a passthrough of `source` at `mountpoint` (as root: directly; otherwise through
    /// `fusermount3`) and returns once the kernel mount exists.
    pub fn mount(source: &Path, mountpoint: &Path) -> Result<PassthroughMount> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (src, mp) = (source.to_path_buf(), mountpoint.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("passthrough-fuse".into())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let inner = Inner {
                        paths: Mutex::new(HashMap::from([(1u64, src)])),
                        files: Mutex::new(HashMap::new()),
                        dirs: Mutex::new(HashMap::new()),
                        next_fh: AtomicU64::new(1),
                    };
                    let fs = Passthrough { i: Arc::new(inner) };
                    let mut fo = fuse3::MountOptions::default();
                    // SAFETY: geteuid cannot fail and touches no memory.
                    let root = unsafe { libc::geteuid() } == 0;
                    fo.fs_name("pond-bench-passthrough")
                        .allow_other(root)
                        .write_back(false);
                    let session = fuse3::raw::Session::new(fo);
                    let mounted = if root {
                        session.mount(fs, &mp).await
                    } else {
                        session.mount_with_unprivileged(fs, &mp).await
                    };
                    let handle = match mounted {
                        Ok(h) => {
                            let _ = ready_tx.send(Ok(()));
                            h
                        }
                        Err(e) => {
                            let _ = ready_tx
                                .send(Err(anyhow!("mount passthrough at {}: {e}", mp.display())));
                            return Ok(());
                        }
                    };
                    let _ = stop_rx.await;
                    handle
                        .unmount()
                        .await
                        .with_context(|| format!("unmount {}", mp.display()))
                })
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(PassthroughMount {
                mountpoint: mountpoint.to_path_buf(),
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let r = thread.join();
                Err(anyhow!(
                    "passthrough thread ended before mounting: {:?}",
                    r.map(|r| r.err())
                ))
            }
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the serving thread.
    pub fn unmount(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow!("passthrough thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for PassthroughMount {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("passthrough unmount: {e:#}");
        }
    }
}
