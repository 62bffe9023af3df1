//! `pond chaos`: a real cluster (separate `pond` processes), concurrent clients, a seeded
//! fault schedule, and checks afterwards — linearizability of every register history,
//! byte-exact content of every acknowledged file operation, namespace consistency, no orphan
//! chunks after garbage collection, and every chain back to all-serving. See docs/chaos.md.

pub mod checker;
pub mod faults;
pub mod netns;
pub mod verify;
pub mod workload;

use anyhow::Result;
use pond_client::client::{Client, OpenOptions};
use pond_proto::layout::DirLayout;
use pond_tests::{Cluster, Opts};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workload::{Clock, Shared};

#[derive(Clone, Debug)]
pub struct ChaosOpts {
    /// The `pond` binary to start the cluster with.
    pub bin: PathBuf,
    pub seed: u64,
    /// How long clients run while faults are injected.
    pub duration: Duration,
    pub quick: bool,
    /// Parent of the cluster directory (a fresh `pond-it-*` directory inside it).
    pub dir: PathBuf,
    /// The test-only storage bug the processes were started with (for the replay line).
    pub inject_bug: Option<String>,
    pub meta: u32,
    pub storage: u32,
    pub register_workers: u32,
    pub register_files: u32,
    pub log_workers: u32,
    /// Every meta and storage process in its own network namespace, and network faults in
    /// the schedule (`--netns`; needs root, iproute2 and nftables).
    pub netns: bool,
}

/// Why a run could not be carried out (findings are in [`RunReport`], not here).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("the cluster did not start: {0}")]
    Cluster(String),
    #[error("chaos harness: {0}")]
    Harness(String),
}

impl ChaosOpts {
    pub fn new(bin: PathBuf, seed: u64, quick: bool) -> ChaosOpts {
        ChaosOpts {
            bin,
            seed,
            duration: Duration::from_secs(if quick { 60 } else { 1200 }),
            quick,
            dir: std::env::temp_dir(),
            inject_bug: None,
            meta: 3,
            storage: 4,
            register_workers: if quick { 3 } else { 4 },
            register_files: 4,
            log_workers: 2,
            netns: false,
        }
    }

    /// The command that replays this run (same seed, same schedule).
    pub fn replay_command(&self) -> String {
        let mut s = String::new();
        if let Some(b) = &self.inject_bug {
            s.push_str(&format!("pond chaos --inject-bug {b} "));
        } else {
            s.push_str("pond chaos ");
        }
        if self.quick {
            s.push_str("--quick ");
        }
        if self.netns {
            s.push_str("--netns ");
        }
        s.push_str(&format!(
            "--seed {} --duration {}",
            self.seed,
            self.duration.as_secs()
        ));
        s
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct RunReport {
    pub faults: Vec<faults::Injected>,
    pub writes_acked: u64,
    pub writes_unknown: u64,
    pub reads: u64,
    pub reads_failed: u64,
    pub log_ops_acked: u64,
    pub log_ops_failed: u64,
    pub log_checks: u64,
    pub registers: usize,
    pub history_ops: usize,
    pub violations: Vec<String>,
    /// Checks that could not be completed (not violations, but the run is not a pass).
    pub incomplete: Vec<String>,
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.incomplete.is_empty()
    }

    pub fn print(&self, opts: &ChaosOpts) {
        println!("chaos: ---- summary (seed {}) ----", opts.seed);
        let mut kinds: std::collections::BTreeMap<&str, u32> = Default::default();
        for f in &self.faults {
            *kinds.entry(f.kind).or_default() += 1;
        }
        println!("chaos: faults injected: {} {:?}", self.faults.len(), kinds);
        println!(
            "chaos: register ops: {} writes acked, {} writes with unknown outcome, {} reads ({} failed reads dropped); {} registers, {} ops checked for linearizability",
            self.writes_acked,
            self.writes_unknown,
            self.reads,
            self.reads_failed,
            self.registers,
            self.history_ops
        );
        println!(
            "chaos: file/namespace ops: {} acked, {} failed (files tainted), {} byte-exact re-reads",
            self.log_ops_acked, self.log_ops_failed, self.log_checks
        );
        for n in &self.notes {
            println!("chaos: note: {n}");
        }
        for i in &self.incomplete {
            println!("chaos: INCOMPLETE: {i}");
        }
        for v in &self.violations {
            println!("chaos: VIOLATION: {v}");
        }
        println!("chaos: elapsed {:.1}s", self.elapsed.as_secs_f64());
        if self.passed() {
            println!("chaos: PASS");
        } else {
            println!(
                "chaos: FAIL (seed {}); replay with: {}",
                opts.seed,
                opts.replay_command()
            );
        }
    }
}

async fn setup_dirs(client: &Client, opts: &ChaosOpts) -> Result<()> {
    client.mkdir_all("/chaos", 0o755).await?;
    let root = client.stat("/chaos").await?;
    let base = client.get_dir_layout(root.inode).await?;
    let layout = DirLayout {
        chunk_bytes: workload::CHUNK_BYTES,
        ..base
    };
    for d in [workload::REG_DIR, workload::LOG_DIR, "/chaos/fill"] {
        let a = client.mkdir_all(d, 0o755).await?;
        if d != "/chaos/fill" {
            client.set_dir_layout(a.inode, layout.clone()).await?;
        }
    }
    for w in 0..opts.log_workers {
        client
            .mkdir_all(&format!("{}/w{w}", workload::LOG_DIR), 0o755)
            .await?;
    }
    for f in 0..opts.register_files {
        let h = client
            .open(
                &workload::reg_file(f),
                OpenOptions {
                    mode: pond_client::file::OpenMode::WRITE,
                    create: true,
                    perm: 0o644,
                    ..Default::default()
                },
            )
            .await?;
        h.truncate(workload::SLOTS_PER_FILE * workload::SLOT_BYTES as u64)
            .await?;
        h.close().await?;
    }
    Ok(())
}

/// Runs a whole chaos session. `Err` means the harness itself failed (the cluster did not
/// start, ...); findings are in the report.
pub fn run(opts: &ChaosOpts) -> Result<RunReport, ChaosError> {
    let started = Instant::now();
    println!(
        "chaos: seed {}, {} s of faults, {} meta + {} storage nodes (3 targets each, chains of 3){}{}",
        opts.seed,
        opts.duration.as_secs(),
        opts.meta,
        opts.storage,
        if opts.netns {
            ", each in its own network namespace"
        } else {
            ""
        },
        opts.inject_bug
            .as_ref()
            .map(|b| format!(", storage started with POND_TEST_BUG={b}"))
            .unwrap_or_default()
    );
    let bin = opts
        .bin
        .to_str()
        .ok_or_else(|| ChaosError::Harness("binary path is not UTF-8".into()))?;
    let cluster_dir: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    // Declared before the cluster, so dropped after it: the processes stop first, then the
    // namespaces go.
    let net = if opts.netns {
        Some(setup_netns(opts, cluster_dir.clone())?)
    } else {
        None
    };
    let topo = Opts {
        meta: opts.meta,
        storage: opts.storage,
        targets_per_node: 3,
        replicas: 3,
    };
    let mut cluster = match &net {
        None => Cluster::start_in(bin, topo, &opts.dir),
        Some(n) => Cluster::start_prepared(bin, &opts.dir, |dir| {
            *cluster_dir.lock().expect("cluster dir lock") = Some(dir.to_path_buf());
            netns::write_cluster_dir(
                dir,
                n,
                topo.meta,
                topo.storage,
                topo.targets_per_node,
                topo.replicas,
            )?;
            Ok(())
        }),
    }
    .map_err(|e| ChaosError::Cluster(format!("{e:#}")))?;
    println!(
        "chaos: cluster up in {:.1}s at {}",
        started.elapsed().as_secs_f64(),
        cluster.path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| ChaosError::Harness(format!("tokio runtime: {e}")))?;
    let result = rt.block_on(run_async(opts, &mut cluster, net.as_ref(), started));
    if result.as_ref().map(|r| !r.passed()).unwrap_or(true) {
        eprintln!("chaos: last log lines:\n{}", cluster.tail_logs());
    }
    drop(rt);
    drop(cluster);
    drop(net);
    result.map_err(|e| ChaosError::Harness(format!("{e:#}")))
}

/// Cleans up stale namespaces, installs the SIGINT/SIGTERM handler, creates this run's
/// namespaces and moves the calling thread into the clients' one.
fn setup_netns(
    opts: &ChaosOpts,
    cluster_dir: Arc<Mutex<Option<PathBuf>>>,
) -> Result<netns::Net, ChaosError> {
    let tools = netns::check_tools()?;
    let stale = netns::cleanup_stale(&tools);
    if !stale.is_empty() {
        println!("chaos: removed network namespaces of dead runs: {stale:?}");
    }
    spawn_interrupt_handler(
        tools.clone(),
        netns::run_prefix(),
        opts.bin.clone(),
        cluster_dir,
    )?;
    let net = netns::Net::create(tools, opts.meta, opts.storage)?;
    net.enter_client()?;
    println!(
        "chaos: network namespaces {}*: clients in {} (bridge 10.99.0.1/24), one per node",
        net.prefix(),
        net.client_ns(),
    );
    Ok(net)
}

/// On SIGINT/SIGTERM: stop the cluster, remove this run's namespaces (and the cluster
/// directory unless `POND_KEEP_TEST_DIR` is set), exit with status 130.
fn spawn_interrupt_handler(
    tools: netns::Tools,
    prefix: String,
    bin: PathBuf,
    cluster_dir: Arc<Mutex<Option<PathBuf>>>,
) -> Result<(), ChaosError> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("chaos-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let name = rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = tx.send(Err(e.to_string()));
                        return None;
                    }
                };
                let _ = tx.send(Ok(()));
                tokio::select! {
                    _ = int.recv() => Some("SIGINT"),
                    _ = term.recv() => Some("SIGTERM"),
                }
            });
            let Some(name) = name else { return };
            eprintln!("chaos: {name}: stopping the cluster, removing network namespaces {prefix}*");
            let dir = cluster_dir.lock().map(|d| d.clone()).unwrap_or(None);
            if let Some(d) = &dir {
                let _ = std::process::Command::new(&bin)
                    .arg("down")
                    .arg("--dir")
                    .arg(d)
                    .stdout(std::process::Stdio::null())
                    .status();
            }
            for left in netns::cleanup_prefix(&tools, &prefix) {
                eprintln!("chaos: netns cleanup left: {left}");
            }
            if let Some(d) = dir {
                if std::env::var_os("POND_KEEP_TEST_DIR").is_some() {
                    eprintln!("chaos: keeping cluster dir {}", d.display());
                } else {
                    let _ = std::fs::remove_dir_all(&d);
                }
            }
            std::process::exit(130);
        })
        .map_err(|e| ChaosError::Harness(format!("spawn the signal thread: {e}")))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ChaosError::Harness(format!("install signal handlers: {e}"))),
        Err(_) => Err(ChaosError::Harness("the signal thread died".into())),
    }
}

async fn run_async(
    opts: &ChaosOpts,
    cluster: &mut Cluster,
    net: Option<&netns::Net>,
    started: Instant,
) -> Result<RunReport> {
    let cf = cluster.cluster_file()?;
    let admin = Client::connect(&cf).await?;
    setup_dirs(&admin, opts).await?;

    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clock = Clock(Instant::now());
    println!(
        "chaos: [{:7.2}s] clients start; the times in register violations count from here",
        started.elapsed().as_secs_f64()
    );
    let mut tasks = Vec::new();
    for i in 0..opts.register_workers {
        let c = Client::connect(&cf).await?;
        tasks.push(tokio::spawn(workload::register_worker(
            i,
            c,
            opts.register_files,
            opts.seed,
            clock,
            shared.clone(),
            stop.clone(),
        )));
    }
    for i in 0..opts.log_workers {
        let c = Client::connect(&cf).await?;
        let reader = Client::connect(&cf).await?;
        tasks.push(tokio::spawn(workload::log_worker(
            i,
            c,
            reader,
            opts.seed,
            shared.clone(),
            stop.clone(),
        )));
    }

    // Faults, in order, until the duration is used up.
    let schedule = if opts.netns {
        faults::schedule_netns(opts.seed, opts.duration, opts.meta, opts.storage)
    } else {
        faults::schedule(opts.seed, opts.duration, opts.meta, opts.storage)
    };
    let mut report = RunReport::default();
    let fault_client = Client::connect(&cf).await?;
    let mut ex = faults::Executor {
        cluster,
        client: fault_client,
        storage_nodes: opts.storage,
        meta_nodes: opts.meta,
        net,
        t0: started,
        log: Vec::new(),
        capped: Vec::new(),
    };
    let faults_start = Instant::now();
    for s in &schedule {
        if faults_start.elapsed() >= opts.duration {
            break;
        }
        tokio::time::sleep(s.after).await;
        if let Err(e) = ex.apply(&s.fault).await {
            report
                .incomplete
                .push(format!("fault {:?} could not be applied: {e:#}", s.fault));
        }
    }
    let remaining = opts.duration.saturating_sub(faults_start.elapsed());
    tokio::time::sleep(remaining).await;
    report.faults = std::mem::take(&mut ex.log);
    if let Some(net) = net {
        // Every network fault heals itself; this only catches one that failed half-way.
        let undone = tokio::task::block_in_place(|| net.heal_all());
        if !undone.is_empty() {
            report.notes.push(format!(
                "network faults left in place and undone: {undone:?}"
            ));
        }
    }
    if !ex.capped.is_empty() {
        report.notes.push(format!(
            "storage nodes {:?} keep their capacity cap for the rest of the run",
            ex.capped
        ));
    }
    let cluster = ex.cluster;

    println!(
        "chaos: [{:7.2}s] faults stopped; waiting for the clients",
        started.elapsed().as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        // Every client call has its own deadline (workload::OP_TIMEOUT); this is a backstop.
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => report
                .incomplete
                .push(format!("a client task panicked: {e}")),
            Err(_) => report
                .incomplete
                .push("a client task did not stop within 120 s".into()),
        }
    }

    // Every chain back to all-serving.
    println!(
        "chaos: [{:7.2}s] waiting for every target to serve",
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = verify::wait_all_serving(&admin, Duration::from_secs(120)).await {
        report.violations.push(format!(
            "chains did not return to all-serving after the faults stopped: {e}"
        ));
    }

    // Final reads, then the checks.
    let fresh = Client::connect(&cf).await?;
    if let Err(e) =
        workload::final_register_reads(&fresh, opts.register_files, clock, &shared).await
    {
        report
            .incomplete
            .push(format!("final register reads failed: {e}"));
    }
    if let Err(e) = workload::final_log_check(&fresh, opts.log_workers, &shared).await {
        report
            .incomplete
            .push(format!("final file check failed: {e}"));
    }
    let history = shared.history.lock().clone();
    println!(
        "chaos: [{:7.2}s] checking {} register ops",
        started.elapsed().as_secs_f64(),
        history.len()
    );
    let lin = tokio::task::block_in_place(|| checker::check(&history));
    report.registers = lin.keys;
    report.history_ops = lin.ops;
    for v in &lin.violations {
        report
            .violations
            .push(format!("linearizability, register {}: {}", v.key, v.detail));
    }
    for u in &lin.unknown {
        report
            .incomplete
            .push(format!("linearizability undecided for register {u}"));
    }
    report
        .violations
        .extend(shared.violations.lock().iter().cloned());

    match verify::namespace(&fresh).await {
        Ok(found) => report.violations.extend(found),
        Err(e) => report
            .incomplete
            .push(format!("namespace check failed: {e:#}")),
    }
    match verify::orphan_chunks(&fresh, &cf.token, Duration::from_secs(60)).await {
        Ok(found) => report.violations.extend(found),
        Err(e) => report
            .incomplete
            .push(format!("orphan chunk check failed: {e:#}")),
    }
    let _ = cluster;

    let st = &shared.stats;
    report.writes_acked = st.writes_acked.load(Ordering::Relaxed);
    report.writes_unknown = st.writes_unknown.load(Ordering::Relaxed);
    report.reads = st.reads_ok.load(Ordering::Relaxed);
    report.reads_failed = st.reads_failed.load(Ordering::Relaxed);
    report.log_ops_acked = st.log_ops_acked.load(Ordering::Relaxed);
    report.log_ops_failed = st.log_ops_failed.load(Ordering::Relaxed);
    report.log_checks = st.log_checks.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    Ok(report)
}
