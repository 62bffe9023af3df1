//! Latency of one durable chain write through the client library (`File::pwrite_bytes`: returns
//! when every replica holds the bytes durably), repeated over the same range of one file, so
//! no meta request is on the timed path: `client_durable_write CLUSTER_TOML [BYTES] [COUNT]`.

use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cluster = args.next().ok_or_else(|| anyhow::anyhow!("cluster file"))?;
    let bytes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4096);
    let count: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(300);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let client = pond_client::Client::from_cluster_file(std::path::Path::new(&cluster)).await?;
        let f = client
            .create_file(&format!("/durable-write-{}", std::process::id()))
            .await?;
        let data = bytes::Bytes::from(vec![7u8; bytes]);
        f.pwrite_bytes(0, data.clone()).await?;
        let mut lat: Vec<Duration> = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            f.pwrite_bytes(0, data.clone()).await?;
            lat.push(t.elapsed());
        }
        f.close().await?;
        lat.sort();
        let ms = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!(
            "{count} x {bytes} B durable writes: p10 {:.2} ms, p50 {:.2} ms, p90 {:.2} ms",
            ms(0.1),
            ms(0.5),
            ms(0.9)
        );
        anyhow::Ok(())
    })
}
