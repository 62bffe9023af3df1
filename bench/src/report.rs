//! Latency recording and table printing shared by the suites.

use std::time::Duration;

/// Latencies of one measured phase.
#[derive(Default, Clone)]
pub struct Samples {
    lat_ns: Vec<u64>,
    pub wall: Duration,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.lat_ns.push(d.as_nanos() as u64);
    }

    pub fn extend(&mut self, other: Samples) {
        self.lat_ns.extend(other.lat_ns);
    }

    pub fn count(&self) -> usize {
        self.lat_ns.len()
    }

    pub fn ops_per_sec(&self) -> f64 {
        if self.wall.is_zero() { 0.0 } else { self.count() as f64 / self.wall.as_secs_f64() }
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

/// One row: the pond figure, its baseline, and the ratio.
pub struct Row {
    pub what: String,
    pub pond: Samples,
    pub base: Samples,
}

pub fn print_table(title: &str, baseline_name: &str, rows: &mut [Row]) {
    println!("\n== {title} ==");
    println!(
        "{:<34} {:>11} {:>9} {:>9} | {:>11} {:>9} {:>9} | {:>6}",
        "operation",
        "pond ops/s",
        "p50 us",
        "p99 us",
        format!("{baseline_name} ops/s"),
        "p50 us",
        "p99 us",
        "ratio"
    );
    for r in rows.iter_mut() {
        let (p, b) = (r.pond.ops_per_sec(), r.base.ops_per_sec());
        println!(
            "{:<34} {:>11.0} {:>9.1} {:>9.1} | {:>11.0} {:>9.1} {:>9.1} | {:>6.2}",
            r.what,
            p,
            r.pond.pct_us(50.0),
            r.pond.pct_us(99.0),
            b,
            r.base.pct_us(50.0),
            r.base.pct_us(99.0),
            if b > 0.0 { p / b } else { 0.0 }
        );
    }
}
