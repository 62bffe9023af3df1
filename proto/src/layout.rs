//! File layouts: how a file's chunks map to chains, and name/path validation.

use crate::error::{ErrorCode, PondError};
use crate::ids::{ChainId, ChainTableId, NodeId};
use crate::limits::*;
use serde::{Deserialize, Serialize};

/// The layout fixed for a file at create time.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Layout {
    pub chain_table: ChainTableId,
    /// Power of two in `CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX`.
    pub chunk_bytes: u32,
    /// Chunk `i` lives on `chains[i % chains.len()]`; `chains.len()` is the stripe.
    pub chains: Vec<ChainId>,
}

impl Layout {
    pub fn stripe(&self) -> u32 {
        self.chains.len() as u32
    }

    /// The chain holding chunk `index`.
    pub fn chain_of(&self, index: u64) -> ChainId {
        assert!(!self.chains.is_empty(), "layout without chains");
        self.chains[(index % self.chains.len() as u64) as usize]
    }

    /// Chunk index and offset within it for a file offset.
    pub fn locate(&self, offset: u64) -> (u64, u32) {
        let cb = self.chunk_bytes as u64;
        (offset / cb, (offset % cb) as u32)
    }

    pub fn validate(&self) -> Result<(), PondError> {
        validate_chunk_bytes(self.chunk_bytes)?;
        if self.chains.is_empty() || self.chains.len() > STRIPE_MAX as usize {
            return Err(PondError::new(
                ErrorCode::InvalidArgument,
                format!("stripe must be 1..={STRIPE_MAX}, got {}", self.chains.len()),
            ));
        }
        Ok(())
    }
}

/// The default layout a directory gives to new files created in it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DirLayout {
    pub chain_table: ChainTableId,
    pub chunk_bytes: u32,
    pub stripe: u32,
}

impl DirLayout {
    pub fn validate(&self) -> Result<(), PondError> {
        validate_chunk_bytes(self.chunk_bytes)?;
        if self.stripe == 0 || self.stripe > STRIPE_MAX {
            return Err(PondError::new(
                ErrorCode::InvalidArgument,
                format!("stripe must be 1..={STRIPE_MAX}, got {}", self.stripe),
            ));
        }
        Ok(())
    }
}

/// Where a writer would like a new file's chunks to go.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum PlacementHint {
    #[default]
    Any,
    /// Put the file (with stripe 1) on this chain.
    Chain(ChainId),
    /// Put the file on a chain whose head target lives on this node.
    HeadOnNode(NodeId),
}

fn validate_chunk_bytes(b: u32) -> Result<(), PondError> {
    if !b.is_power_of_two() || !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&b) {
        return Err(PondError::new(
            ErrorCode::InvalidArgument,
            format!(
                "chunk size must be a power of two in {CHUNK_BYTES_MIN}..={CHUNK_BYTES_MAX}, got {b}"
            ),
        ));
    }
    Ok(())
}

/// A directory entry name: 1..=255 bytes, no `/`, no NUL, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), PondError> {
    if name.len() > NAME_BYTES_MAX {
        return Err(PondError::new(
            ErrorCode::NameTooLong,
            format!("name is {} bytes, limit {NAME_BYTES_MAX}", name.len()),
        ));
    }
    if name.is_empty() || name == "." || name == ".." {
        return Err(PondError::new(
            ErrorCode::InvalidArgument,
            format!("invalid name {name:?}"),
        ));
    }
    if name.bytes().any(|b| b == b'/' || b == 0) {
        return Err(PondError::new(
            ErrorCode::InvalidArgument,
            format!("name {name:?} contains '/' or NUL"),
        ));
    }
    Ok(())
}

/// Split an absolute pond path into validated components. `..` is refused (no escapes);
/// `.` and empty components are skipped.
pub fn split_path(path: &str) -> Result<Vec<&str>, PondError> {
    if path.len() > PATH_BYTES_MAX {
        return Err(PondError::new(
            ErrorCode::NameTooLong,
            format!("path is {} bytes, limit {PATH_BYTES_MAX}", path.len()),
        ));
    }
    if !path.starts_with('/') {
        return Err(PondError::new(
            ErrorCode::InvalidArgument,
            format!("path {path:?} is not absolute"),
        ));
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        if c.is_empty() || c == "." {
            continue;
        }
        if c == ".." {
            return Err(PondError::new(
                ErrorCode::InvalidArgument,
                format!("path {path:?} contains '..'"),
            ));
        }
        validate_name(c)?;
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("a").is_ok());
        assert_eq!(
            validate_name("").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            validate_name(".").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            validate_name("..").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            validate_name("a/b").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            validate_name("a\0b").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert!(validate_name(&"x".repeat(255)).is_ok());
        assert_eq!(
            validate_name(&"x".repeat(256)).unwrap_err().code,
            ErrorCode::NameTooLong
        );
    }

    #[test]
    fn paths() {
        assert_eq!(split_path("/").unwrap(), Vec::<&str>::new());
        assert_eq!(split_path("/a//b/./c/").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(
            split_path("a/b").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            split_path("/a/../b").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        let long = format!("/{}", "a/".repeat(2100));
        assert_eq!(split_path(&long).unwrap_err().code, ErrorCode::NameTooLong);
    }

    #[test]
    fn layout_maps_chunks_round_robin() {
        let l = Layout {
            chain_table: ChainTableId(1),
            chunk_bytes: 1 << 20,
            chains: vec![ChainId(5), ChainId(2), ChainId(9)],
        };
        l.validate().unwrap();
        assert_eq!(l.chain_of(0), ChainId(5));
        assert_eq!(l.chain_of(4), ChainId(2));
        assert_eq!(l.locate((3 << 20) + 7), (3, 7));
        let bad = Layout {
            chunk_bytes: 3 << 20,
            ..l.clone()
        };
        assert_eq!(bad.validate().unwrap_err().code, ErrorCode::InvalidArgument);
    }
}
