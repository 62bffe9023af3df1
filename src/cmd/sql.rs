//! `pond sql`: SQL over Parquet files in pond, run near the data by the storage nodes' DuckDB
//! executors (the client library's DataFrame planner; docs/compute.md).
//!
//! ```text
//! pond sql "SELECT k, sum(v) FROM read_parquet('/data/*.parquet') GROUP BY k"
//! pond sql --input '/data/*.parquet' --partial "SELECT … FROM {0} …" --final "SELECT … FROM {0}"
//! pond sql --explain "…"          # the plan, nothing runs
//! ```

use anyhow::{Context, Result, bail};
use pond_client::Client;
use pond_client::dataframe::wire::{RowSet, TaskLimits, Value};
use pond_client::dataframe::{DataFrame, Session, SessionOptions};
use std::path::Path;
use std::sync::Arc;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct SqlArgs {
    /// One statement: `SELECT … FROM read_parquet('/pond/glob/*.parquet') …`.
    pub statement: Option<String>,
    /// Explicit mode: the files of `{0}` (a pond glob).
    #[arg(long, requires = "partial")]
    pub input: Option<String>,
    /// Explicit mode: SQL run per partition (file) of `--input`, `{0}` = that partition.
    #[arg(long, requires = "input")]
    pub partial: Option<String>,
    /// Explicit mode: SQL run once over all partial results (`{0}`); default `SELECT * FROM {0}`.
    #[arg(long = "final", requires = "partial")]
    pub final_sql: Option<String>,
    /// Print the plan instead of running it.
    #[arg(long)]
    pub explain: bool,
    /// Output format (csv has a header row; json is an array of objects).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Print which node ran each task, and how long it took, to stderr.
    #[arg(long)]
    pub tasks: bool,
    /// Memory limit per task in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory_mib: u64,
    /// Deadline per task in seconds.
    #[arg(long, default_value_t = 300)]
    pub deadline_secs: u64,
}

pub fn run(cluster: Option<&Path>, args: SqlArgs) -> Result<()> {
    let cf = super::load_cluster(cluster)?;
    super::runtime()?.block_on(async move {
        let client = Arc::new(Client::connect(&cf).await.context("connect")?);
        let limits = TaskLimits {
            memory_bytes: args.memory_mib << 20,
            deadline_ms: args.deadline_secs * 1000,
            ..TaskLimits::default()
        };
        let s = Session::new(client, &cf.token, SessionOptions { limits }).await?;
        let df = frame(&s, &args)?;
        if args.explain {
            print!("{}", df.explain());
            println!("executors: {:?}", s.executors());
            return Ok(());
        }
        if s.executors().is_empty() {
            bail!(
                "no compute executor registered: the storage nodes run without DuckDB \
                 (built with --no-default-features?) — see docs/compute.md"
            );
        }
        let rows = df.collect().await?;
        let mut out = std::io::stdout().lock();
        write_rows(&mut out, &rows, args.format)?;
        if args.tasks {
            for t in s.task_log() {
                eprintln!(
                    "task {}#{} node {} attempts {} rows {} {} ms (input {} B, {} B local; fetch {} ms, query {} ms)",
                    t.stage,
                    t.task,
                    t.node,
                    t.attempts,
                    t.rows,
                    t.elapsed_ms,
                    t.stats.input_bytes,
                    t.stats.input_local_bytes,
                    t.stats.fetch_ms,
                    t.stats.query_ms
                );
            }
        }
        Ok(())
    })
}

fn frame(s: &Session, args: &SqlArgs) -> Result<DataFrame> {
    match (&args.statement, &args.input, &args.partial) {
        (None, Some(input), Some(partial)) => {
            let df = s.read_parquet(input).partial_sql(partial);
            Ok(df.sql(args.final_sql.as_deref().unwrap_or("SELECT * FROM {0}")))
        }
        (Some(st), None, None) => Ok(s.sql(st)?),
        _ => bail!("give either one statement or --input with --partial [--final]"),
    }
}

fn cell(v: &Value) -> String {
    v.to_string()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn json_value(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(x) => J::from(*x),
        Value::UInt(x) => J::from(*x),
        Value::HugeInt(x) => match i64::try_from(*x) {
            Ok(x) => J::from(x),
            Err(_) => J::String(x.to_string()),
        },
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or_else(|| J::String(f.to_string())),
        Value::Text(t) => J::String(t.clone()),
        Value::Blob(_) => J::String(v.to_string()),
    }
}

/// Writes `rows` in `format`.
pub fn write_rows(out: &mut impl std::io::Write, rows: &RowSet, format: Format) -> Result<()> {
    match format {
        Format::Csv => {
            let head: Vec<String> = rows.columns.iter().map(|c| csv_field(c)).collect();
            writeln!(out, "{}", head.join(","))?;
            for r in &rows.rows {
                let line: Vec<String> = r
                    .iter()
                    .map(|v| match v {
                        Value::Null => String::new(),
                        v => csv_field(&cell(v)),
                    })
                    .collect();
                writeln!(out, "{}", line.join(","))?;
            }
        }
        Format::Json => {
            let arr: Vec<serde_json::Value> = rows
                .rows
                .iter()
                .map(|r| {
                    let obj: serde_json::Map<String, serde_json::Value> = rows
                        .columns
                        .iter()
                        .cloned()
                        .zip(r.iter().map(json_value))
                        .collect();
                    serde_json::Value::Object(obj)
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&arr)?)?;
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rows
                .rows
                .iter()
                .map(|r| r.iter().map(cell).collect())
                .collect();
            let mut w: Vec<usize> = rows.columns.iter().map(|c| c.chars().count()).collect();
            for r in &cells {
                for (i, c) in r.iter().enumerate() {
                    if i < w.len() {
                        w[i] = w[i].max(c.chars().count());
                    }
                }
            }
            let line = |vals: &[String]| -> String {
                vals.iter()
                    .enumerate()
                    .map(|(i, v)| format!("{v:<width$}", width = w.get(i).copied().unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join(" | ")
                    .trim_end()
                    .to_string()
            };
            writeln!(out, "{}", line(&rows.columns))?;
            writeln!(
                out,
                "{}",
                w.iter()
                    .map(|n| "-".repeat(*n))
                    .collect::<Vec<_>>()
                    .join("-+-")
            )?;
            for r in &cells {
                writeln!(out, "{}", line(r))?;
            }
            writeln!(out, "({} rows)", rows.rows.len())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RowSet {
        RowSet {
            columns: vec!["k".into(), "s".into()],
            rows: vec![
                vec![Value::Int(1), Value::Text("a,b".into())],
                vec![Value::HugeInt(1 << 70), Value::Null],
            ],
        }
    }

    #[test]
    fn csv_quotes_and_header() {
        let mut b = Vec::new();
        write_rows(&mut b, &sample(), Format::Csv).unwrap();
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "k,s\n1,\"a,b\"\n1180591620717411303424,\n"
        );
    }

    #[test]
    fn json_objects() {
        let mut b = Vec::new();
        write_rows(&mut b, &sample(), Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v[0]["k"], 1);
        assert_eq!(v[0]["s"], "a,b");
        assert_eq!(v[1]["k"], "1180591620717411303424");
        assert!(v[1]["s"].is_null());
    }

    #[test]
    fn table_aligns() {
        let mut b = Vec::new();
        write_rows(&mut b, &sample(), Format::Table).unwrap();
        let s = String::from_utf8(b).unwrap();
        assert!(
            s.starts_with("k                      | s\n-----------------------+-----\n"),
            "{s}"
        );
        assert!(s.contains("\n1180591620717411303424 | NULL\n"), "{s}");
        assert!(s.ends_with("(2 rows)\n"));
    }
}
