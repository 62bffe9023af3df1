//! I/O through the client library (issue 3's data-plane benchmark, issue 4's client side):
//! sequential 1 MiB writes and reads and random 4 KiB / 128 KiB reads at queue depth 1 and 64,
//! through `File::pread`/`pwrite` and through the batched API, next to the same access pattern
//! on a local file in the same filesystem as the cluster's directory (buffered after the same
//! warm-up, and `O_DIRECT`).
//!
//! Write durability is matched: pond's write-behind `pwrite` + `fsync` at the end is compared
//! with buffered writes + one `fsync`; pond's `pwrite_bytes` (acknowledged only when every
//! replica has the block durably) with `fdatasync` after every block.
//!
//! Sequential reads are measured twice: warm (after one pass over each file: the local file is
//! then read from the page cache, i.e. memory) and cold (the page cache dropped before each
//! side: `sync` + `echo 1 > /proc/sys/vm/drop_caches` as root, and `posix_fadvise(DONTNEED)`
//! of the local file) — issue 3's baseline is "the local disk's buffered read throughput",
//! which only the cold row measures.

use crate::posix::{self, MIB, Rng, Sync};
use crate::report::{Samples, Table, progress};
use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use pond_client::batch::{self, Op, Output, Request};
use pond_client::{Client, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct IoOpts {
    /// Size of the file written sequentially and then read at random.
    pub file_bytes: u64,
    /// How long each random-read phase runs.
    pub phase: Duration,
    /// Where the local baseline file goes (same filesystem as the cluster's directory).
    pub local_dir: PathBuf,
}

/// The client-library figures, kept for the in-memory data-plane comparison.
#[derive(Default, Clone)]
pub struct ClientFigures {
    pub seq_write_buffered: Samples,
    pub seq_write_acked: Samples,
    pub seq_read: Samples,
    /// (block, qd) → samples of `pread`.
    pub rand: Vec<((usize, usize), Samples)>,
    pub local_write_buffered: Samples,
    pub local_write_acked: Samples,
    pub local_seq_read: Samples,
    pub local_rand: Vec<((usize, usize), Samples)>,
}

fn cerr(e: pond_client::ClientError) -> anyhow::Error {
    anyhow!("{e}")
}

/// Drops the kernel's clean page cache (every file's): `sync`, then "1" to
/// `/proc/sys/vm/drop_caches`. Needs root; the error says why it did not happen.
fn drop_page_cache() -> std::result::Result<(), String> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"1")
        .map_err(|e| format!("write /proc/sys/vm/drop_caches: {e}"))
}

/// Drops one file's pages from the page cache (`posix_fadvise(DONTNEED)`, after `fsync` so
/// that no page is dirty).
fn drop_file_cache(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    f.sync_all().context("fsync")?;
    // SAFETY: advice on an open descriptor; touches no memory.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(rc == 0, "posix_fadvise(DONTNEED) failed: {rc}");
    Ok(())
}

/// One sequential pass of 1 MiB `pread`s over `file` from offset 0.
async fn pond_seq_pass(file: &File, size: u64) -> Result<Samples> {
    let start = Instant::now();
    let mut s = Samples::default();
    let mut off = 0u64;
    while off < size {
        let t0 = Instant::now();
        let b = file.pread(off, MIB).await.map_err(cerr)?;
        s.push(t0.elapsed());
        if b.is_empty() {
            break;
        }
        off += b.len() as u64;
    }
    s.wall = start.elapsed();
    s.bytes = off;
    Ok(s)
}

/// Random `pread`s of `block` bytes, `qd` tasks with one outstanding each.
async fn pond_rand(
    file: &Arc<File>,
    size: u64,
    block: usize,
    qd: usize,
    dur: Duration,
) -> Result<Samples> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..qd {
        let f = file.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(1000 + t as u64);
            let mut s = Samples::default();
            while start.elapsed() < dur {
                let off = rng.offset(size, block as u64);
                let t0 = Instant::now();
                let b = f.pread(off, block).await.map_err(cerr)?;
                s.push(t0.elapsed());
                if b.len() != block {
                    anyhow::bail!("short read at {off}: {} of {block}", b.len());
                }
            }
            anyhow::Ok(s)
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.extend(t.await??);
    }
    all.wall = start.elapsed();
    Ok(all)
}

/// Random reads through the batched API: submissions of `qd` `ReadInto` requests into
/// caller-owned buffers, each waited for entirely before the next (latency: submission to
/// completion of each request).
async fn pond_batch_rand(
    file: &Arc<File>,
    size: u64,
    block: usize,
    qd: usize,
    dur: Duration,
) -> Result<Samples> {
    let mut rng = Rng::new(77);
    let mut bufs: Vec<Vec<u8>> = (0..qd).map(|_| vec![0u8; block]).collect();
    let mut s = Samples::default();
    let start = Instant::now();
    while start.elapsed() < dur {
        let reqs: Vec<Request> = bufs
            .drain(..)
            .enumerate()
            .map(|(i, buf)| Request {
                file: file.clone(),
                offset: rng.offset(size, block as u64),
                op: Op::ReadInto { buf },
                tag: i as u64,
            })
            .collect();
        let t0 = Instant::now();
        let mut c = batch::submit(reqs).map_err(cerr)?;
        while let Some(done) = c.next_completion().await {
            s.push(t0.elapsed());
            match done.result.map_err(cerr)? {
                Output::ReadInto { buf, len } => {
                    if len != block {
                        anyhow::bail!("batched read short: {len} of {block}");
                    }
                    bufs.push(buf);
                }
                other => anyhow::bail!("unexpected batched completion {other:?}"),
            }
        }
    }
    s.wall = start.elapsed();
    Ok(s)
}

/// Runs the suite against `client` (a cluster with chains of 3) and prints its table.
pub async fn run(client: &Client, label: &str, opts: &IoOpts) -> Result<ClientFigures> {
    let mut fig = ClientFigures::default();
    let dir = format!("/bench-io-{}", std::process::id());
    client.mkdir_all(&dir, 0o755).await.map_err(cerr)?;
    let path = format!("{dir}/seq.dat");
    let total = opts.file_bytes;
    let block = pattern_bytes(MIB);
    std::fs::create_dir_all(&opts.local_dir)?;
    let local = opts.local_dir.join("io-baseline.dat");
    let local_direct = opts.local_dir.join("io-baseline-direct.dat");

    // Warm-up, not timed: one chunk written and synced. Right after `pond up` the storage
    // nodes' first heartbeats can still be settling (meta electing its leader); writes then
    // wait in the client's retry backoff, and the first timed row measured that wait — 1.4 s
    // of a 1.5 s row on a fresh cluster, ~0.1 s once the cluster was ready (docs/storage.md,
    // "Why the write-behind row was 42 MiB/s").
    let warm = client
        .create_file(&format!("{dir}/warm-up.dat"))
        .await
        .map_err(cerr)?;
    warm.pwrite(0, &pattern_bytes(4 * MIB))
        .await
        .map_err(cerr)?;
    warm.fsync().await.map_err(cerr)?;
    warm.close().await.map_err(cerr)?;
    client
        .unlink_path(&format!("{dir}/warm-up.dat"))
        .await
        .map_err(cerr)?;

    // Sequential writes, write-behind + fsync at the end.
    let pb = progress("io: sequential writes");
    let f = client.create_file(&path).await.map_err(cerr)?;
    let start = Instant::now();
    let mut s = Samples::default();
    let mut off = 0u64;
    while off < total {
        let t0 = Instant::now();
        f.pwrite(off, &block).await.map_err(cerr)?;
        s.push(t0.elapsed());
        off += MIB as u64;
    }
    f.fsync().await.map_err(cerr)?;
    f.close().await.map_err(cerr)?;
    s.wall = start.elapsed();
    s.bytes = total;
    fig.seq_write_buffered = s;
    fig.local_write_buffered = posix::seq_write(&local, total, MIB, false, Sync::AtEnd)?;
    let direct_write = posix::seq_write(&local_direct, total, MIB, true, Sync::AtEnd)?;

    // Sequential writes acknowledged one by one (pwrite_bytes: every replica durable).
    let acked_bytes = total.min(256 * MIB as u64);
    let f2 = client
        .create_file(&format!("{dir}/acked.dat"))
        .await
        .map_err(cerr)?;
    let blk = Bytes::from(block.clone());
    let start = Instant::now();
    let mut s = Samples::default();
    let mut off = 0u64;
    while off < acked_bytes {
        let t0 = Instant::now();
        f2.pwrite_bytes(off, blk.clone()).await.map_err(cerr)?;
        s.push(t0.elapsed());
        off += MIB as u64;
    }
    f2.close().await.map_err(cerr)?;
    s.wall = start.elapsed();
    s.bytes = acked_bytes;
    fig.seq_write_acked = s;
    let acked_local = opts.local_dir.join("io-baseline-acked.dat");
    fig.local_write_acked =
        posix::seq_write(&acked_local, acked_bytes, MIB, false, Sync::EveryBlock)?;
    let acked_direct = posix::seq_write(&acked_local, acked_bytes, MIB, true, Sync::EveryBlock)?;
    let _ = std::fs::remove_file(&acked_local);
    client
        .unlink_path(&format!("{dir}/acked.dat"))
        .await
        .map_err(cerr)?;
    pb.finish_and_clear();

    // Sequential reads after one warm-up pass (both sides).
    let pb = progress("io: sequential reads");
    let file = Arc::new(
        client
            .open(&path, OpenOptions::read())
            .await
            .map_err(cerr)?,
    );
    let size = file.size();
    if size != total {
        anyhow::bail!("pond file is {size} bytes after close, wrote {total}");
    }
    pond_seq_pass(&file, size).await?;
    fig.seq_read = pond_seq_pass(&file, size).await?;
    posix::seq_read(&local, MIB, false)?;
    fig.local_seq_read = posix::seq_read(&local, MIB, false)?;
    let direct_read = posix::seq_read(&local_direct, MIB, true)?;
    // Cold: the page cache dropped before each side (a fresh handle for pond, opened first).
    let cold_file = client
        .open(&path, OpenOptions::read())
        .await
        .map_err(cerr)?;
    let dropped = drop_page_cache();
    let pond_cold = pond_seq_pass(&cold_file, size).await?;
    cold_file.close().await.map_err(cerr)?;
    if dropped.is_ok() {
        let _ = drop_page_cache();
    }
    drop_file_cache(&local)?;
    let local_cold = posix::seq_read(&local, MIB, false)?;
    pb.finish_and_clear();

    let mut t = Table::new(
        &format!("io: client library, {label}, file {} MiB", total >> 20),
        &["pond client", "local buffered", "local O_DIRECT"],
    );
    t.row(
        "seq write 1 MiB, fsync at end",
        vec![
            Some(fig.seq_write_buffered.clone()),
            Some(fig.local_write_buffered.clone()),
            Some(direct_write),
        ],
    );
    t.row(
        "seq write 1 MiB, each durable (pwrite_bytes)",
        vec![
            Some(fig.seq_write_acked.clone()),
            Some(fig.local_write_acked.clone()),
            Some(acked_direct),
        ],
    );
    t.row(
        "seq read 1 MiB, qd1 (warm)",
        vec![
            Some(fig.seq_read.clone()),
            Some(fig.local_seq_read.clone()),
            Some(direct_read.clone()),
        ],
    );
    t.row(
        "seq read 1 MiB, qd1 (cold)",
        vec![Some(pond_cold), Some(local_cold), Some(direct_read)],
    );

    // Random reads.
    for (block, qd) in [
        (4096usize, 1usize),
        (4096, 64),
        (128 << 10, 1),
        (128 << 10, 64),
    ] {
        let name = format!("rand read {} KiB, qd{qd}", block >> 10);
        let pb = progress(&format!("io: {name}"));
        let p = pond_rand(&file, size, block, qd, opts.phase).await?;
        let l = posix::rand_read(&local, total, block, qd, opts.phase, false)?;
        let d = posix::rand_read(&local_direct, total, block, qd, opts.phase, true)?;
        fig.rand.push(((block, qd), p.clone()));
        fig.local_rand.push(((block, qd), l.clone()));
        t.row(
            &format!("{name} (pread)"),
            vec![Some(p), Some(l), Some(d.clone())],
        );
        if qd > 1 {
            let b = pond_batch_rand(&file, size, block, qd, opts.phase).await?;
            t.row(&format!("{name} (batched API)"), vec![Some(b), None, None]);
        }
        pb.finish_and_clear();
    }
    t.note("pond: 3 replicas on one disk; reads: one replica; local: one file in the cluster's filesystem");
    t.note("batched API rows: submissions of 64 requests into caller-owned buffers, waited for as a whole");
    t.note("seq reads: read-only handles (client read-ahead on); warm = second pass over one handle, the local file from the page cache (memory); cold = page cache dropped before each side (issue 3's \"local disk buffered\" baseline); O_DIRECT column: the same O_DIRECT pass in both rows");
    if let Err(e) = &dropped {
        t.note(format!("cold row: could not drop the page cache ({e}; needs root): pond's storage files may be cached; the local file was dropped with posix_fadvise"));
    }
    t.print();

    file.close().await.map_err(cerr)?;
    client.unlink_path(&path).await.map_err(cerr)?;
    client.rmdir_path(&dir).await.map_err(cerr)?;
    for p in [&local, &local_direct] {
        std::fs::remove_file(p).with_context(|| format!("remove {}", p.display()))?;
    }
    Ok(fig)
}

fn pattern_bytes(n: usize) -> Vec<u8> {
    posix::pattern(n, 3)
}
