//! Writes the seed corpus (valid encodings of each decoder's input, plus a few damaged ones)
//! into `fuzz/cargo-fuzz/corpus/<target>/`. The fuzzer grows the corpus from these; the
//! checked-in corpus is then minimised with `cargo fuzz cmin`.
//!
//! cargo run -p pond-fuzz --example seed-corpus

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use pond_client::config::{ClusterFile, MetaEndpoint, StorageEndpoint};
use pond_client::dataset::{Index, SamplerState, index::Entry as IxEntry};
use pond_meta::types::TypeConfig;
use pond_proto::data::{
    self, ChainRef, DataRequest, DataResponse, FrameKind, ReadItem, ReadOk, UpdateOp, UpdateReq,
};
use pond_proto::meta::MetaRequest;
use pond_proto::*;
use pond_storage::store::engine::{Backend, Engine};
use pond_storage::store::mem::MemBackend;
use pond_storage::store::{ChunkStore, Mutation};
use std::path::Path;

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("mkdir corpus");
    std::fs::write(d.join(name), bytes).expect("write seed");
}

fn tagged(tag: u8, body: Vec<u8>) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(body);
    v
}

fn frame(kind: FrameKind, id: u64, msg: &impl serde::Serialize, payload: &[u8]) -> Vec<u8> {
    let mut v = data::encode_frame(kind, id, msg, payload.len())
        .expect("encode")
        .to_vec();
    v.extend_from_slice(payload);
    v
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cargo-fuzz/corpus");
    let at = ChainRef {
        chain: ChainId(3),
        chain_version: ChainVersion(2),
        target: TargetId(1001),
    };
    let chunk = ChunkId::new(InodeId(42), 7);
    let hello = DataRequest::Hello {
        token: "secret".into(),
        client: ClientId(9),
    };
    let update = DataRequest::Update(UpdateReq {
        at,
        chunk,
        op: UpdateOp::Write { offset: 4096 },
        chunk_bytes: 1 << 20,
        crc: 0xdead_beef,
        version: None,
        client: ClientId(9),
        request: RequestId(77),
    });
    let read = DataRequest::Read {
        items: vec![
            ReadItem {
                at,
                chunk,
                offset: 0,
                length: 4096,
            };
            3
        ],
    };
    let read_ok = DataResponse::Read {
        items: vec![
            Ok(ReadOk {
                version: ChunkVersion(4),
                chain_version: ChainVersion(2),
                chunk_length: 8192,
                bytes: 16,
                crc: 1,
            }),
            Err(PondError::new(ErrorCode::NotFound, "gone")),
        ],
    };

    // data_frame: first byte = arrival piece size.
    let mut stream = vec![7u8];
    stream.extend(frame(FrameKind::Request, 1, &hello, &[]));
    stream.extend(frame(FrameKind::Request, 2, &update, &[0x5a; 64]));
    stream.extend(frame(FrameKind::Request, 3, &read, &[]));
    put(&dir, "data_frame", "seed-pipeline", &stream);
    let mut one = vec![255u8];
    one.extend(frame(FrameKind::Response, 3, &read_ok, &[1; 16]));
    put(&dir, "data_frame", "seed-read-response", &one);
    let mut trunc = vec![1u8];
    trunc.extend(&frame(FrameKind::Request, 4, &update, &[0; 32])[..30]);
    put(&dir, "data_frame", "seed-truncated", &trunc);
    let mut bad = vec![24u8];
    let mut f = frame(FrameKind::Request, 5, &hello, &[]);
    f[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
    bad.extend(f);
    put(&dir, "data_frame", "seed-oversized-payload", &bad);

    // control_message: first byte picks the type.
    let reqs = [
        MetaRequest::Lookup {
            parent: InodeId::ROOT,
            name: "data".into(),
        },
        MetaRequest::Resolve {
            path: "/a/b/c".into(),
            follow: true,
        },
        MetaRequest::ReadDirPlus {
            dir: InodeId(5),
            after: Some("x".into()),
            limit: 128,
        },
        MetaRequest::StatFs,
    ];
    for (i, r) in reqs.iter().enumerate() {
        put(
            &dir,
            "control_message",
            &format!("seed-meta-request-{i}"),
            &tagged(0, postcard::to_stdvec(r).unwrap()),
        );
    }
    put(
        &dir,
        "control_message",
        "seed-error",
        &tagged(
            7,
            postcard::to_stdvec(&PondError::new(ErrorCode::NoSpace, "full")).unwrap(),
        ),
    );
    put(
        &dir,
        "control_message",
        "seed-data-request",
        &tagged(8, postcard::to_stdvec(&update).unwrap()),
    );

    // raft_message.
    let log_id = |t: u64, i: u64| LogId::new(CommittedLeaderId::new(t, 1), i);
    let entries: Vec<Entry<TypeConfig>> = vec![
        Entry {
            log_id: log_id(2, 10),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(2, 11),
            payload: EntryPayload::Blank,
        },
    ];
    let ae = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: Some(log_id(2, 9)),
        entries: entries.clone(),
        leader_commit: Some(log_id(2, 9)),
    };
    put(
        &dir,
        "raft_message",
        "seed-append",
        &tagged(0, postcard::to_stdvec(&ae).unwrap()),
    );
    let vote = openraft::raft::VoteRequest::<u64>::new(Vote::new(3, 2), Some(log_id(2, 11)));
    put(
        &dir,
        "raft_message",
        "seed-vote",
        &tagged(2, postcard::to_stdvec(&vote).unwrap()),
    );
    put(
        &dir,
        "raft_message",
        "seed-log-entry",
        &tagged(6, postcard::to_stdvec(&entries[0]).unwrap()),
    );
    put(
        &dir,
        "raft_message",
        "seed-data-response",
        &tagged(7, postcard::to_stdvec(&read_ok).unwrap()),
    );

    // chunk_record: records as a real engine writes them (installed, staged, committed).
    let backend = MemBackend::new(1 << 30);
    {
        let engine = Engine::open(backend.clone()).expect("open engine");
        let c = |i: u64| ChunkId::new(InodeId(42), i);
        let big = vec![0x5au8; 200_000];
        engine
            .install(c(0), ChunkVersion(1), ChainVersion(1), &big)
            .expect("install");
        engine
            .install(c(1), ChunkVersion(3), ChainVersion(2), b"small")
            .expect("install");
        engine
            .stage(
                c(1),
                ChunkVersion(4),
                ChainVersion(2),
                Mutation::Write {
                    offset: 70_000,
                    data: &[1; 5000],
                },
                Some((ClientId(9), RequestId(77))),
            )
            .expect("stage");
        engine
            .stage(
                c(2),
                ChunkVersion(1),
                ChainVersion(2),
                Mutation::Replace { data: &[2; 4096] },
                None,
            )
            .expect("stage");
        engine.commit(c(2), ChunkVersion(1)).expect("commit");
    }
    let mut run = Vec::new();
    for (i, (_, r)) in backend.load_meta().expect("load").iter().enumerate() {
        let one = postcard::to_stdvec(r).unwrap();
        put(&dir, "chunk_record", &format!("seed-record-{i}"), &one);
        run.extend(one);
    }
    put(&dir, "chunk_record", "seed-run", &run);
    // Regression: a record naming a slot near u32::MAX once made open() build a free list of
    // billions of entries (an allocation sized by a number read from disk).
    let regress = dir.parent().expect("cargo-fuzz dir").join("regressions");
    if let Some((_, mut rec)) = backend.load_meta().expect("load").into_iter().next() {
        let v = rec
            .committed
            .as_mut()
            .expect("installed chunk is committed");
        v.blocks[0].slot = 4_000_000_000;
        put(
            &regress,
            "chunk_record",
            "huge-slot",
            &postcard::to_stdvec(&rec).unwrap(),
        );
    }

    // dataset_index and sampler state.
    let ix = Index {
        files: vec!["shard-0.bin".into(), "shard-1.bin".into()],
        entries: (0..100)
            .map(|i| IxEntry {
                file: (i % 2) as u32,
                offset: i as u64 * 4096,
                len: 4096,
            })
            .collect(),
    };
    put(&dir, "dataset_index", "seed-index", &ix.encode());
    let empty = Index {
        files: vec![],
        entries: vec![],
    };
    put(&dir, "dataset_index", "seed-empty-index", &empty.encode());
    let st = SamplerState {
        seed: 1,
        epoch: 2,
        position: 300,
    };
    put(&dir, "dataset_index", "seed-sampler-state", &st.encode());
    let mut damaged = ix.encode();
    damaged[30] ^= 1;
    put(&dir, "dataset_index", "seed-damaged-index", &damaged);

    // cluster_file.
    let cf = ClusterFile {
        token: "t0k3n".into(),
        meta: (1..=3)
            .map(|id| MetaEndpoint {
                id,
                addr: format!("127.0.0.1:{}", 7000 + id),
                pid: Some(100 + id as u32),
            })
            .collect(),
        storage: vec![StorageEndpoint {
            id: 1,
            addr: "127.0.0.1:8001".into(),
            pid: None,
        }],
    };
    put(
        &dir,
        "cluster_file",
        "seed-cluster",
        cf.to_toml().as_bytes(),
    );
    put(&dir, "cluster_file", "seed-empty", b"");
    put(
        &dir,
        "cluster_file",
        "seed-no-meta",
        b"token = \"x\"\nmeta = []\n",
    );
    put(
        &dir,
        "cluster_file",
        "seed-bad-type",
        b"token = 1\n[[meta]]\nid = \"a\"\n",
    );
    println!("seed corpus written under {}", dir.display());
}
