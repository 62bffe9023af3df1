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
        .open(
            "/r",
            OpenOptions {
                mode: OpenMode::READ_WRITE,
                create: false,
                truncate: false,
                ..OpenOptions::write()
            },
        )
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
async fn reads_spread_over_replicas() {
    let (c, _meta, storage) = testkit::client().await;
    let data = pattern(6, 4096);
    c.write_file("/hot", &data).await.unwrap();
    let f = c.open("/hot", OpenOptions::read()).await.unwrap();
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
async fn truncate_trims_chunks_and_extends_with_zeros() {
    let (c, meta, storage) = testkit::client().await;
    let data = pattern(8, 5 * TEST_CHUNK as usize);
    c.write_file("/t", &data).await.unwrap();
    let f = c
        .open(
            "/t",
            OpenOptions {
                mode: OpenMode::READ_WRITE,
                create: false,
                truncate: false,
                ..Default::default()
            },
        )
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

#[test]
fn setgid_directories_pass_their_group_on() {
    let mut parent = testkit_attr();
    parent.mode = 0o2775;
    parent.gid = 77;
    let (c, m) = crate::client::inherit_from(&parent, Caller { uid: 5, gid: 6 }, 0o755, true);
    assert_eq!((c.uid, c.gid, m), (5, 77, 0o2755));
    let (c, m) = crate::client::inherit_from(&parent, Caller { uid: 5, gid: 6 }, 0o644, false);
    assert_eq!((c.gid, m), (77, 0o644));
    parent.mode = 0o775;
    let (c, m) = crate::client::inherit_from(&parent, Caller { uid: 5, gid: 6 }, 0o755, true);
    assert_eq!((c.gid, m), (6, 0o755));
}

fn testkit_attr() -> pond_proto::meta::InodeAttr {
    pond_proto::meta::InodeAttr {
        inode: InodeId(9),
        kind: pond_proto::meta::FileType::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        nlink: 2,
        size: 0,
        atime: Default::default(),
        mtime: Default::default(),
        ctime: Default::default(),
        layout: None,
        truncate_version: 0,
    }
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
        .open(
            "/m",
            OpenOptions {
                mode: OpenMode::WRITE,
                create: false,
                truncate: false,
                ..OpenOptions::write()
            },
        )
        .await
        .unwrap();
    f.pwrite(0, b"xyz").await.unwrap();
    f.close().await.unwrap();
    let a = meta.attr(ino).unwrap();
    assert_eq!(a.size, 5000);
    assert!(a.mtime.sec > 1, "mtime moved: {:?}", a.mtime);
}

#[tokio::test]
async fn a_file_unlinked_by_another_client_stays_readable_until_closed() {
    let (a, meta, storage) = testkit::client().await;
    let b = testkit::client_of(&meta, &storage).await;
    let data = pattern(6, 3 * TEST_CHUNK as usize + 5);
    a.write_file("/shared", &data).await.unwrap();
    let f = b.open("/shared", OpenOptions::read()).await.unwrap();
    assert_eq!(meta.sessions(f.inode()), 1, "the reader holds a session");
    a.unlink_path("/shared").await.unwrap();
    assert!(meta.attr(f.inode()).is_some(), "kept while open elsewhere");
    assert_eq!(f.pread(0, data.len()).await.unwrap(), data);
    f.close().await.unwrap();
    assert!(
        meta.attr(f.inode()).is_none(),
        "collected at the last close"
    );
}
