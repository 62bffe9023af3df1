//! Shell tools on the client library (no mount needed): ls, stat, mkdir, put, get, cp, mv, rm,
//! cat, du, setlayout. Messages and exit codes follow coreutils: `pond: cannot stat '/x': No
//! such file or directory`, exit status 1 when any operand failed.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pond_client::{Client, ClientError, OpenOptions};
use pond_proto::ErrorCode;
use pond_proto::layout::DirLayout;
use pond_proto::meta::{FileType, InodeAttr, RenameMode};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum FsCmd {
    /// List directory contents.
    Ls {
        /// Long listing: mode, links, owner, size, mtime, name.
        #[arg(short = 'l')]
        long: bool,
        /// Recurse into subdirectories.
        #[arg(short = 'R')]
        recursive: bool,
        #[arg(default_value = "/")]
        paths: Vec<String>,
    },
    /// Show inode attributes and the layout.
    Stat { paths: Vec<String> },
    /// Create directories.
    Mkdir {
        /// Create parents as needed; no error if existing.
        #[arg(short = 'p')]
        parents: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Copy local files into pond: `pond put LOCAL... DEST` (DEST a directory when several).
    Put {
        #[arg(required = true, num_args = 2..)]
        args: Vec<String>,
    },
    /// Copy a pond file to the local filesystem.
    Get { src: String, local: PathBuf },
    /// Copy files within pond.
    Cp { src: String, dst: String },
    /// Rename within pond (atomic).
    Mv { src: String, dst: String },
    /// Remove files (with -r, whole trees, deleted in the background).
    Rm {
        #[arg(short = 'r')]
        recursive: bool,
        /// Ignore missing operands.
        #[arg(short = 'f')]
        force: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Print files to stdout.
    Cat { paths: Vec<String> },
    /// Disk usage (apparent size) of trees.
    Du {
        /// Only a total per operand.
        #[arg(short = 's')]
        summarize: bool,
        #[arg(default_value = "/")]
        paths: Vec<String>,
    },
    /// Set the default layout that new files in DIR inherit.
    Setlayout {
        dir: String,
        /// Chunk size, power of two, 64K..64M (e.g. 4M).
        #[arg(long)]
        chunk_size: Option<String>,
        /// Number of chains a file spreads over.
        #[arg(long)]
        stripe: Option<u32>,
    },
}

fn perr(op: &str, path: &str, e: &ClientError) {
    let msg = match e {
        ClientError::Pond(p) if p.code != ErrorCode::Internal => p.code.to_string(),
        other => other.to_string(),
    };
    let mut chars = msg.chars();
    let msg = match chars.next() {
        Some(c) => c.to_uppercase().collect::<String>() + chars.as_str(),
        None => msg,
    };
    eprintln!("pond: {op} '{path}': {msg}");
}

fn parse_size(s: &str) -> Result<u32> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    u32::try_from(n * mult).with_context(|| format!("size {s:?} too large"))
}

fn mode_string(a: &InodeAttr) -> String {
    let t = match a.kind {
        FileType::Dir => 'd',
        FileType::Symlink => 'l',
        FileType::File => '-',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
    };
    let m = a.mode;
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    let x = |b: u32, special: u32, s: char| match (m & b != 0, m & special != 0) {
        (true, true) => s,
        (false, true) => s.to_ascii_uppercase(),
        (true, false) => 'x',
        (false, false) => '-',
    };
    format!(
        "{t}{}{}{}{}{}{}{}{}{}",
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        x(0o100, 0o4000, 's'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        x(0o010, 0o2000, 's'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        x(0o001, 0o1000, 't'),
    )
}

fn fmt_time(t: &pond_proto::meta::Timestamp) -> String {
    // UTC, ISO-like; no timezone database is needed.
    let days = t.sec.div_euclid(86_400);
    let secs = t.sec.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60
    )
}

fn fmt_time_full(t: &pond_proto::meta::Timestamp) -> String {
    format!(
        "{}:{:02}.{:09} +0000",
        fmt_time(t),
        t.sec.rem_euclid(60),
        t.nsec
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn bar(total: u64, what: &str) -> ProgressBar {
    // Only on a terminal and only for transfers worth watching.
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() || total < (16 << 20) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

async fn ls(c: &Client, long: bool, recursive: bool, paths: &[String]) -> bool {
    let mut ok = true;
    let mut queue: std::collections::VecDeque<String> = paths.iter().cloned().collect();
    let many = paths.len() > 1 || recursive;
    while let Some(p) = queue.pop_front() {
        let attr = match c.lstat(&p).await {
            Ok(a) => a,
            Err(e) => {
                perr("cannot access", &p, &e);
                ok = false;
                continue;
            }
        };
        if attr.kind != FileType::Dir {
            print_entry(c, &p, &p, &attr, long).await;
            continue;
        }
        let entries = match c.read_dir_all(&p).await {
            Ok(e) => e,
            Err(e) => {
                perr("cannot open directory", &p, &e);
                ok = false;
                continue;
            }
        };
        if many {
            println!("{p}:");
        }
        let mut subdirs = Vec::new();
        for e in &entries {
            let full = join(&p, &e.name);
            if long {
                match c.lstat(&full).await {
                    Ok(a) => print_entry(c, &full, &e.name, &a, true).await,
                    Err(err) => perr("cannot access", &full, &err),
                }
            } else {
                println!("{}", e.name);
            }
            if recursive && e.kind == FileType::Dir {
                subdirs.push(full);
            }
        }
        if many {
            println!();
        }
        // Depth-first order like ls -R, without recursion.
        for d in subdirs.into_iter().rev() {
            queue.push_front(d);
        }
    }
    ok
}

async fn print_entry(c: &Client, full: &str, shown: &str, a: &InodeAttr, long: bool) {
    if !long {
        println!("{shown}");
        return;
    }
    let target = if a.kind == FileType::Symlink {
        c.readlink(a.inode)
            .await
            .map(|t| format!(" -> {t}"))
            .unwrap_or_default()
    } else {
        String::new()
    };
    let _ = full;
    println!(
        "{} {:>3} {:>5} {:>5} {:>12} {} {shown}{target}",
        mode_string(a),
        a.nlink,
        a.uid,
        a.gid,
        a.size,
        fmt_time(&a.mtime)
    );
}

async fn stat(c: &Client, paths: &[String]) -> bool {
    let mut ok = true;
    for p in paths {
        match c.lstat(p).await {
            Ok(a) => {
                println!("  File: {p}");
                println!(
                    "  Size: {:<12} Type: {:?}  Inode: {}  Links: {}",
                    a.size, a.kind, a.inode, a.nlink
                );
                println!(
                    "Access: ({:04o}/{})  Uid: {}  Gid: {}",
                    a.mode,
                    mode_string(&a),
                    a.uid,
                    a.gid
                );
                println!("Access: {}", fmt_time_full(&a.atime));
                println!("Modify: {}", fmt_time_full(&a.mtime));
                println!("Change: {}", fmt_time_full(&a.ctime));
                if let Some(l) = &a.layout {
                    println!(
                        "Layout: chunk {} B, stripe {}, chain table {}, chains {:?}",
                        l.chunk_bytes,
                        l.stripe(),
                        l.chain_table,
                        l.chains.iter().map(|c| c.0).collect::<Vec<_>>()
                    );
                }
            }
            Err(e) => {
                perr("cannot stat", p, &e);
                ok = false;
            }
        }
    }
    ok
}

async fn put(c: &Client, args: &[String]) -> bool {
    let (dest, sources) = args.split_last().expect("clap requires two or more");
    let dest_is_dir = matches!(c.stat(dest).await, Ok(a) if a.kind == FileType::Dir);
    if sources.len() > 1 && !dest_is_dir {
        eprintln!("pond: target '{dest}' is not a directory");
        return false;
    }
    let mut ok = true;
    for src in sources {
        let local = Path::new(src);
        let target = if dest_is_dir {
            let name = local.file_name().map(|n| n.to_string_lossy().to_string());
            match name {
                Some(n) => join(dest, &n),
                None => {
                    eprintln!("pond: cannot put '{src}': no file name");
                    ok = false;
                    continue;
                }
            }
        } else {
            dest.clone()
        };
        let size = std::fs::metadata(local).map(|m| m.len()).unwrap_or(0);
        let pb = bar(size, src);
        let t0 = std::time::Instant::now();
        match c.put(local, &target, |n| pb.set_position(n)).await {
            Ok(n) => {
                pb.finish_and_clear();
                tracing::debug!(
                    bytes = n,
                    secs = t0.elapsed().as_secs_f64(),
                    "put {src} -> {target}"
                );
            }
            Err(e) => {
                pb.abandon();
                perr("cannot put", src, &e);
                ok = false;
            }
        }
    }
    ok
}

async fn get(c: &Client, src: &str, local: &Path) -> bool {
    let local = if local.is_dir() {
        local.join(src.rsplit('/').next().unwrap_or("out"))
    } else {
        local.to_path_buf()
    };
    let size = c.stat(src).await.map(|a| a.size).unwrap_or(0);
    let pb = bar(size, src);
    match c.get(src, &local, |n| pb.set_position(n)).await {
        Ok(_) => {
            pb.finish_and_clear();
            true
        }
        Err(e) => {
            pb.abandon();
            perr("cannot get", src, &e);
            false
        }
    }
}

async fn copy_within(c: &Client, src: &str, dst: &str) -> Result<(), ClientError> {
    let dst = match c.stat(dst).await {
        Ok(a) if a.kind == FileType::Dir => join(dst, src.rsplit('/').next().unwrap_or("copy")),
        _ => dst.to_string(),
    };
    let from = c.open(src, OpenOptions::read()).await?;
    let to = c.create_file(&dst).await?;
    let size = from.size();
    let pb = bar(size, src);
    let step = 8 << 20;
    let mut off = 0u64;
    let r = async {
        while off < size {
            let b = from.pread(off, step).await?;
            if b.is_empty() {
                break;
            }
            to.pwrite_bytes(off, b.clone()).await?;
            off += b.len() as u64;
            pb.set_position(off);
        }
        Ok::<(), ClientError>(())
    }
    .await;
    pb.finish_and_clear();
    let c1 = from.close().await;
    let c2 = to.close().await;
    r?;
    c1?;
    c2
}

async fn rm(c: &Client, recursive: bool, force: bool, paths: &[String]) -> bool {
    let mut ok = true;
    for p in paths {
        let a = match c.lstat(p).await {
            Ok(a) => a,
            Err(e) if force && e.code() == ErrorCode::NotFound => continue,
            Err(e) => {
                perr("cannot remove", p, &e);
                ok = false;
                continue;
            }
        };
        let r = if a.kind == FileType::Dir {
            if !recursive {
                eprintln!("pond: cannot remove '{p}': Is a directory");
                ok = false;
                continue;
            }
            c.remove_tree(p).await
        } else {
            c.unlink_path(p).await
        };
        if let Err(e) = r {
            perr("cannot remove", p, &e);
            ok = false;
        }
    }
    ok
}

async fn cat(c: &Client, paths: &[String]) -> bool {
    let mut ok = true;
    let mut out = std::io::stdout().lock();
    for p in paths {
        let f = match c.open(p, OpenOptions::read()).await {
            Ok(f) => f,
            Err(e) => {
                perr("cannot open", p, &e);
                ok = false;
                continue;
            }
        };
        let mut off = 0u64;
        loop {
            match f.pread(off, 4 << 20).await {
                Ok(b) if b.is_empty() => break,
                Ok(b) => {
                    if out.write_all(&b).is_err() {
                        return false;
                    }
                    off += b.len() as u64;
                }
                Err(e) => {
                    perr("read error", p, &e);
                    ok = false;
                    break;
                }
            }
        }
        let _ = f.close().await;
    }
    let _ = out.flush();
    ok
}

async fn du(c: &Client, summarize: bool, paths: &[String]) -> bool {
    let mut ok = true;
    for root in paths {
        // Post-order totals without recursion: a stack of (path, visited).
        let mut total_of: std::collections::HashMap<String, u64> = Default::default();
        let mut stack = vec![(root.clone(), false)];
        while let Some((p, visited)) = stack.pop() {
            let a = match c.lstat(&p).await {
                Ok(a) => a,
                Err(e) => {
                    perr("cannot access", &p, &e);
                    ok = false;
                    continue;
                }
            };
            if a.kind != FileType::Dir {
                total_of.insert(p, a.size);
                continue;
            }
            let entries = match c.read_dir_all(&p).await {
                Ok(e) => e,
                Err(e) => {
                    perr("cannot read directory", &p, &e);
                    ok = false;
                    continue;
                }
            };
            if !visited {
                stack.push((p.clone(), true));
                for e in entries.iter().rev() {
                    stack.push((join(&p, &e.name), false));
                }
            } else {
                let sum: u64 = entries
                    .iter()
                    .filter_map(|e| total_of.get(&join(&p, &e.name)))
                    .sum();
                if !summarize {
                    println!("{sum}\t{p}");
                }
                total_of.insert(p, sum);
            }
        }
        let t = total_of.get(root).copied().unwrap_or(0);
        if summarize || !matches!(c.lstat(root).await, Ok(a) if a.kind == FileType::Dir) {
            println!("{t}\t{root}");
        }
    }
    ok
}

async fn setlayout(
    c: &Client,
    dir: &str,
    chunk: Option<String>,
    stripe: Option<u32>,
) -> Result<bool> {
    let a = match c.stat(dir).await {
        Ok(a) => a,
        Err(e) => {
            perr("cannot access", dir, &e);
            return Ok(false);
        }
    };
    let cur = c
        .get_dir_layout(a.inode)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let new = DirLayout {
        chain_table: cur.chain_table,
        chunk_bytes: match chunk {
            Some(s) => parse_size(&s)?,
            None => cur.chunk_bytes,
        },
        stripe: stripe.unwrap_or(cur.stripe),
    };
    if let Err(e) = c.set_dir_layout(a.inode, new.clone()).await {
        perr("cannot set layout of", dir, &e);
        return Ok(false);
    }
    println!(
        "{dir}: chunk {} B, stripe {}, chain table {}",
        new.chunk_bytes, new.stripe, new.chain_table
    );
    Ok(true)
}

pub fn run(cluster: Option<&Path>, cmd: FsCmd) -> Result<()> {
    let cf = super::load_cluster(cluster)?;
    let rt = super::runtime()?;
    let ok = rt.block_on(async {
        let c = Client::connect(&cf)
            .await
            .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
        let ok = match cmd {
            FsCmd::Ls {
                long,
                recursive,
                paths,
            } => ls(&c, long, recursive, &paths).await,
            FsCmd::Stat { paths } => stat(&c, &paths).await,
            FsCmd::Mkdir { parents, paths } => {
                let mut ok = true;
                for p in &paths {
                    let r = if parents {
                        c.mkdir_all(p, 0o755).await.map(|_| ())
                    } else {
                        c.mkdir_path(p, 0o755).await.map(|_| ())
                    };
                    if let Err(e) = r {
                        perr("cannot create directory", p, &e);
                        ok = false;
                    }
                }
                ok
            }
            FsCmd::Put { args } => put(&c, &args).await,
            FsCmd::Get { src, local } => get(&c, &src, &local).await,
            FsCmd::Cp { src, dst } => match copy_within(&c, &src, &dst).await {
                Ok(()) => true,
                Err(e) => {
                    perr("cannot copy", &src, &e);
                    false
                }
            },
            FsCmd::Mv { src, dst } => {
                let dst = match c.stat(&dst).await {
                    Ok(a) if a.kind == FileType::Dir => {
                        join(&dst, src.rsplit('/').next().unwrap_or(""))
                    }
                    _ => dst,
                };
                match c.rename_path(&src, &dst, RenameMode::Replace).await {
                    Ok(()) => true,
                    Err(e) => {
                        perr("cannot move", &src, &e);
                        false
                    }
                }
            }
            FsCmd::Rm {
                recursive,
                force,
                paths,
            } => rm(&c, recursive, force, &paths).await,
            FsCmd::Cat { paths } => cat(&c, &paths).await,
            FsCmd::Du { summarize, paths } => du(&c, summarize, &paths).await,
            FsCmd::Setlayout {
                dir,
                chunk_size,
                stripe,
            } => setlayout(&c, &dir, chunk_size, stripe).await?,
        };
        anyhow::Ok(ok)
    })?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert!(parse_size("8G").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
