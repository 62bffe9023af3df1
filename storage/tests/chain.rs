//! In-process chain tests: three storage nodes on 127.0.0.1 (port 0), one target each, one
//! chain of three, routing fed directly by the test acting as the meta service.

use bytes::Bytes;
use pond_client::net::{DataClient, NetError};
use pond_proto::cluster::*;
use pond_proto::data::*;
use pond_proto::*;
use pond_storage::store::ChunkStore;
use pond_storage::store::file::FileBackend;
use pond_storage::{ServerOptions, StorageServer, TargetConfig, open_target};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "test-token";
const CHAIN: ChainId = ChainId(1);
const CHUNK_BYTES: u32 = 1 << 20;

fn tid(n: u32) -> TargetId {
    TargetId(100 + n as u64)
}

/// The test's stand-in for the cluster manager.
#[derive(Clone)]
struct Meta {
    version: u64,
    chain_version: u32,
    order: Vec<TargetId>,
    states: HashMap<TargetId, PublicState>,
    addrs: BTreeMap<NodeId, String>,
}

impl Meta {
    fn build(&self) -> RoutingInfo {
        let mut r = RoutingInfo {
            version: RoutingVersion(self.version),
            ..Default::default()
        };
        for (n, a) in &self.addrs {
            r.nodes.insert(
                *n,
                NodeInfo {
                    id: *n,
                    data_addr: a.clone(),
                    alive: true,
                },
            );
        }
        for t in &self.order {
            r.targets.insert(
                *t,
                TargetInfo {
                    id: *t,
                    node: NodeId((t.0 - 100) as u32),
                    chain: CHAIN,
                    public_state: self.states[t],
                    local_state: LocalState::UpToDate,
                    used_bytes: 0,
                    capacity_bytes: 0,
                },
            );
        }
        r.chains.insert(
            CHAIN,
            ChainInfo {
                id: CHAIN,
                version: ChainVersion(self.chain_version),
                targets: self.order.clone(),
            },
        );
        r
    }
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    caps: Vec<Option<u64>>,
    servers: Vec<Option<StorageServer>>,
    meta: Arc<parking_lot::Mutex<Meta>>,
}

impl Cluster {
    async fn start(caps: [Option<u64>; 3]) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut c = Cluster {
            dirs: (0..3).map(|_| tempfile::tempdir().unwrap()).collect(),
            caps: caps.to_vec(),
            servers: vec![None, None, None],
            meta: Arc::new(parking_lot::Mutex::new(Meta {
                version: 1,
                chain_version: 1,
                order: (1..=3).map(tid).collect(),
                states: (1..=3).map(|n| (tid(n), PublicState::Serving)).collect(),
                addrs: BTreeMap::new(),
            })),
        };
        for n in 1..=3 {
            c.start_node(n).await;
        }
        c.push();
        c
    }

    async fn start_node(&mut self, n: u32) {
        let i = (n - 1) as usize;
        let cfg = TargetConfig {
            id: tid(n).0,
            path: self.dirs[i].path().to_path_buf(),
            capacity_bytes: self.caps[i],
        };
        let setup = open_target(&cfg).unwrap();
        let opts = ServerOptions {
            node_id: NodeId(n),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            token: TOKEN.into(),
            meta: vec![],
            heartbeat_interval: Duration::from_secs(1),
            scrub: None,
        };
        let s = StorageServer::start(opts, vec![setup]).await.unwrap();
        self.meta
            .lock()
            .addrs
            .insert(NodeId(n), s.data_addr.clone());
        self.servers[i] = Some(s);
    }

    async fn stop_node(&mut self, n: u32) {
        let s = self.servers[(n - 1) as usize].take().unwrap();
        s.stop().await;
    }

    fn node(&self, n: u32) -> &StorageServer {
        self.servers[(n - 1) as usize].as_ref().unwrap()
    }

    /// Publishes the current table to every running node.
    fn push(&self) {
        let r = self.meta.lock().build();
        for s in self.servers.iter().flatten() {
            s.node.set_routing(r.clone());
        }
    }

    /// Changes public states as the cluster manager would: bumps both versions, moves
    /// offline targets to the end.
    fn set_state(&self, t: TargetId, st: PublicState) {
        self.set_state_heard_by(t, st, &[1, 2, 3]);
    }

    /// `set_state`, but only nodes `heard_by` receive the new table (the others are frozen or
    /// cut off from meta and keep their old one).
    fn set_state_heard_by(&self, t: TargetId, st: PublicState, heard_by: &[u32]) {
        {
            let mut m = self.meta.lock();
            m.states.insert(t, st);
            if matches!(
                st,
                PublicState::Offline
                    | PublicState::LastSrv
                    | PublicState::Waiting
                    | PublicState::Syncing
            ) {
                m.order.retain(|x| *x != t);
                m.order.push(t);
            }
            m.version += 1;
            m.chain_version += 1;
        }
        let r = self.meta.lock().build();
        for (i, s) in self.servers.iter().enumerate() {
            if let Some(s) = s
                && heard_by.contains(&(i as u32 + 1))
            {
                s.node.set_routing(r.clone());
            }
        }
    }

    fn routing(&self) -> RoutingInfo {
        self.meta.lock().build()
    }

    fn store(&self, n: u32) -> Arc<dyn ChunkStore> {
        self.node(n).node.target(tid(n)).unwrap().store.clone()
    }
}

fn client() -> DataClient {
    DataClient::tcp(TOKEN, ClientId(42)).with_deadline(Duration::from_secs(5))
}

fn chunk(i: u64) -> ChunkId {
    ChunkId::new(InodeId(9), i)
}

fn data(seed: u64, n: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<_>>()
        .into()
}

fn head(r: &RoutingInfo) -> (String, ChainRef) {
    let h = r.write_targets(CHAIN)[0].clone();
    let at = ChainRef {
        chain: CHAIN,
        chain_version: r.chains[&CHAIN].version,
        target: h.id,
    };
    (r.node_addr(h.node).unwrap().to_string(), at)
}

fn at_of(r: &RoutingInfo, t: TargetId) -> (String, ChainRef) {
    let info = &r.targets[&t];
    (
        r.node_addr(info.node).unwrap().to_string(),
        ChainRef {
            chain: CHAIN,
            chain_version: r.chains[&CHAIN].version,
            target: t,
        },
    )
}

/// Writes through the current head, retrying the same request id on retryable errors
/// (exactly-once) until `budget` runs out.
async fn write_retrying(
    c: &DataClient,
    meta: &parking_lot::Mutex<Meta>,
    ch: ChunkId,
    offset: u32,
    d: Bytes,
    budget: Duration,
) -> Result<UpdateReply, NetError> {
    let req = c.next_request_id();
    let start = Instant::now();
    loop {
        let r = meta.lock().build();
        let (addr, at) = head(&r);
        match c
            .write_chunk(&addr, at, ch, offset, CHUNK_BYTES, d.clone(), req)
            .await
        {
            Ok(ok) => return Ok(ok),
            Err(e) if e.code().is_retryable() && start.elapsed() < budget => {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn read_from(
    c: &DataClient,
    r: &RoutingInfo,
    t: TargetId,
    ch: ChunkId,
) -> Result<(ReadOk, Bytes), PondError> {
    let (addr, at) = at_of(r, t);
    let mut v = c
        .read_chunks(
            &addr,
            vec![ReadItem {
                at,
                chunk: ch,
                offset: 0,
                length: u32::MAX,
            }],
        )
        .await
        .map_err(NetError::into_pond)?;
    v.pop().unwrap()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn apply(model: &mut Vec<u8>, offset: u32, d: &[u8]) {
    let end = offset as usize + d.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[offset as usize..end].copy_from_slice(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_is_on_every_replica_when_acked() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    let d = data(1, 300_000);
    let rep = c
        .write_chunk(
            &addr,
            at,
            chunk(0),
            4096,
            CHUNK_BYTES,
            d.clone(),
            c.next_request_id(),
        )
        .await
        .unwrap();
    assert_eq!(rep.version, ChunkVersion(1));
    // Durable and committed on all three stores the moment the client got its ack.
    for n in 1..=3 {
        let info = cl.store(n).info(chunk(0)).unwrap();
        assert_eq!(info.committed.unwrap().version, ChunkVersion(1), "node {n}");
        assert!(info.pending.is_none(), "node {n}");
    }
    for n in 1..=3 {
        let (ok, got) = read_from(&c, &r, tid(n), chunk(0)).await.unwrap();
        assert_eq!(ok.chunk_length, 4096 + 300_000);
        assert_eq!(&got[4096..], &d[..]);
        assert!(got[..4096].iter().all(|b| *b == 0));
    }
    // Batched read: several ranges of several chunks in one request.
    c.write_chunk(
        &addr,
        at,
        chunk(1),
        0,
        CHUNK_BYTES,
        data(2, 1000),
        c.next_request_id(),
    )
    .await
    .unwrap();
    let (a2, at2) = at_of(&r, tid(2));
    let items = vec![
        ReadItem {
            at: at2,
            chunk: chunk(0),
            offset: 4096,
            length: 10,
        },
        ReadItem {
            at: at2,
            chunk: chunk(1),
            offset: 500,
            length: 600,
        },
        ReadItem {
            at: at2,
            chunk: chunk(7),
            offset: 0,
            length: 10,
        },
    ];
    let got = c.read_chunks(&a2, items).await.unwrap();
    assert_eq!(&got[0].as_ref().unwrap().1[..], &d[..10]);
    assert_eq!(&got[1].as_ref().unwrap().1[..], &data(2, 1000)[500..]);
    assert_eq!(
        got[2].as_ref().unwrap().0.version,
        ChunkVersion(0),
        "missing chunk reads as a hole"
    );
    // Length query for exact file lengths.
    let (ta, tat) = at_of(&r, tid(3));
    assert_eq!(
        c.query_length(&ta, tat, InodeId(9)).await.unwrap(),
        Some((1, 1000))
    );
    // Truncate + remove range through the chain.
    c.truncate_chunk(&addr, at, chunk(0), 5000, CHUNK_BYTES, c.next_request_id())
        .await
        .unwrap();
    assert_eq!(
        c.remove_chunks(&addr, at, InodeId(9), 1, c.next_request_id())
            .await
            .unwrap(),
        1
    );
    for n in 1..=3 {
        let (ok, got) = read_from(&c, &r, tid(n), chunk(0)).await.unwrap();
        assert_eq!((ok.chunk_length, ok.version), (5000, ChunkVersion(2)));
        assert_eq!(&got[4096..], &d[..904]);
        assert!(
            cl.store(n).info(chunk(1)).is_none(),
            "node {n} still has the removed chunk"
        );
    }
    assert_eq!(
        c.query_length(&ta, tat, InodeId(9)).await.unwrap(),
        Some((0, 5000))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn version_rules_duplicate_stale_gap() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    // Duplicate: the same (client, request) is applied once.
    let req = c.next_request_id();
    let a = c
        .write_chunk(&addr, at, chunk(0), 0, CHUNK_BYTES, data(1, 100), req)
        .await
        .unwrap();
    let b = c
        .write_chunk(&addr, at, chunk(0), 0, CHUNK_BYTES, data(1, 100), req)
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(
        cl.store(3).info(chunk(0)).unwrap().committed_version(),
        ChunkVersion(1)
    );
    // Stale chain version.
    let stale = ChainRef {
        chain_version: ChainVersion(0),
        ..at
    };
    let e = c
        .write_chunk(
            &addr,
            stale,
            chunk(0),
            0,
            CHUNK_BYTES,
            data(1, 1),
            c.next_request_id(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::StaleChainVersion);
    // Not the head: a client write to the middle is refused.
    let (maddr, mat) = at_of(&r, tid(2));
    let e = c
        .write_chunk(
            &maddr,
            mat,
            chunk(0),
            0,
            CHUNK_BYTES,
            data(1, 1),
            c.next_request_id(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::TargetNotServing);
    // A forwarded update with a gap is refused; one already applied is acked without effect.
    let fwd = |v: u32, _d: &Bytes| UpdateReq {
        at: mat,
        chunk: chunk(0),
        op: UpdateOp::Write { offset: 0 },
        chunk_bytes: CHUNK_BYTES,
        crc: 0,
        version: Some(ChunkVersion(v)),
        client: ClientId(5),
        request: RequestId(v as u64),
    };
    let d = data(9, 10);
    let e = c.update(&maddr, fwd(3, &d), d.clone()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::VersionGap);
    // The retry of the update that made version 1 (same client and request) is acked.
    let retry = UpdateReq {
        client: c.client_id(),
        request: req,
        ..fwd(1, &d)
    };
    let ok = c.update(&maddr, retry, d.clone()).await.unwrap();
    assert_eq!(ok.version, ChunkVersion(1));
    // Another request numbered 1 means the versions diverged: acking it as applied would
    // lose it, so the middle asks for the whole chunk (VersionGap) and keeps its copy.
    let e = c.update(&maddr, fwd(1, &d), d.clone()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::VersionGap);
    let (_, got) = read_from(&c, &r, tid(2), chunk(0)).await.unwrap();
    assert_eq!(
        &got[..],
        &data(1, 100)[..],
        "an already-applied version changes nothing"
    );
    // A payload that does not match its CRC is refused before anything is stored.
    let mut bad = fwd(2, &d);
    bad.crc = 1;
    let e = c
        .call(&maddr, DataRequest::Update(bad), d.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Checksum);
    assert!(cl.store(2).info(chunk(0)).unwrap().pending.is_none());
}

/// Continuous writes while the head, then the middle, then the tail is stopped (the test
/// updates routing as meta would); every acknowledged write reads back from every serving
/// replica. Then the stopped nodes come back, resync and serve again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_and_resync_under_load() {
    for victim in [1u32, 2, 3] {
        let mut cl = Cluster::start([None, None, None]).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let (meta, stop) = (cl.meta.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let c = DataClient::tcp(TOKEN, ClientId(1000 + w))
                    .with_deadline(Duration::from_secs(5));
                let mut model = Vec::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let off = ((i * 7919) % 200) as u32 * 4096;
                    let d = data(w * 1_000_000 + i, 4096 + (i as usize % 3) * 1000);
                    write_retrying(&c, &meta, chunk(w), off, d.clone(), Duration::from_secs(20))
                        .await
                        .unwrap_or_else(|e| panic!("writer {w} write {i}: {e}"));
                    apply(&mut model, off, &d);
                    i += 1;
                }
                (w, model, i)
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Kill the victim; a moment later "meta" notices and publishes the new chain.
        cl.stop_node(victim).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        cl.set_state(tid(victim), PublicState::Offline);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Bring it back: it reports online, meta moves it waiting -> syncing.
        cl.start_node(victim).await;
        assert_eq!(cl.node(victim).node.local_states()[0].1, LocalState::Online);
        cl.set_state(tid(victim), PublicState::Waiting);
        cl.set_state(tid(victim), PublicState::Syncing);
        // Resync runs while writes continue.
        let node = cl.node(victim).node.clone();
        wait_for("resync to finish", || {
            node.local_states()[0].1 == LocalState::UpToDate
        })
        .await;
        cl.set_state(tid(victim), PublicState::Serving);
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let c = client();
        let r = cl.routing();
        let mut total = 0;
        for h in writers {
            let (w, model, n) = h.await.unwrap();
            total += n;
            eprintln!(
                "writer {w}: {n} writes; infos {:?}",
                (1..=3)
                    .map(|t| cl.store(t).info(chunk(w)))
                    .collect::<Vec<_>>()
            );
            for t in 1..=3 {
                let (ok, got) = read_from(&c, &r, tid(t), chunk(w)).await.unwrap();
                let first_diff = got.iter().zip(model.iter()).position(|(a, b)| a != b);
                assert!(
                    got[..] == model[..],
                    "victim {victim}: chunk {w} differs on target {t}: len {} vs {}, first diff {first_diff:?}, {ok:?}, info {:?}",
                    got.len(),
                    model.len(),
                    cl.store(t).info(chunk(w))
                );
            }
        }
        assert!(
            total > 20,
            "victim {victim}: only {total} writes went through"
        );
        for s in cl.servers.drain(..).flatten() {
            s.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_copy_is_detected_served_elsewhere_and_repaired() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    let d = data(5, 200_000);
    c.write_chunk(
        &addr,
        at,
        chunk(3),
        0,
        CHUNK_BYTES,
        d.clone(),
        c.next_request_id(),
    )
    .await
    .unwrap();
    // Damage node 2's copy on disk.
    let dir = cl.dirs[1].path().to_path_buf();
    let slot = find_slot(&cl, 2, chunk(3));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("blocks.dat"))
            .unwrap();
        f.write_all_at(b"\x00\xff\x00\xff", FileBackend::slot_offset(slot) + 100)
            .unwrap();
    }
    let e = read_from(&c, &r, tid(2), chunk(3)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Checksum);
    // The client serves the read from another replica.
    let (_, got) = read_from(&c, &r, tid(1), chunk(3)).await.unwrap();
    assert_eq!(got, d);
    // The bad copy is rewritten from a good one.
    let t2 = cl.node(2).node.target(tid(2)).unwrap().clone();
    wait_for("repair", || {
        t2.repaired.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    let (_, got) = read_from(&c, &r, tid(2), chunk(3)).await.unwrap();
    assert_eq!(got, d);
    assert_eq!(
        t2.corrupt_found.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// The first block's slot of a chunk's committed version on node `n` (file targets).
fn find_slot(cl: &Cluster, n: u32, ch: ChunkId) -> u32 {
    let store = cl.store(n);
    let engine = pond_storage::store::downcast_file(&store).expect("file-backed target");
    engine.committed_slots(ch)[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrubber_finds_and_repairs() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    let d = data(6, 100_000);
    c.write_chunk(
        &addr,
        at,
        chunk(4),
        0,
        CHUNK_BYTES,
        d.clone(),
        c.next_request_id(),
    )
    .await
    .unwrap();
    let slot = find_slot(&cl, 3, chunk(4));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(cl.dirs[2].path().join("blocks.dat"))
            .unwrap();
        f.write_all_at(b"garbage", FileBackend::slot_offset(slot))
            .unwrap();
    }
    let node = cl.node(3).node.clone();
    let t = node.target(tid(3)).unwrap().clone();
    let (checked, bad) = pond_storage::scrub::scrub_pass(&node, &t, 1 << 30).await;
    assert_eq!((checked, bad), (1, 1));
    wait_for("repair", || {
        t.repaired.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    let (checked, bad) = pond_storage::scrub::scrub_pass(&node, &t, 1 << 30).await;
    assert_eq!((checked, bad), (1, 0));
    let (_, got) = read_from(&c, &r, tid(3), chunk(4)).await.unwrap();
    assert_eq!(got, d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_target_is_no_space_and_nothing_is_damaged() {
    // Node 3's target holds 16 blocks (1 MiB).
    let cl = Cluster::start([None, None, Some(16 * 65536)]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    let mut written = Vec::new();
    let mut err = None;
    for i in 0..40u64 {
        let d = data(i, 100_000);
        match c
            .write_chunk(
                &addr,
                at,
                chunk(i),
                0,
                CHUNK_BYTES,
                d.clone(),
                c.next_request_id(),
            )
            .await
        {
            Ok(_) => written.push((i, d)),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("the small target fills up");
    assert_eq!(e.code(), ErrorCode::NoSpace, "{e}");
    assert!(!written.is_empty());
    for (i, d) in &written {
        for n in 1..=3 {
            let (_, got) = read_from(&c, &r, tid(n), chunk(*i)).await.unwrap();
            assert_eq!(&got, d, "chunk {i} on node {n}");
        }
    }
    // The refused write left no pending version behind, and the chain still works for
    // overwrites after space is freed.
    let failed = chunk(written.len() as u64);
    for n in 1..=3 {
        assert!(
            cl.store(n).info(failed).is_none_or(|i| i.pending.is_none()),
            "node {n}"
        );
    }
    c.remove_chunks(&addr, at, InodeId(9), 0, c.next_request_id())
        .await
        .unwrap();
    c.write_chunk(
        &addr,
        at,
        failed,
        0,
        CHUNK_BYTES,
        data(99, 100_000),
        c.next_request_id(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_target_stops_serving() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    c.write_chunk(
        &addr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        data(1, 10),
        c.next_request_id(),
    )
    .await
    .unwrap();
    // Meta declares target 2 offline (say, it was partitioned away) while it thinks it serves.
    cl.set_state(tid(2), PublicState::Offline);
    assert_eq!(cl.node(2).node.local_states()[0].1, LocalState::Online);
    // Even a client with the new routing cannot read from it, and it refuses forwarded writes.
    let r = cl.routing();
    let e = read_from(&c, &r, tid(2), chunk(0)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TargetNotServing);
    let (addr, at) = head(&r);
    c.write_chunk(
        &addr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        data(2, 10),
        c.next_request_id(),
    )
    .await
    .unwrap();
    assert_eq!(
        cl.store(2).info(chunk(0)).unwrap().committed_version(),
        ChunkVersion(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_frames_close_only_their_connection() {
    let cl = Cluster::start([None, None, None]).await;
    let addr = cl.node(1).data_addr.clone();
    let good = client();
    let r = cl.routing();
    let (haddr, at) = head(&r);
    good.write_chunk(
        &haddr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        data(1, 10),
        good.next_request_id(),
    )
    .await
    .unwrap();

    let hello = |token: &str| {
        let mut b = encode_frame(
            FrameKind::Request,
            0,
            &DataRequest::Hello {
                token: token.into(),
                client: ClientId(1),
            },
            0,
        )
        .unwrap()
        .to_vec();
        b.truncate(b.len());
        b
    };
    async fn closed(s: &mut tokio::net::TcpStream) -> bool {
        let mut buf = vec![0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) if Instant::now() < deadline => continue,
                _ => return false,
            }
        }
    }
    // Wrong token: refused and closed.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(&hello("wrong")).await.unwrap();
    assert!(closed(&mut s).await);
    // Garbage after a good hello.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(&hello(TOKEN)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(closed(&mut s).await);
    // Oversized payload announced in the header.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(&hello(TOKEN)).await.unwrap();
    let mut h = bytes::BytesMut::new();
    encode_header(
        &FrameHeader {
            kind: FrameKind::Request,
            request_id: 1,
            meta_len: 10,
            payload_len: u32::MAX,
        },
        &mut h,
    );
    s.write_all(&h).await.unwrap();
    assert!(closed(&mut s).await);
    // Truncated frame, then EOF.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(&hello(TOKEN)).await.unwrap();
    let f = encode_frame(FrameKind::Request, 2, &DataRequest::TargetStates, 0).unwrap();
    s.write_all(&f[..f.len() - 3]).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(closed(&mut s).await);
    // A malformed message body.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(&hello(TOKEN)).await.unwrap();
    let mut h = bytes::BytesMut::new();
    encode_header(
        &FrameHeader {
            kind: FrameKind::Request,
            request_id: 3,
            meta_len: 4,
            payload_len: 0,
        },
        &mut h,
    );
    h.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    s.write_all(&h).await.unwrap();
    assert!(closed(&mut s).await);
    // The well-behaved connection (and the server) are unaffected.
    good.write_chunk(
        &haddr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        data(2, 10),
        good.next_request_id(),
    )
    .await
    .unwrap();
    let (_, got) = read_from(&good, &r, tid(3), chunk(0)).await.unwrap();
    assert_eq!(got, data(2, 10));
    // A client with the wrong token gets a clear error.
    let bad = DataClient::tcp("nope", ClientId(3));
    let e = bad.read_chunks(&haddr, vec![]).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_requests_in_flight_on_one_connection() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    let mut hs = Vec::new();
    for i in 0..64u64 {
        let (c, addr) = (c.clone(), addr.clone());
        hs.push(tokio::spawn(async move {
            c.write_chunk(
                &addr,
                at,
                chunk(i),
                0,
                CHUNK_BYTES,
                data(i, 4096),
                c.next_request_id(),
            )
            .await
            .unwrap();
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    let (a3, at3) = at_of(&r, tid(3));
    let items: Vec<ReadItem> = (0..64)
        .map(|i| ReadItem {
            at: at3,
            chunk: chunk(i),
            offset: 0,
            length: 4096,
        })
        .collect();
    let got = c.read_chunks(&a3, items).await.unwrap();
    for (i, g) in got.into_iter().enumerate() {
        assert_eq!(g.unwrap().1, data(i as u64, 4096));
    }
}

/// A whole-cluster restart: every target comes back `online`; meta keeps them serving since
/// none is up to date, and they serve again (no deadlock), with their data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_restart_serves_again() {
    let mut cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    c.write_chunk(
        &addr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        data(1, 5000),
        c.next_request_id(),
    )
    .await
    .unwrap();
    for n in 1..=3 {
        cl.stop_node(n).await;
    }
    for n in 1..=3 {
        cl.start_node(n).await;
        assert_eq!(cl.node(n).node.local_states()[0].1, LocalState::Online);
    }
    // Meta's view: all serving, all reporting online.
    let mut r = cl.meta.lock().build();
    r.version = RoutingVersion(r.version.0 + 1);
    for t in r.targets.values_mut() {
        t.local_state = LocalState::Online;
    }
    for s in cl.servers.iter().flatten() {
        s.node.set_routing(r.clone());
    }
    for n in 1..=3 {
        assert_eq!(cl.node(n).node.local_states()[0].1, LocalState::UpToDate);
    }
    let (addr, at) = head(&r);
    c.write_chunk(
        &addr,
        at,
        chunk(0),
        5000,
        CHUNK_BYTES,
        data(2, 10),
        c.next_request_id(),
    )
    .await
    .unwrap();
    for n in 1..=3 {
        let (ok, got) = read_from(&c, &r, tid(n), chunk(0)).await.unwrap();
        assert_eq!(ok.chunk_length, 5010);
        assert_eq!(&got[..5000], &data(1, 5000)[..]);
    }
}

/// Chunks removed while a replica was down are deleted from it by the resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_deletes_what_only_the_returning_target_has() {
    let mut cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    for i in 0..5 {
        c.write_chunk(
            &addr,
            at,
            chunk(i),
            0,
            CHUNK_BYTES,
            data(i, 3000),
            c.next_request_id(),
        )
        .await
        .unwrap();
    }
    cl.stop_node(3).await;
    cl.set_state(tid(3), PublicState::Offline);
    let r = cl.routing();
    let (addr, at) = head(&r);
    c.remove_chunks(&addr, at, InodeId(9), 3, c.next_request_id())
        .await
        .unwrap();
    c.write_chunk(
        &addr,
        at,
        chunk(1),
        0,
        CHUNK_BYTES,
        data(77, 100),
        c.next_request_id(),
    )
    .await
    .unwrap();
    cl.start_node(3).await;
    cl.set_state(tid(3), PublicState::Waiting);
    cl.set_state(tid(3), PublicState::Syncing);
    let node = cl.node(3).node.clone();
    wait_for("resync", || {
        node.local_states()[0].1 == LocalState::UpToDate
    })
    .await;
    cl.set_state(tid(3), PublicState::Serving);
    let r = cl.routing();
    for i in 0..5u64 {
        let info = cl.store(3).info(chunk(i));
        if i >= 3 {
            assert!(
                info.is_none(),
                "chunk {i} should be gone from the returning target"
            );
        } else {
            let (_, want) = read_from(&c, &r, tid(1), chunk(i)).await.unwrap();
            let (_, got) = read_from(&c, &r, tid(3), chunk(i)).await.unwrap();
            assert_eq!(got, want, "chunk {i}");
        }
    }
}

/// A copy that diverged at the same version (it committed, as a tail, an update the rest of
/// the chain dropped) is corrected by a full replace of that version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_replace_corrects_a_diverged_copy() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    c.write_chunk(
        &addr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        data(1, 100),
        c.next_request_id(),
    )
    .await
    .unwrap();
    let (taddr, tat) = at_of(&r, tid(3));
    let replace = |v: u32| UpdateReq {
        at: tat,
        chunk: chunk(0),
        op: UpdateOp::Replace,
        chunk_bytes: CHUNK_BYTES,
        crc: 0,
        version: Some(ChunkVersion(v)),
        client: ClientId(5),
        request: RequestId(v as u64 + 100),
    };
    // Same version, same content: acked, nothing changes.
    let same = data(1, 100);
    c.update(&taddr, replace(1), same.clone()).await.unwrap();
    // Same version, other content: the chain's content wins.
    let other = data(2, 80);
    c.update(&taddr, replace(1), other.clone()).await.unwrap();
    let (ok, got) = read_from(&c, &r, tid(3), chunk(0)).await.unwrap();
    assert_eq!((ok.version, got), (ChunkVersion(1), other));
}

/// `POND_TEST_BUG=early-ack` (set here through `Node::set_test_bug`): the head acks a client
/// write before the chain committed it. With the tail down but still listed as serving, the
/// ack arrives while the head holds the write only as pending and the tail has nothing;
/// without the bug the same write is not acked at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn early_ack_test_bug_acks_before_the_tail_commits() {
    let mut cl = Cluster::start([None, None, None]).await;
    let r = cl.routing();
    let (addr, at) = head(&r);
    assert_eq!(cl.node(1).node.test_bug(), None, "off by default");
    // The tail goes away; routing still names it, so the middle keeps retrying it.
    let tail_store = cl.store(3);
    cl.stop_node(3).await;
    let quick = DataClient::tcp(TOKEN, ClientId(43)).with_deadline(Duration::from_millis(700));
    let correct = quick
        .write_chunk(
            &addr,
            at,
            chunk(0),
            0,
            CHUNK_BYTES,
            data(1, 5000),
            quick.next_request_id(),
        )
        .await;
    assert_eq!(
        correct.map(|_| ()).map_err(|e| e.code()),
        Err(ErrorCode::Timeout),
        "a correct head must not ack before the tail commits"
    );
    cl.node(1)
        .node
        .set_test_bug(Some(pond_storage::TestBug::EarlyAck));
    let rep = quick
        .write_chunk(
            &addr,
            at,
            chunk(1),
            0,
            CHUNK_BYTES,
            data(2, 5000),
            quick.next_request_id(),
        )
        .await
        .expect("early-ack head acks at once");
    assert_eq!(rep.version, ChunkVersion(1));
    let at_head = cl.store(1).info(chunk(1)).unwrap();
    assert_eq!(at_head.pending.map(|p| p.version), Some(ChunkVersion(1)));
    assert!(
        at_head.committed.is_none(),
        "acked before the head committed"
    );
    assert!(
        tail_store.info(chunk(1)).is_none(),
        "acked before the tail had the write"
    );
}

/// Exactly-once across a head restart: a retried request whose first attempt committed is
/// answered from the chunk's persisted record of recent updates, not applied again — even
/// when later updates of the chunk came in between and the head lost its in-memory table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_head_does_not_reapply_a_retried_write() {
    let mut cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    let first = c.next_request_id();
    let rep = c
        .write_chunk(&addr, at, chunk(0), 0, CHUNK_BYTES, data(1, 100), first)
        .await
        .unwrap();
    assert_eq!(rep.version, ChunkVersion(1));
    // Later updates overwrite the same bytes.
    for i in 0..3 {
        c.write_chunk(
            &addr,
            at,
            chunk(0),
            0,
            CHUNK_BYTES,
            data(10 + i, 100),
            c.next_request_id(),
        )
        .await
        .unwrap();
    }
    for n in 1..=3 {
        cl.stop_node(n).await;
    }
    for n in 1..=3 {
        cl.start_node(n).await;
    }
    let mut r = cl.meta.lock().build();
    r.version = RoutingVersion(r.version.0 + 1);
    for t in r.targets.values_mut() {
        t.local_state = LocalState::Online;
    }
    for s in cl.servers.iter().flatten() {
        s.node.set_routing(r.clone());
    }
    let (addr, at) = head(&r);
    // The retry of the first request: same id, same bytes.
    let again = c
        .write_chunk(&addr, at, chunk(0), 0, CHUNK_BYTES, data(1, 100), first)
        .await
        .unwrap();
    assert_eq!(again, rep, "answered from the persisted record");
    for n in 1..=3 {
        let (ok, got) = read_from(&c, &r, tid(n), chunk(0)).await.unwrap();
        assert_eq!(ok.version, ChunkVersion(4), "node {n}: not applied again");
        assert_eq!(got, data(12, 100), "node {n}");
    }
}

/// Regression (chaos long run 1, lost acknowledged chunk updates): the middle and the tail
/// committed version 2 of a chunk that the head no longer has (the head dropped its pending
/// copy after a forward it could not confirm). The head then gives version 2 to another
/// client write. The successors must not ack it as "already applied" (they hold other
/// content under that number): the whole chunk is sent instead, and every replica ends with
/// the acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reused_version_is_not_acked_as_applied() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    c.write_chunk(
        &addr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        data(1, 300),
        c.next_request_id(),
    )
    .await
    .unwrap();
    // Version 2 (request A) reaches the middle and the tail only.
    let (maddr, mat) = at_of(&r, tid(2));
    let a = data(2, 200);
    let lost = UpdateReq {
        at: mat,
        chunk: chunk(0),
        op: UpdateOp::Write { offset: 0 },
        chunk_bytes: CHUNK_BYTES,
        crc: 0,
        version: Some(ChunkVersion(2)),
        client: ClientId(7),
        request: RequestId(1),
    };
    c.update(&maddr, lost, a.clone()).await.unwrap();
    assert_eq!(
        cl.store(3).info(chunk(0)).unwrap().committed_version(),
        ChunkVersion(2)
    );
    assert_eq!(
        cl.store(1).info(chunk(0)).unwrap().committed_version(),
        ChunkVersion(1)
    );
    // The head numbers the next client write 2 as well; it is acknowledged.
    let b = data(3, 100);
    let ok = c
        .write_chunk(
            &addr,
            at,
            chunk(0),
            0,
            CHUNK_BYTES,
            b.clone(),
            c.next_request_id(),
        )
        .await
        .unwrap();
    assert_eq!(ok.version, ChunkVersion(2));
    let mut want = data(1, 300).to_vec();
    want[..100].copy_from_slice(&b);
    for n in 1..=3 {
        let (got_ok, got) = read_from(&c, &r, tid(n), chunk(0)).await.unwrap();
        assert_eq!(got_ok.version, ChunkVersion(2), "replica {n}");
        assert_eq!(
            &got[..],
            &want[..],
            "replica {n} lost the acknowledged write"
        );
    }
}

/// Regression (chaos long run 1, stale reads after SIGSTOP): a node whose heartbeat lease
/// lapsed (frozen, or cut off from meta) may have been replaced in its chain, so it refuses
/// reads and writes even though its own (old) routing table says it serves, until a
/// heartbeat gets through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_without_heartbeat_lease_does_not_serve() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    c.write_chunk(
        &addr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        data(1, 50),
        c.next_request_id(),
    )
    .await
    .unwrap();
    let tail = &cl.node(3).node;
    tail.arm_lease();
    assert!(tail.fenced(), "no heartbeat answered yet");
    let e = read_from(&c, &r, tid(3), chunk(0)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TargetNotServing);
    // A write through the chain cannot complete at a fenced tail either.
    let head_node = &cl.node(1).node;
    head_node.arm_lease();
    let e = c
        .write_chunk(
            &addr,
            at,
            chunk(0),
            0,
            CHUNK_BYTES,
            data(2, 50),
            c.next_request_id(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::TargetNotServing);
    // An answered heartbeat renews the lease: serving again.
    tail.renew_lease(Instant::now());
    let (_, got) = read_from(&c, &r, tid(3), chunk(0)).await.unwrap();
    assert_eq!(&got[..], &data(1, 50)[..]);
}

/// Regression (chaos, stale reads): an update left pending on a target before it went away
/// (in doubt: its forward failed after it may have been delivered) must not survive the
/// target's resync. The resync compares committed versions only; a leftover pending version
/// would later be committed (re-driven as head, settled as tail) on top of newer acknowledged
/// writes and bring an old value back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_drops_pending_versions_left_from_before() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    let v1 = data(1, 500);
    c.write_chunk(
        &addr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        v1.clone(),
        c.next_request_id(),
    )
    .await
    .unwrap();
    // The tail holds an in-doubt version 2 staged under the current chain version.
    let old = data(2, 500);
    cl.store(3)
        .stage(
            chunk(0),
            ChunkVersion(2),
            r.chains[&CHAIN].version,
            pond_storage::store::Mutation::Write {
                offset: 0,
                data: &old,
            },
            Some((ClientId(9), RequestId(9))),
        )
        .unwrap();
    // It goes away and comes back through a resync.
    cl.set_state(tid(3), PublicState::Offline);
    cl.set_state(tid(3), PublicState::Waiting);
    cl.set_state(tid(3), PublicState::Syncing);
    let node = cl.node(3).node.clone();
    wait_for("resync", || {
        node.local_states()[0].1 == LocalState::UpToDate
    })
    .await;
    assert!(
        cl.store(3).info(chunk(0)).unwrap().pending.is_none(),
        "the leftover pending version survived the resync"
    );
    cl.set_state(tid(3), PublicState::Serving);
    let r = cl.routing();
    let (_, got) = read_from(&c, &r, tid(3), chunk(0)).await.unwrap();
    assert_eq!(&got[..], &v1[..], "an old in-doubt value came back");
}

/// A node frozen (SIGSTOP) past meta's heartbeat timeout hears nothing while its chain goes on
/// without it, and wakes up to a table in which its target is already waiting/syncing: it
/// never saw itself offline. It must stop claiming to be up to date. Before, it kept
/// `uptodate`, reported it in its next heartbeat, and meta turned the syncing target serving
/// (as the tail) before any resync; it then answered reads and version queries from its old
/// copy, which missed the writes acknowledged while it was frozen (chaos seed 20261121: stale
/// reads about 1.5 s after writes acknowledged right after meta declared the node offline).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frozen_target_that_wakes_up_syncing_does_not_serve_its_old_copy() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let v1 = data(1, 4096);
    write_retrying(
        &c,
        &cl.meta,
        chunk(0),
        0,
        v1.clone(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // Node 3 (the tail) freezes; meta declares it offline, the others go on and acknowledge v2.
    cl.set_state_heard_by(tid(3), PublicState::Offline, &[1, 2]);
    let v2 = data(2, 4096);
    write_retrying(
        &c,
        &cl.meta,
        chunk(0),
        0,
        v2.clone(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(
        cl.store(3).info(chunk(0)).unwrap().committed_version(),
        ChunkVersion(1)
    );
    // It wakes up; its first heartbeat brings meta the news, and the reply already names it
    // waiting, then syncing (it hears only the last table; the others do not yet, so no
    // resync can run before we look).
    cl.set_state_heard_by(tid(3), PublicState::Waiting, &[1, 2]);
    cl.set_state_heard_by(tid(3), PublicState::Syncing, &[3]);
    let node3 = cl.node(3).node.clone();
    assert_eq!(
        node3.local_states(),
        vec![(tid(3), LocalState::Online)],
        "a target that missed writes reports itself up to date"
    );
    // Even if meta made it serving on the strength of an `uptodate` it recorded before (the
    // heartbeat sent right after waking), it neither reads nor answers version queries.
    cl.set_state(tid(3), PublicState::Serving);
    let r = cl.routing();
    assert_eq!(r.serving_targets(CHAIN).last().unwrap().id, tid(3));
    match read_from(&c, &r, tid(3), chunk(0)).await {
        Ok((ok, got)) => panic!(
            "read from the woken target returned version {} ({})",
            ok.version,
            if got == v1 {
                "the old value"
            } else {
                "other bytes"
            }
        ),
        Err(e) => assert_eq!(e.code, ErrorCode::TargetNotServing, "{e}"),
    }
    let (addr, at) = at_of(&r, tid(3));
    match c
        .call(
            &addr,
            DataRequest::QueryVersion {
                at,
                chunk: chunk(0),
            },
            Bytes::new(),
        )
        .await
    {
        Ok((resp, _)) => panic!("version query answered by the woken target: {resp:?}"),
        Err(e) => assert_eq!(e.code(), ErrorCode::TargetNotServing, "{e}"),
    }
    // Meta sees `online`, and the resync brings it up to date; then it serves v2.
    cl.set_state(tid(3), PublicState::Waiting);
    cl.set_state(tid(3), PublicState::Syncing);
    wait_for("resync", || {
        node3.local_states()[0].1 == LocalState::UpToDate
    })
    .await;
    cl.set_state(tid(3), PublicState::Serving);
    let r = cl.routing();
    let (ok, got) = read_from(&c, &r, tid(3), chunk(0)).await.unwrap();
    assert_eq!(ok.version, ChunkVersion(2));
    assert_eq!(&got[..], &v2[..]);
}

/// The last serving target settles a pending version staged under an older chain (its update
/// may have been acknowledged through the old tail) when a read finds it. A syncing target
/// behind it receives writes: the version must reach that target before it counts as
/// committed. Before, it was committed on the serving target alone; the syncing target's
/// resync had already compared that chunk (committed versions only), the retry of the update
/// was acknowledged from the committed record, and after a failover to the once-syncing
/// target the acknowledged write was gone (chaos seed 3 under network namespaces: register
/// read 1 s after its write's ack returned the value before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settled_in_doubt_version_reaches_a_syncing_successor() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    let v1 = data(1, 500);
    c.write_chunk(
        &addr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        v1.clone(),
        c.next_request_id(),
    )
    .await
    .unwrap();
    // The head staged version 2 of a client update, and the chain broke before it went on.
    let req = c.next_request_id();
    let v2 = data(2, 500);
    cl.store(1)
        .stage(
            chunk(0),
            ChunkVersion(2),
            r.chains[&CHAIN].version,
            pond_storage::store::Mutation::Write {
                offset: 0,
                data: &v2,
            },
            Some((ClientId(42), req)),
        )
        .unwrap();
    // Both successors fail; node 1 serves alone. Node 3 comes back and is resynced: the chunk's
    // committed version (1) is the same on both sides, so nothing is copied.
    cl.set_state(tid(2), PublicState::Offline);
    cl.set_state(tid(3), PublicState::Offline);
    cl.set_state(tid(3), PublicState::Waiting);
    cl.set_state(tid(3), PublicState::Syncing);
    let node3 = cl.node(3).node.clone();
    wait_for("resync", || {
        node3.local_states()[0].1 == LocalState::UpToDate
    })
    .await;
    // A read at node 1 (the last serving target) settles version 2.
    let r = cl.routing();
    assert_eq!(r.serving_targets(CHAIN).last().unwrap().id, tid(1));
    let (ok, got) = read_from(&c, &r, tid(1), chunk(0)).await.unwrap();
    assert_eq!(ok.version, ChunkVersion(2));
    assert_eq!(&got[..], &v2[..]);
    assert_eq!(
        cl.store(3).info(chunk(0)).unwrap().committed_version(),
        ChunkVersion(2),
        "version 2 was committed without reaching the syncing target behind the tail"
    );
    // The client's retry is acknowledged from the committed record...
    let (addr, at) = head(&r);
    let ack = c
        .write_chunk(&addr, at, chunk(0), 0, CHUNK_BYTES, v2.clone(), req)
        .await
        .unwrap();
    assert_eq!(ack.version, ChunkVersion(2));
    // ...and survives a failover to the target that was syncing.
    cl.set_state(tid(3), PublicState::Serving);
    cl.set_state(tid(1), PublicState::Offline);
    let r = cl.routing();
    let (ok, got) = read_from(&c, &r, tid(3), chunk(0)).await.unwrap();
    assert_eq!(ok.version, ChunkVersion(2));
    assert_eq!(&got[..], &v2[..], "the acknowledged write is lost");
}

/// A replica with a successor stages without waiting for its data sync (the sync runs beside
/// the forward). When that sync fails, the update is not acknowledged, and the replica goes
/// offline instead of ever making a record durable again (a later `fdatasync` can succeed
/// after the failed write-back lost the pages). Once meta takes it out, writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_data_sync_at_a_middle_is_not_acked_and_takes_it_offline() {
    use pond_storage::TargetSetup;
    use pond_storage::store::engine::Engine;
    use pond_storage::store::mem::MemBackend;
    let backends: Vec<MemBackend> = (0..3).map(|_| MemBackend::new(1 << 30)).collect();
    let meta = Arc::new(parking_lot::Mutex::new(Meta {
        version: 1,
        chain_version: 1,
        order: (1..=3).map(tid).collect(),
        states: (1..=3).map(|n| (tid(n), PublicState::Serving)).collect(),
        addrs: BTreeMap::new(),
    }));
    let mut servers = Vec::new();
    for n in 1..=3u32 {
        let setup = TargetSetup {
            id: tid(n),
            store: Arc::new(Engine::open(backends[n as usize - 1].clone()).unwrap()),
            member_marker: None,
        };
        let opts = ServerOptions {
            node_id: NodeId(n),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            token: TOKEN.into(),
            meta: vec![],
            heartbeat_interval: Duration::from_secs(1),
            scrub: None,
        };
        let s = StorageServer::start(opts, vec![setup]).await.unwrap();
        meta.lock().addrs.insert(NodeId(n), s.data_addr.clone());
        servers.push(Some(s));
    }
    let cl = Cluster {
        dirs: Vec::new(),
        caps: Vec::new(),
        servers,
        meta,
    };
    cl.push();
    let c = client();
    let v1 = data(1, 3000);
    write_retrying(
        &c,
        &cl.meta,
        chunk(0),
        0,
        v1.clone(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // The middle's next data sync fails.
    backends[1].fail_data_syncs(true);
    let r = cl.routing();
    let (addr, at) = head(&r);
    let v2 = data(2, 3000);
    let res = c
        .write_chunk(
            &addr,
            at,
            chunk(0),
            0,
            CHUNK_BYTES,
            v2.clone(),
            c.next_request_id(),
        )
        .await;
    assert!(
        res.is_err(),
        "acknowledged without a durable middle: {res:?}"
    );
    assert_eq!(
        cl.node(2).node.local_states(),
        vec![(tid(2), LocalState::Offline)]
    );
    // Meta sees `offline` and takes it out; the chain goes on with the other two.
    cl.set_state(tid(2), PublicState::Offline);
    let v3 = data(3, 3000);
    write_retrying(
        &c,
        &cl.meta,
        chunk(0),
        0,
        v3.clone(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let r = cl.routing();
    for n in [1, 3] {
        let (_, got) = read_from(&c, &r, tid(n), chunk(0)).await.unwrap();
        assert_eq!(&got[..], &v3[..], "target {n}");
    }
}

/// A whole chain restarted under load: the one serving replica and the returning one both
/// hold an update only as a pending version staged under the old chain (head and middle
/// lazily committed it before the crash; it may have been acknowledged). The resync compares
/// committed versions only and `SyncDone` drops the returning side's leftovers, so the update
/// must be settled before the copy. Before, the resync sent nothing, the returning target
/// dropped its copy, and once the sender was resynced in turn the acknowledged write was
/// gone (chaos seed 3, netns, with every replica of chain 3 killed within 6 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_settles_in_doubt_versions_before_it_copies() {
    let cl = Cluster::start([None, None, None]).await;
    let c = client();
    let r = cl.routing();
    let (addr, at) = head(&r);
    let v1 = data(1, 700);
    c.write_chunk(
        &addr,
        at,
        chunk(0),
        0,
        CHUNK_BYTES,
        v1.clone(),
        c.next_request_id(),
    )
    .await
    .unwrap();
    let v2 = data(2, 700);
    for n in [1, 3] {
        cl.store(n)
            .stage(
                chunk(0),
                ChunkVersion(2),
                r.chains[&CHAIN].version,
                pond_storage::store::Mutation::Write {
                    offset: 0,
                    data: &v2,
                },
                Some((ClientId(42), RequestId(777))),
            )
            .unwrap();
    }
    cl.set_state(tid(2), PublicState::Offline);
    cl.set_state(tid(3), PublicState::Offline);
    cl.set_state(tid(3), PublicState::Waiting);
    cl.set_state(tid(3), PublicState::Syncing);
    let node3 = cl.node(3).node.clone();
    wait_for("resync", || {
        node3.local_states()[0].1 == LocalState::UpToDate
    })
    .await;
    // No read or write touched the chunk: only the resync can have settled it.
    let got = cl.store(3).info(chunk(0)).unwrap();
    assert_eq!(
        got.committed_version(),
        ChunkVersion(2),
        "the in-doubt version did not survive the resync (pending there: {:?})",
        got.pending.map(|p| p.version)
    );
    // The once-syncing target takes over alone and serves it.
    cl.set_state(tid(3), PublicState::Serving);
    cl.set_state(tid(1), PublicState::Offline);
    let r = cl.routing();
    let (ok, bytes) = read_from(&c, &r, tid(3), chunk(0)).await.unwrap();
    assert_eq!(ok.version, ChunkVersion(2));
    assert_eq!(&bytes[..], &v2[..]);
}

/// A target that comes back full of chunks removed while it was away (a deleted file's,
/// GC'd on the rest of the chain) has room for what it missed only once those are gone: the
/// resync removes before it copies. Before, every retry of the copy failed with no space and
/// the chain never healed (chaos seed 1: target stuck syncing, its successor waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_into_a_full_target_removes_stale_chunks_before_it_copies() {
    // Node 3's target holds 16 blocks of 64 KiB; each chunk below takes 2.
    let cl = Cluster::start([None, None, Some(16 * 65536)]).await;
    let c = client();
    let old = |i: u64| ChunkId::new(InodeId(9), i);
    let new = |i: u64| ChunkId::new(InodeId(10), i);
    let r = cl.routing();
    let (addr, at) = head(&r);
    for i in 0..6 {
        c.write_chunk(
            &addr,
            at,
            old(i),
            0,
            CHUNK_BYTES,
            data(i, 100_000),
            c.next_request_id(),
        )
        .await
        .unwrap();
    }
    assert!(cl.store(3).info(old(5)).is_some());
    // Node 3 goes away; the file is deleted and a new one written on the rest of the chain.
    cl.set_state(tid(3), PublicState::Offline);
    let r = cl.routing();
    let (addr, at) = head(&r);
    c.remove_chunks(&addr, at, InodeId(9), 0, c.next_request_id())
        .await
        .unwrap();
    let mut written = Vec::new();
    for i in 0..6 {
        let d = data(100 + i, 100_000);
        c.write_chunk(
            &addr,
            at,
            new(i),
            0,
            CHUNK_BYTES,
            d.clone(),
            c.next_request_id(),
        )
        .await
        .unwrap();
        written.push(d);
    }
    // Copying the new chunks first needs 12 blocks where 4 are free.
    assert!(cl.store(3).info(old(0)).is_some());
    cl.set_state(tid(3), PublicState::Waiting);
    cl.set_state(tid(3), PublicState::Syncing);
    let node3 = cl.node(3).node.clone();
    wait_for("resync into the full target", || {
        node3.local_states()[0].1 == LocalState::UpToDate
    })
    .await;
    for i in 0..6 {
        assert!(cl.store(3).info(old(i)).is_none(), "stale chunk {i} left");
    }
    cl.set_state(tid(3), PublicState::Serving);
    let r = cl.routing();
    for (i, d) in written.iter().enumerate() {
        let (_, got) = read_from(&c, &r, tid(3), new(i as u64)).await.unwrap();
        assert_eq!(&got, d, "new chunk {i} on the resynced target");
    }
}
