//! Loader benchmark: a shuffled epoch of fixed-size samples (4 KiB, 64 KiB, 1 MiB) read by
//! pond's batch reader, against a local-disk loader with the same access pattern in the same
//! run: the same permutation and batches, read by 4 worker threads with `pread` (what a
//! PyTorch DataLoader with 4 workers does), once with the file in the page cache ("warm")
//! and once after `posix_fadvise(DONTNEED)` ("cold").
//!
//! Figures: samples/s and MB/s (10^6 bytes) per reader, and pond / local ratios. The PyTorch
//! DataLoader comparisons (over the FUSE mount and over the local disk) are
//! `bench/loader_torch.py` (run by `bench/loader-torch.sh`).

use anyhow::{Context, Result};
use pond_client::Client;
use pond_client::dataset::{BatchReader, Dataset, ReaderOptions, Sampler, SamplerOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Worker threads of the local baseline (a DataLoader's usual `num_workers`).
const LOCAL_WORKERS: usize = 4;

#[derive(Clone, Copy)]
struct Case {
    sample_bytes: u64,
    samples: u64,
    batch_size: usize,
}

fn cases(quick: bool) -> Vec<Case> {
    let total: u64 = if quick { 32 << 20 } else { 256 << 20 };
    [(4u64 << 10, 256usize), (64 << 10, 64), (1 << 20, 8)]
        .into_iter()
        .map(|(s, b)| Case {
            sample_bytes: s,
            samples: total / s,
            batch_size: b,
        })
        .collect()
}

fn sampler(n: u64) -> Result<Sampler> {
    let mut s = Sampler::new(
        n,
        SamplerOptions {
            seed: 7,
            ..Default::default()
        },
    )?;
    s.set_epoch(1);
    Ok(s)
}

/// Reads the epoch from the local file with `LOCAL_WORKERS` threads taking whole batches
/// round-robin; returns the bytes read.
fn local_epoch(path: &Path, case: &Case) -> Result<u64> {
    let file = Arc::new(std::fs::File::open(path).context("open local file")?);
    let order: Arc<Vec<u64>> = Arc::new(sampler(case.samples)?.collect());
    let batches = order.len().div_ceil(case.batch_size);
    let mut handles = Vec::new();
    for w in 0..LOCAL_WORKERS {
        let file = file.clone();
        let order = order.clone();
        let (bs, sb) = (case.batch_size, case.sample_bytes as usize);
        handles.push(std::thread::spawn(move || -> std::io::Result<u64> {
            let mut n = 0u64;
            let mut k = w;
            while k < batches {
                let end = ((k + 1) * bs).min(order.len());
                // A fresh buffer per sample, as a loader hands each sample on.
                for &i in &order[k * bs..end] {
                    let mut buf = vec![0u8; sb];
                    file.read_exact_at(&mut buf, i * sb as u64)?;
                    n += buf.len() as u64;
                }
                k += LOCAL_WORKERS;
            }
            Ok(n)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.join().expect("local reader thread")?;
    }
    Ok(total)
}

fn evict(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path)?;
    f.sync_all()?;
    // SAFETY: fadvise on an open descriptor; only advice to the kernel, touches no memory.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(rc == 0, "posix_fadvise failed: {rc}");
    Ok(())
}

fn line(label: &str, samples: u64, bytes: u64, wall: Duration) -> f64 {
    let s = wall.as_secs_f64().max(1e-9);
    println!(
        "  {label:<28} {:>10.0} samples/s {:>9.1} MB/s  ({samples} samples in {:.2} s)",
        samples as f64 / s,
        bytes as f64 / s / 1e6,
        s
    );
    samples as f64 / s
}

pub async fn run(cluster_file: &Path, quick: bool) -> Result<()> {
    let client = Client::from_cluster_file(cluster_file)
        .await
        .context("connect")?;
    let dir = tempfile::tempdir().context("temp dir")?;
    client.mkdir_all("/bench-loader", 0o755).await?;
    println!(
        "loader: shuffled epoch, fixed-size samples; pond batch reader (prefetch 4) vs local \
         pread with {LOCAL_WORKERS} threads, same order and batches"
    );
    for case in cases(quick) {
        let bytes = case.samples * case.sample_bytes;
        println!(
            "{} KiB samples: {} samples, {} MiB, batch {}",
            case.sample_bytes >> 10,
            case.samples,
            bytes >> 20,
            case.batch_size
        );
        // The same bytes locally and in pond.
        let local = dir.path().join(format!("{}.bin", case.sample_bytes));
        {
            let f = std::fs::File::create(&local)?;
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let step = 1 << 20;
            let mut buf = vec![0u8; step];
            let mut off = 0u64;
            while off < bytes {
                for b in buf.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                let n = step.min((bytes - off) as usize);
                f.write_all_at(&buf[..n], off)?;
                off += n as u64;
            }
            f.sync_all()?;
        }
        let remote = format!("/bench-loader/{}.bin", case.sample_bytes);
        client.put(&local, &remote, |_| {}).await?;
        let ds = Arc::new(
            Dataset::open_fixed(&client, std::slice::from_ref(&remote), case.sample_bytes).await?,
        );
        // pond batch reader.
        let mut r = BatchReader::new(
            ds.clone(),
            sampler(case.samples)?,
            ReaderOptions {
                batch_size: case.batch_size,
                prefetch: 4,
                ..Default::default()
            },
        )?;
        let t = Instant::now();
        let (mut n, mut got) = (0u64, 0u64);
        while let Some(b) = r.next_batch().await? {
            n += b.samples.len() as u64;
            got += b.bytes();
        }
        let pond_rate = line("pond batch reader", n, got, t.elapsed());
        anyhow::ensure!(n == case.samples && got == bytes, "pond read {n} samples");
        anyhow::ensure!(
            ds.bytes_requested() == bytes,
            "asked {} bytes",
            ds.bytes_requested()
        );
        // Local, page cache warm, then cold.
        let warm_local = local.clone();
        let c = case;
        let (warm, c) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let r = local_epoch(&warm_local, &c);
            (r.map(|b| (b, t.elapsed())), c)
        })
        .await?;
        let (b, wall) = warm?;
        let warm_rate = line("local pread, warm cache", c.samples, b, wall);
        let cold_local = local.clone();
        let (cold, c) = tokio::task::spawn_blocking(move || {
            let r = evict(&cold_local).and_then(|_| {
                let t = Instant::now();
                local_epoch(&cold_local, &c).map(|b| (b, t.elapsed()))
            });
            (r, c)
        })
        .await?;
        let (b, wall) = cold?;
        let cold_rate = line("local pread, cold (fadvise)", c.samples, b, wall);
        println!(
            "  pond / local warm = {:.2}x, pond / local cold = {:.2}x",
            pond_rate / warm_rate,
            pond_rate / cold_rate
        );
        ds.close().await?;
        client.unlink_path(&remote).await?;
    }
    Ok(())
}
