//! Sequential 1 MiB writes through the client library's write-behind buffer against a running
//! cluster, then one fsync, repeated on fresh files: shows how the time splits between the
//! write calls and the final fsync, and whether the first file on a fresh cluster is slower.
//! `client_write CLUSTER_TOML [MIB] [ROUNDS]`.

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cluster = args.next().ok_or_else(|| anyhow::anyhow!("cluster file"))?;
    let mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let rounds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let client = pond_client::Client::from_cluster_file(std::path::Path::new(&cluster)).await?;
        let dir = format!("/client-write-{}", std::process::id());
        client.mkdir_all(&dir, 0o755).await?;
        let block = vec![7u8; 1 << 20];
        for r in 0..rounds {
            let f = client.create_file(&format!("{dir}/f{r}")).await?;
            let t0 = Instant::now();
            let mut worst = 0f64;
            for i in 0..mib {
                let t = Instant::now();
                f.pwrite(i << 20, &block).await?;
                worst = worst.max(t.elapsed().as_secs_f64());
            }
            let writes = t0.elapsed().as_secs_f64();
            f.fsync().await?;
            let total = t0.elapsed().as_secs_f64();
            f.close().await?;
            println!(
                "round {r}: {mib} MiB: writes {:.0} ms (slowest {:.1} ms), fsync {:.0} ms, {:.1} MiB/s",
                writes * 1e3,
                worst * 1e3,
                (total - writes) * 1e3,
                mib as f64 / total
            );
        }
        anyhow::Ok(())
    })
}
