//! Kill -9 restart: a single replica runs in a child process (this test binary re-executed),
//! clients create files concurrently, the child is SIGKILLed in the middle, restarted on the
//! same data directory, and every create that was acknowledged before the kill must be there.
//!
//! State-machine applies are not fsynced (only every `STATE_DURABLE_EVERY_ENTRIES` entries);
//! the Raft log is. The test also reads a copy of `state.redb` taken after the kill to show
//! how far the durable state machine lagged, i.e. how much the restart had to replay.

use pond_client::meta_client::MetaClient;
use pond_meta::{MetaConfig, MetaNode, MetaPeer};
use pond_proto::meta::*;
use pond_proto::{InodeId, layout::PlacementHint};
use redb::ReadableDatabase;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "crash-test-token";
const CHILD_ENV: &str = "POND_META_CRASH_CHILD";

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (addr, dir) = spec.split_once('|').expect("addr|dir");
        child(addr.to_string(), PathBuf::from(dir));
        return;
    }
    // Enough of libtest's command line for cargo test and nextest (`--list`, filters).
    const NAME: &str = "kill9_restart_replays_unsynced_applies";
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("{NAME}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(kill9_restart_replays_unsynced_applies());
    println!("test kill9_restart_replays_unsynced_applies ... ok");
}

/// The replica: serve until killed.
fn child(addr: String, dir: PathBuf) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let cfg = MetaConfig {
            id: 1,
            listen: addr.clone(),
            data_dir: dir,
            token: TOKEN.into(),
            peers: vec![MetaPeer { id: 1, addr }],
            heartbeat_timeout_ms: 5000,
            snapshot_logs: 1_000_000,
        };
        let l = tokio::net::TcpListener::bind(&cfg.listen).await.unwrap();
        let _node = MetaNode::start(cfg, l).await.unwrap();
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
}

/// The replica process; killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Replica(Child);

impl Replica {
    fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(addr: &str, dir: &Path) -> Replica {
    Replica(
        Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, format!("{addr}|{}", dir.display()))
            .spawn()
            .expect("spawn replica"),
    )
}

async fn wait_up(c: &MetaClient) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if c.op(MetaRequest::GetAttr {
            inode: InodeId::ROOT,
        })
        .await
        .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "replica did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn names(c: &MetaClient, dir: InodeId) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut after = None;
    loop {
        let MetaReply::Dir { entries, more } = c
            .op(MetaRequest::ReadDir {
                dir,
                after: after.clone(),
                limit: 1000,
            })
            .await
            .unwrap()
        else {
            panic!("readdir reply")
        };
        after = entries.last().map(|e| e.name.clone());
        out.extend(entries.into_iter().map(|e| e.name));
        if !more {
            return out;
        }
    }
}

fn durable_last_applied(state: &Path) -> Option<u64> {
    let copy = tempfile::tempdir().unwrap();
    let p = copy.path().join("state.redb");
    std::fs::copy(state, &p).unwrap();
    let db = redb::Database::create(&p).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(pond_meta::tables::META).unwrap();
    let v = t.get(pond_meta::tables::K_LAST_APPLIED).unwrap()?;
    let l: openraft::LogId<u64> = postcard::from_bytes(v.value()).unwrap();
    Some(l.index)
}

async fn kill9_restart_replays_unsynced_applies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("meta-1");
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut child = spawn_child(&addr, &data);
    let c = MetaClient::connect(vec![addr.clone()], TOKEN.into()).unwrap();
    wait_up(&c).await;
    let MetaReply::Attr(d) = c
        .op(MetaRequest::Mkdir {
            parent: InodeId::ROOT,
            name: "d".into(),
            mode: 0o755,
            caller: Caller::default(),
        })
        .await
        .unwrap()
    else {
        panic!("mkdir")
    };

    // 16 writers create files until the kill; every acknowledged name is recorded.
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (c, acked) = (c.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("f{t}-{i}");
                let r = c
                    .op(MetaRequest::Create {
                        parent: d.inode,
                        name: name.clone(),
                        mode: 0o644,
                        caller: Caller::default(),
                        exclusive: true,
                        hint: PlacementHint::Any,
                        session: None,
                    })
                    .await;
                match r {
                    Ok(_) => {
                        acked.lock().unwrap().insert(name);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    let start = Instant::now();
    while acked.lock().unwrap().len() < 1500 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "writes too slow to reach the kill point"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SIGKILL: no shutdown path runs, nothing gets flushed.
    child.kill9();
    let acked_at_kill: BTreeSet<String> = acked.lock().unwrap().clone();
    let durable = durable_last_applied(&data.join("state.redb"));
    println!(
        "acknowledged before the kill: {}; durable last_applied in state.redb: {durable:?}",
        acked_at_kill.len()
    );
    for t in &tasks {
        t.abort();
    }
    let mut child = spawn_child(&addr, &data);
    wait_up(&c).await;
    let have = names(&c, d.inode).await;
    let lost: Vec<&String> = acked_at_kill.difference(&have).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged creates lost after kill -9, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // A retry of an acknowledged create after the restart is answered EEXIST (the entry is
    // there exactly once), and new writes work.
    let any = acked_at_kill.iter().next().unwrap().clone();
    let e = c
        .op(MetaRequest::Create {
            parent: d.inode,
            name: any,
            mode: 0o644,
            caller: Caller::default(),
            exclusive: true,
            hint: PlacementHint::Any,
            session: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, pond_proto::ErrorCode::Exists);
    child.kill9();
}
