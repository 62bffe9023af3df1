//! `pond bench sql`: a TPC-H-like aggregation (Q1 shape) and a join (orders ⋈ lineitem,
//! co-partitioned by order key) over Parquet files in pond, run near the data by the storage
//! nodes' executors, next to single-process DuckDB over the same files on the local disk.
//! Both answers are compared; the share of input bytes read from the executing node's own
//! chunk engine is printed.
//!
//! DuckDB for the baseline and the data generator comes in through [`LocalDuckDb`] (the `pond`
//! binary passes `pond-compute`'s unrestricted helpers), so this crate does not link DuckDB.

use crate::report::{Samples, Table, progress};
use anyhow::{Context, Result, bail};
use pond_client::Client;
use pond_client::config::ClusterFile;
use pond_client::dataframe::wire::{RowSet, TaskLimits, Value};
use pond_client::dataframe::{Session, SessionOptions, TaskRecord};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Single-process DuckDB on this machine: statements, and a query's rows.
pub struct LocalDuckDb {
    pub exec: fn(&str) -> Result<()>,
    pub rows: fn(&str) -> Result<RowSet>,
}

/// Rows in a canonical order, floats to 6 significant digits (summation order differs).
pub fn canon(r: &RowSet) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|v| match v {
                    Value::Float(f) => format!("{f:.5e}"),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    rows.sort();
    rows
}

/// Writes `files` Parquet files `dir/part-i.parquet` from `select(i)` with local DuckDB and
/// copies them into pond under `remote`. Returns the local directory's files and total bytes.
pub async fn make_dataset(
    client: &Client,
    duck: &LocalDuckDb,
    dir: &Path,
    remote: &str,
    files: usize,
    select: impl Fn(usize) -> String,
) -> Result<(Vec<PathBuf>, u64)> {
    std::fs::create_dir_all(dir)?;
    client.mkdir_all(remote, 0o755).await?;
    let mut out = Vec::new();
    let mut bytes = 0;
    for i in 0..files {
        let p = dir.join(format!("part-{i:03}.parquet"));
        (duck.exec)(&format!(
            "COPY ({}) TO '{}' (FORMAT parquet)",
            select(i),
            p.display()
        ))?;
        bytes += client
            .put(&p, &format!("{remote}/part-{i:03}.parquet"), |_| {})
            .await
            .with_context(|| format!("put {}", p.display()))?;
        out.push(p);
    }
    Ok((out, bytes))
}

pub fn one_sample(d: Duration, bytes: u64) -> Samples {
    let mut s = Samples::default();
    s.push(d);
    s.wall = d;
    s.bytes = bytes;
    s
}

/// Input bytes and the share read from the executing node's chunk engine.
pub fn locality(log: &[TaskRecord]) -> (u64, f64) {
    let input: u64 = log.iter().map(|t| t.stats.input_bytes).sum();
    let local: u64 = log.iter().map(|t| t.stats.input_local_bytes).sum();
    (input, 100.0 * local as f64 / input.max(1) as f64)
}

pub async fn session(cluster: &Path) -> Result<Session> {
    let cf = ClusterFile::load(cluster)?;
    let client = Arc::new(Client::connect(&cf).await?);
    let limits = TaskLimits {
        memory_bytes: 2 << 30,
        threads: 2,
        deadline_ms: 1_800_000,
    };
    let s = Session::new(client, &cf.token, SessionOptions { limits }).await?;
    if s.executors().is_empty() {
        bail!("no compute executor registered (pond built without the duckdb feature?)");
    }
    Ok(s)
}

pub async fn run(cluster: &Path, quick: bool, duck: &LocalDuckDb) -> Result<()> {
    let s = session(cluster).await?;
    let client = s.client().clone();
    let tmp = tempfile::Builder::new()
        .prefix("pond-bench-sql-")
        .tempdir()?;
    // Rows of lineitem: quick ≈ 60 MB of Parquet, full ≈ 2.3 GB.
    let (rows, files): (u64, usize) = if quick {
        (2_000_000, 4)
    } else {
        (60_000_000, 24)
    };
    let per = rows / files as u64;
    let root = format!("/bench-sql-{}", std::process::id());
    let pb = progress("sql: generating lineitem/orders Parquet and copying it into pond");
    let (li_files, li_bytes) = make_dataset(
        &client,
        duck,
        &tmp.path().join("lineitem"),
        &format!("{root}/lineitem"),
        files,
        |i| {
            let (a, b) = (i as u64 * per, (i as u64 + 1) * per);
            format!(
                "SELECT (r // 4)::BIGINT AS l_orderkey, (1 + hash(r, 1) % 50)::INT AS l_quantity, \
                 (900 + (hash(r, 2) % 100000) / 100.0)::DOUBLE AS l_extendedprice, \
                 ((hash(r, 3) % 11) / 100.0)::DOUBLE AS l_discount, ((hash(r, 4) % 9) / 100.0)::DOUBLE AS l_tax, \
                 ['A','N','R'][1 + (hash(r, 5) % 3)::INT] AS l_returnflag, ['F','O'][1 + (hash(r, 6) % 2)::INT] AS l_linestatus, \
                 (DATE '1992-01-01' + (hash(r, 7) % 2500)::INT) AS l_shipdate \
                 FROM range({a}, {b}) t(r)"
            )
        },
    )
    .await?;
    let orders = rows / 4;
    let (o_files, o_bytes) = make_dataset(
        &client,
        duck,
        &tmp.path().join("orders"),
        &format!("{root}/orders"),
        files.div_ceil(4),
        |i| {
            let n = files.div_ceil(4) as u64;
            let per = orders / n;
            let (a, b) = (i as u64 * per, if i as u64 == n - 1 { orders } else { (i as u64 + 1) * per });
            format!(
                "SELECT r::BIGINT AS o_orderkey, ['1-URGENT','2-HIGH','3-MEDIUM','4-NOT SPECIFIED','5-LOW'][1 + (hash(r, 8) % 5)::INT] AS o_orderpriority \
                 FROM range({a}, {b}) t(r)"
            )
        },
    )
    .await?;
    pb.finish_and_clear();
    let local_li = format!("{}/lineitem/*.parquet", tmp.path().display());
    let local_o = format!("{}/orders/*.parquet", tmp.path().display());
    let _ = (li_files, o_files);

    let mut t = Table::new(
        &format!(
            "sql: {rows} lineitem rows ({:.0} MiB Parquet) + {orders} orders, {} executors",
            li_bytes as f64 / 1048576.0,
            s.executors().len()
        ),
        &["pond (near-data)", "duckdb 1 process, local disk"],
    );

    // Q1 shape: filter + group-by, split into partial and final aggregation.
    let q1 = "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base, \
              avg(l_discount) AS avg_disc, count(*) AS n FROM read_parquet('{G}') \
              WHERE l_shipdate <= DATE '1998-09-01' GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus";
    let pb = progress("sql: Q1 group-by");
    let t0 = Instant::now();
    let want = (duck.rows)(&q1.replace("{G}", &local_li))?;
    let base = t0.elapsed();
    s.clear_task_log();
    let t0 = Instant::now();
    let got = s
        .sql(&q1.replace("{G}", &format!("{root}/lineitem/*.parquet")))?
        .collect()
        .await?;
    let pond = t0.elapsed();
    pb.finish_and_clear();
    if canon(&got) != canon(&want) {
        bail!("Q1: pond and DuckDB disagree:\n{got:?}\n{want:?}");
    }
    let (input, pct) = locality(&s.task_log());
    t.row(
        "Q1 group-by (MiB/s of Parquet)",
        vec![
            Some(one_sample(pond, li_bytes)),
            Some(one_sample(base, li_bytes)),
        ],
    );
    t.note(format!(
        "Q1: {} tasks, input {input} B, {pct:.1}% read from the executing node's chunk engine; answers equal",
        s.task_log().len()
    ));

    // Join: both sides hash-partitioned by order key, joined and aggregated per partition.
    let n = (s.executors().len() as u32 * 2).max(2);
    let pb = progress("sql: join");
    let jq = "SELECT o.o_orderpriority, count(*) AS n, sum(l.l_quantity) AS qty FROM read_parquet('{L}') l \
              JOIN read_parquet('{O}') o ON l.l_orderkey = o.o_orderkey GROUP BY o.o_orderpriority ORDER BY 1";
    let t0 = Instant::now();
    let want = (duck.rows)(&jq.replace("{L}", &local_li).replace("{O}", &local_o))?;
    let base = t0.elapsed();
    s.clear_task_log();
    let t0 = Instant::now();
    let li = s
        .read_parquet(&format!("{root}/lineitem/*.parquet"))
        .map("l_orderkey, l_quantity")
        .repartition(n, &["l_orderkey"]);
    let o = s
        .read_parquet(&format!("{root}/orders/*.parquet"))
        .repartition(n, &["o_orderkey"]);
    let got = s
        .partial_sql(
            "SELECT o.o_orderpriority, count(*) AS n, sum(l.l_quantity) AS qty FROM {0} l JOIN {1} o \
             ON l.l_orderkey = o.o_orderkey GROUP BY o.o_orderpriority",
            &[&li, &o],
        )
        .sql("SELECT o_orderpriority, CAST(sum(n) AS BIGINT) AS n, sum(qty) AS qty FROM {0} GROUP BY 1 ORDER BY 1")
        .collect()
        .await?;
    let pond = t0.elapsed();
    pb.finish_and_clear();
    if canon(&got) != canon(&want) {
        bail!("join: pond and DuckDB disagree:\n{got:?}\n{want:?}");
    }
    let (input, pct) = locality(&s.task_log());
    t.row(
        &format!("join via {n}-way hash repartition (MiB/s)"),
        vec![
            Some(one_sample(pond, li_bytes + o_bytes)),
            Some(one_sample(base, li_bytes + o_bytes)),
        ],
    );
    t.note(format!(
        "join: {} tasks, input {input} B, {pct:.1}% local; answers equal",
        s.task_log().len()
    ));
    t.print();
    let _ = client.remove_tree(&root).await;
    Ok(())
}
