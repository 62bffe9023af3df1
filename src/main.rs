//! The `pond` binary: one subcommand per role (`meta`, `storage`, `mount`), the local cluster
//! (`up`, `down`), and the tools (`status`, `admin`, file commands).

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "pond",
    version,
    about = "pond: a distributed filesystem for AI data teams"
)]
struct Cli {
    /// Cluster file written by `pond up` (default: ./.pond/cluster.toml when it exists).
    #[arg(long, global = true, env = "POND_CLUSTER")]
    cluster: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a metadata replica (Raft member + cluster manager) from a TOML config.
    Meta {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a storage server from a TOML config.
    Storage {
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a local cluster on 127.0.0.1 (every role as a child process).
    Up(cmd::up::UpArgs),
    /// Stop a local cluster started by `pond up --detach`.
    Down {
        #[arg(long, default_value = ".pond")]
        dir: PathBuf,
    },
    /// Show meta members, storage nodes, chains and target states.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Administration of a hand-made deployment.
    #[command(subcommand)]
    Admin(cmd::admin::AdminCmd),
    /// Benchmarks with same-run baselines: `pond bench meta|all [--quick]`.
    Bench(cmd::bench::BenchArgs),
    /// Chaos run: real processes, seeded faults, consistency checks (`--quick` for CI).
    Chaos(cmd::chaos::ChaosArgs),
    /// File tools on the client library (no mount needed).
    #[command(flatten)]
    Fs(cmd::fs::FsCmd),
    /// Mount the cluster through FUSE.
    Mount(cmd::mount::MountArgs),
    /// Unmount a FUSE mount of pond.
    Unmount { mountpoint: PathBuf },
    /// The main job: start (or reuse) the local cluster, write and read a sample dataset
    /// through the client library and a FUSE mount, and report.
    Demo(cmd::demo::DemoArgs),
    /// SQL over Parquet files in pond, run near the data by the storage nodes' DuckDB.
    Sql(cmd::sql::SqlArgs),
    /// Training datasets: pack files into shards + index, read shuffled epochs.
    #[command(subcommand)]
    Dataset(cmd::dataset::DatasetCmd),
    /// Internal: the supervisor process of `pond up --detach`.
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cmd::init_tracing();
    match cli.command {
        Command::Meta { config } => cmd::roles::run_meta(&config),
        Command::Storage { config } => cmd::roles::run_storage(&config),
        Command::Up(args) => cmd::up::up(args),
        Command::Supervise { dir } => cmd::up::supervise(&dir),
        Command::Down { dir } => cmd::up::down(&dir),
        Command::Status { json } => cmd::status::status(cli.cluster.as_deref(), json),
        Command::Bench(b) => cmd::bench::bench(cli.cluster.as_deref(), b),
        Command::Chaos(c) => cmd::chaos::chaos(c),
        Command::Fs(f) => cmd::fs::run(cli.cluster.as_deref(), f),
        Command::Mount(m) => cmd::mount::mount(cli.cluster.as_deref(), m),
        Command::Unmount { mountpoint } => cmd::mount::unmount(&mountpoint),
        Command::Demo(d) => cmd::demo::demo(d),
        Command::Sql(a) => cmd::sql::run(cli.cluster.as_deref(), a),
        Command::Dataset(d) => cmd::dataset::run(cli.cluster.as_deref(), d),
        Command::Admin(a) => cmd::admin::admin(cli.cluster.as_deref(), a),
    }
}
