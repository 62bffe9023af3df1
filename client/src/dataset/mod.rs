//! Training datasets on pond: formats, a deterministic sharded sampler, and a batch reader
//! (DESIGN §6; `docs/loader.md`).
//!
//! - [`Dataset`]: samples addressed by number. Two formats: fixed-size records in one or many
//!   files ([`Dataset::open_fixed`]), or variable-size samples listed by an [`index::Index`]
//!   (a versioned, checksummed pond file written by [`pack::pack`], [`Dataset::open`]).
//! - [`ParquetRows`]: the rows of Parquet files, read row-group aware into Arrow batches.
//! - [`sampler::Sampler`]: the order of an epoch from `(seed, epoch)` in O(1) memory, sharded
//!   over `(rank, world size)`, resumable from [`sampler::SamplerState`].
//! - [`reader::BatchReader`]: batches of samples read with one batched read per storage node
//!   (chunk → chain → replica, through `DataPath::read_chunks`), a bounded number of batches
//!   in flight, delivered in order.
//!
//! **Invariant:** a batch read asks storage for exactly the bytes of its samples: no
//! readahead, no rounding to chunks or pages (`Dataset::read_batch` counts them).

pub mod index;
pub mod limits;
pub mod pack;
pub mod parquet;
pub mod reader;
pub mod sampler;

pub use index::{Entry, Index};
pub use pack::{PackOptions, PackReport, pack};
pub use parquet::ParquetRows;
pub use reader::{Batch, BatchReader, EpochStats, ReaderOptions, Source, read_epoch};
pub use sampler::{Permutation, Sampler, SamplerOptions, SamplerState};

use crate::client::{Client, OpenOptions};
use crate::error::ClientError;
use crate::file::File;
use crate::io::ChunkRead;
use crate::stripe;
use bytes::{Bytes, BytesMut};
use pond_proto::ChunkId;
use pond_proto::meta::FileType;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The index file name `pack` writes inside a dataset directory.
pub const INDEX_FILE: &str = "index.pidx";

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("sample {index} out of range: the dataset has {len} samples")]
    OutOfRange { index: u64, len: u64 },
    /// The index as a whole is unusable (magic, version, header checksum, length).
    #[error("index {path}: {reason}")]
    BadIndex { path: String, reason: String },
    /// A data file is not what the dataset needs (a Parquet file that does not decode).
    #[error("{path}: {reason}")]
    BadFile { path: String, reason: String },
    /// One entry (or a block of entries, named by its first) is damaged or points nowhere.
    #[error("index {path}: entry {entry}: {reason}")]
    CorruptEntry {
        path: String,
        entry: u64,
        reason: String,
    },
    #[error("{path}: size {size} is not a multiple of the record size {record_bytes}")]
    RaggedRecords {
        path: String,
        size: u64,
        record_bytes: u64,
    },
    /// A shard changed under an open dataset (shrunk below an indexed range).
    #[error("{path}: sample {index} needs bytes {start}..{end} but the file has {size}")]
    ShortFile {
        path: String,
        index: u64,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("invalid resume state: {0}")]
    InvalidState(String),
    #[error("{path}: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl DatasetError {
    fn context(self, path: &str) -> DatasetError {
        match self {
            DatasetError::Client(e) => {
                DatasetError::Client(ClientError::new(e.code(), format!("{path}: {e}")))
            }
            other => other,
        }
    }
}

/// Where one sample lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleLoc {
    /// Position in [`Dataset::files`].
    pub file: u32,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug)]
enum Kind {
    /// Record `i` of the set: file `k` with `starts[k] <= i < starts[k + 1]`.
    Fixed {
        record_bytes: u64,
        starts: Vec<u64>,
    },
    Indexed {
        index: Index,
    },
}

/// A set of samples in pond files, opened for reading.
#[derive(Debug)]
pub struct Dataset {
    paths: Vec<String>,
    files: Vec<Arc<File>>,
    kind: Kind,
    /// Bytes asked of storage by batch reads (the no-readahead invariant, observable).
    bytes_requested: AtomicU64,
}

fn join(dir: &str, name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

async fn open_read(client: &Client, path: &str) -> Result<Arc<File>, DatasetError> {
    let f = client
        .open(path, OpenOptions::read())
        .await
        .map_err(|e| DatasetError::from(e).context(path))?;
    Ok(Arc::new(f))
}

/// A byte range of one of a dataset's files, read for sample `sample` (named in errors).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Range {
    pub file: u32,
    pub offset: u64,
    pub len: u64,
    pub sample: u64,
}

/// Reads `ranges` of `files` together: every range is split into chunk pieces, and all pieces
/// go to `DataPath::read_chunks`, which sends one batched read per storage node (each piece on
/// a chosen replica of its chain, failed pieces retried on others). Exactly the ranges' bytes
/// are asked for. Returns the ranges' bytes in order; holes read as zeros.
pub(crate) async fn fetch_ranges(
    files: &[Arc<File>],
    paths: &[String],
    ranges: &[Range],
) -> Result<Vec<Bytes>, DatasetError> {
    // 1. Plan: check each range against its file, split into chunk pieces.
    let mut reads: Vec<ChunkRead> = Vec::new();
    let mut plan: Vec<(usize, Vec<(stripe::Piece, usize)>)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        let oi = files[r.file as usize].open_inode();
        let size = oi.size();
        let end = r.offset + r.len;
        if end > size {
            return Err(DatasetError::ShortFile {
                path: paths[r.file as usize].clone(),
                index: r.sample,
                start: r.offset,
                end,
                size,
            });
        }
        let layout = oi.layout();
        let mut pieces = Vec::new();
        for p in stripe::split(layout.chunk_bytes, r.offset, r.len as usize) {
            pieces.push((p, reads.len()));
            reads.push(ChunkRead {
                chunk: ChunkId::new(oi.inode(), p.index),
                chain: layout.chain_of(p.index),
                offset: p.chunk_offset,
                len: p.len,
            });
        }
        plan.push((r.len as usize, pieces));
    }
    if reads.is_empty() {
        return Ok(plan.iter().map(|_| Bytes::new()).collect());
    }
    // 2. One batched read per storage node for all ranges.
    let core = files[0].open_inode().core().clone();
    let got = core.data.read_chunks(&reads).await?;
    // 3. Assemble: a range inside one chunk is the received bytes themselves; others are
    //    copied once; holes (absent or short chunks) read as zeros.
    Ok(plan
        .into_iter()
        .map(|(len, pieces)| {
            if pieces.len() == 1 && got[pieces[0].1].len() == len {
                return got[pieces[0].1].clone();
            }
            let mut out = BytesMut::zeroed(len);
            for (p, k) in &pieces {
                let b = &got[*k];
                out[p.buf_offset..p.buf_offset + b.len()].copy_from_slice(b);
            }
            out.freeze()
        })
        .collect())
}

/// Whether `index_path` no longer names the index inode `inode` (replaced or removed).
async fn index_replaced(
    client: &Client,
    index_path: &str,
    inode: pond_proto::ids::InodeId,
) -> bool {
    !matches!(client.stat(index_path).await, Ok(a) if a.inode == inode)
}

impl Dataset {
    /// Opens a packed dataset: a directory holding `index.pidx`, or an index file itself.
    ///
    /// The index and its shards are opened by path, one after the other. `pack --replace`
    /// swaps a whole dataset directory in one rename, so the open checks that the index path
    /// still names the index it read once every shard is open, and starts again (a bounded
    /// number of times) if not: an open never mixes an old index with new shards.
    pub async fn open(client: &Client, path: &str) -> Result<Dataset, DatasetError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Dataset::open_once(client, path).await? {
                Some(ds) => return Ok(ds),
                None if attempt < limits::OPEN_ATTEMPTS_MAX => {
                    tracing::debug!(path, attempt, "dataset replaced while opening; again");
                }
                None => {
                    return Err(DatasetError::BadIndex {
                        path: path.to_string(),
                        reason: format!("replaced while being opened, {attempt} times in a row"),
                    });
                }
            }
        }
    }

    /// One attempt of [`Dataset::open`]; `None` if the dataset was replaced meanwhile.
    async fn open_once(client: &Client, path: &str) -> Result<Option<Dataset>, DatasetError> {
        let attr = client
            .stat(path)
            .await
            .map_err(|e| DatasetError::from(e).context(path))?;
        let index_path = if attr.kind == FileType::Dir {
            join(path, INDEX_FILE)
        } else {
            path.to_string()
        };
        let ctx = |e: ClientError| DatasetError::from(e).context(&index_path);
        let mut index_file = client
            .open(&index_path, OpenOptions::read())
            .await
            .map_err(ctx)?;
        let index_inode = index_file.inode();
        let bytes = index_file.read_to_end().await.map_err(ctx)?;
        index_file.close().await.map_err(ctx)?;
        let index = Index::decode(&index_path, &bytes)?;
        let dir = match index_path.rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(k) => index_path[..k].to_string(),
        };
        let paths: Vec<String> = index.files.iter().map(|f| join(&dir, f)).collect();
        let mut files = Vec::with_capacity(paths.len());
        for p in &paths {
            match open_read(client, p).await {
                Ok(f) => files.push(f),
                // A shard of the index we read may be gone because the dataset was replaced.
                Err(e) if index_replaced(client, &index_path, index_inode).await => {
                    tracing::debug!(path = %p, error = %e, "shard vanished with its dataset");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        if index_replaced(client, &index_path, index_inode).await {
            return Ok(None);
        }
        // Every entry must lie inside its shard.
        for (i, e) in index.entries.iter().enumerate() {
            let size = files[e.file as usize].size();
            let end = e.offset + e.len as u64;
            if end > size {
                return Err(DatasetError::CorruptEntry {
                    path: index_path,
                    entry: i as u64,
                    reason: format!(
                        "range {}..{end} past the end of {} (size {size})",
                        e.offset, paths[e.file as usize]
                    ),
                });
            }
        }
        Ok(Some(Dataset {
            paths,
            files,
            kind: Kind::Indexed { index },
            bytes_requested: AtomicU64::new(0),
        }))
    }

    /// Opens fixed-size records spread over `paths` in order (each file a whole number of
    /// records).
    pub async fn open_fixed(
        client: &Client,
        paths: &[String],
        record_bytes: u64,
    ) -> Result<Dataset, DatasetError> {
        if record_bytes == 0 || record_bytes > limits::SAMPLE_BYTES_MAX {
            return Err(DatasetError::InvalidOptions(format!(
                "record size {record_bytes} outside 1..={}",
                limits::SAMPLE_BYTES_MAX
            )));
        }
        if paths.is_empty() || paths.len() > limits::DATASET_FILES_MAX {
            return Err(DatasetError::InvalidOptions(format!(
                "{} files, expected 1..={}",
                paths.len(),
                limits::DATASET_FILES_MAX
            )));
        }
        let mut files = Vec::with_capacity(paths.len());
        let mut starts = vec![0u64];
        for p in paths {
            let f = open_read(client, p).await?;
            let size = f.size();
            if !size.is_multiple_of(record_bytes) {
                return Err(DatasetError::RaggedRecords {
                    path: p.clone(),
                    size,
                    record_bytes,
                });
            }
            starts.push(starts.last().expect("starts at 0") + size / record_bytes);
            files.push(f);
        }
        Ok(Dataset {
            paths: paths.to_vec(),
            files,
            kind: Kind::Fixed {
                record_bytes,
                starts,
            },
            bytes_requested: AtomicU64::new(0),
        })
    }

    /// Samples in the dataset.
    pub fn len(&self) -> u64 {
        match &self.kind {
            Kind::Fixed { starts, .. } => *starts.last().expect("starts at 0"),
            Kind::Indexed { index } => index.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The files samples live in, in the order `SampleLoc::file` numbers them.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    pub fn files(&self) -> &[Arc<File>] {
        &self.files
    }

    /// Bytes asked of storage by batch reads so far.
    pub fn bytes_requested(&self) -> u64 {
        self.bytes_requested.load(Ordering::Relaxed)
    }

    pub fn locate(&self, index: u64) -> Result<SampleLoc, DatasetError> {
        let len = self.len();
        if index >= len {
            return Err(DatasetError::OutOfRange { index, len });
        }
        Ok(match &self.kind {
            Kind::Fixed {
                record_bytes,
                starts,
            } => {
                // The last file whose first record is <= index (files may be empty).
                let k = starts.partition_point(|s| *s <= index) - 1;
                SampleLoc {
                    file: k as u32,
                    offset: (index - starts[k]) * record_bytes,
                    len: *record_bytes,
                }
            }
            Kind::Indexed { index: ix } => {
                let e = ix.entries[index as usize];
                SampleLoc {
                    file: e.file,
                    offset: e.offset,
                    len: e.len as u64,
                }
            }
        })
    }

    /// Reads one sample.
    pub async fn get(&self, index: u64) -> Result<Bytes, DatasetError> {
        let mut v = self.read_batch(&[index]).await?;
        Ok(v.pop().expect("one sample asked"))
    }

    /// Reads many samples at once: every sample's chunk pieces go out together, one batched
    /// read per storage node (each piece on a chosen replica of its chain, failed pieces
    /// retried on others). Returns the samples in the order asked.
    pub async fn read_batch(&self, indices: &[u64]) -> Result<Vec<Bytes>, DatasetError> {
        if indices.len() > limits::BATCH_SAMPLES_MAX {
            return Err(DatasetError::InvalidOptions(format!(
                "{} samples in one batch, limit {}",
                indices.len(),
                limits::BATCH_SAMPLES_MAX
            )));
        }
        let mut ranges = Vec::with_capacity(indices.len());
        let mut total = 0u64;
        for &i in indices {
            let loc = self.locate(i)?;
            total += loc.len;
            if total > limits::BATCH_BYTES_MAX {
                return Err(DatasetError::InvalidOptions(format!(
                    "batch above {} bytes",
                    limits::BATCH_BYTES_MAX
                )));
            }
            ranges.push(Range {
                file: loc.file,
                offset: loc.offset,
                len: loc.len,
                sample: i,
            });
        }
        self.bytes_requested.fetch_add(total, Ordering::Relaxed);
        fetch_ranges(&self.files, &self.paths, &ranges).await
    }

    /// Closes every file (read opens hold no meta session; this only drops client state).
    pub async fn close(&self) -> Result<(), DatasetError> {
        for f in &self.files {
            f.close().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
