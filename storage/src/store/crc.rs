//! CRC32C arithmetic of the chunk engine: per-sector checksums (`SECTOR_BYTES` pieces of a
//! chunk) and combining them into the checksum of a longer range without touching the bytes
//! again.
//!
//! `combine(a, b, n)` gives the CRC32C of `A ‖ B` from `a = crc(A)`, `b = crc(B)` and
//! `n = |B|`: it is `shift_n(a) ^ b`, where `shift_n` (multiplication by x^(8n) modulo the
//! CRC32C polynomial) is linear over GF(2). For the one length that occurs all the time — a
//! whole sector — `shift` is tabulated once (four 256-entry tables, one lookup per byte of
//! the CRC), so combining costs nanoseconds; other lengths use the `crc32c` crate's general
//! (and much slower) combination.

use crate::limits::SECTOR_BYTES;
use std::sync::OnceLock;

const SECTOR: u64 = SECTOR_BYTES as u64;

fn sector_shift_tables() -> &'static [[u32; 256]; 4] {
    static T: OnceLock<Box<[[u32; 256]; 4]>> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Box::new([[0u32; 256]; 4]);
        for (k, table) in t.iter_mut().enumerate() {
            for (b, e) in table.iter_mut().enumerate() {
                // crc32c_combine(x, 0, n) = shift_n(x): linear, so tabulate it per byte.
                *e = crc32c::crc32c_combine((b as u32) << (8 * k), 0, SECTOR_BYTES as usize);
            }
        }
        t
    })
}

/// CRC32C of `A ‖ B` given `crc(A)`, `crc(B)` and `|B|`.
pub fn combine(a: u32, b: u32, len_b: u64) -> u32 {
    if len_b == SECTOR {
        let t = sector_shift_tables();
        t[0][(a & 0xff) as usize]
            ^ t[1][((a >> 8) & 0xff) as usize]
            ^ t[2][((a >> 16) & 0xff) as usize]
            ^ t[3][(a >> 24) as usize]
            ^ b
    } else if len_b == 0 {
        a
    } else {
        crc32c::crc32c_combine(a, b, len_b as usize)
    }
}

/// CRC32C of `len` zero bytes (`len ≤ SECTOR_BYTES`), cached for a whole sector.
pub fn zeros(len: u32) -> u32 {
    static FULL: OnceLock<u32> = OnceLock::new();
    static Z: [u8; SECTOR_BYTES as usize] = [0; SECTOR_BYTES as usize];
    if len == SECTOR_BYTES {
        return *FULL.get_or_init(|| crc32c::crc32c(&Z));
    }
    crc32c::crc32c(&Z[..len as usize])
}

/// The pieces of the chunk range `offset..offset + len` split at sector boundaries, as
/// chunk-relative `(start, end)`.
pub fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let stop = ((at / SECTOR + 1) * SECTOR).min(end);
        let p = (at, stop);
        at = stop;
        Some(p)
    })
}

/// CRC32C of each sector piece of `data`, which sits at chunk offset `offset` (one pass).
pub fn piece_crcs(offset: u64, data: &[u8]) -> Vec<u32> {
    pieces(offset, data.len() as u64)
        .map(|(s, e)| crc32c::crc32c(&data[(s - offset) as usize..(e - offset) as usize]))
        .collect()
}

/// CRC32C of the whole range from the CRCs of its sector pieces (as `piece_crcs` returns).
pub fn combine_pieces(offset: u64, len: u64, crcs: &[u32]) -> u32 {
    let mut acc = 0;
    for ((s, e), c) in pieces(offset, len).zip(crcs) {
        acc = combine(acc, *c, e - s);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn combine_matches_direct_crc() {
        for (la, lb) in [
            (0, 4096),
            (1, 4096),
            (4096, 4096),
            (5000, 4096),
            (7, 3),
            (0, 0),
        ] {
            let a = bytes(la, 1);
            let b = bytes(lb, 2);
            let mut ab = a.clone();
            ab.extend_from_slice(&b);
            assert_eq!(
                combine(crc32c::crc32c(&a), crc32c::crc32c(&b), lb as u64),
                crc32c::crc32c(&ab),
                "{la} + {lb}"
            );
        }
    }

    #[test]
    fn pieces_split_at_sector_boundaries() {
        let p: Vec<_> = pieces(4000, 10_000).collect();
        assert_eq!(
            p,
            vec![(4000, 4096), (4096, 8192), (8192, 12288), (12288, 14000)]
        );
        assert_eq!(pieces(8192, 4096).count(), 1);
        assert_eq!(pieces(5, 0).count(), 0);
    }

    #[test]
    fn combined_pieces_equal_the_crc_of_the_whole() {
        for (off, n) in [
            (0u64, 1usize << 20),
            (4000, 10_000),
            (100, 50),
            (65536, 65536 + 7),
        ] {
            let d = bytes(n, off + 3);
            let c = piece_crcs(off, &d);
            assert_eq!(combine_pieces(off, n as u64, &c), crc32c::crc32c(&d));
        }
        assert_eq!(zeros(4096), crc32c::crc32c(&[0u8; 4096]));
        assert_eq!(zeros(10), crc32c::crc32c(&[0u8; 10]));
    }
}
