//! Metadata service with real `pond` processes: leader failover under load, catch-up of a
//! restarted replica, whole-cluster restart after snapshots and log compaction, auth.

use pond_client::meta_client::MetaClient;
use pond_proto::meta::{Caller, ClusterReply, ClusterRequest, MetaReply, MetaRequest};
use pond_proto::{ErrorCode, InodeId};
use pond_tests::{Cluster, Opts, Role};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pond");

fn meta_only(n: u32) -> Opts {
    Opts {
        meta: n,
        storage: 0,
        targets_per_node: 1,
        replicas: 1,
    }
}

async fn mkdir(c: &MetaClient, name: &str) -> Result<MetaReply, pond_proto::PondError> {
    c.op(MetaRequest::Mkdir {
        parent: InodeId::ROOT,
        name: name.to_string(),
        mode: 0o755,
        caller: Caller { uid: 0, gid: 0 },
    })
    .await
}

/// All names in a directory, following readdir pages.
async fn list(c: &MetaClient, dir: InodeId) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut after = None;
    loop {
        let r = c
            .op(MetaRequest::ReadDir {
                dir,
                after: after.clone(),
                limit: 100,
            })
            .await;
        let Ok(MetaReply::Dir { entries, more }) = r else {
            panic!("readdir failed: {r:?}")
        };
        for e in &entries {
            out.insert(e.name.clone());
        }
        if !more || entries.is_empty() {
            return out;
        }
        after = entries.last().map(|e| e.name.clone());
    }
}

async fn last_applied(c: &MetaClient) -> Option<u64> {
    match c.cluster(ClusterRequest::MetaStatus).await {
        Ok(ClusterReply::MetaStatus { last_applied, .. }) => Some(last_applied),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_under_load_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(BIN, meta_only(3)).expect("start cluster");
    let client = cluster.meta_client().unwrap();
    let old_leader = cluster.leader(Duration::from_secs(30)).await.unwrap();

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let attempted = Arc::new(Mutex::new(BTreeSet::new()));
    let first_ok_after_kill: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (c, acked, attempted) = (client.clone(), acked.clone(), attempted.clone());
        let (first_ok, killed_at) = (first_ok_after_kill.clone(), killed_at.clone());
        workers.push(tokio::spawn(async move {
            for i in 0..150 {
                let name = format!("w{w}-{i:04}");
                attempted.lock().unwrap().insert(name.clone());
                match mkdir(&c, &name).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(name);
                        if killed_at.lock().unwrap().is_some() {
                            first_ok.lock().unwrap().get_or_insert(Instant::now());
                        }
                    }
                    // A retried mkdir whose first attempt was applied reports EEXIST: the
                    // directory is there, so it counts as acknowledged.
                    Err(e) if e.code == ErrorCode::Exists => {
                        acked.lock().unwrap().insert(name);
                    }
                    Err(e) => eprintln!("{name}: not acknowledged: {e}"),
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill9(Role::Meta(old_leader)).unwrap();
    *killed_at.lock().unwrap() = Some(Instant::now());
    for w in workers {
        w.await.unwrap();
    }

    let new_leader = cluster.leader(Duration::from_secs(30)).await.unwrap();
    assert_ne!(new_leader, old_leader, "a killed leader cannot still lead");
    let killed = killed_at.lock().unwrap().unwrap();
    let first_ok = first_ok_after_kill
        .lock()
        .unwrap()
        .expect("no operation succeeded after kill");
    eprintln!(
        "writes resumed {:?} after the leader was killed",
        first_ok - killed
    );

    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    assert!(
        acked.len() >= 500,
        "only {} of 600 operations acknowledged",
        acked.len()
    );
    let present = list(&client, InodeId::ROOT).await;
    for name in &acked {
        assert!(present.contains(name), "acknowledged mkdir {name} was lost");
    }
    for name in &present {
        assert!(attempted.contains(name), "phantom entry {name}");
    }
    // Nothing half applied: the root's link count matches its subdirectories.
    let Ok(MetaReply::Attr(root)) = client
        .op(MetaRequest::GetAttr {
            inode: InodeId::ROOT,
        })
        .await
    else {
        panic!("getattr root")
    };
    assert_eq!(
        root.nlink as usize,
        2 + present.len(),
        "root nlink disagrees with entries"
    );

    // The old leader rejoins and catches up.
    let target = last_applied(&cluster.meta_client_for(new_leader).unwrap())
        .await
        .unwrap();
    cluster.restart(Role::Meta(old_leader)).unwrap();
    let rejoined = cluster.meta_client_for(old_leader).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if last_applied(&rejoined).await.is_some_and(|a| a >= target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old leader did not catch up to index {target}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn set_snapshot_logs(cluster: &Cluster, id: u64, n: u64) {
    let p = cluster.path().join(format!("meta-{id}/meta.toml"));
    let mut v: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v.insert("snapshot_logs".into(), toml::Value::Integer(n as i64));
    std::fs::write(&p, toml::to_string(&v).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_after_snapshot_keeps_state() {
    let mut cluster = Cluster::start(BIN, meta_only(3)).expect("start cluster");
    cluster.down().unwrap();
    for id in 1..=3 {
        set_snapshot_logs(&cluster, id, 40);
    }
    cluster.up_again().unwrap();
    let client = cluster.meta_client().unwrap();
    let mut expect = BTreeSet::new();
    for i in 0..300 {
        let name = format!("d{i:04}");
        mkdir(&client, &name).await.unwrap();
        expect.insert(name);
    }
    // Some removals and renames too, so the snapshot is not just appends.
    for i in (0..300).step_by(7) {
        let name = format!("d{i:04}");
        client
            .op(MetaRequest::Rmdir {
                parent: InodeId::ROOT,
                name: name.clone(),
            })
            .await
            .unwrap();
        expect.remove(&name);
    }
    client
        .op(MetaRequest::Rename {
            src_parent: InodeId::ROOT,
            src_name: "d0001".into(),
            dst_parent: InodeId::ROOT,
            dst_name: "renamed".into(),
            mode: pond_proto::meta::RenameMode::Replace,
        })
        .await
        .unwrap();
    expect.remove("d0001");
    expect.insert("renamed".into());
    drop(client);

    cluster.down().unwrap();
    cluster.up_again().unwrap();
    let client = cluster.meta_client().unwrap();
    assert_eq!(list(&client, InodeId::ROOT).await, expect);
    // New ids are still fresh after restart: a new directory gets an unused inode.
    let Ok(MetaReply::Attr(a)) = mkdir(&client, "after-restart").await else {
        panic!()
    };
    let Ok(MetaReply::Attr(r)) = client
        .op(MetaRequest::Lookup {
            parent: InodeId::ROOT,
            name: "renamed".into(),
        })
        .await
    else {
        panic!()
    };
    assert!(a.inode.0 > r.inode.0, "inode ids must never be reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_and_bad_names_change_nothing() {
    let cluster = Cluster::start(BIN, meta_only(1)).expect("start cluster");
    let cf = cluster.cluster_file().unwrap();
    let bad = MetaClient::connect(cf.meta_addrs(), "not-the-token".into()).unwrap();
    let e = mkdir(&bad, "x").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthenticated);

    let client = cluster.meta_client().unwrap();
    let before = list(&client, InodeId::ROOT).await;
    for (name, code) in [
        ("x".repeat(256), ErrorCode::NameTooLong),
        ("a/b".to_string(), ErrorCode::InvalidArgument),
        (".".to_string(), ErrorCode::InvalidArgument),
        ("..".to_string(), ErrorCode::InvalidArgument),
        ("nul\0".to_string(), ErrorCode::InvalidArgument),
        (String::new(), ErrorCode::InvalidArgument),
    ] {
        assert_eq!(
            mkdir(&client, &name).await.unwrap_err().code,
            code,
            "name {name:?}"
        );
    }
    let e = client
        .op(MetaRequest::Mkdir {
            parent: InodeId(987_654_321),
            name: "x".into(),
            mode: 0o755,
            caller: Caller::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(
        list(&client, InodeId::ROOT).await,
        before,
        "a refused request changed state"
    );
    let warned = cluster
        .warnings()
        .iter()
        .any(|l| l.contains("token") || l.contains("auth"));
    assert!(warned, "a refused request must be logged");
}
