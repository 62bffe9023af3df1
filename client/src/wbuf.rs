//! Write-behind buffer of one open inode: dirty byte ranges kept per chunk, merged as they
//! arrive, handed out as chunk pieces when a chunk is complete, when the buffer is full, or when
//! the caller forces a flush (fsync, close, a read of a dirty range, truncate).
//!
//! Pure data structure (no I/O); the ordering of pieces on the wire is the caller's job
//! (`file::OpenInode` chains writes of one chunk one after the other).

use crate::limits::{
    WRITE_EXTENTS_PER_CHUNK_MAX, WRITE_SEQUENTIAL_RESERVE_MAX, WRITE_SEQUENTIAL_RESERVE_MIN,
};
use crate::stripe;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;

/// One contiguous dirty range inside a chunk.
#[derive(Debug)]
struct Extent {
    offset: u32,
    data: BytesMut,
}

impl Extent {
    fn end(&self) -> u32 {
        self.offset + self.data.len() as u32
    }
}

/// A piece ready to be written: `data` at `offset` of chunk `index`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DirtyPiece {
    pub index: u64,
    pub offset: u32,
    pub data: Bytes,
}

#[derive(Debug)]
pub struct WriteBuffer {
    chunk_bytes: u32,
    /// Chunk index → sorted, disjoint, non-adjacent extents.
    chunks: BTreeMap<u64, Vec<Extent>>,
    bytes: usize,
}

impl WriteBuffer {
    pub fn new(chunk_bytes: u32) -> WriteBuffer {
        assert!(
            chunk_bytes.is_power_of_two(),
            "chunk size is a power of two"
        );
        WriteBuffer {
            chunk_bytes,
            chunks: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Dirty bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// End offset (in the file) of the last dirty byte.
    pub fn end(&self) -> Option<u64> {
        let (i, ext) = self.chunks.iter().next_back()?;
        let last = ext.last().expect("no empty extent lists");
        Some(i * self.chunk_bytes as u64 + last.end() as u64)
    }

    /// Records `data` at file offset `offset`; newer bytes replace older ones.
    pub fn insert(&mut self, offset: u64, data: &[u8]) {
        for p in stripe::split(self.chunk_bytes, offset, data.len()) {
            let bytes = &data[p.buf_offset..p.buf_offset + p.len as usize];
            let ext = self.chunks.entry(p.index).or_default();
            self.bytes =
                self.bytes + bytes.len() - merge(ext, p.chunk_offset, bytes, self.chunk_bytes);
        }
    }

    /// Takes the chunks that are worth sending now: wholly dirty chunks (a full-chunk write is
    /// the cheapest update) and chunks fragmented past `WRITE_EXTENTS_PER_CHUNK_MAX`.
    pub fn take_ready(&mut self) -> Vec<DirtyPiece> {
        let cb = self.chunk_bytes;
        let ready: Vec<u64> = self
            .chunks
            .iter()
            .filter(|(_, ext)| {
                ext.len() > WRITE_EXTENTS_PER_CHUNK_MAX
                    || (ext.len() == 1 && ext[0].offset == 0 && ext[0].end() == cb)
            })
            .map(|(i, _)| *i)
            .collect();
        self.take_indices(ready)
    }

    /// Takes everything.
    pub fn take_all(&mut self) -> Vec<DirtyPiece> {
        let all: Vec<u64> = self.chunks.keys().copied().collect();
        self.take_indices(all)
    }

    /// Takes every chunk that has dirty bytes inside `[offset, offset + len)`.
    pub fn take_overlapping(&mut self, offset: u64, len: u64) -> Vec<DirtyPiece> {
        let hit: Vec<u64> = self
            .chunks
            .iter()
            .filter(|(i, ext)| {
                let base = **i * self.chunk_bytes as u64;
                ext.iter().any(|e| {
                    let (s, t) = (base + e.offset as u64, base + e.end() as u64);
                    s < offset + len && offset < t
                })
            })
            .map(|(i, _)| *i)
            .collect();
        self.take_indices(hit)
    }

    /// Drops dirty bytes at or beyond `size` (truncate). Returns the bytes dropped.
    pub fn truncate(&mut self, size: u64) -> usize {
        let cb = self.chunk_bytes as u64;
        let mut dropped = 0usize;
        let beyond: Vec<u64> = self.chunks.range(size / cb..).map(|(i, _)| *i).collect();
        for i in beyond {
            let base = i * cb;
            let ext = self.chunks.get_mut(&i).expect("listed above");
            if base >= size {
                dropped += ext.iter().map(|e| e.data.len()).sum::<usize>();
                self.chunks.remove(&i);
                continue;
            }
            let cut = (size - base) as u32;
            ext.retain_mut(|e| {
                if e.offset >= cut {
                    dropped += e.data.len();
                    false
                } else {
                    if e.end() > cut {
                        dropped += (e.end() - cut) as usize;
                        e.data.truncate((cut - e.offset) as usize);
                    }
                    true
                }
            });
            if ext.is_empty() {
                self.chunks.remove(&i);
            }
        }
        self.bytes -= dropped;
        dropped
    }

    /// Copies dirty bytes that fall inside `[offset, offset + buf.len())` over `buf`
    /// (read-your-writes without a flush). Returns the end offset of the last byte copied.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) -> Option<u64> {
        let cb = self.chunk_bytes as u64;
        let end = offset + buf.len() as u64;
        let mut last = None;
        for (i, ext) in self.chunks.range(offset / cb..end.div_ceil(cb)) {
            let base = i * cb;
            for e in ext {
                let (s, t) = (base + e.offset as u64, base + e.end() as u64);
                let (from, to) = (s.max(offset), t.min(end));
                if from < to {
                    buf[(from - offset) as usize..(to - offset) as usize]
                        .copy_from_slice(&e.data[(from - s) as usize..(to - s) as usize]);
                    last = Some(last.unwrap_or(0).max(to));
                }
            }
        }
        last
    }

    fn take_indices(&mut self, indices: Vec<u64>) -> Vec<DirtyPiece> {
        let mut out = Vec::new();
        for i in indices {
            let ext = self
                .chunks
                .remove(&i)
                .expect("caller listed existing chunks");
            for e in ext {
                self.bytes -= e.data.len();
                out.push(DirtyPiece {
                    index: i,
                    offset: e.offset,
                    data: e.data.freeze(),
                });
            }
        }
        out
    }
}

/// Merges `data` at `offset` into the sorted extent list of one chunk. Returns how many bytes
/// of older extents the new data replaced (so the caller can keep the byte count).
fn merge(ext: &mut Vec<Extent>, offset: u32, data: &[u8], chunk_bytes: u32) -> usize {
    let end = offset + data.len() as u32;
    assert!(end <= chunk_bytes, "piece within its chunk");
    // Extents that overlap or touch [offset, end).
    let first = ext.partition_point(|e| e.end() < offset);
    let last = ext.partition_point(|e| e.offset <= end);
    // Room a sequential writer will want after `end`, up to the chunk's end: grown once instead
    // of doubling (each doubling copied the extent and faulted in fresh pages), bounded by
    // `WRITE_SEQUENTIAL_RESERVE_MAX` beyond the bytes held.
    let room = |held: usize| {
        let to_end = (chunk_bytes - end) as usize;
        to_end
            .min(held.max(WRITE_SEQUENTIAL_RESERVE_MIN) * 3)
            .min(WRITE_SEQUENTIAL_RESERVE_MAX)
    };
    if first == last {
        let mut d = BytesMut::new();
        if data.len() >= WRITE_SEQUENTIAL_RESERVE_MIN {
            d.reserve(data.len() + room(data.len()));
        }
        d.extend_from_slice(data);
        ext.insert(first, Extent { offset, data: d });
        return 0;
    }
    // Fast path: a pure append to one extent (sequential writes).
    if last - first == 1 && ext[first].end() == offset {
        let e = &mut ext[first].data;
        if e.capacity() - e.len() < data.len() {
            let held = e.len() + data.len();
            e.reserve(data.len() + room(held));
        }
        e.extend_from_slice(data);
        return 0;
    }
    let start = ext[first].offset.min(offset);
    let stop = ext[last - 1].end().max(end);
    let old: usize = ext[first..last].iter().map(|e| e.data.len()).sum();
    let mut merged = BytesMut::zeroed((stop - start) as usize);
    for e in ext.drain(first..last) {
        let at = (e.offset - start) as usize;
        merged[at..at + e.data.len()].copy_from_slice(&e.data);
    }
    let at = (offset - start) as usize;
    merged[at..at + data.len()].copy_from_slice(data);
    let replaced = old + data.len() - merged.len();
    ext.insert(
        first,
        Extent {
            offset: start,
            data: merged,
        },
    );
    replaced
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CB: u32 = 64 << 10;

    fn apply(model: &mut Vec<Option<u8>>, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if model.len() < end {
            model.resize(end, None);
        }
        for (k, b) in data.iter().enumerate() {
            model[offset as usize + k] = Some(*b);
        }
    }

    fn materialise(pieces: &[DirtyPiece], file: &mut Vec<Option<u8>>) {
        for p in pieces {
            let at = p.index as usize * CB as usize + p.offset as usize;
            if file.len() < at + p.data.len() {
                file.resize(at + p.data.len(), None);
            }
            for (k, b) in p.data.iter().enumerate() {
                file[at + k] = Some(*b);
            }
        }
    }

    #[test]
    fn sequential_appends_coalesce_into_full_chunks() {
        let mut b = WriteBuffer::new(CB);
        let block = vec![7u8; 4096];
        for k in 0..(CB as usize / 4096 + 2) {
            b.insert((k * 4096) as u64, &block);
        }
        assert_eq!(b.bytes(), CB as usize + 8192);
        let ready = b.take_ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(
            (ready[0].index, ready[0].offset, ready[0].data.len()),
            (0, 0, CB as usize)
        );
        assert_eq!(b.bytes(), 8192);
        assert!(b.take_ready().is_empty(), "partial chunk stays buffered");
        let rest = b.take_all();
        assert_eq!(
            rest,
            vec![DirtyPiece {
                index: 1,
                offset: 0,
                data: Bytes::from(vec![7u8; 8192])
            }]
        );
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn a_sequential_writer_fills_a_chunk_without_reallocating() {
        const CHUNK: u32 = 4 << 20;
        let mut b = WriteBuffer::new(CHUNK);
        let step = 1usize << 20;
        let block: Vec<u8> = (0..step).map(|i| i as u8).collect();
        b.insert(0, &block);
        let at = b.chunks[&0][0].data.as_ptr();
        for k in 1..4 {
            b.insert((k * step) as u64, &block);
            assert_eq!(b.chunks[&0].len(), 1);
            assert_eq!(
                b.chunks[&0][0].data.as_ptr(),
                at,
                "append {k} moved the extent (a copy of everything before it)"
            );
        }
        let ready = b.take_ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].data.len(), CHUNK as usize);
        assert_eq!(&ready[0].data[3 * step..], &block[..]);
        // Small writers reserve nothing up front.
        b.insert(0, &[1; 100]);
        assert!(b.chunks[&0][0].data.capacity() < WRITE_SEQUENTIAL_RESERVE_MIN);
    }

    #[test]
    fn overwrites_replace_and_count_once() {
        let mut b = WriteBuffer::new(CB);
        b.insert(100, &[1; 100]);
        b.insert(150, &[2; 100]);
        b.insert(0, &[3; 10]);
        assert_eq!(b.bytes(), 160);
        let mut buf = vec![0u8; 300];
        assert_eq!(b.overlay(0, &mut buf), Some(250));
        assert_eq!(&buf[0..10], &[3; 10]);
        assert_eq!(&buf[10..100], &[0; 90]);
        assert_eq!(&buf[100..150], &[1; 50]);
        assert_eq!(&buf[150..250], &[2; 100]);
        assert_eq!(b.end(), Some(250));
    }

    #[test]
    fn truncate_drops_and_cuts() {
        let mut b = WriteBuffer::new(CB);
        b.insert(CB as u64 - 10, &[1; 30]);
        b.insert(5 * CB as u64, &[2; 10]);
        assert_eq!(b.truncate(CB as u64 + 5), 15 + 10);
        assert_eq!(b.bytes(), 15);
        assert_eq!(b.end(), Some(CB as u64 + 5));
        assert_eq!(b.truncate(0), 15);
        assert!(b.is_empty());
    }

    #[test]
    fn take_overlapping_only_takes_hit_chunks() {
        let mut b = WriteBuffer::new(CB);
        b.insert(10, &[1; 10]);
        b.insert(3 * CB as u64, &[2; 10]);
        assert!(b.take_overlapping(20, 100).is_empty());
        let t = b.take_overlapping(3 * CB as u64 + 5, 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].index, 3);
        assert_eq!(b.bytes(), 10);
    }

    #[test]
    fn fragmented_chunks_become_ready() {
        let mut b = WriteBuffer::new(CB);
        for k in 0..=WRITE_EXTENTS_PER_CHUNK_MAX as u64 {
            b.insert(k * 16, &[1; 8]);
        }
        let ready = b.take_ready();
        assert_eq!(ready.len(), WRITE_EXTENTS_PER_CHUNK_MAX + 1);
    }

    proptest! {
        /// Whatever the writes, the pieces taken out describe exactly the bytes last written.
        #[test]
        fn buffer_matches_a_byte_model(
            writes in proptest::collection::vec(
                (0u64..(3 * CB as u64), proptest::collection::vec(any::<u8>(), 1..3000)),
                1..40,
            ),
            cut in proptest::option::of(0u64..(4 * CB as u64)),
            take_ready_each in any::<bool>(),
        ) {
            let mut b = WriteBuffer::new(CB);
            let mut model = Vec::new();
            let mut file = Vec::new();
            for (off, data) in &writes {
                b.insert(*off, data);
                apply(&mut model, *off, data);
                if take_ready_each {
                    materialise(&b.take_ready(), &mut file);
                }
            }
            if let Some(c) = cut {
                b.truncate(c);
                model.truncate(c as usize);
                file.truncate(c as usize);
            }
            let live = model.iter().filter(|x| x.is_some()).count();
            // Bytes already taken out are not counted; the rest must match.
            let mut overlaid = vec![0u8; model.len()];
            b.overlay(0, &mut overlaid);
            materialise(&b.take_all(), &mut file);
            prop_assert!(b.is_empty());
            prop_assert_eq!(b.bytes(), 0);
            file.resize(model.len(), None);
            prop_assert_eq!(&file, &model);
            prop_assert!(live <= model.len());
        }
    }
}
