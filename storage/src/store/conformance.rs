//! One conformance suite for the `ChunkStore` contract, run against both backends, plus the
//! crash-point tests (reopen after an injected crash in every window of an update).

use super::engine::{Backend, Engine};
use super::file::{FileBackend, IoOptions};
use super::mem::MemBackend;
use super::*;
use crate::limits::BLOCK_BYTES;
use pond_proto::InodeId;
use std::sync::Arc;

trait Harness {
    type B: Backend;
    fn open(&self) -> Engine<Self::B>;
    /// Damages one byte of `slot`.
    fn corrupt(&self, e: &Engine<Self::B>, slot: u32);
}

struct FileH(tempfile::TempDir, Option<u64>, IoOptions);
impl Harness for FileH {
    type B = FileBackend;
    fn open(&self) -> Engine<FileBackend> {
        let b = FileBackend::open_with(self.0.path(), self.1, self.2).unwrap();
        // The path asked for is the path taken (io_uring only falls back where the kernel
        // refuses it, which `uring_available` tells).
        assert_eq!(b.io_options().uring, self.2.uring && uring_available());
        Engine::open(b).unwrap()
    }
    fn corrupt(&self, e: &Engine<FileBackend>, slot: u32) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(e.backend().data_path())
            .unwrap();
        f.write_all_at(b"\xde\xad", FileBackend::slot_offset(slot) + 10)
            .unwrap();
    }
}

struct MemH(MemBackend);
impl Harness for MemH {
    type B = MemBackend;
    fn open(&self) -> Engine<MemBackend> {
        Engine::open(self.0.clone()).unwrap()
    }
    fn corrupt(&self, _e: &Engine<MemBackend>, slot: u32) {
        assert!(self.0.corrupt(slot, 10));
    }
}

/// Whether this kernel lets us set up io_uring (EPERM/ENOSYS where it is disabled).
fn uring_available() -> bool {
    io_uring::IoUring::new(2).is_ok()
}

/// The file backend over the default I/O path (io_uring, buffered).
fn file(cap: Option<u64>) -> FileH {
    file_with(cap, IoOptions::default())
}

/// The `pread`/`pwrite` fallback, forced.
fn file_sync(cap: Option<u64>) -> FileH {
    file_with(
        cap,
        IoOptions {
            uring: false,
            ..IoOptions::default()
        },
    )
}

/// io_uring with O_DIRECT for every write and read.
fn file_direct(cap: Option<u64>) -> FileH {
    file_with(
        cap,
        IoOptions {
            uring: true,
            direct_writes: true,
            cache_first: false,
            pread_misses: false,
            direct_reads_from: Some(0),
        },
    )
}

fn file_with(cap: Option<u64>, io: IoOptions) -> FileH {
    FileH(tempfile::tempdir().unwrap(), cap, io)
}
fn mem(cap: u64) -> MemH {
    MemH(MemBackend::new(cap))
}

const CV: ChainVersion = ChainVersion(1);

fn cid(i: u64) -> ChunkId {
    ChunkId::new(InodeId(7), i)
}

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Stage + commit at `committed + 1`.
fn write(s: &dyn ChunkStore, c: ChunkId, m: Mutation<'_>) -> VersionInfo {
    let v = s.info(c).unwrap_or_default().committed_version().next();
    s.stage(c, v, CV, m, None).unwrap();
    s.commit(c, v).unwrap()
}

fn read_all(s: &dyn ChunkStore, c: ChunkId) -> Vec<u8> {
    match s.info(c).and_then(|i| i.committed) {
        Some(v) => s.read(c, v.version, 0, u32::MAX).unwrap().to_vec(),
        None => Vec::new(),
    }
}

fn apply_model(model: &mut Vec<u8>, m: Mutation<'_>) {
    match m {
        Mutation::Write { offset, data } => {
            let end = offset as usize + data.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[offset as usize..end].copy_from_slice(data);
        }
        Mutation::Replace { data } => *model = data.to_vec(),
        Mutation::Truncate { length } => model.resize(length as usize, 0),
    }
}

fn roundtrip_and_ranges(s: &dyn ChunkStore) {
    let c = cid(1);
    let data = pattern(1, 300_000);
    let v = write(
        s,
        c,
        Mutation::Write {
            offset: 0,
            data: &data,
        },
    );
    assert_eq!(v.version, ChunkVersion(1));
    assert_eq!(v.length, 300_000);
    assert_eq!(
        v.crc,
        content_digest(&data),
        "chunk digest is the digest of the content"
    );
    for (off, len) in [
        (0u32, 10u32),
        (65_530, 20),
        (1, 299_999),
        (299_990, 100),
        (400_000, 5),
    ] {
        let got = s.read(c, v.version, off, len).unwrap();
        let end = (off as usize + len as usize).min(data.len());
        let want = if (off as usize) < data.len() {
            &data[off as usize..end]
        } else {
            &[][..]
        };
        assert_eq!(&got[..], want, "range {off}+{len}");
    }
}

fn pending_is_invisible_until_commit(s: &dyn ChunkStore) {
    let c = cid(2);
    write(
        s,
        c,
        Mutation::Write {
            offset: 0,
            data: b"hello world",
        },
    );
    let p = s
        .stage(
            c,
            ChunkVersion(2),
            CV,
            Mutation::Write {
                offset: 0,
                data: b"HELLO",
            },
            None,
        )
        .unwrap();
    let info = s.info(c).unwrap();
    assert_eq!(info.committed_version(), ChunkVersion(1));
    assert_eq!(info.pending.unwrap().version, ChunkVersion(2));
    assert_eq!(read_all(s, c), b"hello world");
    assert_eq!(&s.read(c, p.version, 0, 100).unwrap()[..], b"HELLO world");
    // Abort drops the pending version only.
    s.abort(c, ChunkVersion(2)).unwrap();
    assert!(s.info(c).unwrap().pending.is_none());
    assert_eq!(read_all(s, c), b"hello world");
    s.abort(c, ChunkVersion(2)).unwrap();
    s.stage(
        c,
        ChunkVersion(2),
        CV,
        Mutation::Write {
            offset: 0,
            data: b"HELLO",
        },
        None,
    )
    .unwrap();
    // A newer stage replaces the pending version (same version after a head change).
    s.stage(
        c,
        ChunkVersion(2),
        CV,
        Mutation::Write {
            offset: 6,
            data: b"WORLD",
        },
        None,
    )
    .unwrap();
    s.commit(c, ChunkVersion(2)).unwrap();
    assert_eq!(read_all(s, c), b"hello WORLD");
    assert!(s.info(c).unwrap().pending.is_none());
    // Replacing a diverged copy: a pending version with the committed number wins.
    s.stage(
        c,
        ChunkVersion(2),
        CV,
        Mutation::Replace { data: b"other" },
        None,
    )
    .unwrap();
    s.commit(c, ChunkVersion(2)).unwrap();
    assert_eq!(read_all(s, c), b"other");
    // Committing again is a no-op; an unknown version is an error.
    s.commit(c, ChunkVersion(2)).unwrap();
    assert!(matches!(
        s.commit(c, ChunkVersion(9)),
        Err(StoreError::NoSuchVersion { .. })
    ));
    assert!(matches!(
        s.read(c, ChunkVersion(1), 0, 1),
        Err(StoreError::NoSuchVersion { .. })
    ));
}

fn random_ops_match_a_model(s: &dyn ChunkStore) {
    let c = cid(3);
    let mut model = Vec::new();
    let mut rng = 42u64;
    let mut next = |m: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % m
    };
    for step in 0..120 {
        let data = pattern(step, next(70_000) as usize + 1);
        let op = next(10);
        let m = if op < 6 {
            Mutation::Write {
                offset: next(600_000) as u32,
                data: &data,
            }
        } else if op < 8 {
            Mutation::Truncate {
                length: next(700_000) as u32,
            }
        } else {
            Mutation::Replace { data: &data }
        };
        apply_model(&mut model, m);
        let v = if step % 2 == 0 {
            write(s, c, m)
        } else {
            // The replica path: payload sector CRCs computed while verifying, handed over.
            let crcs = match m {
                Mutation::Write { offset, data } => crc::piece_crcs(offset as u64, data),
                Mutation::Replace { data } => crc::piece_crcs(0, data),
                Mutation::Truncate { .. } => Vec::new(),
            };
            let u = s.info(c).unwrap_or_default().committed_version().next();
            s.stage_with(c, u, CV, m, None, Some(&crcs)).unwrap();
            s.commit(c, u).unwrap()
        };
        assert_eq!(v.length as usize, model.len(), "step {step}");
        assert_eq!(v.crc, content_digest(&model), "step {step}");
        // A random range: its bytes and the CRC derived from the sector CRCs.
        let (off, len) = (next(700_000) as u32, next(200_000) as u32);
        let (b, crc) = s.read_crc(c, v.version, off, len).unwrap();
        let lo = (off as usize).min(model.len());
        let hi = (off as usize + len as usize).min(model.len());
        assert_eq!(&b[..], &model[lo..hi], "step {step}");
        assert_eq!(crc, crc32c::crc32c(&b), "step {step}");
        if step % 10 == 0 {
            assert_eq!(read_all(s, c), model, "step {step}");
        }
    }
    assert_eq!(read_all(s, c), model);
}

fn appends_do_not_copy_the_chunk(s: &dyn ChunkStore) {
    let c = cid(4);
    let piece = pattern(4, 16 << 10);
    let base = s.space().used_bytes;
    for i in 0..64u32 {
        write(
            s,
            c,
            Mutation::Write {
                offset: i * (16 << 10),
                data: &piece,
            },
        );
    }
    // 1 MiB in 16 blocks; no leaked old versions.
    assert_eq!(s.space().used_bytes - base, 16 * BLOCK_BYTES as u64);
    assert_eq!(read_all(s, c).len(), 1 << 20);
}

fn holes_cost_nothing(s: &dyn ChunkStore) {
    let c = cid(5);
    let base = s.space().used_bytes;
    write(
        s,
        c,
        Mutation::Write {
            offset: 3 << 20,
            data: b"tail",
        },
    );
    assert_eq!(s.space().used_bytes - base, BLOCK_BYTES as u64);
    let all = read_all(s, c);
    assert_eq!(all.len(), (3 << 20) + 4);
    assert!(all[..3 << 20].iter().all(|b| *b == 0));
}

fn install_remove_list(s: &dyn ChunkStore) {
    for i in 10..20 {
        s.install(cid(i), ChunkVersion(5), ChainVersion(3), &pattern(i, 1000))
            .unwrap();
    }
    let info = s.info(cid(12)).unwrap().committed.unwrap();
    assert_eq!(
        (info.version, info.chain_version),
        (ChunkVersion(5), ChainVersion(3))
    );
    assert!(s.remove(cid(12)).unwrap());
    assert!(!s.remove(cid(12)).unwrap());
    let l = s.list(Bound::Included(cid(10)), Bound::Excluded(cid(20)), 100);
    let ids: Vec<u64> = l.iter().map(|(c, _)| c.index()).collect();
    assert_eq!(ids, vec![10, 11, 13, 14, 15, 16, 17, 18, 19]);
    let l = s.list(Bound::Excluded(cid(14)), Bound::Unbounded, 2);
    assert_eq!(
        l.iter().map(|(c, _)| c.index()).collect::<Vec<_>>(),
        vec![15, 16]
    );
}

fn suite<H: Harness>(h: &H) {
    let e = h.open();
    roundtrip_and_ranges(&e);
    pending_is_invisible_until_commit(&e);
    random_ops_match_a_model(&e);
    appends_do_not_copy_the_chunk(&e);
    holes_cost_nothing(&e);
    install_remove_list(&e);
    // Reopen: every committed chunk is back, byte for byte, and space accounting agrees.
    let before: Vec<(ChunkId, Vec<u8>)> = e
        .list(Bound::Unbounded, Bound::Unbounded, usize::MAX)
        .into_iter()
        .map(|(c, _)| (c, read_all(&e, c)))
        .collect();
    let used = e.space().used_bytes;
    drop(e);
    let e = h.open();
    for (c, data) in before {
        assert_eq!(read_all(&e, c), data, "chunk {c:?} after reopen");
    }
    assert_eq!(e.space().used_bytes, used);
}

#[test]
fn conformance_file() {
    suite(&file(None));
}

#[test]
fn conformance_mem() {
    suite(&mem(1 << 30));
}

fn checksum_detected<H: Harness>(h: &H) {
    let e = h.open();
    let c = cid(1);
    let data = pattern(9, 200_000);
    write(
        &e,
        c,
        Mutation::Write {
            offset: 0,
            data: &data,
        },
    );
    let slots = e.committed_slots(c);
    h.corrupt(&e, slots[1]);
    // Block 0 is fine, block 1 is not.
    assert_eq!(
        &e.read(c, ChunkVersion(1), 0, 100).unwrap()[..],
        &data[..100]
    );
    // The damage is in sector 0 of block 1: reads of it fail, reads of other sectors of the
    // same block verify (and read) only what they return.
    let err = e.read(c, ChunkVersion(1), 65_536 + 5, 10).unwrap_err();
    assert!(
        matches!(err, StoreError::Checksum { block: 1, .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::Checksum);
    assert_eq!(
        &e.read(c, ChunkVersion(1), 70_000, 10).unwrap()[..],
        &data[70_000..70_010]
    );
    // A partial overwrite of the damaged sector refuses to seal the damage under a new CRC.
    let err = e
        .stage(
            c,
            ChunkVersion(2),
            CV,
            Mutation::Write {
                offset: 65_536 + 100,
                data: b"xy",
            },
            None,
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Checksum { block: 1, .. }),
        "{err:?}"
    );
    // An overwrite elsewhere in the block copies the damaged sector with its old CRC: still
    // detected afterwards.
    e.stage(
        c,
        ChunkVersion(2),
        CV,
        Mutation::Write {
            offset: 65_536 + 9000,
            data: b"xy",
        },
        None,
    )
    .unwrap();
    e.commit(c, ChunkVersion(2)).unwrap();
    assert!(e.read(c, ChunkVersion(2), 65_536, 4096).is_err());
    assert_eq!(
        &e.read(c, ChunkVersion(2), 65_536 + 9000, 2).unwrap()[..],
        b"xy"
    );
    // Reinstalling a good copy repairs it.
    e.install(c, ChunkVersion(1), CV, &data).unwrap();
    assert!(e.info(c).unwrap().pending.is_none());
    assert_eq!(read_all(&e, c), data);
}

/// A write covering whole blocks does not read the blocks it replaces: it succeeds over a
/// damaged block (nothing of it survives).
fn whole_block_overwrite_does_not_read_the_old_block<H: Harness>(h: &H) {
    let e = h.open();
    let c = cid(1);
    write(
        &e,
        c,
        Mutation::Write {
            offset: 0,
            data: &pattern(1, 3 * BLOCK_BYTES as usize),
        },
    );
    h.corrupt(&e, e.committed_slots(c)[1]);
    let fresh = pattern(2, BLOCK_BYTES as usize);
    write(
        &e,
        c,
        Mutation::Write {
            offset: BLOCK_BYTES,
            data: &fresh,
        },
    );
    assert_eq!(
        &e.read(c, ChunkVersion(2), BLOCK_BYTES, BLOCK_BYTES)
            .unwrap()[..],
        &fresh[..]
    );
}

#[test]
fn whole_block_overwrite_does_not_read_the_old_block_file() {
    whole_block_overwrite_does_not_read_the_old_block(&file(None));
}

#[test]
fn whole_block_overwrite_does_not_read_the_old_block_mem() {
    whole_block_overwrite_does_not_read_the_old_block(&mem(1 << 30));
}

/// Exactly-once across restarts: a chunk's record remembers its last `RECENT_UPDATES_MAX`
/// client updates, so a reopened engine still knows what a retried request produced.
fn applied_updates_survive_reopen<H: Harness>(h: &H) {
    use crate::limits::RECENT_UPDATES_MAX;
    let c = cid(5);
    {
        let e = h.open();
        for r in 1..=(RECENT_UPDATES_MAX as u64 + 3) {
            let v = ChunkVersion(r as u32);
            e.stage(
                c,
                v,
                CV,
                Mutation::Write {
                    offset: r as u32 * 10,
                    data: b"0123456789",
                },
                Some((ClientId(7), RequestId(r))),
            )
            .unwrap();
            e.commit(c, v).unwrap();
        }
        // A pending update is not "applied" yet.
        e.stage(
            c,
            ChunkVersion(100),
            CV,
            Mutation::Truncate { length: 1 },
            Some((ClientId(7), RequestId(100))),
        )
        .unwrap();
        assert_eq!(e.applied(c, ClientId(7), RequestId(100)), None);
    }
    let e = h.open();
    let newest = RECENT_UPDATES_MAX as u64 + 3;
    assert_eq!(
        e.applied(c, ClientId(7), RequestId(newest)),
        Some((ChunkVersion(newest as u32), (newest as u32 + 1) * 10))
    );
    assert_eq!(
        e.applied(c, ClientId(7), RequestId(4)),
        Some((ChunkVersion(4), 50)),
        "the oldest remembered update"
    );
    assert_eq!(e.applied(c, ClientId(7), RequestId(3)), None, "bounded");
    assert_eq!(e.applied(c, ClientId(8), RequestId(newest)), None);
}

#[test]
fn applied_updates_survive_reopen_file() {
    applied_updates_survive_reopen(&file(None));
}

#[test]
fn applied_updates_survive_reopen_mem() {
    applied_updates_survive_reopen(&mem(1 << 30));
}

#[test]
fn checksum_mismatch_is_detected_file() {
    checksum_detected(&file(None));
}

#[test]
fn checksum_mismatch_is_detected_mem() {
    checksum_detected(&mem(1 << 30));
}

fn no_space<H: Harness>(h: &H) {
    let e = h.open();
    let keep = pattern(1, 200_000); // 4 blocks
    write(
        &e,
        cid(1),
        Mutation::Write {
            offset: 0,
            data: &keep,
        },
    );
    let big = pattern(2, 400_000); // 7 blocks: does not fit in the 4 left
    let err = e.stage(
        cid(2),
        ChunkVersion(1),
        CV,
        Mutation::Write {
            offset: 0,
            data: &big,
        },
        None,
    );
    assert!(matches!(err, Err(StoreError::NoSpace)), "{err:?}");
    assert_eq!(err.unwrap_err().code(), ErrorCode::NoSpace);
    // Overwriting the existing chunk needs fresh blocks too (copy-on-write): refused the same
    // way, and the committed bytes stay intact.
    let err = e.stage(
        cid(1),
        ChunkVersion(2),
        CV,
        Mutation::Replace { data: &big },
        None,
    );
    assert!(matches!(err, Err(StoreError::NoSpace)));
    assert_eq!(read_all(&e, cid(1)), keep);
    assert!(e.info(cid(2)).is_none());
    assert_eq!(e.space().used_bytes, 4 * BLOCK_BYTES as u64);
    // Small writes still fit; freeing space makes room again.
    write(
        &e,
        cid(3),
        Mutation::Write {
            offset: 0,
            data: b"small",
        },
    );
    e.remove(cid(1)).unwrap();
    write(
        &e,
        cid(2),
        Mutation::Write {
            offset: 0,
            data: &big,
        },
    );
    assert_eq!(read_all(&e, cid(2)), big);
}

#[test]
fn full_target_is_no_space_file() {
    no_space(&file(Some(8 * BLOCK_BYTES as u64)));
}

#[test]
fn full_target_is_no_space_mem() {
    no_space(&mem(8 * BLOCK_BYTES as u64));
}

/// `commit_lazy`: the switch is visible at once, but the slots of the version it replaced stay
/// unused until a durable change (the durable records may still name them: a crash would bring
/// that version back, and its bytes must still be there); `persist_records` or any durable
/// commit releases them; a full target makes that durable change itself rather than failing.
fn lazy_commits_keep_replaced_slots_until_durable<H: Harness>(h: &H) {
    let e = h.open();
    let v1 = pattern(1, 4 * BLOCK_BYTES as usize); // 4 blocks
    write(&e, cid(1), Mutation::Replace { data: &v1 });
    let old: std::collections::HashSet<u32> = e.committed_slots(cid(1)).into_iter().collect();
    assert_eq!(old.len(), 4);
    let v2 = pattern(2, 4 * BLOCK_BYTES as usize);
    e.stage(
        cid(1),
        ChunkVersion(2),
        CV,
        Mutation::Replace { data: &v2 },
        None,
    )
    .unwrap();
    e.persist_records().unwrap();
    let c = e.commit_lazy(cid(1), ChunkVersion(2)).unwrap();
    assert_eq!(c.version, ChunkVersion(2));
    assert_eq!(read_all(&e, cid(1)), v2);
    assert_eq!(e.info(cid(1)).unwrap().pending, None);
    // Still counted as used, and never handed out before a durable change.
    assert_eq!(e.space().used_bytes, 8 * BLOCK_BYTES as u64);
    write(&e, cid(2), Mutation::Replace { data: &v1 });
    let second: std::collections::HashSet<u32> = e.committed_slots(cid(2)).into_iter().collect();
    // `write` commits durably: that released the lazy slots, but only after chunk 2 had
    // taken its own.
    assert!(old.is_disjoint(&second), "{old:?} reused by {second:?}");
    assert_eq!(e.space().used_bytes, 8 * BLOCK_BYTES as u64);
    // Another lazy commit, then `persist_records`: the replaced slots come back.
    e.stage(
        cid(2),
        ChunkVersion(2),
        CV,
        Mutation::Replace { data: &v2 },
        None,
    )
    .unwrap();
    e.persist_records().unwrap();
    e.commit_lazy(cid(2), ChunkVersion(2)).unwrap();
    assert_eq!(e.space().used_bytes, 12 * BLOCK_BYTES as u64);
    e.persist_records().unwrap();
    assert_eq!(e.space().used_bytes, 8 * BLOCK_BYTES as u64);
    assert_eq!(read_all(&e, cid(1)), v2);
    assert_eq!(read_all(&e, cid(2)), v2);
    drop(e);
    let e = h.open();
    assert_eq!(read_all(&e, cid(1)), v2);
    assert_eq!(read_all(&e, cid(2)), v2);
    assert_eq!(e.space().used_bytes, 8 * BLOCK_BYTES as u64);
}

#[test]
fn lazy_commits_keep_replaced_slots_until_durable_file() {
    lazy_commits_keep_replaced_slots_until_durable(&file(None));
}

#[test]
fn lazy_commits_keep_replaced_slots_until_durable_mem() {
    lazy_commits_keep_replaced_slots_until_durable(&mem(1 << 30));
}

/// `persist_records` is a group commit: it makes a durable commit only when no durable commit
/// since the caller's changes covers them, and every change made before is durable after it.
fn persist_records_is_a_group_commit<H: Harness>(h: &H) {
    let e = h.open();
    let stage = |c: u64, v: u32| {
        e.stage(
            cid(c),
            ChunkVersion(v),
            CV,
            Mutation::Replace { data: b"x" },
            None,
        )
        .unwrap()
    };
    let n0 = e.durable_record_commits();
    stage(1, 1);
    stage(2, 1);
    e.persist_records().unwrap();
    assert_eq!(
        e.durable_record_commits(),
        n0 + 1,
        "one commit for both stages"
    );
    e.persist_records().unwrap();
    assert_eq!(
        e.durable_record_commits(),
        n0 + 1,
        "nothing new to make durable"
    );
    // A durable commit covers what was staged before it.
    stage(3, 1);
    e.commit(cid(1), ChunkVersion(1)).unwrap();
    assert_eq!(e.durable_record_commits(), n0 + 2);
    e.persist_records().unwrap();
    assert_eq!(e.durable_record_commits(), n0 + 2, "covered by the commit");
    // A lazy commit is a change like any other.
    e.commit_lazy(cid(2), ChunkVersion(1)).unwrap();
    e.persist_records().unwrap();
    assert_eq!(e.durable_record_commits(), n0 + 3);
    drop(e);
    let e = h.open();
    assert_eq!(read_all(&e, cid(1)), b"x");
    assert_eq!(read_all(&e, cid(2)), b"x");
    assert_eq!(
        e.info(cid(3)).unwrap().pending.unwrap().version,
        ChunkVersion(1)
    );
}

#[test]
fn persist_records_is_a_group_commit_file() {
    persist_records_is_a_group_commit(&file(None));
}

#[test]
fn persist_records_is_a_group_commit_mem() {
    persist_records_is_a_group_commit(&mem(1 << 30));
}

/// `read_crc_nowait` answers exactly what `read_crc` does whenever it answers (holes, block
/// spans, edges), and answers from the page cache on a buffered file backend.
fn nowait_reads_match_waiting_reads<H: Harness>(h: &H, expect_answers: bool) {
    let e = h.open();
    let bb = BLOCK_BYTES as usize;
    let v = pattern(7, 3 * bb + 5000);
    write(&e, cid(1), Mutation::Replace { data: &v[..bb] });
    // A hole in block 1, data in blocks 2 and 3.
    let ver = write(
        &e,
        cid(1),
        Mutation::Write {
            offset: (2 * bb) as u32,
            data: &v[2 * bb..],
        },
    )
    .version;
    let mut answered = 0;
    for (off, len) in [
        (0u32, 4096u32),
        (100, 10),
        (bb as u32 - 10, 20),
        (0, (3 * bb + 5000) as u32),
        (bb as u32 + 7, bb as u32),
        ((3 * bb) as u32, u32::MAX),
        ((5 * bb) as u32, 100),
    ] {
        let want = e.read_crc(cid(1), ver, off, len).unwrap();
        if let Some(got) = e.read_crc_nowait(cid(1), ver, off, len) {
            assert_eq!(got.unwrap(), want, "range {off}+{len}");
            // (A range past the end is answered without any I/O on every backend.)
            answered += usize::from(!want.0.is_empty());
        }
    }
    assert_eq!(answered > 0, expect_answers, "{answered} answered");
}

#[test]
fn nowait_reads_match_waiting_reads_file() {
    nowait_reads_match_waiting_reads(&file(None), true);
}

#[test]
fn nowait_reads_match_waiting_reads_file_sync() {
    nowait_reads_match_waiting_reads(&file_sync(None), true);
}

#[test]
fn nowait_reads_match_waiting_reads_direct() {
    nowait_reads_match_waiting_reads(&file_direct(None), false);
}

#[test]
fn nowait_reads_match_waiting_reads_mem() {
    nowait_reads_match_waiting_reads(&mem(1 << 30), true);
}

/// Blocks staged without a data sync are synced by the next durable record commit, before
/// it, and only then; a failed data sync stops the store from making anything durable.
#[test]
fn unsynced_stages_are_synced_before_a_durable_record_names_them() {
    let b = MemBackend::new(1 << 30);
    let e = Engine::open(b.clone()).unwrap();
    let put = |c: u64, synced: bool| {
        let m = Mutation::Replace { data: b"abc" };
        if synced {
            e.stage(cid(c), ChunkVersion(1), CV, m, None)
        } else {
            e.stage_unsynced(cid(c), ChunkVersion(1), CV, m, None, None)
        }
    };
    let s0 = b.data_syncs();
    put(1, false).unwrap();
    assert_eq!(b.data_syncs(), s0, "an unsynced stage synced");
    assert_eq!(
        e.info(cid(1)).unwrap().pending.unwrap().version,
        ChunkVersion(1),
        "the pending version is visible at once"
    );
    e.persist_records().unwrap();
    assert_eq!(
        b.data_syncs(),
        s0 + 1,
        "the durable commit did not sync the data"
    );
    assert_eq!(e.deferred_data_syncs(), 1);
    // A synced stage leaves nothing for the next durable commit to sync.
    put(2, true).unwrap();
    assert_eq!(b.data_syncs(), s0 + 2);
    e.commit(cid(2), ChunkVersion(1)).unwrap();
    assert_eq!(b.data_syncs(), s0 + 2, "a sync with nothing unsynced");
    // Any durable change syncs what was staged unsynced before it.
    put(3, false).unwrap();
    e.commit(cid(1), ChunkVersion(1)).unwrap();
    assert_eq!(b.data_syncs(), s0 + 3);
    assert_eq!(e.deferred_data_syncs(), 2);
    // A failed data sync: nothing is made durable any more, even once syncs work again.
    b.fail_data_syncs(true);
    put(4, false).unwrap();
    assert!(!e.failed());
    assert!(e.persist_records().is_err());
    assert!(e.failed());
    b.fail_data_syncs(false);
    assert!(e.commit(cid(3), ChunkVersion(1)).is_err());
    assert!(e.persist_records().is_err());
    drop(e);
    let e = Engine::open(b.clone()).unwrap();
    assert!(!e.failed());
    e.commit(cid(3), ChunkVersion(1)).unwrap();
    assert_eq!(read_all(&e, cid(3)), b"abc");
}

/// A full target whose only free slots wait on a lazy commit makes the durable change itself
/// instead of refusing the write.
fn full_target_releases_lazy_slots<H: Harness>(h: &H) {
    let e = h.open();
    let v1 = pattern(1, 4 * BLOCK_BYTES as usize);
    write(&e, cid(1), Mutation::Replace { data: &v1 });
    let v2 = pattern(2, 4 * BLOCK_BYTES as usize);
    e.stage(
        cid(1),
        ChunkVersion(2),
        CV,
        Mutation::Replace { data: &v2 },
        None,
    )
    .unwrap();
    e.persist_records().unwrap();
    e.commit_lazy(cid(1), ChunkVersion(2)).unwrap();
    // 8 slots: 4 hold v2, 4 wait for a durable change.
    let v3 = pattern(3, 4 * BLOCK_BYTES as usize);
    e.stage(
        cid(1),
        ChunkVersion(3),
        CV,
        Mutation::Replace { data: &v3 },
        None,
    )
    .unwrap();
    e.commit(cid(1), ChunkVersion(3)).unwrap();
    assert_eq!(read_all(&e, cid(1)), v3);
    assert_eq!(e.space().used_bytes, 4 * BLOCK_BYTES as u64);
}

#[test]
fn full_target_releases_lazy_slots_file() {
    full_target_releases_lazy_slots(&file(Some(8 * BLOCK_BYTES as u64)));
}

#[test]
fn full_target_releases_lazy_slots_mem() {
    full_target_releases_lazy_slots(&mem(8 * BLOCK_BYTES as u64));
}

/// For every crash point and kind of update: reopen gives the state before the update (crash
/// before the metadata commit) or after it (crash after), never a mix, and no leaked space.
fn crash_points<H: Harness>(make: impl Fn() -> H) {
    let old = pattern(1, 300_000);
    let new = pattern(2, 150_000);
    type Op = fn(&dyn ChunkStore, &[u8]) -> Result<(), StoreError>;
    let ops: [(&str, Op); 4] = [
        ("stage-overwrite", |s, d| {
            s.stage(
                cid(1),
                ChunkVersion(2),
                CV,
                Mutation::Write {
                    offset: 100_000,
                    data: d,
                },
                None,
            )
            .map(|_| ())
        }),
        ("stage-new-chunk", |s, d| {
            s.stage(
                cid(2),
                ChunkVersion(1),
                CV,
                Mutation::Replace { data: d },
                None,
            )
            .map(|_| ())
        }),
        ("install", |s, d| {
            s.install(cid(1), ChunkVersion(7), CV, d).map(|_| ())
        }),
        ("truncate", |s, _| {
            s.stage(
                cid(1),
                ChunkVersion(2),
                CV,
                Mutation::Truncate { length: 70_000 },
                None,
            )
            .map(|_| ())
        }),
    ];
    for (name, op) in ops {
        for point in CrashPoint::ALL {
            let h = make();
            let e = h.open();
            write(
                &e,
                cid(1),
                Mutation::Write {
                    offset: 0,
                    data: &old,
                },
            );
            let used_before = e.space().used_bytes;
            e.set_failpoint(Some(Arc::new(move |p| p == point)));
            let r = op(&e, &new);
            let crashed = matches!(r, Err(StoreError::Crashed(p)) if p == point);
            drop(e);
            let e = h.open();
            let info = e.info(cid(1)).unwrap();
            // The committed version of chunk 1 is either untouched or (install after the
            // metadata commit) the new one; a stage only ever adds a pending version.
            let committed = read_all(&e, cid(1));
            if name == "install" && (point == CrashPoint::AfterMetaCommit || !crashed) {
                assert_eq!(committed, new, "{name} at {point:?}");
            } else {
                assert_eq!(committed, old, "{name} at {point:?}");
            }
            // A pending version, if it survived, is complete.
            if let Some(p) = info.pending {
                let mut want = old.clone();
                match name {
                    "stage-overwrite" => apply_model(
                        &mut want,
                        Mutation::Write {
                            offset: 100_000,
                            data: &new,
                        },
                    ),
                    "truncate" => want.truncate(70_000),
                    _ => unreachable!("only stages leave a pending version"),
                }
                assert_eq!(
                    e.read(cid(1), p.version, 0, u32::MAX).unwrap().to_vec(),
                    want
                );
            }
            if let Some(i2) = e.info(cid(2)) {
                let v = i2.pending.unwrap().version;
                assert_eq!(e.read(cid(2), v, 0, u32::MAX).unwrap().to_vec(), new);
            }
            // Space: exactly what the surviving versions reference (orphans reclaimed).
            let mut expect = used_before;
            let blocks = |n: usize| n.div_ceil(BLOCK_BYTES as usize) as u64 * BLOCK_BYTES as u64;
            if let Some(p) = info.pending {
                expect += match name {
                    "stage-overwrite" => 3 * BLOCK_BYTES as u64, // blocks 1..=3 touched
                    "truncate" => BLOCK_BYTES as u64,            // the cut last block
                    _ => 0,
                };
                let _ = p;
            }
            if e.info(cid(2)).is_some() {
                expect += blocks(new.len());
            }
            if name == "install" && committed == new {
                expect = blocks(new.len());
            }
            assert_eq!(e.space().used_bytes, expect, "{name} at {point:?}: space");
            // The store keeps working after recovery.
            write(
                &e,
                cid(3),
                Mutation::Write {
                    offset: 0,
                    data: b"after",
                },
            );
            assert_eq!(read_all(&e, cid(3)), b"after");
        }
    }
}

#[test]
fn crash_points_file() {
    crash_points(|| file(None));
}

#[test]
fn crash_points_mem() {
    crash_points(|| mem(1 << 30));
}

/// A record naming a slot past the data file (damaged metadata) is refused at open with an
/// error, without an allocation sized by the slot number (found by the `chunk_record` fuzzer).
fn record_past_data_file_is_refused<H: Harness>(h: H) {
    let e = h.open();
    write(&e, cid(1), Mutation::Replace { data: &[7; 1000] });
    let mut recs = e.backend().load_meta().unwrap();
    drop(e);
    let (id, rec) = &mut recs[0];
    rec.committed.as_mut().unwrap().blocks[0].slot = 4_000_000_000;
    h.open()
        .backend()
        .commit_meta(&[(*id, Some(rec.clone()))], true)
        .unwrap();
    let err = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.open())) {
        Ok(_) => panic!("a record past the data file opened"),
        Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(err.contains("beyond the"), "unexpected failure: {err}");
}

#[test]
fn record_past_data_file_is_refused_file() {
    record_past_data_file_is_refused(file(None));
}

#[test]
fn record_past_data_file_is_refused_mem() {
    record_past_data_file_is_refused(mem(1 << 30));
}

#[test]
fn conformance_file_sync() {
    suite(&file_sync(None));
}

#[test]
fn conformance_file_direct() {
    suite(&file_direct(None));
}

#[test]
fn whole_block_overwrite_does_not_read_the_old_block_file_sync() {
    whole_block_overwrite_does_not_read_the_old_block(&file_sync(None));
}

#[test]
fn whole_block_overwrite_does_not_read_the_old_block_file_direct() {
    whole_block_overwrite_does_not_read_the_old_block(&file_direct(None));
}

#[test]
fn applied_updates_survive_reopen_file_sync() {
    applied_updates_survive_reopen(&file_sync(None));
}

#[test]
fn applied_updates_survive_reopen_file_direct() {
    applied_updates_survive_reopen(&file_direct(None));
}

#[test]
fn checksum_mismatch_is_detected_file_sync() {
    checksum_detected(&file_sync(None));
}

#[test]
fn checksum_mismatch_is_detected_file_direct() {
    checksum_detected(&file_direct(None));
}

#[test]
fn full_target_is_no_space_file_sync() {
    no_space(&file_sync(Some(8 * BLOCK_BYTES as u64)));
}

#[test]
fn full_target_is_no_space_file_direct() {
    no_space(&file_direct(Some(8 * BLOCK_BYTES as u64)));
}

#[test]
fn crash_points_file_sync() {
    crash_points(|| file_sync(None));
}

#[test]
fn crash_points_file_direct() {
    crash_points(|| file_direct(None));
}

#[test]
fn record_past_data_file_is_refused_file_sync() {
    record_past_data_file_is_refused(file_sync(None));
}

#[test]
fn record_past_data_file_is_refused_file_direct() {
    record_past_data_file_is_refused(file_direct(None));
}

#[test]
fn io_options_from_environment_values() {
    let d = IoOptions::default();
    assert_eq!(IoOptions::parse(None, None).unwrap(), d);
    assert!(!IoOptions::parse(Some("sync"), None).unwrap().uring);
    assert!(IoOptions::parse(Some("uring"), None).unwrap().uring);
    assert!(IoOptions::parse(Some("bogus"), None).is_err());
    let all = IoOptions::parse(None, Some("all")).unwrap();
    assert!(all.direct_writes && all.direct_reads_from == Some(0));
    let w = IoOptions::parse(None, Some("writes")).unwrap();
    assert!(w.direct_writes && w.direct_reads_from.is_none());
    let r = IoOptions::parse(None, Some("writes, reads")).unwrap();
    assert!(r.direct_writes && r.direct_reads_from == Some(0));
    let n = IoOptions::parse(None, Some("none")).unwrap();
    assert!(!n.direct_writes && n.direct_reads_from.is_none());
    assert!(IoOptions::parse(None, Some("sometimes")).is_err());
    assert!(d.cache_first && d.direct_reads_from.is_none() && !d.direct_writes);
    let rr = IoOptions::parse(None, Some("ring-reads")).unwrap();
    assert!(!rr.cache_first && !rr.pread_misses && rr.direct_reads_from.is_none());
    assert!(d.pread_misses);
    let rm = IoOptions::parse(None, Some("ring-misses")).unwrap();
    assert!(rm.cache_first && !rm.pread_misses);
}

/// The forced fallback and io_uring read each other's files: a target can switch paths
/// across a restart.
#[test]
fn io_paths_share_one_format() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(3, 3 * BLOCK_BYTES as usize + 1234);
    let paths = [
        file_sync(None).2,
        IoOptions::default(),
        file_direct(None).2,
        file_sync(None).2,
    ];
    for (n, io) in paths.into_iter().enumerate() {
        let e = Engine::open(FileBackend::open_with(dir.path(), None, io).unwrap()).unwrap();
        if n > 0 {
            assert_eq!(
                read_all(&e, cid(n as u64 - 1)),
                data,
                "written before, read with {io:?}"
            );
        }
        write(&e, cid(n as u64), Mutation::Replace { data: &data });
        // An unaligned write into the short last block (read-modify-write on this path).
        let len = data.len() as u32;
        e.stage(
            cid(n as u64),
            ChunkVersion(2),
            CV,
            Mutation::Write {
                offset: len - 10,
                data: b"0123456789abc",
            },
            None,
        )
        .unwrap();
        e.abort(cid(n as u64), ChunkVersion(2)).unwrap();
    }
}

/// Reads of data the page cache does not hold (evicted after the write), or holds in part:
/// on the default path the missing part is read with `pread` (with `ring-misses`, through the
/// ring; with O_DIRECT reads, through the ring with O_DIRECT), and
/// every range reads back what was written, up to the unaligned end of the chunk.
fn cold_reads(h: &FileH) {
    use std::os::fd::AsRawFd;
    let e = h.open();
    let data = pattern(11, 5 * BLOCK_BYTES as usize + 3001);
    write(&e, cid(1), Mutation::Replace { data: &data });
    let evict = || {
        let f = std::fs::File::open(e.backend().data_path()).unwrap();
        // SAFETY: advisory call on a valid descriptor.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    };
    let ranges: [(u32, u32); 6] = [
        (0, u32::MAX),
        (5, 4096),
        (BLOCK_BYTES - 100, 200),
        (BLOCK_BYTES, 3 * BLOCK_BYTES),
        (4 * BLOCK_BYTES + 7, BLOCK_BYTES + 5000),
        (data.len() as u32 - 10, 100),
    ];
    for (off, len) in ranges {
        evict();
        let got = e.read(cid(1), ChunkVersion(1), off, len).unwrap();
        let end = (off as usize).saturating_add(len as usize).min(data.len());
        assert_eq!(&got[..], &data[off as usize..end], "cold {off}+{len}");
        // Partly warm: one sector in the middle of the range is cached, the rest is not.
        evict();
        let mid = off + (end as u32 - off) / 2;
        e.read(cid(1), ChunkVersion(1), mid, 1).unwrap();
        let got = e.read(cid(1), ChunkVersion(1), off, len).unwrap();
        assert_eq!(&got[..], &data[off as usize..end], "part warm {off}+{len}");
    }
    let p = e.backend().read_paths();
    let o = e.backend().io_options();
    if !o.uring {
        assert_eq!(p, Default::default());
    } else if o.cache_first && o.pread_misses {
        // Cold reads with `pread` on this thread (the default); a range the 1-byte read warmed
        // from the cache; nothing through the ring. (`POSIX_FADV_DONTNEED` can leave pages
        // that sit in another CPU's LRU batch: on a busy machine a CI run saw 4 of the 6
        // evicted ranges miss, hence at least half.)
        assert!(p.cached >= 1 && p.pread >= 3, "{p:?}");
        assert_eq!((p.ring_buffered, p.ring_direct), (0, 0), "{p:?}");
    } else if o.cache_first {
        // Cold reads through the ring, buffered; a range the 1-byte read warmed from the cache.
        assert!(p.cached >= 1 && p.ring_buffered >= 3, "{p:?}");
        assert_eq!((p.ring_direct, p.pread), (0, 0), "{p:?}");
    } else {
        assert_eq!(p.cached, 0, "{p:?}");
        assert!(p.ring_direct >= 12, "{p:?}");
    }
}

#[test]
fn cold_reads_file() {
    cold_reads(&file(None));
}

/// Page-cache misses through the ring (`POND_STORAGE_DIRECT=ring-misses`, the default before).
#[test]
fn cold_reads_file_ring_misses() {
    cold_reads(&file_with(
        None,
        IoOptions {
            pread_misses: false,
            ..IoOptions::default()
        },
    ));
}

#[test]
fn cold_reads_file_sync() {
    cold_reads(&file_sync(None));
}

#[test]
fn cold_reads_file_direct() {
    cold_reads(&file_direct(None));
}
