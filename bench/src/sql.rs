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
use pond_proto::ids::NodeId;
use pond_proto::layout::PlacementHint;
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

/// Like [`make_dataset`], but writes files of `select(i)` until they hold at least
/// `min_bytes` (and at least `min_files` files), deleting each local file once it is in pond
/// unless `keep_local`. Returns the local files kept (all of them when `keep_local`), the
/// number of files and the total bytes.
#[allow(clippy::too_many_arguments)]
pub async fn make_dataset_bytes(
    client: &Client,
    duck: &LocalDuckDb,
    dir: &Path,
    remote: &str,
    min_files: usize,
    min_bytes: u64,
    keep_local: bool,
    place_on: &[NodeId],
    name: impl Fn(usize) -> String,
    select: impl Fn(usize) -> String,
) -> Result<(Vec<PathBuf>, usize, u64)> {
    const FILES_MAX: usize = 4096;
    std::fs::create_dir_all(dir)?;
    client.mkdir_all(remote, 0o755).await?;
    let mut out = Vec::new();
    let (mut bytes, mut i) = (0u64, 0usize);
    while i < min_files || bytes < min_bytes {
        if i >= FILES_MAX {
            bail!("{FILES_MAX} files hold only {bytes} B, fewer than the {min_bytes} B asked for");
        }
        let p = dir.join(name(i));
        (duck.exec)(&format!(
            "COPY ({}) TO '{}' (FORMAT parquet)",
            select(i),
            p.display()
        ))?;
        let dst = format!("{remote}/{}", name(i));
        bytes += if place_on.is_empty() {
            Ok(client.put(&p, &dst, |_| {}).await?)
        } else {
            put_on(client, &p, &dst, place_on[i % place_on.len()]).await
        }
        .with_context(|| format!("put {}", p.display()))?;
        if keep_local {
            out.push(p);
        } else {
            std::fs::remove_file(&p)?;
        }
        i += 1;
    }
    Ok((out, i, bytes))
}

/// Copies a local file into pond on one chain whose head is on `node` (a loader writing on
/// that node would place it so), or anywhere when no chain has its head there; returns its
/// bytes.
pub async fn put_on(client: &Client, local: &Path, remote: &str, node: NodeId) -> Result<u64> {
    Ok(client
        .put_placed(local, remote, PlacementHint::HeadOnNode(node), |_| {})
        .await?)
}

/// Per stage of a job's task log: tasks, summed fetch/query/output time, the slowest task.
pub fn phases(log: &[TaskRecord]) -> String {
    let mut stages: Vec<&str> = log.iter().map(|t| t.stage.as_str()).collect();
    stages.sort();
    stages.dedup();
    let mut parts = Vec::new();
    for st in stages {
        let ts: Vec<&TaskRecord> = log.iter().filter(|t| t.stage == st).collect();
        let sum = |f: fn(&TaskRecord) -> u64| ts.iter().map(|t| f(t)).sum::<u64>();
        parts.push(format!(
            "{st}: {} tasks, slowest {} ms, summed fetch {} / query {} / output {} ms",
            ts.len(),
            ts.iter().map(|t| t.elapsed_ms).max().unwrap_or(0),
            sum(|t| t.stats.fetch_ms),
            sum(|t| t.stats.query_ms),
            sum(|t| t.stats.output_ms),
        ));
    }
    parts.join("; ")
}

/// "input N MiB: L MiB (p%) local, R MiB remote" for a job's task log.
pub fn local_remote(log: &[TaskRecord]) -> String {
    let input: u64 = log.iter().map(|t| t.stats.input_bytes).sum();
    let local: u64 = log.iter().map(|t| t.stats.input_local_bytes).sum();
    let mib = |b: u64| b as f64 / 1048576.0;
    format!(
        "input {:.1} MiB: {:.1} MiB ({:.1}%) read locally (executing node's chunk engine), {:.1} MiB remotely",
        mib(input),
        mib(local),
        100.0 * local as f64 / input.max(1) as f64,
        mib(input - local.min(input))
    )
}

/// The FUSE baseline (b): a mount of the cluster, or why there is none.
pub enum FuseBaseline {
    Mounted(PathBuf),
    Unavailable(String),
}

pub struct SqlOpts {
    pub quick: bool,
    /// Least Parquet bytes of lineitem (full runs; default 2 GiB).
    pub bytes: Option<u64>,
    pub fuse: FuseBaseline,
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

/// Runs `f` (a DuckDB baseline), printing nothing; its time.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let t0 = Instant::now();
    let r = f()?;
    Ok((r, t0.elapsed()))
}

pub async fn run(cluster: &Path, opts: &SqlOpts, duck: &LocalDuckDb) -> Result<()> {
    let s = session(cluster).await?;
    let client = s.client().clone();
    let tmp = tempfile::Builder::new()
        .prefix("pond-bench-sql-")
        .tempdir()?;
    // Rows of lineitem per file: ~10 B of Parquet per row (the columns compress well), so
    // quick ≈ 19 MiB in 4 files, full ≈ 100 MB per file, as many files as `bytes` needs.
    let (per, min_files, min_bytes): (u64, usize, u64) = if opts.quick {
        (500_000, 4, opts.bytes.unwrap_or(0))
    } else {
        (10_000_000, 4, opts.bytes.unwrap_or(2 << 30))
    };
    let root = format!("/bench-sql-{}", std::process::id());
    // Each file on one chain headed on a node, round-robin over the nodes (as loaders writing
    // on every node would place them): with chains narrower than the cluster, a file is then
    // local to its executor instead of striped over every node.
    let place: Vec<NodeId> = s.executors().keys().copied().collect();
    // The join runs over the first 4 lineitem files (named `part-jNNN`, ≤ 40 M rows) and their
    // orders: at full scale the whole table would need a multi-GB repartition through 3
    // replicas on this one disk.
    let join_files = min_files;
    let li_name = move |i: usize| {
        let tag = if i < join_files { "j" } else { "x" };
        format!("part-{tag}{i:03}.parquet")
    };
    let pb = progress("sql: generating lineitem Parquet and copying it into pond");
    let (_, files, li_bytes) = make_dataset_bytes(
        &client,
        duck,
        &tmp.path().join("lineitem"),
        &format!("{root}/lineitem"),
        min_files,
        min_bytes,
        true,
        &place,
        li_name,
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
    let rows = per * files as u64;
    let orders = per * join_files as u64 / 4;
    let o_files = join_files.div_ceil(4).max(1);
    pb.set_message("sql: generating orders Parquet and copying it into pond");
    let (_, _, o_bytes) = make_dataset_bytes(
        &client,
        duck,
        &tmp.path().join("orders"),
        &format!("{root}/orders"),
        o_files,
        0,
        true,
        &place,
        |i| format!("part-{i:03}.parquet"),
        |i| {
            let n = o_files as u64;
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
    let local_li_join = format!("'{}/lineitem/part-j*.parquet'", tmp.path().display());
    let li_join_bytes: u64 = (0..join_files)
        .map(|i| {
            std::fs::metadata(tmp.path().join("lineitem").join(li_name(i)))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();

    let fuse_root = match &opts.fuse {
        FuseBaseline::Mounted(m) => Some(m.join(root.trim_start_matches('/'))),
        FuseBaseline::Unavailable(why) => {
            eprintln!(
                "\n!!! sql: FUSE baseline (b) NOT RUN: {why}\n!!! the table has no FUSE column values\n"
            );
            None
        }
    };
    let mut t = Table::new(
        &format!(
            "sql: {rows} lineitem rows ({:.0} MiB Parquet, {files} files), {} executors",
            li_bytes as f64 / 1048576.0,
            s.executors().len()
        ),
        &[
            "pond (near-data)",
            "(a) duckdb 1 proc, local disk",
            "(b) duckdb 1 proc over FUSE",
        ],
    );
    let ratio_note = |what: &str, pond: Duration, a: Duration, b: Option<Duration>| -> String {
        let mut n = format!(
            "{what} times: pond {:.2} s, (a) local DuckDB {:.2} s, pond/(a) = {:.2}x time",
            pond.as_secs_f64(),
            a.as_secs_f64(),
            pond.as_secs_f64() / a.as_secs_f64().max(1e-9)
        );
        match b {
            Some(b) => n.push_str(&format!(
                ", (b) DuckDB over the FUSE mount {:.2} s, pond/(b) = {:.2}x time",
                b.as_secs_f64(),
                pond.as_secs_f64() / b.as_secs_f64().max(1e-9)
            )),
            None => n.push_str(", (b) NOT RUN (no FUSE mount)"),
        }
        n
    };

    // Q1 shape: filter + group-by, split into partial and final aggregation.
    let q1 = "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base, \
              avg(l_discount) AS avg_disc, count(*) AS n FROM read_parquet({G}) \
              WHERE l_shipdate <= DATE '1998-09-01' GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus";
    let pb = progress("sql: Q1 group-by, local DuckDB (a)");
    let (want, base) = timed(|| (duck.rows)(&q1.replace("{G}", &format!("'{local_li}'"))))?;
    let fuse_q1 = match &fuse_root {
        Some(fr) => {
            pb.set_message("sql: Q1 group-by, DuckDB over the FUSE mount (b)");
            let g = format!("'{}/lineitem/*.parquet'", fr.display());
            let (got, d) = timed(|| (duck.rows)(&q1.replace("{G}", &g)))?;
            if canon(&got) != canon(&want) {
                bail!("Q1: DuckDB over FUSE and DuckDB on local files disagree");
            }
            Some(d)
        }
        None => None,
    };
    pb.set_message("sql: Q1 group-by, pond near-data");
    s.clear_task_log();
    let t0 = Instant::now();
    let got = s
        .sql(&q1.replace("{G}", &format!("'{root}/lineitem/*.parquet'")))?
        .collect()
        .await?;
    let pond = t0.elapsed();
    pb.finish_and_clear();
    if canon(&got) != canon(&want) {
        bail!("Q1: pond and DuckDB disagree:\n{got:?}\n{want:?}");
    }
    let log = s.task_log();
    t.row(
        "Q1 group-by (MiB/s of Parquet)",
        vec![
            Some(one_sample(pond, li_bytes)),
            Some(one_sample(base, li_bytes)),
            fuse_q1.map(|d| one_sample(d, li_bytes)),
        ],
    );
    t.note(ratio_note("Q1", pond, base, fuse_q1));
    t.note(format!("Q1: {}; answers equal", local_remote(&log)));
    t.note(format!("Q1 phases: {}", phases(&log)));

    // Join: both sides hash-partitioned by order key, joined and aggregated per partition.
    let n = (s.executors().len() as u32 * 2).max(2);
    let pb = progress("sql: join, local DuckDB (a)");
    let jq = "SELECT o.o_orderpriority, count(*) AS n, sum(l.l_quantity) AS qty FROM read_parquet({L}) l \
              JOIN read_parquet({O}) o ON l.l_orderkey = o.o_orderkey GROUP BY o.o_orderpriority ORDER BY 1";
    let (want, base) = timed(|| {
        (duck.rows)(
            &jq.replace("{L}", &local_li_join)
                .replace("{O}", &format!("'{local_o}'")),
        )
    })?;
    let fuse_j = match &fuse_root {
        Some(fr) => {
            pb.set_message("sql: join, DuckDB over the FUSE mount (b)");
            let l = format!("'{}/lineitem/part-j*.parquet'", fr.display());
            let o = format!("'{}/orders/*.parquet'", fr.display());
            let (got, d) = timed(|| (duck.rows)(&jq.replace("{L}", &l).replace("{O}", &o)))?;
            if canon(&got) != canon(&want) {
                bail!("join: DuckDB over FUSE and DuckDB on local files disagree");
            }
            Some(d)
        }
        None => None,
    };
    pb.set_message("sql: join, pond near-data");
    s.clear_task_log();
    let t0 = Instant::now();
    let li = s
        .read_parquet(&format!("{root}/lineitem/part-j*.parquet"))
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
    let log = s.task_log();
    let jb = li_join_bytes + o_bytes;
    t.row(
        &format!("join ({join_files} files) via {n}-way hash repartition (MiB/s)"),
        vec![
            Some(one_sample(pond, jb)),
            Some(one_sample(base, jb)),
            fuse_j.map(|d| one_sample(d, jb)),
        ],
    );
    t.note(ratio_note("join", pond, base, fuse_j));
    t.note(format!("join: {}; answers equal", local_remote(&log)));
    t.note(format!("join phases: {}", phases(&log)));
    t.note("(b) reads through `pond mount` (first read of these files through the mount); the cluster's storage nodes, the mount and DuckDB share this machine");
    t.print();
    let _ = client.remove_tree(&root).await;
    Ok(())
}
