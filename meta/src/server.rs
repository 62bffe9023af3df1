//! The `pond.Meta` gRPC service: token check, write batching (proposer), read batching behind
//! one read-index round (reader), cluster requests and the Raft RPC endpoints.

use crate::lease::{Lease, LeaseDecision};
use crate::limits::*;
use crate::manager::Manager;
use crate::namespace::{self, ApplyError};
use crate::store::{self, Shared};
use crate::tables::{DIRENTS, INODES, XATTRS};
use crate::types::{Batch, Op, OpReply, Origin, Raft, TypeConfig};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use pond_proto::meta::*;
use pond_proto::rpc::TOKEN_HEADER;
use pond_proto::rpc::meta_service::meta_server::Meta;
use pond_proto::{ClientId, ErrorCode, PondError, RequestId, error::to_status};
use redb::ReadableDatabase;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub type Reply = Result<OpReply, PondError>;

pub struct Proposal {
    pub op: Op,
    pub tx: oneshot::Sender<Reply>,
}

pub struct ReadReq {
    pub req: MetaRequest,
    pub tx: oneshot::Sender<Result<MetaReply, PondError>>,
}

pub fn not_leader(leader: Option<u64>) -> PondError {
    let mut e = PondError::new(
        ErrorCode::NotLeader,
        match leader {
            Some(l) => format!("leader is node {l}"),
            None => "no leader elected".to_string(),
        },
    );
    e.leader_hint = leader;
    e
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, crate::types::PeerNode>>) -> PondError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f.leader_id),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            PondError::new(ErrorCode::Unavailable, e.to_string())
        }
        RaftError::Fatal(f) => PondError::new(ErrorCode::Unavailable, format!("raft stopped: {f}")),
    }
}

/// Cuts batches from the write queue and proposes each as one Raft entry.
///
/// A gRPC handler queues its op and, when fewer than `PROPOSALS_IN_FLIGHT_MAX` entries are in
/// flight, cuts the batch and proposes it itself (no hop to another task). While slots are
/// busy requests accumulate, so batches grow with load; the proposal that frees a slot cuts the
/// next batch from what queued meanwhile and hands it to a new task (its own caller is
/// answered first). The queue and the in-flight count sit under one lock, so a queued op is
/// always either taken by its own caller or by a proposal still in flight.
pub struct Proposer {
    raft: Raft,
    q: parking_lot::Mutex<ProposeQueue>,
    /// Room in the queue (`PROPOSE_QUEUE_MAX`): a full queue makes callers wait.
    room: Arc<Semaphore>,
}

#[derive(Default)]
struct ProposeQueue {
    items: std::collections::VecDeque<(Proposal, OwnedSemaphorePermit)>,
    in_flight: usize,
}

/// Gives the slot back (or passes it on to the queued ops) if a proposal running in a gRPC
/// handler is dropped before it finished (the client went away): the ops of its batch are
/// answered "proposal dropped" and the clients' retries are deduplicated.
struct SlotGuard {
    proposer: Option<Arc<Proposer>>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(p) = self.proposer.take()
            && let Some(batch) = p.next_batch()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(p.run_loop(batch));
        }
    }
}

impl Proposer {
    pub fn new(raft: Raft) -> Arc<Proposer> {
        Arc::new(Proposer {
            raft,
            q: parking_lot::Mutex::new(ProposeQueue::default()),
            room: Arc::new(Semaphore::new(PROPOSE_QUEUE_MAX)),
        })
    }

    /// Queue a write and wait for its Raft entry to apply.
    pub async fn propose(self: &Arc<Self>, op: Op) -> Reply {
        let (tx, rx) = oneshot::channel();
        if let Some(batch) = self.enqueue(Proposal { op, tx }).await? {
            let mut guard = SlotGuard {
                proposer: Some(self.clone()),
            };
            propose_batch(&self.raft, batch).await;
            guard.proposer = None;
            if let Some(next) = self.next_batch() {
                tokio::spawn(self.clone().run_loop(next));
            }
        }
        rx.await
            .map_err(|_| PondError::new(ErrorCode::Unavailable, "proposal dropped"))?
    }

    /// Queues a proposal whose reply goes to its own channel (the cluster manager's path):
    /// a batch it can start runs in a new task.
    async fn submit(self: &Arc<Self>, p: Proposal) {
        // A refusal (shutting down) was already sent to the proposal's channel.
        if let Ok(Some(batch)) = self.enqueue(p).await {
            tokio::spawn(self.clone().run_loop(batch));
        }
    }

    /// Queues `p`; returns a batch to propose when a slot was free (the slot is then taken).
    async fn enqueue(&self, p: Proposal) -> Result<Option<Vec<Proposal>>, PondError> {
        let permit = match self.room.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => {
                let e = PondError::new(ErrorCode::Unavailable, "shutting down");
                let _ = p.tx.send(Err(e.clone()));
                return Err(e);
            }
        };
        let mut q = self.q.lock();
        q.items.push_back((p, permit));
        if q.in_flight < PROPOSALS_IN_FLIGHT_MAX {
            q.in_flight += 1;
            Ok(Some(cut_batch(&mut q)))
        } else {
            Ok(None)
        }
    }

    /// After a proposal: the next batch if ops queued (the slot stays taken), else the slot is
    /// given back.
    fn next_batch(&self) -> Option<Vec<Proposal>> {
        let mut q = self.q.lock();
        if q.items.is_empty() {
            q.in_flight -= 1;
            None
        } else {
            Some(cut_batch(&mut q))
        }
    }

    async fn run_loop(self: Arc<Self>, mut batch: Vec<Proposal>) {
        loop {
            let mut guard = SlotGuard {
                proposer: Some(self.clone()),
            };
            propose_batch(&self.raft, batch).await;
            guard.proposer = None;
            match self.next_batch() {
                Some(b) => batch = b,
                None => return,
            }
        }
    }
}

/// Takes up to `BATCH_OPS_MAX` ops / `ENTRY_BYTES_SOFT_MAX` bytes from the queue.
fn cut_batch(q: &mut ProposeQueue) -> Vec<Proposal> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while out.len() < BATCH_OPS_MAX && bytes < ENTRY_BYTES_SOFT_MAX {
        let Some((p, _room)) = q.items.pop_front() else {
            break;
        };
        bytes += postcard::experimental::serialized_size(&p.op).unwrap_or(0);
        out.push(p);
    }
    out
}

/// Proposes one batch as one Raft entry and answers each op.
async fn propose_batch(raft: &Raft, batch: Vec<Proposal>) {
    let n = batch.len();
    let (ops, txs): (Vec<Op>, Vec<oneshot::Sender<Reply>>) =
        batch.into_iter().map(|p| (p.op, p.tx)).unzip();
    async move {
        let batch = Batch {
            now: store::now(),
            ops,
        };
        let res = tokio::time::timeout(REQUEST_TIMEOUT, raft.client_write(batch)).await;
        match res {
            Ok(Ok(resp)) => {
                let replies = resp.data.0;
                assert_eq!(replies.len(), txs.len(), "one reply per op");
                for (tx, r) in txs.into_iter().zip(replies) {
                    let _ = tx.send(r);
                }
            }
            Ok(Err(e)) => {
                let e = write_error(e);
                for tx in txs {
                    let _ = tx.send(Err(e.clone()));
                }
            }
            Err(_) => {
                let e = PondError::new(ErrorCode::Timeout, "raft proposal deadline");
                for tx in txs {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
    .instrument(tracing::debug_span!("propose", ops = n))
    .await
}

/// Feeds the proposals of the channel (the cluster manager's) into the proposer.
pub async fn proposer_loop(proposer: Arc<Proposer>, mut rx: mpsc::Receiver<Proposal>) {
    while let Some(p) = rx.recv().await {
        proposer.submit(p).await;
    }
}

/// Answers queued reads in batches: one read-index round (`ensure_linearizable`) per batch,
/// then one redb read transaction for all of them.
pub async fn reader_loop(raft: Raft, shared: Arc<Shared>, mut rx: mpsc::Receiver<ReadReq>) {
    let slots = Arc::new(Semaphore::new(2));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < READ_BATCH_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let res = tokio::time::timeout(REQUEST_TIMEOUT, raft.ensure_linearizable()).await;
            let err = match res {
                Ok(Ok(_)) => None,
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    Some(not_leader(f.leader_id))
                }
                Ok(Err(e)) => Some(PondError::new(ErrorCode::Unavailable, e.to_string())),
                Err(_) => Some(PondError::new(ErrorCode::Timeout, "read-index deadline")),
            };
            if let Some(e) = err {
                for r in batch {
                    let _ = r.tx.send(Err(e.clone()));
                }
                drop(permit);
                return;
            }
            let _ = tokio::task::spawn_blocking(move || answer_reads(&shared, batch)).await;
            drop(permit);
        });
    }
}

/// Answer one read from the local state machine (the caller established that this is
/// linearizable: a valid leader lease).
pub fn read_local(shared: &Shared, req: &MetaRequest) -> Result<MetaReply, PondError> {
    let routing = shared.routing();
    let res = (|| -> Result<MetaReply, ApplyError> {
        let txn = shared
            .db
            .begin_read()
            .map_err(|e| ApplyError::Store(e.into()))?;
        let inodes = txn
            .open_table(INODES)
            .map_err(|e| ApplyError::Store(e.into()))?;
        let dirents = txn
            .open_table(DIRENTS)
            .map_err(|e| ApplyError::Store(e.into()))?;
        let xattrs = txn
            .open_table(XATTRS)
            .map_err(|e| ApplyError::Store(e.into()))?;
        namespace::read(&inodes, &dirents, &xattrs, &routing, req)
    })();
    match res {
        Ok(v) => Ok(v),
        Err(ApplyError::Op(e)) => Err(e),
        Err(ApplyError::Store(e)) => {
            tracing::error!(error = %e, "read from state machine");
            Err(PondError::new(ErrorCode::Internal, e.to_string()))
        }
    }
}

/// Reads that may scan many keys run on the blocking pool; point reads run inline (a redb
/// point lookup costs microseconds, less than a thread hop).
fn is_long_read(req: &MetaRequest) -> bool {
    matches!(
        req,
        MetaRequest::ReadDir { .. } | MetaRequest::ReadDirPlus { .. } | MetaRequest::Resolve { .. }
    )
}

fn answer_reads(shared: &Shared, batch: Vec<ReadReq>) {
    let routing = shared.routing();
    let view = (|| -> Result<_, redb::Error> {
        let txn = shared.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        let dirents = txn.open_table(DIRENTS)?;
        let xattrs = txn.open_table(XATTRS)?;
        Ok((txn, inodes, dirents, xattrs))
    })();
    let (_txn, inodes, dirents, xattrs) = match view {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "open read transaction");
            for r in batch {
                let _ =
                    r.tx.send(Err(PondError::new(ErrorCode::Internal, e.to_string())));
            }
            return;
        }
    };
    for r in batch {
        let res = match namespace::read(&inodes, &dirents, &xattrs, &routing, &r.req) {
            Ok(v) => Ok(v),
            Err(ApplyError::Op(e)) => Err(e),
            Err(ApplyError::Store(e)) => {
                tracing::error!(error = %e, "read from state machine");
                Err(PondError::new(ErrorCode::Internal, e.to_string()))
            }
        };
        let _ = r.tx.send(res);
    }
}

pub struct MetaService {
    pub id: u64,
    pub token: String,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub proposer: Arc<Proposer>,
    pub reader: mpsc::Sender<ReadReq>,
    pub manager: Arc<Manager>,
    pub lease: Arc<Lease>,
}

impl MetaService {
    fn check_token<T>(&self, req: &Request<T>, method: &str) -> Result<(), Status> {
        let ok = req
            .metadata()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| constant_time_eq(v.as_bytes(), self.token.as_bytes()));
        if ok {
            return Ok(());
        }
        let peer = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        tracing::warn!(%peer, method, "refused request without a valid cluster token");
        Err(to_status(&PondError::new(
            ErrorCode::Unauthenticated,
            "missing or wrong cluster token",
        )))
    }

    /// Queue a write and wait for its Raft entry to apply.
    pub async fn propose(&self, op: Op) -> Result<OpReply, PondError> {
        self.proposer.propose(op).await
    }

    /// A linearizable read: from local state under a valid leader lease, otherwise through
    /// the batched read-index path.
    async fn read(&self, req: MetaRequest) -> Result<MetaReply, PondError> {
        if self.lease.decide(READ_LEASE) == LeaseDecision::Local {
            if is_long_read(&req) {
                let shared = self.shared.clone();
                return tokio::task::spawn_blocking(move || read_local(&shared, &req))
                    .await
                    .map_err(|e| PondError::new(ErrorCode::Internal, e.to_string()))?;
            }
            return read_local(&self.shared, &req);
        }
        self.read_index(req).await
    }

    async fn read_index(&self, req: MetaRequest) -> Result<MetaReply, PondError> {
        let (tx, rx) = oneshot::channel();
        self.reader
            .send(ReadReq { req, tx })
            .await
            .map_err(|_| PondError::new(ErrorCode::Unavailable, "shutting down"))?;
        rx.await
            .map_err(|_| PondError::new(ErrorCode::Unavailable, "read dropped"))?
    }

    fn status(&self) -> ClusterReply {
        let m = self.raft.metrics().borrow().clone();
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| MetaMember {
                id: *id,
                addr: n.addr.clone(),
                is_leader: m.current_leader == Some(*id),
            })
            .collect();
        ClusterReply::MetaStatus {
            leader: m.current_leader,
            members,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn origin_of<T>(req: &Request<T>) -> Option<Origin> {
    let get = |k: &str| req.metadata().get(k)?.to_str().ok()?.parse::<u64>().ok();
    Some(Origin {
        client: ClientId(get(CLIENT_ID_HEADER)?),
        request: RequestId(get(REQUEST_ID_HEADER)?),
    })
}

fn decode<T: serde::de::DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    postcard::from_bytes(&m.payload).map_err(|e| {
        to_status(&PondError::new(
            ErrorCode::Malformed,
            format!("raft message: {e}"),
        ))
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = postcard::to_stdvec(v).map_err(|e| {
        to_status(&PondError::new(
            ErrorCode::Internal,
            format!("encode raft reply: {e}"),
        ))
    })?;
    Ok(Response::new(RaftMessage { payload }))
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn op(&self, request: Request<MetaRequest>) -> Result<Response<MetaReply>, Status> {
        self.check_token(&request, "op")?;
        let origin = origin_of(&request);
        let req = request.into_inner();
        let span = tracing::debug_span!(
            "meta_op",
            op = req.name(),
            client = origin.map(|o| o.client.0),
            req = origin.map(|o| o.request.0)
        );
        async move {
            let res = if req.is_read() {
                self.read(req).await
            } else {
                match self.propose(Op::Meta { origin, req }).await {
                    Ok(OpReply::Meta(r)) => Ok(r),
                    Ok(other) => Err(PondError::new(
                        ErrorCode::Internal,
                        format!("unexpected reply {other:?}"),
                    )),
                    Err(e) => Err(e),
                }
            };
            res.map(Response::new).map_err(|e| to_status(&e))
        }
        .instrument(span)
        .await
    }

    async fn cluster(
        &self,
        request: Request<ClusterRequest>,
    ) -> Result<Response<ClusterReply>, Status> {
        self.check_token(&request, "cluster")?;
        let req = request.into_inner();
        let res = match req {
            ClusterRequest::Heartbeat(hb) => {
                let span = tracing::debug_span!("heartbeat", node = %hb.node);
                self.manager
                    .heartbeat(hb, &self.lease)
                    .instrument(span)
                    .await
                    .map(ClusterReply::Heartbeat)
            }
            ClusterRequest::GetRouting { have } => match self.manager.leader_check() {
                Ok(()) => {
                    let r = self.shared.routing();
                    Ok(ClusterReply::Routing(if r.version > have {
                        Some(r)
                    } else {
                        None
                    }))
                }
                Err(e) => Err(e),
            },
            ClusterRequest::BootstrapChains { replicas } => {
                match self
                    .propose(Op::Cluster(crate::types::ClusterCmd::BootstrapChains {
                        replicas,
                    }))
                    .await
                {
                    Ok(OpReply::Cluster(r)) => Ok(r),
                    Ok(other) => Err(PondError::new(
                        ErrorCode::Internal,
                        format!("unexpected reply {other:?}"),
                    )),
                    Err(e) => Err(e),
                }
            }
            ClusterRequest::MetaStatus => Ok(self.status()),
        };
        res.map(Response::new).map_err(|e| to_status(&e))
    }

    async fn raft_append(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_token(&request, "raft_append")?;
        let req: openraft::raft::AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
        encode(&self.raft.append_entries(req).await)
    }

    async fn raft_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_token(&request, "raft_vote")?;
        let req: openraft::raft::VoteRequest<u64> = decode(request.get_ref())?;
        encode(&self.raft.vote(req).await)
    }

    async fn raft_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_token(&request, "raft_snapshot")?;
        let req: openraft::raft::InstallSnapshotRequest<TypeConfig> = decode(request.get_ref())?;
        encode(&self.raft.install_snapshot(req).await)
    }
}
