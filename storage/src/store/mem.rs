//! The in-memory backend: blocks in a map, chunk records in a map. Clones share state, so a
//! test can "crash" an engine (drop it mid-operation) and reopen another over the same backend.

use super::StoreError;
use super::engine::{Backend, ChunkRec};
use bytes::Bytes;
use parking_lot::Mutex;
use pond_proto::ChunkId;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Default)]
struct Inner {
    blocks: Mutex<HashMap<u32, Bytes>>,
    meta: Mutex<BTreeMap<ChunkId, ChunkRec>>,
    /// Data syncs asked for, and whether they fail (tests of the sync rules).
    syncs: std::sync::atomic::AtomicU64,
    fail_syncs: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
pub struct MemBackend {
    inner: Arc<Inner>,
    capacity_slots: u64,
}

impl MemBackend {
    pub fn new(capacity_bytes: u64) -> MemBackend {
        MemBackend {
            inner: Arc::default(),
            capacity_slots: capacity_bytes / crate::limits::BLOCK_BYTES as u64,
        }
    }

    /// Data syncs asked of this backend so far.
    pub fn data_syncs(&self) -> u64 {
        self.inner.syncs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes every later data sync fail (`true`) or succeed again.
    pub fn fail_data_syncs(&self, fail: bool) {
        self.inner
            .fail_syncs
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Flips one byte of a stored block (scrub and repair tests).
    pub fn corrupt(&self, slot: u32, at: usize) -> bool {
        let mut blocks = self.inner.blocks.lock();
        match blocks.get_mut(&slot) {
            Some(b) if at < b.len() => {
                let mut v = b.to_vec();
                v[at] ^= 0xff;
                *b = Bytes::from(v);
                true
            }
            _ => false,
        }
    }
}

impl Backend for MemBackend {
    fn blocking(&self) -> bool {
        false
    }

    fn write_block(&self, slot: u32, data: &[u8]) -> std::io::Result<()> {
        self.inner
            .blocks
            .lock()
            .insert(slot, Bytes::copy_from_slice(data));
        Ok(())
    }

    fn read_range(&self, slot: u32, at: u32, len: u32) -> std::io::Result<Bytes> {
        let end = at as usize + len as usize;
        match self.inner.blocks.lock().get(&slot) {
            Some(b) if b.len() >= end => Ok(b.slice(at as usize..end)),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "slot never written",
            )),
        }
    }

    fn read_into(&self, slot: u32, at: u32, buf: &mut [u8]) -> std::io::Result<()> {
        let end = at as usize + buf.len();
        match self.inner.blocks.lock().get(&slot) {
            Some(b) if b.len() >= end => {
                buf.copy_from_slice(&b[at as usize..end]);
                Ok(())
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "slot never written",
            )),
        }
    }

    fn sync_data(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        self.inner.syncs.fetch_add(1, Ordering::SeqCst);
        if self.inner.fail_syncs.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected data sync failure"));
        }
        Ok(())
    }

    fn commit_meta(
        &self,
        batch: &[(ChunkId, Option<ChunkRec>)],
        _durable: bool,
    ) -> Result<(), StoreError> {
        let mut meta = self.inner.meta.lock();
        for (id, rec) in batch {
            match rec {
                Some(r) => meta.insert(*id, r.clone()),
                None => meta.remove(id),
            };
        }
        Ok(())
    }

    fn load_meta(&self) -> Result<Vec<(ChunkId, ChunkRec)>, StoreError> {
        Ok(self
            .inner
            .meta
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }

    fn capacity_slots(&self, _used: u64) -> u64 {
        self.capacity_slots
    }

    fn slot_bound(&self) -> std::io::Result<u64> {
        let blocks = self.inner.blocks.lock();
        Ok(blocks.keys().max().map_or(0, |m| u64::from(*m) + 1))
    }

    fn release_from(&self, first: u32) -> std::io::Result<()> {
        self.inner.blocks.lock().retain(|s, _| *s < first);
        Ok(())
    }
}
