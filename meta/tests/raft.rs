//! In-process Raft tests: three replicas on 127.0.0.1 (ports picked by binding port 0),
//! leader election, replication, failover, rejoin, snapshot install, restart from disk.

use pond_client::meta_client::MetaClient;
use pond_meta::namespace::read_dir;
use pond_meta::tables::{DIRENTS, XATTRS, xattr_key};
use pond_meta::{MetaConfig, MetaNode, MetaPeer};
use pond_proto::cluster::{GcTask, Heartbeat, LocalState, PublicState, TargetReport};
use pond_proto::meta::*;
use pond_proto::{ErrorCode, InodeId, NodeId, RoutingVersion, TargetId};
use redb::ReadableDatabase;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const TOKEN: &str = "test-token";

struct Cluster {
    _dir: tempfile::TempDir,
    cfgs: Vec<MetaConfig>,
    nodes: Vec<Option<MetaNode>>,
}

impl Cluster {
    async fn start(n: usize, snapshot_logs: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers: Vec<MetaPeer> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| MetaPeer {
                id: i as u64 + 1,
                addr: l.local_addr().unwrap().to_string(),
            })
            .collect();
        let cfgs: Vec<MetaConfig> = peers
            .iter()
            .map(|p| MetaConfig {
                id: p.id,
                listen: p.addr.clone(),
                data_dir: dir.path().join(format!("meta-{}", p.id)),
                token: TOKEN.into(),
                peers: peers.clone(),
                heartbeat_timeout_ms: 1500,
                snapshot_logs,
            })
            .collect();
        let mut nodes = Vec::new();
        for (cfg, l) in cfgs.iter().zip(listeners) {
            nodes.push(Some(MetaNode::start(cfg.clone(), l).await.unwrap()));
        }
        Cluster {
            _dir: dir,
            cfgs,
            nodes,
        }
    }

    fn client(&self) -> MetaClient {
        MetaClient::connect(
            self.cfgs.iter().map(|c| c.listen.clone()).collect(),
            TOKEN.into(),
        )
        .unwrap()
    }

    async fn stop(&mut self, i: usize) {
        self.nodes[i].take().expect("running").stop().await.unwrap();
    }

    async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none());
        let l = TcpListener::bind(&self.cfgs[i].listen).await.unwrap();
        self.nodes[i] = Some(MetaNode::start(self.cfgs[i].clone(), l).await.unwrap());
    }

    /// Index of the node every running replica agrees is leader.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let views: Vec<Option<u64>> = self
                .nodes
                .iter()
                .flatten()
                .map(|n| n.raft.metrics().borrow().current_leader)
                .collect();
            if let Some(Some(l)) = views.first()
                && views.iter().all(|v| *v == Some(*l))
                && self.nodes[(*l - 1) as usize].is_some()
            {
                return (*l - 1) as usize;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Names in the root directory as stored on replica `i` (read straight from its redb).
    fn root_names(&self, i: usize) -> Vec<String> {
        let node = self.nodes[i].as_ref().unwrap();
        let txn = node.shared.db.begin_read().unwrap();
        let t = txn.open_table(DIRENTS).unwrap();
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (entries, more) = read_dir(&t, InodeId::ROOT, after.as_deref(), 1000)
                .ok()
                .unwrap();
            after = entries.last().map(|e| e.name.clone());
            out.extend(entries.into_iter().map(|e| e.name));
            if !more {
                return out;
            }
        }
    }

    async fn wait_names(&self, i: usize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.root_names(i).len();
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} has {got} entries, want {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_some() {
                self.stop(i).await;
            }
        }
    }
}

async fn mkdir(c: &MetaClient, name: &str) -> Result<MetaReply, pond_proto::PondError> {
    c.op(MetaRequest::Mkdir {
        parent: InodeId::ROOT,
        name: name.into(),
        mode: 0o755,
        caller: Caller::default(),
    })
    .await
}

async fn create_many(c: &MetaClient, prefix: &str, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = c.clone();
        let name = format!("{prefix}{i:04}");
        tasks.push(tokio::spawn(async move { mkdir(&c, &name).await }));
    }
    for t in tasks {
        match t.await.unwrap() {
            Ok(MetaReply::Attr(_)) => {}
            r => panic!("mkdir: {r:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_replicate_failover_rejoin() {
    let mut c = Cluster::start(3, 10_000).await;
    let leader = c.leader().await;
    let client = c.client();
    create_many(&client, "a", 200).await;
    for i in 0..3 {
        c.wait_names(i, 200).await;
    }
    // Reads are linearizable from the leader.
    let Ok(MetaReply::Dir { entries, more }) = client
        .op(MetaRequest::ReadDir {
            dir: InodeId::ROOT,
            after: None,
            limit: 50,
        })
        .await
    else {
        panic!()
    };
    assert_eq!((entries.len(), more), (50, true));

    // Stop the leader: a new one serves, the client fails over by itself.
    c.stop(leader).await;
    let t0 = Instant::now();
    create_many(&client, "b", 100).await;
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "failover took {:?}",
        t0.elapsed()
    );
    let Ok(MetaReply::Attr(_)) = client
        .op(MetaRequest::Lookup {
            parent: InodeId::ROOT,
            name: "a0007".into(),
        })
        .await
    else {
        panic!()
    };

    // The old leader rejoins and catches up.
    c.restart(leader).await;
    create_many(&client, "c", 10).await;
    c.wait_names(leader, 310).await;
    assert_eq!(c.root_names(leader), c.root_names(new_leader));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_purge_restart_and_install() {
    let mut c = Cluster::start(3, 40).await;
    c.leader().await;
    let client = c.client();
    // Keep replica 3 down so it must catch up by snapshot.
    c.stop(2).await;
    // An extended attribute travels in the snapshot too.
    client
        .op(MetaRequest::SetXattr {
            inode: InodeId::ROOT,
            name: "user.snap".into(),
            value: b"in the snapshot".to_vec(),
            mode: XattrSetMode::Create,
        })
        .await
        .unwrap();
    for i in 0..150 {
        // Sequential: one entry each, so the log passes the snapshot threshold several times.
        mkdir(&client, &format!("s{i:04}")).await.unwrap();
    }
    // A snapshot was built and the log purged behind it on the running replicas.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = c.nodes[0].as_ref().unwrap().raft.metrics().borrow().clone();
        if m.snapshot.is_some() && m.purged.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot/purge: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.restart(2).await;
    c.wait_names(2, 150).await;
    {
        let node = c.nodes[2].as_ref().unwrap();
        let txn = node.shared.db.begin_read().unwrap();
        let x = txn.open_table(XATTRS).unwrap();
        let v = x
            .get(xattr_key(InodeId::ROOT, "user.snap").as_slice())
            .unwrap()
            .expect("the attribute reached the replica that caught up by snapshot");
        assert_eq!(v.value(), b"in the snapshot");
    }
    // Whole-cluster restart keeps everything.
    for i in 0..3 {
        c.stop(i).await;
    }
    for i in 0..3 {
        c.restart(i).await;
    }
    c.leader().await;
    let client = c.client();
    let Ok(MetaReply::Attr(a)) = client
        .op(MetaRequest::Lookup {
            parent: InodeId::ROOT,
            name: "s0149".into(),
        })
        .await
    else {
        panic!()
    };
    assert_eq!(a.kind, FileType::Dir);
    mkdir(&client, "after-restart").await.unwrap();
    for i in 0..3 {
        c.wait_names(i, 151).await;
    }
    // Inode ids keep growing after the restart (never reused).
    let Ok(MetaReply::Attr(b)) = client
        .op(MetaRequest::Lookup {
            parent: InodeId::ROOT,
            name: "after-restart".into(),
        })
        .await
    else {
        panic!()
    };
    assert!(b.inode > a.inode);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused() {
    let c = Cluster::start(1, 10_000).await;
    c.leader().await;
    let bad = MetaClient::connect(vec![c.cfgs[0].listen.clone()], "wrong".into()).unwrap();
    let e = mkdir(&bad, "x").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthenticated);
    let e = bad.cluster(ClusterRequest::MetaStatus).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthenticated);
    let good = c.client();
    assert_eq!(
        good.op(MetaRequest::Lookup {
            parent: InodeId::ROOT,
            name: "x".into()
        })
        .await
        .unwrap_err()
        .code,
        ErrorCode::NotFound
    );
    c.shutdown().await;
}

fn hb(node: u32, state: LocalState, routing: RoutingVersion, gc_done: Vec<GcTask>) -> Heartbeat {
    Heartbeat {
        node: NodeId(node),
        data_addr: format!("127.0.0.1:{}", 9000 + node),
        targets: (0..2)
            .map(|k| TargetReport {
                id: TargetId(node as u64 * 100 + k),
                local_state: state,
                used_bytes: 5,
                capacity_bytes: 1000,
            })
            .collect(),
        routing_version: routing,
        gc_done,
    }
}

async fn beat(c: &MetaClient, h: Heartbeat) -> pond_proto::cluster::HeartbeatReply {
    match c.cluster(ClusterRequest::Heartbeat(h)).await {
        Ok(ClusterReply::Heartbeat(r)) => r,
        r => panic!("heartbeat: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_manager_registers_bootstraps_detects_failure_and_hands_out_gc() {
    let c = Cluster::start(3, 10_000).await;
    c.leader().await;
    let client = c.client();
    for n in 1..=3 {
        beat(
            &client,
            hb(n, LocalState::UpToDate, RoutingVersion(0), vec![]),
        )
        .await;
    }
    let too_many = client
        .cluster(ClusterRequest::BootstrapChains { replicas: 4 })
        .await
        .unwrap_err();
    assert_eq!(too_many.code, ErrorCode::InvalidArgument);
    let Ok(ClusterReply::Bootstrapped(table)) = client
        .cluster(ClusterRequest::BootstrapChains { replicas: 3 })
        .await
    else {
        panic!()
    };
    assert_eq!(table.chains.len(), 2);
    assert_eq!(
        client
            .cluster(ClusterRequest::BootstrapChains { replicas: 3 })
            .await
            .unwrap_err()
            .code,
        ErrorCode::Exists
    );
    let Ok(ClusterReply::Routing(Some(r1))) = client
        .cluster(ClusterRequest::GetRouting {
            have: RoutingVersion(0),
        })
        .await
    else {
        panic!()
    };
    assert_eq!(r1.chains.len(), 2);
    let Ok(ClusterReply::Routing(None)) = client
        .cluster(ClusterRequest::GetRouting { have: r1.version })
        .await
    else {
        panic!("no newer routing expected")
    };

    // A file with chunks on both chains, then unlinked: GC tasks go to each chain's head.
    let Ok(MetaReply::Attr(f)) = client
        .op(MetaRequest::Create {
            parent: InodeId::ROOT,
            name: "f".into(),
            mode: 0o644,
            caller: Caller::default(),
            exclusive: true,
            hint: pond_proto::layout::PlacementHint::Any,
            session: None,
        })
        .await
    else {
        panic!()
    };
    assert_eq!(f.layout.as_ref().unwrap().stripe(), 2);
    client
        .op(MetaRequest::Unlink {
            parent: InodeId::ROOT,
            name: "f".into(),
        })
        .await
        .unwrap();

    // Node 1 falls silent; 2 and 3 keep beating and collect their GC tasks.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tasks: Vec<GcTask> = Vec::new();
    let mut routing = r1.clone();
    loop {
        for n in 2..=3 {
            let r = beat(
                &client,
                hb(n, LocalState::UpToDate, routing.version, vec![]),
            )
            .await;
            if let Some(r) = r.routing {
                routing = r;
            }
            tasks.extend(r.gc);
        }
        let node1_down = routing
            .targets
            .values()
            .filter(|t| t.node == NodeId(1))
            .all(|t| {
                t.local_state == LocalState::Offline && t.public_state == PublicState::Offline
            });
        if node1_down && tasks.len() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 not marked offline / gc not handed out: {routing:?} {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(routing.version > r1.version);
    for ch in routing.chains.values() {
        let last = ch.targets.last().unwrap();
        assert_eq!(
            routing.targets[last].node,
            NodeId(1),
            "offline target at the chain's end"
        );
        assert!(ch.version > r1.chains[&ch.id].version);
    }
    assert!(
        tasks
            .iter()
            .all(|t| t.inode == f.inode && t.from_index == 0)
    );
    // Report them done: the garbage record goes away.
    let done = tasks.clone();
    beat(
        &client,
        hb(2, LocalState::UpToDate, routing.version, done.clone()),
    )
    .await;
    beat(&client, hb(3, LocalState::UpToDate, routing.version, done)).await;
    let leader = c.leader().await;
    let db = c.nodes[leader].as_ref().unwrap().shared.db.clone();
    let txn = db.begin_read().unwrap();
    let gc = txn.open_table(pond_meta::tables::GC).unwrap();
    assert!(
        gc.get(f.inode.0).unwrap().is_none(),
        "garbage record dropped after gc_done"
    );
    drop(gc);
    drop(txn);

    // Node 1 comes back online: its targets sync (one per chain).
    let r = beat(&client, hb(1, LocalState::Online, routing.version, vec![])).await;
    let routing = r.routing.expect("newer routing");
    for ch in routing.chains.values() {
        let states: Vec<_> = ch
            .targets
            .iter()
            .map(|t| routing.targets[t].public_state)
            .collect();
        assert_eq!(
            states,
            vec![
                PublicState::Serving,
                PublicState::Serving,
                PublicState::Syncing
            ]
        );
    }
    let Ok(MetaReply::StatFs(s)) = client.op(MetaRequest::StatFs).await else {
        panic!()
    };
    // Two chains of three 1,000-byte targets: each byte is stored three times.
    assert_eq!(s.total_bytes, 2000);
    let Ok(ClusterReply::MetaStatus {
        leader: Some(l),
        members,
        last_applied,
    }) = client.cluster(ClusterRequest::MetaStatus).await
    else {
        panic!()
    };
    assert_eq!(members.len(), 3);
    assert!(members.iter().any(|m| m.is_leader && m.id == l));
    assert!(last_applied > 0);
    c.shutdown().await;
}

/// Rough throughput check (not a timed assertion; `bench/` owns figures):
/// `cargo test -p pond-meta --release --test raft -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_smoke() {
    let c = Cluster::start(3, 10_000).await;
    c.leader().await;
    let client = c.client();
    let n = 20_000usize;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(64) {
                mkdir(&c, &format!("p{i}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let dt = t0.elapsed();
    println!("creates: {:.0}/s", n as f64 / dt.as_secs_f64());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(64) {
                c.op(MetaRequest::Lookup {
                    parent: InodeId::ROOT,
                    name: format!("p{i}"),
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let dt = t0.elapsed();
    println!("lookups: {:.0}/s", n as f64 / dt.as_secs_f64());
    c.shutdown().await;
}

mod raw {
    //! A bytes codec to send arbitrary (malformed) bodies to `pond.Meta`.
    use bytes::{Buf, BufMut};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    pub struct Raw;
    pub struct E;
    pub struct D;

    impl Encoder for E {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for D {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
        }
    }

    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = E;
        type Decoder = D;
        fn encoder(&mut self) -> E {
            E
        }
        fn decoder(&mut self) -> D {
            D
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_grpc_changes_nothing_and_retries_dedupe() {
    use pond_proto::rpc::meta_service::meta_client::MetaClient as Raw;
    use tonic::metadata::MetadataValue;
    let c = Cluster::start(1, 10_000).await;
    c.leader().await;
    let client = c.client();
    mkdir(&client, "keep").await.unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.cfgs[0].listen))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Malformed body: refused, connection-level only.
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(vec![0xFFu8, 0xFF, 0xFF, 0x01, 0x02]);
    req.metadata_mut().insert(
        pond_proto::rpc::TOKEN_HEADER,
        MetadataValue::from_static(TOKEN),
    );
    let e = grpc
        .unary::<Vec<u8>, Vec<u8>, raw::Raw>(
            req,
            tonic::codegen::http::uri::PathAndQuery::from_static("/pond.Meta/Op"),
            raw::Raw,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Oversized request: refused by the server's message limit.
    let mut raw = Raw::new(ch.clone());
    let mut req = tonic::Request::new(MetaRequest::Mkdir {
        parent: InodeId::ROOT,
        name: "x".repeat(pond_proto::limits::CONTROL_MESSAGE_BYTES_MAX + 1),
        mode: 0o755,
        caller: Caller::default(),
    });
    req.metadata_mut().insert(
        pond_proto::rpc::TOKEN_HEADER,
        MetadataValue::from_static(TOKEN),
    );
    assert!(raw.op(req).await.is_err());

    // Over-long name: a clear ENAMETOOLONG.
    let e = mkdir(&client, &"n".repeat(256)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NameTooLong);
    assert_eq!(c.root_names(0), vec!["keep".to_string()]);

    // The same (client, request) twice is applied once and answered twice alike.
    let send = |request: u64| {
        let mut raw = raw.clone();
        async move {
            let mut req = tonic::Request::new(MetaRequest::Mkdir {
                parent: InodeId::ROOT,
                name: "once".into(),
                mode: 0o755,
                caller: Caller::default(),
            });
            let md = req.metadata_mut();
            md.insert(
                pond_proto::rpc::TOKEN_HEADER,
                MetadataValue::from_static(TOKEN),
            );
            md.insert(CLIENT_ID_HEADER, MetadataValue::from(77u64));
            md.insert(REQUEST_ID_HEADER, MetadataValue::from(request));
            raw.op(req)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| pond_proto::error::from_status(&s))
        }
    };
    let first = send(1).await.unwrap();
    let again = send(1).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(send(2).await.unwrap_err().code, ErrorCode::Exists);
    assert_eq!(
        c.root_names(0),
        vec!["keep".to_string(), "once".to_string()]
    );
    c.shutdown().await;
}

async fn create_file(c: &MetaClient, name: &str) -> InodeAttr {
    match c
        .op(MetaRequest::Create {
            parent: InodeId::ROOT,
            name: name.into(),
            mode: 0o644,
            caller: Caller::default(),
            exclusive: true,
            hint: pond_proto::layout::PlacementHint::Any,
            session: None,
        })
        .await
    {
        Ok(MetaReply::Attr(a)) => a,
        r => panic!("create {name}: {r:?}"),
    }
}

/// Open-unlinked files across clients: a reader's session keeps the file after another
/// client unlinks it; when the reader stops renewing its lease, the file is collected; a
/// reader that keeps renewing keeps its file until it ends its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_other_clients_hold_unlinked_files_until_their_lease_ends() {
    let c = Cluster::start(3, 10_000).await;
    c.leader().await;
    let writer = c.client();
    let dying = c.client();
    let living = c.client();
    assert_ne!(dying.client_id(), living.client_id());
    let f = create_file(&writer, "f").await.inode;
    let g = create_file(&writer, "g").await.inode;
    let ttl = Duration::from_millis(pond_meta::limits::LEASE_TTL_MIN_MS as u64);
    let dying_lease = dying.start_lease(ttl).await.unwrap();
    let living_lease = living.start_lease(ttl).await.unwrap();
    dying
        .open_session(f, pond_proto::SessionId(1))
        .await
        .unwrap();
    living
        .open_session(g, pond_proto::SessionId(1))
        .await
        .unwrap();
    for name in ["f", "g"] {
        writer
            .op(MetaRequest::Unlink {
                parent: InodeId::ROOT,
                name: name.into(),
            })
            .await
            .unwrap();
    }
    let attr = |i: InodeId| {
        let w = writer.clone();
        async move { w.op(MetaRequest::GetAttr { inode: i }).await }
    };
    match attr(f).await {
        Ok(MetaReply::Attr(a)) => assert_eq!(a.nlink, 0),
        r => panic!("unlinked file with a session: {r:?}"),
    }
    // The dying client stops renewing (as if killed): its file goes once the lease runs out
    // (after the leader's settling grace).
    drop(dying_lease);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match attr(f).await {
            Err(e) if e.code == ErrorCode::NotFound => break,
            Ok(_) => {}
            Err(e) => panic!("getattr: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "expired lease did not free the file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // More than two TTLs later, the renewing client's file is still there.
    assert!(matches!(attr(g).await, Ok(MetaReply::Attr(_))));
    assert_eq!(living_lease.epoch(), 0);
    living_lease.end().await.unwrap();
    assert_eq!(attr(g).await.unwrap_err().code, ErrorCode::NotFound);
    c.shutdown().await;
}
