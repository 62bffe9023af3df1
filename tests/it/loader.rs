//! Datasets, the sampler and the batch reader against real `pond` processes: a packed
//! dataset read for a whole epoch over several ranks, every sample byte-exact; and a storage
//! node killed with SIGKILL in the middle of an epoch, which still completes with every
//! sample correct. `pond dataset pack` is atomic: killed midway it leaves no dataset visible,
//! an existing destination is refused or (on request) swapped whole.

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
            ..Default::default()
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

/// Hidden staging directories (of packs) in `dir`.
async fn staging_dirs(c: &Client, dir: &str) -> Vec<String> {
    c.read_dir_all(dir)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.contains(".pack-"))
        .collect()
}

fn write_src(n: u64, offset: u64) -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    for i in 0..n {
        std::fs::write(src.path().join(format!("{i:06}")), sample(i + offset)).unwrap();
    }
    src
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_refuses_an_existing_destination_replaces_on_request_and_cleans_up_failures() {
    let cluster = Cluster::start(BIN, opts()).expect("start cluster");
    let c = Client::from_cluster_file(&cluster.cluster_file_path())
        .await
        .expect("connect");
    let small = PackOptions {
        shard_bytes: 1 << 20,
        ..Default::default()
    };
    let a = write_src(150, 0);
    let rep = dataset::pack(&c, a.path(), "/sets/train", &small)
        .await
        .unwrap();
    assert!(rep.shards > 1 && rep.leftovers.is_empty(), "{rep:?}");
    assert_eq!(Dataset::open(&c, "/sets/train").await.unwrap().len(), 150);
    // An existing destination is refused and left as it was.
    let b = write_src(60, 10_000);
    let e = dataset::pack(&c, b.path(), "/sets/train", &small)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    assert_eq!(Dataset::open(&c, "/sets/train").await.unwrap().len(), 150);
    // With `replace` the new dataset takes the name whole; the old one is removed.
    let replace = PackOptions {
        replace: true,
        ..small.clone()
    };
    dataset::pack(&c, b.path(), "/sets/train/", &replace)
        .await
        .unwrap();
    let ds = Dataset::open(&c, "/sets/train").await.unwrap();
    assert_eq!(ds.len(), 60);
    for i in [0u64, 31, 59] {
        assert!(
            ds.get(i).await.unwrap()[..] == sample(i + 10_000)[..],
            "{i}"
        );
    }
    assert!(staging_dirs(&c, "/sets").await.is_empty());
    // A pack failing midway (an unreadable source entry after good ones) leaves neither the
    // destination nor its staging directory.
    let bad = write_src(40, 0);
    std::os::unix::fs::symlink("/nonexistent/x", bad.path().join("zz-dangling")).unwrap();
    let e = dataset::pack(&c, bad.path(), "/sets/broken", &small)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("zz-dangling"), "{e}");
    assert!(!c.exists("/sets/broken").await.unwrap());
    assert!(staging_dirs(&c, "/sets").await.is_empty());
    for d in ["/", "relative/x"] {
        let e = dataset::pack(&c, b.path(), d, &small).await.unwrap_err();
        assert!(e.to_string().contains("absolute path"), "{d:?}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_killed_midway_leaves_no_dataset_visible() {
    let cluster = Cluster::start(BIN, opts()).expect("start cluster");
    let c = Client::from_cluster_file(&cluster.cluster_file_path())
        .await
        .expect("connect");
    // 128 MiB in 512 files of 256 KiB, 1 MiB shards: the pack is killed once 2 shards
    // exist, with 120+ MiB still to write.
    let src = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..256 << 10).map(|k| (k * 7 + 3) as u8).collect();
    for i in 0..512 {
        std::fs::write(src.path().join(format!("{i:04}")), &blob).unwrap();
    }
    c.mkdir_all("/k", 0o755).await.unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("--cluster")
        .arg(cluster.cluster_file_path())
        .args(["dataset", "pack", "--shard-mb", "1"])
        .arg(src.path())
        .arg("/k/train")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn pond dataset pack");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let staging = loop {
        assert!(std::time::Instant::now() < deadline, "no staging directory");
        if let Some(d) = staging_dirs(&c, "/k").await.pop() {
            let path = format!("/k/{d}");
            if c.read_dir_all(&path).await.map(|v| v.len()).unwrap_or(0) >= 2 {
                break path;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "pack ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().expect("SIGKILL the packer");
    child.wait().unwrap();
    // Nothing under the destination's name; the partial pack stays hidden.
    assert!(!c.exists("/k/train").await.unwrap());
    let e = Dataset::open(&c, "/k/train").await.unwrap_err().to_string();
    assert!(e.contains("/k/train"), "{e}");
    assert!(c.exists(&staging).await.unwrap());
    // The next pack of the destination completes and names the leftover.
    let src2 = write_src(100, 0);
    let rep = dataset::pack(&c, src2.path(), "/k/train", &PackOptions::default())
        .await
        .unwrap();
    assert_eq!(rep.leftovers, vec![staging.clone()]);
    let ds = Dataset::open(&c, "/k/train").await.unwrap();
    assert_eq!(ds.len(), 100);
    assert!(ds.get(42).await.unwrap()[..] == sample(42)[..]);
    c.remove_tree(&staging).await.unwrap();
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
