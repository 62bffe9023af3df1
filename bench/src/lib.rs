//! `pond-bench`: benchmarks. Each suite prints its figures next to a baseline measured in the
//! same run on the same machine (the local disk, the FUSE floor, plain DuckDB), as a ratio:
//! absolute numbers on a shared 2-core machine are noisy, ratios are what to compare.
//!
//! - `meta`: create/stat/readdir/unlink rates against meta vs the local filesystem.
//! - `io`: the client library (and its batched API) vs the local disk (buffered, `O_DIRECT`).
//! - `dataplane`: storage nodes over in-memory targets, in-process, vs the cluster and the disk.
//! - `fuse`: a pond mount vs the passthrough floor (`passthrough`) vs the local directory.
//!
//! **Boundary:** benchmarks reach the cluster only through `client` (the in-memory data plane
//! starts its own storage nodes from the `storage` crate; it never touches a cluster).

pub mod dataplane;
pub mod fuse;
pub mod io;
pub mod loader;
pub mod meta;
pub mod passthrough;
pub mod posix;
pub mod report;
pub mod sort;
pub mod sql;
