//! Latency recording, table printing and the JSON record shared by the suites.
//!
//! A table has one *subject* column (pond) and one or more *baseline* columns measured in the
//! same run; every row prints each column's rate (ops/s, or MiB/s when the phase moved bytes)
//! with p50/p99 latency per operation, then the subject's rate divided by each baseline's.
//! Every printed row is also recorded for `--json` ([`take_json`]).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

/// Latencies of one measured phase.
#[derive(Default, Clone)]
pub struct Samples {
    lat_ns: Vec<u64>,
    pub wall: Duration,
    /// Bytes moved by the phase; non-zero makes the rate MiB/s instead of ops/s.
    pub bytes: u64,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.lat_ns.push(d.as_nanos() as u64);
    }

    pub fn extend(&mut self, other: Samples) {
        self.lat_ns.extend(other.lat_ns);
        self.bytes += other.bytes;
    }

    pub fn count(&self) -> usize {
        self.lat_ns.len()
    }

    pub fn ops_per_sec(&self) -> f64 {
        if self.wall.is_zero() {
            0.0
        } else {
            self.count() as f64 / self.wall.as_secs_f64()
        }
    }

    pub fn mib_per_sec(&self) -> f64 {
        if self.wall.is_zero() {
            0.0
        } else {
            self.bytes as f64 / (1024.0 * 1024.0) / self.wall.as_secs_f64()
        }
    }

    /// The row's figure: MiB/s when bytes were counted, else ops/s.
    pub fn rate(&self) -> f64 {
        if self.bytes > 0 {
            self.mib_per_sec()
        } else {
            self.ops_per_sec()
        }
    }

    /// Percentile in microseconds (`p` in 0..=100).
    pub fn pct_us(&mut self, p: f64) -> f64 {
        if self.lat_ns.is_empty() {
            return 0.0;
        }
        self.lat_ns.sort_unstable();
        let idx = ((p / 100.0) * (self.lat_ns.len() - 1) as f64).round() as usize;
        self.lat_ns[idx] as f64 / 1000.0
    }
}

/// One row of the two-column (pond | baseline) tables of the meta suite.
pub struct Row {
    pub what: String,
    pub pond: Samples,
    pub base: Samples,
}

/// Prints a pond-vs-one-baseline table (the meta suite's shape).
pub fn print_table(title: &str, baseline_name: &str, rows: &mut [Row]) {
    let mut t = Table::new(title, &["pond", baseline_name]);
    for r in rows.iter() {
        t.row(&r.what, vec![Some(r.pond.clone()), Some(r.base.clone())]);
    }
    t.print();
}

/// A table: column 0 is the subject, the others are baselines.
pub struct Table {
    title: String,
    cols: Vec<String>,
    rows: Vec<(String, Vec<Option<Samples>>)>,
    notes: Vec<String>,
}

#[derive(Serialize)]
struct JsonCell {
    column: String,
    unit: &'static str,
    rate: f64,
    ops: usize,
    bytes: u64,
    wall_s: f64,
    p50_us: f64,
    p99_us: f64,
}

#[derive(Serialize)]
struct JsonRatio {
    vs: String,
    ratio: f64,
}

#[derive(Serialize)]
struct JsonRow {
    table: String,
    operation: String,
    cells: Vec<JsonCell>,
    ratios: Vec<JsonRatio>,
}

static JSON_ROWS: Mutex<Vec<JsonRow>> = Mutex::new(Vec::new());

/// Every row printed so far, as a JSON array (and forgets them).
pub fn take_json() -> serde_json::Value {
    let rows = std::mem::take(&mut *JSON_ROWS.lock().unwrap_or_else(|e| e.into_inner()));
    serde_json::to_value(rows).unwrap_or(serde_json::Value::Null)
}

const CELL_W: usize = 30;

impl Table {
    pub fn new(title: &str, cols: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            cols: cols.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row; `cells[i]` belongs to column `i` (`None`: not measured for that column).
    pub fn row(&mut self, what: &str, cells: Vec<Option<Samples>>) {
        self.rows.push((what.to_string(), cells));
    }

    /// A line printed under the table.
    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn print(mut self) {
        println!("\n== {} ==", self.title);
        let mut head = format!("{:<46} {:<5}", "operation", "unit");
        let mut sub = format!("{:<46} {:<5}", "", "");
        for c in &self.cols {
            let name: String = c.chars().take(CELL_W - 1).collect();
            head.push_str(&format!(" | {name:<w$}", w = CELL_W - 3));
            sub.push_str(&format!(
                " | {:>10} {:>7} {:>8}",
                "rate", "p50 us", "p99 us"
            ));
        }
        for c in self.cols.iter().skip(1) {
            let short: String = c.chars().take(10).collect();
            head.push_str(&format!(" | {short:>10}"));
            sub.push_str(&format!(" | {:>10}", "ratio"));
        }
        println!("{head}");
        println!("{sub}");
        let mut json = Vec::new();
        for (what, cells) in self.rows.iter_mut() {
            let unit = match cells.iter().flatten().next() {
                Some(s) if s.bytes > 0 => "MiB/s",
                _ => "ops/s",
            };
            let mut line = format!("{what:<46} {unit:<5}");
            let mut jcells = Vec::new();
            for (i, c) in cells.iter_mut().enumerate() {
                match c {
                    Some(s) => {
                        let (rate, p50, p99) = (s.rate(), s.pct_us(50.0), s.pct_us(99.0));
                        line.push_str(&format!(" | {rate:>10.1} {p50:>7.1} {p99:>8.1}"));
                        jcells.push(JsonCell {
                            column: self.cols.get(i).cloned().unwrap_or_default(),
                            unit,
                            rate,
                            ops: s.count(),
                            bytes: s.bytes,
                            wall_s: s.wall.as_secs_f64(),
                            p50_us: p50,
                            p99_us: p99,
                        });
                    }
                    None => line.push_str(&format!(" | {:>10} {:>7} {:>8}", "-", "-", "-")),
                }
            }
            for _ in cells.len()..self.cols.len() {
                line.push_str(&format!(" | {:>10} {:>7} {:>8}", "-", "-", "-"));
            }
            let subject = cells.first().and_then(|c| c.as_ref()).map(|s| s.rate());
            let mut ratios = Vec::new();
            for (i, c) in self.cols.iter().enumerate().skip(1) {
                let base = cells.get(i).and_then(|c| c.as_ref()).map(|s| s.rate());
                match (subject, base) {
                    (Some(p), Some(b)) if b > 0.0 => {
                        line.push_str(&format!(" | {:>10.2}", p / b));
                        ratios.push(JsonRatio {
                            vs: c.clone(),
                            ratio: p / b,
                        });
                    }
                    _ => line.push_str(&format!(" | {:>10}", "-")),
                }
            }
            println!("{line}");
            json.push(JsonRow {
                table: self.title.clone(),
                operation: what.clone(),
                cells: jcells,
                ratios,
            });
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
        JSON_ROWS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(json);
    }
}

/// A spinner naming the running phase, drawn only when stderr is a terminal.
pub fn progress(msg: &str) -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}") {
        pb.set_style(style);
    }
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}
