//! Datasets, the sampler and the batch reader against real `pond` processes: a packed
//! dataset read for a whole epoch over several ranks, every sample byte-exact; and a storage
//! node killed with SIGKILL in the middle of an epoch, which still completes with every
//! sample correct.

use pond_client::Client;
use pond_client::dataset::{
    self, BatchReader, Dataset, PackOptions, ReaderOptions, Sampler, SamplerOptions,
};
use pond_tests::{Cluster, Opts, Role};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_pond");

/// Sample `i`: 1..40,000 bytes (many cross 4 MiB chunk boundaries of their shard), a
/// pattern naming `i`.
fn sample(i: u64) -> Vec<u8> {
    let len = 1 + ((i * 104_729) % 40_000) as usize;
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn opts() -> Opts {
    Opts {
        meta: 1,
        storage: 3,
        targets_per_node: 2,
        replicas: 3,
    }
}

async fn packed(cluster: &Cluster, n: u64) -> (Client, Arc<Dataset>, tempfile::TempDir) {
    let src = tempfile::tempdir().unwrap();
    for i in 0..n {
        std::fs::write(src.path().join(format!("{i:06}")), sample(i)).unwrap();
    }
    let c = Client::from_cluster_file(&cluster.cluster_file_path())
        .await
        .expect("connect");
    let rep = dataset::pack(
        &c,
        src.path(),
        "/train",
        &PackOptions {
            shard_bytes: 16 << 20,
        },
    )
    .await
    .unwrap();
    assert_eq!(rep.samples, n);
    let ds = Arc::new(Dataset::open(&c, "/train").await.unwrap());
    (c, ds, src)
}

fn reader(ds: &Arc<Dataset>, rank: u32, world_size: u32, epoch: u64) -> BatchReader {
    let mut s = Sampler::new(
        ds.len(),
        SamplerOptions {
            seed: 2026,
            rank,
            world_size,
            ..Default::default()
        },
    )
    .unwrap();
    s.set_epoch(epoch);
    BatchReader::new(
        ds.clone(),
        s,
        ReaderOptions {
            batch_size: 64,
            prefetch: 4,
            ..Default::default()
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_over_three_ranks_reads_every_sample_exactly_once() {
    let cluster = Cluster::start(BIN, opts()).expect("start cluster");
    let n = 3_000;
    let (_c, ds, _src) = packed(&cluster, n).await;
    let mut seen = HashSet::new();
    let mut bytes = 0u64;
    let before = ds.bytes_requested();
    for rank in 0..3 {
        let mut r = reader(&ds, rank, 3, 1);
        while let Some(b) = r.next_batch().await.unwrap() {
            for (i, s) in b.indices.iter().zip(&b.samples) {
                assert!(s[..] == sample(*i)[..], "sample {i} differs");
                assert!(seen.insert(*i), "sample {i} twice");
                bytes += s.len() as u64;
            }
        }
    }
    assert_eq!(seen.len() as u64, n, "every sample");
    assert_eq!(ds.bytes_requested() - before, bytes, "no readahead");
    let e = ds.get(n).await.unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_node_killed_mid_epoch_does_not_lose_a_sample() {
    let mut cluster = Cluster::start(BIN, opts()).expect("start cluster");
    let n = 2_000;
    let (_c, ds, _src) = packed(&cluster, n).await;
    let mut r = reader(&ds, 0, 1, 0);
    let mut seen = HashSet::new();
    let mut batches = 0;
    let epoch = async {
        while let Some(b) = r.next_batch().await.unwrap() {
            for (i, s) in b.indices.iter().zip(&b.samples) {
                assert!(s[..] == sample(*i)[..], "sample {i} differs");
                assert!(seen.insert(*i), "sample {i} twice");
            }
            batches += 1;
            if batches == 5 {
                // Prefetched batches are in flight while the node dies.
                cluster.kill9(Role::Storage(2)).expect("kill storage 2");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(180), epoch)
        .await
        .expect("the epoch finishes");
    assert!(batches > 5);
    assert_eq!(seen.len() as u64, n, "every sample after the kill");
}

/// The loader benchmark (`pond_bench::loader`) on a fresh cluster, quick mode:
/// `cargo test --test loader -- --ignored --nocapture bench`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run on demand"]
async fn bench_loader_quick() {
    let cluster = Cluster::start(BIN, opts()).expect("start cluster");
    pond_bench::loader::run(&cluster.cluster_file_path(), true)
        .await
        .expect("loader benchmark");
}
