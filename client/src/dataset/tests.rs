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

/// A Parquet file of rows `first..first + n`: `id` (i64), `name` (utf8), `x` (f64), written
/// with `rows_per_group` rows per row group.
fn parquet_file(first: i64, n: i64, rows_per_group: usize) -> Vec<u8> {
    use ::parquet::arrow::ArrowWriter;
    use ::parquet::file::properties::WriterProperties;
    use arrow_array::{Float64Array, Int64Array, StringArray};
    let ids: Vec<i64> = (first..first + n).collect();
    let batch = arrow_array::RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from(ids.clone())) as arrow_array::ArrayRef,
        ),
        (
            "name",
            Arc::new(StringArray::from(
                ids.iter().map(|i| format!("row-{i}")).collect::<Vec<_>>(),
            )),
        ),
        (
            "x",
            Arc::new(Float64Array::from(
                ids.iter().map(|i| *i as f64 * 0.5).collect::<Vec<_>>(),
            )),
        ),
    ])
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .set_compression(::parquet::basic::Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

fn ids_of(b: &arrow_array::RecordBatch) -> Vec<i64> {
    use arrow_array::cast::AsArray;
    b.column_by_name("id")
        .expect("id column")
        .as_primitive::<arrow_array::types::Int64Type>()
        .values()
        .to_vec()
}

#[tokio::test]
async fn parquet_rows_are_read_exactly_in_the_order_asked() {
    use arrow_array::cast::AsArray;
    let (c, _meta, _storage) = testkit::client().await;
    c.mkdir_all("/pq", 0o755).await.unwrap();
    // 3 files, 1000 + 0 + 700 rows (an empty file in between), row groups of 128.
    c.write_file("/pq/a.parquet", &parquet_file(0, 1000, 128))
        .await
        .unwrap();
    c.write_file("/pq/b.parquet", &parquet_file(1000, 0, 128))
        .await
        .unwrap();
    c.write_file("/pq/c.parquet", &parquet_file(1000, 700, 128))
        .await
        .unwrap();
    let paths: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("/pq/{n}.parquet"))
        .collect();
    let rows = Arc::new(ParquetRows::open(&c, &paths, None).await.unwrap());
    assert_eq!(rows.len(), 1700);
    assert_eq!(rows.row_groups(), 8 + 6);
    // Shuffled, across files and groups, with a duplicate.
    let ask = vec![1699u64, 0, 999, 1000, 5, 128, 127, 5, 1300];
    let b = rows.read_rows(&ask).await.unwrap();
    assert_eq!(
        ids_of(&b),
        ask.iter().map(|i| *i as i64).collect::<Vec<_>>()
    );
    let names = b.column_by_name("name").unwrap().as_string::<i32>();
    assert_eq!(names.value(0), "row-1699");
    assert_eq!(names.value(7), "row-5");
    // A projection reads only the chosen columns (fewer bytes).
    let cols = vec!["x".to_string(), "id".to_string()];
    let proj = ParquetRows::open(&c, &paths, Some(&cols)).await.unwrap();
    let before = proj.bytes_requested();
    let pb = proj.read_rows(&ask).await.unwrap();
    let proj_bytes = proj.bytes_requested() - before;
    assert_eq!(pb.schema().fields().len(), 2);
    assert_eq!(pb.schema().field(0).name(), "id", "file column order");
    assert_eq!(ids_of(&pb), ids_of(&b));
    let all_before = rows.bytes_requested();
    rows.read_rows(&ask).await.unwrap();
    assert!(proj_bytes < rows.bytes_requested() - all_before);
    // A whole shuffled epoch through the generic batch reader, two ranks.
    let mut seen = Vec::new();
    for rank in 0..2 {
        let s = Sampler::new(
            rows.len(),
            SamplerOptions {
                seed: 11,
                rank,
                world_size: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let want: Vec<u64> = s.clone().collect();
        let mut r = BatchReader::new(
            rows.clone(),
            s,
            ReaderOptions {
                batch_size: 100,
                prefetch: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let mut got = Vec::new();
        while let Some(b) = r.next_batch().await.unwrap() {
            assert_eq!(
                ids_of(&b.samples),
                b.indices.iter().map(|i| *i as i64).collect::<Vec<_>>()
            );
            got.extend(b.indices);
        }
        assert_eq!(got, want, "rank {rank} order");
        seen.extend(got);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..1700).collect::<Vec<_>>());
    // Errors: out of range, unknown column, not Parquet, schemas that differ.
    let e = rows.read_rows(&[1700]).await.unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    let e = ParquetRows::open(&c, &paths, Some(&["nope".to_string()]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no column \"nope\""), "{e}");
    c.write_file("/pq/junk.parquet", b"this is not parquet at all")
        .await
        .unwrap();
    let e = ParquetRows::open(&c, &["/pq/junk.parquet".to_string()], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/pq/junk.parquet") && e.contains("Parquet"),
        "{e}"
    );
    assert!(rows.read_rows(&[]).await.unwrap().num_rows() == 0);
}
