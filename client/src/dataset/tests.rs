//! Dataset, pack and batch reader over the in-memory meta and storage of `testkit`.

use super::*;
use crate::testkit;
use std::collections::HashMap;

/// Sample `i`'s bytes: a length that varies 0..5000 and a pattern naming `i`.
fn sample(i: u64) -> Vec<u8> {
    let len = ((i * 7919) % 5000) as usize;
    (0..len).map(|k| (i as usize * 31 + k * 7) as u8).collect()
}

fn write_dir(n: u64) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for i in 0..n {
        // Nested directories, names that sort as the sample numbers.
        let sub = d.path().join(format!("d{}", i / 100));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("{i:06}.bin")), sample(i)).unwrap();
    }
    d
}

#[tokio::test]
async fn pack_a_directory_and_read_every_sample_exactly() {
    let (c, _meta, storage) = testkit::client().await;
    let src = write_dir(300);
    let rep = pack(
        &c,
        src.path(),
        "/ds",
        &PackOptions {
            shard_bytes: 100_000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(rep.samples, 300);
    assert!(rep.shards > 3, "{rep:?}");
    let ds = Arc::new(Dataset::open(&c, "/ds").await.unwrap());
    assert_eq!(ds.len(), 300);
    for i in [0u64, 1, 150, 299] {
        assert_eq!(ds.get(i).await.unwrap(), sample(i), "sample {i}");
    }
    // A whole epoch through the batch reader, 2 ranks, shuffled.
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for rank in 0..2 {
        let mut s = Sampler::new(
            ds.len(),
            SamplerOptions {
                seed: 42,
                rank,
                world_size: 2,
                ..Default::default()
            },
        )
        .unwrap();
        s.set_epoch(3);
        let want_order: Vec<u64> = s.clone().collect();
        let before = ds.bytes_requested();
        let mut r = BatchReader::new(
            ds.clone(),
            s,
            ReaderOptions {
                batch_size: 16,
                prefetch: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let mut order = Vec::new();
        let mut bytes = 0u64;
        let mut expect_number = 0;
        while let Some(b) = r.next_batch().await.unwrap() {
            assert_eq!(b.number, expect_number, "in order");
            expect_number += 1;
            for (i, data) in b.indices.iter().zip(&b.samples) {
                assert_eq!(&data[..], &sample(*i)[..], "sample {i}");
                bytes += data.len() as u64;
                *seen.entry(*i).or_default() += 1;
            }
            order.extend(b.indices);
        }
        assert_eq!(order, want_order);
        assert_eq!(
            ds.bytes_requested() - before,
            bytes,
            "asked storage for exactly the samples' bytes"
        );
    }
    assert_eq!(seen.len(), 300, "every sample once");
    assert!(seen.values().all(|n| *n == 1));
    // One batch of 100 samples: a handful of batched requests (one per node), not 100.
    let calls = storage.calls.load(std::sync::atomic::Ordering::Relaxed);
    let ix: Vec<u64> = (0..100).map(|k| (k * 37) % 300).collect();
    let got = ds.read_batch(&ix).await.unwrap();
    for (i, g) in ix.iter().zip(&got) {
        assert_eq!(&g[..], &sample(*i)[..]);
    }
    let calls = storage.calls.load(std::sync::atomic::Ordering::Relaxed) - calls;
    assert!(
        calls <= 6,
        "batched per storage node: {calls} calls for 100 samples"
    );
    // Out of range.
    let e = ds.get(300).await.unwrap_err();
    assert!(
        matches!(
            e,
            DatasetError::OutOfRange {
                index: 300,
                len: 300
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("out of range"), "{e}");
    assert!(ds.read_batch(&[1, 2, 1000]).await.is_err());
}

#[tokio::test]
async fn pack_jsonl_and_resume_a_reader_mid_epoch() {
    let (c, _meta, _storage) = testkit::client().await;
    let d = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..97 {
        text.push_str(&format!(
            "{{\"id\": {i}, \"text\": \"{}\"}}\n",
            "x".repeat(i)
        ));
        if i % 10 == 0 {
            text.push('\n'); // blank lines are skipped
        }
    }
    std::fs::write(d.path().join("a.jsonl"), &text).unwrap();
    let rep = pack(&c, &d.path().join("a.jsonl"), "/j", &PackOptions::default())
        .await
        .unwrap();
    assert_eq!(rep.samples, 97);
    assert_eq!(rep.shards, 1);
    let ds = Arc::new(Dataset::open(&c, "/j/index.pidx").await.unwrap());
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(&ds.get(i as u64).await.unwrap()[..], l.as_bytes());
    }
    let opts = ReaderOptions {
        batch_size: 10,
        prefetch: 2,
        ..Default::default()
    };
    let s = Sampler::new(97, SamplerOptions::default()).unwrap();
    let all: Vec<u64> = s.clone().collect();
    let mut r = BatchReader::new(ds.clone(), s.clone(), opts).unwrap();
    r.next_batch().await.unwrap().unwrap();
    r.next_batch().await.unwrap().unwrap();
    let st = r.state();
    assert_eq!(st.position, 20);
    drop(r);
    let mut s2 = Sampler::new(97, SamplerOptions::default()).unwrap();
    s2.load_state(SamplerState::decode(&st.encode()).unwrap())
        .unwrap();
    let mut r2 = BatchReader::new(ds.clone(), s2, opts).unwrap();
    let mut rest = Vec::new();
    while let Some(b) = r2.next_batch().await.unwrap() {
        rest.extend(b.indices);
    }
    assert_eq!(&rest[..], &all[20..]);
    // Two workers splitting batches round-robin give the single-worker sequence.
    let mut w: Vec<Vec<Batch>> = Vec::new();
    for worker in 0..2 {
        let mut r = BatchReader::new(
            ds.clone(),
            s.clone(),
            ReaderOptions {
                worker,
                workers: 2,
                ..opts
            },
        )
        .unwrap();
        let mut v = Vec::new();
        while let Some(b) = r.next_batch().await.unwrap() {
            v.push(b);
        }
        w.push(v);
    }
    let mut merged = Vec::new();
    for k in 0..10 {
        if let Some(b) = w[k % 2].get(k / 2) {
            assert_eq!(b.number, k as u64);
            merged.extend(b.indices.clone());
        }
    }
    assert_eq!(merged, all);
}

#[tokio::test]
async fn fixed_records_over_many_files() {
    let (c, _meta, _storage) = testkit::client().await;
    let rec = 1000u64;
    let mut paths = Vec::new();
    let mut n = 0u64;
    for (k, count) in [3u64, 0, 5, 1].into_iter().enumerate() {
        let mut data = Vec::new();
        for j in 0..count {
            data.extend(std::iter::repeat_n(((n + j) % 251) as u8, rec as usize));
        }
        n += count;
        let p = format!("/r{k}");
        c.write_file(&p, &data).await.unwrap();
        paths.push(p);
    }
    let ds = Dataset::open_fixed(&c, &paths, rec).await.unwrap();
    assert_eq!(ds.len(), 9);
    let got = ds.read_batch(&[8, 0, 3, 2, 7]).await.unwrap();
    for (i, g) in [8u64, 0, 3, 2, 7].iter().zip(&got) {
        assert_eq!(g.len(), rec as usize);
        assert!(g.iter().all(|b| *b == (*i % 251) as u8), "record {i}");
    }
    assert_eq!(
        ds.locate(3).unwrap(),
        SampleLoc {
            file: 2,
            offset: 0,
            len: rec
        }
    );
    c.write_file("/ragged", &[0u8; 1500]).await.unwrap();
    let e = Dataset::open_fixed(&c, &["/ragged".to_string()], rec)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a multiple"), "{e}");
}

#[tokio::test]
async fn index_entries_past_their_shard_are_refused_at_open() {
    let (c, _meta, _storage) = testkit::client().await;
    c.mkdir_all("/bad", 0o755).await.unwrap();
    c.write_file("/bad/s.bin", &[1u8; 500]).await.unwrap();
    let ix = Index {
        files: vec!["s.bin".into()],
        entries: vec![
            Entry {
                file: 0,
                offset: 0,
                len: 100,
            },
            Entry {
                file: 0,
                offset: 450,
                len: 100,
            },
        ],
    };
    c.write_file("/bad/index.pidx", &ix.encode()).await.unwrap();
    let e = Dataset::open(&c, "/bad").await.unwrap_err().to_string();
    assert!(
        e.contains("entry 1") && e.contains("past the end of /bad/s.bin"),
        "{e}"
    );
    // A damaged byte in the stored index.
    let mut b = ix.encode();
    let n = b.len();
    b[n - 8 - 4 - 10] ^= 1;
    c.write_file("/bad/index.pidx", &b).await.unwrap();
    let e = Dataset::open(&c, "/bad").await.unwrap_err().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
    let e = Dataset::open(&c, "/nope").await.unwrap_err().to_string();
    assert!(e.contains("/nope"), "{e}");
}

/// The fake meta of `testkit` has no rename, so these tests write a dataset in place with
/// `pack`'s writer; the atomic commit (rename, replace, a killed pack) is tested against real
/// processes in `tests/it/loader.rs`.
async fn pack(
    c: &crate::Client,
    src: &std::path::Path,
    dst: &str,
    opts: &PackOptions,
) -> Result<PackReport, DatasetError> {
    let meta = std::fs::metadata(src).unwrap();
    c.mkdir_all(dst, 0o755).await?;
    let (samples, shards, bytes) = super::pack::write_all(c, src, &meta, dst, opts).await?;
    Ok(PackReport {
        samples,
        shards,
        bytes,
        index_path: format!("{dst}/{INDEX_FILE}"),
        leftovers: Vec::new(),
    })
}
