//! `pond bench sort`: GraySort-style. Generates N 100-byte records (10-byte key, 90-byte
//! payload: the gensort layout; keys from a hash of the record number, not gensort's
//! generator), stored as Parquet (`key BLOB, payload BLOB`) in pond; sorts them as a pond job —
//! range repartition by the key's first byte (phase 1), then a sort per partition written as
//! `part-NNNNN.parquet` (phase 2) — and validates the output: order within and across parts,
//! record count, and a checksum over all records equal to the input's. Baseline: one DuckDB
//! process sorting the same files on the local disk.

use crate::report::{Table, progress};
use crate::sql::{LocalDuckDb, local_remote, make_dataset_bytes, one_sample, phases, session};
use anyhow::{Result, bail};
use pond_client::dataframe::wire::Value;
use std::path::Path;
use std::time::Instant;

/// Bucket of a record for `n` buckets (`n` ≤ 256): its first key byte scaled to `0..n`.
fn bucket_expr(n: u32) -> String {
    let nib = |i: u32| format!("(instr('0123456789ABCDEF', substr(hex(key), {i}, 1)) - 1)");
    format!(
        "CAST((({} * 16 + {}) * {n}) // 256 AS BIGINT)",
        nib(1),
        nib(2)
    )
}

fn int(v: &Value) -> Result<i128> {
    Ok(match v {
        Value::Int(x) => *x as i128,
        Value::UInt(x) => *x as i128,
        Value::HugeInt(x) => *x,
        other => bail!("expected an integer, got {other:?}"),
    })
}

pub struct SortOpts {
    pub quick: bool,
    /// Least bytes of records (100 B each); default 4 GiB (quick: 1 M records).
    pub bytes: Option<u64>,
    /// What the cluster's chains are, for the table title (e.g. "chains of 1").
    pub cluster_label: String,
}

/// Sum of `hash(key, payload)` over Parquet files (order-independent record checksum).
fn checksum(duck: &LocalDuckDb, files: &str) -> Result<i128> {
    let r = (duck.rows)(&format!(
        "SELECT sum(hash(key, payload)::HUGEINT) AS c FROM read_parquet({files})"
    ))?;
    int(&r.rows[0][0])
}

fn df_avail(p: &Path) -> String {
    std::process::Command::new("df")
        .args(["-h", "--output=avail"])
        .arg(p)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "?".into())
}

pub async fn run(cluster: &Path, opts: &SortOpts, duck: &LocalDuckDb) -> Result<()> {
    let s = session(cluster).await?;
    let client = s.client().clone();
    let tmp = tempfile::Builder::new()
        .prefix("pond-bench-sort-")
        .tempdir()?;
    // quick: 1 M records (100 MB) in 4 files; full: ≥ 4 GiB of records, 1.25 M records
    // (~130 MB of Parquet) per file.
    let (per, min_files, min_records): (u64, usize, u64) = if opts.quick {
        let r = opts.bytes.map(|b| b.div_ceil(100)).unwrap_or(1_000_000);
        (r.div_ceil(4), 4, r)
    } else {
        let r = opts.bytes.unwrap_or(4 << 30).div_ceil(100);
        (1_250_000, 4, r)
    };
    let root = format!("/bench-sort-{}", std::process::id());
    // Input files each on one chain, round-robin over the nodes (see `sql::put_on`).
    let place: Vec<pond_proto::ids::NodeId> = s.executors().keys().copied().collect();
    println!(
        "sort: disk space available at start: {}",
        df_avail(tmp.path())
    );
    let pb = progress("sort: generating records and copying them into pond");
    let (_, files, in_bytes) = make_dataset_bytes(
        &client,
        duck,
        &tmp.path().join("in"),
        &format!("{root}/in"),
        min_files.max(min_records.div_ceil(per) as usize),
        0,
        true,
        &place,
        |i| format!("part-{i:03}.parquet"),
        |i| {
            let (a, b) = (i as u64 * per, (i as u64 + 1) * per);
            format!(
                "SELECT unhex(substr(md5(r::VARCHAR), 1, 20)) AS key, \
                 unhex(substr(repeat(md5(r::VARCHAR || 'p'), 6), 1, 180)) AS payload \
                 FROM range({a}, {b}) t(r)"
            )
        },
    )
    .await?;
    pb.finish_and_clear();
    let records = per * files as u64;
    let local_in = format!("'{}/in/*.parquet'", tmp.path().display());
    // Partitions: 2 per executor for quick runs; full runs keep each sort task near 1/12 of
    // the data (memory, and no spill onto this shared disk).
    let per_exec = if opts.quick { 2 } else { 4 };
    let n = (s.executors().len() as u32 * per_exec).clamp(2, 256);

    // Baseline: one DuckDB process, local disk; its output is deleted right away (disk).
    let pb = progress("sort: DuckDB baseline");
    let base_out = tmp.path().join("duckdb-sorted.parquet");
    let t0 = Instant::now();
    (duck.exec)(&format!(
        "COPY (SELECT * FROM read_parquet({local_in}) ORDER BY key) TO '{}' (FORMAT parquet)",
        base_out.display()
    ))?;
    let base = t0.elapsed();
    std::fs::remove_file(&base_out)?;
    // The input's checksum, then the local input goes too: pond holds it.
    pb.set_message("sort: input checksum");
    let cin = checksum(duck, &local_in)?;
    std::fs::remove_dir_all(tmp.path().join("in"))?;
    pb.finish_and_clear();

    // pond: range repartition + sort per partition.
    let pb = progress("sort: pond repartition + sort");
    s.clear_task_log();
    let out_dir = format!("{root}/out");
    let t0 = Instant::now();
    let parts = s
        .read_parquet(&format!("{root}/in/*.parquet"))
        .repartition_by(n, &bucket_expr(n))
        .partial_sql("SELECT * FROM {0} ORDER BY key")
        .write_parquet(&out_dir)
        .await?;
    let pond = t0.elapsed();
    pb.finish_and_clear();
    let log = s.task_log();
    let phase = |stage: &str| -> u64 {
        log.iter()
            .filter(|t| t.stage == stage)
            .map(|t| t.elapsed_ms)
            .max()
            .unwrap_or(0)
    };
    println!(
        "sort: disk space available after the pond sort: {}",
        df_avail(tmp.path())
    );
    let _ = client.remove_tree(&format!("{root}/in")).await;

    // Validate one part at a time (fetched, checked, deleted): order within and across parts,
    // record count, checksum.
    let pb = progress("sort: validating");
    let out_local = tmp.path().join("out");
    std::fs::create_dir_all(&out_local)?;
    let mut prev_max: Option<String> = None;
    let mut count: i128 = 0;
    let mut cout: i128 = 0;
    for (i, p) in parts.iter().enumerate() {
        let l = out_local.join(format!("part-{i:05}.parquet"));
        client.get(p, &l, |_| {}).await?;
        let r = (duck.rows)(&format!(
            "SELECT count(*) AS n, \
             count(*) FILTER (WHERE prev > key) AS disorder, hex(min(key)) AS mn, hex(max(key)) AS mx \
             FROM (SELECT key, lag(key) OVER (ORDER BY file_row_number) AS prev \
                   FROM read_parquet('{}', file_row_number = true))",
            l.display()
        ))?;
        let row = &r.rows[0];
        let (c, disorder) = (int(&row[0])?, int(&row[1])?);
        if disorder != 0 {
            bail!("part {i}: {disorder} records out of order");
        }
        if c > 0 {
            let (mn, mx) = (row[2].to_string(), row[3].to_string());
            if let Some(pm) = &prev_max
                && *pm > mn
            {
                bail!("part {i} starts at {mn}, before the end of the previous part {pm}");
            }
            prev_max = Some(mx);
            cout += checksum(duck, &format!("'{}'", l.display()))?;
        }
        count += c;
        std::fs::remove_file(&l)?;
    }
    if count != records as i128 {
        bail!("sorted output has {count} records, input {records}");
    }
    if cin != cout {
        bail!("checksum of the sorted records {cout} differs from the input's {cin}");
    }
    pb.finish_and_clear();
    let _ = client.remove_tree(&root).await;

    let bytes = records * 100;
    let mut t = Table::new(
        &format!(
            "sort: {records} records of 100 B ({:.2} GiB; {:.0} MiB Parquet in {files} files), {n} partitions, {}",
            bytes as f64 / (1u64 << 30) as f64,
            in_bytes as f64 / 1048576.0,
            opts.cluster_label
        ),
        &["pond (repartition + sort)", "duckdb 1 process, local disk"],
    );
    t.row(
        "sort (MiB/s of records)",
        vec![Some(one_sample(pond, bytes)), Some(one_sample(base, bytes))],
    );
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    t.note(format!(
        "times: pond {:.1} s, DuckDB {:.1} s, pond/DuckDB = {:.2}x time; pond {:.1} MiB/s per core, DuckDB {:.1} MiB/s per core ({cores} cores, shared by the storage nodes, the executors and this client)",
        pond.as_secs_f64(),
        base.as_secs_f64(),
        pond.as_secs_f64() / base.as_secs_f64().max(1e-9),
        bytes as f64 / 1048576.0 / pond.as_secs_f64() / cores as f64,
        bytes as f64 / 1048576.0 / base.as_secs_f64() / cores as f64,
    ));
    t.note(format!(
        "phases: repartition (slowest task) {} ms, sort (slowest task) {} ms",
        phase("s0"),
        phase("s1"),
    ));
    t.note(format!("phase detail: {}", phases(&log)));
    t.note(format!("{} tasks, {}", log.len(), local_remote(&log)));
    t.note(format!(
        "validated: {count} records, order within and across {} parts, checksum {cout} = input",
        parts.len()
    ));
    t.print();
    Ok(())
}
