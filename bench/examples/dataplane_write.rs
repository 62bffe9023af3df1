//! Sequential 1 MiB writes through an in-process chain of three in-memory targets, repeated,
//! for profiling the data plane's write path: `dataplane_write [MIB] [LANES] [ROUNDS]`.

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let mib = args.first().copied().unwrap_or(256);
    let lanes = args.get(1).copied().unwrap_or(1);
    let rounds = args.get(2).copied().unwrap_or(3);
    let rt = tokio::runtime::Runtime::new()?;
    for _ in 0..rounds {
        let mut s = rt.block_on(pond_bench::dataplane::write_probe(mib, lanes))?;
        println!(
            "{mib} MiB, {lanes} in flight: {:.1} MiB/s, p50 {:.0} us, p99 {:.0} us",
            s.mib_per_sec(),
            s.pct_us(50.0),
            s.pct_us(99.0)
        );
    }
    Ok(())
}
