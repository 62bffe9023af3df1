//! Workloads over a POSIX path, used for every baseline on the local disk and for the FUSE
//! mounts (pond's and the passthrough floor): the same code measures all of them.
//!
//! Blocking system calls on plain threads; queue depth N is N threads each with one request
//! outstanding. `O_DIRECT` variants use 4 KiB-aligned buffers and offsets.

use crate::report::Samples;
use anyhow::{Context, Result};
use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const MIB: usize = 1 << 20;

/// A heap buffer aligned for `O_DIRECT`.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain bytes owned by this value alone.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len.max(4096), 4096).expect("valid layout");
        // SAFETY: the layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(4096), 4096).expect("valid layout");
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// xorshift64*: cheap, reproducible offsets.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A random `block`-aligned offset with `offset + block <= size`.
    pub fn offset(&mut self, size: u64, block: u64) -> u64 {
        let slots = (size / block).max(1);
        (self.next_u64() % slots) * block
    }
}

/// Bytes that are not all one value (so nothing along the way can compress or dedupe them).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// When a write phase makes its data durable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sync {
    /// `fsync` once after the last write (what pond's write-behind + fsync/close acks).
    AtEnd,
    /// `fdatasync` after every block.
    EveryBlock,
}

/// Sequential `block`-sized writes of `total` bytes into a new file at `path`, then closes it.
pub fn seq_write(
    path: &Path,
    total: u64,
    block: usize,
    direct: bool,
    sync: Sync,
) -> Result<Samples> {
    let mut buf = AlignedBuf::new(block);
    buf.as_mut_slice().copy_from_slice(&pattern(block, 7));
    let mut oo = OpenOptions::new();
    oo.write(true).create(true).truncate(true);
    if direct {
        oo.custom_flags(libc::O_DIRECT);
    }
    let start = Instant::now();
    let f = oo
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let mut s = Samples::default();
    let mut off = 0u64;
    while off < total {
        let t0 = Instant::now();
        f.write_all_at(buf.as_slice(), off).context("write")?;
        if sync == Sync::EveryBlock {
            f.sync_data().context("fdatasync")?;
        }
        s.push(t0.elapsed());
        off += block as u64;
    }
    if sync == Sync::AtEnd {
        f.sync_all().context("fsync")?;
    }
    drop(f);
    s.wall = start.elapsed();
    s.bytes = off;
    Ok(s)
}

/// Sequential `block`-sized reads of the whole file.
pub fn seq_read(path: &Path, block: usize, direct: bool) -> Result<Samples> {
    let mut buf = AlignedBuf::new(block);
    let mut oo = OpenOptions::new();
    oo.read(true);
    if direct {
        oo.custom_flags(libc::O_DIRECT);
    }
    let start = Instant::now();
    let f = oo
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut s = Samples::default();
    let mut off = 0u64;
    loop {
        let t0 = Instant::now();
        let n = read_full_at(&f, buf.as_mut_slice(), off)?;
        if n == 0 {
            break;
        }
        s.push(t0.elapsed());
        off += n as u64;
        if n < block {
            break;
        }
    }
    s.wall = start.elapsed();
    s.bytes = off;
    Ok(s)
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f
            .read_at(&mut buf[done..], off + done as u64)
            .context("read")?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Random `block`-aligned reads of `block` bytes over the first `size` bytes of `path`, `qd`
/// threads with one read outstanding each, for `dur`.
pub fn rand_read(
    path: &Path,
    size: u64,
    block: usize,
    qd: usize,
    dur: Duration,
    direct: bool,
) -> Result<Samples> {
    let mut oo = OpenOptions::new();
    oo.read(true);
    if direct {
        oo.custom_flags(libc::O_DIRECT);
    }
    let f = Arc::new(
        oo.open(path)
            .with_context(|| format!("open {}", path.display()))?,
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..qd)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || -> Result<Samples> {
                let mut buf = AlignedBuf::new(block);
                let mut rng = Rng::new(t as u64 + 1);
                let mut s = Samples::default();
                while start.elapsed() < dur {
                    let off = rng.offset(size, block as u64);
                    let t0 = Instant::now();
                    let n = read_full_at(&f, buf.as_mut_slice(), off)?;
                    s.push(t0.elapsed());
                    s.bytes += n as u64;
                }
                Ok(s)
            })
        })
        .collect();
    let mut all = Samples::default();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("reader thread panicked"))??,
        );
    }
    all.wall = start.elapsed();
    // Random-read rows report IOPS: drop the byte count so the rate is ops/s.
    all.bytes = 0;
    Ok(all)
}

/// Namespace phases of [`meta_ops`].
#[derive(Clone, Copy, Debug)]
pub enum NsOp {
    Create,
    Stat,
    Unlink,
}

/// `threads` threads, each in its own directory under `root`, doing `files` creates (open
/// `O_CREAT|O_EXCL` + close), then `files` stats, then `files` unlinks; one Samples per phase.
pub fn meta_ops(root: &Path, threads: usize, files: usize) -> Result<Vec<(NsOp, Samples)>> {
    let dirs: Vec<PathBuf> = (0..threads).map(|t| root.join(format!("t{t}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
    }
    let mut out = Vec::new();
    for op in [NsOp::Create, NsOp::Stat, NsOp::Unlink] {
        let start = Instant::now();
        let handles: Vec<_> = dirs
            .iter()
            .cloned()
            .map(|d| {
                std::thread::spawn(move || -> Result<Samples> {
                    let mut s = Samples::default();
                    for i in 0..files {
                        let p = d.join(format!("f{i}"));
                        let t0 = Instant::now();
                        match op {
                            NsOp::Create => {
                                OpenOptions::new()
                                    .write(true)
                                    .create_new(true)
                                    .open(&p)
                                    .with_context(|| format!("create {}", p.display()))?;
                            }
                            NsOp::Stat => {
                                std::fs::symlink_metadata(&p)
                                    .with_context(|| format!("stat {}", p.display()))?;
                            }
                            NsOp::Unlink => std::fs::remove_file(&p)
                                .with_context(|| format!("unlink {}", p.display()))?,
                        }
                        s.push(t0.elapsed());
                    }
                    Ok(s)
                })
            })
            .collect();
        let mut all = Samples::default();
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow::anyhow!("thread panicked"))??);
        }
        all.wall = start.elapsed();
        out.push((op, all));
    }
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
    Ok(out)
}

/// Writes `n` files of `size` bytes under `dir` (create, write, close), then reads them all
/// back in a random order (open, read to the end, close). Returns (write, read) samples.
pub fn small_files(dir: &Path, n: usize, size: usize) -> Result<(Samples, Samples)> {
    std::fs::create_dir_all(dir)?;
    let data = pattern(size, 11);
    let start = Instant::now();
    let mut w = Samples::default();
    for i in 0..n {
        let p = dir.join(format!("s{i:05}"));
        let t0 = Instant::now();
        let mut f = File::create(&p).with_context(|| format!("create {}", p.display()))?;
        f.write_all(&data).context("write small file")?;
        drop(f);
        w.push(t0.elapsed());
    }
    w.wall = start.elapsed();
    w.bytes = (n * size) as u64;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(99);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut buf = Vec::with_capacity(size);
    let start = Instant::now();
    let mut r = Samples::default();
    for i in order {
        let p = dir.join(format!("s{i:05}"));
        let t0 = Instant::now();
        buf.clear();
        let mut f = File::open(&p).with_context(|| format!("open {}", p.display()))?;
        let got = std::io::Read::read_to_end(&mut f, &mut buf).context("read small file")?;
        drop(f);
        r.push(t0.elapsed());
        if got != size {
            anyhow::bail!("{}: read {got} bytes, wrote {size}", p.display());
        }
        r.bytes += got as u64;
    }
    r.wall = start.elapsed();
    Ok((w, r))
}
