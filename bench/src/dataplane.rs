//! The data plane against in-memory targets: three storage nodes started in this process
//! (`pond_storage::StorageServer`, one chain of three, routing injected, no meta), each target a
//! chunk engine over the storage crate's in-memory backend, driven with the low-level
//! `DataClient` over loopback TCP. Its figures stand next to the client library's on the real
//! cluster and the local disk: if the in-memory data plane is far faster than the cluster, the
//! transport and the replication protocol are not what limits pond.

use crate::io::ClientFigures;
use crate::posix::{MIB, Rng};
use crate::report::{Samples, Table, progress};
use anyhow::{Result, anyhow};
use bytes::Bytes;
use pond_client::net::DataClient;
use pond_proto::cluster::*;
use pond_proto::data::{ChainRef, ReadItem};
use pond_proto::*;
use pond_storage::store::engine::Engine;
use pond_storage::store::mem::MemBackend;
use pond_storage::{ServerOptions, StorageServer, TargetSetup};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHAIN: ChainId = ChainId(1);
const CHUNK: u32 = 4 << 20;
const TOKEN: &str = "pond-bench-dataplane";

struct MemChain {
    servers: Vec<StorageServer>,
    /// (address, chain ref) of each replica, head first.
    replicas: Vec<(String, ChainRef)>,
}

impl MemChain {
    async fn start(capacity: u64) -> Result<MemChain> {
        let mut servers = Vec::new();
        for n in 1..=3u32 {
            let engine = Engine::open(MemBackend::new(capacity))
                .map_err(|e| anyhow!("memory engine: {e}"))?;
            let setup = TargetSetup {
                id: TargetId(100 + n as u64),
                store: Arc::new(engine),
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
            match StorageServer::start(opts, vec![setup]).await {
                Ok(s) => servers.push(s),
                Err(e) => {
                    for s in servers {
                        s.stop().await;
                    }
                    return Err(anyhow!("start in-memory storage node: {e}"));
                }
            }
        }
        let mut r = RoutingInfo {
            version: RoutingVersion(1),
            ..Default::default()
        };
        let mut replicas = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            let n = NodeId(i as u32 + 1);
            let t = TargetId(101 + i as u64);
            r.nodes.insert(
                n,
                NodeInfo {
                    id: n,
                    data_addr: s.data_addr.clone(),
                    alive: true,
                },
            );
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
            replicas.push((
                s.data_addr.clone(),
                ChainRef {
                    chain: CHAIN,
                    chain_version: ChainVersion(1),
                    target: t,
                },
            ));
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
        Ok(MemChain { servers, replicas })
    }

    async fn stop(self) {
        for s in self.servers {
            s.stop().await;
        }
    }
}

fn chunk_of(mib_index: u64) -> (ChunkId, u32) {
    let per = (CHUNK as u64) / MIB as u64;
    (
        ChunkId::new(InodeId(1), mib_index / per),
        ((mib_index % per) * MIB as u64) as u32,
    )
}

/// Sequential 1 MiB writes to the head, `lanes` in flight.
async fn seq_write(
    c: &DataClient,
    head: &(String, ChainRef),
    mib: u64,
    lanes: u64,
) -> Result<Samples> {
    let data = Bytes::from(crate::posix::pattern(MIB, 5));
    let start = Instant::now();
    let mut hs = Vec::new();
    for lane in 0..lanes {
        let (c, (addr, at), data) = (c.clone(), head.clone(), data.clone());
        hs.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let mut i = lane;
            while i < mib {
                let (chunk, off) = chunk_of(i);
                let t0 = Instant::now();
                c.write_chunk(
                    &addr,
                    at,
                    chunk,
                    off,
                    CHUNK,
                    data.clone(),
                    c.next_request_id(),
                )
                .await
                .map_err(|e| anyhow!("write chunk: {e}"))?;
                s.push(t0.elapsed());
                s.bytes += MIB as u64;
                i += lanes;
            }
            anyhow::Ok(s)
        }));
    }
    let mut all = Samples::default();
    for h in hs {
        all.extend(h.await??);
    }
    all.wall = start.elapsed();
    Ok(all)
}

/// Sequential 1 MiB reads, one at a time, from the replicas in turn.
async fn seq_read(c: &DataClient, reps: &[(String, ChainRef)], mib: u64) -> Result<Samples> {
    let start = Instant::now();
    let mut s = Samples::default();
    for i in 0..mib {
        let (addr, at) = &reps[i as usize % reps.len()];
        let (chunk, offset) = chunk_of(i);
        let t0 = Instant::now();
        let got = c
            .read_chunks(
                addr,
                vec![ReadItem {
                    at: *at,
                    chunk,
                    offset,
                    length: MIB as u32,
                }],
            )
            .await
            .map_err(|e| anyhow!("read: {e}"))?;
        s.push(t0.elapsed());
        let (_, b) = got
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("empty read reply"))?
            .map_err(|e| anyhow!("{e}"))?;
        s.bytes += b.len() as u64;
    }
    s.wall = start.elapsed();
    Ok(s)
}

/// Random reads of `block` bytes, `qd` tasks, spread over the replicas.
async fn rand_read(
    c: &DataClient,
    reps: &[(String, ChainRef)],
    size: u64,
    block: usize,
    qd: usize,
    dur: Duration,
) -> Result<Samples> {
    let start = Instant::now();
    let mut hs = Vec::new();
    for t in 0..qd {
        let (c, reps) = (c.clone(), reps.to_vec());
        hs.push(tokio::spawn(async move {
            let mut rng = Rng::new(500 + t as u64);
            let mut s = Samples::default();
            let mut k = t;
            while start.elapsed() < dur {
                let off = rng.offset(size, block as u64);
                let chunk = ChunkId::new(InodeId(1), off / CHUNK as u64);
                let offset = (off % CHUNK as u64) as u32;
                let (addr, at) = &reps[k % reps.len()];
                k += 1;
                let t0 = Instant::now();
                let got = c
                    .read_chunks(
                        addr,
                        vec![ReadItem {
                            at: *at,
                            chunk,
                            offset,
                            length: block as u32,
                        }],
                    )
                    .await
                    .map_err(|e| anyhow!("read: {e}"))?;
                s.push(t0.elapsed());
                got.into_iter()
                    .next()
                    .ok_or_else(|| anyhow!("empty read reply"))?
                    .map_err(|e| anyhow!("{e}"))?;
            }
            anyhow::Ok(s)
        }));
    }
    let mut all = Samples::default();
    for h in hs {
        all.extend(h.await??);
    }
    all.wall = start.elapsed();
    Ok(all)
}

/// Runs the in-memory data-plane measurements and prints them next to `client` (the client
/// library on the real cluster) and the local disk.
pub async fn run(file_bytes: u64, phase: Duration, client: &ClientFigures) -> Result<()> {
    let mib = file_bytes / MIB as u64;
    let pb = progress("dataplane: in-memory chain of 3");
    let chain = MemChain::start(file_bytes * 2 + (256 << 20)).await?;
    let result = measure(&chain, mib, phase).await;
    chain.stop().await;
    pb.finish_and_clear();
    let m = result?;
    let mut t = Table::new(
        "data plane: in-memory targets (3 in-process nodes, chain of 3, DataClient over TCP)",
        &[
            "in-memory data plane",
            "pond client (cluster)",
            "local buffered",
        ],
    );
    t.row(
        "seq write 1 MiB, 1 in flight, acked",
        vec![
            Some(m.write1),
            Some(client.seq_write_acked.clone()),
            Some(client.local_write_acked.clone()),
        ],
    );
    t.row(
        "seq write 1 MiB, 8 in flight",
        vec![
            Some(m.write8),
            Some(client.seq_write_buffered.clone()),
            Some(client.local_write_buffered.clone()),
        ],
    );
    t.row(
        "seq read 1 MiB, qd1",
        vec![
            Some(m.read),
            Some(client.seq_read.clone()),
            Some(client.local_seq_read.clone()),
        ],
    );
    for ((block, qd), s) in m.rand {
        let pond = client
            .rand
            .iter()
            .find(|(k, _)| *k == (block, qd))
            .map(|(_, s)| s.clone());
        let local = client
            .local_rand
            .iter()
            .find(|(k, _)| *k == (block, qd))
            .map(|(_, s)| s.clone());
        t.row(
            &format!("rand read {} KiB, qd{qd}", block >> 10),
            vec![Some(s), pond, local],
        );
    }
    t.note("pond client column: the client-library rows of the io table (write-behind + fsync for 8 in flight)");
    t.note("local column: buffered file; fdatasync per block for the acked row, fsync at end otherwise");
    t.print();
    Ok(())
}

/// Sequential 1 MiB writes only (`lanes` in flight), for profiling the write path in isolation
/// (`cargo run --release -p pond-bench --example dataplane_write -- MIB LANES`).
pub async fn write_probe(mib: u64, lanes: u64) -> Result<Samples> {
    let chain = MemChain::start(mib * MIB as u64 * 2 + (256 << 20)).await?;
    let c = DataClient::tcp(TOKEN, ClientId(0xbe_4d)).with_deadline(Duration::from_secs(30));
    let res = seq_write(&c, &chain.replicas[0], mib, lanes).await;
    chain.stop().await;
    res
}

struct MemFigures {
    write1: Samples,
    write8: Samples,
    read: Samples,
    rand: Vec<((usize, usize), Samples)>,
}

async fn measure(chain: &MemChain, mib: u64, phase: Duration) -> Result<MemFigures> {
    let c = DataClient::tcp(TOKEN, ClientId(0xbe_4c)).with_deadline(Duration::from_secs(30));
    let head = chain.replicas[0].clone();
    let write1 = seq_write(&c, &head, mib.min(256), 1).await?;
    let write8 = seq_write(&c, &head, mib, 8).await?;
    seq_read(&c, &chain.replicas, mib).await?;
    let read = seq_read(&c, &chain.replicas, mib).await?;
    let mut rand = Vec::new();
    for (block, qd) in [
        (4096usize, 1usize),
        (4096, 64),
        (128 << 10, 1),
        (128 << 10, 64),
    ] {
        let s = rand_read(&c, &chain.replicas, mib * MIB as u64, block, qd, phase).await?;
        rand.push(((block, qd), s));
    }
    Ok(MemFigures {
        write1,
        write8,
        read,
        rand,
    })
}
