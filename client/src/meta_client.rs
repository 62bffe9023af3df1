//! Metadata client: deadlines on every RPC, failover across meta replicas following
//! `NotLeader` hints, and a bounded retry budget.
//!
//! Retried writes: every namespace write carries (`ClientId`, `RequestId`) in gRPC metadata
//! (`CLIENT_ID_HEADER` / `REQUEST_ID_HEADER`); the state machine remembers the reply of the
//! last ~262k writes and answers a retry from that table, so a create, mkdir, rename or unlink
//! retried after a timeout is applied once and the retry gets the original answer. Not
//! covered: `cluster()` requests (heartbeats are idempotent by nature; a retried
//! `BootstrapChains` may answer `Exists` after it succeeded), and a write retried after its
//! dedupe record was evicted (older than the table's window, far beyond the retry budget).

use pond_proto::meta::InodeAttr;
use pond_proto::meta::{
    CLIENT_ID_HEADER, ClusterReply, ClusterRequest, MetaReply, MetaRequest, REQUEST_ID_HEADER,
};
use pond_proto::rpc::TOKEN_HEADER;
use pond_proto::rpc::meta_service::meta_client::MetaClient as GrpcClient;
use pond_proto::{ClientId, ErrorCode, InodeId, PondError, SessionId, error::from_status};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// Deadline of one RPC attempt. A write waits for a Raft commit (a few fsyncs, milliseconds);
/// 5 s is far above that, and short enough that two attempts fit in the retry budget. A write
/// that times out may still commit on the server: its retry carries the same request id and is
/// answered from the dedupe table.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Total time one call may spend retrying (leader elections take ~1-2 s).
pub const RETRY_BUDGET: Duration = Duration::from_secs(10);
/// Backoff between attempts: starts small, doubles, capped.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A cheap-to-clone handle to the metadata service.
#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

struct Inner {
    addrs: Vec<String>,
    clients: Vec<GrpcClient<Channel>>,
    token: AsciiMetadataValue,
    /// Index of the replica believed to be leader.
    leader: AtomicUsize,
    /// Raft node id -> index in `addrs`, learned from `MetaStatus`.
    ids: parking_lot::Mutex<HashMap<u64, usize>>,
    client_id: ClientId,
    next_request: AtomicU64,
}

impl std::fmt::Debug for MetaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaClient")
            .field("addrs", &self.inner.addrs)
            .finish()
    }
}

impl MetaClient {
    /// Channels connect lazily: this fails only on malformed addresses or token.
    pub fn connect(addrs: Vec<String>, token: String) -> Result<MetaClient, PondError> {
        if addrs.is_empty() {
            return Err(PondError::new(
                ErrorCode::InvalidArgument,
                "no meta addresses",
            ));
        }
        let token: AsciiMetadataValue = token
            .parse()
            .map_err(|_| PondError::new(ErrorCode::InvalidArgument, "token is not valid ASCII"))?;
        let mut clients = Vec::with_capacity(addrs.len());
        for a in &addrs {
            let uri = if a.contains("://") {
                a.clone()
            } else {
                format!("http://{a}")
            };
            let ep = Endpoint::from_shared(uri).map_err(|e| {
                PondError::new(
                    ErrorCode::InvalidArgument,
                    format!("meta address {a:?}: {e}"),
                )
            })?;
            let ch = ep
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy();
            let max = pond_proto::limits::CONTROL_MESSAGE_BYTES_MAX;
            clients.push(
                GrpcClient::new(ch)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            );
        }
        Ok(MetaClient {
            inner: Arc::new(Inner {
                addrs,
                clients,
                token,
                leader: AtomicUsize::new(0),
                ids: parking_lot::Mutex::new(HashMap::new()),
                client_id: ClientId::fresh(),
                next_request: AtomicU64::new(1),
            }),
        })
    }

    /// This client's id (sent with writes for exactly-once retries).
    pub fn client_id(&self) -> ClientId {
        self.inner.client_id
    }

    /// A namespace request. Writes carry a fresh request id that retries reuse.
    pub async fn op(&self, req: MetaRequest) -> Result<MetaReply, PondError> {
        let origin =
            (!req.is_read()).then(|| self.inner.next_request.fetch_add(1, Ordering::Relaxed));
        self.call(req, origin, |mut c, r| async move { c.op(r).await })
            .await
    }

    /// Register an open file so that it stays readable (for every client) after an unlink
    /// until `close_session`. Returns the file's attributes. With a lease (`start_lease`) the
    /// session also ends if this client stops renewing (it died).
    pub async fn open_session(
        &self,
        inode: InodeId,
        session: SessionId,
    ) -> Result<InodeAttr, PondError> {
        match self
            .op(MetaRequest::OpenSession {
                inode,
                client: self.client_id(),
                session,
            })
            .await?
        {
            MetaReply::Attr(a) => Ok(a),
            other => Err(PondError::new(
                ErrorCode::Internal,
                format!("open_session: unexpected reply {other:?}"),
            )),
        }
    }

    /// End a session (read or write) without reporting a length. `NotFound` means the file
    /// is already gone (e.g. collected after this client's lease expired).
    pub async fn close_session(&self, inode: InodeId, session: SessionId) -> Result<(), PondError> {
        self.op(MetaRequest::CloseSession {
            inode,
            client: self.client_id(),
            session,
        })
        .await
        .map(|_| ())
    }

    /// Take a lease for this client's sessions and keep renewing it (every third of `ttl`)
    /// until the returned handle is dropped or `end`ed. If a renewal finds the lease expired
    /// (the client was cut off longer than `ttl`), a new lease is taken and
    /// `LeaseHandle::epoch` grows: sessions opened in an earlier epoch are gone.
    pub async fn start_lease(&self, ttl: Duration) -> Result<LeaseHandle, PondError> {
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        self.renew_lease(ttl_ms, true).await?;
        let epoch = Arc::new(AtomicU64::new(0));
        let me = self.clone();
        let ep = epoch.clone();
        let task = tokio::spawn(async move {
            let period = ttl / 3;
            loop {
                tokio::time::sleep(period).await;
                match me.renew_lease(ttl_ms, false).await {
                    Ok(()) => {}
                    Err(e) if e.code == ErrorCode::StaleHandle => {
                        tracing::warn!(
                            client = me.client_id().0,
                            "meta lease had expired; sessions were dropped, starting a new lease"
                        );
                        ep.fetch_add(1, Ordering::Release);
                        if let Err(e) = me.renew_lease(ttl_ms, true).await {
                            tracing::warn!(error = %e, "restart meta lease");
                        }
                    }
                    // Within the retry budget the next period tries again; a lease survives
                    // two missed renewals.
                    Err(e) => tracing::warn!(error = %e, "renew meta lease"),
                }
            }
        });
        Ok(LeaseHandle {
            client: self.clone(),
            epoch,
            task: Some(task),
        })
    }

    async fn renew_lease(&self, ttl_ms: u32, first: bool) -> Result<(), PondError> {
        self.op(MetaRequest::RenewLease {
            client: self.client_id(),
            ttl_ms,
            first,
        })
        .await
        .map(|_| ())
    }

    /// A cluster-manager request (heartbeat, routing, bootstrap, status).
    pub async fn cluster(&self, req: ClusterRequest) -> Result<ClusterReply, PondError> {
        self.call(req, None, |mut c, r| async move { c.cluster(r).await })
            .await
    }

    async fn call<Req, Resp, F, Fut>(
        &self,
        req: Req,
        origin: Option<u64>,
        f: F,
    ) -> Result<Resp, PondError>
    where
        Req: Clone,
        F: Fn(GrpcClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let inner = &self.inner;
        let n = inner.addrs.len();
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut backoff = BACKOFF_MIN;
        let mut idx = inner.leader.load(Ordering::Relaxed) % n;
        loop {
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(RPC_TIMEOUT);
            r.metadata_mut().insert(TOKEN_HEADER, inner.token.clone());
            if let Some(id) = origin {
                r.metadata_mut()
                    .insert(CLIENT_ID_HEADER, MetadataValue::from(inner.client_id.0));
                r.metadata_mut()
                    .insert(REQUEST_ID_HEADER, MetadataValue::from(id));
            }
            let e = match tokio::time::timeout(RPC_TIMEOUT, f(inner.clients[idx].clone(), r)).await
            {
                Ok(Ok(resp)) => {
                    inner.leader.store(idx, Ordering::Relaxed);
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => from_status(&status),
                Err(_) => PondError::new(
                    ErrorCode::Timeout,
                    format!("meta {} did not answer", inner.addrs[idx]),
                ),
            };
            let retry = matches!(
                e.code,
                ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::Timeout
            );
            if !retry || Instant::now() + backoff >= deadline {
                return Err(e);
            }
            // Next replica: the hinted leader if we know its address, else the next one.
            let hinted = match (e.code, e.leader_hint) {
                (ErrorCode::NotLeader, Some(id)) => self.index_of(id, idx).await,
                _ => None,
            };
            match hinted {
                Some(i) if i != idx => idx = i, // follow the hint at once
                _ => {
                    idx = (idx + 1) % n;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            tracing::debug!(error = %e, next = %inner.addrs[idx], "retrying meta request");
        }
    }

    /// Map a Raft node id to an address index, asking `MetaStatus` of replica `via` once.
    async fn index_of(&self, id: u64, via: usize) -> Option<usize> {
        if let Some(i) = self.inner.ids.lock().get(&id) {
            return Some(*i);
        }
        let mut r = tonic::Request::new(ClusterRequest::MetaStatus);
        r.set_timeout(RPC_TIMEOUT);
        r.metadata_mut()
            .insert(TOKEN_HEADER, self.inner.token.clone());
        let mut c = self.inner.clients[via].clone();
        let resp = tokio::time::timeout(RPC_TIMEOUT, c.cluster(r))
            .await
            .ok()?
            .ok()?
            .into_inner();
        if let ClusterReply::MetaStatus { members, .. } = resp {
            let mut ids = self.inner.ids.lock();
            for m in members {
                if let Some(i) = self
                    .inner
                    .addrs
                    .iter()
                    .position(|a| a.ends_with(&m.addr) || *a == m.addr)
                {
                    ids.insert(m.id, i);
                }
            }
            return ids.get(&id).copied();
        }
        None
    }
}

/// A client lease kept alive by a background task (see `MetaClient::start_lease`).
pub struct LeaseHandle {
    client: MetaClient,
    epoch: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LeaseHandle {
    /// Grows by one each time the lease was found expired and taken anew. A session opened
    /// while the epoch was `e` is gone once `epoch() > e`.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Stop renewing and release the lease and every session of this client at once.
    pub async fn end(mut self) -> Result<(), PondError> {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.client
            .op(MetaRequest::EndLease {
                client: self.client.client_id(),
            })
            .await
            .map(|_| ())
    }
}

impl Drop for LeaseHandle {
    /// Stops renewing; the sessions end when the lease runs out (use `end` to release them
    /// at once).
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
