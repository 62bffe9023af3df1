//! `pond mount MNT [--detach]` and `pond unmount MNT`.

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct MountArgs {
    /// Mount point (an existing directory).
    pub mountpoint: PathBuf,
    /// Return once mounted, leaving the FUSE daemon running (stop: `pond unmount MNT`).
    #[arg(long)]
    pub detach: bool,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Answer extended-attribute requests ENOSYS, as before pond stored them: the kernel
    /// then stops asking, including the `security.capability` lookup it otherwise sends
    /// before every write (docs/client.md, "Extended attributes").
    #[arg(long)]
    pub no_xattr: bool,
    /// Seconds the kernel may cache attributes and entries.
    #[arg(long, default_value_t = 1.0)]
    pub ttl_secs: f64,
    /// Log file of a detached daemon (default: /tmp/pond-mount-<pid>.log).
    #[arg(long)]
    pub log: Option<PathBuf>,
}

/// Whether `mp` is currently a FUSE mount of pond (from /proc/self/mountinfo).
pub fn is_pond_mount(mp: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(mp) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let sep = f.iter().position(|x| *x == "-");
        matches!(sep, Some(s) if f.len() > 4 && f[4] == want && f.get(s + 1).is_some_and(|t| t.starts_with("fuse")))
    })
}

pub fn mount(cluster: Option<&Path>, args: MountArgs) -> Result<()> {
    let cluster_path =
        std::fs::canonicalize(super::cluster_path(cluster)?).context("locate the cluster file")?;
    if args.detach {
        let exe = std::env::current_exe()?;
        let log_path = args.log.clone().unwrap_or_else(|| {
            PathBuf::from(format!("/tmp/pond-mount-{}.log", std::process::id()))
        });
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--cluster")
            .arg(&cluster_path)
            .arg("mount")
            .arg(&args.mountpoint);
        cmd.args(["--ttl-secs", &args.ttl_secs.to_string()]);
        if args.read_only {
            cmd.arg("--read-only");
        }
        if args.no_xattr {
            cmd.arg("--no-xattr");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; the daemon outlives this command's session.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("spawn the FUSE daemon")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_pond_mount(&args.mountpoint) {
            if let Some(st) = child.try_wait()? {
                bail!("the FUSE daemon exited ({st}); see {}", log_path.display());
            }
            if Instant::now() > deadline {
                bail!("not mounted after 30 s; see {}", log_path.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "pond: mounted at {} (daemon pid {}, log {})",
            args.mountpoint.display(),
            child.id(),
            log_path.display()
        );
        return Ok(());
    }
    let rt = super::runtime()?;
    rt.block_on(async {
        let client = pond_client::Client::from_cluster_file(&cluster_path)
            .await
            .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
        let ttl = Duration::from_secs_f64(args.ttl_secs.max(0.0));
        let opts = pond_fuse::MountOptions {
            read_only: args.read_only,
            xattr: !args.no_xattr,
            attr_ttl: ttl,
            entry_ttl: ttl,
            ..Default::default()
        };
        pond_fuse::serve(client, &args.mountpoint, opts)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
}

pub fn unmount(mountpoint: &Path) -> Result<()> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .context("mount point contains NUL")?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // Not root: let fusermount3 do it.
    if e.raw_os_error() == Some(libc::EPERM) {
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(mountpoint)
            .status()?;
        if st.success() {
            return Ok(());
        }
    }
    bail!("unmount {}: {e}", mountpoint.display())
}
