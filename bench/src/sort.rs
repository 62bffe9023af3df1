//! `pond bench sort`: GraySort-style. Generates N 100-byte records (10-byte key, 90-byte
//! payload: the gensort layout; keys from a hash of the record number, not gensort's
//! generator), stored as Parquet (`key BLOB, payload BLOB`) in pond; sorts them as a pond job —
//! range repartition by the key's first byte (phase 1), then a sort per partition written as
//! `part-NNNNN.parquet` (phase 2) — and validates the output: order within and across parts,
//! record count, and a checksum over all records equal to the input's. Baseline: one DuckDB
//! process sorting the same files on the local disk.

use crate::report::{Table, progress};
use crate::sql::{LocalDuckDb, locality, make_dataset, one_sample, session};
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

pub async fn run(cluster: &Path, quick: bool, duck: &LocalDuckDb) -> Result<()> {
    let s = session(cluster).await?;
    let client = s.client().clone();
    let tmp = tempfile::Builder::new()
        .prefix("pond-bench-sort-")
        .tempdir()?;
    // quick: 1 M records (100 MB of records); full: 40 M (4 GB).
    let (records, files): (u64, usize) = if quick {
        (1_000_000, 4)
    } else {
        (40_000_000, 32)
    };
    let per = records / files as u64;
    let root = format!("/bench-sort-{}", std::process::id());
    let pb = progress("sort: generating records and copying them into pond");
    let (_, in_bytes) = make_dataset(
        &client,
        duck,
        &tmp.path().join("in"),
        &format!("{root}/in"),
        files,
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
    let local_in = format!("{}/in/*.parquet", tmp.path().display());
    let n = (s.executors().len() as u32 * 2).clamp(2, 256);

    // Baseline: one DuckDB process, local disk.
    let pb = progress("sort: DuckDB baseline");
    let base_out = tmp.path().join("duckdb-sorted.parquet");
    let t0 = Instant::now();
    (duck.exec)(&format!(
        "COPY (SELECT * FROM read_parquet('{local_in}') ORDER BY key) TO '{}' (FORMAT parquet)",
        base_out.display()
    ))?;
    let base = t0.elapsed();
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
    let (input, pct) = locality(&log);
    let phase = |stage: &str| -> u64 {
        log.iter()
            .filter(|t| t.stage == stage)
            .map(|t| t.elapsed_ms)
            .max()
            .unwrap_or(0)
    };

    // Validate: fetch the parts, check order within and across them, count and checksum.
    let pb = progress("sort: validating");
    let out_local = tmp.path().join("out");
    std::fs::create_dir_all(&out_local)?;
    let mut prev_max: Option<String> = None;
    let mut count: i128 = 0;
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
        }
        count += c;
    }
    if count != records as i128 {
        bail!("sorted output has {count} records, input {records}");
    }
    let sum = |glob: &str| -> Result<String> {
        let r = (duck.rows)(&format!(
            "SELECT sum(hash(key, payload)::HUGEINT) AS c FROM read_parquet('{glob}')"
        ))?;
        Ok(r.rows[0][0].to_string())
    };
    let (cin, cout) = (
        sum(&local_in)?,
        sum(&format!("{}/*.parquet", out_local.display()))?,
    );
    if cin != cout {
        bail!("checksum of the sorted records {cout} differs from the input's {cin}");
    }
    pb.finish_and_clear();

    let bytes = records * 100;
    let mut t = Table::new(
        &format!(
            "sort: {records} records of 100 B ({:.0} MiB; {:.0} MiB Parquet), {n} partitions",
            bytes as f64 / 1048576.0,
            in_bytes as f64 / 1048576.0
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
        "phases: repartition (slowest task) {} ms, sort (slowest task) {} ms; {:.1} MiB/s per core over {cores} cores",
        phase("s0"),
        phase("s1"),
        bytes as f64 / 1048576.0 / pond.as_secs_f64() / cores as f64
    ));
    t.note(format!(
        "{} tasks, input {input} B, {pct:.1}% read from the executing node's chunk engine",
        log.len()
    ));
    t.note(format!(
        "validated: {count} records, order within and across {} parts, checksum {cout} = input",
        parts.len()
    ));
    t.print();
    let _ = client.remove_tree(&root).await;
    Ok(())
}
