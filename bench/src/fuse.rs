//! Through FUSE (issue 4): the same POSIX workloads on a pond mount, on the passthrough floor
//! (`passthrough`, the same `fuse3` crate over a local directory) and on the local directory
//! itself: sequential 1 MiB writes and reads, 4 KiB and 128 KiB random reads at queue depth 1,
//! create/stat/unlink with 1 and 16 threads, and small files (64 KiB) written then read back in
//! a random order.

use crate::passthrough::PassthroughMount;
use crate::posix::{self, MIB, NsOp, Sync};
use crate::report::{Samples, Table, progress};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct FuseOpts {
    pub file_bytes: u64,
    pub phase: Duration,
    /// Files per thread for create/stat/unlink with 1 thread; 16 threads do 1/16 of it each.
    pub ns_files: usize,
    pub small_files: usize,
    pub small_file_bytes: usize,
    /// Local directory (the cluster's filesystem) for the passthrough source and the baseline.
    pub local_dir: PathBuf,
}

/// Runs the suite with pond mounted at `pond_mnt`; mounts (and unmounts) the passthrough floor.
pub fn run(pond_mnt: &Path, label: &str, opts: &FuseOpts) -> Result<()> {
    let pt_src = opts.local_dir.join("passthrough-src");
    let pt_mnt = opts.local_dir.join("passthrough-mnt");
    let local = opts.local_dir.join("local");
    for d in [&pt_src, &pt_mnt, &local] {
        std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
    }
    let pt = PassthroughMount::mount(&pt_src, &pt_mnt)?;
    let pond_dir = pond_mnt.join(format!("bench-fuse-{}", std::process::id()));
    let result = measure(
        &[pond_dir.clone(), pt_mnt.join("bench"), local.join("bench")],
        label,
        opts,
    );
    let cleanup_pond = std::fs::remove_dir_all(&pond_dir);
    let cleanup_pt = pt.unmount();
    let _ = std::fs::remove_dir_all(&pt_src);
    let _ = std::fs::remove_dir_all(&local);
    let _ = std::fs::remove_dir(&pt_mnt);
    result?;
    cleanup_pond.with_context(|| format!("remove {}", pond_dir.display()))?;
    cleanup_pt
}

fn each<F>(roots: &[PathBuf], mut f: F) -> Result<Vec<Option<Samples>>>
where
    F: FnMut(&Path) -> Result<Samples>,
{
    roots.iter().map(|r| f(r).map(Some)).collect()
}

fn measure(roots: &[PathBuf], label: &str, opts: &FuseOpts) -> Result<()> {
    for r in roots {
        std::fs::create_dir_all(r).with_context(|| format!("mkdir {}", r.display()))?;
    }
    let mut t = Table::new(
        &format!("fuse: {label}, file {} MiB", opts.file_bytes >> 20),
        &["pond FUSE", "passthrough FUSE", "local dir"],
    );
    // Warm-up, not timed, on the pond mount: one 4 MiB file written, synced and removed, so the
    // first row does not measure a freshly started cluster settling (storage heartbeats while
    // meta elects its leader: writes wait in the client's retry backoff; docs/storage.md, "Why
    // the write-behind row was 42 MiB/s").
    let warm = roots[0].join("warm-up.dat");
    posix::seq_write(&warm, 4 * MIB as u64, MIB, false, Sync::AtEnd)?;
    std::fs::remove_file(&warm).with_context(|| format!("remove {}", warm.display()))?;
    let pb = progress("fuse: sequential write");
    let seq = |r: &Path| r.join("seq.dat");
    let w = each(roots, |r| {
        posix::seq_write(&seq(r), opts.file_bytes, MIB, false, Sync::AtEnd)
    })?;
    t.row("seq write 1 MiB, fsync at end", w);
    pb.set_message("fuse: sequential read");
    let r1 = each(roots, |r| posix::seq_read(&seq(r), MIB, false))?;
    t.row("seq read 1 MiB, first pass", r1);
    let r2 = each(roots, |r| posix::seq_read(&seq(r), MIB, false))?;
    t.row("seq read 1 MiB, second pass", r2);
    for block in [4096usize, 128 << 10] {
        pb.set_message(format!("fuse: random {} KiB reads", block >> 10));
        let s = each(roots, |r| {
            posix::rand_read(&seq(r), opts.file_bytes, block, 1, opts.phase, false)
        })?;
        t.row(&format!("rand read {} KiB, qd1", block >> 10), s);
    }
    for r in roots {
        std::fs::remove_file(seq(r)).with_context(|| format!("remove {}", seq(r).display()))?;
    }
    for threads in [1usize, 16] {
        pb.set_message(format!("fuse: create/stat/unlink, {threads} threads"));
        let per = (opts.ns_files / threads).max(1);
        let mut cols: Vec<Vec<(NsOp, Samples)>> = Vec::new();
        for r in roots {
            cols.push(posix::meta_ops(
                &r.join(format!("ns{threads}")),
                threads,
                per,
            )?);
            let _ = std::fs::remove_dir(r.join(format!("ns{threads}")));
        }
        for (i, op) in ["create", "stat", "unlink"].iter().enumerate() {
            let cells = cols.iter().map(|c| Some(c[i].1.clone())).collect();
            t.row(&format!("{op}, {threads} thread(s)"), cells);
        }
    }
    pb.set_message(format!("fuse: {} small files", opts.small_files));
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for r in roots {
        let d = r.join("small");
        let (mut w, mut rd) = posix::small_files(&d, opts.small_files, opts.small_file_bytes)?;
        // Rows in files/s.
        w.bytes = 0;
        rd.bytes = 0;
        writes.push(Some(w));
        reads.push(Some(rd));
        std::fs::remove_dir_all(&d).with_context(|| format!("remove {}", d.display()))?;
    }
    let kib = opts.small_file_bytes >> 10;
    t.row(
        &format!("{} files x {kib} KiB: write (files/s)", opts.small_files),
        writes,
    );
    t.row(
        &format!("{} files x {kib} KiB: read, random order", opts.small_files),
        reads,
    );
    pb.finish_and_clear();
    t.note("first pass: right after the write; each pass opens the file anew. The passthrough floor drops the page cache at open; pond keeps it for a file unchanged since it was cached (FOPEN_KEEP_CACHE), so pond's second-pass and random-read rows on that file can be page-cache hits");
    t.note("stat follows create in the same process: the kernel's 1 s attribute cache may answer it on both FUSE mounts; past it, pond's daemon answers from its TTL-bounded namespace cache");
    t.print();
    Ok(())
}
