//! `pond-proto`: the vocabulary every pond role shares — typed identifiers, file layouts,
//! the cluster map and routing table, namespace requests, error codes with their errno
//! mapping, the control-plane service definitions and the data-plane frame format.
//!
//! **Invariant:** this crate does no I/O and starts no runtime. It may be linked by anything.
//! **Invariant:** only types here (and versioned on-disk records in the crates that own them)
//! derive `Serialize`: each one is a compatibility promise.

pub mod cluster;
pub mod data;
pub mod error;
pub mod ids;
pub mod layout;
pub mod limits;
pub mod meta;
pub mod rpc;

pub use error::{ErrorCode, PondError};
pub use ids::*;
