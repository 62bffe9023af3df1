//! Near-data SQL against real `pond` processes: a local cluster (`pond up`) whose `pond storage`
//! processes host the DuckDB executors, Parquet files written into pond, and every answer
//! compared with single-process DuckDB over the same files on the local disk (library and
//! `pond sql`). Also: the lockdown (no `/etc/passwd`, no URLs, no settings), the memory limit
//! and the deadline fail cleanly while the node keeps serving, and a storage node killed
//! mid-query (executor and all) is routed around.
//!
//! Needs DuckDB: build with `--features pond-compute/duckdb` and DUCKDB_LIB_DIR set (see
//! docs/compute.md). Without it every test here prints why it did not run; with
//! `POND_REQUIRE_DUCKDB=1` in the environment it fails instead.

use pond_client::Client;
use pond_client::dataframe::wire::{FailureKind, RowSet, TaskLimits, Value};
use pond_client::dataframe::{DataFrameError, Session, SessionOptions};
use pond_tests::{Cluster, Opts, Role};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_pond");

/// False (after saying so loudly) when this build has no DuckDB.
fn duckdb_or_skip(test: &str) -> bool {
    if pond_compute::DUCKDB_LINKED {
        return true;
    }
    let msg = format!(
        "\n!!! compute::{test} DID NOT RUN: pond-compute was built without DuckDB.\n\
         !!! Run `bash compute/fetch-duckdb.sh target/duckdb`, export DUCKDB_LIB_DIR=$PWD/target/duckdb\n\
         !!! DUCKDB_INCLUDE_DIR=$PWD/target/duckdb LD_LIBRARY_PATH=$PWD/target/duckdb and test with\n\
         !!! `--features pond-compute/duckdb` (docs/compute.md).\n"
    );
    if std::env::var_os("POND_REQUIRE_DUCKDB").is_some() {
        panic!("{msg}");
    }
    eprintln!("{msg}");
    false
}

struct Env {
    cluster: Cluster,
    client: Arc<Client>,
    token: String,
    local: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let cluster = Cluster::start(
            BIN,
            Opts {
                meta: 1,
                storage: 3,
                targets_per_node: 1,
                replicas: 3,
            },
        )
        .expect("start cluster");
        let cf = cluster.cluster_file().expect("cluster file");
        let client = Arc::new(Client::connect(&cf).await.expect("connect"));
        let local = tempfile::tempdir().expect("tempdir");
        Env {
            cluster,
            client,
            token: cf.token,
            local,
        }
    }

    async fn session(&self, limits: TaskLimits) -> Session {
        Session::new(self.client.clone(), &self.token, SessionOptions { limits })
            .await
            .expect("session")
    }

    /// Generates Parquet files locally with DuckDB (`select` per file, `{i}` = file number)
    /// and copies them into pond under `remote_dir`. Returns the local directory.
    async fn dataset(&self, name: &str, remote_dir: &str, selects: &[String]) -> PathBuf {
        let dir = self.local.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        self.client
            .mkdir_all(remote_dir, 0o755)
            .await
            .expect("mkdir");
        for (i, sel) in selects.iter().enumerate() {
            let p = dir.join(format!("part-{i}.parquet"));
            pond_compute::local_exec(&format!(
                "COPY ({sel}) TO '{}' (FORMAT parquet)",
                p.display()
            ))
            .expect("write local parquet");
            self.client
                .put(&p, &format!("{remote_dir}/part-{i}.parquet"), |_| {})
                .await
                .expect("put");
        }
        dir
    }
}

/// Rows in a canonical order with floats rounded, so that group order and summation order
/// do not matter. Integers compare exactly, whatever their width (an integer `sum` is HUGEINT
/// in both single-process DuckDB and pond).
fn canon(r: &RowSet) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|v| match v {
                    Value::Float(f) => format!("{:.6e}", f),
                    Value::Int(x) => format!("int {x}"),
                    Value::HugeInt(x) => format!("int {x}"),
                    Value::UInt(x) => format!("int {x}"),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .collect();
    rows.sort();
    rows
}

fn local_glob(dir: &Path) -> String {
    format!("{}/*.parquet", dir.display())
}

fn events(i: usize, rows: usize) -> String {
    // k: 7 groups, v: ints with NULLs every 13th row, d: doubles, s: strings.
    format!(
        "SELECT (r % 7)::INT AS k, CASE WHEN r % 13 = 0 THEN NULL ELSE (r * 31 + {i}) % 1000 END::BIGINT AS v, \
         (r * 0.5 + {i})::DOUBLE AS d, 'u' || (r % 11) AS s, \
         (4611686018427387904 + r)::BIGINT AS big FROM range({rows}) t(r)"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_equal_single_process_duckdb() {
    if !duckdb_or_skip("queries_equal_single_process_duckdb") {
        return;
    }
    let env = Env::start().await;
    // Four files, one of them empty (an empty partition).
    let mut selects: Vec<String> = (0..3).map(|i| events(i, 20_000 + i * 1000)).collect();
    selects.push(format!("{} WHERE false", events(3, 10)));
    let local = env.dataset("events", "/data/events", &selects).await;
    let lg = local_glob(&local);
    let s = env.session(TaskLimits::default()).await;
    assert_eq!(s.executors().len(), 3, "one executor per storage node");

    let statements = [
        // Split: partial + final aggregation.
        "SELECT k, sum(v) AS s, count(*) AS n, count(v) AS nv, min(v) AS mn, max(v) AS mx, avg(v) AS a \
         FROM read_parquet('{G}') WHERE v IS NULL OR v > 100 GROUP BY k ORDER BY k",
        "SELECT count(*) AS n, sum(d) AS sd, min(s) AS ms FROM read_parquet('{G}')",
        "SELECT s, k, max(d) AS md FROM read_parquet('{G}') AS t WHERE t.k <> 3 GROUP BY s, k ORDER BY s, k LIMIT 20",
        // Integer sums past 64 bits stay exact (HUGEINT through DECIMAL(38,0) partials).
        "SELECT k, sum(big) AS sb, sum(v) AS sv FROM read_parquet('{G}') GROUP BY k ORDER BY k",
        // Top-k: per-partition ORDER BY … LIMIT, then a merge.
        "SELECT k, v, d, s FROM read_parquet('{G}') WHERE v IS NOT NULL ORDER BY d DESC, v, k, s LIMIT 7",
        "SELECT * FROM read_parquet('{G}') ORDER BY v, d LIMIT 5 OFFSET 3",
        // Whole on one executor.
        "SELECT k, v FROM read_parquet('{G}') WHERE v > 990 ORDER BY k, v",
        "SELECT k, count(DISTINCT v) AS dv FROM read_parquet('{G}') GROUP BY k HAVING count(*) > 10 ORDER BY k",
    ];
    for st in statements {
        let want = pond_compute::local_rows(&st.replace("{G}", &lg)).expect("local duckdb");
        let df = s
            .sql(&st.replace("{G}", "/data/events/*.parquet"))
            .expect("plan");
        s.clear_task_log();
        let got = df.collect().await.unwrap_or_else(|e| panic!("{st}: {e}"));
        assert_eq!(canon(&got), canon(&want), "{st}\nplan:\n{}", df.explain());
        assert!(!got.rows.is_empty(), "{st}: test data should give rows");
        if st.contains("LIMIT") && !st.contains("GROUP BY") {
            // Top-k keeps the order itself, not only the set of rows.
            assert_eq!(
                format!("{:?}", got.rows),
                format!("{:?}", want.rows),
                "{st}"
            );
        }
        let log = s.task_log();
        let nodes: std::collections::BTreeSet<u32> = log.iter().map(|t| t.node).collect();
        eprintln!("{st}\n  tasks {} on nodes {nodes:?}", log.len());
    }

    // The explicit API, with the partial step over every file.
    let df = s
        .read_parquet("/data/events/*.parquet")
        .partial_sql("SELECT k, count(*) AS c, sum(v) AS sv FROM {0} GROUP BY k")
        .sql("SELECT k, sum(c) AS c, sum(sv) AS sv FROM {0} GROUP BY k ORDER BY k");
    s.clear_task_log();
    let got = df.collect().await.expect("explicit plan");
    let want = pond_compute::local_rows(&format!(
        "SELECT k, count(*) AS c, sum(v) AS sv FROM read_parquet('{lg}') GROUP BY k ORDER BY k"
    ))
    .unwrap();
    assert_eq!(canon(&got), canon(&want));
    let log = s.task_log();
    assert_eq!(log.len(), 5, "4 partial tasks + 1 final: {log:?}");
    let nodes: std::collections::BTreeSet<u32> = log.iter().map(|t| t.node).collect();
    // Every node holds every byte (chains of 3 on 3 nodes): the tie-break spreads partitions.
    assert!(nodes.len() >= 2, "partial tasks did not spread: {log:?}");
    let input: u64 = log.iter().map(|t| t.stats.input_bytes).sum();
    let local_b: u64 = log.iter().map(|t| t.stats.input_local_bytes).sum();
    eprintln!(
        "explicit plan: {} tasks on {nodes:?}, input {input} B, read from the local chunk engine {local_b} B",
        log.len()
    );
    // Each node holds a replica of every chunk, so every input byte came from its own engine.
    assert_eq!(local_b, input, "{log:?}");
    assert!(input > 0);

    // filter / map (per partition), then a final aggregation.
    let got = s
        .read_parquet("/data/events/*.parquet")
        .filter("v > 500")
        .map("k, v * 2 AS v2")
        .sql("SELECT k, sum(v2) AS s, count(*) AS n FROM {0} GROUP BY k ORDER BY k")
        .collect()
        .await
        .expect("filter/map");
    let want = pond_compute::local_rows(&format!(
        "SELECT k, sum(v * 2) AS s, count(*) AS n FROM read_parquet('{lg}') WHERE v > 500 GROUP BY k ORDER BY k"
    ))
    .unwrap();
    assert_eq!(canon(&got), canon(&want));

    // Hash repartition of both sides by the join key, then a join per partition.
    let users_local = env
        .dataset(
            "users",
            "/data/users",
            &[
                "SELECT r::INT AS k, 'name' || r AS name FROM range(4) t(r)".to_string(),
                "SELECT (r + 4)::INT AS k, NULL::VARCHAR AS name FROM range(3) t(r)".to_string(),
            ],
        )
        .await;
    let ev = s
        .read_parquet("/data/events/*.parquet")
        .repartition(3, &["k"]);
    let us = s
        .read_parquet("/data/users/*.parquet")
        .repartition(3, &["k"]);
    s.clear_task_log();
    let got = s
        .partial_sql(
            "SELECT e.k, u.name, count(*) AS n, sum(e.v) AS sv FROM {0} e JOIN {1} u ON e.k = u.k GROUP BY e.k, u.name",
            &[&ev, &us],
        )
        .sql("SELECT * FROM {0} ORDER BY k")
        .collect()
        .await
        .expect("co-partitioned join");
    let want = pond_compute::local_rows(&format!(
        "SELECT e.k, u.name, count(*) AS n, sum(e.v) AS sv FROM read_parquet('{lg}') e \
         JOIN read_parquet('{}') u ON e.k = u.k GROUP BY e.k, u.name ORDER BY e.k",
        local_glob(&users_local)
    ))
    .unwrap();
    assert_eq!(canon(&got), canon(&want));
    eprintln!("co-partitioned join: {} tasks", s.task_log().len());
    // Range repartition with empty buckets: every row lands exactly once.
    let parts = s
        .read_parquet("/data/events/*.parquet")
        .repartition_by(4, "CASE WHEN k < 3 THEN 0 ELSE 1 END")
        .partial_sql(
            "SELECT count(*) AS n, count(DISTINCT CASE WHEN k < 3 THEN 0 ELSE 1 END) AS r FROM {0}",
        )
        .collect()
        .await
        .expect("range repartition");
    let ns: Vec<String> = parts.rows.iter().map(|r| r[0].to_string()).collect();
    assert_eq!(parts.rows.len(), 4, "{parts:?}");
    let total: i64 = parts
        .rows
        .iter()
        .map(|r| match r[0] {
            Value::Int(n) => n,
            ref o => panic!("{o:?}"),
        })
        .sum();
    assert_eq!(total, 20_000 + 21_000 + 22_000, "{ns:?}");
    assert!(
        parts.rows.iter().all(|r| matches!(r[1], Value::Int(0 | 1))),
        "{parts:?}"
    );
    // A bucket expression outside 0..n is an error, not lost rows.
    let bad = s
        .read_parquet("/data/events/*.parquet")
        .repartition_by(2, "k")
        .partial_sql("SELECT count(*) FROM {0}")
        .collect()
        .await;
    assert!(
        matches!(
            bad,
            Err(DataFrameError::Task {
                kind: FailureKind::Sql,
                ..
            })
        ),
        "{bad:?}"
    );

    // `pond sql` (the CLI over the same planner), csv and json.
    let st = "SELECT k, sum(v) AS sv, count(*) AS n FROM read_parquet('{G}') GROUP BY k ORDER BY k";
    let want = pond_compute::local_rows(&st.replace("{G}", &lg)).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--cluster")
        .arg(env.cluster.cluster_file_path())
        .args(["sql", "--format", "csv", "--tasks"])
        .arg(st.replace("{G}", "/data/events/*.parquet"))
        .output()
        .expect("run pond sql");
    assert!(
        out.status.success(),
        "pond sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut want_csv = String::from("k,sv,n\n");
    for r in &want.rows {
        let cells: Vec<String> = r.iter().map(|v| v.to_string()).collect();
        want_csv.push_str(&cells.join(","));
        want_csv.push('\n');
    }
    assert_eq!(csv, want_csv);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node "),
        "--tasks prints placements"
    );
    let out = std::process::Command::new(BIN)
        .arg("--cluster")
        .arg(env.cluster.cluster_file_path())
        .args(["sql", "--format", "json"])
        .arg(st.replace("{G}", "/data/events/*.parquet"))
        .output()
        .expect("run pond sql");
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j.as_array().unwrap().len(), want.rows.len());
    assert_eq!(j[0]["k"], 0);
    let out = std::process::Command::new(BIN)
        .arg("--cluster")
        .arg(env.cluster.cluster_file_path())
        .args(["sql", "--explain"])
        .arg(st.replace("{G}", "/data/events/*.parquet"))
        .output()
        .expect("run pond sql --explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("partial_sql per partition"), "{text}");

    // Actions.
    let all = s.read_parquet("/data/events/*.parquet");
    assert_eq!(all.count().await.unwrap(), 20_000 + 21_000 + 22_000);
    let t = all
        .sql("SELECT * FROM {0} ORDER BY d DESC")
        .take(5)
        .await
        .unwrap();
    assert_eq!(t.rows.len(), 5);
    assert_eq!(t.columns, vec!["k", "v", "d", "s", "big"]);
    let ipc = all
        .sql("SELECT k, v FROM {0} WHERE k = 1")
        .to_arrow()
        .await
        .unwrap();
    assert_eq!(
        &ipc[..4],
        &[0xff, 0xff, 0xff, 0xff],
        "arrow IPC stream continuation marker"
    );

    // write_parquet of a partial frame: one file per partition, readable again.
    let written = s
        .read_parquet("/data/events/*.parquet")
        .partial_sql("SELECT k, v FROM {0} WHERE v < 500")
        .write_parquet("/out/small")
        .await
        .unwrap();
    assert_eq!(written.len(), 4);
    let n = s
        .read_parquet("/out/small/*.parquet")
        .count()
        .await
        .unwrap();
    let want = pond_compute::local_rows(&format!(
        "SELECT count(*) FROM read_parquet('{lg}') WHERE v < 500"
    ))
    .unwrap();
    assert_eq!(Value::Int(n as i64), want.rows[0][0]);
    // Intermediate files of jobs are removed.
    let jobs = env.client.read_dir_all("/.pond/jobs").await.unwrap();
    assert!(jobs.is_empty(), "job dirs left behind: {jobs:?}");
    drop(env);
}

fn failure_kind(r: Result<RowSet, DataFrameError>) -> (FailureKind, String) {
    match r {
        Err(DataFrameError::Task { kind, message, .. }) => (kind, message),
        other => panic!("expected a task failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lockdown_limits_and_failover() {
    if !duckdb_or_skip("lockdown_limits_and_failover") {
        return;
    }
    let mut env = Env::start().await;
    env.dataset("one", "/data/one", &[events(0, 1000)]).await;
    let s = env.session(TaskLimits::default()).await;
    let one = s.read_parquet("/data/one/part-0.parquet");

    // 1. Nothing outside the task's own inputs: host files, URLs, settings, extensions.
    for sql in [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_parquet('https://example.com/x.parquet')",
        "SELECT * FROM read_csv_auto('http://127.0.0.1:1/x.csv')",
        "SELECT * FROM glob('/etc/*')",
    ] {
        let (kind, msg) = failure_kind(
            one.sql(&format!("SELECT count(*) FROM {{0}}, ({sql}) x"))
                .collect()
                .await,
        );
        assert!(
            matches!(kind, FailureKind::Refused),
            "{sql}: expected Refused, got {kind:?}: {msg}"
        );
        eprintln!("refused {sql}: {msg}");
    }
    for sql in [
        "SET enable_external_access = true",
        "SET memory_limit = '100GB'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "COPY (SELECT 1) TO '/tmp/pond-escape.csv'",
        "ATTACH '/tmp/pond-escape.db'",
    ] {
        let r = one.sql(sql).collect().await;
        let (kind, msg) = failure_kind(r);
        assert!(
            matches!(kind, FailureKind::Refused | FailureKind::Sql),
            "{sql}: {kind:?}: {msg}"
        );
        eprintln!("refused {sql}: {kind:?} {msg}");
    }
    assert!(!Path::new("/tmp/pond-escape.csv").exists());
    assert!(!Path::new("/tmp/pond-escape.db").exists());

    // 2. Over the memory limit: a clean failure, and the node keeps serving.
    let tight = env
        .session(TaskLimits {
            memory_bytes: 32 << 20,
            threads: 1,
            deadline_ms: 120_000,
        })
        .await;
    let big = tight
        .read_parquet("/data/one/part-0.parquet")
        .sql("SELECT length(string_agg(repeat('x', 1000), ',')) FROM range(400000), {0}");
    let (kind, msg) = failure_kind(big.collect().await);
    assert_eq!(kind, FailureKind::MemoryLimit, "{msg}");
    eprintln!("memory limit: {msg}");
    env.client
        .write_file("/after-oom", b"still serving")
        .await
        .unwrap();
    assert_eq!(
        env.client.read_file("/after-oom").await.unwrap(),
        b"still serving"
    );
    assert_eq!(one.count().await.unwrap(), 1000);

    // 3. Past the deadline: interrupted, reported as such.
    let short = env
        .session(TaskLimits {
            memory_bytes: 256 << 20,
            threads: 1,
            deadline_ms: 500,
        })
        .await;
    let slow = short
        .read_parquet("/data/one/part-0.parquet")
        .sql("SELECT sum(a.r * b.r) FROM range(100000) a(r), range(100000) b(r)");
    let t = std::time::Instant::now();
    let (kind, msg) = failure_kind(slow.collect().await);
    assert_eq!(kind, FailureKind::Deadline, "{msg}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "interrupt took {:?}",
        t.elapsed()
    );

    // 4. A bad SQL error is not retried and says what is wrong.
    let (kind, msg) = failure_kind(one.sql("SELECT no_such_column FROM {0}").collect().await);
    assert_eq!(kind, FailureKind::Sql);
    assert!(msg.contains("no_such_column"), "{msg}");

    // 5. A storage node (and its executor) is killed mid-query: the query still returns the
    // right answer, its tasks rerun on other replicas.
    let rows = 200_000;
    env.dataset(
        "kill",
        "/data/kill",
        &(0..6).map(|i| events(i, rows)).collect::<Vec<_>>(),
    )
    .await;
    let lg = local_glob(&env.local.path().join("kill"));
    let st = "SELECT k, sum(v) AS sv, count(*) AS n, max(d) AS md FROM read_parquet('{G}') GROUP BY k ORDER BY k";
    let want = pond_compute::local_rows(&st.replace("{G}", &lg)).unwrap();
    let df = s.sql(&st.replace("{G}", "/data/kill/*.parquet")).unwrap();
    s.clear_task_log();
    let run = tokio::spawn(async move { df.collect().await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    env.cluster.kill9(Role::Storage(1)).expect("kill storage 1");
    let got = run.await.unwrap().expect("query survives a killed node");
    assert_eq!(canon(&got), canon(&want));
    for _ in 0..3 {
        assert_eq!(one.count().await.unwrap(), 1000);
    }
    eprintln!("after kill: {:?}", s.task_log());
    drop(env);
}

/// Input files larger than one local read batch (16 MiB) and spanning many chunks are copied
/// in exactly (reads of the next batch overlap the write of the last), several files of one
/// task are fetched at once, and a file named twice by one task is fetched once. Checked by
/// checksums of every row against single-process DuckDB over the local files, and by the byte
/// counts the executors report.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_and_repeated_inputs_arrive_intact() {
    if !duckdb_or_skip("big_and_repeated_inputs_arrive_intact") {
        return;
    }
    let env = Env::start().await;
    // md5 text does not compress: ~26 MB per 400k rows; a small second file.
    let big = |i: usize, rows: usize| {
        format!(
            "SELECT (r % 5)::INT AS k, md5(r::VARCHAR || '{i}') || md5(r::VARCHAR || 'x{i}') AS t \
             FROM range({rows}) t(r)"
        )
    };
    let local = env
        .dataset("big", "/data/big", &[big(0, 400_000), big(1, 20_000)])
        .await;
    let sizes: Vec<u64> = (0..2)
        .map(|i| {
            std::fs::metadata(local.join(format!("part-{i}.parquet")))
                .unwrap()
                .len()
        })
        .collect();
    assert!(
        sizes[0] > pond_compute::limits::LOCAL_READ_BATCH_BYTES + (2 << 20),
        "the big file must exceed one local read batch: {sizes:?}"
    );
    let lg = local_glob(&local);
    let s = env.session(TaskLimits::default()).await;

    // One task over both files (runs whole): every byte of both must arrive.
    let st = "SELECT k, count(*) AS n, sum(hash(t)::HUGEINT) AS h FROM read_parquet('{G}') \
              GROUP BY k HAVING count(*) > 0 ORDER BY k";
    let want = pond_compute::local_rows(&st.replace("{G}", &lg)).unwrap();
    s.clear_task_log();
    let got = s
        .sql(&st.replace("{G}", "/data/big/*.parquet"))
        .unwrap()
        .collect()
        .await
        .expect("whole query");
    assert_eq!(canon(&got), canon(&want));
    let log = s.task_log();
    let input: u64 = log.iter().map(|t| t.stats.input_bytes).sum();
    assert_eq!(
        input,
        sizes[0] + sizes[1],
        "each file fetched once: {log:?}"
    );

    // A self-join per partition: the task names its file as {0} and as {1}; fetched once.
    let a = s.read_parquet("/data/big/*.parquet");
    let b = s.read_parquet("/data/big/*.parquet");
    s.clear_task_log();
    let got = s
        .partial_sql(
            "SELECT a.k, count(*) AS n, sum(hash(a.t, b.t)::HUGEINT) AS h FROM {0} a JOIN {1} b \
             ON a.t = b.t GROUP BY a.k",
            &[&a, &b],
        )
        .sql("SELECT k, CAST(sum(n) AS BIGINT) AS n, sum(h) AS h FROM {0} GROUP BY k ORDER BY k")
        .collect()
        .await
        .expect("self-join");
    let want = pond_compute::local_rows(&format!(
        "SELECT k, count(*) AS n, sum(hash(t, t)::HUGEINT) AS h FROM read_parquet('{lg}') \
         GROUP BY k ORDER BY k"
    ))
    .unwrap();
    assert_eq!(canon(&got), canon(&want));
    let log = s.task_log();
    let partial_input: u64 = log
        .iter()
        .filter(|t| t.stage != "final")
        .map(|t| t.stats.input_bytes)
        .sum();
    assert_eq!(
        partial_input,
        sizes[0] + sizes[1],
        "a file named twice by one task is fetched once: {log:?}"
    );
    let local_b: u64 = log.iter().map(|t| t.stats.input_local_bytes).sum();
    let all_b: u64 = log.iter().map(|t| t.stats.input_bytes).sum();
    assert_eq!(local_b, all_b, "chains of 3 on 3 nodes: every byte local");
}
