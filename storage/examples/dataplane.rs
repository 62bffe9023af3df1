//! Quick data-plane measurement: three in-process storage nodes on loopback, one chain of three,
//! memory targets vs file targets, next to the local disk measured in the same run.
//!
//!     cargo run --release -p pond-storage --example dataplane -- [MiB]
//!
//! Prints sequential 1 MiB write/read throughput through the chain and 4 KiB random-read IOPS
//! with latency percentiles at queue depth 1 and 64.

use bytes::Bytes;
use pond_client::net::DataClient;
use pond_proto::cluster::*;
use pond_proto::data::{ChainRef, ReadItem};
use pond_proto::*;
use pond_storage::store::engine::Engine;
use pond_storage::store::mem::MemBackend;
use pond_storage::{ServerOptions, StorageServer, TargetConfig, TargetSetup, open_target};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHAIN: ChainId = ChainId(1);
const CHUNK: u32 = 4 << 20;

async fn cluster(file_dirs: Option<&[std::path::PathBuf]>) -> (Vec<StorageServer>, RoutingInfo) {
    let mut servers = Vec::new();
    for n in 1..=3u32 {
        let setup = match file_dirs {
            Some(d) => open_target(&TargetConfig {
                id: 100 + n as u64,
                path: d[n as usize - 1].clone(),
                capacity_bytes: None,
            })
            .expect("open target"),
            None => TargetSetup {
                id: TargetId(100 + n as u64),
                store: Arc::new(Engine::open(MemBackend::new(8 << 30)).expect("mem engine")),
                member_marker: None,
            },
        };
        let opts = ServerOptions {
            node_id: NodeId(n),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            token: "bench".into(),
            meta: vec![],
            heartbeat_interval: Duration::from_secs(1),
            scrub: None,
        };
        servers.push(
            StorageServer::start(opts, vec![setup])
                .await
                .expect("start node"),
        );
    }
    let mut r = RoutingInfo {
        version: RoutingVersion(1),
        ..Default::default()
    };
    for (i, s) in servers.iter().enumerate() {
        let n = NodeId(i as u32 + 1);
        r.nodes.insert(
            n,
            NodeInfo {
                id: n,
                data_addr: s.data_addr.clone(),
                alive: true,
            },
        );
        let t = TargetId(101 + i as u64);
        r.targets.insert(
            t,
            TargetInfo {
                id: t,
                node: n,
                chain: CHAIN,
                public_state: PublicState::Serving,
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
            version: ChainVersion(1),
            targets: (101..=103).map(TargetId).collect(),
        },
    );
    for s in &servers {
        s.node.set_routing(r.clone());
    }
    (servers, r)
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

async fn run(label: &str, file_dirs: Option<&[std::path::PathBuf]>, mib: u64) {
    let (servers, r) = cluster(file_dirs).await;
    let c = DataClient::tcp("bench", ClientId(7));
    let head = r.write_targets(CHAIN)[0].clone();
    let haddr = r.node_addr(head.node).expect("addr").to_string();
    let at = ChainRef {
        chain: CHAIN,
        chain_version: ChainVersion(1),
        target: head.id,
    };
    let block = Bytes::from(vec![0x5au8; 1 << 20]);
    // Sequential 1 MiB writes, 8 in flight: lane l fills chunks l, l+8, ... in order.
    let t0 = Instant::now();
    let mut hs = Vec::new();
    let chunks = mib.div_ceil(4);
    for lane in 0..8u64 {
        let (c, haddr, block) = (c.clone(), haddr.clone(), block.clone());
        hs.push(tokio::spawn(async move {
            let mut ch = lane;
            while ch < chunks {
                for k in 0..4u64 {
                    if ch * 4 + k >= mib {
                        break;
                    }
                    let chunk = ChunkId::new(InodeId(1), ch);
                    let off = (k << 20) as u32;
                    c.write_chunk(
                        &haddr,
                        at,
                        chunk,
                        off,
                        CHUNK,
                        block.clone(),
                        c.next_request_id(),
                    )
                    .await
                    .expect("write");
                }
                ch += 8;
            }
        }));
    }
    for h in hs {
        h.await.expect("writer");
    }
    let w = t0.elapsed();
    // Sequential 1 MiB reads from the tail, 8 in flight.
    let tail = r
        .serving_targets(CHAIN)
        .last()
        .map(|t| (*t).clone())
        .expect("tail");
    let taddr = r.node_addr(tail.node).expect("addr").to_string();
    let tat = ChainRef {
        chain: CHAIN,
        chain_version: ChainVersion(1),
        target: tail.id,
    };
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for lane in 0..8u64 {
        let (c, taddr) = (c.clone(), taddr.clone());
        hs.push(tokio::spawn(async move {
            let mut i = lane;
            while i < mib {
                let item = ReadItem {
                    at: tat,
                    chunk: ChunkId::new(InodeId(1), i / 4),
                    offset: ((i % 4) << 20) as u32,
                    length: 1 << 20,
                };
                let got = c.read_chunks(&taddr, vec![item]).await.expect("read");
                assert_eq!(got[0].as_ref().expect("item").1.len(), 1 << 20);
                i += 8;
            }
        }));
    }
    for h in hs {
        h.await.expect("reader");
    }
    let rd = t0.elapsed();
    println!(
        "{label:>6}: 3-replica seq write {:7.1} MiB/s   seq read {:7.1} MiB/s",
        mib as f64 / w.as_secs_f64(),
        mib as f64 / rd.as_secs_f64()
    );
    // 4 KiB random reads at depth 1 and 64.
    for depth in [1usize, 64] {
        let n_per = if depth == 1 { 2000 } else { 200 };
        let t0 = Instant::now();
        let mut hs = Vec::new();
        for lane in 0..depth {
            let (c, taddr) = (c.clone(), taddr.clone());
            hs.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n_per);
                let mut x = lane as u64 * 7919 + 1;
                for _ in 0..n_per {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let page = (x >> 33) % (mib * 256);
                    let item = ReadItem {
                        at: tat,
                        chunk: ChunkId::new(InodeId(1), page / 1024),
                        offset: ((page % 1024) * 4096) as u32,
                        length: 4096,
                    };
                    let s = Instant::now();
                    c.read_chunks(&taddr, vec![item]).await.expect("read");
                    lat.push(s.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for h in hs {
            lat.extend(h.await.expect("reader"));
        }
        let el = t0.elapsed();
        println!(
            "{label:>6}: 4 KiB random read QD{depth:<2} {:8.0} IOPS   p50 {:?}  p99 {:?}",
            lat.len() as f64 / el.as_secs_f64(),
            pct(lat.clone(), 0.5),
            pct(lat, 0.99)
        );
    }
    for s in servers {
        s.stop().await;
    }
}

/// The local disk: buffered sequential write (+ fsync) and read of the same size.
fn local_disk(dir: &std::path::Path, mib: u64) {
    let p = dir.join("baseline.dat");
    let block = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut f = std::fs::File::create(&p).expect("create");
    for _ in 0..mib {
        f.write_all(&block).expect("write");
    }
    f.sync_all().expect("sync");
    let w = t0.elapsed();
    drop(f);
    let t0 = Instant::now();
    let mut f = std::fs::File::open(&p).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        f.read_exact(&mut buf).expect("read");
    }
    let rd = t0.elapsed();
    println!(
        "  disk: local write+fsync   {:7.1} MiB/s   buffered read {:7.1} MiB/s",
        mib as f64 / w.as_secs_f64(),
        mib as f64 / rd.as_secs_f64()
    );
    let _ = std::fs::remove_file(p);
}

#[tokio::main]
async fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let tmp = tempfile::tempdir().expect("tempdir");
    local_disk(tmp.path(), mib);
    run("memory", None, mib).await;
    let dirs: Vec<_> = (1..=3).map(|n| tmp.path().join(format!("t{n}"))).collect();
    run("file", Some(&dirs), mib).await;
}
