//! `pond chaos`: start a cluster of real processes, run concurrent clients under a seeded
//! fault schedule, then check linearizability, acknowledged bytes, the namespace, garbage
//! collection and chain health (the `pond-chaos` crate; docs/chaos.md).

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    /// The CI mode: 60 s of faults, a smaller workload; finishes within a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Seed of the fault schedule and of the clients' choices (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds of faults (default 60 with --quick, 1200 otherwise).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Parent directory of the cluster directory (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Start storage processes with a deliberate protocol bug (`POND_TEST_BUG`) to show the
    /// checker catches it. Only `early-ack` exists.
    #[arg(long)]
    pub inject_bug: Option<String>,
    /// Every meta and storage process in its own network namespace (a bridge between them,
    /// clients in another namespace), and network faults in the schedule: isolated nodes,
    /// meta minority/majority splits, cut chain links, storage cut from meta, packet loss,
    /// rate-limited links. Needs root, iproute2 (`ip`, `tc`) and nftables (`nft`).
    #[arg(long)]
    pub netns: bool,
}

pub fn chaos(args: ChaosArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random::<u64>);
    let bin = std::env::current_exe().context("locate the pond binary")?;
    let mut opts = pond_chaos::ChaosOpts::new(bin, seed, args.quick);
    if let Some(d) = args.duration {
        opts.duration = Duration::from_secs(d);
    }
    if let Some(d) = args.dir {
        opts.dir = d;
    }
    opts.netns = args.netns;
    if let Some(bug) = args.inject_bug {
        if bug != "early-ack" {
            bail!("unknown --inject-bug {bug:?} (known: early-ack)");
        }
        // SAFETY: called before this process starts any thread (the runtime is built later,
        // inside pond_chaos::run); the variable is inherited by the `pond up` supervisor and so
        // by every storage process, which is where it takes effect.
        unsafe { std::env::set_var("POND_TEST_BUG", &bug) };
        opts.inject_bug = Some(bug);
    }
    let report = pond_chaos::run(&opts)?;
    report.print(&opts);
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}
