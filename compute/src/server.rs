//! The executor service: accepts tasks over TCP (see `pond_client::dataframe::wire`), fetches
//! the task's input files from pond into a per-task directory, runs DuckDB over them there,
//! and replies with the result or writes it into pond.

use crate::engine::{Engine, EngineError, EngineOutput, EngineResult};
use crate::limits::*;
use pond_client::dataframe::wire::{
    self, COMPUTE_PROTOCOL_VERSION, FailureKind, Hello, REQUEST_FRAME_BYTES_MAX, ResultBody,
    TaskFailure, TaskReply, TaskResult, TaskSpec, TaskStats,
};
use pond_client::{Client, OpenMode};
use pond_proto::ids::NodeId;
use pond_proto::layout::PlacementHint;
use pond_proto::meta::Caller;
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
    pub slots: Arc<Semaphore>,
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
        (EngineResult::Parquet { .. }, _) => {
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

/// Copies every input file into `dir/in/`, once per distinct pond path. Returns the local paths
/// per input.
async fn fetch_inputs(
    shared: &Arc<Shared>,
    spec: &TaskSpec,
    dir: &Path,
    stats: &mut TaskStats,
) -> Result<Vec<Vec<PathBuf>>, String> {
    let in_dir = dir.join("in");
    tokio::fs::create_dir_all(&in_dir)
        .await
        .map_err(|e| format!("create {}: {e}", in_dir.display()))?;
    let routing = shared.client.routing();
    let me = NodeId(shared.node);
    let mut seen: std::collections::HashMap<&str, PathBuf> = Default::default();
    let mut out = Vec::with_capacity(spec.inputs.len());
    for input in &spec.inputs {
        let mut locals = Vec::with_capacity(input.files.len());
        for remote in &input.files {
            if let Some(p) = seen.get(remote.as_str()) {
                locals.push(p.clone());
                continue;
            }
            let local = in_dir.join(format!("{}.parquet", seen.len()));
            let attr = shared
                .client
                .stat(remote)
                .await
                .map_err(|e| format!("stat {remote}: {e}"))?;
            if let Some(layout) = &attr.layout {
                let cb = u64::from(layout.chunk_bytes);
                let chunks = attr.size.div_ceil(cb);
                for i in 0..chunks {
                    let len = cb.min(attr.size - i * cb);
                    let chain = layout.chain_of(i);
                    if routing.serving_targets(chain).iter().any(|t| t.node == me) {
                        stats.input_local_bytes += len;
                    }
                }
            }
            let n = shared
                .client
                .get(remote, &local, |_| {})
                .await
                .map_err(|e| format!("read {remote}: {e}"))?;
            stats.input_bytes += n;
            seen.insert(remote, local.clone());
            locals.push(local);
        }
        out.push(locals);
    }
    Ok(out)
}

/// Copies a local file into pond at `remote` (created or truncated), asking for a chain whose
/// head is this node so that the next stage can read it locally.
async fn upload(client: &Client, node: u32, local: &Path, remote: &str) -> Result<u64, String> {
    use tokio::io::AsyncReadExt;
    let (parent, name) = client
        .parent_of(remote)
        .await
        .map_err(|e| format!("resolve parent: {e}"))?;
    let (_, file) = client
        .create_open(
            parent.inode,
            name,
            0o644,
            Caller::default(),
            false,
            PlacementHint::HeadOnNode(NodeId(node)),
            OpenMode::WRITE,
        )
        .await
        .map_err(|e| format!("create: {e}"))?;
    let r = async {
        let mut src = tokio::fs::File::open(local)
            .await
            .map_err(|e| format!("open output: {e}"))?;
        let mut off = 0u64;
        let mut buf = vec![0u8; OUTPUT_COPY_BYTES];
        loop {
            let n = src
                .read(&mut buf)
                .await
                .map_err(|e| format!("read output: {e}"))?;
            if n == 0 {
                break;
            }
            file.pwrite(off, &buf[..n])
                .await
                .map_err(|e| format!("write: {e}"))?;
            off += n as u64;
        }
        Ok::<u64, String>(off)
    }
    .await;
    let c = file.close().await.map_err(|e| format!("close: {e}"));
    let n = r?;
    c?;
    Ok(n)
}
