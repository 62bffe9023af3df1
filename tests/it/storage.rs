//! Storage with real `pond` processes: kill -9 of the head, the middle and the tail of a chain
//! under a continuous write load; restart and resync to serving; a checker confirms that every
//! acknowledged write reads back byte-exact from every replica and that reads never go
//! backwards. Also: a corrupted chunk file is detected, served from another replica and repaired.

use pond_client::Client;
use pond_client::net::DataClient;
use pond_proto::cluster::{PublicState, RoutingInfo};
use pond_proto::data::{ChainRef, ReadItem};
use pond_proto::{ChunkId, ClientId, NodeId};
use pond_tests::{Cluster, Opts, Role};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pond");
const FILES: usize = 6;
const FILE_BYTES: usize = 96 << 10;

/// Content of file `f` at generation `g`: a header with (f, g) then a deterministic pattern.
fn content(f: usize, g: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(FILE_BYTES);
    v.extend_from_slice(&(f as u64).to_le_bytes());
    v.extend_from_slice(&g.to_le_bytes());
    let mut x = (f as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ g;
    while v.len() < FILE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(FILE_BYTES);
    v
}

fn generation_of(bytes: &[u8]) -> Option<u64> {
    (bytes.len() >= 16).then(|| u64::from_le_bytes(bytes[8..16].try_into().unwrap()))
}

async fn routing(c: &Client) -> Arc<RoutingInfo> {
    c.refresh_routing().await.expect("refresh routing")
}

async fn wait_all_serving(c: &Client, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = routing(c).await;
        if !r.targets.is_empty()
            && r.targets
                .values()
                .all(|t| t.public_state == PublicState::Serving)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "targets not all serving again: {:?}",
            r.targets
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Read `len` bytes of `chunk` from one specific target.
async fn read_replica(
    dc: &DataClient,
    r: &RoutingInfo,
    target: pond_proto::TargetId,
    chunk: ChunkId,
    len: u32,
) -> Vec<u8> {
    let t = &r.targets[&target];
    let chain = &r.chains[&t.chain];
    let addr = r.node_addr(t.node).expect("node address");
    let at = ChainRef {
        chain: chain.id,
        chain_version: chain.version,
        target,
    };
    let item = ReadItem {
        at,
        chunk,
        offset: 0,
        length: len,
    };
    // A replica may refuse for a moment right after the chain is all-serving again (a node
    // fenced by a heartbeat answered late on this loaded machine, a new tail settling an
    // update staged under the old chain); a bounded retry, then the last error.
    let mut last = String::new();
    for _ in 0..40 {
        match dc.read_chunks(addr, vec![item]).await {
            Ok(mut out) => match out.remove(0) {
                Ok((_, bytes)) => return bytes.to_vec(),
                Err(e) => last = format!("replica {target} refused the read: {e}"),
            },
            Err(e) => last = format!("read from replica {target}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_head_middle_tail_under_writes_then_resync() {
    let mut cluster = Cluster::start(
        BIN,
        Opts {
            meta: 1,
            storage: 3,
            targets_per_node: 1,
            replicas: 3,
        },
    )
    .expect("start cluster");
    let cf = cluster.cluster_file().unwrap();
    let client = Client::connect(&cf).await.unwrap();
    for f in 0..FILES {
        client
            .write_file(&format!("/f{f}"), &content(f, 0))
            .await
            .unwrap();
    }

    // Writers: overwrite each file with increasing generations; remember the last acked one.
    let acked: Arc<Mutex<BTreeMap<usize, u64>>> =
        Arc::new(Mutex::new((0..FILES).map(|f| (f, 0)).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for f in 0..FILES {
        let (c, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut g = 0u64;
            let mut failures = 0;
            while !stop.load(Ordering::Relaxed) {
                g += 1;
                let file = c
                    .open(
                        &format!("/f{f}"),
                        pond_client::OpenOptions::from_flags(libc::O_WRONLY, 0),
                    )
                    .await;
                let r = match file {
                    Ok(file) => {
                        let w = file.pwrite(0, &content(f, g)).await;
                        let s = file.fsync().await;
                        let cl = file.close().await;
                        w.and(s).and(cl)
                    }
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => {
                        acked.lock().unwrap().insert(f, g);
                    }
                    Err(e) => {
                        failures += 1;
                        eprintln!("f{f} gen {g}: write not acknowledged: {e}");
                    }
                }
            }
            failures
        }));
    }
    // Readers: a read must never return a generation older than one acked before it began.
    for f in 0..FILES {
        let (c, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = 0;
            while !stop.load(Ordering::Relaxed) {
                let floor = acked.lock().unwrap()[&f];
                match c.read_file(&format!("/f{f}")).await {
                    Ok(bytes) => {
                        let g = generation_of(&bytes).expect("file has a header");
                        assert!(
                            g >= floor,
                            "f{f}: read generation {g} after {floor} was acked"
                        );
                        assert_eq!(
                            bytes,
                            content(f, g),
                            "f{f}: torn or corrupt read of gen {g}"
                        );
                    }
                    Err(_) => errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            errors
        }));
    }

    for position in ["head", "middle", "tail"] {
        let r = routing(&client).await;
        let chain = r.chains.values().next().expect("a chain");
        let idx = match position {
            "head" => 0,
            "middle" => 1,
            _ => chain.targets.len() - 1,
        };
        let victim: NodeId = r.targets[&chain.targets[idx]].node;
        let before = *acked.lock().unwrap().values().min().unwrap();
        eprintln!("killing the {position} (node {victim})");
        cluster.kill9(Role::Storage(victim.0)).unwrap();
        // Writes must go on without the victim.
        let deadline = Instant::now() + Duration::from_secs(60);
        while *acked.lock().unwrap().values().min().unwrap() < before + 3 {
            assert!(
                Instant::now() < deadline,
                "writes stalled after killing the {position}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.restart(Role::Storage(victim.0)).unwrap();
        wait_all_serving(&client, Duration::from_secs(90)).await;
        eprintln!("node {victim} resynced and serving again");
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // Every acknowledged write is there, byte-exact, on every replica.
    let r = routing(&client).await;
    let dc = DataClient::tcp(cf.token.clone(), ClientId(0xC0FFEE));
    let acked_final = acked.lock().unwrap().clone();
    for (f, g) in acked_final {
        let path = format!("/f{f}");
        let bytes = client.read_file(&path).await.unwrap();
        let got = generation_of(&bytes).unwrap();
        assert!(got >= g, "f{f}: acked gen {g} lost (read {got})");
        assert_eq!(bytes, content(f, got));
        let attr = client.stat(&path).await.unwrap();
        let layout = attr.layout.unwrap();
        let chain = layout.chain_of(0);
        for t in &r.chains[&chain].targets {
            let replica =
                read_replica(&dc, &r, *t, ChunkId::new(attr.inode, 0), FILE_BYTES as u32).await;
            assert_eq!(
                replica, bytes,
                "f{f}: replica {t} differs from the client's read"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_chunk_file_is_detected_served_and_repaired() {
    let cluster = Cluster::start(
        BIN,
        Opts {
            meta: 1,
            storage: 3,
            targets_per_node: 1,
            replicas: 3,
        },
    )
    .expect("start cluster");
    let cf = cluster.cluster_file().unwrap();
    let client = Client::connect(&cf).await.unwrap();
    let data = content(7, 1);
    client.write_file("/victim", &data).await.unwrap();
    let attr = client.stat("/victim").await.unwrap();
    let r = routing(&client).await;
    let chain = &r.chains[&attr.layout.as_ref().unwrap().chain_of(0)];

    // Flip bytes in every data file of the head target's directory that holds our payload.
    let head = chain.targets[0];
    let node = r.targets[&head].node;
    let tdir = cluster
        .path()
        .join(format!("storage-{}/target-{}", node.0, head.0));
    let needle = &data[16..48];
    let mut corrupted = 0;
    let mut stack = vec![tdir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(mut bytes) = std::fs::read(&p) else {
                continue;
            };
            if let Some(pos) = bytes.windows(needle.len()).position(|w| w == needle) {
                for b in &mut bytes[pos..pos + 16] {
                    *b ^= 0xFF;
                }
                std::fs::write(&p, &bytes).unwrap();
                corrupted += 1;
            }
        }
    }
    assert!(
        corrupted > 0,
        "found no file holding the chunk data under {}",
        tdir.display()
    );

    // The client still reads correct data.
    for _ in 0..10 {
        assert_eq!(client.read_file("/victim").await.unwrap(), data);
    }
    // The bad replica is repaired: reading it directly eventually returns the right bytes.
    let dc = DataClient::tcp(cf.token.clone(), ClientId(0xBAD));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = routing(&client).await;
        let t = &r.targets[&head];
        let chain = &r.chains[&t.chain];
        let addr = r.node_addr(t.node).unwrap();
        let at = ChainRef {
            chain: chain.id,
            chain_version: chain.version,
            target: head,
        };
        let item = ReadItem {
            at,
            chunk: ChunkId::new(attr.inode, 0),
            offset: 0,
            length: data.len() as u32,
        };
        if let Ok(mut v) = dc.read_chunks(addr, vec![item]).await
            && let Ok((_, b)) = v.remove(0)
            && b.as_ref() == data.as_slice()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "corrupt replica on target {head} was not repaired"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Set `capacity_bytes` on every target of every storage node's config.
fn cap_targets(cluster: &Cluster, nodes: u32, bytes: u64) {
    for n in 1..=nodes {
        let p = cluster.path().join(format!("storage-{n}/storage.toml"));
        let mut v: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let targets = v
            .get_mut("targets")
            .and_then(|t| t.as_array_mut())
            .expect("targets");
        for t in targets.iter_mut() {
            t.as_table_mut()
                .unwrap()
                .insert("capacity_bytes".into(), toml::Value::Integer(bytes as i64));
        }
        std::fs::write(&p, toml::to_string(&v).unwrap()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_target_says_no_space_and_damages_nothing() {
    let mut cluster = Cluster::start(
        BIN,
        Opts {
            meta: 1,
            storage: 3,
            targets_per_node: 1,
            replicas: 3,
        },
    )
    .expect("start cluster");
    cluster.down().unwrap();
    cap_targets(&cluster, 3, 4 << 20);
    cluster.up_again().unwrap();
    let cf = cluster.cluster_file().unwrap();
    let client = Client::connect(&cf).await.unwrap();

    let mut written = Vec::new();
    let mut no_space = None;
    for i in 0..64 {
        let data = content(i, 1);
        match client.write_file(&format!("/fill{i}"), &data).await {
            Ok(()) => written.push(i),
            Err(e) => {
                no_space = Some(e);
                break;
            }
        }
    }
    let e = no_space.expect("64 x 96 KiB never filled a 4 MiB target");
    assert_eq!(
        e.code(),
        pond_proto::ErrorCode::NoSpace,
        "wrong error when full: {e}"
    );
    assert_eq!(e.errno(), libc::ENOSPC);
    assert!(!written.is_empty(), "nothing fit at all");
    for i in &written {
        let got = client.read_file(&format!("/fill{i}")).await.unwrap();
        assert_eq!(
            got,
            content(*i, 1),
            "file {i} damaged by a later failed write"
        );
    }
    // Space comes back: removing files lets new writes succeed again once GC has run.
    for i in &written {
        client.unlink_path(&format!("/fill{i}")).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.write_file("/after", &content(99, 1)).await {
            Ok(()) => break,
            Err(e) if e.code() == pond_proto::ErrorCode::NoSpace => {
                assert!(
                    Instant::now() < deadline,
                    "space never reclaimed after unlink"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("write after unlink: {e}"),
        }
    }
    assert_eq!(client.read_file("/after").await.unwrap(), content(99, 1));
}
