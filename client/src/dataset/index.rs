//! The sample index: a pond file listing where each variable-size sample lives.
//!
//! Format, version 1 (all integers little-endian):
//!
//! ```text
//! header   magic "PONDIDX\0" (8) | version u32 | flags u32 (0) | files u32 |
//!          block_entries u32 | samples u64
//! files    per file: name_len u16 | name (UTF-8; relative to the index's directory, or an
//!          absolute pond path starting with '/')
//! hcrc     u32: CRC32C of header and files
//! entries  per sample: file u32 | length u32 | offset u64          (16 bytes)
//! bcrcs    per block of `block_entries` entries: u32 CRC32C of its entry bytes
//! trailer  magic "PIDXEND\0" (8)
//! ```
//!
//! Decoding checks the magic, the version, every CRC, the exact total length, and every
//! entry's file number and length; a failure names the entry (or block of entries) and why.
//! Ranges are checked against the shard sizes when a dataset is opened (`Dataset`).

use super::DatasetError;
use super::limits;

pub const MAGIC: &[u8; 8] = b"PONDIDX\0";
pub const TRAILER: &[u8; 8] = b"PIDXEND\0";
pub const VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 4 + 4 + 4 + 8;
pub const ENTRY_BYTES: usize = 16;

/// Where one sample lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the index's file table.
    pub file: u32,
    pub offset: u64,
    pub len: u32,
}

/// A decoded index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub files: Vec<String>,
    pub entries: Vec<Entry>,
}

impl Index {
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let block = limits::INDEX_BLOCK_ENTRIES;
        let mut b = Vec::with_capacity(HEADER_BYTES + self.entries.len() * ENTRY_BYTES + 64);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        b.extend_from_slice(&(block as u32).to_le_bytes());
        b.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for f in &self.files {
            assert!(f.len() <= u16::MAX as usize, "file name fits u16");
            b.extend_from_slice(&(f.len() as u16).to_le_bytes());
            b.extend_from_slice(f.as_bytes());
        }
        let hcrc = crc32c::crc32c(&b);
        b.extend_from_slice(&hcrc.to_le_bytes());
        let start = b.len();
        for e in &self.entries {
            b.extend_from_slice(&e.file.to_le_bytes());
            b.extend_from_slice(&e.len.to_le_bytes());
            b.extend_from_slice(&e.offset.to_le_bytes());
        }
        let entry_bytes = b[start..].to_vec();
        for blk in entry_bytes.chunks(block as usize * ENTRY_BYTES) {
            b.extend_from_slice(&crc32c::crc32c(blk).to_le_bytes());
        }
        b.extend_from_slice(TRAILER);
        b
    }

    /// Decodes and checks an index read from `path` (named in errors).
    pub fn decode(path: &str, b: &[u8]) -> Result<Index, DatasetError> {
        let bad = |reason: String| DatasetError::BadIndex {
            path: path.to_string(),
            reason,
        };
        if b.len() < HEADER_BYTES {
            return Err(bad(format!(
                "{} bytes, shorter than the {HEADER_BYTES}-byte header",
                b.len()
            )));
        }
        if &b[..8] != MAGIC {
            return Err(bad("not a pond index (bad magic)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads {VERSION}"
            )));
        }
        let flags = u32_at(12);
        if flags != 0 {
            return Err(bad(format!("unknown flags {flags:#x}")));
        }
        let nfiles = u32_at(16) as usize;
        let block = u32_at(20) as u64;
        let samples = u64_at(24);
        if nfiles > limits::DATASET_FILES_MAX {
            return Err(bad(format!(
                "{nfiles} files, limit {} (or a damaged header)",
                limits::DATASET_FILES_MAX
            )));
        }
        // File table.
        let mut o = HEADER_BYTES;
        let mut files = Vec::with_capacity(nfiles);
        for k in 0..nfiles {
            if o + 2 > b.len() {
                return Err(bad(format!("truncated in the file table (file {k})")));
            }
            let n = u16::from_le_bytes([b[o], b[o + 1]]) as usize;
            o += 2;
            if o + n > b.len() {
                return Err(bad(format!("truncated in the file table (file {k})")));
            }
            let name = std::str::from_utf8(&b[o..o + n])
                .map_err(|_| bad(format!("file {k}: name is not UTF-8")))?;
            files.push(name.to_string());
            o += n;
        }
        if o + 4 > b.len() {
            return Err(bad("truncated after the file table".into()));
        }
        if u32_at(o) != crc32c::crc32c(&b[..o]) {
            return Err(bad("header checksum mismatch".into()));
        }
        // Values are trusted only after the header checksum.
        if block == 0 || block > 1 << 24 {
            return Err(bad(format!("block of {block} entries")));
        }
        if samples > limits::INDEX_SAMPLES_MAX {
            return Err(bad(format!(
                "{samples} samples, limit {}",
                limits::INDEX_SAMPLES_MAX
            )));
        }
        for (k, f) in files.iter().enumerate() {
            if f.is_empty() || f.split('/').any(|c| c == "..") {
                return Err(bad(format!("file {k}: invalid name {f:?}")));
            }
        }
        o += 4;
        // Exact length: entries, block CRCs, trailer.
        let blocks = samples.div_ceil(block);
        let want = o as u64 + samples * ENTRY_BYTES as u64 + blocks * 4 + TRAILER.len() as u64;
        if b.len() as u64 != want {
            return Err(bad(format!(
                "{} bytes, expected {want} for {samples} samples (truncated or extended)",
                b.len()
            )));
        }
        let entries_at = o;
        let crcs_at = o + samples as usize * ENTRY_BYTES;
        if &b[b.len() - 8..] != TRAILER {
            return Err(bad("bad trailer".into()));
        }
        for k in 0..blocks as usize {
            let first = k as u64 * block;
            let last = (first + block).min(samples);
            let s = entries_at + first as usize * ENTRY_BYTES;
            let e = entries_at + last as usize * ENTRY_BYTES;
            if u32_at(crcs_at + 4 * k) != crc32c::crc32c(&b[s..e]) {
                return Err(DatasetError::CorruptEntry {
                    path: path.to_string(),
                    entry: first,
                    reason: format!(
                        "checksum mismatch in the block of entries {first}..{last}: the index is damaged"
                    ),
                });
            }
        }
        let mut entries = Vec::with_capacity(samples as usize);
        for i in 0..samples as usize {
            let p = entries_at + i * ENTRY_BYTES;
            let e = Entry {
                file: u32_at(p),
                len: u32_at(p + 4),
                offset: u64_at(p + 8),
            };
            check_entry(path, &files, i as u64, &e)?;
            entries.push(e);
        }
        Ok(Index { files, entries })
    }
}

fn check_entry(path: &str, files: &[String], i: u64, e: &Entry) -> Result<(), DatasetError> {
    let corrupt = |reason: String| DatasetError::CorruptEntry {
        path: path.to_string(),
        entry: i,
        reason,
    };
    if e.file as usize >= files.len() {
        return Err(corrupt(format!(
            "file number {} but the index lists {} files",
            e.file,
            files.len()
        )));
    }
    if e.len as u64 > limits::SAMPLE_BYTES_MAX {
        return Err(corrupt(format!(
            "length {} above the sample limit {}",
            e.len,
            limits::SAMPLE_BYTES_MAX
        )));
    }
    if e.offset.checked_add(e.len as u64).is_none() {
        return Err(corrupt(format!("range {}+{} overflows", e.offset, e.len)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u32) -> Index {
        Index {
            files: vec!["shard-00000.bin".into(), "shard-00001.bin".into()],
            entries: (0..n)
                .map(|i| Entry {
                    file: i % 2,
                    offset: i as u64 * 100,
                    len: 100,
                })
                .collect(),
        }
    }

    #[test]
    fn roundtrip() {
        for n in [0u32, 1, 4095, 4096, 4097, 10_000] {
            let ix = sample(n);
            assert_eq!(Index::decode("/i", &ix.encode()).unwrap(), ix, "n={n}");
        }
    }

    #[test]
    fn damage_gives_clear_errors() {
        let ix = sample(10_000);
        let good = ix.encode();
        let err = |b: &[u8]| Index::decode("/d/index.pidx", b).unwrap_err().to_string();
        // A flipped bit in entry 5000 (block 1): named by its block of entries.
        let entries_at = good.len() - 8 - 3 * 4 - 10_000 * ENTRY_BYTES;
        let mut b = good.clone();
        b[entries_at + 5000 * ENTRY_BYTES + 9] ^= 0x40;
        let e = err(&b);
        assert!(
            e.contains("entries 4096..8192") && e.contains("checksum"),
            "{e}"
        );
        assert!(e.contains("/d/index.pidx"), "{e}");
        // Truncated.
        let e = err(&good[..good.len() - 20]);
        assert!(e.contains("truncated"), "{e}");
        // Header damage.
        let mut b = good.clone();
        b[30] ^= 1;
        assert!(err(&b).contains("checksum"), "{}", err(&b));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(err(&b).contains("magic"));
        let mut b = good.clone();
        b[8] = 9;
        assert!(err(&b).contains("version 9"));
        assert!(err(&good[..10]).contains("shorter"));
    }

    #[test]
    fn invalid_entries_with_valid_checksums_are_named() {
        let mut ix = sample(10);
        ix.entries[7].file = 5;
        let e = Index::decode("/i", &ix.encode()).unwrap_err().to_string();
        assert!(e.contains("entry 7") && e.contains("file number 5"), "{e}");
        let mut ix = sample(10);
        ix.entries[3].offset = u64::MAX - 10;
        let e = Index::decode("/i", &ix.encode()).unwrap_err().to_string();
        assert!(e.contains("entry 3") && e.contains("overflows"), "{e}");
        let mut ix = sample(1);
        ix.files[0] = "../escape".into();
        let e = Index::decode("/i", &ix.encode()).unwrap_err().to_string();
        assert!(e.contains("invalid name"), "{e}");
    }
}
