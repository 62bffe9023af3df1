//! `pond-storage`: the storage server.
pub mod limits;
pub mod store;
