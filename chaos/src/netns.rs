//! `pond chaos --netns`: every meta and storage process in its own network namespace, so
//! that links can be cut, slowed and made lossy.
//!
//! Layout (all names carry the run's prefix `pch<pid>-`, so stale ones are recognisable):
//! - `pch<pid>-client`: the clients' namespace. It holds the bridge `br0` (10.99.0.1/24) and
//!   one end of every node's veth pair (`v-meta-1`, `v-storage-2`, ...). The chaos process
//!   moves its own main thread into it (`setns`), so every thread it creates afterwards, and
//!   every process it spawns (the `pond up` supervisor), talks to the nodes through the bridge.
//! - `pch<pid>-meta-<i>` (10.99.0.(10+i)) and `pch<pid>-storage-<i>` (10.99.0.(100+i)): one
//!   process each, started as `ip netns exec <ns> pond meta|storage --config ...`, with `lo`
//!   and `eth0` (the other end of its veth pair).
//!
//! Nothing is created in the root namespace and no address outside these namespaces is used:
//! veth pairs are created from inside the client namespace (`ip -n`), the 10.99.0.0/24 subnet
//! exists only on the bridge and the node ends.
//!
//! Faults: a bridge port set down (the node loses carrier: isolated from everyone), nftables
//! drop rules (table `inet pondchaos` in a node's namespace: a meta minority/majority split, a
//! chain link, a storage node cut from meta only, random packet loss with `numgen`), and a
//! token-bucket rate limit (`tc qdisc tbf`) on both ends of a node's link. The machine's kernel
//! has no `sch_netem`, so delay comes from the rate limit's queue, not from netem.
//!
//! Cleanup: [`Net`]'s `Drop` kills every process still inside its namespaces (by pid, found
//! through `/proc/<pid>/ns/net`) and deletes the namespaces, which removes the veths and the
//! bridge with them; `pond chaos` also runs [`cleanup_prefix`] from its SIGINT/SIGTERM handler,
//! and [`cleanup_stale`] at start removes namespaces left by runs whose process is gone.

use pond_tests::Role;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every namespace of a run is named `pch<pid>-...`.
pub const NS_PREFIX: &str = "pch";
const BRIDGE: &str = "br0";
const TABLE: &str = "pondchaos";
const META_PORT: u16 = 9400;
const STORAGE_PORT: u16 = 9500;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "pond chaos --netns needs root (network namespaces, veth pairs, nftables); running as uid {0}"
    )]
    NotRoot(u32),
    #[error(
        "pond chaos --netns needs `{tool}` (Debian package `{package}`), not found in PATH, /usr/sbin or /sbin"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Io { what, source }
}

/// The external programs netns mode runs, by absolute path.
#[derive(Clone, Debug)]
pub struct Tools {
    pub ip: PathBuf,
    pub tc: PathBuf,
    pub nft: PathBuf,
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Root, `ip` and `tc` (iproute2) and `nft` (nftables), or why not.
pub fn check_tools() -> Result<Tools, NetnsError> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(NetnsError::NotRoot(uid));
    }
    let tool = |tool: &'static str, package: &'static str| {
        find_tool(tool).ok_or(NetnsError::MissingTool { tool, package })
    };
    Ok(Tools {
        ip: tool("ip", "iproute2")?,
        tc: tool("tc", "iproute2")?,
        nft: tool("nft", "nftables")?,
    })
}

fn run(prog: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, NetnsError> {
    use std::io::Write;
    let cmd = format!("{} {}", prog.display(), args.join(" "));
    let mut c = Command::new(prog);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(io(format!("run {cmd}")))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(text.as_bytes())
            .map_err(io(format!("write stdin of {cmd}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io(format!("wait for {cmd}")))?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

pub fn role_name(role: Role) -> String {
    match role {
        Role::Meta(i) => format!("meta-{i}"),
        Role::Storage(i) => format!("storage-{i}"),
    }
}

/// The address of a role's `eth0`.
pub fn addr(role: Role) -> Ipv4Addr {
    match role {
        Role::Meta(i) => Ipv4Addr::new(10, 99, 0, 10 + i as u8),
        Role::Storage(i) => Ipv4Addr::new(10, 99, 0, 100 + i as u8),
    }
}

/// `host:port` a role listens on.
pub fn listen(role: Role) -> String {
    match role {
        Role::Meta(_) => format!("{}:{META_PORT}", addr(role)),
        Role::Storage(_) => format!("{}:{STORAGE_PORT}", addr(role)),
    }
}

/// The namespace prefix of this process's run: `pch<pid>-`.
pub fn run_prefix() -> String {
    format!("{NS_PREFIX}{}-", std::process::id())
}

fn client_addr() -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 1)
}

fn port_name(role: Role) -> String {
    format!("v-{}", role_name(role))
}

/// The namespaces, bridge and veth pairs of one run. Dropping it removes them all.
pub struct Net {
    tools: Tools,
    prefix: String,
    roles: Vec<Role>,
}

impl Net {
    /// Creates the client namespace with the bridge and one namespace per role. On error,
    /// whatever was created is removed again (by `Drop`).
    pub fn create(tools: Tools, meta: u32, storage: u32) -> Result<Net, NetnsError> {
        if meta > 5 || storage > 150 {
            return Err(NetnsError::Command {
                cmd: "pond chaos --netns".into(),
                status: "refused".into(),
                stderr: format!(
                    "at most 5 meta and 150 storage nodes fit the address plan ({meta}, {storage})"
                ),
            });
        }
        let roles: Vec<Role> = (1..=meta as u64)
            .map(Role::Meta)
            .chain((1..=storage).map(Role::Storage))
            .collect();
        let net = Net {
            tools,
            prefix: run_prefix(),
            roles,
        };
        let c = net.client_ns();
        net.ip(&["netns", "add", &c])?;
        net.ip(&["-n", &c, "link", "set", "lo", "up"])?;
        net.ip(&["-n", &c, "link", "add", BRIDGE, "type", "bridge"])?;
        let bridge_addr = format!("{}/24", client_addr());
        net.ip(&["-n", &c, "addr", "add", &bridge_addr, "dev", BRIDGE])?;
        net.ip(&["-n", &c, "link", "set", BRIDGE, "up"])?;
        for &role in &net.roles {
            let ns = net.ns(role);
            let port = port_name(role);
            net.ip(&["netns", "add", &ns])?;
            net.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            net.ip(&[
                "-n", &c, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            net.ip(&["-n", &c, "link", "set", &port, "master", BRIDGE, "up"])?;
            let a = format!("{}/24", addr(role));
            net.ip(&["-n", &ns, "addr", "add", &a, "dev", "eth0"])?;
            net.ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    pub fn ns(&self, role: Role) -> String {
        format!("{}{}", self.prefix, role_name(role))
    }

    pub fn client_ns(&self) -> String {
        format!("{}client", self.prefix)
    }

    /// The launch command of `up.toml`: `ip netns exec <prefix>{role}`.
    pub fn launch(&self) -> Vec<String> {
        vec![
            self.tools.ip.display().to_string(),
            "netns".into(),
            "exec".into(),
            format!("{}{{role}}", self.prefix),
        ]
    }

    fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        run(&self.tools.ip, args, None)
    }

    /// Runs `prog args` inside namespace `ns`.
    fn exec_in(
        &self,
        ns: &str,
        prog: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, NetnsError> {
        let prog = prog.display().to_string();
        let mut full = vec!["netns", "exec", ns, prog.as_str()];
        full.extend_from_slice(args);
        run(&self.tools.ip, &full, stdin)
    }

    /// Moves the calling thread into the client namespace. Threads it creates afterwards, and
    /// processes it spawns, start there too.
    pub fn enter_client(&self) -> Result<(), NetnsError> {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.client_ns());
        let f = std::fs::File::open(&path).map_err(io(format!("open {path}")))?;
        // SAFETY: setns on a valid namespace fd, for the calling thread only.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if r != 0 {
            return Err(NetnsError::Io {
                what: format!("setns({path})"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sets `role`'s bridge port down (the node loses carrier) or up again.
    pub fn set_link(&self, role: Role, up: bool) -> Result<(), NetnsError> {
        let c = self.client_ns();
        let port = port_name(role);
        let state = if up { "up" } else { "down" };
        self.ip(&["-n", &c, "link", "set", &port, state])?;
        Ok(())
    }

    /// Drops every packet between `role` and `peers`, in both directions (nftables rules in
    /// `role`'s namespace). Other traffic flows.
    pub fn block(&self, role: Role, peers: &[Ipv4Addr]) -> Result<(), NetnsError> {
        let set = peers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let rules = format!(
            "table inet {TABLE} {{\n\
             chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
             chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
             }}\n"
        );
        self.nft(role, &rules)
    }

    /// Drops `percent` % of the packets in and out of `role`'s `eth0`, at random.
    pub fn lossy(&self, role: Role, percent: u32) -> Result<(), NetnsError> {
        let rules = format!(
            "table inet {TABLE} {{\n\
             chain input {{ type filter hook input priority 0; policy accept; iifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n\
             chain output {{ type filter hook output priority 0; policy accept; oifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n\
             }}\n"
        );
        self.nft(role, &rules)
    }

    fn nft(&self, role: Role, rules: &str) -> Result<(), NetnsError> {
        self.exec_in(&self.ns(role), &self.tools.nft, &["-f", "-"], Some(rules))?;
        Ok(())
    }

    /// Removes `role`'s drop rules.
    pub fn unblock(&self, role: Role) -> Result<(), NetnsError> {
        self.exec_in(
            &self.ns(role),
            &self.tools.nft,
            &["delete", "table", "inet", TABLE],
            None,
        )?;
        Ok(())
    }

    /// Limits both directions of `role`'s link to `kbit` kbit/s with a queue of `latency_ms`
    /// (packets that would wait longer are dropped): a slow, congested link.
    pub fn slow(&self, role: Role, kbit: u32, latency_ms: u32) -> Result<(), NetnsError> {
        let rate = format!("{kbit}kbit");
        let latency = format!("{latency_ms}ms");
        for (ns, dev) in [
            (self.ns(role), "eth0".to_string()),
            (self.client_ns(), port_name(role)),
        ] {
            let a = [
                "qdisc", "replace", "dev", &dev, "root", "tbf", "rate", &rate, "burst", "32kb",
                "latency", &latency,
            ];
            self.exec_in(&ns, &self.tools.tc, &a, None)?;
        }
        Ok(())
    }

    /// Removes the rate limit of [`Net::slow`].
    pub fn unslow(&self, role: Role) -> Result<(), NetnsError> {
        self.exec_in(
            &self.ns(role),
            &self.tools.tc,
            &["qdisc", "del", "dev", "eth0", "root"],
            None,
        )?;
        self.exec_in(
            &self.client_ns(),
            &self.tools.tc,
            &["qdisc", "del", "dev", &port_name(role), "root"],
            None,
        )?;
        Ok(())
    }

    /// Best effort: every link up, no drop rules, no rate limits. Returns what it had to undo
    /// (a fault that failed half-way), for the report.
    pub fn heal_all(&self) -> Vec<String> {
        let mut undone = Vec::new();
        for &role in &self.roles {
            if self.unblock(role).is_ok() {
                undone.push(format!("drop rules of {}", role_name(role)));
            }
            if self.unslow(role).is_ok() {
                undone.push(format!("rate limit of {}", role_name(role)));
            }
            let down = self
                .ip(&["-n", &self.client_ns(), "link", "show", &port_name(role)])
                .map(|s| !s.contains(",UP"))
                .unwrap_or(false);
            if down && self.set_link(role, true).is_ok() {
                undone.push(format!("link of {}", role_name(role)));
            }
        }
        undone
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let left = cleanup_prefix(&self.tools, &self.prefix);
        if !left.is_empty() {
            eprintln!("chaos: netns cleanup left: {}", left.join("; "));
        }
    }
}

/// Every network namespace name under `/run/netns`.
fn namespaces() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Processes (other than this one) whose network namespace is `ns`.
fn pids_in(ns: &str) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(format!("/run/netns/{ns}")) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(m) = std::fs::metadata(e.path().join("ns/net"))
            && m.ino() == target.ino()
            && m.dev() == target.dev()
        {
            out.push(pid);
        }
    }
    out
}

/// Kills (SIGKILL) the processes inside every namespace named `prefix*` and deletes those
/// namespaces (their veths and bridge go with them). Returns what could not be removed.
pub fn cleanup_prefix(tools: &Tools, prefix: &str) -> Vec<String> {
    let mine: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    let mut pids = Vec::new();
    for ns in &mine {
        pids.extend(pids_in(ns));
    }
    for &p in &pids {
        // SAFETY: kill on a pid found inside a namespace this tool created.
        unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    // SAFETY: signal 0 only probes for existence.
    while pids
        .iter()
        .any(|&p| unsafe { libc::kill(p as libc::pid_t, 0) } == 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut left = Vec::new();
    for ns in &mine {
        if let Err(e) = run(&tools.ip, &["netns", "del", ns], None) {
            left.push(format!("{ns}: {e}"));
        }
    }
    left
}

/// A live process with that pid whose command line has `--netns`: another run still using
/// its namespaces (the binary may be a renamed copy of `pond`). A dead owner, or a pid reused
/// by something else, makes the namespaces stale.
fn owner_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).any(|a| a == b"--netns"))
        .unwrap_or(false)
}

/// Removes namespaces `pch<pid>-*` whose `pond` process is gone (a run that was killed).
/// Returns the prefixes it removed.
pub fn cleanup_stale(tools: &Tools) -> Vec<String> {
    let mut prefixes: Vec<(String, u32)> = Vec::new();
    for n in namespaces() {
        let Some(rest) = n.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let prefix = format!("{NS_PREFIX}{pid}-");
        if pid != std::process::id()
            && !owner_alive(pid)
            && !prefixes.iter().any(|(p, _)| *p == prefix)
        {
            prefixes.push((prefix, pid));
        }
    }
    for (p, _) in &prefixes {
        for left in cleanup_prefix(tools, p) {
            eprintln!("chaos: stale netns cleanup: {left}");
        }
    }
    prefixes.into_iter().map(|(p, _)| p).collect()
}

/// Writes a cluster directory for `pond up` to start as it is: one config per role with its
/// namespace address, `cluster.toml` for the clients, and `up.toml` with the launch command.
pub fn write_cluster_dir(
    dir: &Path,
    net: &Net,
    meta: u32,
    storage: u32,
    targets_per_node: u32,
    replicas: u32,
) -> Result<(), NetnsError> {
    use pond_client::config::{ClusterFile, MetaEndpoint, StorageEndpoint};
    use rand::Rng;
    use toml::Value;
    let write = |path: PathBuf, text: String| -> Result<(), NetnsError> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(io(format!("create {}", p.display())))?;
        }
        std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))
    };
    let table = |pairs: Vec<(&str, Value)>| {
        Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    };
    let s = |x: &str| Value::String(x.to_string());
    let pretty = |v: &Value| toml::to_string_pretty(v).expect("a toml table serialises");
    let mut rng = rand::rng();
    let token: String = (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect();
    let metas: Vec<Role> = (1..=meta as u64).map(Role::Meta).collect();
    let peers = Value::Array(
        metas
            .iter()
            .map(|&m| {
                let Role::Meta(id) = m else { unreachable!() };
                table(vec![
                    ("id", Value::Integer(id as i64)),
                    ("addr", s(&listen(m))),
                ])
            })
            .collect(),
    );
    for &m in &metas {
        let Role::Meta(id) = m else { unreachable!() };
        let d = dir.join(format!("meta-{id}"));
        let cfg = table(vec![
            ("id", Value::Integer(id as i64)),
            ("listen", s(&listen(m))),
            ("data_dir", s(&d.join("data").display().to_string())),
            ("token", s(&token)),
            ("peers", peers.clone()),
        ]);
        write(d.join("meta.toml"), pretty(&cfg))?;
    }
    let meta_addrs = Value::Array(metas.iter().map(|&m| s(&listen(m))).collect());
    for id in 1..=storage {
        let role = Role::Storage(id);
        let d = dir.join(format!("storage-{id}"));
        let targets = (1..=targets_per_node)
            .map(|k| {
                let tid = id as u64 * 1000 + k as u64;
                table(vec![
                    ("id", Value::Integer(tid as i64)),
                    (
                        "path",
                        s(&d.join(format!("target-{tid}")).display().to_string()),
                    ),
                ])
            })
            .collect();
        let cfg = table(vec![
            ("node_id", Value::Integer(id as i64)),
            ("listen", s(&listen(role))),
            ("meta", meta_addrs.clone()),
            ("token", s(&token)),
            ("targets", Value::Array(targets)),
        ]);
        write(d.join("storage.toml"), pretty(&cfg))?;
    }
    let cf = ClusterFile {
        token,
        meta: metas
            .iter()
            .map(|&m| {
                let Role::Meta(id) = m else { unreachable!() };
                MetaEndpoint {
                    id,
                    addr: listen(m),
                    pid: None,
                }
            })
            .collect(),
        storage: (1..=storage)
            .map(|id| StorageEndpoint {
                id,
                addr: listen(Role::Storage(id)),
                pid: None,
            })
            .collect(),
    };
    write(dir.join("cluster.toml"), cf.to_toml())?;
    let up = table(vec![
        ("meta", Value::Integer(meta as i64)),
        ("storage", Value::Integer(storage as i64)),
        ("targets_per_node", Value::Integer(targets_per_node as i64)),
        ("replicas", Value::Integer(replicas.min(storage) as i64)),
        (
            "launch",
            Value::Array(net.launch().iter().map(|a| s(a)).collect()),
        ),
    ]);
    write(dir.join("up.toml"), pretty(&up))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_inside_the_private_subnet() {
        let mut seen = std::collections::BTreeSet::new();
        for r in (1..=5).map(Role::Meta).chain((1..=150).map(Role::Storage)) {
            let a = addr(r);
            assert_eq!(a.octets()[..3], [10, 99, 0]);
            assert_ne!(a, client_addr());
            assert!(seen.insert(a), "{r:?} reuses {a}");
            assert!(port_name(r).len() <= 15, "interface name too long");
        }
    }
}
