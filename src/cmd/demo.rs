//! `pond demo`: the README's main job. Starts (or reuses) the local cluster in `./.pond`,
//! writes a sample dataset through the client library and through a FUSE mount, reads both
//! back through the other path, verifies every byte, and prints what happened and how fast.

use anyhow::{Result, bail};
use pond_client::Client;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Cluster directory (created with `pond up` defaults when absent).
    #[arg(long, default_value = ".pond")]
    pub dir: PathBuf,
    /// Files per path (client, FUSE).
    #[arg(long, default_value_t = 8)]
    pub files: usize,
    /// Size of each file in MiB.
    #[arg(long, default_value_t = 16)]
    pub file_mib: usize,
}

fn pattern(file: usize, len: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (file as u64 + 1);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

struct Line {
    what: String,
    bytes: u64,
    secs: f64,
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
}

pub fn demo(args: DemoArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let st = Command::new(&exe)
        .arg("up")
        .arg("--detach")
        .arg("--dir")
        .arg(&args.dir)
        .status()?;
    if !st.success() {
        bail!("pond up failed");
    }
    let dir = std::fs::canonicalize(&args.dir)?;
    let cluster = dir.join("cluster.toml");
    let len = args.file_mib << 20;
    let total = (args.files * len) as u64;
    let run = format!("demo-{}", std::process::id());
    let mut lines = Vec::new();

    let rt = super::runtime()?;
    let client = rt
        .block_on(Client::from_cluster_file(&cluster))
        .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    rt.block_on(client.mkdir_all(&format!("/{run}/client"), 0o755))
        .map_err(|e| anyhow::anyhow!("mkdir: {e}"))?;
    rt.block_on(client.mkdir_all(&format!("/{run}/fuse"), 0o755))
        .map_err(|e| anyhow::anyhow!("mkdir: {e}"))?;
    let data: Vec<Vec<u8>> = (0..args.files).map(|i| pattern(i, len)).collect();

    // 1. Write through the client library, files in parallel.
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, d) in data.iter().enumerate() {
            let (c, d, p) = (
                client.clone(),
                d.clone(),
                format!("/{run}/client/shard-{i:03}.bin"),
            );
            tasks.push(tokio::spawn(async move { c.write_file(&p, &d).await }));
        }
        for t in tasks {
            t.await?.map_err(|e| anyhow::anyhow!("write: {e}"))?;
        }
        anyhow::Ok(())
    })?;
    lines.push(Line {
        what: "write via client library".into(),
        bytes: total,
        secs: t.elapsed().as_secs_f64(),
    });

    // 2. Mount, write through FUSE.
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    if !super::mount::is_pond_mount(&mnt) {
        let st = Command::new(&exe)
            .arg("--cluster")
            .arg(&cluster)
            .args(["mount", "--detach", "--log"])
            .arg(dir.join("logs/mount.log"))
            .arg(&mnt)
            .status()?;
        if !st.success() {
            bail!("pond mount failed (FUSE needs /dev/fuse; as non-root, fusermount3)");
        }
    }
    let result = (|| -> Result<()> {
        let fdir = mnt.join(&run).join("fuse");
        let t = Instant::now();
        for (i, d) in data.iter().enumerate() {
            let mut f = std::fs::File::create(fdir.join(format!("shard-{i:03}.bin")))?;
            for piece in d.chunks(1 << 20) {
                f.write_all(piece)?;
            }
            f.sync_all()?;
        }
        lines.push(Line {
            what: "write via FUSE mount".into(),
            bytes: total,
            secs: t.elapsed().as_secs_f64(),
        });

        // 3. Cross-read: client-written files through FUSE, FUSE-written through the client.
        let t = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        for (i, d) in data.iter().enumerate() {
            let mut f =
                std::fs::File::open(mnt.join(&run).join(format!("client/shard-{i:03}.bin")))?;
            let mut off = 0;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                if buf[..n] != d[off..off + n] {
                    bail!("shard {i}: bytes at {off} differ when read through FUSE");
                }
                off += n;
            }
            if off != d.len() {
                bail!(
                    "shard {i}: {off} bytes read through FUSE, {} written",
                    d.len()
                );
            }
        }
        lines.push(Line {
            what: "read via FUSE (client-written)".into(),
            bytes: total,
            secs: t.elapsed().as_secs_f64(),
        });
        let t = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..data.len() {
                let (c, p) = (client.clone(), format!("/{run}/fuse/shard-{i:03}.bin"));
                tasks.push(tokio::spawn(async move { c.read_file(&p).await }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let got = t.await?.map_err(|e| anyhow::anyhow!("read: {e}"))?;
                if got != data[i] {
                    bail!("shard {i}: bytes differ when read through the client");
                }
            }
            anyhow::Ok(())
        })?;
        lines.push(Line {
            what: "read via client (FUSE-written)".into(),
            bytes: total,
            secs: t.elapsed().as_secs_f64(),
        });
        Ok(())
    })();
    let _ = super::mount::unmount(&mnt);
    result?;

    println!(
        "\npond demo: {} files x {} MiB per path, 3-way replicated, every byte verified",
        args.files, args.file_mib
    );
    println!(
        "{:<34} {:>10} {:>9} {:>10}",
        "step", "MiB", "seconds", "MiB/s"
    );
    for l in &lines {
        println!(
            "{:<34} {:>10.0} {:>9.2} {:>10.1}",
            l.what,
            l.bytes as f64 / (1 << 20) as f64,
            l.secs,
            mib_s(l.bytes, l.secs)
        );
    }
    println!(
        "\ndata is in pond under /{run}; try `pond --cluster {} ls -l /{run}/client`",
        cluster.display()
    );
    println!(
        "the cluster keeps running: `pond status`, `pond down --dir {}`",
        args.dir.display()
    );

    // Near-data SQL step (docs/compute.md): the storage nodes' executors aggregate Parquet
    // files in pond; the answer is checked against DuckDB over the same files on local disk.
    rt.block_on(demo_sql(&cluster, &run))?;

    // Training-epoch step (docs/loader.md): a packed sample dataset read in shuffled batches.
    super::dataset::demo_epoch(&rt, &client, &run, 20_000)?;
    Ok(())
}

/// Generates 4 Parquet files of events (1 M rows) with local DuckDB, copies them into pond,
/// runs one group-by near the data and the same query in local DuckDB, and prints both.
async fn demo_sql(cluster: &std::path::Path, run: &str) -> Result<()> {
    use pond_bench::sql::{canon, locality, make_dataset, session};
    let duck = &super::bench::LOCAL_DUCKDB;
    let s = session(cluster).await?;
    let tmp = tempfile::tempdir()?;
    let (files, per) = (4usize, 250_000u64);
    let remote = format!("/{run}/events");
    let (_, bytes) = make_dataset(s.client(), duck, tmp.path(), &remote, files, |i| {
        let (a, b) = (i as u64 * per, (i as u64 + 1) * per);
        format!(
            "SELECT r::BIGINT AS id, (hash(r, 1) % 1000)::INT AS user_id, \
             (hash(r, 2) % 10000)::BIGINT AS amount FROM range({a}, {b}) t(r)"
        )
    })
    .await?;
    let q = "SELECT user_id % 10 AS bucket, count(*) AS n, sum(amount) AS total \
             FROM read_parquet('{G}') GROUP BY bucket ORDER BY bucket";
    let t0 = Instant::now();
    let got = s
        .sql(&q.replace("{G}", &format!("{remote}/*.parquet")))?
        .collect()
        .await?;
    let pond_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let want = (duck.rows)(&q.replace("{G}", &format!("{}/*.parquet", tmp.path().display())))?;
    let local_secs = t0.elapsed().as_secs_f64();
    if canon(&got) != canon(&want) {
        bail!("demo SQL: pond and local DuckDB disagree:\n{got:?}\n{want:?}");
    }
    let (input, pct) = locality(&s.task_log());
    println!(
        "\nsql near the data: {} rows ({:.1} MiB Parquet) grouped into {} buckets in {:.2} s \
         on {} executors ({} tasks, {pct:.0}% of {input} input bytes read from the node's own \
         chunks); local DuckDB on the same files: {:.2} s; answers equal",
        files as u64 * per,
        bytes as f64 / (1 << 20) as f64,
        got.rows.len(),
        pond_secs,
        s.executors().len(),
        s.task_log().len(),
        local_secs
    );
    Ok(())
}
