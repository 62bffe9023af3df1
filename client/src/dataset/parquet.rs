//! Parquet row datasets: sample `i` is row `i` of a list of Parquet files in pond (rows
//! numbered file by file, row group by row group).
//!
//! Opening reads each file's footer (two small reads) and keeps its metadata: row groups, their
//! row counts and the byte range of every column chunk. A batch read:
//!
//! 1. maps each wanted row to (file, row group, row within it);
//! 2. fetches, for every row group the batch touches, the column chunks of the projected
//!    columns only — all of them together through the batched read path (one request per
//!    storage node, like [`super::Dataset::read_batch`]);
//! 3. decodes each row group with the `parquet` crate's Arrow reader, keeping only the wanted
//!    rows (a `RowSelection`), and
//! 4. returns one Arrow `RecordBatch` holding the rows in the order asked (duplicates kept).
//!
//! Row-group aware: the unit of I/O is a column chunk of a row group, so a batch costs one
//! fetch per (row group, projected column) it touches however many of its rows it wants.
//! With a fully shuffled order over many row groups a batch touches up to `batch size` row
//! groups, so small row groups (or an order local to row groups) keep the bytes read close
//! to the bytes used; [`ParquetRows::bytes_requested`] and [`ParquetRows::bytes_used`] make
//! the amplification visible.
//!
//! **Invariant:** the client does not link DuckDB: this is the pure-Rust `parquet` crate.

use super::reader::Source;
use super::{DatasetError, Range, fetch_ranges, limits};
use crate::client::{Client, OpenOptions};
use crate::file::File;
use arrow_array::{RecordBatch, UInt32Array};
use arrow_schema::SchemaRef;
use bytes::{Buf, Bytes};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::file::metadata::{FooterTail, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::{ChunkReader, Length};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of the Parquet footer: metadata length (u32 LE) + `PAR1`.
const FOOTER_BYTES: u64 = 8;

#[derive(Debug)]
struct PqFile {
    meta: ArrowReaderMetadata,
    size: u64,
}

/// Rows of Parquet files in pond, read in batches as Arrow record batches.
#[derive(Debug)]
pub struct ParquetRows {
    paths: Vec<String>,
    files: Vec<Arc<File>>,
    pq: Vec<PqFile>,
    /// The global number of the first row of every (file, row group), in order, plus the
    /// total at the end.
    starts: Vec<u64>,
    /// (file, row group) of each entry of `starts` but the last.
    groups: Vec<(u32, u32)>,
    /// Root columns read (ascending field numbers of the files' common Arrow schema).
    columns: Vec<usize>,
    schema: SchemaRef,
    bytes_requested: AtomicU64,
    rows_returned: AtomicU64,
}

fn bad(path: &str, reason: impl Into<String>) -> DatasetError {
    DatasetError::BadFile {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Column chunks of one row group held in memory, served to the Parquet reader at their file
/// offsets.
struct Fetched {
    file_len: u64,
    /// (file offset, bytes), sorted by offset, non-overlapping.
    parts: Vec<(u64, Bytes)>,
}

impl Fetched {
    fn slice(&self, start: u64, len: Option<usize>) -> parquet::errors::Result<Bytes> {
        let k = self.parts.partition_point(|(o, _)| *o <= start);
        if k > 0 {
            let (o, b) = &self.parts[k - 1];
            let from = (start - o) as usize;
            let to = len.map_or(b.len(), |l| from + l);
            if from <= b.len() && to <= b.len() {
                return Ok(b.slice(from..to));
            }
        }
        Err(parquet::errors::ParquetError::General(format!(
            "bytes at {start} (+{len:?}) were not fetched"
        )))
    }
}

impl Length for Fetched {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for Fetched {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(self.slice(start, None)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, Some(length))
    }
}

async fn read_footer(f: &File, path: &str) -> Result<ParquetMetaData, DatasetError> {
    let size = f.size();
    if size < FOOTER_BYTES + 4 {
        return Err(bad(path, format!("{size} bytes: too short for Parquet")));
    }
    let tail = f
        .pread(size - FOOTER_BYTES, FOOTER_BYTES as usize)
        .await
        .map_err(|e| DatasetError::from(e).context(path))?;
    let tail: [u8; 8] = tail[..]
        .try_into()
        .map_err(|_| bad(path, "short read of the footer"))?;
    let footer =
        FooterTail::try_from(tail).map_err(|e| bad(path, format!("not a Parquet file: {e}")))?;
    let meta_len = footer.metadata_length() as u64;
    if meta_len + FOOTER_BYTES + 4 > size || meta_len > limits::PARQUET_FOOTER_BYTES_MAX {
        return Err(bad(
            path,
            format!("footer of {meta_len} bytes in a file of {size}"),
        ));
    }
    let buf = f
        .pread(size - FOOTER_BYTES - meta_len, meta_len as usize)
        .await
        .map_err(|e| DatasetError::from(e).context(path))?;
    ParquetMetaDataReader::decode_metadata(&buf)
        .map_err(|e| bad(path, format!("Parquet footer: {e}")))
}

impl ParquetRows {
    /// Opens the Parquet files `paths` (all with the same schema) as one row set. `columns`
    /// picks root columns by name (read in the files' column order); `None` reads all.
    pub async fn open(
        client: &Client,
        paths: &[String],
        columns: Option<&[String]>,
    ) -> Result<ParquetRows, DatasetError> {
        if paths.is_empty() || paths.len() > limits::DATASET_FILES_MAX {
            return Err(DatasetError::InvalidOptions(format!(
                "{} files, expected 1..={}",
                paths.len(),
                limits::DATASET_FILES_MAX
            )));
        }
        let mut files = Vec::with_capacity(paths.len());
        let mut pq: Vec<PqFile> = Vec::with_capacity(paths.len());
        let mut starts = vec![0u64];
        let mut groups = Vec::new();
        for (k, p) in paths.iter().enumerate() {
            let f = client
                .open(p, OpenOptions::read())
                .await
                .map_err(|e| DatasetError::from(e).context(p))?;
            let md = read_footer(&f, p).await?;
            let meta = ArrowReaderMetadata::try_new(Arc::new(md), ArrowReaderOptions::new())
                .map_err(|e| bad(p, format!("Arrow schema: {e}")))?;
            if let Some(first) = pq.first()
                && first.meta.schema().fields() != meta.schema().fields()
            {
                return Err(bad(
                    p,
                    format!("schema differs from {}: {}", paths[0], meta.schema()),
                ));
            }
            for (g, rg) in meta.metadata().row_groups().iter().enumerate() {
                let rows = u64::try_from(rg.num_rows())
                    .map_err(|_| bad(p, format!("row group {g}: negative row count")))?;
                if rows == 0 {
                    continue;
                }
                groups.push((k as u32, g as u32));
                starts.push(starts.last().expect("starts at 0") + rows);
            }
            pq.push(PqFile {
                meta,
                size: f.size(),
            });
            files.push(Arc::new(f));
        }
        let schema = pq[0].meta.schema().clone();
        let columns: Vec<usize> = match columns {
            None => (0..schema.fields().len()).collect(),
            Some(names) => {
                let mut v = Vec::with_capacity(names.len());
                for n in names {
                    let (i, _) = schema.column_with_name(n).ok_or_else(|| {
                        DatasetError::InvalidOptions(format!(
                            "no column {n:?} in {} (columns: {})",
                            paths[0],
                            schema
                                .fields()
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                    v.push(i);
                }
                v.sort_unstable();
                v.dedup();
                v
            }
        };
        let schema = Arc::new(
            schema
                .project(&columns)
                .map_err(|e| DatasetError::InvalidOptions(e.to_string()))?,
        );
        Ok(ParquetRows {
            paths: paths.to_vec(),
            files,
            pq,
            starts,
            groups,
            columns,
            schema,
            bytes_requested: AtomicU64::new(0),
            rows_returned: AtomicU64::new(0),
        })
    }

    /// Rows in the set.
    pub fn len(&self) -> u64 {
        *self.starts.last().expect("starts at 0")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The schema of the batches returned (the projected columns).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Non-empty row groups over all files.
    pub fn row_groups(&self) -> usize {
        self.groups.len()
    }

    /// Bytes of column chunks asked of storage so far.
    pub fn bytes_requested(&self) -> u64 {
        self.bytes_requested.load(Ordering::Relaxed)
    }

    /// Rows returned so far (with `bytes_requested`, the read amplification).
    pub fn rows_returned(&self) -> u64 {
        self.rows_returned.load(Ordering::Relaxed)
    }

    /// (group number, row within the group) of row `index`.
    fn locate(&self, index: u64) -> Result<(usize, u64), DatasetError> {
        let len = self.len();
        if index >= len {
            return Err(DatasetError::OutOfRange { index, len });
        }
        let g = self.starts.partition_point(|s| *s <= index) - 1;
        Ok((g, index - self.starts[g]))
    }

    /// Reads rows `indices` (in that order, duplicates allowed) as one record batch.
    pub async fn read_rows(&self, indices: &[u64]) -> Result<RecordBatch, DatasetError> {
        if indices.len() > limits::BATCH_SAMPLES_MAX {
            return Err(DatasetError::InvalidOptions(format!(
                "{} rows in one batch, limit {}",
                indices.len(),
                limits::BATCH_SAMPLES_MAX
            )));
        }
        // 1. Rows wanted per group (sorted, distinct).
        let mut wanted: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        let mut located = Vec::with_capacity(indices.len());
        for &i in indices {
            let (g, r) = self.locate(i)?;
            wanted.entry(g).or_default().push(r);
            located.push((g, r));
        }
        for rows in wanted.values_mut() {
            rows.sort_unstable();
            rows.dedup();
        }
        // 2. The projected column chunks of every touched group, fetched together.
        let mut ranges = Vec::new();
        let mut owner = Vec::new();
        let mut total = 0u64;
        for &g in wanted.keys() {
            let (k, rg) = self.groups[g];
            let f = &self.pq[k as usize];
            let md = f.meta.metadata().row_group(rg as usize);
            let mask = ProjectionMask::roots(md.schema_descr(), self.columns.iter().copied());
            for (c, col) in md.columns().iter().enumerate() {
                if !mask.leaf_included(c) {
                    continue;
                }
                let (offset, len) = col.byte_range();
                if offset + len > f.size {
                    return Err(bad(
                        &self.paths[k as usize],
                        format!("row group {rg} column {c}: bytes {offset}+{len} past the end"),
                    ));
                }
                total += len;
                if total > limits::BATCH_BYTES_MAX {
                    return Err(DatasetError::InvalidOptions(format!(
                        "batch needs more than {} bytes of column chunks",
                        limits::BATCH_BYTES_MAX
                    )));
                }
                ranges.push(Range {
                    file: k,
                    offset,
                    len,
                    sample: self.starts[g],
                });
                owner.push(g);
            }
        }
        self.bytes_requested.fetch_add(total, Ordering::Relaxed);
        let got = fetch_ranges(&self.files, &self.paths, &ranges).await?;
        let mut parts: BTreeMap<usize, Vec<(u64, Bytes)>> = BTreeMap::new();
        for ((r, g), b) in ranges.iter().zip(&owner).zip(got) {
            parts.entry(*g).or_default().push((r.offset, b));
        }
        // 3. Decode the wanted rows of each group; remember where each group's rows start in
        //    the concatenation.
        let mut decoded = Vec::with_capacity(wanted.len());
        let mut first_out: BTreeMap<usize, usize> = BTreeMap::new();
        let mut out_rows = 0usize;
        for (g, rows) in &wanted {
            let (k, rg) = self.groups[*g];
            let f = &self.pq[k as usize];
            let mut p = parts.remove(g).unwrap_or_default();
            p.sort_by_key(|(o, _)| *o);
            let reader = Fetched {
                file_len: f.size,
                parts: p,
            };
            let path = &self.paths[k as usize];
            let mask = ProjectionMask::roots(
                f.meta.metadata().file_metadata().schema_descr(),
                self.columns.iter().copied(),
            );
            let batch = decode_rows(reader, f.meta.clone(), rg as usize, mask, rows)
                .map_err(|e| bad(path, format!("row group {rg}: {e}")))?;
            if batch.num_rows() != rows.len() {
                return Err(bad(
                    path,
                    format!(
                        "row group {rg}: decoded {} rows, wanted {}",
                        batch.num_rows(),
                        rows.len()
                    ),
                ));
            }
            first_out.insert(*g, out_rows);
            out_rows += batch.num_rows();
            decoded.push(batch);
        }
        // 4. The rows in the order asked.
        let all = arrow_select::concat::concat_batches(&self.schema, &decoded)
            .map_err(|e| DatasetError::InvalidOptions(format!("concat: {e}")))?;
        let take: UInt32Array = located
            .iter()
            .map(|(g, r)| {
                let rows = &wanted[g];
                let pos = rows
                    .binary_search(r)
                    .expect("wanted holds every located row");
                (first_out[g] + pos) as u32
            })
            .collect();
        let out = arrow_select::take::take_record_batch(&all, &take)
            .map_err(|e| DatasetError::InvalidOptions(format!("take: {e}")))?;
        self.rows_returned
            .fetch_add(indices.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Closes every file.
    pub async fn close(&self) -> Result<(), DatasetError> {
        for f in &self.files {
            f.close().await?;
        }
        Ok(())
    }
}

/// Decodes rows `rows` (sorted, distinct, within the group) of row group `rg`.
fn decode_rows(
    reader: Fetched,
    meta: ArrowReaderMetadata,
    rg: usize,
    mask: ProjectionMask,
    rows: &[u64],
) -> parquet::errors::Result<RecordBatch> {
    let group_rows = meta.metadata().row_group(rg).num_rows() as u64;
    let mut selectors = Vec::new();
    let mut at = 0u64;
    let mut k = 0;
    while k < rows.len() {
        let first = rows[k];
        let mut end = first + 1;
        k += 1;
        while k < rows.len() && rows[k] == end {
            end += 1;
            k += 1;
        }
        if first > at {
            selectors.push(RowSelector::skip((first - at) as usize));
        }
        selectors.push(RowSelector::select((end - first) as usize));
        at = end;
    }
    if at < group_rows {
        selectors.push(RowSelector::skip((group_rows - at) as usize));
    }
    let schema = Arc::new(meta.schema().project(&mask_roots(&meta, &mask))?);
    let r = ParquetRecordBatchReaderBuilder::new_with_metadata(reader, meta)
        .with_row_groups(vec![rg])
        .with_projection(mask)
        .with_row_selection(RowSelection::from(selectors))
        .with_batch_size(rows.len().max(1))
        .build()?;
    let mut batches = Vec::new();
    for b in r {
        batches.push(b?);
    }
    Ok(arrow_select::concat::concat_batches(&schema, &batches)?)
}

/// Root field numbers that `mask` includes (for the projected schema of an empty result).
fn mask_roots(meta: &ArrowReaderMetadata, mask: &ProjectionMask) -> Vec<usize> {
    let descr = meta.metadata().file_metadata().schema_descr();
    let mut roots: Vec<usize> = (0..descr.num_columns())
        .filter(|&c| mask.leaf_included(c))
        .map(|c| descr.get_column_root_idx(c))
        .collect();
    roots.dedup();
    roots
}

impl Source for ParquetRows {
    type Samples = RecordBatch;

    fn samples(&self) -> u64 {
        self.len()
    }

    async fn read(self: Arc<Self>, indices: Vec<u64>) -> Result<RecordBatch, DatasetError> {
        self.read_rows(&indices).await
    }
}

/// `batch` as an Arrow IPC stream (what the Python package hands to pyarrow).
pub fn to_ipc(batch: &RecordBatch) -> Result<Vec<u8>, DatasetError> {
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())
        .map_err(|e| DatasetError::InvalidOptions(format!("arrow ipc: {e}")))?;
    w.write(batch)
        .and_then(|_| w.finish())
        .map_err(|e| DatasetError::InvalidOptions(format!("arrow ipc: {e}")))?;
    drop(w);
    Ok(out)
}
