//! Striping math: how a byte range of a file splits into pieces of chunks, and which chain each
//! chunk lives on (`Layout::chain_of`). Pure functions, unit-tested without a cluster.

use pond_proto::layout::Layout;

/// The part of one chunk that a file range covers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Piece {
    /// Chunk index within the file.
    pub index: u64,
    /// Offset of the piece inside the chunk.
    pub chunk_offset: u32,
    /// Bytes of the piece (never 0).
    pub len: u32,
    /// Offset of the piece inside the caller's range (buffer).
    pub buf_offset: usize,
}

impl Piece {
    /// File offset of the piece's first byte.
    pub fn file_offset(&self, chunk_bytes: u32) -> u64 {
        self.index * chunk_bytes as u64 + self.chunk_offset as u64
    }

    pub fn end_in_chunk(&self) -> u32 {
        self.chunk_offset + self.len
    }
}

/// Splits `[offset, offset + len)` into chunk pieces, in file order.
pub fn split(chunk_bytes: u32, offset: u64, len: usize) -> Pieces {
    assert!(
        chunk_bytes.is_power_of_two(),
        "chunk size is a power of two"
    );
    Pieces {
        chunk_bytes,
        next: offset,
        end: offset + len as u64,
        start: offset,
    }
}

pub struct Pieces {
    chunk_bytes: u32,
    start: u64,
    next: u64,
    end: u64,
}

impl Iterator for Pieces {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.next >= self.end {
            return None;
        }
        let cb = self.chunk_bytes as u64;
        let index = self.next / cb;
        let chunk_offset = (self.next % cb) as u32;
        let len = (cb - chunk_offset as u64).min(self.end - self.next) as u32;
        let p = Piece {
            index,
            chunk_offset,
            len,
            buf_offset: (self.next - self.start) as usize,
        };
        self.next += len as u64;
        Some(p)
    }
}

/// Number of chunks a file of `size` bytes spans.
pub fn chunk_count(chunk_bytes: u32, size: u64) -> u64 {
    size.div_ceil(chunk_bytes as u64)
}

/// What truncating a file to `size` does to its chunks: every chunk with index `>= remove_from`
/// is removed, and chunk `cut.0` (if any) is cut to `cut.1` bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TruncatePlan {
    pub remove_from: u64,
    pub cut: Option<(u64, u32)>,
}

pub fn truncate_plan(chunk_bytes: u32, size: u64) -> TruncatePlan {
    let cb = chunk_bytes as u64;
    let rem = (size % cb) as u32;
    if rem == 0 {
        TruncatePlan {
            remove_from: size / cb,
            cut: None,
        }
    } else {
        TruncatePlan {
            remove_from: size / cb + 1,
            cut: Some((size / cb, rem)),
        }
    }
}

/// The chains of a layout that hold at least one chunk of a file of `chunks` chunks, each once.
pub fn chains_touched(layout: &Layout, chunks: u64) -> Vec<pond_proto::ChainId> {
    let n = (layout.chains.len() as u64).min(chunks.max(1)) as usize;
    let mut v: Vec<_> = layout.chains[..n].to_vec();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use pond_proto::{ChainId, ChainTableId};
    use proptest::prelude::*;

    const CB: u32 = 64 << 10;

    #[test]
    fn split_within_one_chunk() {
        let v: Vec<_> = split(CB, 10, 100).collect();
        assert_eq!(
            v,
            vec![Piece {
                index: 0,
                chunk_offset: 10,
                len: 100,
                buf_offset: 0
            }]
        );
    }

    #[test]
    fn split_across_chunks() {
        let v: Vec<_> = split(CB, CB as u64 - 4, CB as usize + 8).collect();
        assert_eq!(
            v,
            vec![
                Piece {
                    index: 0,
                    chunk_offset: CB - 4,
                    len: 4,
                    buf_offset: 0
                },
                Piece {
                    index: 1,
                    chunk_offset: 0,
                    len: CB,
                    buf_offset: 4
                },
                Piece {
                    index: 2,
                    chunk_offset: 0,
                    len: 4,
                    buf_offset: CB as usize + 4
                },
            ]
        );
        assert_eq!(split(CB, 5, 0).count(), 0);
    }

    #[test]
    fn truncate_plans() {
        assert_eq!(
            truncate_plan(CB, 0),
            TruncatePlan {
                remove_from: 0,
                cut: None
            }
        );
        assert_eq!(
            truncate_plan(CB, CB as u64),
            TruncatePlan {
                remove_from: 1,
                cut: None
            }
        );
        assert_eq!(
            truncate_plan(CB, 5),
            TruncatePlan {
                remove_from: 1,
                cut: Some((0, 5))
            }
        );
        assert_eq!(
            truncate_plan(CB, 2 * CB as u64 + 1),
            TruncatePlan {
                remove_from: 3,
                cut: Some((2, 1))
            }
        );
    }

    #[test]
    fn chains_of_small_and_big_files() {
        let l = Layout {
            chain_table: ChainTableId(1),
            chunk_bytes: CB,
            chains: vec![ChainId(3), ChainId(1), ChainId(2)],
        };
        assert_eq!(chains_touched(&l, 0), vec![ChainId(3)]);
        assert_eq!(chains_touched(&l, 2), vec![ChainId(1), ChainId(3)]);
        assert_eq!(
            chains_touched(&l, 100),
            vec![ChainId(1), ChainId(2), ChainId(3)]
        );
        // Striping: chunk i on chains[i % stripe].
        let on: Vec<_> = (0..6).map(|i| l.chain_of(i).0).collect();
        assert_eq!(on, vec![3, 1, 2, 3, 1, 2]);
    }

    proptest! {
        #[test]
        fn pieces_tile_the_range(
            shift in 16u32..=20,
            offset in 0u64..(1 << 24),
            len in 0usize..(1 << 22),
        ) {
            let cb = 1u32 << shift;
            let pieces: Vec<_> = split(cb, offset, len).collect();
            let mut at = offset;
            let mut buf = 0usize;
            for p in &pieces {
                prop_assert!(p.len > 0);
                prop_assert!(p.end_in_chunk() <= cb);
                prop_assert_eq!(p.file_offset(cb), at);
                prop_assert_eq!(p.buf_offset, buf);
                at += p.len as u64;
                buf += p.len as usize;
            }
            prop_assert_eq!(buf, len);
            // Only the first and last piece may be partial chunks.
            for p in pieces.iter().skip(1).take(pieces.len().saturating_sub(2)) {
                prop_assert_eq!(p.chunk_offset, 0);
                prop_assert_eq!(p.len, cb);
            }
        }
    }
}
