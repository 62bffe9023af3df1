//! One task's DuckDB: an in-memory database per task, locked down before any task SQL runs.
//!
//! Lockdown, in this order (DuckDB v1.5.6, verified by the tests in `tests/it/compute.rs`):
//! 1. open with extension autoloading/installing off, `memory_limit`, `threads`;
//! 2. `allowed_directories` = the task's own directory, `temp_directory` inside it;
//! 3. `enable_external_access = false`: no file outside the allowed directory, no network, no
//!    `ATTACH`, no extension loading;
//! 4. `lock_configuration = true`: the task SQL cannot undo 1–3.

use crate::limits::TASK_SPILL_FACTOR;
use duckdb::types::ValueRef;
use duckdb::{Config, Connection, InterruptHandle};
use pond_client::dataframe::wire::{FailureKind, RowSet, TaskLimits, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct EngineError {
    pub kind: FailureKind,
    pub message: String,
}

impl EngineError {
    fn internal(message: impl Into<String>) -> EngineError {
        EngineError {
            kind: FailureKind::Internal,
            message: message.into(),
        }
    }
}

/// Sorts a DuckDB error into what the caller acts on.
fn classify(e: duckdb::Error) -> EngineError {
    let message = e.to_string();
    let kind = if message.contains("Out of Memory") || message.contains("memory limit") {
        FailureKind::MemoryLimit
    } else if message.contains("Permission Error")
        || message.contains("disabled by configuration")
        || message.contains("disabled through configuration")
        || message.contains("configuration has been locked")
        || message.contains("lock_configuration")
    {
        FailureKind::Refused
    } else if message.contains("INTERRUPT") || message.contains("nterrupted") {
        FailureKind::Cancelled
    } else {
        FailureKind::Sql
    };
    EngineError { kind, message }
}

pub enum EngineOutput {
    ArrowIpc,
    Rows,
    /// `COPY (…) TO` this file, which must lie inside the task directory.
    ParquetFile(PathBuf),
    /// Rows split by the integer SQL expression `by` into `n` Parquet files `dir/b.parquet`
    /// (`dir` inside the task directory; every bucket gets a file, empty ones too).
    Buckets {
        dir: PathBuf,
        by: String,
        n: u32,
    },
}

pub enum EngineResult {
    ArrowIpc {
        bytes: Vec<u8>,
        rows: u64,
    },
    Rows(RowSet),
    Parquet {
        rows: u64,
    },
    /// `files[b]` holds bucket `b`.
    Buckets {
        rows: u64,
        files: Vec<PathBuf>,
    },
}

pub struct Engine {
    conn: Connection,
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Engine {
    /// A locked-down DuckDB that may read and write only under `dir`.
    pub fn open(dir: &Path, limits: &TaskLimits) -> Result<Engine, EngineError> {
        let dir = dir
            .canonicalize()
            .map_err(|e| EngineError::internal(format!("canonicalize {}: {e}", dir.display())))?;
        let dir_s = dir
            .to_str()
            .ok_or_else(|| EngineError::internal("task dir is not UTF-8"))?;
        let spill = dir.join("spill");
        std::fs::create_dir_all(&spill)
            .map_err(|e| EngineError::internal(format!("create {}: {e}", spill.display())))?;
        let config = Config::default()
            .enable_autoload_extension(false)
            .and_then(|c| c.with("autoinstall_known_extensions", "false"))
            .and_then(|c| c.with("allow_community_extensions", "false"))
            .and_then(|c| c.threads(i64::from(limits.threads.max(1))))
            .and_then(|c| c.max_memory(&format!("{}B", limits.memory_bytes)))
            .map_err(classify)?;
        let conn = Connection::open_in_memory_with_flags(config).map_err(classify)?;
        let spill_bytes = limits.memory_bytes.saturating_mul(TASK_SPILL_FACTOR);
        let setup = format!(
            "SET allowed_directories = [{dir}]; \
             SET temp_directory = {spill}; \
             SET max_temp_directory_size = '{spill_bytes}B'; \
             SET enable_external_access = false; \
             SET lock_configuration = true;",
            dir = sql_string(&format!("{dir_s}/")),
            spill = sql_string(spill.to_str().expect("child of a UTF-8 path is UTF-8")),
        );
        conn.execute_batch(&setup).map_err(|e| {
            let mut e = classify(e);
            e.kind = FailureKind::Internal;
            e.message = format!("lock down DuckDB: {}", e.message);
            e
        })?;
        Ok(Engine { conn })
    }

    /// Interrupts the running query from another thread (deadline, cancellation).
    pub fn interrupt_handle(&self) -> Arc<InterruptHandle> {
        self.conn.interrupt_handle()
    }

    /// Runs one SELECT (already substituted) and shapes its result.
    pub fn run(
        &self,
        sql: &str,
        output: &EngineOutput,
        result_bytes_max: usize,
    ) -> Result<EngineResult, EngineError> {
        match output {
            EngineOutput::ParquetFile(path) => {
                let p = path
                    .to_str()
                    .ok_or_else(|| EngineError::internal("output path is not UTF-8"))?;
                // DuckDB writes HUGEINT to Parquet as DOUBLE; DECIMAL(38,0) keeps integer sums
                // exact through intermediate files (read back as DECIMAL, returned as HUGEINT).
                let sql = self.recast(strip_semicolon(sql), |t| {
                    matches!(t, "HUGEINT" | "UHUGEINT").then_some("DECIMAL(38,0)")
                })?;
                let copy = format!("COPY ({sql}) TO {} (FORMAT parquet)", sql_string(p));
                let rows = self.conn.execute(&copy, []).map_err(classify)?;
                Ok(EngineResult::Parquet { rows: rows as u64 })
            }
            EngineOutput::Buckets { dir, by, n } => {
                let sql = self.recast(strip_semicolon(sql), |t| {
                    matches!(t, "HUGEINT" | "UHUGEINT").then_some("DECIMAL(38,0)")
                })?;
                std::fs::create_dir_all(dir)
                    .map_err(|e| EngineError::internal(format!("create {}: {e}", dir.display())))?;
                let parts = dir.join("parts");
                let d = parts
                    .to_str()
                    .ok_or_else(|| EngineError::internal("output path is not UTF-8"))?;
                let copy = format!(
                    "COPY (SELECT *, CAST(({by}) AS BIGINT) AS __pond_bucket FROM ({sql})) TO {} \
                     (FORMAT parquet, PARTITION_BY (__pond_bucket))",
                    sql_string(d)
                );
                let rows = self.conn.execute(&copy, []).map_err(classify)? as u64;
                let mut files: Vec<Option<PathBuf>> = vec![None; *n as usize];
                if parts.exists() {
                    let entries = std::fs::read_dir(&parts)
                        .map_err(|e| EngineError::internal(format!("list buckets: {e}")))?;
                    for e in entries.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let b = name
                            .strip_prefix("__pond_bucket=")
                            .and_then(|b| b.parse::<i64>().ok());
                        let b = match b {
                            Some(b) if (0..i64::from(*n)).contains(&b) => b as usize,
                            _ => {
                                return Err(EngineError {
                                    kind: FailureKind::Sql,
                                    message: format!(
                                        "bucket expression `{by}` gave {name:?}, outside 0..{n}"
                                    ),
                                });
                            }
                        };
                        let mut inside: Vec<PathBuf> = std::fs::read_dir(e.path())
                            .map_err(|e| EngineError::internal(format!("list bucket: {e}")))?
                            .flatten()
                            .map(|f| f.path())
                            .collect();
                        inside.sort();
                        if inside.len() != 1 {
                            // Several files for one bucket: merge them into one.
                            let merged = dir.join(format!("merged-{b}.parquet"));
                            let list: Vec<String> = inside
                                .iter()
                                .map(|p| sql_string(p.to_str().unwrap_or_default()))
                                .collect();
                            self.conn
                                .execute(
                                    &format!(
                                        "COPY (SELECT * FROM read_parquet([{}])) TO {} (FORMAT parquet)",
                                        list.join(", "),
                                        sql_string(merged.to_str().unwrap_or_default())
                                    ),
                                    [],
                                )
                                .map_err(classify)?;
                            files[b] = Some(merged);
                        } else {
                            files[b] = inside.pop();
                        }
                    }
                }
                let mut out = Vec::with_capacity(files.len());
                let empty = dir.join("empty.parquet");
                for f in files {
                    match f {
                        Some(f) => out.push(f),
                        None => {
                            if !empty.exists() {
                                let e = empty.to_str().unwrap_or_default();
                                self.conn
                                    .execute(
                                        &format!(
                                            "COPY (SELECT * FROM ({sql}) LIMIT 0) TO {} (FORMAT parquet)",
                                            sql_string(e)
                                        ),
                                        [],
                                    )
                                    .map_err(classify)?;
                            }
                            out.push(empty.clone());
                        }
                    }
                }
                Ok(EngineResult::Buckets { rows, files: out })
            }
            EngineOutput::ArrowIpc => {
                let mut stmt = self.conn.prepare(sql).map_err(classify)?;
                let arrow = stmt.query_arrow([]).map_err(classify)?;
                let schema = arrow.get_schema();
                let mut buf = Vec::new();
                let mut rows = 0u64;
                {
                    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema)
                        .map_err(|e| EngineError::internal(format!("arrow ipc: {e}")))?;
                    for batch in arrow {
                        rows += batch.num_rows() as u64;
                        w.write(&batch)
                            .map_err(|e| EngineError::internal(format!("arrow ipc: {e}")))?;
                        if w.get_ref().len() > result_bytes_max {
                            return Err(too_big(result_bytes_max));
                        }
                    }
                    w.finish()
                        .map_err(|e| EngineError::internal(format!("arrow ipc: {e}")))?;
                }
                Ok(EngineResult::ArrowIpc { bytes: buf, rows })
            }
            EngineOutput::Rows => {
                // Whole-number decimals wider than BIGINT (integer sums that went through
                // Parquet) come back as HUGEINT, as single-process DuckDB would type them.
                let sql = self.recast(strip_semicolon(sql), |t| {
                    let scale0 = t.starts_with("DECIMAL(") && t.ends_with(",0)");
                    let width: u32 = t
                        .trim_start_matches("DECIMAL(")
                        .split(',')
                        .next()
                        .and_then(|w| w.parse().ok())
                        .unwrap_or(0);
                    (scale0 && width > 18).then_some("HUGEINT")
                })?;
                let mut stmt = self.conn.prepare(&sql).map_err(classify)?;
                let mut rows = stmt.query([]).map_err(classify)?;
                let mut set = RowSet {
                    columns: rows.as_ref().map(|s| s.column_names()).unwrap_or_default(),
                    rows: Vec::new(),
                };
                let mut approx_bytes = 0usize;
                while let Some(row) = rows.next().map_err(classify)? {
                    let mut out = Vec::with_capacity(set.columns.len());
                    for i in 0..set.columns.len() {
                        let v = value_of(row.get_ref(i).map_err(classify)?);
                        approx_bytes += 16
                            + match &v {
                                Value::Text(s) => s.len(),
                                Value::Blob(b) => b.len(),
                                _ => 0,
                            };
                        out.push(v);
                    }
                    if approx_bytes > result_bytes_max {
                        return Err(too_big(result_bytes_max));
                    }
                    set.rows.push(out);
                }
                Ok(EngineResult::Rows(set))
            }
        }
    }
}

impl Engine {
    /// `sql` wrapped so that every output column whose DuckDB type `to` maps is cast to the
    /// type it returns; `sql` itself when none is. Reads the types with `DESCRIBE`. A
    /// statement that is not a query (DESCRIBE fails on it) is returned as it is.
    fn recast(
        &self,
        sql: &str,
        to: impl Fn(&str) -> Option<&'static str>,
    ) -> Result<String, EngineError> {
        let Ok(mut stmt) = self.conn.prepare(&format!("DESCRIBE {sql}")) else {
            return Ok(sql.to_string());
        };
        let Ok(rows) = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        else {
            return Ok(sql.to_string());
        };
        let cols: Vec<(String, String)> = rows.filter_map(|r| r.ok()).collect();
        let casts: Vec<String> = cols
            .iter()
            .filter_map(|(name, ty)| {
                to(ty).map(|t| {
                    let q = format!("\"{}\"", name.replace('"', "\"\""));
                    format!("CAST({q} AS {t}) AS {q}")
                })
            })
            .collect();
        if casts.is_empty() {
            return Ok(sql.to_string());
        }
        Ok(format!(
            "SELECT * REPLACE ({}) FROM ({sql})",
            casts.join(", ")
        ))
    }
}

fn too_big(max: usize) -> EngineError {
    EngineError {
        kind: FailureKind::Sql,
        message: format!(
            "result exceeds {max} bytes: write it as Parquet into pond (write_parquet) instead"
        ),
    }
}

fn strip_semicolon(sql: &str) -> &str {
    sql.trim().trim_end_matches(';').trim_end()
}

/// DuckDB's value as a plain [`Value`]. Decimals, dates, times and nested types arrive as
/// text (their Debug rendering in duckdb-rs).
pub fn value_of(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Boolean(b) => Value::Bool(b),
        ValueRef::TinyInt(x) => Value::Int(x.into()),
        ValueRef::SmallInt(x) => Value::Int(x.into()),
        ValueRef::Int(x) => Value::Int(x.into()),
        ValueRef::BigInt(x) => Value::Int(x),
        ValueRef::HugeInt(x) => Value::HugeInt(x),
        ValueRef::UTinyInt(x) => Value::UInt(x.into()),
        ValueRef::USmallInt(x) => Value::UInt(x.into()),
        ValueRef::UInt(x) => Value::UInt(x.into()),
        ValueRef::UBigInt(x) => Value::UInt(x),
        ValueRef::Float(x) => Value::Float(x.into()),
        ValueRef::Double(x) => Value::Float(x),
        ValueRef::Decimal(d) => Value::Text(d.to_string()),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        other => Value::Text(format!("{other:?}")),
    }
}

/// Runs `sql` in an unrestricted in-process DuckDB (no lockdown; for tests and tools comparing
/// pond's answers with single-process DuckDB) and returns its rows.
pub fn local_rows(sql: &str) -> Result<RowSet, EngineError> {
    let conn = Connection::open_in_memory().map_err(classify)?;
    let e = Engine { conn };
    match e.run(sql, &EngineOutput::Rows, usize::MAX)? {
        EngineResult::Rows(r) => Ok(r),
        _ => unreachable!("asked for rows"),
    }
}

/// Runs statements in an unrestricted in-process DuckDB (test data generation).
pub fn local_exec(sql: &str) -> Result<(), EngineError> {
    let conn = Connection::open_in_memory().map_err(classify)?;
    conn.execute_batch(sql).map_err(classify)
}
