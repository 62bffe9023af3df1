//! Receive buffers for large frame payloads, reused across frames.
//!
//! Why: a 1 MiB update arriving at a replica used to land in a freshly grown `BytesMut`. Fresh
//! memory of that size comes from `mmap` (glibc hands big blocks back to the kernel on free),
//! so every frame paid a page fault per 4 KiB page plus the kernel zeroing it, and growing the
//! buffer while the frame arrived copied the part already received. Profiled on the in-memory
//! data plane (1 MiB writes through a chain of three): page faults 35 % and `read_frame` 38 %
//! of all CPU (docs/storage.md, "Data-plane receive path").
//!
//! A payload of at least [`POOLED_PAYLOAD_MIN`] bytes is read into a buffer of the next power
//! of two taken from this pool and handed on as `Bytes` (no copy); when the last `Bytes`
//! referring to it is dropped the buffer returns to the pool, its pages still mapped. The pool
//! keeps at most [`POOL_IDLE_BYTES_MAX`] bytes of idle buffers; buffers in use are bounded by
//! the callers (requests and payload bytes in flight per connection). Payloads above
//! [`POOLED_CLASS_MAX`] get a plain allocation.

use super::limits::{POOL_IDLE_BYTES_MAX, POOLED_CLASS_MAX, POOLED_PAYLOAD_MIN};
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::OnceLock;

struct Pool {
    /// Idle buffers per size class (index = log2 of the class size); every buffer's `len()`
    /// is its class size.
    free: Mutex<(Vec<Vec<Vec<u8>>>, usize)>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        free: Mutex::new((vec![Vec::new(); 64], 0)),
    })
}

fn class_of(len: usize) -> Option<usize> {
    let c = len.max(POOLED_PAYLOAD_MIN).next_power_of_two();
    (c <= POOLED_CLASS_MAX).then_some(c)
}

/// A writable buffer of at least `len` bytes (`len` ≥ 1), pooled when `len` is in range.
pub struct PooledBuf {
    data: Vec<u8>,
    len: usize,
}

impl PooledBuf {
    pub fn take(len: usize) -> PooledBuf {
        let data = match class_of(len) {
            Some(class) => {
                let idx = class.trailing_zeros() as usize;
                let reused = {
                    let mut g = pool().free.lock();
                    let b = g.0[idx].pop();
                    if b.is_some() {
                        g.1 -= class;
                    }
                    b
                };
                reused.unwrap_or_else(|| vec![0u8; class])
            }
            None => vec![0u8; len],
        };
        PooledBuf { data, len }
    }

    /// The `len` bytes to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }

    /// The filled buffer as `Bytes` without a copy; it goes back to the pool when the last
    /// clone or slice of it is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let class = self.data.len();
        if !class.is_power_of_two() || class_of(class) != Some(class) {
            return;
        }
        let buf = std::mem::take(&mut self.data);
        let mut g = pool().free.lock();
        if g.1 + class <= POOL_IDLE_BYTES_MAX {
            g.1 += class;
            g.0[class.trailing_zeros() as usize].push(buf);
        }
    }
}

/// Idle bytes held by the pool (tests, diagnostics).
pub fn idle_bytes() -> usize {
    pool().free.lock().1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_the_idle_pool_is_bounded() {
        // A size no other test of this process uses, so reuse is observable.
        let len = (POOLED_CLASS_MAX / 2) + 3;
        let mut a = PooledBuf::take(len);
        assert_eq!(a.bytes_mut().len(), len);
        a.bytes_mut()[0] = 7;
        let ptr = a.bytes_mut().as_ptr();
        let b = a.freeze();
        assert_eq!(b.len(), len);
        assert_eq!(b[0], 7);
        let slice = b.slice(1..10);
        drop(b);
        // Still referenced by the slice: not back in the pool.
        let mut c = PooledBuf::take(len);
        assert_ne!(c.bytes_mut().as_ptr(), ptr);
        drop(slice);
        let mut d = PooledBuf::take(len);
        assert_eq!(d.bytes_mut().as_ptr(), ptr, "the freed buffer is reused");
        drop(c);
        drop(d);
        assert!(idle_bytes() <= POOL_IDLE_BYTES_MAX);
        // Far more buffers than the bound: the idle pool never exceeds it.
        let many: Vec<_> = (0..(POOL_IDLE_BYTES_MAX / POOLED_CLASS_MAX + 4))
            .map(|_| PooledBuf::take(POOLED_CLASS_MAX))
            .collect();
        drop(many);
        assert!(idle_bytes() <= POOL_IDLE_BYTES_MAX);
    }

    #[test]
    fn large_payloads_are_not_pooled() {
        let mut big = PooledBuf::take(POOLED_CLASS_MAX + 1);
        assert_eq!(big.bytes_mut().len(), POOLED_CLASS_MAX + 1);
        let before = idle_bytes();
        drop(big);
        assert_eq!(
            idle_bytes(),
            before,
            "oversized buffers are freed, not kept"
        );
        let small = PooledBuf::take(1);
        assert_eq!(small.as_ref().len(), 1);
    }
}
