//! Fuzz harnesses: one function per decoder that takes bytes from the network or from disk.
//!
//! Each harness feeds arbitrary bytes to the decoder the way the product does and checks what
//! must hold for any input: no panic, no allocation beyond the limits the decoder promises, and
//! for input that decodes, a re-encoding that decodes to the same value. `cargo-fuzz` drives
//! them (`fuzz/cargo-fuzz/`, nightly); `tests/corpus.rs` replays the checked-in corpus and every
//! crash artifact on stable in the normal test run, so a fixed bug stays fixed.

use bytes::BytesMut;
use pond_proto::data::{self, DataRequest, DataResponse, FrameKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// A harness: feeds one input to one decoder and checks what must hold.
pub type Harness = fn(&[u8]);

/// Every harness by the name its corpus directory and cargo-fuzz target carry.
pub const TARGETS: &[(&str, Harness)] = &[
    ("data_frame", data_frame),
    ("control_message", control_message),
    ("raft_message", raft_message),
    ("chunk_record", chunk_record),
    ("dataset_index", dataset_index),
    ("cluster_file", cluster_file),
];

/// Looks a harness up by name.
pub fn target(name: &str) -> Option<Harness> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Decodes `bytes` as `T` the way the product does (postcard, whole input); a value that
/// decodes must survive a round trip unchanged.
fn roundtrip<T>(bytes: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(v) = postcard::from_bytes::<T>(bytes) {
        let again = postcard::to_stdvec(&v).expect("a decoded value encodes");
        let back: T = postcard::from_bytes(&again).expect("a re-encoded value decodes");
        assert_eq!(v, back, "postcard round trip changed the value");
    }
}

/// Decodes `bytes` as `T` where `T` has no `PartialEq` (openraft types): no panic, and a
/// decoded value re-encodes to bytes that decode again.
fn decodes<T>(bytes: &[u8])
where
    T: Serialize + DeserializeOwned,
{
    if let Ok(v) = postcard::from_bytes::<T>(bytes) {
        let again = postcard::to_stdvec(&v).expect("a decoded value encodes");
        let back: T = postcard::from_bytes(&again).expect("a re-encoded value decodes");
        let third = postcard::to_stdvec(&back).expect("encodes");
        assert_eq!(again, third, "re-encoding is not stable");
    }
}

/// The data-plane receive loop: bytes arrive in pieces (the first input byte sets the piece
/// size), frames are cut off the front of the buffer and their messages decoded, until the
/// stream ends or a frame is rejected (the server then closes the connection).
pub fn data_frame(input: &[u8]) {
    let Some((&step, stream)) = input.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let frame_max = data::HEADER_BYTES
        + data::FRAME_META_BYTES_MAX as usize
        + data::FRAME_PAYLOAD_BYTES_MAX as usize;
    let mut buf = BytesMut::new();
    'stream: for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            // What the reader would reserve next must stay within one frame's limit.
            match data::bytes_needed(&buf) {
                Ok(n) => assert!(buf.len() + n <= frame_max.max(buf.len())),
                Err(_) => break 'stream,
            }
            let frame = match data::decode_frame(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'stream,
            };
            assert_eq!(frame.meta.len(), frame.header.meta_len as usize);
            assert_eq!(frame.payload.len(), frame.header.payload_len as usize);
            match frame.header.kind {
                FrameKind::Request => {
                    if let Ok(req) = frame.request() {
                        reencode_frame(FrameKind::Request, frame.header.request_id, &req, &frame);
                    }
                }
                FrameKind::Response => {
                    if let Ok(resp) = frame.response() {
                        reencode_frame(FrameKind::Response, frame.header.request_id, &resp, &frame);
                    }
                }
            }
        }
    }
}

/// A decoded frame message encodes into a frame that decodes to the same message.
fn reencode_frame<T>(kind: FrameKind, id: u64, msg: &T, frame: &data::Frame)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let head = data::encode_frame(kind, id, msg, frame.payload.len())
        .expect("a decoded message re-encodes within the limits");
    let mut again = BytesMut::from(&head[..]);
    again.extend_from_slice(&frame.payload);
    let f2 = data::decode_frame(&mut again)
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is whole");
    assert!(again.is_empty());
    let mut want = frame.header;
    want.meta_len = f2.header.meta_len;
    assert_eq!(f2.header, want);
    let back: T = match kind {
        FrameKind::Request => postcard::from_bytes(&f2.meta).expect("decodes"),
        FrameKind::Response => postcard::from_bytes(&f2.meta).expect("decodes"),
    };
    assert_eq!(&back, msg);
}

/// Control-plane bodies (gRPC with postcard bodies): the first byte picks the message type.
pub fn control_message(input: &[u8]) {
    use pond_proto::cluster::{Heartbeat, HeartbeatReply, RoutingInfo};
    use pond_proto::meta::{ClusterReply, ClusterRequest, MetaReply, MetaRequest};
    let Some((&which, body)) = input.split_first() else {
        return;
    };
    if body.len() > pond_proto::limits::CONTROL_MESSAGE_BYTES_MAX {
        return; // the codec refuses these before decoding
    }
    match which % 9 {
        0 => roundtrip::<MetaRequest>(body),
        1 => roundtrip::<MetaReply>(body),
        2 => roundtrip::<ClusterRequest>(body),
        3 => roundtrip::<ClusterReply>(body),
        4 => roundtrip::<Heartbeat>(body),
        5 => roundtrip::<HeartbeatReply>(body),
        6 => roundtrip::<RoutingInfo>(body),
        7 => roundtrip::<pond_proto::PondError>(body),
        _ => roundtrip::<DataRequest>(body),
    }
}

/// Raft RPC payloads between meta replicas and the entries of the Raft log on disk.
pub fn raft_message(input: &[u8]) {
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    };
    use pond_meta::types::TypeConfig;
    let Some((&which, body)) = input.split_first() else {
        return;
    };
    match which % 8 {
        0 => decodes::<AppendEntriesRequest<TypeConfig>>(body),
        1 => decodes::<AppendEntriesResponse<u64>>(body),
        2 => decodes::<VoteRequest<u64>>(body),
        3 => decodes::<VoteResponse<u64>>(body),
        4 => decodes::<InstallSnapshotRequest<TypeConfig>>(body),
        5 => decodes::<InstallSnapshotResponse<u64>>(body),
        6 => decodes::<openraft::Entry<TypeConfig>>(body),
        _ => roundtrip::<DataResponse>(body),
    }
}

/// Chunk records as a target's metadata table holds them: a run of postcard `ChunkRec`s is
/// loaded into a memory backend, the engine opens over them (rebuilding its allocator from
/// the slots they name) and every chunk is read. Damaged records must give errors, never a
/// panic or an allocation sized by a number read from disk.
pub fn chunk_record(input: &[u8]) {
    use pond_proto::ChunkId;
    use pond_storage::store::ChunkStore;
    use pond_storage::store::engine::{Backend, ChunkRec, Engine};
    use pond_storage::store::mem::MemBackend;

    let mut recs = Vec::new();
    let mut rest = input;
    while !rest.is_empty() && recs.len() < 64 {
        match postcard::take_from_bytes::<ChunkRec>(rest) {
            Ok((rec, r)) => {
                let mut key = [0u8; 16];
                key[15] = recs.len() as u8;
                recs.push((ChunkId(key), Some(rec)));
                rest = r;
            }
            Err(_) => break,
        }
    }
    if recs.is_empty() {
        return;
    }
    let backend = MemBackend::new(1 << 30);
    // Give the named slots some bytes so reads reach the CRC checks.
    for (_, rec) in &recs {
        let rec = rec.as_ref().expect("put");
        for v in [&rec.committed, &rec.pending].into_iter().flatten() {
            // Only low slots get data, as in a data file of a few MiB: a record naming a slot
            // past it must be refused, not make the data file (or the free list) huge.
            for b in v.blocks.iter().take(8).filter(|b| b.slot < 64) {
                let len = (b.len as usize).min(pond_storage::limits::BLOCK_BYTES as usize);
                let _ = backend.write_block(b.slot, &vec![0xa5; len]);
            }
        }
    }
    if backend.commit_meta(&recs, true).is_err() {
        return;
    }
    let Ok(engine) = Engine::open(backend) else {
        return;
    };
    for (id, _) in &recs {
        if let Some(info) = engine.info(*id) {
            for v in [info.committed, info.pending].into_iter().flatten() {
                let _ = engine.read(*id, v.version, 0, u32::MAX);
                let _ = engine.read(*id, v.version, v.length / 2, 4096);
            }
        }
    }
}

/// A dataset's index file as read from pond, and a saved sampler state.
pub fn dataset_index(input: &[u8]) {
    use pond_client::dataset::{Index, SamplerState};
    if let Ok(ix) = Index::decode("fuzz", input) {
        let again = ix.encode();
        let back = Index::decode("fuzz", &again).expect("a re-encoded index decodes");
        assert_eq!(back.files, ix.files);
        assert_eq!(back.entries, ix.entries);
    }
    if let Ok(st) = SamplerState::decode(input) {
        assert_eq!(SamplerState::decode(&st.encode()).expect("decodes"), st);
    }
}

/// The cluster file (`cluster.toml`) every command reads.
pub fn cluster_file(input: &[u8]) {
    use pond_client::config::ClusterFile;
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(cf) = toml::from_str::<ClusterFile>(text) {
        let again = cf.to_toml();
        let back: ClusterFile = toml::from_str(&again).expect("a written cluster file parses");
        assert_eq!(back, cf);
    }
}
