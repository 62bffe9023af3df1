//! `pond bench SUITE [--quick] [--json FILE]`: starts its own local clusters (or uses
//! `--cluster`) and runs the suites of the `pond-bench` crate, each figure next to a same-run
//! baseline. Suites: `meta`, `io` (client library + in-memory data plane), `fuse`, `all`.
//! Clusters are started on 127.0.0.1 with `pond up --detach` and stopped (mounts unmounted)
//! when the suite ends, also on error.

use anyhow::{Context, Result, bail};
use pond_client::config::ClusterFile;
use pond_client::meta_client::MetaClient;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Suite: meta | io | fuse | loader | sql | sort | all.
    pub suite: String,
    /// Short runs (CI): smaller files, fewer operations, shorter phases.
    #[arg(long)]
    pub quick: bool,
    /// Also write every table row as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// sql/sort: least data size (bytes; suffixes K, M, G, Ki, Mi, Gi): Parquet bytes of
    /// lineitem for `sql` (default 2 GiB), bytes of 100-byte records for `sort` (default 4 GiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub bytes: Option<u64>,
    /// sql/sort: replicas per chain of the temporary 3-node cluster (1–3; default 3). With 3
    /// replicas on one disk every byte is stored three times.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=3))]
    pub replicas: Option<u32>,
}

/// `4294967296`, `4G` (10^9), `4Gi` (2^30), also K/Ki, M/Mi.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let mul: u64 = match unit {
        "" => 1,
        "K" | "k" => 1_000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (K, M, G, Ki, Mi, Gi)")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// This very binary, for `pond up/down/mount` children: `/proc/self/exe` still runs it when
/// the file on disk was replaced meanwhile (a rebuild during a long benchmark), where
/// `current_exe()` would name a deleted path and the cluster would never be stopped.
fn self_exe() -> PathBuf {
    let proc = PathBuf::from("/proc/self/exe");
    if proc.exists() {
        proc
    } else {
        std::env::current_exe().unwrap_or(proc)
    }
}

/// A temporary cluster started with `pond up --detach`, stopped on drop.
struct TempCluster {
    dir: tempfile::TempDir,
}

impl TempCluster {
    fn start(meta: u32, storage: u32) -> Result<TempCluster> {
        Self::start_with(meta, storage, storage.clamp(1, 3))
    }

    fn start_with(meta: u32, storage: u32, replicas: u32) -> Result<TempCluster> {
        let dir = tempfile::Builder::new().prefix("pond-bench-").tempdir()?;
        let exe = self_exe();
        let st = Command::new(exe)
            .args(["up", "--detach", "--dir"])
            .arg(dir.path())
            .args([
                "--meta",
                &meta.to_string(),
                "--storage",
                &storage.to_string(),
            ])
            .args([
                "--targets-per-node",
                "1",
                "--replicas",
                &replicas.to_string(),
            ])
            .status()
            .context("run pond up")?;
        let tc = TempCluster { dir };
        if !st.success() {
            // Drop stops whatever did start.
            bail!("pond up failed for the benchmark cluster");
        }
        Ok(tc)
    }

    fn cluster_path(&self) -> PathBuf {
        self.dir.path().join("cluster.toml")
    }

    fn cluster_file(&self) -> Result<ClusterFile> {
        Ok(ClusterFile::load(&self.cluster_path())?)
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let exe = self_exe();
        // `pond down` waits up to 30 s for the supervisor; try twice before the directory goes.
        for _ in 0..2 {
            match Command::new(&exe)
                .args(["down", "--dir"])
                .arg(self.dir.path())
                .status()
            {
                Ok(st) if st.success() => return,
                Ok(st) => eprintln!("pond bench: pond down {}: {st}", self.dir.path().display()),
                Err(e) => eprintln!("pond bench: pond down {}: {e}", self.dir.path().display()),
            }
        }
    }
}

/// A `pond mount --detach` of a cluster, unmounted on drop.
struct TempMount {
    mnt: tempfile::TempDir,
}

impl TempMount {
    fn start(cluster: &Path, log: &Path) -> Result<TempMount> {
        let mnt = tempfile::Builder::new()
            .prefix("pond-bench-mnt-")
            .tempdir()?;
        let st = Command::new(self_exe())
            .arg("--cluster")
            .arg(cluster)
            .args(["mount", "--detach", "--log"])
            .arg(log)
            .arg(mnt.path())
            .status()
            .context("run pond mount")?;
        if !st.success() {
            bail!("pond mount failed (FUSE needs /dev/fuse; as non-root, fusermount3)");
        }
        Ok(TempMount { mnt })
    }

    fn path(&self) -> &Path {
        self.mnt.path()
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if super::mount::is_pond_mount(self.mnt.path())
            && let Err(e) = super::mount::unmount(self.mnt.path())
        {
            eprintln!("pond bench: unmount {}: {e:#}", self.mnt.path().display());
        }
    }
}

/// Where a suite's local-disk baseline goes: next to the cluster directory, so on the same
/// filesystem.
fn local_dir_near(cluster_file: &Path) -> Result<tempfile::TempDir> {
    let parent = cluster_file
        .parent()
        .and_then(|d| d.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    Ok(tempfile::Builder::new()
        .prefix("pond-bench-local-")
        .tempdir_in(parent)?)
}

async fn meta_suite(cluster: Option<&Path>, quick: bool) -> Result<()> {
    let opts = pond_bench::meta::MetaBenchOpts {
        clients: vec![1, 4, 16, 64],
        files_per_client: if quick { 40 } else { 400 },
    };
    if let Some(p) = cluster {
        let cf = ClusterFile::load(p)?;
        let c =
            MetaClient::connect(cf.meta_addrs(), cf.token).map_err(|e| anyhow::anyhow!("{e}"))?;
        return pond_bench::meta::run(&c, "given cluster", &opts).await;
    }
    for replicas in [1u32, 3] {
        let tc = TempCluster::start(replicas, 1)?;
        let cf = tc.cluster_file()?;
        let c =
            MetaClient::connect(cf.meta_addrs(), cf.token).map_err(|e| anyhow::anyhow!("{e}"))?;
        pond_bench::meta::run(&c, &format!("{replicas} replica(s)"), &opts).await?;
    }
    Ok(())
}

fn file_bytes(quick: bool) -> u64 {
    if quick { 64 << 20 } else { 512 << 20 }
}

fn phase(quick: bool) -> Duration {
    Duration::from_millis(if quick { 1000 } else { 4000 })
}

async fn io_on(cluster: &Path, label: &str, quick: bool) -> Result<()> {
    let client = pond_client::Client::from_cluster_file(cluster)
        .await
        .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    let local = local_dir_near(cluster)?;
    let opts = pond_bench::io::IoOpts {
        file_bytes: file_bytes(quick),
        phase: phase(quick),
        local_dir: local.path().to_path_buf(),
    };
    let fig = pond_bench::io::run(&client, label, &opts).await?;
    pond_bench::dataplane::run(opts.file_bytes, opts.phase, &fig).await
}

async fn io_suite(cluster: Option<&Path>, quick: bool) -> Result<()> {
    if let Some(p) = cluster {
        return io_on(p, "given cluster", quick).await;
    }
    let tc = TempCluster::start(3, 3)?;
    io_on(&tc.cluster_path(), "3 meta, 3 storage, chains of 3", quick).await
}

fn fuse_on(cluster: &Path, label: &str, quick: bool) -> Result<()> {
    let local = local_dir_near(cluster)?;
    let log = local.path().join("mount.log");
    let m = TempMount::start(cluster, &log)?;
    let opts = pond_bench::fuse::FuseOpts {
        file_bytes: file_bytes(quick),
        phase: phase(quick),
        ns_files: if quick { 320 } else { 2000 },
        small_files: if quick { 1000 } else { 10_000 },
        small_file_bytes: 64 << 10,
        local_dir: local.path().join("work"),
    };
    let r = pond_bench::fuse::run(m.path(), label, &opts);
    drop(m);
    r
}

async fn loader_suite(cluster: Option<&Path>, quick: bool) -> Result<()> {
    if let Some(p) = cluster {
        return pond_bench::loader::run(p, quick).await;
    }
    let tc = TempCluster::start(3, 3)?;
    pond_bench::loader::run(&tc.cluster_path(), quick).await
}

/// Single-process DuckDB (pond-compute's unrestricted helpers) for the sql/sort baselines.
pub(crate) const LOCAL_DUCKDB: pond_bench::sql::LocalDuckDb = pond_bench::sql::LocalDuckDb {
    exec: |sql| Ok(pond_compute::local_exec(sql)?),
    rows: |sql| Ok(pond_compute::local_rows(sql)?),
};

/// Options of the `sql`/`sort` suites from the command line.
#[derive(Clone, Copy)]
struct ComputeArgs {
    quick: bool,
    bytes: Option<u64>,
    replicas: Option<u32>,
}

/// `sql` or `sort`: near-data SQL on a 3-node cluster (chains of 3 unless `--replicas`) vs
/// DuckDB on local files; `sql` also mounts the cluster for the FUSE baseline (b).
async fn compute_suite(cluster: Option<&Path>, a: ComputeArgs, which: &str) -> Result<()> {
    let tc = match cluster {
        Some(_) => None,
        None => Some(TempCluster::start_with(1, 3, a.replicas.unwrap_or(3))?),
    };
    let p = match (&tc, cluster) {
        (Some(tc), _) => tc.cluster_path(),
        (None, Some(p)) => p.to_path_buf(),
        (None, None) => unreachable!("a cluster was given or started"),
    };
    let label = match (cluster, a.replicas) {
        (Some(_), _) => "given cluster".to_string(),
        (None, r) => format!(
            "3 storage nodes on this machine, chains of {}",
            r.unwrap_or(3)
        ),
    };
    if which == "sql" {
        let local = local_dir_near(&p)?;
        let log = local.path().join("mount.log");
        let (mount, fuse) = match TempMount::start(&p, &log) {
            Ok(m) => {
                let f = pond_bench::sql::FuseBaseline::Mounted(m.path().to_path_buf());
                (Some(m), f)
            }
            Err(e) => (
                None,
                pond_bench::sql::FuseBaseline::Unavailable(format!("{e:#}")),
            ),
        };
        let opts = pond_bench::sql::SqlOpts {
            quick: a.quick,
            bytes: a.bytes,
            fuse,
        };
        println!("sql: {label}");
        let r = pond_bench::sql::run(&p, &opts, &LOCAL_DUCKDB).await;
        drop(mount);
        return r;
    }
    let opts = pond_bench::sort::SortOpts {
        quick: a.quick,
        bytes: a.bytes,
        cluster_label: label,
    };
    pond_bench::sort::run(&p, &opts, &LOCAL_DUCKDB).await
}

fn fuse_suite(cluster: Option<&Path>, quick: bool) -> Result<()> {
    if let Some(p) = cluster {
        return fuse_on(p, "given cluster", quick);
    }
    let tc = TempCluster::start(3, 3)?;
    fuse_on(&tc.cluster_path(), "3 meta, 3 storage, chains of 3", quick)
}

/// The load average, printed before and after the suites: the machine is shared, and a busy
/// one moves every absolute figure (ratios within a row less so).
fn print_load(when: &str) {
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        let l: Vec<&str> = l.split_whitespace().take(3).collect();
        println!("load average {when}: {}", l.join(" "));
    }
}

pub fn bench(cluster: Option<&Path>, args: BenchArgs) -> Result<()> {
    super::print_machine();
    print_load("at start");
    let rt = super::runtime()?;
    let q = args.quick;
    let ca = ComputeArgs {
        quick: q,
        bytes: args.bytes,
        replicas: args.replicas,
    };
    let r = match args.suite.as_str() {
        "meta" => rt.block_on(meta_suite(cluster, q)),
        "io" => rt.block_on(io_suite(cluster, q)),
        "fuse" => fuse_suite(cluster, q),
        "loader" => rt.block_on(loader_suite(cluster, q)),
        "sql" => rt.block_on(compute_suite(cluster, ca, "sql")),
        "sort" => rt.block_on(compute_suite(cluster, ca, "sort")),
        "all" => rt
            .block_on(meta_suite(cluster, q))
            .and_then(|_| rt.block_on(io_suite(cluster, q)))
            .and_then(|_| fuse_suite(cluster, q))
            .and_then(|_| rt.block_on(loader_suite(cluster, q)))
            .and_then(|_| rt.block_on(compute_suite(cluster, ca, "sql")))
            .and_then(|_| rt.block_on(compute_suite(cluster, ca, "sort"))),
        other => bail!("unknown suite {other:?} (have: meta, io, fuse, loader, sql, sort, all)"),
    };
    print_load("at end");
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "suite": args.suite,
            "quick": q,
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            "rows": pond_bench::report::take_json(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    r
}
