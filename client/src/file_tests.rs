//! File API tests against in-memory meta and storage (`testkit`): striping, write-behind,
//! length reporting, truncate, retries and failover, open-unlinked files.

use crate::testkit::{self, TEST_CHUNK};
use crate::{OpenMode, OpenOptions};
use futures::StreamExt;
use pond_proto::cluster::PublicState;
use pond_proto::meta::{Caller, SetAttr};
use pond_proto::{ChainId, ChainVersion, ErrorCode, InodeId, RoutingVersion, TargetId};
use rand::{Rng, SeedableRng};
use std::time::Duration;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| r.random()).collect()
}

#[tokio::test]
async fn sequential_writes_stripe_and_read_back_exactly() {
    let (c, meta, storage) = testkit::client().await;
    let data = pattern(1, 10 * TEST_CHUNK as usize + 123);
    let mut f = c.create_file("/seq").await.unwrap();
    for part in data.chunks(7_000) {
        f.write_all(part).await.unwrap();
    }
    assert_eq!(
        f.size(),
        data.len() as u64,
        "local size counts buffered writes"
    );
    f.close().await.unwrap();
    let attr = meta.attr(f.inode()).unwrap();
    assert_eq!(attr.size, data.len() as u64, "length exact after close");
    assert_eq!(meta.sessions(f.inode()), 0, "session closed");
    // 11 chunks spread round robin over the file's 3 chains.
    let chunks = storage.chunks.lock().len();
    assert_eq!(chunks, 11);
    assert_eq!(c.read_file("/seq").await.unwrap(), data);
    assert_eq!(c.stat("/seq").await.unwrap().size, data.len() as u64);
}

#[tokio::test]
async fn random_operations_match_a_byte_model() {
    let (c, meta, storage) = testkit::client().await;
    storage.faults.lock().jitter_ms = 2;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let a = c
        .open(
            "/r",
            OpenOptions {
                mode: OpenMode::READ_WRITE,
                ..OpenOptions::write()
            },
        )
        .await
        .unwrap();
    let b = c
        .open("/r", OpenOptions::existing(OpenMode::READ_WRITE))
        .await
        .unwrap();
    assert!(
        meta.sessions(a.inode()) <= 1,
        "at most one session per inode per client"
    );
    let mut model: Vec<u8> = Vec::new();
    for step in 0..300 {
        let h = if rng.random_bool(0.5) { &a } else { &b };
        match rng.random_range(0..10) {
            0..=4 => {
                let off = rng.random_range(0..8 * TEST_CHUNK as u64);
                let len = rng.random_range(1..3 * TEST_CHUNK as usize);
                let d = pattern(step, len);
                h.pwrite(off, &d).await.unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&d);
            }
            5..=7 => {
                let off = rng.random_range(0..9 * TEST_CHUNK as u64);
                let len = rng.random_range(0..3 * TEST_CHUNK as usize);
                let got = h.pread(off, len).await.unwrap();
                let want: &[u8] = if (off as usize) < model.len() {
                    &model[off as usize..(off as usize + len).min(model.len())]
                } else {
                    &[]
                };
                assert_eq!(
                    got.len(),
                    want.len(),
                    "step {step}: read length at {off}+{len}"
                );
                assert!(got[..] == *want, "step {step}: read bytes at {off}+{len}");
            }
            8 => {
                let size = rng.random_range(0..6 * TEST_CHUNK as u64);
                h.truncate(size).await.unwrap();
                model.resize(size as usize, 0);
            }
            _ => {
                h.fsync().await.unwrap();
                assert_eq!(
                    meta.attr(a.inode()).unwrap().size,
                    model.len() as u64,
                    "step {step}: size after fsync"
                );
            }
        }
        assert_eq!(h.size(), model.len() as u64, "step {step}: local size");
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
    assert_eq!(meta.sessions(a.inode()), 0);
    assert_eq!(meta.attr(a.inode()).unwrap().size, model.len() as u64);
    assert_eq!(c.read_file("/r").await.unwrap(), model);
}

/// Takes `node`'s targets out of every chain (offline, moved to the end) and bumps versions,
/// as the cluster manager does when a node stops heartbeating.
fn without_node(
    mut info: pond_proto::cluster::RoutingInfo,
    node: u32,
    version: u64,
) -> pond_proto::cluster::RoutingInfo {
    info.version = RoutingVersion(version);
    let dead: Vec<TargetId> = info
        .targets
        .values()
        .filter(|t| t.node.0 == node)
        .map(|t| t.id)
        .collect();
    for t in &dead {
        info.targets.get_mut(t).unwrap().public_state = PublicState::Offline;
    }
    for c in info.chains.values_mut() {
        c.targets.sort_by_key(|t| dead.contains(t));
        c.version = ChainVersion(c.version.0 + 1);
    }
    info
}

#[tokio::test]
async fn writes_and_reads_survive_a_dead_node() {
    let (c, meta, storage) = testkit::client().await;
    let data = pattern(3, 6 * TEST_CHUNK as usize);
    c.write_file("/before", &data).await.unwrap();
    // node2 dies; the cluster manager notices a moment later.
    storage.faults.lock().down = vec!["node2".into()];
    let (m, s) = (meta.clone(), storage.clone());
    let manager = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = without_node(m.routing(), 2, 2);
        *s.routing.lock() = next.clone();
        m.set_routing(next);
    });
    // Reads go around the dead node at once (other replicas serve).
    assert_eq!(c.read_file("/before").await.unwrap(), data);
    // Writes to chains headed on node2 wait for the new routing, then succeed.
    c.write_file("/after", &data).await.unwrap();
    manager.await.unwrap();
    assert_eq!(c.read_file("/after").await.unwrap(), data);
    assert!(c.routing().version >= RoutingVersion(2));
}

#[tokio::test]
async fn stale_chain_versions_refresh_routing() {
    let (c, meta, storage) = testkit::client().await;
    let mut next = meta.routing();
    next.version = RoutingVersion(5);
    for ch in next.chains.values_mut() {
        ch.version = ChainVersion(9);
    }
    *storage.routing.lock() = next.clone();
    meta.set_routing(next);
    let data = pattern(4, 100_000);
    c.write_file("/stale", &data).await.unwrap();
    assert_eq!(c.read_file("/stale").await.unwrap(), data);
    assert_eq!(c.routing().version, RoutingVersion(5));
}

#[tokio::test]
async fn checksum_errors_are_read_from_another_replica() {
    let (c, _meta, storage) = testkit::client().await;
    let data = pattern(5, 3 * TEST_CHUNK as usize);
    c.write_file("/crc", &data).await.unwrap();
    // Chain 2 (chunk 0) replicas are targets 21, 22, 23: two of them are corrupt.
    storage.faults.lock().corrupt = vec![TargetId(21), TargetId(22)];
    for _ in 0..5 {
        assert_eq!(c.read_file("/crc").await.unwrap(), data);
    }
    assert!(
        storage
            .reads_by_target
            .lock()
            .get(&TargetId(23))
            .copied()
            .unwrap_or(0)
            >= 5
    );
}

#[tokio::test]
async fn a_chunk_is_read_from_one_replica_when_idle_and_from_all_under_load() {
    let (c, _meta, storage) = testkit::client().await;
    let data = pattern(6, 4096);
    c.write_file("/hot", &data).await.unwrap();
    let f = c.open("/hot", OpenOptions::read()).await.unwrap();
    // One read at a time: every one goes to the chunk's preferred replica (its page cache).
    for k in 0..20 {
        f.pread((k % 4) * 1024, 1024).await.unwrap();
    }
    let by = storage.reads_by_target.lock().clone();
    assert_eq!(
        by.len(),
        1,
        "idle reads of one chunk on one replica: {by:?}"
    );
    // Many at once, each answered after a delay: past the slack they spread over all three.
    storage.reads_by_target.lock().clear();
    storage.faults.lock().jitter_ms = 3;
    let reads = (0..300).map(|k| f.pread((k % 4) * 1024, 1024));
    for r in futures::future::join_all(reads).await {
        r.unwrap();
    }
    f.close().await.unwrap();
    let by = storage.reads_by_target.lock().clone();
    for t in [21, 22, 23] {
        assert!(
            by.get(&TargetId(t)).copied().unwrap_or(0) >= 30,
            "replica {t} used: {by:?}"
        );
    }
}

#[tokio::test]
async fn o_trunc_truncates_whatever_the_access_mode() {
    let (c, _meta, _storage) = testkit::client().await;
    for (name, mode) in [("/r", OpenOptions::read()), ("/w", OpenOptions::write())] {
        c.write_file(name, &pattern(7, 10_000)).await.unwrap();
        let f = c
            .open(
                name,
                OpenOptions {
                    truncate: true,
                    ..mode
                },
            )
            .await
            .unwrap();
        f.close().await.unwrap();
        assert_eq!(c.stat(name).await.unwrap().size, 0, "{name}");
        assert!(c.read_file(name).await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn truncate_trims_chunks_and_extends_with_zeros() {
    let (c, meta, storage) = testkit::client().await;
    let data = pattern(8, 5 * TEST_CHUNK as usize);
    c.write_file("/t", &data).await.unwrap();
    let f = c
        .open("/t", OpenOptions::existing(OpenMode::READ_WRITE))
        .await
        .unwrap();
    let cut = TEST_CHUNK as u64 + 5;
    f.truncate(cut).await.unwrap();
    {
        let chunks = storage.chunks.lock();
        let inode = f.inode();
        let mine: Vec<_> = chunks.iter().filter(|(k, _)| k.inode() == inode).collect();
        assert_eq!(mine.len(), 2, "chunks beyond the cut removed");
        let c1 = mine.iter().find(|(k, _)| k.index() == 1).unwrap();
        assert_eq!(c1.1.len(), 5, "boundary chunk cut");
    }
    f.truncate(3 * TEST_CHUNK as u64).await.unwrap();
    let got = f.pread(0, 4 * TEST_CHUNK as usize).await.unwrap();
    assert_eq!(got.len(), 3 * TEST_CHUNK as usize);
    assert_eq!(&got[..cut as usize], &data[..cut as usize]);
    assert!(
        got[cut as usize..].iter().all(|b| *b == 0),
        "extension reads as zeros"
    );
    f.close().await.unwrap();
    let a = meta.attr(f.inode()).unwrap();
    assert_eq!(a.size, 3 * TEST_CHUNK as u64);
    assert_eq!(
        a.truncate_version, 2,
        "two truncates (creating the file truncated nothing)"
    );
}

#[tokio::test]
async fn open_unlinked_file_stays_readable_until_closed() {
    let (c, meta, _storage) = testkit::client().await;
    let data = pattern(9, 200_000);
    c.write_file("/gone", &data).await.unwrap();
    let f = c.open("/gone", OpenOptions::read()).await.unwrap();
    let inode = f.inode();
    c.unlink_path("/gone").await.unwrap();
    assert!(matches!(c.stat("/gone").await, Err(e) if e.code() == ErrorCode::NotFound));
    assert_eq!(meta.attr(inode).unwrap().nlink, 0, "inode kept by the pin");
    assert_eq!(&f.pread(0, data.len()).await.unwrap()[..], &data[..]);
    f.close().await.unwrap();
    assert!(meta.attr(inode).is_none(), "dropped at last close");
}

#[tokio::test]
async fn write_errors_surface_at_close() {
    let (c, _meta, storage) = testkit::client().await;
    let f = c.create_file("/err").await.unwrap();
    storage.faults.lock().down = vec!["node1".into(), "node2".into(), "node3".into()];
    f.pwrite(0, &pattern(10, 1000)).await.unwrap();
    // Buffered: the failure shows at flush time. Use a short budget by failing outright.
    let r = tokio::time::timeout(Duration::from_secs(60), f.close())
        .await
        .unwrap();
    assert_eq!(r.unwrap_err().code(), ErrorCode::Unavailable);
}

#[tokio::test]
async fn chown_clears_setuid_and_readdir_streams_pages() {
    let (c, _meta, _storage) = testkit::client().await;
    c.mkdir_path("/d", 0o755).await.unwrap();
    let f = c.create_file("/d/x").await.unwrap();
    f.close().await.unwrap();
    let a = c
        .setattr(
            f.inode(),
            SetAttr {
                mode: Some(0o6755),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.mode, 0o6755);
    let a = c
        .setattr(
            f.inode(),
            SetAttr {
                uid: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.mode, 0o0755, "suid and (group-executable) sgid cleared");
    for k in 0..2500 {
        c.create(
            c.stat("/d").await.unwrap().inode,
            &format!("f{k:05}"),
            0o644,
            Caller::default(),
            true,
        )
        .await
        .unwrap();
    }
    let names: Vec<String> = c
        .read_dir("/d")
        .await
        .unwrap()
        .map(|e| e.unwrap().name)
        .collect()
        .await;
    assert_eq!(names.len(), 2501);
    assert!(names.windows(2).all(|w| w[0] < w[1]));
    let _ = InodeId::ROOT;
    let _ = ChainId(1);
}

#[tokio::test]
async fn a_small_file_written_and_closed_costs_one_meta_request_after_create() {
    use std::sync::atomic::Ordering;
    let (c, meta, _storage) = testkit::client().await;
    let f = c.create_file("/small").await.unwrap();
    assert_eq!(meta.sessions(f.inode()), 1, "the create opened the session");
    let before = meta.ops.load(Ordering::Relaxed);
    f.pwrite(0, &pattern(3, 1000)).await.unwrap();
    f.close().await.unwrap();
    assert_eq!(
        meta.ops.load(Ordering::Relaxed) - before,
        1,
        "the length report closes the session too"
    );
    assert_eq!(meta.sessions(f.inode()), 0);
    assert_eq!(meta.attr(f.inode()).unwrap().size, 1000);
    // An empty create and close: the session close alone.
    let g = c.create_file("/empty").await.unwrap();
    let before = meta.ops.load(Ordering::Relaxed);
    g.close().await.unwrap();
    assert_eq!(meta.ops.load(Ordering::Relaxed) - before, 1);
    assert_eq!(meta.sessions(g.inode()), 0);
}

#[tokio::test]
async fn a_long_writer_holds_a_session_until_close_and_reports_in_the_same_request() {
    use std::sync::atomic::Ordering;
    let (c, meta, _storage) = testkit::client().await;
    let f = c.create_file("/long").await.unwrap();
    // Two full chunks go to storage while the file stays open: a session must hold it.
    let data = pattern(4, 2 * TEST_CHUNK as usize + 10);
    f.pwrite(0, &data).await.unwrap();
    f.flush().await.unwrap();
    assert_eq!(
        meta.sessions(f.inode()),
        1,
        "session opened by background writes"
    );
    let before = meta.ops.load(Ordering::Relaxed);
    let attr = f.flush_for_close().await.unwrap().expect("meta asked");
    assert_eq!(attr.size, data.len() as u64);
    assert_eq!(meta.sessions(f.inode()), 0, "closed with the length");
    assert_eq!(meta.ops.load(Ordering::Relaxed) - before, 1, "one request");
    // The handle still writes (a duplicated descriptor), then closes.
    f.pwrite(data.len() as u64, b"tail").await.unwrap();
    f.close().await.unwrap();
    assert_eq!(meta.sessions(f.inode()), 0);
    assert_eq!(meta.attr(f.inode()).unwrap().size, data.len() as u64 + 4);
    let mut want = data.clone();
    want.extend_from_slice(b"tail");
    assert_eq!(c.read_file("/long").await.unwrap(), want);
}

#[tokio::test]
async fn an_overwrite_in_place_moves_mtime() {
    let (c, meta, _storage) = testkit::client().await;
    c.write_file("/m", &pattern(5, 5000)).await.unwrap();
    let ino = c.stat("/m").await.unwrap().inode;
    meta.set_mtime(ino, pond_proto::meta::Timestamp { sec: 1, nsec: 0 });
    let f = c
        .open("/m", OpenOptions::existing(OpenMode::WRITE))
        .await
        .unwrap();
    f.pwrite(0, b"xyz").await.unwrap();
    f.close().await.unwrap();
    let a = meta.attr(ino).unwrap();
    assert_eq!(a.size, 5000);
    assert!(a.mtime.sec > 1, "mtime moved: {:?}", a.mtime);
}

#[tokio::test]
async fn times_set_while_writes_are_buffered_survive_the_close() {
    // `tar -xp`: write the bytes, set the archived mtime on the open file, close. The close's
    // length report must not stamp its own time over the one set.
    let (c, meta, _storage) = testkit::client().await;
    let f = c.create_file("/t").await.unwrap();
    f.pwrite(0, &pattern(6, 3000)).await.unwrap();
    let old = pond_proto::meta::Timestamp {
        sec: 1_000_000_000,
        nsec: 7,
    };
    let set = SetAttr {
        mtime: Some(old),
        ..Default::default()
    };
    let ops = meta.ops.load(std::sync::atomic::Ordering::Relaxed);
    let a = c.setattr(f.inode(), set).await.unwrap();
    assert_eq!(
        (a.size, a.mtime),
        (3000, old),
        "length and time in one answer"
    );
    assert_eq!(
        meta.ops.load(std::sync::atomic::Ordering::Relaxed) - ops,
        1,
        "the length report rides in the SetAttr"
    );
    f.close().await.unwrap();
    let a = meta.attr(f.inode()).unwrap();
    assert_eq!((a.size, a.mtime), (3000, old));
    // Bytes written after the times were set move mtime again, as on any file system.
    let f = c
        .open("/t", OpenOptions::existing(OpenMode::WRITE))
        .await
        .unwrap();
    f.pwrite(3000, b"more").await.unwrap();
    f.close().await.unwrap();
    let a = meta.attr(f.inode()).unwrap();
    assert_eq!(a.size, 3004);
    assert!(a.mtime.sec > old.sec, "{:?}", a.mtime);
}

/// Waits (real time, bounded) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_file_unlinked_by_another_client_stays_readable_until_closed() {
    let (a, meta, storage) = testkit::client().await;
    let b = testkit::client_of(&meta, &storage).await;
    let data = pattern(6, 3 * TEST_CHUNK as usize + 5);
    a.write_file("/shared", &data).await.unwrap();
    let f = b.open("/shared", OpenOptions::read()).await.unwrap();
    // The read session follows the open in the background.
    eventually("the reader holds a session", || {
        meta.sessions(f.inode()) == 1
    })
    .await;
    a.unlink_path("/shared").await.unwrap();
    assert!(meta.attr(f.inode()).is_some(), "kept while open elsewhere");
    assert_eq!(f.pread(0, data.len()).await.unwrap(), data);
    f.close().await.unwrap();
    assert!(
        meta.attr(f.inode()).is_none(),
        "collected at the last close"
    );
}

#[tokio::test]
async fn a_short_read_only_open_costs_no_session() {
    let (c, meta, _storage) = testkit::client().await;
    let data = pattern(8, 10_000);
    c.write_file("/small", &data).await.unwrap();
    let before = meta
        .session_opens
        .load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..5 {
        let f = c.open("/small", OpenOptions::read()).await.unwrap();
        assert_eq!(f.pread(0, data.len()).await.unwrap(), data);
        f.close().await.unwrap();
    }
    // Past the registration delay: nothing was registered for handles already closed.
    tokio::time::sleep(std::time::Duration::from_millis(
        3 * crate::limits::READ_SESSION_DELAY_MS,
    ))
    .await;
    let after = meta
        .session_opens
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after, before, "no OpenSession for open-read-close");
    let ino = c.stat("/small").await.unwrap().inode;
    assert_eq!(meta.sessions(ino), 0);
}

#[tokio::test]
async fn a_reader_whose_file_went_before_its_session_reads_until_the_grace_then_estale() {
    let (a, meta, storage) = testkit::client().await;
    let b = testkit::client_of(&meta, &storage).await;
    let data = pattern(9, 20_000);
    a.write_file("/brief", &data).await.unwrap();
    let f = b.open("/brief", OpenOptions::read()).await.unwrap();
    // Unlinked by the other client before the reader's session could land.
    a.unlink_path("/brief").await.unwrap();
    assert!(meta.attr(f.inode()).is_none(), "no session held it");
    // Meta's GC grace keeps the chunks: the reader reads on...
    assert_eq!(f.pread(0, data.len()).await.unwrap(), data);
    // ...its registration finds the file gone...
    tokio::time::sleep(std::time::Duration::from_millis(
        4 * crate::limits::READ_SESSION_DELAY_MS,
    ))
    .await;
    assert_eq!(meta.sessions(f.inode()), 0);
    assert_eq!(f.pread(0, 100).await.unwrap(), data[..100]);
    // ...and past the safe window it answers ESTALE rather than chunks that may be gone.
    tokio::time::pause();
    tokio::time::advance(std::time::Duration::from_millis(
        crate::limits::READ_UNREGISTERED_SAFE_MS,
    ))
    .await;
    let e = f.pread(0, 100).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::StaleHandle, "{e}");
    f.close().await.unwrap();
}

/// Reads `f` from `from` to its end in steps of `step` bytes (`pread`), returning the bytes.
async fn read_sequentially(f: &crate::File, from: u64, step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let b = f.pread(at, step).await.unwrap();
        if b.is_empty() {
            return out;
        }
        at += b.len() as u64;
        out.extend_from_slice(&b);
    }
}

#[tokio::test]
async fn sequential_reads_are_served_by_read_ahead_byte_exact() {
    let (c, _meta, storage) = testkit::client().await;
    storage.faults.lock().jitter_ms = 1;
    // Not a multiple of the read-ahead unit or of the chunk: the last range is short.
    let data = pattern(11, (9 << 20) + 12_345);
    c.write_file("/ra", &data).await.unwrap();
    for step in [4096usize, 100_000, 1 << 20, 3 << 20] {
        let f = c.open("/ra", OpenOptions::read()).await.unwrap();
        let got = read_sequentially(&f, 0, step).await;
        assert!(got == data, "step {step}: bytes differ");
        let s = f.read_ahead_stats();
        assert!(s.issued > 0, "step {step}: read-ahead started: {s:?}");
        assert!(
            s.hits > 0,
            "step {step}: reads served from read-ahead: {s:?}"
        );
        assert_eq!(
            s.drops, 0,
            "step {step}: a sequential reader never drops: {s:?}"
        );
        f.close().await.unwrap();
    }
    // The cursor API (pread_into) goes through the same read-ahead.
    let mut f = c.open("/ra", OpenOptions::read()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 70_000];
    loop {
        let n = f.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == data, "read(): bytes differ");
    assert!(f.read_ahead_stats().hits > 0);
    f.close().await.unwrap();
}

#[tokio::test]
async fn random_reads_and_writable_handles_do_not_read_ahead() {
    let (c, _meta, _storage) = testkit::client().await;
    let data = pattern(12, 6 << 20);
    c.write_file("/rnd", &data).await.unwrap();
    let f = c.open("/rnd", OpenOptions::read()).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..200 {
        let off = rng.random_range(0..data.len() as u64 - 4096);
        let b = f.pread(off, 4096).await.unwrap();
        assert_eq!(&b[..], &data[off as usize..off as usize + 4096]);
    }
    assert_eq!(f.read_ahead_stats().issued, 0, "random reads start nothing");
    f.close().await.unwrap();
    // A handle that may write reads without read-ahead (per-read freshness across clients).
    let rw = c
        .open("/rnd", OpenOptions::existing(OpenMode::READ_WRITE))
        .await
        .unwrap();
    assert!(read_sequentially(&rw, 0, 1 << 20).await == data);
    assert_eq!(rw.read_ahead_stats().issued, 0);
    rw.close().await.unwrap();
    // Turned off on a read-only handle.
    let f = c.open("/rnd", OpenOptions::read()).await.unwrap();
    f.set_read_ahead(false);
    assert!(read_sequentially(&f, 0, 1 << 20).await == data);
    assert_eq!(f.read_ahead_stats().issued, 0);
    f.close().await.unwrap();
}

#[tokio::test]
async fn writes_and_truncates_of_another_handle_are_never_hidden_by_read_ahead() {
    let (c, _meta, storage) = testkit::client().await;
    storage.faults.lock().jitter_ms = 2;
    let mib = 1usize << 20;
    let mut model = pattern(13, 8 * mib);
    c.write_file("/ow", &model).await.unwrap();
    let r = c.open("/ow", OpenOptions::read()).await.unwrap();
    let w = c
        .open("/ow", OpenOptions::existing(OpenMode::WRITE))
        .await
        .unwrap();
    let check = |at: usize, b: &[u8], model: &[u8]| {
        assert!(
            b == &model[at..at + b.len()],
            "bytes at {at} (len {}) differ from the model",
            b.len()
        );
    };
    // Read-ahead of the first MiBs is in flight or done.
    let b = r.pread(0, mib).await.unwrap();
    check(0, &b, &model);
    let b = r.pread(mib as u64, mib).await.unwrap();
    check(mib, &b, &model);
    assert!(r.read_ahead_stats().issued >= 4);
    // 1. A buffered overwrite ahead of the reader (inside its window) through another handle.
    let new = pattern(14, 300_000);
    w.pwrite(2 * mib as u64 + 1000, &new).await.unwrap();
    model[2 * mib + 1000..2 * mib + 1000 + new.len()].copy_from_slice(&new);
    let b = r.pread(2 * mib as u64, mib).await.unwrap();
    check(2 * mib, &b, &model);
    assert!(
        r.read_ahead_stats().drops >= 1,
        "the write dropped the window"
    );
    // 2. A direct (unbuffered) write further ahead.
    let b = r.pread(3 * mib as u64, mib).await.unwrap();
    check(3 * mib, &b, &model);
    let direct = bytes::Bytes::from(pattern(15, 70_000));
    w.pwrite_bytes(4 * mib as u64 + 5, direct.clone())
        .await
        .unwrap();
    model[4 * mib + 5..4 * mib + 5 + direct.len()].copy_from_slice(&direct);
    let b = r.pread(4 * mib as u64, mib).await.unwrap();
    check(4 * mib, &b, &model);
    // 3. Truncate below what is read ahead, then extend with a hole and one byte.
    let b = r.pread(5 * mib as u64, mib / 2).await.unwrap();
    check(5 * mib, &b, &model);
    let cut = 5 * mib + mib / 2 + 17;
    w.truncate(cut as u64).await.unwrap();
    model.truncate(cut);
    w.pwrite(7 * mib as u64 - 1, b"z").await.unwrap();
    model.resize(7 * mib - 1, 0);
    model.push(b'z');
    let rest = read_sequentially(&r, 5 * mib as u64 + mib as u64 / 2, 256 << 10).await;
    assert_eq!(rest.len(), model.len() - (5 * mib + mib / 2));
    check(5 * mib + mib / 2, &rest, &model);
    w.close().await.unwrap();
    r.close().await.unwrap();
    assert!(c.read_file("/ow").await.unwrap() == model);
}
