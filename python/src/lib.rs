//! `pond._pond`: the native half of the Python package `pond` (PyO3, stable ABI 3.8+).
//!
//! Wraps `pond_client`'s blocking client, datasets, sampler and batch reader, and runs
//! near-data SQL through `pond_client::dataframe` (results as Arrow IPC for pyarrow; the
//! executors link DuckDB, this module does not). The Python half
//! (`pysrc/pond`) adds lazy per-process connection and the PyTorch datasets.
//!
//! **Invariant:** a native object is only used in the process that created it. A tokio
//! runtime's threads do not survive `fork`: objects carried into a forked child refuse every
//! call with a clear error and are leaked rather than dropped there (dropping would join
//! threads that do not exist). The Python layer reconnects in each process.
//!
//! **Invariant:** the GIL is released around every call that waits on the network.

use pond_client::blocking::BlockingClient;
use pond_client::config::ClusterFile;
use pond_client::dataframe::{DataFrame, DataFrameError, Session, SessionOptions, expand_glob};
use pond_client::dataset::{
    self, BatchReader, Dataset, DatasetError, PackOptions, ParquetRows, ReaderOptions, Sampler,
    SamplerOptions, SamplerState,
};
use pond_client::{ClientError, OpenOptions};
use pond_proto::ErrorCode;
use pond_proto::meta::FileType;
use pyo3::create_exception;
use pyo3::exceptions::{PyIndexError, PyOSError, PyRuntimeError, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::path::Path;
use std::sync::{Arc, Mutex};

create_exception!(
    _pond,
    CorruptIndexError,
    PyValueError,
    "A dataset index is damaged or points outside its shards."
);

fn client_err(e: ClientError) -> PyErr {
    let errno = e.errno();
    PyOSError::new_err((errno, e.to_string()))
}

fn ds_err(e: DatasetError) -> PyErr {
    match e {
        DatasetError::OutOfRange { .. } => PyIndexError::new_err(e.to_string()),
        DatasetError::BadIndex { .. }
        | DatasetError::BadFile { .. }
        | DatasetError::CorruptEntry { .. }
        | DatasetError::ShortFile { .. }
        | DatasetError::RaggedRecords { .. } => CorruptIndexError::new_err(e.to_string()),
        DatasetError::InvalidOptions(_) | DatasetError::InvalidState(_) => {
            PyValueError::new_err(e.to_string())
        }
        DatasetError::Local { ref source, .. } => {
            PyOSError::new_err((source.raw_os_error().unwrap_or(libc_eio()), e.to_string()))
        }
        DatasetError::Client(c) => client_err(c),
    }
}

fn libc_eio() -> i32 {
    ErrorCode::Io.errno()
}

/// A value owned by the process that made it (see the crate invariant).
struct ForkGuard<T> {
    value: Option<T>,
    pid: u32,
}

impl<T> ForkGuard<T> {
    fn new(value: T) -> ForkGuard<T> {
        ForkGuard {
            value: Some(value),
            pid: std::process::id(),
        }
    }

    fn get(&self) -> PyResult<&T> {
        let now = std::process::id();
        if now != self.pid {
            return Err(PyRuntimeError::new_err(format!(
                "this pond object was created in process {} and cannot be used after fork \
                 (process {now}): connect again in this process (pond.connect and the pond \
                 datasets do this by themselves)",
                self.pid
            )));
        }
        Ok(self.value.as_ref().expect("present until drop"))
    }
}

impl<T> Drop for ForkGuard<T> {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // The runtime's threads are not in this process: leak instead of joining them.
            std::mem::forget(self.value.take());
        }
    }
}

create_exception!(
    _pond,
    SqlError,
    PyRuntimeError,
    "A near-data SQL query failed (plan, executor, or no executor reachable)."
);

/// A connection to a pond cluster.
#[pyclass(module = "pond._pond", name = "Client")]
struct PyClient {
    inner: ForkGuard<Arc<BlockingClient>>,
    /// The cluster token, for the compute executors' handshake (SQL).
    token: String,
}

impl PyClient {
    fn bc(&self) -> PyResult<Arc<BlockingClient>> {
        Ok(self.inner.get()?.clone())
    }
}

#[pymethods]
impl PyClient {
    #[new]
    fn new(py: Python<'_>, cluster_file: &str) -> PyResult<PyClient> {
        let cf = ClusterFile::load(Path::new(cluster_file))
            .map_err(|e| client_err(ClientError::from(e)))?;
        let bc = py
            .detach(|| BlockingClient::connect(&cf))
            .map_err(client_err)?;
        Ok(PyClient {
            inner: ForkGuard::new(Arc::new(bc)),
            token: cf.token,
        })
    }

    /// Runs a DataFrame plan on the storage nodes' executors and returns the result as one
    /// Arrow IPC stream (`pyarrow.ipc.open_stream`). `ops` is the plan in order:
    /// `("sql_statement", stmt)` alone (one-statement mode), or `("read_parquet", glob)`
    /// followed by any of `("partial_sql", sql)` / `("sql", sql)`. `deadline_ms` bounds each
    /// task (None: the executor default).
    #[pyo3(signature = (ops, deadline_ms = None))]
    fn sql_arrow<'py>(
        &self,
        py: Python<'py>,
        ops: Vec<(String, String)>,
        deadline_ms: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bc = self.bc()?;
        let mut opts = SessionOptions::default();
        if let Some(d) = deadline_ms {
            opts.limits.deadline_ms = d;
        }
        let token = self.token.clone();
        let ipc = py
            .detach(|| {
                bc.runtime().block_on(async {
                    let session = Session::new(Arc::new(bc.client().clone()), &token, opts).await?;
                    let df = frame_of(&session, &ops)?;
                    df.to_arrow().await
                })
            })
            .map_err(|e| match e {
                DataFrameError::Client(c) => client_err(c),
                other => SqlError::new_err(other.to_string()),
            })?;
        Ok(PyBytes::new(py, &ipc))
    }

    /// The plan of `ops` (see `sql_arrow`) as text, without running it.
    fn sql_explain(&self, py: Python<'_>, ops: Vec<(String, String)>) -> PyResult<String> {
        let bc = self.bc()?;
        let token = self.token.clone();
        py.detach(|| {
            bc.runtime().block_on(async {
                let session = Session::new(
                    Arc::new(bc.client().clone()),
                    &token,
                    SessionOptions::default(),
                )
                .await?;
                Ok::<_, DataFrameError>(frame_of(&session, &ops)?.explain())
            })
        })
        .map_err(|e: DataFrameError| SqlError::new_err(e.to_string()))
    }

    /// The whole file as bytes.
    fn read_file<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyBytes>> {
        let bc = self.bc()?;
        let v = py.detach(|| bc.read_file(path)).map_err(client_err)?;
        Ok(PyBytes::new(py, &v))
    }

    /// Creates or replaces a file with `data`.
    fn write_file(&self, py: Python<'_>, path: &str, data: &[u8]) -> PyResult<()> {
        let bc = self.bc()?;
        py.detach(|| bc.write_file(path, data)).map_err(client_err)
    }

    /// Up to `length` bytes at `offset` (short at the end of the file).
    fn pread<'py>(
        &self,
        py: Python<'py>,
        path: &str,
        offset: u64,
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bc = self.bc()?;
        let b = py
            .detach(|| {
                let f = bc.open(path, OpenOptions::read())?;
                let b = f.pread(offset, length)?;
                f.close()?;
                Ok::<_, ClientError>(b)
            })
            .map_err(client_err)?;
        Ok(PyBytes::new(py, &b))
    }

    /// `{"size", "kind", "mode", "mtime_ns", "inode"}`.
    fn stat<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyDict>> {
        let bc = self.bc()?;
        let a = py.detach(|| bc.stat(path)).map_err(client_err)?;
        let d = PyDict::new(py);
        d.set_item("size", a.size)?;
        d.set_item(
            "kind",
            match a.kind {
                FileType::File => "file",
                FileType::Dir => "dir",
                FileType::Symlink => "symlink",
                FileType::Fifo => "fifo",
                FileType::Socket => "socket",
                FileType::CharDevice => "char_device",
                FileType::BlockDevice => "block_device",
            },
        )?;
        d.set_item("mode", a.mode)?;
        d.set_item(
            "mtime_ns",
            a.mtime.sec as i128 * 1_000_000_000 + a.mtime.nsec as i128,
        )?;
        d.set_item("inode", a.inode.0)?;
        Ok(d)
    }

    fn exists(&self, py: Python<'_>, path: &str) -> PyResult<bool> {
        let bc = self.bc()?;
        py.detach(|| bc.runtime().block_on(bc.client().exists(path)))
            .map_err(client_err)
    }

    /// Entry names of a directory, sorted.
    fn listdir(&self, py: Python<'_>, path: &str) -> PyResult<Vec<String>> {
        let bc = self.bc()?;
        let mut v: Vec<String> = py
            .detach(|| bc.read_dir(path))
            .map_err(client_err)?
            .into_iter()
            .map(|e| e.name)
            .collect();
        v.sort();
        Ok(v)
    }

    #[pyo3(signature = (path, parents = true))]
    fn mkdir(&self, py: Python<'_>, path: &str, parents: bool) -> PyResult<()> {
        let bc = self.bc()?;
        py.detach(|| {
            if parents {
                bc.mkdir_all(path, 0o755)
            } else {
                bc.mkdir(path, 0o755)
            }
        })
        .map(|_| ())
        .map_err(client_err)
    }

    /// Removes a file.
    fn remove(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        let bc = self.bc()?;
        py.detach(|| bc.unlink(path)).map_err(client_err)
    }

    /// Copies a local file into pond; returns the bytes copied.
    fn put(&self, py: Python<'_>, local: &str, remote: &str) -> PyResult<u64> {
        let bc = self.bc()?;
        py.detach(|| bc.put(Path::new(local), remote))
            .map_err(client_err)
    }

    /// Copies a pond file to the local disk; returns the bytes copied.
    fn get(&self, py: Python<'_>, remote: &str, local: &str) -> PyResult<u64> {
        let bc = self.bc()?;
        py.detach(|| bc.get(remote, Path::new(local)))
            .map_err(client_err)
    }

    /// Packs a local directory (one sample per file) or JSONL file (one per line) into
    /// shards plus an index under `dst`. Returns `{"samples", "shards", "bytes", "index"}`.
    /// Atomic: `dst` is absent or complete; an existing `dst` is refused (`FileExistsError`)
    /// unless `replace`.
    #[pyo3(signature = (src, dst, shard_bytes = None, replace = false))]
    fn pack<'py>(
        &self,
        py: Python<'py>,
        src: &str,
        dst: &str,
        shard_bytes: Option<u64>,
        replace: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let bc = self.bc()?;
        let mut opts = PackOptions {
            replace,
            ..Default::default()
        };
        if let Some(s) = shard_bytes {
            opts.shard_bytes = s;
        }
        let rep = py
            .detach(|| {
                bc.runtime()
                    .block_on(dataset::pack(bc.client(), Path::new(src), dst, &opts))
            })
            .map_err(ds_err)?;
        let d = PyDict::new(py);
        d.set_item("samples", rep.samples)?;
        d.set_item("shards", rep.shards)?;
        d.set_item("bytes", rep.bytes)?;
        d.set_item("index", rep.index_path)?;
        d.set_item("leftovers", rep.leftovers)?;
        Ok(d)
    }

    /// Opens a packed dataset (its directory or its index file).
    fn open_dataset(&self, py: Python<'_>, path: &str) -> PyResult<PyDataset> {
        let bc = self.bc()?;
        let ds = py
            .detach(|| bc.runtime().block_on(Dataset::open(bc.client(), path)))
            .map_err(ds_err)?;
        Ok(PyDataset::new(bc, ds))
    }

    /// Opens the rows of Parquet files as a dataset: `paths` in order, or one glob (an
    /// absolute path whose last component has `*`/`?`, files in name order). `columns`
    /// picks root columns (None: all).
    #[pyo3(signature = (paths, columns = None))]
    fn open_parquet(
        &self,
        py: Python<'_>,
        paths: Vec<String>,
        columns: Option<Vec<String>>,
    ) -> PyResult<PyParquetRows> {
        let bc = self.bc()?;
        let rows = py
            .detach(|| {
                bc.runtime().block_on(async {
                    let paths = if paths.len() == 1 && paths[0].contains(['*', '?']) {
                        expand_glob(bc.client(), &paths[0])
                            .await
                            .map_err(|e| DatasetError::InvalidOptions(e.to_string()))?
                    } else {
                        paths
                    };
                    ParquetRows::open(bc.client(), &paths, columns.as_deref()).await
                })
            })
            .map_err(ds_err)?;
        Ok(PyParquetRows {
            inner: ForkGuard::new(PqInner {
                bc,
                rows: Some(Arc::new(rows)),
            }),
        })
    }

    /// Opens fixed-size records spread over `paths` in order.
    fn open_fixed(
        &self,
        py: Python<'_>,
        paths: Vec<String>,
        record_bytes: u64,
    ) -> PyResult<PyDataset> {
        let bc = self.bc()?;
        let ds = py
            .detach(|| {
                bc.runtime()
                    .block_on(Dataset::open_fixed(bc.client(), &paths, record_bytes))
            })
            .map_err(ds_err)?;
        Ok(PyDataset::new(bc, ds))
    }
}

/// Builds the DataFrame that `ops` describes (see `PyClient::sql_arrow`).
fn frame_of(session: &Session, ops: &[(String, String)]) -> Result<DataFrame, DataFrameError> {
    let bad = |m: String| DataFrameError::Plan(m);
    let mut it = ops.iter();
    let mut df = match it.next() {
        Some((op, stmt)) if op == "sql_statement" => {
            if ops.len() != 1 {
                return Err(bad(
                    "a SQL statement cannot be followed by more steps".into()
                ));
            }
            return session.sql(stmt);
        }
        Some((op, glob)) if op == "read_parquet" => session.read_parquet(glob),
        Some((op, _)) => return Err(bad(format!("a plan starts with read_parquet, not {op}"))),
        None => return Err(bad("empty plan".into())),
    };
    for (op, sql) in it {
        df = match op.as_str() {
            "partial_sql" => df.partial_sql(sql),
            "sql" => df.sql(sql),
            other => return Err(bad(format!("unknown step {other:?}"))),
        };
    }
    Ok(df)
}

struct DsInner {
    bc: Arc<BlockingClient>,
    ds: Option<Arc<Dataset>>,
}

impl DsInner {
    fn ds(&self) -> &Arc<Dataset> {
        self.ds.as_ref().expect("present until drop")
    }
}

impl Drop for DsInner {
    fn drop(&mut self) {
        // Files finish closing on the runtime (their drop spawns there).
        let _g = self.bc.runtime().enter();
        self.ds.take();
    }
}

/// Samples addressed by number.
#[pyclass(module = "pond._pond", name = "Dataset")]
struct PyDataset {
    inner: ForkGuard<DsInner>,
}

impl PyDataset {
    fn new(bc: Arc<BlockingClient>, ds: Dataset) -> PyDataset {
        PyDataset {
            inner: ForkGuard::new(DsInner {
                bc,
                ds: Some(Arc::new(ds)),
            }),
        }
    }
}

fn bytes_list<'py>(py: Python<'py>, v: &[bytes::Bytes]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, v.iter().map(|b| PyBytes::new(py, b)))
}

#[pymethods]
impl PyDataset {
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.inner.get()?.ds().len() as usize)
    }

    /// Sample `index` as bytes.
    fn get<'py>(&self, py: Python<'py>, index: u64) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.inner.get()?;
        let ds = inner.ds().clone();
        let b = py
            .detach(|| inner.bc.runtime().block_on(ds.get(index)))
            .map_err(ds_err)?;
        Ok(PyBytes::new(py, &b))
    }

    fn __getitem__<'py>(&self, py: Python<'py>, index: i64) -> PyResult<Bound<'py, PyBytes>> {
        let len = self.inner.get()?.ds().len() as i64;
        let i = if index < 0 { index + len } else { index };
        if i < 0 {
            return Err(PyIndexError::new_err(format!(
                "sample {index} out of range: the dataset has {len} samples"
            )));
        }
        self.get(py, i as u64)
    }

    /// Many samples in one batched read (one request per storage node).
    fn get_many<'py>(&self, py: Python<'py>, indices: Vec<u64>) -> PyResult<Bound<'py, PyList>> {
        let inner = self.inner.get()?;
        let ds = inner.ds().clone();
        let v = py
            .detach(|| inner.bc.runtime().block_on(ds.read_batch(&indices)))
            .map_err(ds_err)?;
        bytes_list(py, &v)
    }

    /// Length in bytes of sample `index`.
    fn sample_len(&self, index: u64) -> PyResult<u64> {
        Ok(self.inner.get()?.ds().locate(index).map_err(ds_err)?.len)
    }

    #[getter]
    fn paths(&self) -> PyResult<Vec<String>> {
        Ok(self.inner.get()?.ds().paths().to_vec())
    }

    /// Bytes asked of storage by batch reads so far.
    #[getter]
    fn bytes_requested(&self) -> PyResult<u64> {
        Ok(self.inner.get()?.ds().bytes_requested())
    }

    /// A batch reader over this rank's samples of `epoch`, from global `position`.
    #[pyo3(signature = (batch_size, *, seed = 0, epoch = 0, position = 0, shuffle = true,
        drop_last = false, rank = 0, world_size = 1, prefetch = 4, worker = 0, workers = 1,
        drop_last_batch = false))]
    #[allow(clippy::too_many_arguments)]
    fn reader(
        &self,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        position: u64,
        shuffle: bool,
        drop_last: bool,
        rank: u32,
        world_size: u32,
        prefetch: usize,
        worker: u32,
        workers: u32,
        drop_last_batch: bool,
    ) -> PyResult<PyBatchReader> {
        let inner = self.inner.get()?;
        let ds = inner.ds().clone();
        let s = sampler_at(
            ds.len(),
            SamplerOptions {
                seed,
                shuffle,
                drop_last,
                rank,
                world_size,
            },
            epoch,
            position,
        )?;
        let r = BatchReader::new(
            ds,
            s,
            ReaderOptions {
                batch_size,
                prefetch,
                drop_last_batch,
                worker,
                workers,
            },
        )
        .map_err(ds_err)?;
        Ok(PyBatchReader {
            inner: ForkGuard::new(ReaderInner {
                bc: inner.bc.clone(),
                r: Mutex::new(Some(r)),
            }),
        })
    }
}

struct ReaderInner {
    bc: Arc<BlockingClient>,
    r: Mutex<Option<BatchReader>>,
}

impl Drop for ReaderInner {
    fn drop(&mut self) {
        // Aborting in-flight batch tasks needs the runtime.
        let _g = self.bc.runtime().enter();
        if let Ok(mut r) = self.r.lock() {
            r.take();
        }
    }
}

/// Iterates `(indices, samples)` batches in order, with prefetch.
#[pyclass(module = "pond._pond", name = "BatchReader")]
struct PyBatchReader {
    inner: ForkGuard<ReaderInner>,
}

#[pymethods]
impl PyBatchReader {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let inner = self.inner.get()?;
        let got = py
            .detach(|| {
                let mut g = inner.r.lock().unwrap_or_else(|p| p.into_inner());
                let r = g.as_mut().expect("present until drop");
                inner.bc.runtime().block_on(r.next_batch())
            })
            .map_err(ds_err)?;
        match got {
            Some(b) => Ok((PyList::new(py, b.indices)?, bytes_list(py, &b.samples)?)),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// Batches left to read by all workers together, from this reader's start.
    #[getter]
    fn batches_total(&self) -> PyResult<u64> {
        let inner = self.inner.get()?;
        let g = inner
            .r
            .lock()
            .map_err(|_| PyRuntimeError::new_err("reader poisoned"))?;
        Ok(g.as_ref().expect("present until drop").batches_total())
    }

    /// `{"seed", "epoch", "position"}` after the batches returned (single worker).
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = self.inner.get()?;
        let g = inner
            .r
            .lock()
            .map_err(|_| PyRuntimeError::new_err("reader poisoned"))?;
        state_dict(py, g.as_ref().expect("present until drop").state())
    }
}

fn state_dict(py: Python<'_>, s: SamplerState) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("seed", s.seed)?;
    d.set_item("epoch", s.epoch)?;
    d.set_item("position", s.position)?;
    Ok(d)
}

struct PqInner {
    bc: Arc<BlockingClient>,
    rows: Option<Arc<ParquetRows>>,
}

impl PqInner {
    fn rows(&self) -> &Arc<ParquetRows> {
        self.rows.as_ref().expect("present until drop")
    }
}

impl Drop for PqInner {
    fn drop(&mut self) {
        let _g = self.bc.runtime().enter();
        self.rows.take();
    }
}

fn ipc<'py>(py: Python<'py>, b: &arrow_array::RecordBatch) -> PyResult<Bound<'py, PyBytes>> {
    let v = dataset::parquet::to_ipc(b).map_err(ds_err)?;
    Ok(PyBytes::new(py, &v))
}

/// Rows of Parquet files; batches come back as Arrow IPC streams (one record batch each).
#[pyclass(module = "pond._pond", name = "ParquetRows")]
struct PyParquetRows {
    inner: ForkGuard<PqInner>,
}

#[pymethods]
impl PyParquetRows {
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.inner.get()?.rows().len() as usize)
    }

    #[getter]
    fn paths(&self) -> PyResult<Vec<String>> {
        Ok(self.inner.get()?.rows().paths().to_vec())
    }

    #[getter]
    fn row_groups(&self) -> PyResult<usize> {
        Ok(self.inner.get()?.rows().row_groups())
    }

    /// Column-chunk bytes asked of storage so far.
    #[getter]
    fn bytes_requested(&self) -> PyResult<u64> {
        Ok(self.inner.get()?.rows().bytes_requested())
    }

    /// Rows `indices` (in that order) as an Arrow IPC stream of one record batch.
    fn read_ipc<'py>(&self, py: Python<'py>, indices: Vec<u64>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.inner.get()?;
        let rows = inner.rows().clone();
        let b = py
            .detach(|| inner.bc.runtime().block_on(rows.read_rows(&indices)))
            .map_err(ds_err)?;
        ipc(py, &b)
    }

    /// A batch reader over this rank's rows of `epoch`, from global `position` (the same
    /// sampler and options as `Dataset.reader`).
    #[pyo3(signature = (batch_size, *, seed = 0, epoch = 0, position = 0, shuffle = true,
        drop_last = false, rank = 0, world_size = 1, prefetch = 4, worker = 0, workers = 1,
        drop_last_batch = false))]
    #[allow(clippy::too_many_arguments)]
    fn reader(
        &self,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        position: u64,
        shuffle: bool,
        drop_last: bool,
        rank: u32,
        world_size: u32,
        prefetch: usize,
        worker: u32,
        workers: u32,
        drop_last_batch: bool,
    ) -> PyResult<PyParquetReader> {
        let inner = self.inner.get()?;
        let rows = inner.rows().clone();
        let sampler = sampler_at(
            rows.len(),
            SamplerOptions {
                seed,
                shuffle,
                drop_last,
                rank,
                world_size,
            },
            epoch,
            position,
        )?;
        let r = BatchReader::new(
            rows,
            sampler,
            ReaderOptions {
                batch_size,
                prefetch,
                drop_last_batch,
                worker,
                workers,
            },
        )
        .map_err(ds_err)?;
        Ok(PyParquetReader {
            inner: ForkGuard::new(PqReaderInner {
                bc: inner.bc.clone(),
                r: Mutex::new(Some(r)),
            }),
        })
    }
}

struct PqReaderInner {
    bc: Arc<BlockingClient>,
    r: Mutex<Option<BatchReader<ParquetRows>>>,
}

impl Drop for PqReaderInner {
    fn drop(&mut self) {
        let _g = self.bc.runtime().enter();
        if let Ok(mut r) = self.r.lock() {
            r.take();
        }
    }
}

/// Iterates `(indices, arrow_ipc_bytes)` batches in order, with prefetch.
#[pyclass(module = "pond._pond", name = "ParquetReader")]
struct PyParquetReader {
    inner: ForkGuard<PqReaderInner>,
}

#[pymethods]
impl PyParquetReader {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyBytes>)> {
        let inner = self.inner.get()?;
        let got = py
            .detach(|| {
                let mut g = inner.r.lock().unwrap_or_else(|p| p.into_inner());
                let r = g.as_mut().expect("present until drop");
                inner.bc.runtime().block_on(r.next_batch())
            })
            .map_err(ds_err)?;
        match got {
            Some(b) => Ok((PyList::new(py, b.indices)?, ipc(py, &b.samples)?)),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// `{"seed", "epoch", "position"}` after the batches returned (single worker).
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = self.inner.get()?;
        let g = inner
            .r
            .lock()
            .map_err(|_| PyRuntimeError::new_err("reader poisoned"))?;
        state_dict(py, g.as_ref().expect("present until drop").state())
    }
}

/// A sampler over `n` samples positioned at (`epoch`, global `position`).
fn sampler_at(n: u64, opts: SamplerOptions, epoch: u64, position: u64) -> PyResult<Sampler> {
    let seed = opts.seed;
    let mut s = Sampler::new(n, opts).map_err(ds_err)?;
    s.load_state(SamplerState {
        seed,
        epoch,
        position,
    })
    .map_err(ds_err)?;
    Ok(s)
}

/// The deterministic sharded sampler (no cluster needed).
#[pyclass(module = "pond._pond", name = "Sampler")]
struct PySampler {
    s: Mutex<Sampler>,
}

impl PySampler {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, Sampler>> {
        self.s
            .lock()
            .map_err(|_| PyRuntimeError::new_err("sampler poisoned"))
    }
}

#[pymethods]
impl PySampler {
    #[new]
    #[pyo3(signature = (n, *, seed = 0, shuffle = true, drop_last = false, rank = 0, world_size = 1))]
    fn new(
        n: u64,
        seed: u64,
        shuffle: bool,
        drop_last: bool,
        rank: u32,
        world_size: u32,
    ) -> PyResult<PySampler> {
        let s = Sampler::new(
            n,
            SamplerOptions {
                seed,
                shuffle,
                drop_last,
                rank,
                world_size,
            },
        )
        .map_err(ds_err)?;
        Ok(PySampler { s: Mutex::new(s) })
    }

    /// Samples of this rank per epoch.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.lock()?.len() as usize)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self) -> PyResult<u64> {
        self.lock()?
            .next()
            .ok_or_else(|| PyStopIteration::new_err(()))
    }

    /// The `i`-th sample of this rank in the current epoch.
    fn get(&self, i: u64) -> PyResult<u64> {
        let s = self.lock()?;
        if i >= s.len() {
            return Err(PyIndexError::new_err(format!(
                "position {i} past this rank's epoch of {}",
                s.len()
            )));
        }
        Ok(s.get(i))
    }

    /// The rest of this rank's epoch as a list (consumes it).
    fn take_all(&self) -> PyResult<Vec<u64>> {
        let mut s = self.lock()?;
        Ok(s.by_ref().collect())
    }

    fn set_epoch(&self, epoch: u64) -> PyResult<()> {
        self.lock()?.set_epoch(epoch);
        Ok(())
    }

    #[getter]
    fn epoch(&self) -> PyResult<u64> {
        Ok(self.lock()?.epoch())
    }

    /// Samples of this rank consumed in this epoch.
    #[getter]
    fn local_position(&self) -> PyResult<u64> {
        Ok(self.lock()?.local_position())
    }

    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.lock()?.state();
        state_dict(py, st)
    }

    fn load_state_dict(&self, d: &Bound<'_, PyDict>) -> PyResult<()> {
        let get = |k: &str| -> PyResult<u64> {
            d.get_item(k)?
                .ok_or_else(|| PyValueError::new_err(format!("state dict without {k:?}")))?
                .extract()
        };
        let st = SamplerState {
            seed: get("seed")?,
            epoch: get("epoch")?,
            position: get("position")?,
        };
        self.lock()?.load_state(st).map_err(ds_err)
    }

    /// The state in 29 bytes (version, seed, epoch, position, CRC32C).
    fn state_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let st = self.lock()?.state();
        Ok(PyBytes::new(py, &st.encode()))
    }

    fn load_state_bytes(&self, b: &[u8]) -> PyResult<()> {
        let st = SamplerState::decode(b).map_err(ds_err)?;
        self.lock()?.load_state(st).map_err(ds_err)
    }
}

#[pymodule]
fn _pond(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyClient>()?;
    m.add_class::<PyDataset>()?;
    m.add_class::<PyBatchReader>()?;
    m.add_class::<PySampler>()?;
    m.add_class::<PyParquetRows>()?;
    m.add_class::<PyParquetReader>()?;
    m.add("CorruptIndexError", m.py().get_type::<CorruptIndexError>())?;
    m.add("SqlError", m.py().get_type::<SqlError>())?;
    Ok(())
}
