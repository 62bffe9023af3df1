//! `pond dataset pack`: turns a local directory of files (one sample per file) or a JSONL file
//! (one sample per non-empty line, without its newline) into shard files plus an index.
//!
//! 1. Shards `shard-NNNNN.bin` are filled in source order up to `shard_bytes` each (a sample
//!    larger than that gets a shard of its own), written in `PACK_WRITE_BYTES` steps, closed
//!    (close waits until every replica has the bytes and reports the length).
//! 2. The index `index.pidx` is written last.
//! 3. Everything is written into a hidden sibling `.<name>.pack-<nonce>` and renamed into place
//!    in one metadata operation (one Raft entry): a reader sees no dataset or a complete one,
//!    never a half-written one, even if the packer dies. A destination that exists is refused
//!    unless `replace` is set; then the new directory and the old one are swapped atomically
//!    (`RENAME_EXCHANGE`) and the old one is removed. A killed pack leaves its hidden
//!    directory behind; the next pack of the same destination lists such directories in its
//!    report (`leftovers`) without removing them, since another pack may still be writing.
//!
//! The source order is sorted by relative path (directories) or line order (JSONL), so
//! packing the same source twice gives the same sample numbers. JSON is not parsed: a line is
//! a sample's bytes as is.

use super::index::{Entry, Index};
use super::{DatasetError, INDEX_FILE, join, limits};
use crate::client::Client;
use crate::error::ClientError;
use crate::file::File;
use pond_proto::ErrorCode;
use pond_proto::meta::RenameMode;
use std::path::{Path, PathBuf};
use tokio::io::AsyncBufReadExt;

#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Target bytes per shard file.
    pub shard_bytes: u64,
    /// Replace an existing destination (atomically swapped, then the old one removed).
    pub replace: bool,
}

impl Default for PackOptions {
    fn default() -> PackOptions {
        PackOptions {
            shard_bytes: limits::SHARD_BYTES_DEFAULT,
            replace: false,
        }
    }
}

/// The prefix of the hidden directories `pack` writes into next to `dst` (`dst` = `/a/b`
/// gives `/a/.b.pack-`).
pub fn staging_prefix(dst: &str) -> Result<String, DatasetError> {
    let dst = dst.trim_end_matches('/');
    match dst.rfind('/') {
        Some(k) if dst.starts_with('/') && k + 1 < dst.len() => {
            Ok(format!("{}/.{}.pack-", &dst[..k], &dst[k + 1..]))
        }
        _ => Err(DatasetError::InvalidOptions(format!(
            "destination {dst:?}: expected an absolute path below /"
        ))),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackReport {
    pub samples: u64,
    pub shards: u32,
    pub bytes: u64,
    pub index_path: String,
    /// Staging directories of other packs of the same destination (killed ones, or packs
    /// still running), found next to it; remove them once no pack is running.
    pub leftovers: Vec<String>,
}

fn local(path: &Path, source: std::io::Error) -> DatasetError {
    DatasetError::Local {
        path: path.display().to_string(),
        source,
    }
}

/// Regular files under `dir`, sorted by path, without recursion (an explicit stack).
fn walk(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| local(&d, e))? {
            let e = e.map_err(|e| local(&d, e))?;
            let p = e.path();
            let meta = std::fs::metadata(&p).map_err(|e| local(&p, e))?;
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

struct Writer<'a> {
    client: &'a Client,
    dst: String,
    opts: PackOptions,
    index: Index,
    shard: Option<(File, u64)>,
    buf: Vec<u8>,
    bytes: u64,
}

impl Writer<'_> {
    async fn flush_buf(&mut self) -> Result<(), DatasetError> {
        if let Some((f, written)) = &mut self.shard
            && !self.buf.is_empty()
        {
            f.pwrite(*written, &self.buf).await?;
            *written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    async fn close_shard(&mut self) -> Result<(), DatasetError> {
        self.flush_buf().await?;
        if let Some((f, _)) = self.shard.take() {
            f.close().await?;
        }
        Ok(())
    }

    async fn add(&mut self, sample: &[u8], from: &Path) -> Result<(), DatasetError> {
        if sample.len() as u64 > limits::SAMPLE_BYTES_MAX {
            return Err(DatasetError::InvalidOptions(format!(
                "{}: sample of {} bytes above the limit {}",
                from.display(),
                sample.len(),
                limits::SAMPLE_BYTES_MAX
            )));
        }
        if self.index.entries.len() as u64 >= limits::INDEX_SAMPLES_MAX {
            return Err(DatasetError::InvalidOptions(format!(
                "more than {} samples",
                limits::INDEX_SAMPLES_MAX
            )));
        }
        let used = self.shard.as_ref().map(|(_, w)| *w + self.buf.len() as u64);
        if used.is_none_or(|u| u > 0 && u + sample.len() as u64 > self.opts.shard_bytes) {
            self.close_shard().await?;
            let k = self.index.files.len();
            if k >= limits::DATASET_FILES_MAX {
                return Err(DatasetError::InvalidOptions(format!(
                    "more than {} shards: raise the shard size",
                    limits::DATASET_FILES_MAX
                )));
            }
            let name = format!("shard-{k:05}.bin");
            let path = join(&self.dst, &name);
            let f = self
                .client
                .create_file(&path)
                .await
                .map_err(|e| DatasetError::from(e).context(&path))?;
            self.index.files.push(name);
            self.shard = Some((f, 0));
        }
        let (_, written) = self.shard.as_ref().expect("opened above");
        self.index.entries.push(Entry {
            file: (self.index.files.len() - 1) as u32,
            offset: written + self.buf.len() as u64,
            len: sample.len() as u32,
        });
        self.bytes += sample.len() as u64;
        self.buf.extend_from_slice(sample);
        if self.buf.len() >= limits::PACK_WRITE_BYTES {
            self.flush_buf().await?;
        }
        Ok(())
    }
}

/// Packs `src` (a directory, or a JSONL file) into the pond directory `dst`, atomically (see
/// the module comment).
pub async fn pack(
    client: &Client,
    src: &Path,
    dst: &str,
    opts: &PackOptions,
) -> Result<PackReport, DatasetError> {
    if opts.shard_bytes == 0 {
        return Err(DatasetError::InvalidOptions("shard size 0".into()));
    }
    let dst = dst.trim_end_matches('/');
    let prefix = staging_prefix(dst)?;
    let meta = std::fs::metadata(src).map_err(|e| local(src, e))?;
    let ctx = |path: &str| {
        let path = path.to_string();
        move |e: ClientError| DatasetError::from(e).context(&path)
    };
    let exists = client.exists(dst).await.map_err(ctx(dst))?;
    if exists && !opts.replace {
        return Err(DatasetError::Client(ClientError::new(
            ErrorCode::Exists,
            format!("{dst} exists: pack into a new path, or replace it (--replace)"),
        )));
    }
    let parent = &prefix[..prefix.rfind('/').expect("absolute")];
    if !parent.is_empty() {
        client.mkdir_all(parent, 0o755).await.map_err(ctx(parent))?;
    }
    let staging = format!("{prefix}{:016x}", pond_proto::os_random_u64());
    let stem = &prefix[parent.len() + 1..];
    let leftovers: Vec<String> = client
        .read_dir_all(if parent.is_empty() { "/" } else { parent })
        .await
        .map_err(ctx(parent))?
        .into_iter()
        .filter(|e| e.name.starts_with(stem))
        .map(|e| format!("{parent}/{}", e.name))
        .collect();
    client
        .mkdir_path(&staging, 0o755)
        .await
        .map_err(ctx(&staging))?;
    let written = write_all(client, src, &meta, &staging, opts).await;
    let (samples, shards, bytes) = match written {
        Ok(r) => r,
        Err(e) => {
            // Best effort: a failed pack leaves nothing behind when meta is reachable.
            if let Err(rm) = client.remove_tree(&staging).await {
                tracing::warn!(%staging, error = %rm, "could not remove a failed pack's directory");
            }
            return Err(e);
        }
    };
    // The commit point: one rename makes the whole dataset visible.
    if exists {
        client
            .rename_path(&staging, dst, RenameMode::Exchange)
            .await
            .map_err(ctx(dst))?;
        // `staging` now names the old dataset. Readers that still have it open in other
        // processes lose their files here; they reopen `dst` to see the new one.
        client.remove_tree(&staging).await.map_err(ctx(&staging))?;
    } else {
        client
            .rename_path(&staging, dst, RenameMode::NoReplace)
            .await
            .map_err(ctx(dst))?;
    }
    Ok(PackReport {
        samples,
        shards,
        bytes,
        index_path: join(dst, INDEX_FILE),
        leftovers,
    })
}

/// Writes the shards and the index of `src` into the existing directory `dir` (no staging,
/// no rename: `pack` is this plus the commit); returns (samples, shards, bytes).
pub(super) async fn write_all(
    client: &Client,
    src: &Path,
    meta: &std::fs::Metadata,
    dir: &str,
    opts: &PackOptions,
) -> Result<(u64, u32, u64), DatasetError> {
    let mut w = Writer {
        client,
        dst: dir.to_string(),
        opts: opts.clone(),
        index: Index {
            files: Vec::new(),
            entries: Vec::new(),
        },
        shard: None,
        buf: Vec::with_capacity(limits::PACK_WRITE_BYTES),
        bytes: 0,
    };
    if meta.is_dir() {
        for p in walk(src)? {
            let data = tokio::fs::read(&p).await.map_err(|e| local(&p, e))?;
            w.add(&data, &p).await?;
        }
    } else {
        let f = tokio::fs::File::open(src)
            .await
            .map_err(|e| local(src, e))?;
        let mut r = tokio::io::BufReader::with_capacity(1 << 20, f);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| local(src, e))?;
            if n == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            w.add(&line, src).await?;
        }
    }
    w.close_shard().await?;
    let index_path = join(dir, INDEX_FILE);
    client
        .write_file(&index_path, &w.index.encode())
        .await
        .map_err(|e| DatasetError::from(e).context(&index_path))?;
    Ok((w.index.len(), w.index.files.len() as u32, w.bytes))
}
