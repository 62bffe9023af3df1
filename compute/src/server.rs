//! The executor service: accepts tasks over TCP (see `pond_client::dataframe::wire`), fetches
//! the task's input files from pond into a per-task directory, runs DuckDB over them there,
//! and replies with the result or writes it into pond.

use crate::engine::{Engine, EngineError, EngineOutput, EngineResult};
use crate::limits::*;
use pond_client::Client;
use pond_client::dataframe::wire::{
    self, COMPUTE_PROTOCOL_VERSION, FailureKind, Hello, REQUEST_FRAME_BYTES_MAX, ResultBody,
    TaskFailure, TaskReply, TaskResult, TaskSpec, TaskStats,
};
use pond_proto::ids::NodeId;
use pond_proto::layout::PlacementHint;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, info, warn};

pub(crate) struct Shared {
    pub node: u32,
    pub token: String,
    pub work_dir: PathBuf,
    pub client: Arc<Client>,
    /// The storage node hosting this executor: its chunk engines serve local chunks.
    pub local: Option<Arc<pond_storage::Node>>,
    pub slots: Arc<Semaphore>,
}

/// Writes this executor's address into the registry unless it is there already.
pub(crate) async fn register_if_needed(shared: &Shared, advertise: &str) -> Result<bool, String> {
    let c = &shared.client;
    let path = format!("{}/node-{}", crate::REGISTRY_DIR, shared.node);
    match c.read_file(&path).await {
        Ok(b) if b == advertise.as_bytes() => return Ok(false),
        _ => {}
    }
    // Written under a temporary name and renamed over the entry, so a session reading the
    // registry sees the old address or the new one, never the empty file a create leaves
    // before its write (a session that read that empty entry once kept "" as the address).
    let tmp = format!(
        "{}/.node-{}.{:016x}.tmp",
        crate::REGISTRY_DIR,
        shared.node,
        pond_proto::os_random_u64()
    );
    c.write_file(&tmp, advertise.as_bytes())
        .await
        .map_err(|e| format!("write {tmp}: {e}"))?;
    if let Err(e) = c
        .rename_path(&tmp, &path, pond_proto::meta::RenameMode::Replace)
        .await
    {
        let _ = c.unlink_path(&tmp).await;
        return Err(format!("rename {tmp} -> {path}: {e}"));
    }
    Ok(true)
}

/// Keeps the address in the registry while the registry exists (see `REGISTRY_POLL_MS`).
pub(crate) async fn registry_loop(shared: Arc<Shared>, advertise: String) {
    loop {
        match shared.client.exists(crate::REGISTRY_DIR).await {
            Ok(true) => match register_if_needed(&shared, &advertise).await {
                Ok(true) => info!(%advertise, "compute: registered"),
                Ok(false) => {}
                Err(e) => info!(error = %e, "compute: registration failed; will retry"),
            },
            Ok(false) => {}
            Err(e) => info!(error = %e, "compute: registry check failed; will retry"),
        }
        tokio::time::sleep(Duration::from_millis(REGISTRY_POLL_MS)).await;
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "compute: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(
            async move {
                if let Err(e) = serve_conn(sock, shared).await {
                    info!(error = %e, "compute: connection ended");
                }
            }
            .instrument(tracing::info_span!("compute_conn", %peer)),
        );
    }
}

fn fail(node: u32, kind: FailureKind, message: impl Into<String>) -> TaskReply {
    TaskReply::Failed(TaskFailure {
        kind,
        message: message.into(),
        node,
    })
}

async fn serve_conn(sock: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let (mut rd, mut wr) = sock.into_split();
    let node = shared.node;
    // 1. hello with the cluster token, then the task, both within a short timeout.
    let req = tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), async {
        let hello: Hello = wire::read_frame(&mut rd, REQUEST_FRAME_BYTES_MAX).await?;
        let spec: TaskSpec = wire::read_frame(&mut rd, REQUEST_FRAME_BYTES_MAX).await?;
        Ok::<_, std::io::Error>((hello, spec))
    })
    .await;
    let (hello, spec) = match req {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no task sent",
            ));
        }
    };
    if hello.version != COMPUTE_PROTOCOL_VERSION || hello.token != shared.token {
        let reply = fail(
            node,
            FailureKind::Unauthorized,
            "bad cluster token or protocol version",
        );
        return wire::write_frame(&mut wr, &reply).await;
    }
    // 2. a slot, or Busy so that the planner tries another replica.
    let Ok(_slot) = shared.slots.clone().try_acquire_owned() else {
        let reply = fail(
            node,
            FailureKind::Busy,
            format!("executor runs {TASKS_MAX} tasks"),
        );
        return wire::write_frame(&mut wr, &reply).await;
    };
    // 3. run, racing the deadline and the caller hanging up.
    let cancel = Arc::new(tokio::sync::Notify::new());
    let watch = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut b = [0u8; 1];
            // The caller sends nothing after the task: EOF or an error means it went away.
            let _ = rd.read(&mut b).await;
            cancel.notify_one();
        })
    };
    let span = tracing::info_span!("task", job = %spec.job, task = spec.task);
    let reply = run_task(&shared, spec, cancel).instrument(span).await;
    watch.abort();
    wire::write_frame(&mut wr, &reply).await
}

fn validate(spec: &TaskSpec) -> Result<(), String> {
    let l = &spec.limits;
    if !(TASK_MEMORY_BYTES_MIN..=TASK_MEMORY_BYTES_MAX).contains(&l.memory_bytes) {
        return Err(format!(
            "memory limit {} outside {TASK_MEMORY_BYTES_MIN}..={TASK_MEMORY_BYTES_MAX}",
            l.memory_bytes
        ));
    }
    if !(1..=TASK_THREADS_MAX).contains(&l.threads) {
        return Err(format!(
            "threads {} outside 1..={TASK_THREADS_MAX}",
            l.threads
        ));
    }
    if l.deadline_ms == 0 || l.deadline_ms > TASK_DEADLINE_MS_MAX {
        return Err(format!(
            "deadline {} ms outside 1..={TASK_DEADLINE_MS_MAX}",
            l.deadline_ms
        ));
    }
    let files: usize = spec.inputs.iter().map(|i| i.files.len()).sum();
    if files > TASK_FILES_MAX {
        return Err(format!("{files} input files exceed {TASK_FILES_MAX}"));
    }
    for f in spec.inputs.iter().flat_map(|i| &i.files) {
        if !f.starts_with('/') {
            return Err(format!("input {f:?} is not an absolute pond path"));
        }
    }
    Ok(())
}

async fn run_task(
    shared: &Arc<Shared>,
    spec: TaskSpec,
    cancel: Arc<tokio::sync::Notify>,
) -> TaskReply {
    let node = shared.node;
    if let Err(m) = validate(&spec) {
        return fail(node, FailureKind::Sql, m);
    }
    let deadline = Instant::now() + Duration::from_millis(spec.limits.deadline_ms);
    let dir = match tempfile::Builder::new()
        .prefix(&format!("task-{}-{}-", sanitize(&spec.job), spec.task))
        .tempdir_in(&shared.work_dir)
    {
        Ok(d) => d,
        Err(e) => return fail(node, FailureKind::Internal, format!("create task dir: {e}")),
    };
    let mut stats = TaskStats {
        node,
        ..TaskStats::default()
    };

    // 1. fetch inputs (bounded by the deadline and cancellation).
    let t = Instant::now();
    let fetched = tokio::select! {
        r = fetch_inputs(shared, &spec, dir.path(), &mut stats) => r,
        _ = tokio::time::sleep_until(deadline.into()) => {
            return fail(node, FailureKind::Deadline, "deadline passed while fetching inputs");
        }
        _ = cancel.notified() => return fail(node, FailureKind::Cancelled, "caller went away"),
    };
    stats.fetch_ms = t.elapsed().as_millis() as u64;
    let locals = match fetched {
        Ok(l) => l,
        Err(e) => return fail(node, FailureKind::Io, e),
    };

    // 2. substitute {i} with scans of the local copies.
    let sql = match wire::substitute(&spec.sql, |i| match locals.get(i) {
        Some(files) => Ok(scan_of(files)),
        None => Err(format!(
            "{{{i}}} names no input (task has {})",
            locals.len()
        )),
    }) {
        Ok(s) => s,
        Err(m) => return fail(node, FailureKind::Sql, m),
    };

    // 3. run DuckDB on a blocking thread; interrupt it at the deadline or on cancellation.
    let out_local = dir.path().join("out.parquet");
    let output = match &spec.output {
        wire::TaskOutput::ArrowIpc => EngineOutput::ArrowIpc,
        wire::TaskOutput::Rows => EngineOutput::Rows,
        wire::TaskOutput::Parquet { .. } => EngineOutput::ParquetFile(out_local.clone()),
        wire::TaskOutput::Buckets { paths, by, heads } => {
            if paths.is_empty() || paths.len() != heads.len() || paths.len() > BUCKETS_MAX {
                return fail(
                    node,
                    FailureKind::Sql,
                    format!(
                        "{} bucket paths and {} heads (1..={BUCKETS_MAX}, equal)",
                        paths.len(),
                        heads.len()
                    ),
                );
            }
            EngineOutput::Buckets {
                dir: dir.path().join("buckets"),
                by: by.clone(),
                n: paths.len() as u32,
            }
        }
    };
    let t = Instant::now();
    let limits = spec.limits;
    let dir_path = dir.path().to_path_buf();
    let (htx, hrx) = tokio::sync::oneshot::channel();
    let job = tokio::task::spawn_blocking(move || {
        let engine = Engine::open(&dir_path, &limits)?;
        let _ = htx.send(engine.interrupt_handle());
        engine.run(&sql, &output, wire::FRAME_BYTES_MAX - (1 << 20))
    });
    let handle = hrx.await.ok();
    tokio::pin!(job);
    let mut stopped: Option<FailureKind> = None;
    let joined = loop {
        tokio::select! {
            r = &mut job => break r,
            _ = tokio::time::sleep_until(deadline.into()), if stopped.is_none() => {
                stopped = Some(FailureKind::Deadline);
                if let Some(h) = &handle { h.interrupt(); }
            }
            _ = cancel.notified(), if stopped.is_none() => {
                stopped = Some(FailureKind::Cancelled);
                if let Some(h) = &handle { h.interrupt(); }
            }
        }
    };
    stats.query_ms = t.elapsed().as_millis() as u64;
    let result = match joined {
        Ok(Ok(r)) => r,
        Ok(Err(EngineError { kind, message })) => {
            let kind = match (stopped, kind) {
                (Some(s), FailureKind::Cancelled) => s,
                (_, k) => k,
            };
            let message = match kind {
                FailureKind::Deadline => {
                    format!("deadline of {} ms passed: {message}", limits.deadline_ms)
                }
                _ => message,
            };
            return fail(node, kind, message);
        }
        Err(e) => return fail(node, FailureKind::Internal, format!("query thread: {e}")),
    };

    // 4. shape the reply (and copy a Parquet output into pond, head on this node).
    let t = Instant::now();
    let (rows, body) = match (result, &spec.output) {
        (EngineResult::ArrowIpc { bytes, rows }, _) => (rows, ResultBody::ArrowIpc(bytes)),
        (EngineResult::Rows(set), _) => (set.rows.len() as u64, ResultBody::Rows(set)),
        (EngineResult::Parquet { rows }, wire::TaskOutput::Parquet { path }) => {
            match upload(&shared.client, node, &out_local, path).await {
                Ok(bytes) => (
                    rows,
                    ResultBody::Parquet {
                        path: path.clone(),
                        bytes,
                    },
                ),
                Err(e) => return fail(node, FailureKind::Io, format!("write {path}: {e}")),
            }
        }
        (EngineResult::Buckets { rows, files }, wire::TaskOutput::Buckets { paths, heads, .. }) => {
            let mut bytes = Vec::with_capacity(files.len());
            for ((local, remote), head) in files.iter().zip(paths).zip(heads) {
                match upload(&shared.client, *head, local, remote).await {
                    Ok(b) => bytes.push(b),
                    Err(e) => return fail(node, FailureKind::Io, format!("write {remote}: {e}")),
                }
            }
            (rows, ResultBody::Buckets { bytes })
        }
        (EngineResult::Parquet { .. } | EngineResult::Buckets { .. }, _) => {
            return fail(
                node,
                FailureKind::Internal,
                "parquet result for a non-parquet output",
            );
        }
    };
    stats.output_ms = t.elapsed().as_millis() as u64;
    info!(
        rows,
        fetch_ms = stats.fetch_ms,
        query_ms = stats.query_ms,
        input_bytes = stats.input_bytes,
        "task done"
    );
    TaskReply::Done(TaskResult { rows, body, stats })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

fn scan_of(files: &[PathBuf]) -> String {
    if files.is_empty() {
        // An input with no files: an empty relation. Parquet inputs always name columns, so
        // SQL naming columns of an empty input fails at bind time; the planner avoids this.
        return "(SELECT NULL AS __empty WHERE false)".to_string();
    }
    let list: Vec<String> = files
        .iter()
        .map(|p| {
            format!(
                "'{}'",
                p.to_str()
                    .expect("task paths are UTF-8")
                    .replace('\'', "''")
            )
        })
        .collect();
    format!("read_parquet([{}])", list.join(", "))
}

/// Copies every input file into `dir/in/`, once per distinct pond path, up to
/// `FETCH_FILES_PARALLEL` files at a time: chunks this node holds a serving replica of come
/// straight from its chunk engines, the rest through the client. Returns the local paths per
/// input.
async fn fetch_inputs(
    shared: &Arc<Shared>,
    spec: &TaskSpec,
    dir: &Path,
    stats: &mut TaskStats,
) -> Result<Vec<Vec<PathBuf>>, String> {
    use futures::StreamExt;
    let in_dir = dir.join("in");
    tokio::fs::create_dir_all(&in_dir)
        .await
        .map_err(|e| format!("create {}: {e}", in_dir.display()))?;
    // Distinct pond paths, in order of first mention, each with its local name.
    let mut seen: std::collections::HashMap<&str, PathBuf> = Default::default();
    let mut distinct: Vec<(&str, PathBuf)> = Vec::new();
    for remote in spec.inputs.iter().flat_map(|i| &i.files) {
        if !seen.contains_key(remote.as_str()) {
            let local = in_dir.join(format!("{}.parquet", seen.len()));
            seen.insert(remote, local.clone());
            distinct.push((remote, local));
        }
    }
    let jobs: Vec<_> = distinct
        .iter()
        .map(|(remote, local)| {
            let (shared, remote, local) = (shared.clone(), remote.to_string(), local.clone());
            async move { copy_in(&shared, &remote, &local).await }
        })
        .collect();
    let mut copies = futures::stream::iter(jobs).buffer_unordered(FETCH_FILES_PARALLEL);
    while let Some(r) = copies.next().await {
        let (n, local_n) = r?;
        stats.input_bytes += n;
        stats.input_local_bytes += local_n;
    }
    Ok(spec
        .inputs
        .iter()
        .map(|i| i.files.iter().map(|f| seen[f.as_str()].clone()).collect())
        .collect())
}

/// One chunk of a file to copy in: where it lands in the file and which replica is local.
struct Piece {
    index: u64,
    offset: u64,
    len: u64,
    at: Option<pond_proto::data::ChainRef>,
}

/// Copies `remote` to `local`. Returns (bytes, bytes read from this node's chunk engines).
async fn copy_in(shared: &Arc<Shared>, remote: &str, local: &Path) -> Result<(u64, u64), String> {
    let c = &shared.client;
    let f = c
        .open(remote, pond_client::OpenOptions::read())
        .await
        .map_err(|e| format!("open {remote}: {e}"))?;
    let attr = f.stat().await.map_err(|e| format!("stat {remote}: {e}"))?;
    let size = f.size().max(attr.size);
    let mut pieces = Vec::new();
    if let (Some(layout), Some(node)) = (&attr.layout, &shared.local) {
        let routing = node.routing();
        let cb = u64::from(layout.chunk_bytes);
        for index in 0..size.div_ceil(cb) {
            let chain = layout.chain_of(index);
            let at = routing
                .serving_targets(chain)
                .into_iter()
                .find(|t| t.node == NodeId(shared.node) && node.target(t.id).is_some())
                .and_then(|t| {
                    routing
                        .chains
                        .get(&chain)
                        .map(|ci| pond_proto::data::ChainRef {
                            chain,
                            chain_version: ci.version,
                            target: t.id,
                        })
                });
            pieces.push(Piece {
                index,
                offset: index * cb,
                len: cb.min(size - index * cb),
                at,
            });
        }
    } else {
        // No local node (or no layout): the client path, in copy-sized steps.
        let step = OUTPUT_COPY_BYTES as u64;
        let mut off = 0;
        while off < size {
            pieces.push(Piece {
                index: 0,
                offset: off,
                len: step.min(size - off),
                at: None,
            });
            off += step;
        }
    }
    let r = async {
        let dst =
            std::fs::File::create(local).map_err(|e| format!("create {}: {e}", local.display()))?;
        // The write of one batch (on a blocking thread) overlaps the read of the next.
        let mut writing: Option<tokio::task::JoinHandle<Result<std::fs::File, String>>> = None;
        let mut dst = Some(dst);
        let (mut total, mut local_bytes) = (0u64, 0u64);
        let mut k = 0;
        while k < pieces.len() {
            // A batch of consecutive local pieces, or one remote piece.
            let mut end = k;
            let mut bytes = 0;
            while end < pieces.len()
                && pieces[end].at.is_some()
                && end - k < LOCAL_READ_BATCH_ITEMS
                && bytes + pieces[end].len <= LOCAL_READ_BATCH_BYTES.max(pieces[k].len)
            {
                bytes += pieces[end].len;
                end += 1;
            }
            let mut got: Vec<Option<bytes::Bytes>> = Vec::new();
            if end > k {
                got = read_local(shared, attr.inode, &pieces[k..end]).await;
            } else {
                end = k + 1;
                got.push(None);
            }
            let mut batch = Vec::with_capacity(got.len());
            for (p, g) in pieces[k..end].iter().zip(got) {
                let data = match g {
                    Some(d) => {
                        local_bytes += p.len;
                        d
                    }
                    None => f
                        .pread(p.offset, p.len as usize)
                        .await
                        .map_err(|e| format!("read {remote} at {}: {e}", p.offset))?,
                };
                if data.len() as u64 != p.len {
                    return Err(format!(
                        "read {remote} at {}: {} bytes, expected {}",
                        p.offset,
                        data.len(),
                        p.len
                    ));
                }
                total += p.len;
                batch.push(data);
            }
            let file = match writing.take() {
                Some(w) => w.await.map_err(|e| format!("write thread: {e}"))??,
                None => dst
                    .take()
                    .expect("the file is either here or being written"),
            };
            let name = local.to_path_buf();
            writing = Some(tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut file = file;
                for d in &batch {
                    file.write_all(d)
                        .map_err(|e| format!("write {}: {e}", name.display()))?;
                }
                Ok(file)
            }));
            k = end;
        }
        if let Some(w) = writing.take() {
            w.await.map_err(|e| format!("write thread: {e}"))??;
        }
        Ok((total, local_bytes))
    }
    .await;
    let _ = f.close().await;
    r
}

/// Reads whole chunks from this node's chunk engines (one in-process read batch, the same
/// handler and CRAQ version rules as the data plane). `None` for a piece that could not be read
/// locally (the caller reads it through the client); holes and short chunks are zero-filled to
/// the piece length, as the file size says.
async fn read_local(
    shared: &Arc<Shared>,
    inode: pond_proto::ids::InodeId,
    pieces: &[Piece],
) -> Vec<Option<bytes::Bytes>> {
    use pond_proto::data::{DataRequest, DataResponse, ReadItem};
    let Some(node) = &shared.local else {
        return vec![None; pieces.len()];
    };
    let items: Vec<ReadItem> = pieces
        .iter()
        .map(|p| ReadItem {
            at: p.at.expect("local pieces only"),
            chunk: pond_proto::ids::ChunkId::new(inode, p.index),
            offset: 0,
            length: p.len as u32,
        })
        .collect();
    let (resp, payload) = node
        .handle(DataRequest::Read { items }, bytes::Bytes::new())
        .await;
    let DataResponse::Read { items } = resp else {
        info!(?resp, "compute: local read refused; using the client path");
        return vec![None; pieces.len()];
    };
    let mut out = Vec::with_capacity(pieces.len());
    let mut at = 0usize;
    for (p, r) in pieces.iter().zip(items) {
        match r {
            Ok(ok) => {
                let n = ok.bytes as usize;
                let Some(data) = payload.get(at..at + n) else {
                    out.push(None);
                    at += n;
                    continue;
                };
                at += n;
                if crc32c::crc32c(data) != ok.crc || n as u64 > p.len {
                    warn!(chunk = p.index, "compute: local chunk failed its checksum");
                    out.push(None);
                    continue;
                }
                if n as u64 == p.len {
                    out.push(Some(payload.slice(at - n..at)));
                } else {
                    let mut v = Vec::with_capacity(p.len as usize);
                    v.extend_from_slice(data);
                    v.resize(p.len as usize, 0);
                    out.push(Some(bytes::Bytes::from(v)));
                }
            }
            Err(e) => {
                info!(chunk = p.index, error = %e, "compute: local read failed; using the client path");
                out.push(None);
            }
        }
    }
    while out.len() < pieces.len() {
        out.push(None);
    }
    out
}

/// Copies a local file into pond at `remote` (created or truncated), asking for a chain whose
/// head is this node so that the next stage can read it locally.
async fn upload(client: &Client, node: u32, local: &Path, remote: &str) -> Result<u64, String> {
    // Head on `node` when a chain has its head there; any chain otherwise (a chain's head
    // moves when its node fails).
    client
        .put_placed(
            local,
            remote,
            PlacementHint::HeadOnNode(NodeId(node)),
            |_| {},
        )
        .await
        .map_err(|e| format!("upload {}: {e}", local.display()))
}
