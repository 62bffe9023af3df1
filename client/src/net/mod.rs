//! Data-plane transport: how chunk reads, writes, forwarding and resync reach a storage node.
//!
//! - [`Transport`]: one request/response exchange with a node, the seam that TCP, RDMA and
//!   simulations implement.
//! - [`tcp::TcpTransport`]: the default — pooled connections, many requests in flight per
//!   connection (pipelined, matched by request id), a deadline on every call, the cluster token
//!   in the first frame of every connection.
//! - `rdma::RdmaTransport` (cargo feature `rdma`): ibverbs; fails with
//!   [`NetError::NoRdmaDevice`] where there is no device, so callers fall back to TCP.
//! - [`DataClient`]: the low-level chunk API the file API builds on (`write_chunk`,
//!   `read_chunks`, `remove_chunks`, `truncate_chunk`, `query_length`), with (client id,
//!   request id) for exactly-once retries and end-to-end CRC32C checks.
//!
//! Wire format: `pond_proto::data`.

pub mod bufpool;
pub mod limits;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod tcp;

use bytes::Bytes;
use futures::future::BoxFuture;
use pond_proto::data::*;
use pond_proto::{ChunkId, ClientId, ErrorCode, InodeId, PondError, RequestId};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why a data-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("deadline of {0:?} expired")]
    Timeout(Duration),
    #[error("connection closed")]
    Closed,
    #[error("authentication refused: {0}")]
    Unauthenticated(String),
    /// The server answered with an error.
    #[error("remote: {0}")]
    Remote(PondError),
    #[error("unexpected response to {0}")]
    Unexpected(&'static str),
    #[error("request too large: {0}")]
    TooLarge(String),
    #[error("no RDMA device: {0}")]
    NoRdmaDevice(String),
}

impl NetError {
    /// The code a caller acts on (retry elsewhere, refresh routing, give up).
    pub fn code(&self) -> ErrorCode {
        match self {
            NetError::Connect { .. } | NetError::Io(_) | NetError::Closed => ErrorCode::Unavailable,
            NetError::NoRdmaDevice(_) => ErrorCode::Unavailable,
            NetError::Frame(_) | NetError::Unexpected(_) => ErrorCode::Malformed,
            NetError::Timeout(_) => ErrorCode::Timeout,
            NetError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            NetError::Remote(e) => e.code,
            NetError::TooLarge(_) => ErrorCode::InvalidArgument,
        }
    }

    pub fn into_pond(self) -> PondError {
        match self {
            NetError::Remote(e) => e,
            other => PondError::new(other.code(), other.to_string()),
        }
    }
}

/// One request/response exchange with a data-plane node. Implementations bound their memory,
/// honour `deadline` (covering connect, send and reply) and never panic on peer input.
pub trait Transport: Send + Sync + 'static {
    fn call<'a>(
        &'a self,
        addr: &'a str,
        req: DataRequest,
        payload: Bytes,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<(DataResponse, Bytes), NetError>>;
}

/// Low-level chunk API over a [`Transport`].
#[derive(Clone)]
pub struct DataClient {
    transport: Arc<dyn Transport>,
    client: ClientId,
    next_request: Arc<AtomicU64>,
    deadline: Duration,
}

impl DataClient {
    pub fn new(transport: Arc<dyn Transport>, client: ClientId) -> DataClient {
        DataClient {
            transport,
            client,
            next_request: Arc::new(AtomicU64::new(1)),
            deadline: Duration::from_millis(limits::CALL_DEADLINE_MS),
        }
    }

    /// A client over TCP with the cluster token.
    pub fn tcp(token: impl Into<String>, client: ClientId) -> DataClient {
        DataClient::new(Arc::new(tcp::TcpTransport::new(token, client)), client)
    }

    pub fn with_deadline(mut self, deadline: Duration) -> DataClient {
        self.deadline = deadline;
        self
    }

    pub fn client_id(&self) -> ClientId {
        self.client
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// A fresh request id; reuse it when retrying the same write.
    pub fn next_request_id(&self) -> RequestId {
        RequestId(self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    /// Raw exchange; remote errors come back as `NetError::Remote`.
    pub async fn call(
        &self,
        addr: &str,
        req: DataRequest,
        payload: Bytes,
    ) -> Result<(DataResponse, Bytes), NetError> {
        match self
            .transport
            .call(addr, req, payload, self.deadline)
            .await?
        {
            (DataResponse::Error(e), _) => Err(NetError::Remote(e)),
            ok => Ok(ok),
        }
    }

    /// Sends an update (from a client: `req.version == None`, to the chain head). The CRC of
    /// `data` is filled in here.
    pub async fn update(
        &self,
        addr: &str,
        mut req: UpdateReq,
        data: Bytes,
    ) -> Result<UpdateReply, NetError> {
        req.crc = crc32c::crc32c(&data);
        match self.call(addr, DataRequest::Update(req), data).await? {
            (DataResponse::Update(r), _) => Ok(r),
            _ => Err(NetError::Unexpected("update")),
        }
    }

    /// Sends an update whose `crc` the caller already holds for `data` (replicas forwarding a
    /// payload they verified on receipt), saving a pass over the bytes.
    pub async fn send_update(
        &self,
        addr: &str,
        req: UpdateReq,
        data: Bytes,
    ) -> Result<UpdateReply, NetError> {
        match self.call(addr, DataRequest::Update(req), data).await? {
            (DataResponse::Update(r), _) => Ok(r),
            _ => Err(NetError::Unexpected("update")),
        }
    }

    /// Writes `data` at `offset` of `chunk` through the chain headed at `addr`.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_chunk(
        &self,
        addr: &str,
        at: ChainRef,
        chunk: ChunkId,
        offset: u32,
        chunk_bytes: u32,
        data: Bytes,
        request: RequestId,
    ) -> Result<UpdateReply, NetError> {
        let req = UpdateReq {
            at,
            chunk,
            op: UpdateOp::Write { offset },
            chunk_bytes,
            crc: 0,
            version: None,
            client: self.client,
            request,
        };
        self.update(addr, req, data).await
    }

    /// Cuts `chunk` to `length` bytes through the chain (file truncate).
    pub async fn truncate_chunk(
        &self,
        addr: &str,
        at: ChainRef,
        chunk: ChunkId,
        length: u32,
        chunk_bytes: u32,
        request: RequestId,
    ) -> Result<UpdateReply, NetError> {
        let req = UpdateReq {
            at,
            chunk,
            op: UpdateOp::Truncate { length },
            chunk_bytes,
            crc: 0,
            version: None,
            client: self.client,
            request,
        };
        self.update(addr, req, Bytes::new()).await
    }

    /// Batched read: one reply entry per item, each either its bytes (CRC-checked here) or
    /// the error of that item alone.
    pub async fn read_chunks(
        &self,
        addr: &str,
        items: Vec<ReadItem>,
    ) -> Result<Vec<Result<(ReadOk, Bytes), PondError>>, NetError> {
        if items.len() > READ_BATCH_ITEMS_MAX {
            return Err(NetError::TooLarge(format!("{} read items", items.len())));
        }
        let n = items.len();
        let (resp, mut payload) = self
            .call(addr, DataRequest::Read { items }, Bytes::new())
            .await?;
        let DataResponse::Read { items } = resp else {
            return Err(NetError::Unexpected("read"));
        };
        if items.len() != n {
            return Err(NetError::Unexpected("read (item count)"));
        }
        let mut out = Vec::with_capacity(n);
        for item in items {
            match item {
                Ok(ok) => {
                    if ok.bytes as usize > payload.len() {
                        return Err(NetError::Unexpected("read (payload too short)"));
                    }
                    let bytes = payload.split_to(ok.bytes as usize);
                    if crc32c::crc32c(&bytes) != ok.crc {
                        out.push(Err(PondError::new(ErrorCode::Checksum, "read reply CRC")));
                    } else {
                        out.push(Ok((ok, bytes)));
                    }
                }
                Err(e) => out.push(Err(e)),
            }
        }
        Ok(out)
    }

    /// Removes chunks `from_index..` of `inode` from the chain headed at `addr`.
    pub async fn remove_chunks(
        &self,
        addr: &str,
        at: ChainRef,
        inode: InodeId,
        from_index: u64,
        request: RequestId,
    ) -> Result<u64, NetError> {
        let req = DataRequest::RemoveRange {
            at,
            inode,
            from_index,
            client: self.client,
            request,
            forwarded: false,
        };
        match self.call(addr, req, Bytes::new()).await? {
            (DataResponse::Removed { chunks }, _) => Ok(chunks),
            _ => Err(NetError::Unexpected("remove_range")),
        }
    }

    /// `(index, length)` of the last chunk of `inode` on this chain (ask the tail for an
    /// answer that includes every acknowledged write).
    pub async fn query_length(
        &self,
        addr: &str,
        at: ChainRef,
        inode: InodeId,
    ) -> Result<Option<(u64, u32)>, NetError> {
        match self
            .call(addr, DataRequest::QueryLength { at, inode }, Bytes::new())
            .await?
        {
            (DataResponse::Length { last }, _) => Ok(last),
            _ => Err(NetError::Unexpected("query_length")),
        }
    }
}
