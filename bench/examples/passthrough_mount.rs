//! Mounts the FUSE passthrough floor of `pond bench fuse` over a local directory and keeps it
//! mounted until stdin closes or a line is entered: for comparing pond's mount with what the
//! `fuse3` crate alone does (e.g. running pjdfstest on both).
//!
//! `cargo run -p pond-bench --example passthrough_mount -- SOURCE MOUNTPOINT`

use anyhow::Context;
use pond_bench::passthrough::PassthroughMount;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(source), Some(mountpoint)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: passthrough_mount SOURCE MOUNTPOINT");
    };
    let (source, mountpoint) = (PathBuf::from(source), PathBuf::from(mountpoint));
    let m = PassthroughMount::mount(&source, &mountpoint)
        .with_context(|| format!("mount {} at {}", source.display(), mountpoint.display()))?;
    println!("mounted {} at {}", source.display(), mountpoint.display());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    m.unmount()
}
