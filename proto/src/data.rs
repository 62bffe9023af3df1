//! The data-plane wire format: frames and the chunk I/O messages they carry. Pure encode and
//! decode, no I/O (`pond-client::net` owns the sockets, `pond-storage` the server).
//!
//! # Frame
//!
//! Every frame is a fixed 24-byte header followed by `meta_len` bytes of postcard-encoded
//! message (`DataRequest` or `DataResponse`) and `payload_len` bytes of raw payload (chunk
//! bytes). The payload is kept out of postcard so it can be sliced out of the receive buffer
//! (`Bytes::split_to`) and handed on without a copy, and later placed in RDMA-registered memory.
//!
//! ```text
//! 0      4   5    6      8            16         20           24
//! | magic | ver | kind | flags=0 | request id | meta_len | payload_len | meta ... | payload ... |
//!   u32 BE  u8    u8     u16 BE     u64 BE      u32 BE      u32 BE
//! ```
//!
//! Integrity: chunk bytes carry their own CRC32C inside the message (`UpdateReq::crc`,
//! `ReadOk::crc`), checked end to end by the receiver; the header is covered by TCP.
//!
//! # Connection
//!
//! The first frame on every connection is a `Request` carrying `DataRequest::Hello` with the
//! cluster token; the server answers `DataResponse::HelloOk` or closes the connection. After
//! that requests are pipelined: responses come back in any order, matched by request id.
//! Any malformed, truncated or oversized frame closes that connection only.

use crate::cluster::LocalState;
use crate::error::PondError;
use crate::ids::*;
use crate::limits::CHUNK_BYTES_MAX;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Limits of the wire format (each with its reason).
// ---------------------------------------------------------------------------------------------

/// "POND" in ASCII: a stray client (HTTP, TLS) is recognised on its first four bytes.
pub const MAGIC: u32 = 0x504F_4E44;
/// Bumped on any incompatible change of the header or the messages.
pub const WIRE_VERSION: u8 = 1;
/// Fixed header size.
pub const HEADER_BYTES: usize = 24;
/// Largest encoded message: a read batch of `READ_BATCH_ITEMS_MAX` items or a chunk list page
/// of `CHUNK_LIST_PAGE_MAX` summaries is well under 256 KiB; 1 MiB leaves headroom for errors
/// with messages without letting a peer make us allocate much.
pub const FRAME_META_BYTES_MAX: u32 = 1 << 20;
/// Largest payload: a full-chunk replace of the largest chunk, or a read batch reply, whose
/// total is bounded by `READ_BATCH_BYTES_MAX` (= the largest chunk).
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = CHUNK_BYTES_MAX;
/// Chunk ranges in one batched read: enough to fill a training batch of small samples in one
/// round trip, small enough that one batch cannot monopolise a server.
pub const READ_BATCH_ITEMS_MAX: usize = 4096;
/// Total bytes one batched read may return (the reply is one frame).
pub const READ_BATCH_BYTES_MAX: u64 = FRAME_PAYLOAD_BYTES_MAX as u64;
/// Chunk summaries per `ListChunks` page during resync (~40 B each → ~160 KiB per page).
pub const CHUNK_LIST_PAGE_MAX: u32 = 4096;
/// Cluster tokens longer than this are refused before comparing.
pub const TOKEN_BYTES_MAX: usize = 1024;

const _: () = assert!(HEADER_BYTES == 4 + 1 + 1 + 2 + 8 + 4 + 4);

// ---------------------------------------------------------------------------------------------
// Frame header and codec.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum FrameKind {
    Request = 1,
    Response = 2,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub request_id: u64,
    pub meta_len: u32,
    pub payload_len: u32,
}

impl FrameHeader {
    pub fn frame_bytes(&self) -> usize {
        HEADER_BYTES + self.meta_len as usize + self.payload_len as usize
    }
}

/// Why a frame was refused. Every case closes the connection it arrived on.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported wire version {0}")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("nonzero flags {0:#x}")]
    BadFlags(u16),
    #[error("message of {0} bytes exceeds the limit")]
    MetaTooLarge(u32),
    #[error("payload of {0} bytes exceeds the limit")]
    PayloadTooLarge(u32),
    #[error("empty message")]
    EmptyMeta,
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

pub fn encode_header(h: &FrameHeader, out: &mut impl BufMut) {
    out.put_u32(MAGIC);
    out.put_u8(WIRE_VERSION);
    out.put_u8(h.kind as u8);
    out.put_u16(0);
    out.put_u64(h.request_id);
    out.put_u32(h.meta_len);
    out.put_u32(h.payload_len);
}

/// Validates everything the header alone can tell: magic, version, kind, flags and bounds.
pub fn decode_header(mut b: &[u8]) -> Result<FrameHeader, FrameError> {
    assert!(b.len() >= HEADER_BYTES, "caller passes a whole header");
    let magic = b.get_u32();
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = b.get_u8();
    if version != WIRE_VERSION {
        return Err(FrameError::BadVersion(version));
    }
    let kind = match b.get_u8() {
        1 => FrameKind::Request,
        2 => FrameKind::Response,
        k => return Err(FrameError::BadKind(k)),
    };
    let flags = b.get_u16();
    if flags != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    let request_id = b.get_u64();
    let meta_len = b.get_u32();
    let payload_len = b.get_u32();
    if meta_len == 0 {
        return Err(FrameError::EmptyMeta);
    }
    if meta_len > FRAME_META_BYTES_MAX {
        return Err(FrameError::MetaTooLarge(meta_len));
    }
    if payload_len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(FrameError::PayloadTooLarge(payload_len));
    }
    Ok(FrameHeader {
        kind,
        request_id,
        meta_len,
        payload_len,
    })
}

/// One decoded frame. `meta` is still postcard; `payload` shares the receive buffer.
#[derive(Clone, Debug)]
pub struct Frame {
    pub header: FrameHeader,
    pub meta: Bytes,
    pub payload: Bytes,
}

impl Frame {
    pub fn request(&self) -> Result<DataRequest, FrameError> {
        decode_meta(&self.meta)
    }
    pub fn response(&self) -> Result<DataResponse, FrameError> {
        decode_meta(&self.meta)
    }
}

fn decode_meta<T: serde::de::DeserializeOwned>(meta: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes(meta).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

/// Rejects a partial header as soon as its magic or version is wrong, so a stray client is
/// dropped on its first bytes rather than after a full header's worth.
fn check_prefix(mut b: &[u8]) -> Result<(), FrameError> {
    if b.len() >= 4 {
        let magic = b.get_u32();
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if let Some(v) = b.first()
            && *v != WIRE_VERSION
        {
            return Err(FrameError::BadVersion(*v));
        }
    }
    Ok(())
}

/// Takes one whole frame off the front of `buf`. `Ok(None)`: need more bytes (the header, once
/// known, has been validated, so the caller may reserve `needed` bytes safely).
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_BYTES {
        check_prefix(buf)?;
        return Ok(None);
    }
    let header = decode_header(&buf[..HEADER_BYTES])?;
    if buf.len() < header.frame_bytes() {
        return Ok(None);
    }
    buf.advance(HEADER_BYTES);
    let meta = buf.split_to(header.meta_len as usize).freeze();
    let payload = buf.split_to(header.payload_len as usize).freeze();
    Ok(Some(Frame {
        header,
        meta,
        payload,
    }))
}

/// Bytes still missing before `decode_frame` can return the frame at the front of `buf`.
pub fn bytes_needed(buf: &[u8]) -> Result<usize, FrameError> {
    if buf.len() < HEADER_BYTES {
        check_prefix(buf)?;
        return Ok(HEADER_BYTES - buf.len());
    }
    let header = decode_header(&buf[..HEADER_BYTES])?;
    Ok(header.frame_bytes().saturating_sub(buf.len()))
}

/// Encodes header + message into one buffer; the payload is sent after it as is.
pub fn encode_frame<T: Serialize>(
    kind: FrameKind,
    request_id: u64,
    msg: &T,
    payload_len: usize,
) -> Result<Bytes, FrameError> {
    let meta = postcard::to_stdvec(msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    let meta_len = u32::try_from(meta.len()).map_err(|_| FrameError::MetaTooLarge(u32::MAX))?;
    if meta_len > FRAME_META_BYTES_MAX {
        return Err(FrameError::MetaTooLarge(meta_len));
    }
    let payload_len =
        u32::try_from(payload_len).map_err(|_| FrameError::PayloadTooLarge(u32::MAX))?;
    if payload_len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(FrameError::PayloadTooLarge(payload_len));
    }
    let mut out = BytesMut::with_capacity(HEADER_BYTES + meta.len());
    encode_header(
        &FrameHeader {
            kind,
            request_id,
            meta_len,
            payload_len,
        },
        &mut out,
    );
    out.put_slice(&meta);
    Ok(out.freeze())
}

// ---------------------------------------------------------------------------------------------
// Messages.
// ---------------------------------------------------------------------------------------------

/// Where a request is addressed: a target of a chain, as the sender's routing table has it.
/// Every hop checks `chain_version` against its own table (DESIGN.md §4, step 1).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChainRef {
    pub chain: ChainId,
    pub chain_version: ChainVersion,
    pub target: TargetId,
}

/// What an update does to one chunk.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum UpdateOp {
    /// Write the payload at `offset`; the chunk grows (zero-filled) if needed.
    Write { offset: u32 },
    /// Replace the whole chunk with the payload (resync forwarding to a syncing target).
    Replace,
    /// Cut (or zero-extend) the chunk to `length` bytes.
    Truncate { length: u32 },
    /// Delete the chunk.
    Remove,
}

/// A chunk update. From the client `version` is `None` and the target must be the chain
/// head; forwarded hops carry the head's `u = committed + 1`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UpdateReq {
    pub at: ChainRef,
    pub chunk: ChunkId,
    pub op: UpdateOp,
    /// The file's chunk size; `offset + payload` must stay within it.
    pub chunk_bytes: u32,
    /// CRC32C of the payload, checked by every replica before storing it.
    pub crc: u32,
    pub version: Option<ChunkVersion>,
    pub client: ClientId,
    pub request: RequestId,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UpdateReply {
    /// The committed version the update produced (or found, for a duplicate).
    pub version: ChunkVersion,
    /// Chunk length after the update (0 after `Remove`).
    pub length: u32,
}

/// One range of one chunk in a batched read.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadItem {
    pub at: ChainRef,
    pub chunk: ChunkId,
    pub offset: u32,
    /// Bytes wanted; the reply may be shorter at the end of the chunk.
    pub length: u32,
}

/// A successfully read range; its bytes follow in the payload in item order.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadOk {
    /// Committed version read (0 = the chunk does not exist: a hole, reads as nothing).
    pub version: ChunkVersion,
    /// Chain version the chunk was committed under.
    pub chain_version: ChainVersion,
    pub chunk_length: u32,
    /// Bytes of this item in the payload.
    pub bytes: u32,
    /// CRC32C of those bytes.
    pub crc: u32,
}

/// Summary of one chunk, as resync compares them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChunkSummary {
    pub chunk: ChunkId,
    pub version: ChunkVersion,
    pub chain_version: ChainVersion,
    pub length: u32,
    pub crc: u32,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DataRequest {
    /// First frame of every connection.
    Hello {
        token: String,
        client: ClientId,
    },
    Update(UpdateReq),
    Read {
        items: Vec<ReadItem>,
    },
    /// Committed version of a chunk at the tail (CRAQ version query).
    QueryVersion {
        at: ChainRef,
        chunk: ChunkId,
    },
    /// Remove chunks `from_index..` of `inode`, through the chain (GC and truncate). Clients
    /// send it to the head with `forwarded = false`; replicas pass it on with `true`.
    RemoveRange {
        at: ChainRef,
        inode: InodeId,
        from_index: u64,
        client: ClientId,
        request: RequestId,
        forwarded: bool,
    },
    /// Highest chunk index of `inode` on this chain and its committed length.
    QueryLength {
        at: ChainRef,
        inode: InodeId,
    },
    /// Resync: the committed chunks of the addressed target after `after`, in key order.
    ListChunks {
        at: ChainRef,
        after: Option<ChunkId>,
        limit: u32,
    },
    /// Resync: install the payload as the committed content at `version`.
    SyncInstall {
        at: ChainRef,
        chunk: ChunkId,
        version: ChunkVersion,
        committed_under: ChainVersion,
        crc: u32,
    },
    /// Resync: delete a chunk the predecessor does not have.
    SyncRemove {
        at: ChainRef,
        chunk: ChunkId,
    },
    /// Resync finished: the addressed target is up to date.
    SyncDone {
        at: ChainRef,
    },
    /// Local states of the node's targets (tests and `pond status`).
    TargetStates,
    /// RDMA transport setup over the TCP connection: the client's queue-pair endpoint
    /// (opaque bytes owned by the RDMA transport). Answered by `RdmaAccept` or an error.
    RdmaConnect {
        endpoint: Vec<u8>,
    },
}

impl DataRequest {
    pub fn name(&self) -> &'static str {
        match self {
            DataRequest::Hello { .. } => "hello",
            DataRequest::Update(_) => "update",
            DataRequest::Read { .. } => "read",
            DataRequest::QueryVersion { .. } => "query_version",
            DataRequest::RemoveRange { .. } => "remove_range",
            DataRequest::QueryLength { .. } => "query_length",
            DataRequest::ListChunks { .. } => "list_chunks",
            DataRequest::SyncInstall { .. } => "sync_install",
            DataRequest::SyncRemove { .. } => "sync_remove",
            DataRequest::SyncDone { .. } => "sync_done",
            DataRequest::TargetStates => "target_states",
            DataRequest::RdmaConnect { .. } => "rdma_connect",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DataResponse {
    HelloOk,
    Update(UpdateReply),
    /// One entry per requested item; the `Ok` ones have their bytes in the payload.
    Read {
        items: Vec<Result<ReadOk, PondError>>,
    },
    Version(ChunkVersion),
    Removed {
        chunks: u64,
    },
    /// `(index, length)` of the last chunk, if the inode has any on this chain.
    Length {
        last: Option<(u64, u32)>,
    },
    ChunkList {
        chunks: Vec<ChunkSummary>,
        more: bool,
    },
    TargetStates {
        targets: Vec<(TargetId, LocalState)>,
    },
    Done,
    Error(PondError),
    /// The server's queue-pair endpoint for an `RdmaConnect`.
    RdmaAccept {
        endpoint: Vec<u8>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use proptest::prelude::*;

    fn frame_of(req: &DataRequest, id: u64, payload: &[u8]) -> BytesMut {
        let head = encode_frame(FrameKind::Request, id, req, payload.len()).unwrap();
        let mut b = BytesMut::from(&head[..]);
        b.extend_from_slice(payload);
        b
    }

    fn any_ref() -> impl Strategy<Value = ChainRef> {
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(c, v, t)| ChainRef {
            chain: ChainId(c),
            chain_version: ChainVersion(v),
            target: TargetId(t),
        })
    }

    fn any_request() -> impl Strategy<Value = DataRequest> {
        prop_oneof![
            (".{0,40}", any::<u64>()).prop_map(|(token, c)| DataRequest::Hello {
                token,
                client: ClientId(c)
            }),
            (
                any_ref(),
                any::<[u8; 16]>(),
                any::<u32>(),
                any::<u32>(),
                any::<Option<u32>>()
            )
                .prop_map(|(at, c, off, crc, v)| DataRequest::Update(UpdateReq {
                    at,
                    chunk: ChunkId(c),
                    op: UpdateOp::Write { offset: off },
                    chunk_bytes: 4 << 20,
                    crc,
                    version: v.map(ChunkVersion),
                    client: ClientId(7),
                    request: RequestId(9),
                })),
            proptest::collection::vec(
                (any_ref(), any::<[u8; 16]>(), any::<u32>(), any::<u32>()).prop_map(
                    |(at, c, offset, length)| ReadItem {
                        at,
                        chunk: ChunkId(c),
                        offset,
                        length
                    }
                ),
                0..20
            )
            .prop_map(|items| DataRequest::Read { items }),
            (any_ref(), any::<u64>(), any::<u64>()).prop_map(|(at, i, f)| {
                DataRequest::RemoveRange {
                    at,
                    inode: InodeId(i),
                    from_index: f,
                    client: ClientId(1),
                    request: RequestId(2),
                    forwarded: f % 2 == 0,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn request_frames_roundtrip(
            req in any_request(),
            id in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = frame_of(&req, id, &payload);
            // A second frame right behind must stay in the buffer untouched.
            let tail = frame_of(&DataRequest::TargetStates, id ^ 1, b"");
            buf.extend_from_slice(&tail);
            let f = decode_frame(&mut buf).unwrap().unwrap();
            prop_assert_eq!(f.header.kind, FrameKind::Request);
            prop_assert_eq!(f.header.request_id, id);
            prop_assert_eq!(f.request().unwrap(), req);
            prop_assert_eq!(&f.payload[..], &payload[..]);
            prop_assert_eq!(&buf[..], &tail[..]);
        }

        #[test]
        fn every_truncation_waits_for_more(req in any_request(), cut in 0usize..1000) {
            let full = frame_of(&req, 5, b"abcdef");
            let cut = cut % full.len();
            let mut part = BytesMut::from(&full[..cut]);
            // A short prefix of a valid frame is never an error.
            prop_assert!(decode_frame(&mut part).unwrap().is_none());
            prop_assert_eq!(bytes_needed(&full[..cut]).unwrap() > 0, true);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(f)) = decode_frame(&mut buf) {
                let _ = f.request();
                let _ = f.response();
            }
        }
    }

    #[test]
    fn response_roundtrip() {
        let resp = DataResponse::Read {
            items: vec![
                Ok(ReadOk {
                    version: ChunkVersion(3),
                    chain_version: ChainVersion(2),
                    chunk_length: 10,
                    bytes: 4,
                    crc: 1,
                }),
                Err(PondError::new(ErrorCode::Checksum, "bad block")),
            ],
        };
        let head = encode_frame(FrameKind::Response, 42, &resp, 4).unwrap();
        let mut b = BytesMut::from(&head[..]);
        b.extend_from_slice(b"data");
        let f = decode_frame(&mut b).unwrap().unwrap();
        assert_eq!(f.response().unwrap(), resp);
        assert_eq!(&f.payload[..], b"data");
    }

    #[test]
    fn bad_headers_are_rejected() {
        let good = frame_of(&DataRequest::TargetStates, 1, b"");
        let check = |mutate: &dyn Fn(&mut [u8]), want: &dyn Fn(&FrameError) -> bool| {
            let mut b = good.clone();
            mutate(&mut b[..]);
            let err = decode_frame(&mut b).unwrap_err();
            assert!(want(&err), "unexpected {err:?}");
        };
        check(&|b| b[0] = b'G', &|e| matches!(e, FrameError::BadMagic(_)));
        check(&|b| b[4] = 9, &|e| matches!(e, FrameError::BadVersion(9)));
        check(&|b| b[5] = 7, &|e| matches!(e, FrameError::BadKind(7)));
        check(&|b| b[7] = 1, &|e| matches!(e, FrameError::BadFlags(1)));
        check(&|b| b[16..20].copy_from_slice(&0u32.to_be_bytes()), &|e| {
            matches!(e, FrameError::EmptyMeta)
        });
        check(
            &|b| b[16..20].copy_from_slice(&(FRAME_META_BYTES_MAX + 1).to_be_bytes()),
            &|e| matches!(e, FrameError::MetaTooLarge(_)),
        );
        check(
            &|b| b[20..24].copy_from_slice(&u32::MAX.to_be_bytes()),
            &|e| matches!(e, FrameError::PayloadTooLarge(_)),
        );
    }

    #[test]
    fn stray_protocol_is_rejected_on_its_first_bytes() {
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(decode_frame(&mut b), Err(FrameError::BadMagic(_))));
        assert!(matches!(
            bytes_needed(b"\x16\x03\x01\x02"),
            Err(FrameError::BadMagic(_))
        ));
        assert!(bytes_needed(b"PO").unwrap() == HEADER_BYTES - 2);
    }

    #[test]
    fn oversized_payload_is_not_encoded() {
        let err = encode_frame(
            FrameKind::Request,
            1,
            &DataRequest::TargetStates,
            FRAME_PAYLOAD_BYTES_MAX as usize + 1,
        )
        .unwrap_err();
        assert!(matches!(err, FrameError::PayloadTooLarge(_)));
    }

    #[test]
    fn malformed_message_is_an_error() {
        let mut b = BytesMut::new();
        encode_header(
            &FrameHeader {
                kind: FrameKind::Request,
                request_id: 1,
                meta_len: 3,
                payload_len: 0,
            },
            &mut b,
        );
        b.extend_from_slice(&[0xff, 0xff, 0xff]);
        let f = decode_frame(&mut b).unwrap().unwrap();
        assert!(matches!(f.request(), Err(FrameError::Decode(_))));
    }
}
