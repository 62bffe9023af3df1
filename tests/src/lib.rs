//! Harness for pond's integration tests. A [`Cluster`] is a real local cluster started with
//! `pond up --detach` in a temporary directory; tests kill (`SIGKILL`), pause and restart its
//! processes by the configs `pond up` wrote, and stop everything on drop.
//!
//! The tests themselves are `[[test]]` targets of the root package (so cargo builds the
//! `pond` binary first and passes its path as `CARGO_BIN_EXE_pond`).

use anyhow::{Context, Result, bail};
use pond_client::config::ClusterFile;
use pond_client::meta_client::MetaClient;
use pond_proto::meta::{ClusterReply, ClusterRequest};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Opts {
    pub meta: u32,
    pub storage: u32,
    pub targets_per_node: u32,
    pub replicas: u32,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            meta: 3,
            storage: 3,
            targets_per_node: 2,
            replicas: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Meta(u64),
    Storage(u32),
}

impl Role {
    fn name(&self) -> String {
        match self {
            Role::Meta(i) => format!("meta-{i}"),
            Role::Storage(i) => format!("storage-{i}"),
        }
    }
}

pub struct Cluster {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    /// Roles restarted by the test (not children of the supervisor).
    restarted: Vec<(Role, Child)>,
}

impl Cluster {
    /// Start a cluster and wait until `pond up` reports it healthy.
    pub fn start(bin: &str, opts: Opts) -> Result<Cluster> {
        Cluster::start_in(bin, opts, &std::env::temp_dir())
    }

    /// Like [`Cluster::start`], with the cluster directory created under `parent`.
    pub fn start_in(bin: &str, opts: Opts, parent: &Path) -> Result<Cluster> {
        let c = Cluster::new_dir(bin, parent)?;
        c.up(&opts)?;
        Ok(c)
    }

    /// A cluster value over a new `pond-it-*` directory under `parent`; nothing started yet.
    fn new_dir(bin: &str, parent: &Path) -> Result<Cluster> {
        std::fs::create_dir_all(parent)?;
        let dir = tempfile::Builder::new()
            .prefix("pond-it-")
            .tempdir_in(parent)?;
        Ok(Cluster {
            bin: PathBuf::from(bin),
            dir,
            restarted: Vec::new(),
        })
    }

    /// Start a cluster from a directory that `prepare` fills (configs, `cluster.toml`,
    /// `up.toml`) before `pond up --detach` runs on it; `pond up` then reuses those files
    /// as they are. Used by `pond chaos --netns`, which gives every role its own address and
    /// a `launch` command in `up.toml` (see [`Cluster::restart`]).
    pub fn start_prepared(
        bin: &str,
        parent: &Path,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Cluster> {
        let c = Cluster::new_dir(bin, parent)?;
        prepare(c.path())?;
        c.up(&Opts::default())?;
        Ok(c)
    }

    /// The `launch` prefix of `up.toml` for `role` (`{role}` replaced by its name); empty
    /// when roles run directly.
    fn launch_prefix(&self, role: Role) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(self.path().join("up.toml")).unwrap_or_default();
        let topo: toml::Value = toml::from_str(&text).context("parse up.toml")?;
        let Some(list) = topo.get("launch").and_then(|l| l.as_array()) else {
            return Ok(Vec::new());
        };
        list.iter()
            .map(|a| {
                a.as_str()
                    .map(|s| s.replace("{role}", &role.name()))
                    .context("up.toml: launch entries must be strings")
            })
            .collect()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cluster_file_path(&self) -> PathBuf {
        self.path().join("cluster.toml")
    }

    fn up(&self, opts: &Opts) -> Result<()> {
        let out = Command::new(&self.bin)
            .args(["up", "--detach", "--timeout-secs", "120", "--dir"])
            .arg(self.path())
            .args(["--meta", &opts.meta.to_string()])
            .args(["--storage", &opts.storage.to_string()])
            .args(["--targets-per-node", &opts.targets_per_node.to_string()])
            .args(["--replicas", &opts.replicas.to_string()])
            .stdin(Stdio::null())
            .output()
            .context("run pond up")?;
        if !out.status.success() {
            let logs = self.tail_logs();
            bail!(
                "pond up failed: {}\nstdout: {}\nstderr: {}\n{logs}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Restart the whole cluster with `pond up` on the same directory.
    pub fn up_again(&mut self) -> Result<()> {
        self.up(&Opts::default())
    }

    /// `pond down`, plus any roles the test restarted itself.
    pub fn down(&mut self) -> Result<()> {
        for (_, c) in self.restarted.iter_mut() {
            let _ = signal(c.id(), libc::SIGTERM);
        }
        for (_, c) in self.restarted.iter_mut() {
            let _ = c.wait();
        }
        self.restarted.clear();
        let out = Command::new(&self.bin)
            .arg("down")
            .arg("--dir")
            .arg(self.path())
            .output()
            .context("run pond down")?;
        if !out.status.success() {
            bail!("pond down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn cluster_file(&self) -> Result<ClusterFile> {
        Ok(ClusterFile::load(&self.cluster_file_path())?)
    }

    pub fn meta_client(&self) -> Result<MetaClient> {
        let cf = self.cluster_file()?;
        MetaClient::connect(cf.meta_addrs(), cf.token).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// A client that talks to one meta replica only.
    pub fn meta_client_for(&self, id: u64) -> Result<MetaClient> {
        let cf = self.cluster_file()?;
        let m = cf
            .meta
            .iter()
            .find(|m| m.id == id)
            .context("no such meta id")?;
        MetaClient::connect(vec![m.addr.clone()], cf.token).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The pid of a role: restarted by the test, else as `pond up` recorded it.
    pub fn pid(&self, role: Role) -> Result<u32> {
        if let Some((_, c)) = self.restarted.iter().rev().find(|(r, _)| *r == role) {
            return Ok(c.id());
        }
        let cf = self.cluster_file()?;
        let pid = match role {
            Role::Meta(id) => cf.meta.iter().find(|m| m.id == id).and_then(|m| m.pid),
            Role::Storage(id) => cf.storage.iter().find(|s| s.id == id).and_then(|s| s.pid),
        };
        pid.with_context(|| format!("no pid recorded for {}", role.name()))
    }

    /// SIGKILL a role and wait until it is gone.
    pub fn kill9(&mut self, role: Role) -> Result<()> {
        let pid = self.pid(role)?;
        signal(pid, libc::SIGKILL)?;
        if let Some(pos) = self.restarted.iter().position(|(r, _)| *r == role) {
            let (_, mut c) = self.restarted.remove(pos);
            let _ = c.wait();
        } else {
            wait_gone(pid, Duration::from_secs(10))?;
        }
        Ok(())
    }

    pub fn pause(&self, role: Role) -> Result<()> {
        signal(self.pid(role)?, libc::SIGSTOP)
    }

    pub fn resume(&self, role: Role) -> Result<()> {
        signal(self.pid(role)?, libc::SIGCONT)
    }

    /// Start a role again from the config `pond up` wrote for it (under the `launch` command
    /// of `up.toml`, if there is one).
    pub fn restart(&mut self, role: Role) -> Result<()> {
        let (sub, cfg) = match role {
            Role::Meta(id) => ("meta", self.path().join(format!("meta-{id}/meta.toml"))),
            Role::Storage(id) => (
                "storage",
                self.path().join(format!("storage-{id}/storage.toml")),
            ),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("logs/{}.log", role.name())))?;
        let prefix = self.launch_prefix(role)?;
        let mut cmd = match prefix.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = cmd
            .arg(sub)
            .arg("--config")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("restart {}", role.name()))?;
        self.restarted.push((role, child));
        Ok(())
    }

    /// The meta leader's id, waiting up to `within` for one to exist.
    pub async fn leader(&self, within: Duration) -> Result<u64> {
        let client = self.meta_client()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(ClusterReply::MetaStatus {
                leader: Some(l), ..
            }) = client.cluster(ClusterRequest::MetaStatus).await
            {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!("no meta leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every log, for failure messages.
    pub fn tail_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.path().join("logs")) {
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(15);
                out.push_str(&format!("--- {} ---\n", e.path().display()));
                for l in &lines[start..] {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Lines at WARN or ERROR in every role's log (tests check these against an allow-list).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.path().join("logs")) {
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                for l in text.lines() {
                    if l.contains(" WARN ") || l.contains(" ERROR ") {
                        out.push(format!("{}: {l}", e.file_name().to_string_lossy()));
                    }
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.down();
        if std::env::var_os("POND_KEEP_TEST_DIR").is_some() {
            let p = self.dir.path().to_path_buf();
            eprintln!("keeping test cluster dir {}", p.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("tempdir"),
            ));
        }
    }
}

fn signal(pid: u32, sig: i32) -> Result<()> {
    // SAFETY: sends a signal to a process id this harness started or `pond up` recorded.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if r != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn wait_gone(pid: u32, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    // SAFETY: signal 0 only probes for existence.
    while unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 {
        if Instant::now() > deadline {
            bail!("process {pid} still alive after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
