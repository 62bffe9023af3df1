//! Times the steps of a FUSE-style create through the client library against a running
//! cluster, one at a time: `Lookup` of the (missing) name, `create_open` (meta `Create` with a
//! session), and `close`. Shows how much of a FUSE create is the client library's own work.
//! `client_create CLUSTER_TOML [FILES] [TASKS]`: with TASKS > 1, that many tasks each create
//! FILES files (`create_open` + `close`) at once and the rate is printed.

use pond_client::OpenMode;
use pond_proto::layout::PlacementHint;
use pond_proto::meta::Caller;
use std::time::{Duration, Instant};

fn p50(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// A FUSE-style create: exclusive, with a write session (what `open(O_CREAT|O_EXCL)` sends).
async fn create_one(
    client: &pond_client::Client,
    parent: pond_proto::InodeId,
    name: &str,
) -> pond_client::Result<pond_client::File> {
    let (_, f) = client
        .create_open(
            parent,
            name,
            0o644,
            Caller::default(),
            true,
            PlacementHint::Any,
            OpenMode::WRITE,
        )
        .await?;
    Ok(f)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cluster = args.next().ok_or_else(|| anyhow::anyhow!("cluster file"))?;
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(300);
    let tasks: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let client = pond_client::Client::from_cluster_file(std::path::Path::new(&cluster)).await?;
        let dir = format!("/client-create-{}", std::process::id());
        client.mkdir_all(&dir, 0o755).await?;
        let parent = client.stat(&dir).await?.inode;
        if tasks > 1 {
            let t0 = Instant::now();
            let mut js = Vec::new();
            for k in 0..tasks {
                let client = client.clone();
                js.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(n);
                    for i in 0..n {
                        let t = Instant::now();
                        let f = create_one(&client, parent, &format!("t{k}-{i}")).await?;
                        f.close().await?;
                        lat.push(t.elapsed());
                    }
                    anyhow::Ok(lat)
                }));
            }
            let mut lat = Vec::new();
            for j in js {
                lat.extend(j.await??);
            }
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "{tasks} tasks x {n} creates: {:.0} creates/s, p50 create_open+close {:.2} ms",
                (tasks * n) as f64 / secs,
                p50(&mut lat)
            );
            return anyhow::Ok(());
        }
        let (mut look, mut create, mut close) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let name = format!("f{i}");
            let t = Instant::now();
            let missing = client.lookup(parent, &name).await.is_err();
            look.push(t.elapsed());
            assert!(missing, "{name} exists");
            let t = Instant::now();
            let f = create_one(&client, parent, &name).await?;
            create.push(t.elapsed());
            let t = Instant::now();
            f.close().await?;
            close.push(t.elapsed());
        }
        println!(
            "{n} creates, p50: lookup {:.2} ms, create_open {:.2} ms, close {:.2} ms",
            p50(&mut look),
            p50(&mut create),
            p50(&mut close)
        );
        anyhow::Ok(())
    })
}
