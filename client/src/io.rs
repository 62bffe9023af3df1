//! Chunk I/O with routing and retries: the layer between the file API and the raw data-plane
//! client (`net::DataClient`).
//!
//! - Updates (write, truncate, remove) go to the chain head with one `RequestId` reused across
//!   retries, so a retried update is applied once.
//! - Reads are grouped per storage node into batched reads (`DataRequest::Read`), each piece on
//!   the least-loaded serving replica of its chain; failed pieces are retried on other replicas.
//! - Every call has a deadline (the `DataClient`'s), every retry loop a time and attempt budget
//!   (`limits`), and stale routing is refreshed before retrying.

use crate::error::{ClientError, Result};
use crate::limits;
use crate::net::DataClient;
use crate::routing::{Outstanding, Route, RoutingCache};
use crate::stripe::Piece;
use bytes::Bytes;
use futures::StreamExt;
use pond_proto::data::{ReadItem, UpdateReply};
use pond_proto::layout::Layout;
use pond_proto::{ChainId, ChunkId, ErrorCode, InodeId, RequestId, RoutingVersion, TargetId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reads of up to this many bytes share batched requests; bigger pieces get their own request
/// so that they stream in parallel.
const READ_BATCH_BYTES_TARGET: u64 = 1 << 20;

/// One range of one chunk to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRead {
    pub chunk: ChunkId,
    pub chain: ChainId,
    pub offset: u32,
    pub len: u32,
}

/// Which replica answered one piece of a read (diagnostics: the chaos workload records it next
/// to each register read, so a stale read names the replica and versions that produced it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadSource {
    pub chunk: ChunkId,
    pub target: TargetId,
    pub addr: String,
    /// The chain version the client sent (its routing table's).
    pub chain_version: pond_proto::ChainVersion,
    /// The chunk version the replica returned, and the chain version it was committed under.
    pub version: pond_proto::ChunkVersion,
    pub committed_under: pond_proto::ChainVersion,
}

tokio::task_local! {
    /// Set (with `READ_SOURCES.scope`) by a caller that wants every piece its reads in this
    /// task got, with the replica that answered it; unset, nothing is recorded.
    pub static READ_SOURCES: std::cell::RefCell<Vec<ReadSource>>;
}

fn note_read(route: &Route, chunk: ChunkId, ok: &pond_proto::data::ReadOk) {
    tracing::debug!(%chunk, target = %route.at.target, addr = %route.addr,
        chain_version = %route.at.chain_version, version = %ok.version,
        committed_under = %ok.chain_version, "piece read");
    let _ = READ_SOURCES.try_with(|v| {
        v.borrow_mut().push(ReadSource {
            chunk,
            target: route.at.target,
            addr: route.addr.clone(),
            chain_version: route.at.chain_version,
            version: ok.version,
            committed_under: ok.chain_version,
        })
    });
}

/// Pieces (by index) sent together to one node, with the route each was read from.
type Batch = Vec<(usize, Route, Outstanding)>;

#[derive(Clone)]
pub struct DataPath {
    pub(crate) data: DataClient,
    pub(crate) routing: Arc<RoutingCache>,
    /// Time budget of one chunk operation's retries.
    pub(crate) retry_budget: Duration,
}

/// What to do after a failed attempt.
enum Next {
    /// Give up with this error.
    Fail,
    /// Refresh routing (the replica's view differs from ours) and retry at once.
    Refresh,
    /// Back off, refresh routing if due, retry (the replica may be down).
    Backoff,
}

fn classify(e: &ClientError) -> Next {
    match e.code() {
        ErrorCode::StaleChainVersion | ErrorCode::TargetNotServing => Next::Refresh,
        ErrorCode::Unavailable
        | ErrorCode::Timeout
        | ErrorCode::VersionGap
        | ErrorCode::Checksum => Next::Backoff,
        _ => Next::Fail,
    }
}

/// Time and attempt budget of one chunk operation.
struct Budget {
    start: Instant,
    attempts: u32,
    time: Duration,
}

impl Budget {
    fn new(time: Duration) -> Budget {
        Budget {
            start: Instant::now(),
            attempts: 0,
            time,
        }
    }

    /// Counts an attempt; false when the budget is spent.
    fn spend(&mut self) -> bool {
        self.attempts += 1;
        self.attempts < limits::CHUNK_RETRY_ATTEMPTS_MAX && self.start.elapsed() < self.time
    }

    fn backoff(&self) -> Duration {
        let exp = self.attempts.min(10);
        let ms = (limits::RETRY_BACKOFF_MIN_MS << exp).min(limits::RETRY_BACKOFF_MAX_MS);
        Duration::from_millis(ms)
    }
}

impl DataPath {
    pub fn new(data: DataClient, routing: Arc<RoutingCache>, retry_budget: Duration) -> DataPath {
        DataPath {
            data,
            routing,
            retry_budget,
        }
    }

    /// Runs an update against the head of `chain` until it succeeds or the budget is spent.
    async fn update<T, F, Fut>(&self, chain: ChainId, what: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut(Route, RequestId) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let request = self.data.next_request_id();
        let mut budget = Budget::new(self.retry_budget);
        loop {
            let seen = self.routing.version();
            let res = match self.routing.head(chain) {
                Ok(route) => {
                    let target = route.at.target;
                    let _g = self.routing.begin(target);
                    let r = f(route, request).await;
                    if let Err(e) = &r
                        && matches!(classify(e), Next::Backoff)
                    {
                        self.routing.penalize(target);
                    }
                    r
                }
                Err(e) => Err(e),
            };
            let e = match res {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let next = classify(&e);
            if matches!(next, Next::Fail) || !budget.spend() {
                tracing::debug!(%chain, what, error = %e, attempts = budget.attempts, "update failed");
                return Err(e);
            }
            tracing::debug!(%chain, what, error = %e, attempt = budget.attempts, "update retry");
            self.after_failure(next, seen, &budget).await;
        }
    }

    async fn after_failure(&self, next: Next, seen: RoutingVersion, budget: &Budget) {
        match next {
            Next::Refresh => {
                let before = self.routing.version();
                let _ = self.routing.refresh(Some(seen)).await;
                if self.routing.version() == before {
                    // Meta has nothing newer yet: wait for the cluster manager to catch up.
                    tokio::time::sleep(budget.backoff()).await;
                }
            }
            Next::Backoff => {
                tokio::time::sleep(budget.backoff()).await;
                let _ = self.routing.refresh(None).await;
            }
            Next::Fail => unreachable!("caller returned"),
        }
    }

    /// Writes `data` at `offset` of chunk `index` of `inode`.
    #[tracing::instrument(level = "debug", skip_all, fields(%inode, index, offset, len = data.len()))]
    pub async fn write_piece(
        &self,
        inode: InodeId,
        layout: &Layout,
        index: u64,
        offset: u32,
        data: Bytes,
    ) -> Result<UpdateReply> {
        let chain = layout.chain_of(index);
        let chunk = ChunkId::new(inode, index);
        self.update(chain, "write", |route, request| {
            let data = data.clone();
            async move {
                Ok(self
                    .data
                    .write_chunk(
                        &route.addr,
                        route.at,
                        chunk,
                        offset,
                        layout.chunk_bytes,
                        data,
                        request,
                    )
                    .await?)
            }
        })
        .await
    }

    /// Cuts chunk `index` of `inode` to `length` bytes.
    pub async fn truncate_chunk(
        &self,
        inode: InodeId,
        layout: &Layout,
        index: u64,
        length: u32,
    ) -> Result<()> {
        let chain = layout.chain_of(index);
        let chunk = ChunkId::new(inode, index);
        self.update(chain, "truncate", |route, request| async move {
            self.data
                .truncate_chunk(
                    &route.addr,
                    route.at,
                    chunk,
                    length,
                    layout.chunk_bytes,
                    request,
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Removes chunks `from_index..` of `inode` from `chain`.
    pub async fn remove_from(
        &self,
        inode: InodeId,
        chain: ChainId,
        from_index: u64,
    ) -> Result<u64> {
        self.update(chain, "remove", |route, request| async move {
            Ok(self
                .data
                .remove_chunks(&route.addr, route.at, inode, from_index, request)
                .await?)
        })
        .await
    }

    /// Length of `inode` as the chunks on storage say: the end of its last chunk over every
    /// chain of the layout (asked of each chain's tail-most serving replica through the head
    /// path's routing; used by recovery tools, not by the hot path).
    pub async fn stored_length(&self, inode: InodeId, layout: &Layout) -> Result<u64> {
        let mut chains = layout.chains.clone();
        chains.sort();
        chains.dedup();
        let mut end = 0u64;
        for chain in chains {
            let last = self
                .update(chain, "query_length", |route, _| async move {
                    Ok(self.data.query_length(&route.addr, route.at, inode).await?)
                })
                .await?;
            if let Some((index, len)) = last {
                end = end.max(index * layout.chunk_bytes as u64 + len as u64);
            }
        }
        Ok(end)
    }

    /// Reads `pieces` of `inode`. Each result holds the bytes the chunk has in the piece's
    /// range: shorter than the piece (or empty) where the chunk is shorter or absent — the
    /// caller zero-fills up to the file size.
    pub async fn read_pieces(
        &self,
        inode: InodeId,
        layout: &Layout,
        pieces: &[Piece],
    ) -> Result<Vec<Bytes>> {
        let reads: Vec<ChunkRead> = pieces
            .iter()
            .map(|p| ChunkRead {
                chunk: ChunkId::new(inode, p.index),
                chain: layout.chain_of(p.index),
                offset: p.chunk_offset,
                len: p.len,
            })
            .collect();
        self.read_chunks(&reads).await
    }

    /// One attempt at one piece on its preferred or the least-loaded replica. `Err(Some(target))`: that replica
    /// failed it; `Err(None)`: no attempt was made.
    async fn read_one(&self, p: &ChunkRead) -> std::result::Result<Bytes, Option<TargetId>> {
        let route = self
            .routing
            .reader(p.chain, &[], Some(p.chunk))
            .map_err(|_| None)?;
        let target = route.at.target;
        let _g = self.routing.begin(target);
        let item = ReadItem {
            at: route.at,
            chunk: p.chunk,
            offset: p.offset,
            length: p.len,
        };
        match self.data.read_chunks(&route.addr, vec![item]).await {
            Ok(mut items) if items.len() == 1 => match items.pop().expect("one item") {
                Ok((ok, bytes)) if bytes.len() <= p.len as usize => {
                    note_read(&route, p.chunk, &ok);
                    Ok(bytes)
                }
                _ => Err(Some(target)),
            },
            Ok(_) => Err(Some(target)),
            Err(_) => {
                self.routing.penalize(target);
                Err(Some(target))
            }
        }
    }

    /// Reads ranges of chunks of any files, batched per storage node (see `read_pieces`).
    #[tracing::instrument(level = "debug", skip_all, fields(pieces = pieces.len()))]
    pub async fn read_chunks(&self, pieces: &[ChunkRead]) -> Result<Vec<Bytes>> {
        let mut excluded: Vec<Vec<TargetId>> = vec![Vec::new(); pieces.len()];
        // One piece (a small random read, a FUSE read within one chunk): one request, none of
        // the grouping below. Any failure goes on through the general path with the replica
        // that failed excluded.
        if let [p] = pieces {
            match self.read_one(p).await {
                Ok(b) => return Ok(vec![b]),
                Err(Some(t)) => excluded[0].push(t),
                Err(None) => {}
            }
        }
        let mut out: Vec<Option<Bytes>> = vec![None; pieces.len()];
        let mut todo: Vec<usize> = (0..pieces.len()).collect();
        let mut budget = Budget::new(self.retry_budget);
        while !todo.is_empty() {
            let seen = self.routing.version();
            // 1. Choose a replica per piece and group by node.
            let mut batches: HashMap<String, Vec<Batch>> = HashMap::new();
            let mut failed: Vec<(usize, ClientError)> = Vec::new();
            for &k in &todo {
                let chain = pieces[k].chain;
                match self
                    .routing
                    .reader(chain, &excluded[k], Some(pieces[k].chunk))
                {
                    Ok(route) => {
                        let g = self.routing.begin(route.at.target);
                        let groups = batches.entry(route.addr.clone()).or_default();
                        let fits = groups.last().is_some_and(|b| {
                            let bytes: u64 = b.iter().map(|(i, _, _)| pieces[*i].len as u64).sum();
                            b.len() < limits::READ_BATCH_ITEMS_MAX
                                && bytes + pieces[k].len as u64 <= READ_BATCH_BYTES_TARGET
                        });
                        if !fits {
                            groups.push(Vec::new());
                        }
                        groups.last_mut().expect("pushed above").push((k, route, g));
                    }
                    Err(e) => failed.push((k, e)),
                }
            }
            // 2. Send every batch, many in flight.
            let calls = batches
                .into_iter()
                .flat_map(|(addr, groups)| groups.into_iter().map(move |g| (addr.clone(), g)));
            let mut replies = futures::stream::iter(calls.map(|(addr, group)| {
                let items: Vec<ReadItem> = group
                    .iter()
                    .map(|(k, route, _)| ReadItem {
                        at: route.at,
                        chunk: pieces[*k].chunk,
                        offset: pieces[*k].offset,
                        length: pieces[*k].len,
                    })
                    .collect();
                async move {
                    let r = self.data.read_chunks(&addr, items).await;
                    (group, r)
                }
            }))
            .buffer_unordered(limits::PIECES_IN_FLIGHT_MAX);
            // 3. Collect: bytes, or a per-piece error to retry elsewhere.
            while let Some((group, r)) = replies.next().await {
                match r {
                    Ok(items) => {
                        for ((k, route, _g), item) in group.into_iter().zip(items) {
                            match item {
                                Ok((ok, bytes)) => {
                                    if bytes.len() > pieces[k].len as usize {
                                        failed.push((
                                            k,
                                            ClientError::new(
                                                ErrorCode::Malformed,
                                                "read reply longer than asked",
                                            ),
                                        ));
                                    } else {
                                        debug_assert!(ok.version.0 > 0 || bytes.is_empty());
                                        note_read(&route, pieces[k].chunk, &ok);
                                        out[k] = Some(bytes);
                                    }
                                }
                                Err(e) => {
                                    if e.code == ErrorCode::Checksum {
                                        tracing::warn!(target = %route.at.target, chunk = ?pieces[k].chunk, "checksum mismatch, reading another replica");
                                    }
                                    excluded[k].push(route.at.target);
                                    failed.push((k, e.into()));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let e = ClientError::from(e);
                        for (k, route, _g) in group {
                            self.routing.penalize(route.at.target);
                            excluded[k].push(route.at.target);
                            failed.push((k, ClientError::new(e.code(), e.to_string())));
                        }
                    }
                }
            }
            drop(replies);
            if failed.is_empty() {
                break;
            }
            // 4. Retry what failed, within budget.
            let mut worst = Next::Backoff;
            for (_, e) in &failed {
                match classify(e) {
                    Next::Fail => {
                        let (_, e) = failed
                            .into_iter()
                            .find(|(_, e)| matches!(classify(e), Next::Fail))
                            .expect("found above");
                        return Err(e);
                    }
                    Next::Refresh => worst = Next::Refresh,
                    Next::Backoff => {}
                }
            }
            if !budget.spend() {
                return Err(failed.into_iter().next().expect("not empty").1);
            }
            todo = failed.iter().map(|(k, _)| *k).collect();
            for &k in &todo {
                // Every replica tried: start over with fresh routing.
                let chain = pieces[k].chain;
                let serving = self.routing.current().serving_targets(chain).len();
                if excluded[k].len() >= serving {
                    excluded[k].clear();
                }
            }
            tracing::debug!(retry = todo.len(), attempt = budget.attempts, "read retry");
            self.after_failure(worst, seen, &budget).await;
        }
        Ok(out
            .into_iter()
            .map(|b| b.expect("every piece read"))
            .collect())
    }
}
