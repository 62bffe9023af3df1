//! The batch reader: this rank's samples of an epoch, in batches, with bounded prefetch.
//!
//! Batch `k` of a reader holds this rank's local positions `[p0 + kB, p0 + (k+1)B)` where
//! `p0` is the sampler's position when the reader started and `B` the batch size. With
//! `workers > 1` (DataLoader worker processes), worker `w` reads the batches `k ≡ w (mod
//! workers)`; delivered round-robin they are exactly the single-worker sequence. Up to
//! `prefetch` batches are in flight as tokio tasks; `next_batch` returns them in order.

use super::sampler::{Sampler, SamplerState};
use super::{Dataset, DatasetError, limits};
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// What a [`BatchReader`] reads from: samples addressed by number, read many at a time.
pub trait Source: Send + Sync + 'static {
    /// What one batch read returns (the samples in the order asked).
    type Samples: Send + 'static;

    /// Samples in the source.
    fn samples(&self) -> u64;

    /// Reads the samples `indices`, in that order.
    fn read(
        self: Arc<Self>,
        indices: Vec<u64>,
    ) -> impl Future<Output = Result<Self::Samples, DatasetError>> + Send + 'static;
}

impl Source for Dataset {
    type Samples = Vec<Bytes>;

    fn samples(&self) -> u64 {
        self.len()
    }

    async fn read(self: Arc<Self>, indices: Vec<u64>) -> Result<Vec<Bytes>, DatasetError> {
        self.read_batch(&indices).await
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderOptions {
    pub batch_size: usize,
    /// Batches in flight ahead of the consumer (≥ 1).
    pub prefetch: usize,
    /// `true`: a last batch shorter than `batch_size` is not returned.
    pub drop_last_batch: bool,
    /// This reader's share of the batches: worker `worker` of `workers`.
    pub worker: u32,
    pub workers: u32,
}

impl Default for ReaderOptions {
    fn default() -> ReaderOptions {
        ReaderOptions {
            batch_size: 32,
            prefetch: 4,
            drop_last_batch: false,
            worker: 0,
            workers: 1,
        }
    }
}

/// One batch: the sample numbers and their samples, in the same order (bytes for a
/// [`Dataset`], an Arrow record batch for a Parquet row set).
#[derive(Clone, Debug)]
pub struct Batch<T = Vec<Bytes>> {
    /// Batch number within this reader's epoch (counting every worker's batches).
    pub number: u64,
    pub indices: Vec<u64>,
    pub samples: T,
}

impl Batch {
    pub fn bytes(&self) -> u64 {
        self.samples.iter().map(|s| s.len() as u64).sum()
    }
}

/// A submitted batch: its number, its sample numbers, the task reading them.
type InFlight<T> = (u64, Vec<u64>, JoinHandle<Result<T, DatasetError>>);

pub struct BatchReader<S: Source = Dataset> {
    ds: Arc<S>,
    sampler: Sampler,
    opts: ReaderOptions,
    /// Local position where batch 0 starts.
    start: u64,
    /// Next batch number to submit (this worker's share only).
    next_submit: u64,
    inflight: VecDeque<InFlight<S::Samples>>,
    /// Batches returned so far (by this reader).
    delivered: u64,
}

impl<S: Source> BatchReader<S> {
    /// A reader over `sampler`'s remaining samples of its current epoch.
    pub fn new(
        ds: Arc<S>,
        sampler: Sampler,
        opts: ReaderOptions,
    ) -> Result<BatchReader<S>, DatasetError> {
        if opts.batch_size == 0 || opts.batch_size > limits::BATCH_SAMPLES_MAX {
            return Err(DatasetError::InvalidOptions(format!(
                "batch size {} outside 1..={}",
                opts.batch_size,
                limits::BATCH_SAMPLES_MAX
            )));
        }
        if opts.prefetch == 0 || opts.prefetch > limits::PREFETCH_BATCHES_MAX {
            return Err(DatasetError::InvalidOptions(format!(
                "prefetch {} outside 1..={}",
                opts.prefetch,
                limits::PREFETCH_BATCHES_MAX
            )));
        }
        if opts.workers == 0 || opts.worker >= opts.workers {
            return Err(DatasetError::InvalidOptions(format!(
                "worker {} of {}",
                opts.worker, opts.workers
            )));
        }
        if sampler.dataset_len() != ds.samples() {
            return Err(DatasetError::InvalidOptions(format!(
                "sampler over {} samples, dataset has {}",
                sampler.dataset_len(),
                ds.samples()
            )));
        }
        let start = sampler.local_position();
        Ok(BatchReader {
            ds,
            sampler,
            opts,
            start,
            next_submit: opts.worker as u64,
            inflight: VecDeque::new(),
            delivered: 0,
        })
    }

    pub fn dataset(&self) -> &Arc<S> {
        &self.ds
    }

    /// Batches of the whole reader (all workers together) from its start to the epoch end.
    pub fn batches_total(&self) -> u64 {
        let left = self.sampler.len() - self.start;
        let b = self.opts.batch_size as u64;
        if self.opts.drop_last_batch {
            left / b
        } else {
            left.div_ceil(b)
        }
    }

    /// Sample numbers of batch `k`.
    fn batch_indices(&self, k: u64) -> Vec<u64> {
        let b = self.opts.batch_size as u64;
        let first = self.start + k * b;
        let last = (first + b).min(self.sampler.len());
        (first..last).map(|i| self.sampler.get(i)).collect()
    }

    fn fill(&mut self) {
        while self.inflight.len() < self.opts.prefetch && self.next_submit < self.batches_total() {
            let k = self.next_submit;
            self.next_submit += self.opts.workers as u64;
            let indices = self.batch_indices(k);
            let task = tokio::spawn(S::read(self.ds.clone(), indices.clone()));
            self.inflight.push_back((k, indices, task));
        }
    }

    /// The next batch of this worker, `None` at the end of the epoch. Must be called inside
    /// a tokio runtime.
    pub async fn next_batch(&mut self) -> Result<Option<Batch<S::Samples>>, DatasetError> {
        self.fill();
        let Some((number, indices, task)) = self.inflight.pop_front() else {
            return Ok(None);
        };
        let samples = match task.await {
            Ok(r) => r?,
            Err(e) => {
                return Err(DatasetError::Client(crate::ClientError::new(
                    pond_proto::ErrorCode::Internal,
                    format!("batch read task failed: {e}"),
                )));
            }
        };
        self.delivered += 1;
        self.fill();
        Ok(Some(Batch {
            number,
            indices,
            samples,
        }))
    }

    /// The resume point after the batches this reader returned, for a single worker. (With
    /// several workers the consumer, which sees the round-robin order, computes it:
    /// `start + batches consumed × batch size`.)
    pub fn state(&self) -> SamplerState {
        let b = self.opts.batch_size as u64;
        let local =
            (self.start + self.delivered * self.opts.workers as u64 * b).min(self.sampler.len());
        let mut s = self.sampler.clone();
        s.seek(local).expect("within the epoch");
        s.state()
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }
}

impl<S: Source> Drop for BatchReader<S> {
    fn drop(&mut self) {
        for (_, _, t) in &self.inflight {
            t.abort();
        }
    }
}

/// What one epoch read by [`read_epoch`] took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochStats {
    pub batches: u64,
    pub samples: u64,
    pub bytes: u64,
    pub wall: std::time::Duration,
}

impl EpochStats {
    pub fn samples_per_sec(&self) -> f64 {
        self.samples as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Reads the rest of `sampler`'s epoch in batches, calling `each` on every batch (in order);
/// what `pond demo` and `pond dataset read` show.
pub async fn read_epoch(
    ds: Arc<Dataset>,
    sampler: Sampler,
    opts: ReaderOptions,
    mut each: impl FnMut(&Batch),
) -> Result<EpochStats, DatasetError> {
    let start = std::time::Instant::now();
    let mut r = BatchReader::new(ds, sampler, opts)?;
    let mut st = EpochStats {
        batches: 0,
        samples: 0,
        bytes: 0,
        wall: std::time::Duration::ZERO,
    };
    while let Some(b) = r.next_batch().await? {
        st.batches += 1;
        st.samples += b.samples.len() as u64;
        st.bytes += b.bytes();
        each(&b);
    }
    st.wall = start.elapsed();
    Ok(st)
}
