//! `pond dataset pack`: turns a local directory of files (one sample per file) or a JSONL file
//! (one sample per non-empty line, without its newline) into shard files plus an index.
//!
//! 1. Shards `shard-NNNNN.bin` are filled in source order up to `shard_bytes` each (a sample
//!    larger than that gets a shard of its own), written in `PACK_WRITE_BYTES` steps, closed
//!    (close waits until every replica has the bytes and reports the length).
//! 2. The index `index.pidx` is written last. A reader that opens the dataset before the
//!    index is complete gets a clear error (the index checks its exact length and CRCs).
//!    Packing into a directory that readers are using is not safe: shards are rewritten in
//!    place (pack into a new directory and switch paths instead).
//!
//! The source order is sorted by relative path (directories) or line order (JSONL), so
//! packing the same source twice gives the same sample numbers. JSON is not parsed: a line is
//! a sample's bytes as is.

use super::index::{Entry, Index};
use super::{DatasetError, INDEX_FILE, join, limits};
use crate::client::Client;
use crate::file::File;
use std::path::{Path, PathBuf};
use tokio::io::AsyncBufReadExt;

#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Target bytes per shard file.
    pub shard_bytes: u64,
}

impl Default for PackOptions {
    fn default() -> PackOptions {
        PackOptions {
            shard_bytes: limits::SHARD_BYTES_DEFAULT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackReport {
    pub samples: u64,
    pub shards: u32,
    pub bytes: u64,
    pub index_path: String,
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

/// Packs `src` (a directory, or a JSONL file) into the pond directory `dst`.
pub async fn pack(
    client: &Client,
    src: &Path,
    dst: &str,
    opts: &PackOptions,
) -> Result<PackReport, DatasetError> {
    if opts.shard_bytes == 0 {
        return Err(DatasetError::InvalidOptions("shard size 0".into()));
    }
    let meta = std::fs::metadata(src).map_err(|e| local(src, e))?;
    client
        .mkdir_all(dst, 0o755)
        .await
        .map_err(|e| DatasetError::from(e).context(dst))?;
    let mut w = Writer {
        client,
        dst: dst.to_string(),
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
    // The index last: until it is complete, readers get a clear "truncated" error, never
    // entries pointing at unwritten bytes.
    let index_path = join(dst, INDEX_FILE);
    client
        .write_file(&index_path, &w.index.encode())
        .await
        .map_err(|e| DatasetError::from(e).context(&index_path))?;
    Ok(PackReport {
        samples: w.index.len(),
        shards: w.index.files.len() as u32,
        bytes: w.bytes,
        index_path,
    })
}
