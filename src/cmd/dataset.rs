//! `pond dataset pack|read`: training datasets in pond (docs/loader.md).

use anyhow::Result;
use pond_client::Client;
use pond_client::dataset::{
    Dataset, PackOptions, ReaderOptions, Sampler, SamplerOptions, pack, read_epoch,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Subcommand)]
pub enum DatasetCmd {
    /// Pack a local directory (one sample per file) or a JSONL file (one sample per line)
    /// into shard files plus an index under DST. Atomic: written under a hidden sibling
    /// directory and renamed into place, so DST is absent or complete, never half-written.
    Pack {
        src: PathBuf,
        dst: String,
        /// Target shard size in MiB.
        #[arg(long, default_value_t = 256)]
        shard_mb: u64,
        /// Replace DST if it exists (swapped in one rename; the old dataset is then removed).
        #[arg(long)]
        replace: bool,
    },
    /// Read one shuffled epoch of a packed dataset and report samples/s.
    Read {
        path: String,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 0)]
        epoch: u64,
        #[arg(long, default_value_t = 0)]
        rank: u32,
        #[arg(long, default_value_t = 1)]
        world_size: u32,
        /// Batches in flight ahead of the consumer.
        #[arg(long, default_value_t = 4)]
        prefetch: usize,
    },
}

/// Reads one epoch of `path`, printing a one-line summary. Shared with `pond demo`.
pub async fn read_one_epoch(
    c: &Client,
    path: &str,
    sampler_opts: SamplerOptions,
    epoch: u64,
    reader: ReaderOptions,
) -> Result<()> {
    let ds = Dataset::open(c, path).await?;
    let mut sampler = Sampler::new(ds.len(), sampler_opts)?;
    sampler.set_epoch(epoch);
    let stats = read_epoch(Arc::new(ds), sampler, reader, |_| {}).await?;
    println!(
        "epoch {epoch}: {} batches, {} samples, {:.1} MB in {:.2} s: {:.0} samples/s, {:.1} MB/s",
        stats.batches,
        stats.samples,
        stats.bytes as f64 / 1e6,
        stats.wall.as_secs_f64(),
        stats.samples_per_sec(),
        stats.mb_per_sec()
    );
    Ok(())
}

pub fn run(cluster: Option<&Path>, cmd: DatasetCmd) -> Result<()> {
    let cf = super::load_cluster(cluster)?;
    super::runtime()?.block_on(async {
        let c = Client::connect(&cf)
            .await
            .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
        match cmd {
            DatasetCmd::Pack {
                src,
                dst,
                shard_mb,
                replace,
            } => {
                let r = pack(
                    &c,
                    &src,
                    &dst,
                    &PackOptions {
                        shard_bytes: shard_mb << 20,
                        replace,
                    },
                )
                .await?;
                println!(
                    "packed {} samples ({} bytes) into {} shard(s); index {}",
                    r.samples, r.bytes, r.shards, r.index_path
                );
                for l in &r.leftovers {
                    println!(
                        "note: {l} is another pack's staging directory (killed, or still \
                         running); remove it when no pack of {dst} runs: pond rm -r {l}"
                    );
                }
            }
            DatasetCmd::Read {
                path,
                batch_size,
                seed,
                epoch,
                rank,
                world_size,
                prefetch,
            } => {
                let so = SamplerOptions {
                    seed,
                    rank,
                    world_size,
                    ..Default::default()
                };
                let ro = ReaderOptions {
                    batch_size,
                    prefetch,
                    ..Default::default()
                };
                read_one_epoch(&c, &path, so, epoch, ro).await?;
            }
        }
        anyhow::Ok(())
    })
}

/// Line `i` of the demo's JSONL dataset: 200..4,200 bytes of text naming `i`.
fn demo_line(i: u64) -> String {
    let len = 200 + ((i * 2_654_435_761) % 4_000) as usize;
    let mut s = format!("{{\"id\":{i},\"text\":\"");
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push((b'a' + (x % 26) as u8) as char);
    }
    s.push_str("\"}");
    s
}

/// `pond demo`'s training step: packs a JSONL file of `samples` lines into `/{run}/train`,
/// reads one shuffled epoch through the batch reader (batches of 256, 4 in flight), checks
/// every sample against its line, and prints samples/s and MB/s.
pub fn demo_epoch(rt: &tokio::runtime::Runtime, c: &Client, run: &str, samples: u64) -> Result<()> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("train.jsonl");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&src)?);
        for i in 0..samples {
            writeln!(w, "{}", demo_line(i))?;
        }
        w.flush()?;
    }
    let dst = format!("/{run}/train");
    let t = std::time::Instant::now();
    let rep = rt.block_on(pack(
        c,
        &src,
        &dst,
        &PackOptions {
            shard_bytes: 16 << 20,
            replace: false,
        },
    ))?;
    let pack_secs = t.elapsed().as_secs_f64();
    let ds = Arc::new(rt.block_on(Dataset::open(c, &dst))?);
    let mut sampler = Sampler::new(
        ds.len(),
        SamplerOptions {
            seed: 2026,
            ..Default::default()
        },
    )?;
    sampler.set_epoch(1);
    let mut bad = Vec::new();
    let stats = rt.block_on(read_epoch(
        ds.clone(),
        sampler,
        ReaderOptions {
            batch_size: 256,
            prefetch: 4,
            ..Default::default()
        },
        |b| {
            for (i, s) in b.indices.iter().zip(&b.samples) {
                if s[..] != *demo_line(*i).as_bytes() {
                    bad.push(*i);
                }
            }
        },
    ))?;
    anyhow::ensure!(
        bad.is_empty(),
        "{} samples differ (first: {:?})",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    anyhow::ensure!(
        stats.samples == samples,
        "epoch read {} samples",
        stats.samples
    );
    rt.block_on(ds.close())?;
    {
        // The files' last references go inside the runtime (their drop may spawn there).
        let _g = rt.enter();
        drop(ds);
    }
    println!(
        "\ntraining epoch: {} JSONL samples ({:.1} MB) packed into {} shard(s) under {dst} in \
         {pack_secs:.2} s",
        rep.samples,
        rep.bytes as f64 / 1e6,
        rep.shards
    );
    println!(
        "  one shuffled epoch through the batch reader (batch 256, prefetch 4), every sample \
         verified: {:.0} samples/s, {:.1} MB/s ({} batches in {:.2} s)",
        stats.samples_per_sec(),
        stats.mb_per_sec(),
        stats.batches,
        stats.wall.as_secs_f64()
    );
    Ok(())
}
