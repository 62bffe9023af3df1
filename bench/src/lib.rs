//! `pond-bench`: benchmarks. Each suite prints its figures next to a baseline measured in the
//! same run on the same machine (the local disk, the FUSE floor, plain DuckDB), as a ratio:
//! absolute numbers on a shared 2-core machine are noisy, ratios are what to compare.
//!
//! **Boundary:** benchmarks reach the cluster only through `client`.

pub mod meta;
pub mod report;
