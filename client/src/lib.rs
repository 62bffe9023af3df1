//! `pond-client`: how programs reach a pond cluster. It owns the cluster file format, the
//! metadata client (leader failover, deadlines, retry budget), the data-plane transport
//! (`net`: the `Transport` trait, TCP, and RDMA behind the `rdma` feature), the routing cache
//! and the file API.
//!
//! **Invariant:** this crate never links DuckDB; training hosts build it without a C++ toolchain.

pub mod batch;
pub mod blocking;
mod cache;
pub mod client;
pub mod config;
pub mod dataframe;
pub mod dataset;
pub mod error;
pub mod file;
pub mod io;
pub mod limits;
pub mod meta_client;
pub mod net;
pub mod readahead;
pub mod routing;
pub mod service;
pub mod stripe;
pub mod wbuf;

pub use client::{Client, ClientOptions, OpenOptions};
pub use error::{ClientError, Result};
pub use file::{File, OpenMode};

#[cfg(test)]
mod file_tests;
#[cfg(test)]
mod testkit;
