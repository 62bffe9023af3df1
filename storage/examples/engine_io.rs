//! Measures the chunk engine's data paths on one target directory, to choose O_DIRECT per
//! operation class (docs/storage.md "io_uring backend"): `pread`/`pwrite`, io_uring buffered,
//! io_uring with O_DIRECT writes, reads or both.
//!
//! `cargo run --release -p pond-storage --example engine_io -- DIR [MIB] [THREADS]`
//! (DIR is emptied and removed at the end; default 256 MiB of chunks, 8 reader threads).

use pond_proto::{ChainVersion, ChunkId, ChunkVersion, InodeId};
use pond_storage::store::engine::Engine;
use pond_storage::store::file::{FileBackend, IoOptions};
use pond_storage::store::{ChunkStore, Mutation};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const CHUNK: usize = 4 << 20;
const WRITE: usize = 1 << 20;

fn evict(dir: &Path) {
    let f = std::fs::File::open(dir.join("blocks.dat")).expect("data file");
    // SAFETY: advisory call on a valid descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// `threads` readers, each `per` reads of `len` bytes at random sector-aligned offsets.
fn reads(e: &Arc<Engine<FileBackend>>, chunks: u64, len: u32, threads: u64, per: u64) -> f64 {
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9 + t;
                for _ in 0..per {
                    let c = ChunkId::new(InodeId(1), rand(&mut x) % chunks);
                    let off = (rand(&mut x) % (CHUNK as u64 / len as u64)) as u32 * len;
                    let b = e.read(c, ChunkVersion(1), off, len).expect("read");
                    assert_eq!(b.len(), len as usize);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("reader");
    }
    (threads * per) as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).expect("DIR")).to_path_buf();
    let mib: usize = args.get(2).map_or(256, |s| s.parse().expect("MIB"));
    let threads: u64 = args.get(3).map_or(8, |s| s.parse().expect("THREADS"));
    let chunks = (mib * (1 << 20) / CHUNK) as u64;
    let payload: Vec<u8> = (0..WRITE).map(|i| (i * 31 % 251) as u8).collect();
    let opts = |uring, direct_writes, cache_first, direct_reads_from| IoOptions {
        uring,
        direct_writes,
        cache_first,
        pread_misses: false,
        direct_reads_from,
    };
    let modes = [
        ("pread/pwrite", opts(false, false, false, None)),
        ("ring, buffered", opts(true, false, false, None)),
        ("ring, O_DIRECT reads", opts(true, false, false, Some(0))),
        ("cache first, ring buf", opts(true, false, true, None)),
        ("cache first, ring O_DIR", opts(true, false, true, Some(0))),
        ("O_DIRECT writes", opts(true, true, true, None)),
        ("default", IoOptions::default()),
    ];
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for (name, opts) in modes {
        let _ = std::fs::remove_dir_all(&dir);
        let e = Arc::new(
            Engine::open(FileBackend::open_with(&dir, None, opts).expect("open")).expect("engine"),
        );
        // Sequential 1 MiB writes, each durable as on a replica (stage: data + fdatasync;
        // commit: the record, durable).
        let t0 = Instant::now();
        for c in 0..chunks {
            let id = ChunkId::new(InodeId(1), c);
            for (k, off) in (0..CHUNK).step_by(WRITE).enumerate() {
                let v = ChunkVersion(k as u32 + 1);
                e.stage(
                    id,
                    v,
                    ChainVersion(1),
                    Mutation::Write {
                        offset: off as u32,
                        data: &payload,
                    },
                    None,
                )
                .expect("stage");
                e.commit(id, v).expect("commit");
            }
        }
        let w = mib as f64 / t0.elapsed().as_secs_f64();
        // Re-make version 1 of every chunk as one replace, so reads name one version.
        for c in 0..chunks {
            let id = ChunkId::new(InodeId(1), c);
            let data = e.read(id, ChunkVersion(4), 0, CHUNK as u32).expect("read");
            e.install(id, ChunkVersion(1), ChainVersion(1), &data)
                .expect("install");
        }
        evict(&dir);
        let t0 = Instant::now();
        for c in 0..chunks {
            let id = ChunkId::new(InodeId(1), c);
            for off in (0..CHUNK).step_by(WRITE) {
                e.read(id, ChunkVersion(1), off as u32, WRITE as u32)
                    .expect("read");
            }
        }
        let cold_seq = mib as f64 / t0.elapsed().as_secs_f64();
        evict(&dir);
        let cold_4k = reads(&e, chunks, 4096, threads, 2000);
        let cold_128k = {
            evict(&dir);
            reads(&e, chunks, 128 << 10, threads, 200)
        };
        // Warm: read everything once through the page cache (buffered reads fill it; with
        // O_DIRECT reads the cache is not used, so "warm" is the disk again).
        for c in 0..chunks {
            let id = ChunkId::new(InodeId(1), c);
            e.read(id, ChunkVersion(1), 0, CHUNK as u32).expect("read");
        }
        std::fs::read(dir.join("blocks.dat"))
            .map(drop)
            .expect("warm");
        let warm_4k_qd1 = reads(&e, chunks, 4096, 1, 20_000);
        let warm_4k = reads(&e, chunks, 4096, threads, 5_000);
        let warm_128k = reads(&e, chunks, 128 << 10, threads, 500);
        println!(
            "{name:24} write 1 MiB durable {w:7.0} MiB/s | cold: seq 1 MiB {cold_seq:6.0} MiB/s, \
             4K x{threads} {cold_4k:7.0}/s, 128K x{threads} {cold_128k:6.0}/s | warm: 4K qd1 \
             {warm_4k_qd1:7.0}/s, 4K x{threads} {warm_4k:7.0}/s, 128K x{threads} {warm_128k:6.0}/s"
        );
        drop(e);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "load average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
