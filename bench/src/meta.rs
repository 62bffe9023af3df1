//! Metadata benchmark: create, stat, readdir and unlink rates with 1..64 concurrent clients,
//! against the cluster given, next to the same operations on the local filesystem.
//!
//! Each client works in its own directory: it creates `files` files, stats each by name
//! (lookup), lists its directory (paged readdir), and unlinks them. Baseline: the same
//! sequence with the same number of threads on a local directory (`create` is open+close
//! with `O_CREAT|O_EXCL`, no fsync: the local baseline is *not* durable while pond's creates are
//! committed to a Raft majority, which is why pond's figure can only approach it by batching).

use crate::report::{Row, Samples, print_table};
use anyhow::{Context, Result};
use pond_client::meta_client::MetaClient;
use pond_proto::InodeId;
use pond_proto::layout::PlacementHint;
use pond_proto::meta::{Caller, MetaReply, MetaRequest};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct MetaBenchOpts {
    pub clients: Vec<usize>,
    pub files_per_client: usize,
}

#[derive(Clone, Copy)]
enum Phase {
    Create,
    Stat,
    Readdir,
    Unlink,
}

const PHASES: [(Phase, &str); 4] = [
    (Phase::Create, "create"),
    (Phase::Stat, "stat (lookup)"),
    (Phase::Readdir, "readdir (page 1000)"),
    (Phase::Unlink, "unlink"),
];

async fn pond_phase(
    client: &MetaClient,
    dirs: &[InodeId],
    files: usize,
    phase: Phase,
) -> Result<Samples> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, dir) in dirs.iter().enumerate() {
        let (c, dir) = (client.clone(), *dir);
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let ops = if let Phase::Readdir = phase { 1 } else { files };
            for i in 0..ops {
                let name = format!("f{t}-{i}");
                let req = match phase {
                    Phase::Create => MetaRequest::Create {
                        parent: dir,
                        name,
                        mode: 0o644,
                        caller: Caller::default(),
                        exclusive: true,
                        hint: PlacementHint::Any,
                        session: None,
                    },
                    Phase::Stat => MetaRequest::Lookup { parent: dir, name },
                    Phase::Readdir => MetaRequest::ReadDir {
                        dir,
                        after: None,
                        limit: 1000,
                    },
                    Phase::Unlink => MetaRequest::Unlink { parent: dir, name },
                };
                let t0 = Instant::now();
                c.op(req)
                    .await
                    .map_err(|e| anyhow::anyhow!("meta op: {e}"))?;
                s.push(t0.elapsed());
            }
            anyhow::Ok(s)
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.extend(t.await??);
    }
    all.wall = start.elapsed();
    Ok(all)
}

fn local_phase(root: &Path, clients: usize, files: usize, phase: Phase) -> Result<Samples> {
    let start = Instant::now();
    let root = Arc::new(root.to_path_buf());
    let handles: Vec<_> = (0..clients)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || -> Result<Samples> {
                let dir: PathBuf = root.join(format!("c{t}"));
                let mut s = Samples::default();
                let ops = if let Phase::Readdir = phase { 1 } else { files };
                for i in 0..ops {
                    let p = dir.join(format!("f{t}-{i}"));
                    let t0 = Instant::now();
                    match phase {
                        Phase::Create => {
                            std::fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .open(&p)?;
                        }
                        Phase::Stat => {
                            std::fs::symlink_metadata(&p)?;
                        }
                        Phase::Readdir => {
                            let n = std::fs::read_dir(&dir)?.take(1000).count();
                            std::hint::black_box(n);
                        }
                        Phase::Unlink => std::fs::remove_file(&p)?,
                    }
                    s.push(t0.elapsed());
                }
                Ok(s)
            })
        })
        .collect();
    let mut all = Samples::default();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("bench thread panicked"))??,
        );
    }
    all.wall = start.elapsed();
    Ok(all)
}

/// Run the suite against one cluster; `label` names it in the table (e.g. "3 replicas").
pub async fn run(client: &MetaClient, label: &str, opts: &MetaBenchOpts) -> Result<()> {
    let local = tempfile::Builder::new()
        .prefix("pond-bench-meta-")
        .tempdir()?;
    let run_id = std::process::id();
    let mut rows = Vec::new();
    for &c in &opts.clients {
        let top = format!("bench-meta-{run_id}-{label}-{c}").replace(' ', "_");
        let top_attr = client
            .op(MetaRequest::Mkdir {
                parent: InodeId::ROOT,
                name: top,
                mode: 0o755,
                caller: Caller::default(),
            })
            .await
            .map_err(|e| anyhow::anyhow!("mkdir bench dir: {e}"))?;
        let MetaReply::Attr(top_attr) = top_attr else {
            anyhow::bail!("mkdir: no attr")
        };
        let mut dirs = Vec::new();
        let local_root = local.path().join(format!("n{c}"));
        for t in 0..c {
            let MetaReply::Attr(a) = client
                .op(MetaRequest::Mkdir {
                    parent: top_attr.inode,
                    name: format!("c{t}"),
                    mode: 0o755,
                    caller: Caller::default(),
                })
                .await
                .map_err(|e| anyhow::anyhow!("mkdir client dir: {e}"))?
            else {
                anyhow::bail!("mkdir: no attr")
            };
            dirs.push(a.inode);
            std::fs::create_dir_all(local_root.join(format!("c{t}")))
                .context("create local baseline dir")?;
        }
        for (phase, name) in PHASES {
            let pond = pond_phase(client, &dirs, opts.files_per_client, phase).await?;
            let base = local_phase(&local_root, c, opts.files_per_client, phase)?;
            rows.push(Row {
                what: format!("{name}, {c} clients"),
                pond,
                base,
            });
        }
    }
    print_table(&format!("meta: {label}"), "local fs", &mut rows);
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
