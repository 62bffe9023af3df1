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
    /// into shard files plus an index under DST.
    Pack {
        src: PathBuf,
        dst: String,
        /// Target shard size in MiB.
        #[arg(long, default_value_t = 256)]
        shard_mb: u64,
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
            DatasetCmd::Pack { src, dst, shard_mb } => {
                let r = pack(
                    &c,
                    &src,
                    &dst,
                    &PackOptions {
                        shard_bytes: shard_mb << 20,
                    },
                )
                .await?;
                println!(
                    "packed {} samples ({} bytes) into {} shard(s); index {}",
                    r.samples, r.bytes, r.shards, r.index_path
                );
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
