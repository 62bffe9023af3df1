//! `pond-fuse`: mounts a pond cluster as a POSIX filesystem with the `fuse3` crate (async,
//! tokio), on top of `pond_client::Client`.
//!
//! ```text
//! let client = Client::from_cluster_file(path).await?;
//! let mount = pond_fuse::mount(client, Path::new("/pond"), MountOptions::default()).await?;
//! mount.serve_until_signal().await?;   // SIGTERM/SIGINT or `umount` end it cleanly
//! ```
//!
//! **Boundary:** this crate reaches the cluster only through `pond_client`.
//! **Invariant:** FUSE inode numbers are pond inode ids; pond never reuses them, so the kernel
//! never sees one number name two files.

mod attr;
mod dir;
mod fs;

use fs::{PondFs, Shared};
use pond_client::Client;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long an unmount waits for processes still using the mount (after a lazy detach)
/// before the daemon stops serving anyway.
const UNMOUNT_WAIT_MS: u64 = 10_000;

/// Mount options.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let users other than the mounting one use the mount (default: when mounting as root).
    pub allow_other: bool,
    /// How long the kernel may cache an attribute (stat) without asking again.
    pub attr_ttl: Duration,
    /// How long the kernel may cache a name → inode entry.
    pub entry_ttl: Duration,
    /// Largest write request the kernel sends (≥ 1 MiB; the kernel caps at its max_pages).
    pub max_write: u32,
    pub read_only: bool,
    /// Serve extended attributes. Without, every xattr request is ENOSYS and the kernel
    /// stops sending them (also the `security.capability` lookup before each write).
    pub xattr: bool,
    /// Shown as the mount's source in /proc/mounts.
    pub fs_name: String,
    /// Kernel readahead for the mount (root only; `None` keeps the kernel's 128 KiB). Two
    /// default chunks: sequential reads keep two chains busy; measured 128 KiB → 4 MiB took a
    /// debug build from 94 to 276 MB/s on this machine.
    pub read_ahead_kb: Option<u32>,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            // SAFETY: geteuid cannot fail and touches no memory.
            allow_other: unsafe { libc::geteuid() } == 0,
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            max_write: 1 << 20,
            read_only: false,
            xattr: true,
            fs_name: "pond".to_string(),
            read_ahead_kb: Some(8192),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mountpoint {0}: {1}")]
    Mountpoint(PathBuf, std::io::Error),
    #[error("mountpoint {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("/dev/fuse is missing: load the fuse module or run in a container with /dev/fuse")]
    NoDevFuse,
    #[error("mount {0}: {1}")]
    Mount(PathBuf, std::io::Error),
    #[error("unmount {0}: {1}")]
    Unmount(PathBuf, std::io::Error),
    #[error("max_write must be at least 4096, got {0}")]
    BadOption(u32),
}

/// A live mount. Dropping it without `unmount` unmounts in the background.
pub struct Mount {
    handle: Option<fuse3::raw::MountHandle>,
    mountpoint: PathBuf,
    shared: Arc<Shared>,
    /// Device number of the mount (names its FUSE connection in fusectl).
    dev: Option<u64>,
}

/// Mounts `client`'s cluster at `mountpoint`. Returns once the kernel mount exists (requests
/// are served from then on by tasks on the current runtime). As root the mount is made
/// directly; otherwise through `fusermount3`.
pub async fn mount(
    client: Client,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<Mount, MountError> {
    if opts.max_write < 4096 {
        return Err(MountError::BadOption(opts.max_write));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoDevFuse);
    }
    let mp = mountpoint.to_path_buf();
    // A FUSE mount whose daemon died (kill -9, OOM): the kernel answers ENOTCONN until it is
    // unmounted (a stat may still come from its attribute cache; a listing does not). Detach
    // it lazily and mount over the plain directory again.
    let enotconn = |e: std::io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    let dead = std::fs::read_dir(&mp).err().is_some_and(enotconn)
        || std::fs::metadata(&mp).err().is_some_and(enotconn);
    if dead {
        tracing::warn!(mountpoint = %mp.display(), "a dead FUSE mount is in the way (its daemon died); detaching it");
        detach_dead(&mp).map_err(|e| MountError::Unmount(mp.clone(), e))?;
    }
    let md = std::fs::metadata(&mp).map_err(|e| MountError::Mountpoint(mp.clone(), e))?;
    if !md.is_dir() {
        return Err(MountError::NotADirectory(mp));
    }
    let mut fo = fuse3::MountOptions::default();
    fo.fs_name(opts.fs_name.clone())
        .allow_other(opts.allow_other)
        .default_permissions(true)
        .read_only(opts.read_only)
        .write_back(false);
    let read_ahead_kb = opts.read_ahead_kb;
    // Namespace answers may be as old as the kernel's caches may keep them, no older: lookups
    // and getattrs the kernel does send are then answered without a meta round trip when an
    // answer is that fresh (FUSE replies carry only the time it has left).
    client.set_cache_ttl(opts.attr_ttl.min(opts.entry_ttl));
    let shared = Arc::new(Shared::new(client, opts));
    let fs = PondFs { s: shared.clone() };
    let session = fuse3::raw::Session::new(fo);
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let handle = if root {
        session.mount(fs, &mp).await
    } else {
        session.mount_with_unprivileged(fs, &mp).await
    }
    .map_err(|e| MountError::Mount(mp.clone(), e))?;
    // The stat is answered by this very filesystem: run it off the runtime's worker threads so
    // a current-thread runtime can serve it.
    let dev = {
        let mp = mp.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&mp).map(|m| m.dev())
        })
        .await
        .expect("stat task does not panic")
        .ok()
    };
    if let (true, Some(kb), Some(dev)) = (root, read_ahead_kb, dev)
        && let Err(e) = set_read_ahead(dev, kb)
    {
        tracing::warn!(mountpoint = %mp.display(), error = %e, "could not set readahead");
    }
    tracing::info!(mountpoint = %mp.display(), "mounted");
    Ok(Mount {
        handle: Some(handle),
        mountpoint: mp,
        shared,
        dev,
    })
}

impl Mount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The client serving the mount.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Waits until the filesystem is unmounted from outside (`umount`, `fusermount3 -u`).
    pub async fn wait(mut self) -> Result<(), MountError> {
        let h = self.handle.take().expect("handle present until consumed");
        let r = h.await;
        self.shared.close_all().await;
        r.map_err(|e| MountError::Unmount(self.mountpoint.clone(), e))
    }

    /// Unmounts: a plain unmount first; if the mount is busy, a lazy detach, then waits up to
    /// `UNMOUNT_WAIT_MS` for its users to go before it stops serving. Buffered writes of
    /// handles still open are flushed and their sessions closed.
    pub async fn unmount(mut self) -> Result<(), MountError> {
        let h = self.handle.take().expect("handle present until consumed");
        let mp = self.mountpoint.clone();
        let r = tokio::task::spawn_blocking(move || kernel_unmount(&mp))
            .await
            .expect("unmount task does not panic");
        if let Err(e) = r {
            // Nothing unmounted: let fuse3 end the session and try itself.
            let r2 = h.unmount().await;
            self.shared.close_all().await;
            return r2.map_err(|_| MountError::Unmount(self.mountpoint.clone(), e));
        }
        let mut h = h;
        match tokio::time::timeout(Duration::from_millis(UNMOUNT_WAIT_MS), &mut h).await {
            Ok(r) => {
                self.shared.close_all().await;
                r.map_err(|e| MountError::Unmount(self.mountpoint.clone(), e))
            }
            Err(_) => {
                // Still in use after the detach. Flush what we hold, then abort the connection
                // so the session (blocked reading /dev/fuse) ends; remaining users get ENOTCONN.
                tracing::warn!(mountpoint = %self.mountpoint.display(), "mount still in use after detach; aborting the connection");
                self.shared.close_all().await;
                if let Some(dev) = self.dev
                    && let Err(e) = abort_connection(dev)
                {
                    tracing::warn!(error = %e, "abort FUSE connection");
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut h).await;
                Ok(())
            }
        }
    }

    /// Serves until SIGTERM or SIGINT (then unmounts cleanly) or until unmounted from outside.
    pub async fn serve_until_signal(mut self) -> Result<(), MountError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| MountError::Mount(self.mountpoint.clone(), e))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| MountError::Mount(self.mountpoint.clone(), e))?;
        let h = self.handle.as_mut().expect("handle present until consumed");
        tokio::select! {
            r = h => {
                self.handle = None;
                self.shared.close_all().await;
                tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted from outside");
                return r.map_err(|e| MountError::Unmount(self.mountpoint.clone(), e));
            }
            _ = term.recv() => tracing::info!("SIGTERM: unmounting"),
            _ = int.recv() => tracing::info!("SIGINT: unmounting"),
        }
        self.unmount().await
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // The fuse3 handle unmounts in the background when dropped unfinished.
        self.handle.take();
    }
}

/// Aborts the FUSE connection of device `dev` through fusectl (mounting fusectl if needed).
fn abort_connection(dev: u64) -> std::io::Result<()> {
    let dir = Path::new("/sys/fs/fuse/connections");
    let conn = dir.join(libc::minor(dev).to_string());
    if !conn.exists() {
        let (src, fstype) = (c"fusectl", c"fusectl");
        let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid NUL-terminated strings; no data argument.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    std::fs::write(conn.join("abort"), "1")
}

/// Sets the readahead of the mount's backing device info (`/sys/class/bdi/MAJ:MIN`).
fn set_read_ahead(dev: u64, kb: u32) -> std::io::Result<()> {
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    std::fs::write(
        format!("/sys/class/bdi/{maj}:{min}/read_ahead_kb"),
        kb.to_string(),
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// `fusermount3 FLAG MP` (for non-root callers); whether it succeeded.
fn fusermount(flag: &str, mp: &Path) -> std::io::Result<bool> {
    let st = std::process::Command::new("fusermount3")
        .arg(flag)
        .arg(mp)
        .status()?;
    Ok(st.success())
}

/// `umount2(mp, flags)`.
fn umount2(mp: &Path, flags: libc::c_int) -> std::io::Result<()> {
    let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Lazily detaches the mount at `mp` (`umount2(MNT_DETACH)`, `fusermount3 -uz` when not
/// root): for dead mounts, whose users only get ENOTCONN anyway.
fn detach_dead(mp: &Path) -> std::io::Result<()> {
    if is_root() {
        return umount2(mp, libc::MNT_DETACH);
    }
    if fusermount("-uz", mp)? {
        Ok(())
    } else {
        Err(std::io::Error::other("fusermount3 -uz failed"))
    }
}

/// `umount2(path, 0)`, falling back to a lazy detach when busy; `fusermount3 -u[z]` when not
/// root.
fn kernel_unmount(mp: &Path) -> std::io::Result<()> {
    if !is_root() {
        if fusermount("-u", mp)? {
            return Ok(());
        }
        return detach_dead(mp);
    }
    match umount2(mp, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => detach_dead(mp),
        r => r,
    }
}

/// Convenience for the `pond mount` command: mount and serve until a signal or an external
/// unmount.
pub async fn serve(
    client: Client,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<(), MountError> {
    mount(client, mountpoint, opts)
        .await?
        .serve_until_signal()
        .await
}
