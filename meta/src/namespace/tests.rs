//! Unit tests for every namespace operation and errno. Each refused request is checked to
//! leave the whole state unchanged.

use super::*;
use crate::cluster::ClusterState;
use crate::types::Origin;
use pond_proto::cluster::{LocalState, TargetReport};
use pond_proto::{ClientId, NodeId, RequestId, SessionId, TargetId};
use redb::{Database, ReadableDatabase};

struct H {
    _dir: tempfile::TempDir,
    db: Database,
    cluster: ClusterState,
    t: i64,
}

type Dump = Vec<(u8, Vec<u8>, Vec<u8>)>;

impl H {
    fn new() -> H {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("s.redb")).unwrap();
        let mut h = H {
            _dir: dir,
            db,
            cluster: ClusterState::default(),
            t: 100,
        };
        h.with_tx(|tx| tx.ensure_root().map(|_| ()));
        h
    }

    fn with_chains() -> H {
        let mut h = H::new();
        for n in 1..=3u32 {
            let targets: Vec<_> = (0..2)
                .map(|k| TargetReport {
                    id: TargetId(n as u64 * 10 + k),
                    local_state: LocalState::UpToDate,
                    used_bytes: 1,
                    capacity_bytes: 1000,
                })
                .collect();
            h.cluster.register(NodeId(n), "127.0.0.1:1", &targets);
        }
        h.cluster.bootstrap_chains(3).unwrap();
        h
    }

    fn with_tx<T>(&mut self, f: impl FnOnce(&mut Tx<'_>) -> R<T>) -> T {
        self.t += 1;
        let txn = self.db.begin_write().unwrap();
        let (out, cluster) = {
            let mut tx = Tx::open(&txn, self.cluster.clone()).unwrap();
            tx.now = Timestamp {
                sec: self.t,
                nsec: 0,
            };
            let out = match f(&mut tx) {
                Ok(v) => v,
                Err(ApplyError::Store(e)) => panic!("store: {e}"),
                Err(ApplyError::Op(e)) => panic!("op: {e}"),
            };
            (out, tx.finish().unwrap())
        };
        txn.commit().unwrap();
        self.cluster = cluster;
        out
    }

    fn w(&mut self, req: MetaRequest) -> Result<MetaReply, PondError> {
        self.with_tx(|tx| Ok(tx.apply_meta(None, &req).unwrap()))
    }

    fn w_origin(&mut self, o: Origin, req: MetaRequest) -> Result<MetaReply, PondError> {
        self.with_tx(|tx| Ok(tx.apply_meta(Some(o), &req).unwrap()))
    }

    fn r(&self, req: MetaRequest) -> Result<MetaReply, PondError> {
        let txn = self.db.begin_read().unwrap();
        let i = txn.open_table(INODES).unwrap();
        let d = txn.open_table(DIRENTS).unwrap();
        let x = txn.open_table(XATTRS).unwrap();
        match read(&i, &d, &x, &self.cluster.routing, &req) {
            Ok(v) => Ok(v),
            Err(ApplyError::Op(e)) => Err(e),
            Err(ApplyError::Store(e)) => panic!("store: {e}"),
        }
    }

    fn dump(&self) -> Dump {
        let txn = self.db.begin_read().unwrap();
        let mut out = Vec::new();
        for (tag, def) in [(1u8, INODES), (4, GC)] {
            for it in txn.open_table(def).unwrap().iter().unwrap() {
                let (k, v) = it.unwrap();
                out.push((tag, k.value().to_be_bytes().to_vec(), v.value().to_vec()));
            }
        }
        for it in txn.open_table(DIRENTS).unwrap().iter().unwrap() {
            let (k, v) = it.unwrap();
            out.push((2, k.value().to_vec(), v.value().to_vec()));
        }
        for it in txn.open_table(SESSIONS).unwrap().iter().unwrap() {
            let (k, _) = it.unwrap();
            out.push((3, k.value().to_vec(), vec![]));
        }
        for it in txn.open_table(TRASH).unwrap().iter().unwrap() {
            let (k, _) = it.unwrap();
            out.push((5, k.value().to_be_bytes().to_vec(), vec![]));
        }
        for it in txn.open_table(LEASES).unwrap().iter().unwrap() {
            let (k, v) = it.unwrap();
            out.push((9, k.value().to_be_bytes().to_vec(), v.value().to_vec()));
        }
        for it in txn.open_table(CLIENT_SESSIONS).unwrap().iter().unwrap() {
            let (k, _) = it.unwrap();
            out.push((10, k.value().to_vec(), vec![]));
        }
        for it in txn.open_table(XATTRS).unwrap().iter().unwrap() {
            let (k, v) = it.unwrap();
            out.push((11, k.value().to_vec(), v.value().to_vec()));
        }
        for it in txn.open_table(META).unwrap().iter().unwrap() {
            let (k, v) = it.unwrap();
            out.push((8, k.value().as_bytes().to_vec(), v.value().to_vec()));
        }
        out
    }

    /// Apply `req`, expect `code`, and check nothing changed.
    fn refused(&mut self, req: MetaRequest, code: ErrorCode) {
        let before = self.dump();
        let e = self
            .w(req.clone())
            .expect_err(&format!("{req:?} should fail"));
        assert_eq!(e.code, code, "{req:?}: {e}");
        assert!(!e.message.is_empty());
        assert_eq!(self.dump(), before, "{req:?} changed state");
    }

    fn mkdir(&mut self, parent: InodeId, name: &str) -> InodeId {
        match self.w(MetaRequest::Mkdir {
            parent,
            name: name.into(),
            mode: 0o755,
            caller: Caller::default(),
        }) {
            Ok(MetaReply::Attr(a)) => a.inode,
            r => panic!("mkdir {name}: {r:?}"),
        }
    }

    fn create(&mut self, parent: InodeId, name: &str) -> InodeAttr {
        match self.w(create_req(parent, name, true)) {
            Ok(MetaReply::Attr(a)) => a,
            r => panic!("create {name}: {r:?}"),
        }
    }

    fn attr(&self, inode: InodeId) -> InodeAttr {
        match self.r(MetaRequest::GetAttr { inode }) {
            Ok(MetaReply::Attr(a)) => a,
            r => panic!("getattr {inode}: {r:?}"),
        }
    }

    fn lookup(&self, parent: InodeId, name: &str) -> Result<InodeId, ErrorCode> {
        match self.r(MetaRequest::Lookup {
            parent,
            name: name.into(),
        }) {
            Ok(MetaReply::Attr(a)) => Ok(a.inode),
            Err(e) => Err(e.code),
            r => panic!("lookup: {r:?}"),
        }
    }

    /// Every entry of `dir` (one page of up to 100).
    fn list(&self, dir: InodeId) -> Vec<DirEntry> {
        match self.r(MetaRequest::ReadDir {
            dir,
            after: None,
            limit: 100,
        }) {
            Ok(MetaReply::Dir { entries, .. }) => entries,
            r => panic!("readdir {dir}: {r:?}"),
        }
    }

    fn gc_inodes(&self) -> Vec<u64> {
        let txn = self.db.begin_read().unwrap();
        let t = txn.open_table(GC).unwrap();
        t.iter().unwrap().map(|i| i.unwrap().0.value()).collect()
    }
}

fn create_req(parent: InodeId, name: &str, exclusive: bool) -> MetaRequest {
    MetaRequest::Create {
        parent,
        name: name.into(),
        mode: 0o644,
        caller: Caller { uid: 7, gid: 8 },
        exclusive,
        hint: PlacementHint::Any,
        session: None,
    }
}

fn rename(sp: InodeId, s: &str, dp: InodeId, d: &str, mode: RenameMode) -> MetaRequest {
    MetaRequest::Rename {
        src_parent: sp,
        src_name: s.into(),
        dst_parent: dp,
        dst_name: d.into(),
        mode,
    }
}

const ROOT: InodeId = InodeId::ROOT;

#[test]
fn root_exists() {
    let h = H::new();
    let a = h.attr(ROOT);
    assert_eq!(a.kind, FileType::Dir);
    assert_eq!(a.mode, 0o755);
    assert_eq!((a.uid, a.gid, a.nlink), (0, 0, 2));
}

#[test]
fn mkdir_counts_links_and_stamps_times() {
    let mut h = H::new();
    let d = h.mkdir(ROOT, "a");
    let root = h.attr(ROOT);
    assert_eq!(root.nlink, 3);
    assert_eq!(root.mtime, root.ctime);
    assert_eq!(root.mtime.sec, h.t);
    let a = h.attr(d);
    assert_eq!((a.kind, a.nlink, a.mode), (FileType::Dir, 2, 0o755));
    h.mkdir(d, "b");
    assert_eq!(h.attr(d).nlink, 3);
    h.refused(
        MetaRequest::Mkdir {
            parent: ROOT,
            name: "a".into(),
            mode: 0o755,
            caller: Caller::default(),
        },
        ErrorCode::Exists,
    );
    h.refused(
        MetaRequest::Mkdir {
            parent: InodeId(999),
            name: "x".into(),
            mode: 0o755,
            caller: Caller::default(),
        },
        ErrorCode::NotFound,
    );
    let f = h.create(ROOT, "f").inode;
    h.refused(
        MetaRequest::Mkdir {
            parent: f,
            name: "x".into(),
            mode: 0o755,
            caller: Caller::default(),
        },
        ErrorCode::NotDir,
    );
}

#[test]
fn bad_names_are_refused_and_change_nothing() {
    let mut h = H::new();
    let long = "x".repeat(256);
    for (name, code) in [
        (long.as_str(), ErrorCode::NameTooLong),
        ("a/b", ErrorCode::InvalidArgument),
        (".", ErrorCode::InvalidArgument),
        ("..", ErrorCode::InvalidArgument),
        ("", ErrorCode::InvalidArgument),
        ("a\0b", ErrorCode::InvalidArgument),
    ] {
        h.refused(
            MetaRequest::Mkdir {
                parent: ROOT,
                name: name.into(),
                mode: 0o755,
                caller: Caller::default(),
            },
            code,
        );
        h.refused(create_req(ROOT, name, true), code);
        h.refused(
            MetaRequest::Symlink {
                parent: ROOT,
                name: name.into(),
                target: "t".into(),
                caller: Caller::default(),
            },
            code,
        );
        h.refused(rename(ROOT, "nope", ROOT, name, RenameMode::Replace), code);
        assert_eq!(
            h.r(MetaRequest::Lookup {
                parent: ROOT,
                name: name.into()
            })
            .unwrap_err()
            .code,
            code
        );
    }
    assert!(h.create(ROOT, &"y".repeat(255)).inode.0 > 1);
}

#[test]
fn unknown_inodes_are_enoent() {
    let mut h = H::new();
    let x = InodeId(12345);
    assert_eq!(
        h.r(MetaRequest::GetAttr { inode: x }).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        h.r(MetaRequest::ReadDir {
            dir: x,
            after: None,
            limit: 10
        })
        .unwrap_err()
        .code,
        ErrorCode::NotFound
    );
    assert_eq!(
        h.r(MetaRequest::ReadLink { inode: x }).unwrap_err().code,
        ErrorCode::NotFound
    );
    h.refused(
        MetaRequest::SetAttr {
            inode: x,
            set: SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        },
        ErrorCode::NotFound,
    );
    h.refused(
        MetaRequest::Link {
            inode: x,
            new_parent: ROOT,
            new_name: "l".into(),
        },
        ErrorCode::NotFound,
    );
    h.refused(
        MetaRequest::Unlink {
            parent: x,
            name: "a".into(),
        },
        ErrorCode::NotFound,
    );
    h.refused(
        MetaRequest::Unlink {
            parent: ROOT,
            name: "a".into(),
        },
        ErrorCode::NotFound,
    );
    h.refused(
        MetaRequest::OpenWrite {
            inode: x,
            client: ClientId(1),
            session: SessionId(1),
        },
        ErrorCode::NotFound,
    );
    h.refused(
        MetaRequest::RemoveTree {
            parent: ROOT,
            name: "a".into(),
        },
        ErrorCode::NotFound,
    );
}

#[test]
fn create_exclusive_and_not() {
    let mut h = H::new();
    let a = h.create(ROOT, "f");
    assert_eq!(
        (a.kind, a.mode, a.uid, a.gid, a.nlink, a.size),
        (FileType::File, 0o644, 7, 8, 1, 0)
    );
    assert_eq!(a.layout, None, "no chains yet");
    h.refused(create_req(ROOT, "f", true), ErrorCode::Exists);
    let before = h.dump();
    match h.w(create_req(ROOT, "f", false)) {
        Ok(MetaReply::Attr(b)) => assert_eq!(b.inode, a.inode),
        r => panic!("{r:?}"),
    }
    assert_eq!(h.dump().len(), before.len());
    h.mkdir(ROOT, "d");
    h.refused(create_req(ROOT, "d", false), ErrorCode::IsDir);
    h.refused(create_req(ROOT, "d", true), ErrorCode::Exists);
}

#[test]
fn layouts_round_robin_and_hints() {
    let mut h = H::with_chains();
    let chains = h.cluster.routing.chain_tables[&ChainTableId(1)]
        .chains
        .clone();
    assert_eq!(chains.len(), 2);
    let a = h.create(ROOT, "a").layout.unwrap();
    let b = h.create(ROOT, "b").layout.unwrap();
    assert_eq!(a.stripe(), 2);
    assert_eq!(a.chunk_bytes, CHUNK_BYTES_DEFAULT);
    let mut s = a.chains.clone();
    s.sort();
    assert_eq!(s, chains);
    // stripe 1 directory: consecutive files start on different chains.
    let d = h.mkdir(ROOT, "d");
    let dl = DirLayout {
        chain_table: ChainTableId(1),
        chunk_bytes: 1 << 20,
        stripe: 1,
    };
    h.w(MetaRequest::SetDirLayout {
        dir: d,
        layout: dl.clone(),
    })
    .unwrap();
    let sub = h.mkdir(d, "sub");
    assert_eq!(
        h.r(MetaRequest::GetDirLayout { dir: sub }).unwrap(),
        MetaReply::DirLayout(dl.clone()),
        "inherited"
    );
    let x = h.create(sub, "x").layout.unwrap();
    let y = h.create(sub, "y").layout.unwrap();
    assert_eq!((x.stripe(), x.chunk_bytes), (1, 1 << 20));
    assert_ne!(x.chains, y.chains);
    let _ = b;
    // Hints.
    let mut req = create_req(ROOT, "hinted", true);
    if let MetaRequest::Create { hint, .. } = &mut req {
        *hint = PlacementHint::Chain(chains[1]);
    }
    let Ok(MetaReply::Attr(a)) = h.w(req) else {
        panic!()
    };
    assert_eq!(a.layout.unwrap().chains, vec![chains[1]]);
    let head_node = h.cluster.head_node(chains[0]).unwrap();
    let mut req = create_req(ROOT, "near", true);
    if let MetaRequest::Create { hint, .. } = &mut req {
        *hint = PlacementHint::HeadOnNode(head_node);
    }
    let Ok(MetaReply::Attr(a)) = h.w(req) else {
        panic!()
    };
    let l = a.layout.unwrap();
    assert_eq!(h.cluster.head_node(l.chains[0]), Some(head_node));
    let mut req = create_req(ROOT, "bad", true);
    if let MetaRequest::Create { hint, .. } = &mut req {
        *hint = PlacementHint::Chain(ChainId(77));
    }
    h.refused(req, ErrorCode::InvalidArgument);
    h.refused(
        MetaRequest::SetDirLayout {
            dir: d,
            layout: DirLayout {
                stripe: 0,
                ..dl.clone()
            },
        },
        ErrorCode::InvalidArgument,
    );
    h.refused(
        MetaRequest::SetDirLayout {
            dir: d,
            layout: DirLayout {
                chain_table: ChainTableId(9),
                ..dl.clone()
            },
        },
        ErrorCode::InvalidArgument,
    );
    h.refused(
        MetaRequest::SetDirLayout {
            dir: d,
            layout: DirLayout {
                chunk_bytes: 1000,
                ..dl
            },
        },
        ErrorCode::InvalidArgument,
    );
}

#[test]
fn readdir_pages_in_name_order() {
    let mut h = H::new();
    let d = h.mkdir(ROOT, "d");
    for i in (0..10).rev() {
        h.create(d, &format!("f{i}"));
    }
    let mut after = None;
    let mut names = Vec::new();
    loop {
        let Ok(MetaReply::Dir { entries, more }) = h.r(MetaRequest::ReadDir {
            dir: d,
            after: after.clone(),
            limit: 3,
        }) else {
            panic!()
        };
        names.extend(entries.iter().map(|e| e.name.clone()));
        after = entries.last().map(|e| e.name.clone());
        if !more {
            break;
        }
    }
    assert_eq!(names, (0..10).map(|i| format!("f{i}")).collect::<Vec<_>>());
    let Ok(MetaReply::DirPlus { entries, more }) = h.r(MetaRequest::ReadDirPlus {
        dir: d,
        after: Some("f7".into()),
        limit: 0,
    }) else {
        panic!()
    };
    assert!(!more);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].1.inode, entries[0].0.inode);
    // Entries of a neighbouring directory never leak in.
    let e = h.mkdir(ROOT, "e");
    h.create(e, "zzz");
    assert_eq!(h.list(d).len(), 10);
    let f = h.lookup(d, "f1").unwrap();
    assert_eq!(
        h.r(MetaRequest::ReadDir {
            dir: f,
            after: None,
            limit: 1
        })
        .unwrap_err()
        .code,
        ErrorCode::NotDir
    );
}

#[test]
fn unlink_and_rmdir() {
    let mut h = H::with_chains();
    let d = h.mkdir(ROOT, "d");
    let f = h.create(d, "f").inode;
    h.refused(
        MetaRequest::Unlink {
            parent: ROOT,
            name: "d".into(),
        },
        ErrorCode::IsDir,
    );
    h.refused(
        MetaRequest::Rmdir {
            parent: ROOT,
            name: "d".into(),
        },
        ErrorCode::NotEmpty,
    );
    h.refused(
        MetaRequest::Rmdir {
            parent: d,
            name: "f".into(),
        },
        ErrorCode::NotDir,
    );
    h.refused(
        MetaRequest::Rmdir {
            parent: d,
            name: "nope".into(),
        },
        ErrorCode::NotFound,
    );
    h.w(MetaRequest::Unlink {
        parent: d,
        name: "f".into(),
    })
    .unwrap();
    assert_eq!(h.lookup(d, "f"), Err(ErrorCode::NotFound));
    assert_eq!(
        h.r(MetaRequest::GetAttr { inode: f }).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(h.gc_inodes(), vec![f.0], "chunks go to the garbage list");
    assert_eq!(h.attr(ROOT).nlink, 3);
    h.w(MetaRequest::Rmdir {
        parent: ROOT,
        name: "d".into(),
    })
    .unwrap();
    assert_eq!(h.attr(ROOT).nlink, 2);
    assert_eq!(
        h.r(MetaRequest::GetAttr { inode: d }).unwrap_err().code,
        ErrorCode::NotFound
    );
    // Inode ids are never reused.
    let g = h.create(ROOT, "g").inode;
    assert!(g.0 > f.0 && g.0 > d.0);
}

#[test]
fn unlink_with_open_session_defers_collection() {
    let mut h = H::with_chains();
    let mut req = create_req(ROOT, "f", true);
    if let MetaRequest::Create { session, .. } = &mut req {
        *session = Some((ClientId(5), SessionId(1)));
    }
    let Ok(MetaReply::Attr(a)) = h.w(req) else {
        panic!()
    };
    h.w(MetaRequest::Unlink {
        parent: ROOT,
        name: "f".into(),
    })
    .unwrap();
    assert_eq!(
        h.attr(a.inode).nlink,
        0,
        "still readable through the open session"
    );
    assert!(h.gc_inodes().is_empty());
    h.w(MetaRequest::CloseWrite {
        inode: a.inode,
        client: ClientId(5),
        session: SessionId(1),
        length: 10,
        truncate_version: 0,
    })
    .unwrap();
    assert_eq!(h.gc_inodes(), vec![a.inode.0]);
    assert_eq!(
        h.r(MetaRequest::GetAttr { inode: a.inode })
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
}

#[test]
fn write_sessions_and_lengths() {
    let mut h = H::new();
    let f = h.create(ROOT, "f").inode;
    let d = h.mkdir(ROOT, "d");
    h.refused(
        MetaRequest::OpenWrite {
            inode: d,
            client: ClientId(1),
            session: SessionId(1),
        },
        ErrorCode::IsDir,
    );
    h.w(MetaRequest::OpenWrite {
        inode: f,
        client: ClientId(1),
        session: SessionId(1),
    })
    .unwrap();
    h.w(MetaRequest::ReportLength {
        inode: f,
        length: 100,
        truncate_version: 0,
    })
    .unwrap();
    assert_eq!(h.attr(f).size, 100);
    h.w(MetaRequest::ReportLength {
        inode: f,
        length: 50,
        truncate_version: 0,
    })
    .unwrap();
    assert_eq!(h.attr(f).size, 100, "smaller length is not adopted");
    // A truncate races the writer: its stale report is ignored.
    let Ok(MetaReply::Attr(a)) = h.w(MetaRequest::SetAttr {
        inode: f,
        set: SetAttr {
            size: Some(10),
            ..Default::default()
        },
    }) else {
        panic!()
    };
    assert_eq!((a.size, a.truncate_version), (10, 1));
    h.w(MetaRequest::ReportLength {
        inode: f,
        length: 200,
        truncate_version: 0,
    })
    .unwrap();
    assert_eq!(h.attr(f).size, 10);
    h.w(MetaRequest::CloseWrite {
        inode: f,
        client: ClientId(1),
        session: SessionId(1),
        length: 300,
        truncate_version: 1,
    })
    .unwrap();
    assert_eq!(h.attr(f).size, 300);
    h.refused(
        MetaRequest::ReportLength {
            inode: f,
            length: u64::MAX,
            truncate_version: 1,
        },
        ErrorCode::FileTooBig,
    );
}

#[test]
fn setattr_report_adopts_the_length_then_sets_the_times() {
    let mut h = H::new();
    let f = h.create(ROOT, "f").inode;
    let ts = Timestamp { sec: 5, nsec: 6 };
    let times = SetAttr {
        atime: Some(ts),
        mtime: Some(ts),
        ..Default::default()
    };
    let Ok(MetaReply::Attr(a)) = h.w(MetaRequest::SetAttrReport {
        inode: f,
        set: times.clone(),
        length: 3000,
        truncate_version: 0,
    }) else {
        panic!()
    };
    assert_eq!(
        (a.size, a.mtime, a.atime),
        (3000, ts, ts),
        "the times set win"
    );
    // A report from before a truncate is refused as ReportLength refuses it; the times apply.
    let Ok(MetaReply::Attr(t)) = h.w(MetaRequest::SetAttr {
        inode: f,
        set: SetAttr {
            size: Some(10),
            ..Default::default()
        },
    }) else {
        panic!()
    };
    let Ok(MetaReply::Attr(a)) = h.w(MetaRequest::SetAttrReport {
        inode: f,
        set: times.clone(),
        length: 5000,
        truncate_version: t.truncate_version - 1,
    }) else {
        panic!()
    };
    assert_eq!((a.size, a.mtime), (10, ts));
    let d = h.mkdir(ROOT, "d");
    h.refused(
        MetaRequest::SetAttrReport {
            inode: d,
            set: times,
            length: 1,
            truncate_version: 0,
        },
        ErrorCode::IsDir,
    );
    assert_eq!(h.attr(d).size, 0, "a refused request changes nothing");
    h.refused(
        MetaRequest::SetAttrReport {
            inode: f,
            set: SetAttr {
                size: Some(1),
                ..Default::default()
            },
            length: 20_000,
            truncate_version: t.truncate_version,
        },
        ErrorCode::InvalidArgument,
    );
    assert_eq!(h.attr(f).size, 10, "a refused request changes nothing");
}

#[test]
fn setattr_rules() {
    let mut h = H::new();
    let f = h.create(ROOT, "f").inode;
    let before = h.attr(f);
    let Ok(MetaReply::Attr(a)) = h.w(MetaRequest::SetAttr {
        inode: f,
        set: SetAttr {
            mode: Some(0o100_600),
            uid: Some(1),
            gid: Some(2),
            ..Default::default()
        },
    }) else {
        panic!()
    };
    assert_eq!((a.mode, a.uid, a.gid), (0o600, 1, 2));
    assert!(a.ctime > before.ctime);
    assert_eq!(a.mtime, before.mtime, "chmod does not touch mtime");
    let ts = Timestamp { sec: 5, nsec: 6 };
    let Ok(MetaReply::Attr(a)) = h.w(MetaRequest::SetAttr {
        inode: f,
        set: SetAttr {
            atime: Some(ts),
            mtime: Some(ts),
            ..Default::default()
        },
    }) else {
        panic!()
    };
    assert_eq!((a.atime, a.mtime), (ts, ts));
    // chown without a mode clears set-user-ID, and set-group-ID if the group may execute;
    // with a mode, or on a directory, the mode stays as given.
    let chown = |h: &mut H, inode, mode: Option<u32>| {
        let Ok(MetaReply::Attr(a)) = h.w(MetaRequest::SetAttr {
            inode,
            set: SetAttr {
                mode,
                uid: Some(3),
                ..Default::default()
            },
        }) else {
            panic!()
        };
        a.mode
    };
    let chmod = |h: &mut H, inode, mode| {
        h.w(MetaRequest::SetAttr {
            inode,
            set: SetAttr {
                mode: Some(mode),
                ..Default::default()
            },
        })
        .unwrap();
    };
    chmod(&mut h, f, 0o6755);
    assert_eq!(chown(&mut h, f, None), 0o0755);
    chmod(&mut h, f, 0o6745);
    assert_eq!(
        chown(&mut h, f, None),
        0o2745,
        "sgid without group execute stays"
    );
    chmod(&mut h, f, 0o6755);
    assert_eq!(
        chown(&mut h, f, Some(0o6755)),
        0o6755,
        "the call's own mode wins"
    );
    let d = h.mkdir(ROOT, "d");
    chmod(&mut h, d, 0o6755);
    assert_eq!(
        chown(&mut h, d, None),
        0o6755,
        "directories keep their bits"
    );
    h.refused(
        MetaRequest::SetAttr {
            inode: d,
            set: SetAttr {
                size: Some(0),
                ..Default::default()
            },
        },
        ErrorCode::IsDir,
    );
    h.refused(
        MetaRequest::SetAttr {
            inode: f,
            set: SetAttr {
                size: Some(u64::MAX),
                ..Default::default()
            },
        },
        ErrorCode::FileTooBig,
    );
}

#[test]
fn hard_links() {
    let mut h = H::with_chains();
    let f = h.create(ROOT, "f").inode;
    let d = h.mkdir(ROOT, "d");
    h.refused(
        MetaRequest::Link {
            inode: d,
            new_parent: ROOT,
            new_name: "dl".into(),
        },
        ErrorCode::NotPermitted,
    );
    h.refused(
        MetaRequest::Link {
            inode: f,
            new_parent: ROOT,
            new_name: "d".into(),
        },
        ErrorCode::Exists,
    );
    h.refused(
        MetaRequest::Link {
            inode: f,
            new_parent: f,
            new_name: "x".into(),
        },
        ErrorCode::NotDir,
    );
    let Ok(MetaReply::Attr(a)) = h.w(MetaRequest::Link {
        inode: f,
        new_parent: d,
        new_name: "g".into(),
    }) else {
        panic!()
    };
    assert_eq!(a.nlink, 2);
    assert_eq!(h.lookup(d, "g"), Ok(f));
    h.w(MetaRequest::Unlink {
        parent: ROOT,
        name: "f".into(),
    })
    .unwrap();
    assert_eq!(h.attr(f).nlink, 1);
    assert!(h.gc_inodes().is_empty());
    h.w(MetaRequest::Unlink {
        parent: d,
        name: "g".into(),
    })
    .unwrap();
    assert_eq!(h.gc_inodes(), vec![f.0]);
}

#[test]
fn symlinks_readlink_and_resolve() {
    let mut h = H::new();
    let d = h.mkdir(ROOT, "d");
    let f = h.create(d, "f").inode;
    let Ok(MetaReply::Attr(s)) = h.w(MetaRequest::Symlink {
        parent: ROOT,
        name: "s".into(),
        target: "d/f".into(),
        caller: Caller::default(),
    }) else {
        panic!()
    };
    assert_eq!((s.kind, s.size, s.mode), (FileType::Symlink, 3, 0o777));
    assert_eq!(
        h.r(MetaRequest::ReadLink { inode: s.inode }).unwrap(),
        MetaReply::Link("d/f".into())
    );
    assert_eq!(
        h.r(MetaRequest::ReadLink { inode: f }).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    let res = |h: &H, p: &str, follow: bool| match h.r(MetaRequest::Resolve {
        path: p.into(),
        follow,
    }) {
        Ok(MetaReply::Attr(a)) => Ok(a.inode),
        Err(e) => Err(e.code),
        r => panic!("{r:?}"),
    };
    assert_eq!(res(&h, "/s", true), Ok(f));
    assert_eq!(res(&h, "/s", false), Ok(s.inode));
    assert_eq!(res(&h, "/d/f", false), Ok(f));
    assert_eq!(res(&h, "/", false), Ok(ROOT));
    assert_eq!(res(&h, "/nope", false), Err(ErrorCode::NotFound));
    assert_eq!(res(&h, "/d/f/x", false), Err(ErrorCode::NotDir));
    assert_eq!(res(&h, "/d/../x", false), Err(ErrorCode::InvalidArgument));
    h.w(MetaRequest::Symlink {
        parent: d,
        name: "up".into(),
        target: "../s".into(),
        caller: Caller::default(),
    })
    .unwrap();
    assert_eq!(res(&h, "/d/up", true), Ok(f));
    h.w(MetaRequest::Symlink {
        parent: ROOT,
        name: "abs".into(),
        target: "/d".into(),
        caller: Caller::default(),
    })
    .unwrap();
    assert_eq!(res(&h, "/abs/f", false), Ok(f));
    h.w(MetaRequest::Symlink {
        parent: ROOT,
        name: "l1".into(),
        target: "l2".into(),
        caller: Caller::default(),
    })
    .unwrap();
    h.w(MetaRequest::Symlink {
        parent: ROOT,
        name: "l2".into(),
        target: "l1".into(),
        caller: Caller::default(),
    })
    .unwrap();
    assert_eq!(res(&h, "/l1", true), Err(ErrorCode::Loop));
    h.refused(
        MetaRequest::Symlink {
            parent: ROOT,
            name: "e".into(),
            target: "".into(),
            caller: Caller::default(),
        },
        ErrorCode::NotFound,
    );
    h.refused(
        MetaRequest::Symlink {
            parent: ROOT,
            name: "e".into(),
            target: "x".repeat(5000),
            caller: Caller::default(),
        },
        ErrorCode::NameTooLong,
    );
    h.refused(
        MetaRequest::Symlink {
            parent: ROOT,
            name: "s".into(),
            target: "t".into(),
            caller: Caller::default(),
        },
        ErrorCode::Exists,
    );
}

#[test]
fn rename_file_over_file_and_across_dirs() {
    let mut h = H::with_chains();
    let a = h.mkdir(ROOT, "a");
    let b = h.mkdir(ROOT, "b");
    let f = h.create(a, "f").inode;
    let g = h.create(b, "g").inode;
    h.w(rename(a, "f", b, "g", RenameMode::Replace)).unwrap();
    assert_eq!(h.lookup(b, "g"), Ok(f));
    assert_eq!(h.lookup(a, "f"), Err(ErrorCode::NotFound));
    assert_eq!(h.gc_inodes(), vec![g.0], "replaced file is collected");
    // Directory across parents: link counts and parent pointer follow.
    let sub = h.mkdir(a, "sub");
    h.w(rename(a, "sub", b, "moved", RenameMode::Replace))
        .unwrap();
    assert_eq!((h.attr(a).nlink, h.attr(b).nlink), (2, 3));
    h.mkdir(sub, "deeper");
    assert_eq!(
        h.r(MetaRequest::Resolve {
            path: "/b/moved/deeper".into(),
            follow: false
        })
        .map(|_| ()),
        Ok(())
    );
    h.refused(
        rename(a, "nope", b, "x", RenameMode::Replace),
        ErrorCode::NotFound,
    );
    h.refused(
        rename(InodeId(999), "x", b, "x", RenameMode::Replace),
        ErrorCode::NotFound,
    );
}

#[test]
fn rename_directory_rules() {
    let mut h = H::new();
    let a = h.mkdir(ROOT, "a");
    let empty = h.mkdir(ROOT, "empty");
    let full = h.mkdir(ROOT, "full");
    h.create(full, "x");
    h.create(ROOT, "file");
    h.refused(
        rename(ROOT, "a", ROOT, "full", RenameMode::Replace),
        ErrorCode::NotEmpty,
    );
    h.refused(
        rename(ROOT, "a", ROOT, "file", RenameMode::Replace),
        ErrorCode::NotDir,
    );
    h.refused(
        rename(ROOT, "file", ROOT, "empty", RenameMode::Replace),
        ErrorCode::IsDir,
    );
    // Into its own subtree: direct child and deeper.
    let c = h.mkdir(a, "c");
    let d = h.mkdir(c, "d");
    h.refused(
        rename(ROOT, "a", a, "x", RenameMode::Replace),
        ErrorCode::InvalidArgument,
    );
    h.refused(
        rename(ROOT, "a", d, "x", RenameMode::Replace),
        ErrorCode::InvalidArgument,
    );
    // Over an ancestor (non-empty) is ENOTEMPTY.
    h.refused(
        rename(c, "d", ROOT, "a", RenameMode::Replace),
        ErrorCode::NotEmpty,
    );
    let root_links = h.attr(ROOT).nlink;
    h.w(rename(ROOT, "a", ROOT, "empty", RenameMode::Replace))
        .unwrap();
    assert_eq!(h.lookup(ROOT, "empty"), Ok(a));
    assert_eq!(h.attr(ROOT).nlink, root_links - 1);
    assert_eq!(
        h.r(MetaRequest::GetAttr { inode: empty }).unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[test]
fn rename_hard_links_and_same_inode() {
    let mut h = H::with_chains();
    let f = h.create(ROOT, "f").inode;
    h.w(MetaRequest::Link {
        inode: f,
        new_parent: ROOT,
        new_name: "g".into(),
    })
    .unwrap();
    // Both names are the same inode: nothing happens.
    let before = h.dump();
    h.w(rename(ROOT, "f", ROOT, "g", RenameMode::Replace))
        .unwrap();
    assert_eq!(h.dump(), before);
    h.w(rename(ROOT, "f", ROOT, "f", RenameMode::Replace))
        .unwrap();
    assert_eq!(h.dump(), before);
    // A hard-linked file replaces another file; its other name stays.
    let x = h.create(ROOT, "x").inode;
    h.w(rename(ROOT, "g", ROOT, "x", RenameMode::Replace))
        .unwrap();
    assert_eq!(h.lookup(ROOT, "x"), Ok(f));
    assert_eq!(h.lookup(ROOT, "f"), Ok(f));
    assert_eq!(h.attr(f).nlink, 2);
    assert_eq!(h.gc_inodes(), vec![x.0]);
    // Replacing one of two links of a file drops one link only.
    let y = h.create(ROOT, "y").inode;
    h.w(rename(ROOT, "y", ROOT, "f", RenameMode::Replace))
        .unwrap();
    assert_eq!(h.attr(f).nlink, 1);
    assert_eq!(h.lookup(ROOT, "f"), Ok(y));
}

#[test]
fn rename_noreplace_and_exchange() {
    let mut h = H::new();
    let a = h.mkdir(ROOT, "a");
    let f = h.create(ROOT, "f").inode;
    let sub = h.mkdir(a, "sub");
    h.refused(
        rename(ROOT, "f", ROOT, "a", RenameMode::NoReplace),
        ErrorCode::Exists,
    );
    h.refused(
        rename(ROOT, "f", ROOT, "zz", RenameMode::Exchange),
        ErrorCode::NotFound,
    );
    h.w(rename(ROOT, "f", ROOT, "g", RenameMode::NoReplace))
        .unwrap();
    assert_eq!(h.lookup(ROOT, "g"), Ok(f));
    // Exchange a file at the root with a directory inside `a`.
    let (rl, al) = (h.attr(ROOT).nlink, h.attr(a).nlink);
    h.w(rename(ROOT, "g", a, "sub", RenameMode::Exchange))
        .unwrap();
    assert_eq!(h.lookup(ROOT, "g"), Ok(sub));
    assert_eq!(h.lookup(a, "sub"), Ok(f));
    assert_eq!(h.attr(ROOT).nlink, rl + 1);
    assert_eq!(h.attr(a).nlink, al - 1);
    assert_eq!(
        h.r(MetaRequest::Resolve {
            path: "/g".into(),
            follow: false
        })
        .map(|_| ()),
        Ok(())
    );
    // Exchanging a directory with an entry inside itself is refused.
    let inner = h.mkdir(sub, "inner");
    let _ = inner;
    h.refused(
        rename(ROOT, "g", sub, "inner", RenameMode::Exchange),
        ErrorCode::InvalidArgument,
    );
}

#[test]
fn remove_tree_detaches_then_collects_iteratively() {
    let mut h = H::with_chains();
    let t = h.mkdir(ROOT, "t");
    let mut files = Vec::new();
    let mut dirs = vec![t];
    let mut cur = t;
    for depth in 0..20 {
        cur = h.mkdir(cur, &format!("d{depth}"));
        dirs.push(cur);
        for i in 0..3 {
            files.push(h.create(cur, &format!("f{i}")).inode);
        }
    }
    // A hard link from outside keeps one file alive.
    let kept = files[5];
    h.w(MetaRequest::Link {
        inode: kept,
        new_parent: ROOT,
        new_name: "kept".into(),
    })
    .unwrap();
    let root_links = h.attr(ROOT).nlink;
    h.w(MetaRequest::RemoveTree {
        parent: ROOT,
        name: "t".into(),
    })
    .unwrap();
    assert_eq!(h.lookup(ROOT, "t"), Err(ErrorCode::NotFound));
    // The detached tree takes no new entries while the collector works.
    h.refused(create_req(t, "late", true), ErrorCode::NotFound);
    h.refused(
        MetaRequest::Mkdir {
            parent: t,
            name: "late".into(),
            mode: 0o755,
            caller: Caller::default(),
        },
        ErrorCode::NotFound,
    );
    h.refused(
        rename(ROOT, "kept", t, "late", RenameMode::Replace),
        ErrorCode::NotFound,
    );
    assert_eq!(h.attr(ROOT).nlink, root_links - 1);
    let mut steps = 0;
    while h.with_tx(|tx| tx.expand_trash()) {
        steps += 1;
        assert!(steps < 100);
    }
    for d in &dirs {
        assert_eq!(
            h.r(MetaRequest::GetAttr { inode: *d }).unwrap_err().code,
            ErrorCode::NotFound
        );
    }
    let gc = h.gc_inodes();
    assert_eq!(gc.len(), files.len() - 1);
    assert!(!gc.contains(&kept.0));
    assert_eq!(h.attr(kept).nlink, 1);
    // gc_done for every chain drops the record.
    let chains = h.attr(kept).layout.unwrap().chains;
    let victim = InodeId(gc[0]);
    for c in &chains {
        h.with_tx(|tx| tx.gc_done(victim, *c));
    }
    assert!(!h.gc_inodes().contains(&victim.0));
}

#[test]
fn statfs_counts_each_chain_once_at_its_fullest_replica() {
    let mut h = H::with_chains();
    let statfs = |h: &H| match h.r(MetaRequest::StatFs) {
        Ok(MetaReply::StatFs(s)) => s,
        r => panic!("{r:?}"),
    };
    // Six targets of 1,000 bytes (1 used each) in two chains of three: what a user can store
    // is two chains' worth, not six targets' worth.
    let s = statfs(&h);
    assert_eq!((s.total_bytes, s.free_bytes, s.inodes), (2000, 1998, 1));
    // One replica fuller than its chain mates bounds its chain; a smaller one bounds the
    // capacity.
    let chains: Vec<Vec<TargetId>> = h
        .cluster
        .routing
        .chains
        .values()
        .map(|c| c.targets.clone())
        .collect();
    let t = h.cluster.routing.targets.get_mut(&chains[0][1]).unwrap();
    t.used_bytes = 400;
    let t = h.cluster.routing.targets.get_mut(&chains[1][2]).unwrap();
    t.capacity_bytes = 500;
    let s = statfs(&h);
    assert_eq!((s.total_bytes, s.free_bytes), (1000 + 500, 600 + 499));
    // A target in no chain stores no file data.
    h.cluster.routing.targets.insert(
        TargetId(99),
        pond_proto::cluster::TargetInfo {
            id: TargetId(99),
            chain: crate::cluster::NO_CHAIN,
            capacity_bytes: 1 << 40,
            ..h.cluster.routing.targets[&chains[0][0]].clone()
        },
    );
    assert_eq!(statfs(&h).total_bytes, 1500);
}

#[test]
fn retried_write_is_answered_from_dedupe_table() {
    let mut h = H::new();
    let o = Origin {
        client: ClientId(9),
        request: RequestId(1),
    };
    let req = MetaRequest::Mkdir {
        parent: ROOT,
        name: "a".into(),
        mode: 0o755,
        caller: Caller::default(),
    };
    let first = h.w_origin(o, req.clone()).unwrap();
    let before = h.dump();
    let again = h.w_origin(o, req.clone()).unwrap();
    assert_eq!(first, again, "same answer, not EEXIST");
    assert_eq!(h.dump(), before);
    // A new request id is a new operation.
    let o2 = Origin {
        client: ClientId(9),
        request: RequestId(2),
    };
    assert_eq!(h.w_origin(o2, req).unwrap_err().code, ErrorCode::Exists);
}

fn open_session(h: &mut H, inode: InodeId, client: u64, session: u64) {
    h.w(MetaRequest::OpenSession {
        inode,
        client: ClientId(client),
        session: SessionId(session),
    })
    .unwrap();
}

fn renew(h: &mut H, client: u64, ttl_ms: u32, first: bool) -> Result<MetaReply, PondError> {
    h.w(MetaRequest::RenewLease {
        client: ClientId(client),
        ttl_ms,
        first,
    })
}

fn unlink(h: &mut H, name: &str) {
    h.w(MetaRequest::Unlink {
        parent: ROOT,
        name: name.into(),
    })
    .unwrap();
}

#[test]
fn another_clients_read_session_keeps_an_unlinked_file() {
    let mut h = H::with_chains();
    let a = h.create(ROOT, "f").inode;
    // Client 7 has it open for reading; client 5 (no session) unlinks it.
    open_session(&mut h, a, 7, 1);
    open_session(&mut h, a, 8, 1);
    unlink(&mut h, "f");
    assert_eq!(h.attr(a).nlink, 0, "readable by id while sessions hold it");
    assert!(h.gc_inodes().is_empty());
    h.w(MetaRequest::CloseSession {
        inode: a,
        client: ClientId(7),
        session: SessionId(1),
    })
    .unwrap();
    assert!(h.gc_inodes().is_empty(), "client 8 still has it open");
    h.w(MetaRequest::CloseSession {
        inode: a,
        client: ClientId(8),
        session: SessionId(1),
    })
    .unwrap();
    assert_eq!(h.gc_inodes(), vec![a.0]);
    assert_eq!(
        h.r(MetaRequest::GetAttr { inode: a }).unwrap_err().code,
        ErrorCode::NotFound
    );
    // Sessions only on files, only on existing inodes.
    let d = h.mkdir(ROOT, "d");
    h.refused(
        MetaRequest::OpenSession {
            inode: d,
            client: ClientId(7),
            session: SessionId(2),
        },
        ErrorCode::IsDir,
    );
    h.refused(
        MetaRequest::OpenSession {
            inode: a,
            client: ClientId(7),
            session: SessionId(2),
        },
        ErrorCode::NotFound,
    );
}

#[test]
fn lease_requests_are_checked_before_anything_changes() {
    let mut h = H::new();
    h.refused(
        MetaRequest::RenewLease {
            client: ClientId(3),
            ttl_ms: 10_000,
            first: false,
        },
        ErrorCode::StaleHandle,
    );
    h.refused(
        MetaRequest::RenewLease {
            client: ClientId(3),
            ttl_ms: LEASE_TTL_MIN_MS - 1,
            first: true,
        },
        ErrorCode::InvalidArgument,
    );
    h.refused(
        MetaRequest::RenewLease {
            client: ClientId(3),
            ttl_ms: LEASE_TTL_MAX_MS + 1,
            first: true,
        },
        ErrorCode::InvalidArgument,
    );
    renew(&mut h, 3, 10_000, true).unwrap();
    renew(&mut h, 3, 10_000, false).unwrap();
}

#[test]
fn expired_lease_drops_sessions_and_collects_unlinked_files() {
    let mut h = H::with_chains();
    // Each transaction of the harness advances the entry time by one second.
    let kept = h.create(ROOT, "kept").inode;
    let gone = h.create(ROOT, "gone").inode;
    let legacy = h.create(ROOT, "legacy").inode;
    renew(&mut h, 7, 3_000, true).unwrap(); // deadline: now + 3 s
    open_session(&mut h, gone, 7, 1);
    open_session(&mut h, kept, 7, 2);
    // Client 9 never took a lease: its sessions last until closed.
    open_session(&mut h, legacy, 9, 1);
    unlink(&mut h, "gone");
    unlink(&mut h, "legacy");
    assert!(h.gc_inodes().is_empty());
    // Five transactions after the renewal its deadline has passed.
    assert_eq!(h.with_tx(|tx| tx.expire_leases()), 1, "lease 7 expired");
    assert_eq!(
        h.gc_inodes(),
        vec![gone.0],
        "the unlinked file held only by 7"
    );
    assert_eq!(h.attr(kept).nlink, 1, "linked files are untouched");
    assert_eq!(h.attr(legacy).nlink, 0, "no lease: the session stays");
    assert_eq!(h.with_tx(|tx| tx.expire_leases()), 0);
    // Its renewal now says the sessions are gone.
    assert_eq!(
        renew(&mut h, 7, 3_000, false).unwrap_err().code,
        ErrorCode::StaleHandle
    );
    let txn = h.db.begin_read().unwrap();
    assert_eq!(
        txn.open_table(CLIENT_SESSIONS)
            .unwrap()
            .iter()
            .unwrap()
            .count(),
        1
    );
    assert_eq!(txn.open_table(SESSIONS).unwrap().iter().unwrap().count(), 1);
}

#[test]
fn renewed_lease_does_not_expire_and_end_lease_releases_everything() {
    let mut h = H::with_chains();
    let f = h.create(ROOT, "f").inode;
    renew(&mut h, 7, 2_000, true).unwrap();
    open_session(&mut h, f, 7, 1);
    unlink(&mut h, "f");
    for _ in 0..5 {
        renew(&mut h, 7, 2_000, false).unwrap();
        assert_eq!(h.with_tx(|tx| tx.expire_leases()), 0);
    }
    assert!(h.gc_inodes().is_empty());
    h.w(MetaRequest::EndLease {
        client: ClientId(7),
    })
    .unwrap();
    assert_eq!(h.gc_inodes(), vec![f.0]);
    assert_eq!(
        renew(&mut h, 7, 2_000, false).unwrap_err().code,
        ErrorCode::StaleHandle
    );
}

fn mknod_req(parent: InodeId, name: &str, kind: FileType, rdev: u64) -> MetaRequest {
    MetaRequest::Mknod {
        parent,
        name: name.into(),
        kind,
        mode: 0o640,
        rdev,
        caller: Caller { uid: 7, gid: 8 },
    }
}

#[test]
fn mknod_makes_fifos_sockets_and_devices() {
    let mut h = H::new();
    let d = h.mkdir(ROOT, "d");
    let mut made = Vec::new();
    for (name, kind, rdev) in [
        ("p", FileType::Fifo, 0),
        ("s", FileType::Socket, 0),
        ("c", FileType::CharDevice, 0x0102),
        ("b", FileType::BlockDevice, 0x0803),
    ] {
        let Ok(MetaReply::Attr(a)) = h.w(mknod_req(d, name, kind, rdev)) else {
            panic!("mknod {name}")
        };
        assert_eq!(
            (
                a.kind,
                a.mode,
                a.uid,
                a.gid,
                a.nlink,
                a.size,
                a.rdev,
                a.layout.is_some()
            ),
            (kind, 0o640, 7, 8, 1, 0, rdev, false),
            "{name}"
        );
        assert_eq!(h.attr(a.inode), a);
        assert_eq!(h.lookup(d, name), Ok(a.inode));
        made.push(a.inode);
    }
    // A device number is kept for devices only.
    let Ok(MetaReply::Attr(p2)) = h.w(mknod_req(d, "p2", FileType::Fifo, 0x0102)) else {
        panic!()
    };
    assert_eq!(p2.rdev, 0);
    let entries = h.list(d);
    let kinds: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            ("b", FileType::BlockDevice),
            ("c", FileType::CharDevice),
            ("p", FileType::Fifo),
            ("p2", FileType::Fifo),
            ("s", FileType::Socket)
        ]
    );
    // Refusals change nothing: an existing name, a non-special kind, a bad name, no size.
    h.refused(mknod_req(d, "p", FileType::Fifo, 0), ErrorCode::Exists);
    h.refused(
        mknod_req(d, "f", FileType::File, 0),
        ErrorCode::InvalidArgument,
    );
    h.refused(
        mknod_req(d, "x", FileType::Dir, 0),
        ErrorCode::InvalidArgument,
    );
    h.refused(
        mknod_req(d, &"n".repeat(256), FileType::Fifo, 0),
        ErrorCode::NameTooLong,
    );
    h.refused(
        MetaRequest::SetAttr {
            inode: made[0],
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        },
        ErrorCode::InvalidArgument,
    );
    h.refused(create_req(d, "p", false), ErrorCode::Exists);
    h.refused(
        MetaRequest::OpenSession {
            inode: made[0],
            client: ClientId(1),
            session: SessionId(1),
        },
        ErrorCode::InvalidArgument,
    );
    // Hard links count; the last unlink removes the inode, no garbage (no chunks).
    h.w(MetaRequest::Link {
        inode: made[0],
        new_parent: ROOT,
        new_name: "p-link".into(),
    })
    .unwrap();
    assert_eq!(h.attr(made[0]).nlink, 2);
    h.w(MetaRequest::Unlink {
        parent: d,
        name: "p".into(),
    })
    .unwrap();
    assert_eq!(h.attr(made[0]).nlink, 1);
    // Rename of a device over the FIFO's last name drops the FIFO.
    h.w(rename(d, "c", ROOT, "p-link", RenameMode::Replace))
        .unwrap();
    assert_eq!(h.lookup(ROOT, "p-link"), Ok(made[2]));
    assert_eq!(
        h.r(MetaRequest::GetAttr { inode: made[0] })
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    for name in ["s", "b", "p2"] {
        h.w(MetaRequest::Unlink {
            parent: d,
            name: name.into(),
        })
        .unwrap();
    }
    assert!(h.gc_inodes().is_empty());
    // A FIFO in the middle of a path is not a directory.
    assert_eq!(
        h.r(MetaRequest::Resolve {
            path: "/p-link/x".into(),
            follow: false,
        })
        .unwrap_err()
        .code,
        ErrorCode::NotDir
    );
}

/// Setgid directories pass their group on to every new node, and the bit to new
/// directories; applied by meta against the parent as the log orders it.
#[test]
fn setgid_directories_pass_their_group_on() {
    let mut h = H::new();
    let g = h.mkdir(ROOT, "g");
    let Ok(MetaReply::Attr(_)) = h.w(MetaRequest::SetAttr {
        inode: g,
        set: SetAttr {
            mode: Some(0o2775),
            gid: Some(77),
            ..Default::default()
        },
    }) else {
        panic!("setattr");
    };
    let who = Caller { uid: 5, gid: 6 };
    let Ok(MetaReply::Attr(d)) = h.w(MetaRequest::Mkdir {
        parent: g,
        name: "d".into(),
        mode: 0o755,
        caller: who,
    }) else {
        panic!("mkdir");
    };
    assert_eq!((d.uid, d.gid, d.mode), (5, 77, 0o2755));
    let Ok(MetaReply::Attr(f)) = h.w(MetaRequest::Create {
        parent: g,
        name: "f".into(),
        mode: 0o644,
        caller: who,
        exclusive: true,
        hint: PlacementHint::Any,
        session: None,
    }) else {
        panic!("create");
    };
    assert_eq!((f.uid, f.gid, f.mode), (5, 77, 0o644));
    let Ok(MetaReply::Attr(l)) = h.w(MetaRequest::Symlink {
        parent: g,
        name: "l".into(),
        target: "f".into(),
        caller: who,
    }) else {
        panic!("symlink");
    };
    assert_eq!(l.gid, 77);
    let Ok(MetaReply::Attr(n)) = h.w(MetaRequest::Mknod {
        parent: g,
        name: "p".into(),
        kind: FileType::Fifo,
        mode: 0o600,
        rdev: 0,
        caller: who,
    }) else {
        panic!("mknod");
    };
    assert_eq!(n.gid, 77);
    // A new directory of the setgid one is setgid too, and passes the group on again.
    let Ok(MetaReply::Attr(e)) = h.w(MetaRequest::Mkdir {
        parent: d.inode,
        name: "e".into(),
        mode: 0o700,
        caller: who,
    }) else {
        panic!("mkdir");
    };
    assert_eq!((e.gid, e.mode), (77, 0o2700));
    // A directory without the bit: the caller's group.
    let plain = h.mkdir(ROOT, "plain");
    let Ok(MetaReply::Attr(x)) = h.w(MetaRequest::Mkdir {
        parent: plain,
        name: "x".into(),
        mode: 0o755,
        caller: who,
    }) else {
        panic!("mkdir");
    };
    assert_eq!((x.gid, x.mode), (6, 0o755));
}

#[test]
fn extended_attributes_set_get_list_remove_and_errnos() {
    let mut h = H::new();
    let f = h.create(InodeId::ROOT, "f").inode;
    let set = |name: &str, value: &[u8], mode| MetaRequest::SetXattr {
        inode: f,
        name: name.into(),
        value: value.to_vec(),
        mode,
    };
    let get = |name: &str| MetaRequest::GetXattr {
        inode: f,
        name: name.into(),
    };
    let list = MetaRequest::ListXattr { inode: f };
    let ctime0 = match h.r(MetaRequest::GetAttr { inode: f }) {
        Ok(MetaReply::Attr(a)) => a.ctime,
        other => panic!("{other:?}"),
    };
    assert_eq!(h.r(list.clone()), Ok(MetaReply::XattrNames(vec![])));
    assert_eq!(h.r(get("user.a")).unwrap_err().code, ErrorCode::NoData);
    let Ok(MetaReply::Attr(a)) = h.w(set("user.b", b"2", XattrSetMode::Any)) else {
        panic!()
    };
    assert!(a.ctime > ctime0, "setxattr moves ctime");
    h.w(set("user.a", b"", XattrSetMode::Create)).unwrap();
    h.w(set("trusted.t", &[0, 255, 7], XattrSetMode::Any))
        .unwrap();
    assert_eq!(h.r(get("user.a")), Ok(MetaReply::Xattr(vec![])));
    assert_eq!(h.r(get("trusted.t")), Ok(MetaReply::Xattr(vec![0, 255, 7])));
    assert_eq!(
        h.r(list.clone()),
        Ok(MetaReply::XattrNames(vec![
            "trusted.t".into(),
            "user.a".into(),
            "user.b".into()
        ]))
    );
    h.w(set("user.b", b"22", XattrSetMode::Replace)).unwrap();
    assert_eq!(h.r(get("user.b")), Ok(MetaReply::Xattr(b"22".to_vec())));
    // Refused, state untouched.
    h.refused(set("user.b", b"x", XattrSetMode::Create), ErrorCode::Exists);
    h.refused(
        set("user.zz", b"x", XattrSetMode::Replace),
        ErrorCode::NoData,
    );
    h.refused(
        set("security.selinux", b"x", XattrSetMode::Any),
        ErrorCode::NotSupported,
    );
    h.refused(
        set("system.posix_acl_access", b"x", XattrSetMode::Any),
        ErrorCode::NotSupported,
    );
    h.refused(
        set("user.", b"x", XattrSetMode::Any),
        ErrorCode::InvalidArgument,
    );
    h.refused(set("", b"x", XattrSetMode::Any), ErrorCode::OutOfRange);
    h.refused(
        set(
            &format!("user.{}", "n".repeat(251)),
            b"x",
            XattrSetMode::Any,
        ),
        ErrorCode::OutOfRange,
    );
    h.refused(
        set(
            "user.big",
            &vec![1; XATTR_VALUE_BYTES_MAX + 1],
            XattrSetMode::Any,
        ),
        ErrorCode::TooBig,
    );
    h.refused(
        MetaRequest::RemoveXattr {
            inode: f,
            name: "user.zz".into(),
        },
        ErrorCode::NoData,
    );
    h.refused(
        MetaRequest::SetXattr {
            inode: InodeId(9999),
            name: "user.a".into(),
            value: vec![],
            mode: XattrSetMode::Any,
        },
        ErrorCode::NotFound,
    );
    // The longest name is fine; an inode's attributes are bounded in total.
    h.w(set(
        &format!("user.{}", "n".repeat(250)),
        b"x",
        XattrSetMode::Any,
    ))
    .unwrap();
    let value = vec![3u8; XATTR_VALUE_BYTES_MAX];
    let mut k = 0;
    loop {
        match h.w(set(&format!("user.fill{k}"), &value, XattrSetMode::Any)) {
            Ok(_) => k += 1,
            Err(e) => {
                assert_eq!(e.code, ErrorCode::NoSpace, "{e}");
                break;
            }
        }
        assert!(
            k <= XATTR_INODE_BYTES_MAX / XATTR_VALUE_BYTES_MAX,
            "no bound"
        );
    }
    // Replacing a value with one of the same size still fits.
    h.w(set("user.fill0", &value, XattrSetMode::Replace))
        .unwrap();
    // User attributes only on files and directories.
    let l = match h.w(MetaRequest::Symlink {
        parent: InodeId::ROOT,
        name: "l".into(),
        target: "f".into(),
        caller: Caller::default(),
    }) {
        Ok(MetaReply::Attr(a)) => a.inode,
        other => panic!("{other:?}"),
    };
    h.refused(
        MetaRequest::SetXattr {
            inode: l,
            name: "user.a".into(),
            value: vec![],
            mode: XattrSetMode::Any,
        },
        ErrorCode::NotPermitted,
    );
    h.w(MetaRequest::RemoveXattr {
        inode: f,
        name: "user.a".into(),
    })
    .unwrap();
    assert_eq!(h.r(get("user.a")).unwrap_err().code, ErrorCode::NoData);
    // The last link gone, the inode's attributes go with it.
    h.w(MetaRequest::Unlink {
        parent: InodeId::ROOT,
        name: "f".into(),
    })
    .unwrap();
    let left: Vec<_> = h.dump().into_iter().filter(|(t, _, _)| *t == 11).collect();
    assert!(
        left.is_empty(),
        "attributes of a removed inode: {}",
        left.len()
    );
}

#[test]
fn removed_directories_take_their_extended_attributes() {
    let mut h = H::new();
    let d = h.mkdir(InodeId::ROOT, "d");
    let sub = h.mkdir(d, "sub");
    for (inode, name) in [(d, "user.d"), (sub, "user.sub")] {
        h.w(MetaRequest::SetXattr {
            inode,
            name: name.into(),
            value: b"v".to_vec(),
            mode: XattrSetMode::Any,
        })
        .unwrap();
    }
    h.w(MetaRequest::Rmdir {
        parent: d,
        name: "sub".into(),
    })
    .unwrap();
    h.w(MetaRequest::RemoveTree {
        parent: InodeId::ROOT,
        name: "d".into(),
    })
    .unwrap();
    while h.with_tx(|tx| tx.expand_trash()) {}
    let left: Vec<_> = h.dump().into_iter().filter(|(t, _, _)| *t == 11).collect();
    assert!(
        left.is_empty(),
        "attributes of removed directories: {}",
        left.len()
    );
}
