//! `pond up`, `pond down` and the supervisor process: a whole cluster on 127.0.0.1.
//!
//! Layout of the cluster directory (default `./.pond`):
//! - `cluster.toml`            addresses, token and pids; what every other command reads
//! - `up.toml`                 the topology chosen at first start (reused on restart)
//! - `meta-<id>/meta.toml`     config of meta replica `<id>`; its Raft store in `meta-<id>/data`
//! - `storage-<id>/storage.toml` config of storage node `<id>`; targets in `storage-<id>/target-<t>`
//! - `logs/<role>-<id>.log`    stderr of each child; `logs/supervisor.log`
//! - `supervisor.pid`          present while a supervisor runs; `ready` once it is healthy
//!
//! Starting again on an existing directory reuses every config, port and byte.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use pond_client::config::{ClusterFile, MetaEndpoint, StorageEndpoint};
use pond_client::meta_client::MetaClient;
use pond_client::net::DataClient;
use pond_proto::cluster::{PublicState, RoutingInfo};
use pond_proto::data::{ChainRef, DataRequest};
use pond_proto::meta::{ClusterReply, ClusterRequest};
use pond_proto::{ErrorCode, InodeId, RoutingVersion};
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct UpArgs {
    /// Cluster directory; created on first start, reused afterwards.
    #[arg(long, default_value = ".pond")]
    pub dir: PathBuf,
    /// Number of meta replicas (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    pub meta: u32,
    /// Number of storage nodes.
    #[arg(long, default_value_t = 3)]
    pub storage: u32,
    /// Targets (chunk engines) per storage node.
    #[arg(long, default_value_t = 4)]
    pub targets_per_node: u32,
    /// Replicas per chain (capped at the number of storage nodes).
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Return once the cluster is healthy, leaving a supervisor running (stop: `pond down`).
    #[arg(long)]
    pub detach: bool,
    /// How long to wait for the cluster to become healthy.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Capacity of every storage target in bytes (`capacity_bytes` in storage.toml; counted in
    /// 64 KiB blocks). Default: the free space of the filesystem. Used when the cluster
    /// directory is created.
    #[arg(long)]
    pub target_capacity_bytes: Option<u64>,
}

/// The topology fixed at first start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Topology {
    meta: u32,
    storage: u32,
    targets_per_node: u32,
    replicas: u32,
    /// A command every role is started under (for example `ip netns exec <ns>`), `{role}`
    /// standing for the role's name (`meta-1`, `storage-2`). Empty: roles run directly. Only
    /// written by tools that prepare the directory themselves (`pond chaos --netns`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    launch: Vec<String>,
}

/// A port for a role to listen on, chosen now and bound by the role later. Chosen below the
/// kernel's ephemeral range: a port the kernel hands out for `bind(0)` comes from that range
/// and, once released, can be taken as the source port of any outgoing connection before the
/// role binds it (a CI run saw a storage node fail to start with many clusters running in
/// parallel). Below the range only another explicit bind can take it.
fn free_port() -> Result<u16> {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOW: u16 = 10_000;
    if ephemeral_low > LOW + 1_000 {
        let mut rng = rand::rng();
        for _ in 0..256 {
            let p = rng.random_range(LOW..ephemeral_low);
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
                return Ok(p);
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

pub fn meta_config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("meta-{id}")).join("meta.toml")
}

pub fn storage_config_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("storage-{id}")).join("storage.toml")
}

/// Target ids are `node * 1000 + k` so that a target's node is visible in its id.
fn target_id(node: u32, k: u32) -> u64 {
    node as u64 * 1000 + k as u64
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

/// Create the configs of a new cluster directory, or load the existing one.
fn prepare(args: &UpArgs) -> Result<(Topology, ClusterFile)> {
    let dir = &args.dir;
    let cluster_path = dir.join("cluster.toml");
    let topo_path = dir.join("up.toml");
    if cluster_path.exists() {
        let topo: Topology = toml::from_str(
            &std::fs::read_to_string(&topo_path)
                .with_context(|| format!("read {}", topo_path.display()))?,
        )
        .with_context(|| format!("parse {}", topo_path.display()))?;
        let cf = ClusterFile::load(&cluster_path)?;
        return Ok((topo, cf));
    }
    if ![1, 3, 5].contains(&args.meta) {
        bail!("--meta must be 1, 3 or 5 (got {})", args.meta);
    }
    if args.targets_per_node == 0 || args.replicas == 0 {
        bail!("--targets-per-node and --replicas must be at least 1");
    }
    let topo = Topology {
        meta: args.meta,
        storage: args.storage,
        targets_per_node: args.targets_per_node,
        replicas: args.replicas.min(args.storage),
        launch: Vec::new(),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let token = random_token();
    let mut meta = Vec::new();
    for id in 1..=topo.meta as u64 {
        meta.push(MetaEndpoint {
            id,
            addr: format!("127.0.0.1:{}", free_port()?),
            pid: None,
        });
    }
    let peers: Vec<pond_meta::MetaPeer> = meta
        .iter()
        .map(|m| pond_meta::MetaPeer {
            id: m.id,
            addr: m.addr.clone(),
        })
        .collect();
    for m in &meta {
        let cfg = pond_meta::MetaConfig {
            id: m.id,
            listen: m.addr.clone(),
            data_dir: dir.join(format!("meta-{}", m.id)).join("data"),
            token: token.clone(),
            peers: peers.clone(),
            ..default_meta_config()
        };
        write_file(
            &meta_config_path(&dir, m.id),
            &toml::to_string_pretty(&cfg)?,
        )?;
    }
    let mut storage = Vec::new();
    for id in 1..=topo.storage {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let node_dir = dir.join(format!("storage-{id}"));
        let targets = (1..=topo.targets_per_node)
            .map(|k| pond_storage::TargetConfig {
                id: target_id(id, k),
                path: node_dir.join(format!("target-{}", target_id(id, k))),
                capacity_bytes: args.target_capacity_bytes,
            })
            .collect();
        let cfg = pond_storage::StorageConfig {
            node_id: id,
            listen: addr.clone(),
            meta: meta.iter().map(|m| m.addr.clone()).collect(),
            token: token.clone(),
            targets,
            ..default_storage_config()
        };
        write_file(
            &storage_config_path(&dir, id),
            &toml::to_string_pretty(&cfg)?,
        )?;
        storage.push(StorageEndpoint {
            id,
            addr,
            pid: None,
        });
    }
    let cf = ClusterFile {
        token,
        meta,
        storage,
    };
    write_file(&topo_path, &toml::to_string_pretty(&topo)?)?;
    write_file(&cluster_path, &cf.to_toml())?;
    Ok((topo, cf))
}

fn default_meta_config() -> pond_meta::MetaConfig {
    toml::from_str("id = 0\nlisten = \"\"\ndata_dir = \"\"\ntoken = \"\"\npeers = []\n")
        .expect("meta config defaults")
}

fn default_storage_config() -> pond_storage::StorageConfig {
    toml::from_str("node_id = 0\nlisten = \"\"\nmeta = []\ntoken = \"\"\ntargets = []\n")
        .expect("storage config defaults")
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists; no memory is touched.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn up(args: UpArgs) -> Result<()> {
    let (topo, cf) = prepare(&args)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    if let Some(pid) = read_pid(&dir.join("supervisor.pid"))
        && pid_alive(pid)
    {
        println!(
            "pond: cluster in {} is already running (supervisor pid {pid})",
            dir.display()
        );
        return Ok(());
    }
    let _ = std::fs::remove_file(dir.join("ready"));
    println!(
        "pond: starting {} meta + {} storage ({} targets each, chains of {}) in {}",
        topo.meta,
        topo.storage,
        topo.targets_per_node,
        topo.replicas,
        dir.display()
    );
    if !args.detach {
        return supervise_inner(&dir, Some(Duration::from_secs(args.timeout_secs)));
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let log = std::fs::File::create(dir.join("logs/supervisor.log"))?;
    let exe = std::env::current_exe().context("locate the pond binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("supervise").arg("--dir").arg(&dir);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the supervisor from our session so
    // that it outlives this command and a Ctrl-C in this terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("spawn the supervisor")?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        if dir.join("ready").exists() {
            break;
        }
        if let Some(st) = child.try_wait()? {
            bail!(
                "the supervisor exited ({st}) before the cluster was healthy; see {}",
                dir.join("logs/supervisor.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "cluster not healthy after {} s; see {}",
                args.timeout_secs,
                dir.join("logs").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "pond: cluster is up ({} meta, {} storage); cluster file {}",
        cf.meta.len(),
        cf.storage.len(),
        dir.join("cluster.toml").display()
    );
    println!(
        "pond: stop it with `pond down --dir {}`",
        args.dir.display()
    );
    Ok(())
}

pub fn supervise(dir: &Path) -> Result<()> {
    supervise_inner(dir, Some(Duration::from_secs(300)))
}

struct Role {
    name: String,
    child: Child,
}

fn spawn_role(dir: &Path, launch: &[String], role: &str, id: u64, config: &Path) -> Result<Role> {
    let name = format!("{role}-{id}");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{name}.log")))
        .with_context(|| format!("open log of {name}"))?;
    let exe = std::env::current_exe().context("locate the pond binary")?;
    let mut cmd = match launch.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args.iter().map(|a| a.replace("{role}", &name)));
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.arg(role).arg("--config").arg(config);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe. A child gets SIGTERM if the supervisor dies, so a
    // crashed supervisor leaves no orphaned roles behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
    Ok(Role { name, child })
}

fn supervise_inner(dir: &Path, healthy_within: Option<Duration>) -> Result<()> {
    let cluster_path = dir.join("cluster.toml");
    let mut cf = ClusterFile::load(&cluster_path)?;
    let topo: Topology = toml::from_str(&std::fs::read_to_string(dir.join("up.toml"))?)?;
    write_file(&dir.join("supervisor.pid"), &std::process::id().to_string())?;

    // Roles are spawned from the main thread: PDEATHSIG fires when the spawning thread exits.
    let mut roles = Vec::new();
    for m in cf.meta.iter_mut() {
        let r = spawn_role(
            dir,
            &topo.launch,
            "meta",
            m.id,
            &meta_config_path(dir, m.id),
        )?;
        m.pid = Some(r.child.id());
        roles.push(r);
    }
    for s in cf.storage.iter_mut() {
        let r = spawn_role(
            dir,
            &topo.launch,
            "storage",
            s.id as u64,
            &storage_config_path(dir, s.id),
        )?;
        s.pid = Some(r.child.id());
        roles.push(r);
    }
    write_file(&cluster_path, &cf.to_toml())?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let client = MetaClient::connect(cf.meta_addrs(), cf.token.clone())
            .map_err(|e| anyhow::anyhow!("connect to meta: {e}"))?;
        let deadline = healthy_within.map(|d| Instant::now() + d);
        wait_healthy(
            &client,
            &cf.token,
            &topo,
            cf.storage.len(),
            deadline,
            &mut roles,
        )
        .await?;
        write_file(&dir.join("ready"), "")?;
        println!("pond: cluster healthy; Ctrl-C (or `pond down`) stops it");
        watch_until_signal(&mut roles).await;
        anyhow::Ok(())
    });
    stop_roles(&mut roles);
    for m in cf.meta.iter_mut() {
        m.pid = None;
    }
    for s in cf.storage.iter_mut() {
        s.pid = None;
    }
    let _ = write_file(&cluster_path, &cf.to_toml());
    let _ = std::fs::remove_file(dir.join("ready"));
    let _ = std::fs::remove_file(dir.join("supervisor.pid"));
    result
}

fn check_roles(roles: &mut [Role]) -> Result<()> {
    for r in roles.iter_mut() {
        if let Some(st) = r.child.try_wait()? {
            bail!("{} exited during start-up ({st}); see its log", r.name);
        }
    }
    Ok(())
}

/// Healthy: a meta leader, every storage node registered and alive, chains bootstrapped,
/// every target serving.
async fn wait_healthy(
    client: &MetaClient,
    token: &str,
    topo: &Topology,
    storage_nodes: usize,
    deadline: Option<Instant>,
    roles: &mut [Role],
) -> Result<()> {
    let data = DataClient::tcp(token.to_string(), client.client_id())
        .with_deadline(Duration::from_secs(2));
    let mut last_msg = String::new();
    loop {
        check_roles(roles)?;
        if let Some(d) = deadline
            && Instant::now() > d
        {
            bail!("cluster not healthy in time: {last_msg}");
        }
        match health_step(client, &data, topo, storage_nodes).await {
            Ok(None) => return Ok(()),
            Ok(Some(msg)) | Err(msg) => {
                if msg != last_msg {
                    println!("pond: waiting: {msg}");
                    last_msg = msg;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One health check: `Ok(None)` when healthy, `Ok(Some(why))`/`Err(why)` otherwise.
async fn health_step(
    client: &MetaClient,
    data: &DataClient,
    topo: &Topology,
    storage_nodes: usize,
) -> Result<Option<String>, String> {
    let st = client
        .cluster(ClusterRequest::MetaStatus)
        .await
        .map_err(|e| e.to_string())?;
    if let ClusterReply::MetaStatus { leader: None, .. } = st {
        return Ok(Some("no meta leader yet".into()));
    }
    if storage_nodes == 0 {
        // A metadata-only cluster (tests, or storage to be added by hand later).
        return Ok(None);
    }
    let routing = match client
        .cluster(ClusterRequest::GetRouting {
            have: RoutingVersion(0),
        })
        .await
        .map_err(|e| e.to_string())?
    {
        ClusterReply::Routing(Some(r)) => r,
        _ => return Ok(Some("no routing table yet".into())),
    };
    let alive = routing.nodes.values().filter(|n| n.alive).count();
    if alive < storage_nodes {
        return Ok(Some(format!(
            "{alive}/{storage_nodes} storage nodes registered"
        )));
    }
    if routing.chains.is_empty() {
        match client
            .cluster(ClusterRequest::BootstrapChains {
                replicas: topo.replicas,
            })
            .await
        {
            Ok(_) => return Ok(Some("chains bootstrapped".into())),
            Err(e) if e.code == ErrorCode::Exists => {}
            Err(e) => return Err(format!("bootstrap chains: {e}")),
        }
    }
    let not_serving = routing
        .targets
        .values()
        .filter(|t| t.public_state != PublicState::Serving)
        .count();
    if not_serving > 0 {
        return Ok(Some(format!(
            "{not_serving}/{} targets not serving yet",
            routing.targets.len()
        )));
    }
    // Meta's table says serving; each node must also have installed that table and hold an
    // answered heartbeat (its lease), or its first writes would wait in retry backoff.
    if let Some(msg) = storage_not_ready(data, &routing).await {
        return Ok(Some(msg));
    }
    Ok(None)
}

/// Asks every target of every chain, at the chain's current version, for the length of a file
/// that has no chunks: a target answers only when its node serves it under that table (no
/// fence, same chain version, serving and up to date). `None` when all of them answered.
async fn storage_not_ready(data: &DataClient, routing: &RoutingInfo) -> Option<String> {
    for chain in routing.chains.values() {
        for t in &chain.targets {
            let Some(ti) = routing.targets.get(t) else {
                return Some(format!("target {} of chain {} unknown", t.0, chain.id.0));
            };
            let Some(addr) = routing.node_addr(ti.node) else {
                return Some(format!("no address for storage node {}", ti.node.0));
            };
            let req = DataRequest::QueryLength {
                at: ChainRef {
                    chain: chain.id,
                    chain_version: chain.version,
                    target: *t,
                },
                inode: InodeId(0),
            };
            if let Err(e) = data.call(addr, req, Bytes::new()).await {
                return Some(format!("target {} not serving on its node yet: {e}", t.0));
            }
        }
    }
    None
}

async fn watch_until_signal(roles: &mut [Role]) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported = vec![false; roles.len()];
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = tick.tick() => {
                for (i, r) in roles.iter_mut().enumerate() {
                    if !reported[i]
                        && let Ok(Some(st)) = r.child.try_wait()
                    {
                        tracing::warn!(role = %r.name, status = %st, "role exited");
                        reported[i] = true;
                    }
                }
            }
        }
    }
}

fn stop_roles(roles: &mut [Role]) {
    // Storage first, so that nodes do not spin on an absent meta service.
    for r in roles.iter().rev() {
        // SAFETY: sending SIGTERM to our own child process.
        unsafe {
            libc::kill(r.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for r in roles.iter_mut() {
        loop {
            match r.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    tracing::warn!(role = %r.name, "did not stop in 15 s; killing");
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    println!("pond: cluster stopped");
}

pub fn down(dir: &Path) -> Result<()> {
    let pid_path = dir.join("supervisor.pid");
    let Some(pid) = read_pid(&pid_path).filter(|p| pid_alive(*p)) else {
        // No supervisor: stop any role processes the cluster file still lists.
        let cf = ClusterFile::load(&dir.join("cluster.toml"))?;
        let pids: Vec<u32> = cf
            .meta
            .iter()
            .filter_map(|m| m.pid)
            .chain(cf.storage.iter().filter_map(|s| s.pid))
            .filter(|p| pid_alive(*p))
            .collect();
        if pids.is_empty() {
            println!("pond: no cluster running in {}", dir.display());
            return Ok(());
        }
        for p in pids {
            // SAFETY: signalling a process id recorded by `pond up`.
            unsafe {
                libc::kill(p as libc::pid_t, libc::SIGTERM);
            }
        }
        println!("pond: sent SIGTERM to leftover roles");
        return Ok(());
    };
    // SAFETY: signalling the supervisor recorded in supervisor.pid.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_alive(pid) {
        if Instant::now() > deadline {
            bail!("supervisor {pid} did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("pond: cluster in {} stopped", dir.display());
    Ok(())
}
