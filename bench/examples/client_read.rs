//! Sequential 1 MiB `pread`s through the client library against a running cluster, warm and
//! cold (page cache dropped first: root), with the disk's read requests and the machine's CPU
//! time over each pass: shows whether a cold sequential reader waits on the disk or on CPU.
//! `client_read CLUSTER_TOML [MIB] [ROUNDS]` (writes `/client-read/f{MIB}` once, keeps it).

use std::time::Instant;

/// (read requests completed, sectors read) summed over the whole disks in /proc/diskstats.
fn disk_reads() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
    let mut out = (0, 0);
    for l in s.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Whole virtio/SCSI/NVMe disks only (no partitions, no loop devices).
        let name = f.get(2).copied().unwrap_or("");
        let whole = (name.starts_with("vd") || name.starts_with("sd"))
            && !name.ends_with(|c: char| c.is_ascii_digit())
            || name.starts_with("nvme") && !name.contains('p');
        if whole && f.len() > 5 {
            out.0 += f[3].parse::<u64>().unwrap_or(0);
            out.1 += f[5].parse::<u64>().unwrap_or(0);
        }
    }
    out
}

/// Busy and total CPU ticks (all CPUs) from /proc/stat.
fn cpu_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cluster = args.next().ok_or_else(|| anyhow::anyhow!("cluster file"))?;
    let mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(512);
    let rounds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let client = pond_client::Client::from_cluster_file(std::path::Path::new(&cluster)).await?;
        client.mkdir_all("/client-read", 0o755).await?;
        let path = format!("/client-read/f{mib}");
        if client.stat(&path).await.map(|a| a.size).ok() != Some(mib << 20) {
            let f = client.create_file(&path).await?;
            let block: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
            for i in 0..mib {
                f.pwrite(i << 20, &block).await?;
            }
            f.close().await?;
        }
        for r in 0..rounds {
            for cold in [true, false] {
                if cold {
                    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
                }
                let f = client.open(&path, pond_client::OpenOptions::read()).await?;
                let (d0, c0) = (disk_reads(), cpu_ticks());
                let t0 = Instant::now();
                let mut off = 0u64;
                while off < mib << 20 {
                    let b = f.pread(off, 1 << 20).await?;
                    if b.is_empty() {
                        break;
                    }
                    off += b.len() as u64;
                }
                let s = t0.elapsed().as_secs_f64();
                let (d1, c1) = (disk_reads(), cpu_ticks());
                f.close().await?;
                let ios = d1.0 - d0.0;
                let kib = (d1.1 - d0.1) / 2;
                println!(
                    "round {r} {}: {:.1} MiB/s ({:.2} s); disk: {ios} reads, {} KiB avg; cpu busy {:.0}%",
                    if cold { "cold" } else { "warm" },
                    (off >> 20) as f64 / s,
                    s,
                    kib.checked_div(ios).unwrap_or(0),
                    100.0 * (c1.0 - c0.0) as f64 / (c1.1 - c0.1).max(1) as f64,
                );
            }
        }
        anyhow::Ok(())
    })
}
