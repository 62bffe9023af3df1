//! A smallpond-style lazy DataFrame whose tasks run on the storage nodes' executors
//! (`pond-compute`). This module plans and dispatches; it never links DuckDB.
//!
//! ```text
//! read_parquet(glob) ── partitions: one per file
//!   .partial_sql(sql)  ── one task per partition ({0} = that partition), output Parquet in
//!                         /.pond/jobs/<job>/, placed with the executing node as chain head
//!   .sql(sql)          ── one task over all partitions of its input ({0} = all of them)
//!   .count() .take(n) .collect() .to_arrow() .write_parquet(dir)   ── actions: run the plan
//! ```
//!
//! Placement: a task goes to the executor whose node holds (as any serving replica) the most
//! bytes of the task's input files; ties go to the node with the fewest bytes assigned so far
//! in the stage. A task that fails for a reason another node may not share (I/O, busy,
//! connection) is retried on the next-best node, up to [`TASK_ATTEMPTS_MAX`] nodes; a node that
//! refuses it as busy is offered it again after a backoff once no other node is left, for up
//! to [`BUSY_WAIT_MAX`].

pub mod onestmt;
pub mod wire;

use crate::{Client, ClientError};
use futures::StreamExt;
use parking_lot::Mutex;
use pond_proto::ids::NodeId;
use pond_proto::meta::FileType;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use wire::{
    COMPUTE_PROTOCOL_VERSION, FRAME_BYTES_MAX, FailureKind, Hello, ResultBody, RowSet, TaskInput,
    TaskLimits, TaskOutput, TaskReply, TaskResult, TaskSpec,
};

/// Nodes one task is tried on before its failure is returned.
pub const TASK_ATTEMPTS_MAX: usize = 3;
/// How long a task may wait for a slot when every executor left refuses it as `Busy`.
pub const BUSY_WAIT_MAX: Duration = Duration::from_secs(120);
/// Tasks in flight per executor from one action (executors refuse more than their own limit
/// with `Busy`, which the planner treats as "try elsewhere").
pub const TASKS_IN_FLIGHT_PER_EXECUTOR: usize = 2;
/// Where jobs keep intermediate results; removed when the action ends.
pub const JOBS_DIR: &str = "/.pond/jobs";
/// Where executors register their addresses (`node-<id>` files holding `host:port`).
pub const REGISTRY_DIR: &str = "/.pond/compute";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new session waits for executors to register (they poll every 2 s).
pub const DISCOVERY_WAIT: Duration = Duration::from_secs(10);
/// Slack over a task's own deadline before the client gives up on the reply.
const REPLY_SLACK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DataFrameError {
    /// A task failed on the executor (after retries where retrying made sense).
    #[error("task {task} of stage {stage} failed on node {node} ({kind:?}): {message}")]
    Task {
        stage: String,
        task: u32,
        node: u32,
        kind: FailureKind,
        message: String,
    },
    #[error("no executor can run the task: {0}")]
    NoExecutor(String),
    #[error("plan: {0}")]
    Plan(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

pub type Result<T, E = DataFrameError> = std::result::Result<T, E>;

/// One task as it ran.
#[derive(Clone, Debug)]
pub struct TaskRecord {
    pub stage: String,
    pub task: u32,
    pub node: u32,
    pub attempts: usize,
    pub rows: u64,
    pub elapsed_ms: u64,
    pub stats: wire::TaskStats,
}

/// How a session reaches executors and what each task may use.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    pub limits: TaskLimits,
}

struct SessionInner {
    client: Arc<Client>,
    token: String,
    opts: SessionOptions,
    executors: Mutex<BTreeMap<NodeId, String>>,
    next_job: AtomicU64,
    log: Mutex<Vec<TaskRecord>>,
    /// Tasks of this session in flight per executor.
    inflight: Mutex<BTreeMap<NodeId, u64>>,
}

/// Entry point: a client, the cluster token and the executors it found.
#[derive(Clone)]
pub struct Session(Arc<SessionInner>);

impl Session {
    /// A session over `client`; finds executors in [`REGISTRY_DIR`]. Executors register only
    /// once the registry exists (so a cluster that never runs a query has no `/.pond`): the
    /// first session creates it and waits up to [`DISCOVERY_WAIT`] until every live storage
    /// node's executor is listed (or returns with the ones that are).
    pub async fn new(client: Arc<Client>, token: &str, opts: SessionOptions) -> Result<Session> {
        let s = Session(Arc::new(SessionInner {
            client,
            token: token.to_string(),
            opts,
            executors: Mutex::new(BTreeMap::new()),
            next_job: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            inflight: Mutex::new(BTreeMap::new()),
        }));
        s.discover().await?;
        Ok(s)
    }

    async fn discover(&self) -> Result<()> {
        let c = &self.0.client;
        if !c.exists(REGISTRY_DIR).await? {
            c.mkdir_all(REGISTRY_DIR, 0o755).await?;
        }
        let deadline = Instant::now() + DISCOVERY_WAIT;
        loop {
            self.refresh_executors().await?;
            let routing = c.routing();
            let have = self.0.executors.lock().clone();
            let missing = routing
                .nodes
                .values()
                .filter(|n| n.alive && !have.contains_key(&n.id))
                .count();
            if missing == 0 || Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Re-reads the executor registry.
    pub async fn refresh_executors(&self) -> Result<()> {
        let c = &self.0.client;
        let mut found = BTreeMap::new();
        if c.exists(REGISTRY_DIR).await? {
            for e in c.read_dir_all(REGISTRY_DIR).await? {
                let Some(id) = e
                    .name
                    .strip_prefix("node-")
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let addr = c.read_file(&format!("{REGISTRY_DIR}/{}", e.name)).await?;
                // An entry that is not an address yet (an executor of an older version
                // mid-write) counts as not registered; the next refresh sees it.
                match String::from_utf8(addr) {
                    Ok(a) if is_host_port(a.trim()) => {
                        found.insert(NodeId(id), a.trim().to_string());
                    }
                    _ => tracing::debug!(entry = %e.name, "executor entry not an address; skipped"),
                }
            }
        }
        *self.0.executors.lock() = found;
        Ok(())
    }

    /// Executors by storage node.
    pub fn executors(&self) -> BTreeMap<NodeId, String> {
        self.0.executors.lock().clone()
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.0.client
    }

    /// Every task run so far, in completion order.
    pub fn task_log(&self) -> Vec<TaskRecord> {
        self.0.log.lock().clone()
    }

    pub fn clear_task_log(&self) {
        self.0.log.lock().clear()
    }

    /// A dataset: the Parquet files matching `glob` (an absolute pond path whose last component
    /// may contain `*` and `?`), one partition per file.
    pub fn read_parquet(&self, glob: &str) -> DataFrame {
        self.frame(Plan::Scan {
            glob: glob.to_string(),
        })
    }

    /// `sql` per partition of `inputs` (`{i}` names `inputs[i]`); an input with one partition
    /// is broadcast to every partition of the others.
    pub fn partial_sql(&self, sql: &str, inputs: &[&DataFrame]) -> DataFrame {
        self.frame(Plan::Partial {
            sql: sql.to_string(),
            inputs: inputs.iter().map(|d| d.plan.clone()).collect(),
        })
    }

    /// One-statement mode: `SELECT … FROM read_parquet('/glob') …`, split into partial and
    /// final aggregation when it has the recognised shape (see [`onestmt`]), else run whole on
    /// one executor.
    pub fn sql(&self, statement: &str) -> Result<DataFrame> {
        match onestmt::plan(statement).map_err(|e| DataFrameError::Plan(e.0))? {
            onestmt::OneStatement::Split {
                glob,
                partial,
                final_sql,
            } => Ok(self
                .read_parquet(&glob)
                .partial_sql(&partial)
                .sql(&final_sql)),
            onestmt::OneStatement::Whole { glob, sql } => Ok(self.read_parquet(&glob).sql(&sql)),
        }
    }

    fn frame(&self, plan: Plan) -> DataFrame {
        DataFrame {
            session: self.clone(),
            plan: Arc::new(plan),
        }
    }
}

#[derive(Debug)]
enum Plan {
    Scan {
        glob: String,
    },
    /// Every partition of `input` split into `n` buckets by `by` (an integer SQL expression in
    /// `0..n`); partition `b` of the result is bucket `b` of every input partition.
    Repartition {
        input: Arc<Plan>,
        n: u32,
        by: String,
    },
    Partial {
        sql: String,
        inputs: Vec<Arc<Plan>>,
    },
    Final {
        sql: String,
        input: Arc<Plan>,
    },
}

/// A lazy plan; nothing runs until an action (`count`, `take`, `collect`, `to_arrow`,
/// `write_parquet`).
#[derive(Clone)]
pub struct DataFrame {
    session: Session,
    plan: Arc<Plan>,
}

/// A partition: the pond files that `{i}` expands to for one task.
type Partition = Vec<String>;

impl DataFrame {
    /// `sql` per partition of this frame (`{0}`).
    pub fn partial_sql(&self, sql: &str) -> DataFrame {
        self.session.frame(Plan::Partial {
            sql: sql.to_string(),
            inputs: vec![self.plan.clone()],
        })
    }

    /// `n` partitions by a hash of the columns `hash_by` (DuckDB's `hash()`, the one hash
    /// function pond uses for this): rows with equal keys land in the same partition, so joins
    /// and aggregations by those keys can run per partition afterwards.
    pub fn repartition(&self, n: u32, hash_by: &[&str]) -> DataFrame {
        let cols = if hash_by.is_empty() {
            // No key: spread rows evenly (random shuffle).
            "random()".to_string()
        } else {
            hash_by.join(", ")
        };
        let by = if hash_by.is_empty() {
            format!("CAST(floor(random() * {n}) AS BIGINT)")
        } else {
            format!("CAST(hash({cols}) % {n} AS BIGINT)")
        };
        self.repartition_by(n, &by)
    }

    /// `n` partitions by an integer SQL expression in `0..n` per row (range partitioning:
    /// e.g. `CASE WHEN k < 10 THEN 0 ELSE 1 END`, or a key prefix scaled to `n`).
    pub fn repartition_by(&self, n: u32, by: &str) -> DataFrame {
        self.session.frame(Plan::Repartition {
            input: self.plan.clone(),
            n: n.max(1),
            by: by.to_string(),
        })
    }

    /// Rows of each partition for which the SQL `predicate` holds (smallpond's `filter`).
    pub fn filter(&self, predicate: &str) -> DataFrame {
        self.partial_sql(&format!("SELECT * FROM {{0}} WHERE {predicate}"))
    }

    /// Each partition projected through SQL expressions (`"k, v * 2 AS v2"`; smallpond's
    /// `map` with SQL).
    pub fn map(&self, exprs: &str) -> DataFrame {
        self.partial_sql(&format!("SELECT {exprs} FROM {{0}}"))
    }

    /// `sql` once over all partitions of this frame combined (`{0}`), on one executor.
    pub fn sql(&self, sql: &str) -> DataFrame {
        self.session.frame(Plan::Final {
            sql: sql.to_string(),
            input: self.plan.clone(),
        })
    }

    /// Human-readable plan.
    pub fn explain(&self) -> String {
        fn walk(p: &Plan, depth: usize, out: &mut String) {
            let pad = "  ".repeat(depth);
            match p {
                Plan::Scan { glob } => out.push_str(&format!(
                    "{pad}read_parquet {glob} (one partition per file)\n"
                )),
                Plan::Repartition { input, n, by } => {
                    out.push_str(&format!(
                        "{pad}repartition into {n} by {by} (bucket b's file headed on the node that runs partition b)\n"
                    ));
                    walk(input, depth + 1, out);
                }
                Plan::Partial { sql, inputs } => {
                    out.push_str(&format!("{pad}partial_sql per partition: {sql}\n"));
                    for i in inputs {
                        walk(i, depth + 1, out);
                    }
                }
                Plan::Final { sql, input } => {
                    out.push_str(&format!("{pad}sql on one executor: {sql}\n"));
                    walk(input, depth + 1, out);
                }
            }
        }
        let mut s = String::new();
        walk(&self.plan, 0, &mut s);
        s
    }

    /// Number of rows.
    pub async fn count(&self) -> Result<u64> {
        let rows = self
            .run_final(
                |sql| format!("SELECT count(*) AS n FROM ({sql})"),
                TaskOutput::Rows,
            )
            .await?;
        match rows.body {
            ResultBody::Rows(r) => match r.rows.first().and_then(|row| row.first()) {
                Some(wire::Value::Int(n)) => Ok(*n as u64),
                other => Err(DataFrameError::Plan(format!("count returned {other:?}"))),
            },
            other => Err(DataFrameError::Plan(format!("count returned {other:?}"))),
        }
    }

    /// The first `n` rows (in the order the final SQL produces; add ORDER BY for a stable one).
    pub async fn take(&self, n: u64) -> Result<RowSet> {
        self.rows_of(|sql| format!("SELECT * FROM ({sql}) LIMIT {n}"))
            .await
    }

    /// Every row as plain values (for small results).
    pub async fn collect(&self) -> Result<RowSet> {
        self.rows_of(|sql| sql.to_string()).await
    }

    /// The result as one Arrow IPC stream (decode with `arrow_ipc::reader::StreamReader`).
    pub async fn to_arrow(&self) -> Result<Vec<u8>> {
        match self
            .run_final(|sql| sql.to_string(), TaskOutput::ArrowIpc)
            .await?
            .body
        {
            ResultBody::ArrowIpc(b) => Ok(b),
            other => Err(DataFrameError::Plan(format!(
                "expected arrow, got {other:?}"
            ))),
        }
    }

    /// Writes the result as Parquet files `dir/part-NNNNN.parquet` (one per partition for a
    /// `partial_sql` frame, one file otherwise). Returns the paths.
    pub async fn write_parquet(&self, dir: &str) -> Result<Vec<String>> {
        let dir = dir.trim_end_matches('/').to_string();
        self.session.0.client.mkdir_all(&dir, 0o755).await?;
        let job = Job::new(&self.session);
        let r = async {
            match &*self.plan {
                Plan::Partial { sql, inputs } => {
                    let parts = job.run_partial(sql, inputs, Some(&dir)).await?;
                    Ok(parts.into_iter().flatten().collect())
                }
                _ => {
                    let path = format!("{dir}/part-00000.parquet");
                    let out = TaskOutput::Parquet { path: path.clone() };
                    job.run_final(&self.plan, |s| s.to_string(), out).await?;
                    Ok(vec![path])
                }
            }
        }
        .await;
        job.cleanup().await;
        r
    }

    async fn rows_of(&self, wrap: impl Fn(&str) -> String) -> Result<RowSet> {
        match self.run_final(wrap, TaskOutput::Rows).await?.body {
            ResultBody::Rows(r) => Ok(r),
            other => Err(DataFrameError::Plan(format!(
                "expected rows, got {other:?}"
            ))),
        }
    }

    async fn run_final(
        &self,
        wrap: impl Fn(&str) -> String,
        output: TaskOutput,
    ) -> Result<TaskResult> {
        let job = Job::new(&self.session);
        let r = job.run_final(&self.plan, wrap, output).await;
        job.cleanup().await;
        r
    }
}

/// One action's run: names its intermediate files and places its tasks.
/// `host:port` with a non-empty host and a numeric port (what an executor registers).
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}

struct Job {
    session: Session,
    id: String,
    stages: AtomicU64,
    /// Per file: bytes per node holding a serving replica.
    bytes_by_node: Mutex<HashMap<String, BTreeMap<NodeId, u64>>>,
    used_dir: Mutex<bool>,
    /// Input bytes assigned per executor by this job (the spreading tie-break).
    assigned: Mutex<BTreeMap<NodeId, u64>>,
}

impl Job {
    fn new(session: &Session) -> Job {
        let n = session.0.next_job.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{}-{}-{n}",
            std::process::id(),
            pond_proto::os_random_u64() as u32
        );
        Job {
            session: session.clone(),
            id,
            stages: AtomicU64::new(0),
            bytes_by_node: Mutex::new(HashMap::new()),
            used_dir: Mutex::new(false),
            assigned: Mutex::new(BTreeMap::new()),
        }
    }

    fn dir(&self) -> String {
        format!("{JOBS_DIR}/{}", self.id)
    }

    async fn cleanup(&self) {
        if *self.used_dir.lock() {
            let _ = self.session.0.client.remove_tree(&self.dir()).await;
        }
    }

    async fn ensure_dir(&self) -> Result<()> {
        if !*self.used_dir.lock() {
            self.session.0.client.mkdir_all(&self.dir(), 0o755).await?;
            *self.used_dir.lock() = true;
        }
        Ok(())
    }

    /// The final task of an action: `wrap(sql)` over every file of the plan's result.
    async fn run_final(
        &self,
        plan: &Arc<Plan>,
        wrap: impl Fn(&str) -> String,
        output: TaskOutput,
    ) -> Result<TaskResult> {
        let (sql, input) = match &**plan {
            Plan::Final { sql, input } => (wrap(sql), input),
            _ => (wrap("SELECT * FROM {0}"), plan),
        };
        let parts = self.partitions(input).await?;
        let files: Vec<String> = parts.into_iter().flatten().collect();
        self.run_task("final", 0, vec![TaskInput { files }], sql, output)
            .await
    }

    /// Evaluates a plan to its partitions (running partial stages). Boxed: plans nest.
    fn partitions<'a>(
        &'a self,
        plan: &'a Arc<Plan>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Partition>>> {
        Box::pin(async move {
            match &**plan {
                Plan::Scan { glob } => {
                    let files = expand_glob(&self.session.0.client, glob).await?;
                    if files.is_empty() {
                        return Err(DataFrameError::Plan(format!("no file matches {glob}")));
                    }
                    Ok(files.into_iter().map(|f| vec![f]).collect())
                }
                Plan::Partial { sql, inputs } => self.run_partial(sql, inputs, None).await,
                Plan::Repartition { input, n, by } => self.run_repartition(input, *n, by).await,
                Plan::Final { .. } => {
                    let stage = self.stages.fetch_add(1, Ordering::Relaxed);
                    let path = format!("{}/s{stage}.parquet", self.dir());
                    self.ensure_dir().await?;
                    let out = TaskOutput::Parquet { path: path.clone() };
                    self.run_final(plan, |s| s.to_string(), out).await?;
                    Ok(vec![vec![path]])
                }
            }
        })
    }

    /// One task per partition; outputs go to `out_dir/part-NNNNN.parquet` or the job dir.
    async fn run_partial(
        &self,
        sql: &str,
        inputs: &[Arc<Plan>],
        out_dir: Option<&str>,
    ) -> Result<Vec<Partition>> {
        let mut evaluated = Vec::with_capacity(inputs.len());
        for i in inputs {
            evaluated.push(self.partitions(i).await?);
        }
        let n = evaluated.iter().map(Vec::len).max().unwrap_or(0);
        if n == 0 {
            return Err(DataFrameError::Plan(
                "partial_sql without inputs".to_string(),
            ));
        }
        for (i, e) in evaluated.iter().enumerate() {
            if e.len() != 1 && e.len() != n {
                return Err(DataFrameError::Plan(format!(
                    "input {i} has {} partitions, others {n}: partial_sql needs equal counts or one (broadcast)",
                    e.len()
                )));
            }
        }
        let stage_no = self.stages.fetch_add(1, Ordering::Relaxed);
        let stage = format!("s{stage_no}");
        let out_dir = match out_dir {
            Some(d) => d.to_string(),
            None => {
                self.ensure_dir().await?;
                format!("{}/{stage}", self.dir())
            }
        };
        self.session.0.client.mkdir_all(&out_dir, 0o755).await?;
        let executors = self.session.executors().len().max(1);
        let tasks = (0..n).map(|p| {
            let inputs: Vec<TaskInput> = evaluated
                .iter()
                .map(|e| TaskInput {
                    files: e[if e.len() == 1 { 0 } else { p }].clone(),
                })
                .collect();
            let path = format!("{out_dir}/part-{p:05}.parquet");
            let stage = stage.clone();
            async move {
                self.run_task(
                    &stage,
                    p as u32,
                    inputs,
                    sql.to_string(),
                    TaskOutput::Parquet { path: path.clone() },
                )
                .await
                .map(|_| vec![path])
            }
        });
        let results: Vec<Result<Partition>> = futures::stream::iter(tasks)
            .buffered(executors * TASKS_IN_FLIGHT_PER_EXECUTOR)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// One task per input partition writes `n` bucket files; returns partition `b` = bucket `b`
    /// of every task. Bucket `b` is placed with executor `b % executors` as chain head, which
    /// is where locality then sends partition `b`'s next task.
    async fn run_repartition(&self, input: &Arc<Plan>, n: u32, by: &str) -> Result<Vec<Partition>> {
        let parts = self.partitions(input).await?;
        let stage_no = self.stages.fetch_add(1, Ordering::Relaxed);
        let stage = format!("s{stage_no}");
        self.ensure_dir().await?;
        let out_dir = format!("{}/{stage}", self.dir());
        self.session.0.client.mkdir_all(&out_dir, 0o755).await?;
        let execs: Vec<u32> = self.session.executors().keys().map(|n| n.0).collect();
        if execs.is_empty() {
            return Err(DataFrameError::NoExecutor("no executor registered".into()));
        }
        let heads: Vec<u32> = (0..n as usize).map(|b| execs[b % execs.len()]).collect();
        let tasks = parts.into_iter().enumerate().map(|(p, files)| {
            let paths: Vec<String> = (0..n)
                .map(|b| format!("{out_dir}/m{p:05}-b{b:05}.parquet"))
                .collect();
            let output = TaskOutput::Buckets {
                paths: paths.clone(),
                by: by.to_string(),
                heads: heads.clone(),
            };
            let stage = stage.clone();
            async move {
                self.run_task(
                    &stage,
                    p as u32,
                    vec![TaskInput { files }],
                    "SELECT * FROM {0}".to_string(),
                    output,
                )
                .await
                .map(|_| paths)
            }
        });
        let per_map: Vec<Result<Vec<String>>> = futures::stream::iter(tasks)
            .buffered(execs.len() * TASKS_IN_FLIGHT_PER_EXECUTOR)
            .collect()
            .await;
        let mut out: Vec<Partition> = vec![Vec::new(); n as usize];
        for m in per_map {
            for (b, path) in m?.into_iter().enumerate() {
                out[b].push(path);
            }
        }
        Ok(out)
    }

    /// Bytes of each file per node with a serving replica of its chunks.
    async fn locality(&self, files: &[String]) -> Result<BTreeMap<NodeId, u64>> {
        let client = &self.session.0.client;
        let routing = client.routing();
        let mut total: BTreeMap<NodeId, u64> = BTreeMap::new();
        for f in files {
            let known = self.bytes_by_node.lock().get(f).cloned();
            let per = match known {
                Some(p) => p,
                None => {
                    let attr = client.stat(f).await?;
                    let mut per: BTreeMap<NodeId, u64> = BTreeMap::new();
                    if let Some(layout) = &attr.layout {
                        let cb = u64::from(layout.chunk_bytes);
                        for i in 0..attr.size.div_ceil(cb) {
                            let len = cb.min(attr.size - i * cb);
                            let mut nodes: Vec<NodeId> = routing
                                .serving_targets(layout.chain_of(i))
                                .iter()
                                .map(|t| t.node)
                                .collect();
                            nodes.sort();
                            nodes.dedup();
                            for n in nodes {
                                *per.entry(n).or_default() += len;
                            }
                        }
                    }
                    self.bytes_by_node.lock().insert(f.clone(), per.clone());
                    per
                }
            };
            for (n, b) in per {
                *total.entry(n).or_default() += b;
            }
        }
        Ok(total)
    }

    /// Runs one task on the best node, retrying elsewhere on failures another node may not
    /// share.
    async fn run_task(
        &self,
        stage: &str,
        task: u32,
        inputs: Vec<TaskInput>,
        sql: String,
        output: TaskOutput,
    ) -> Result<TaskResult> {
        let files: Vec<String> = inputs
            .iter()
            .flat_map(|i| i.files.iter().cloned())
            .collect();
        let local = self.locality(&files).await?;
        let spec = TaskSpec {
            job: self.id.clone(),
            task,
            inputs,
            sql,
            output,
            limits: self.session.0.opts.limits,
        };
        // Nodes that failed the task (not tried again), and nodes that refused it as `Busy`
        // (all slots taken): when only busy ones are left, wait and offer it to them again,
        // within `BUSY_WAIT_MAX`. Only failures count against `TASK_ATTEMPTS_MAX`.
        let mut excluded: Vec<NodeId> = Vec::new();
        let mut busy: Vec<NodeId> = Vec::new();
        let busy_deadline = Instant::now() + BUSY_WAIT_MAX;
        let mut busy_backoff = Duration::from_millis(20);
        let mut last: Option<DataFrameError> = None;
        let mut attempt = 0usize;
        while excluded.len() < TASK_ATTEMPTS_MAX {
            let skip: Vec<NodeId> = excluded.iter().chain(&busy).copied().collect();
            let Some((node, addr)) = self.session.pick(&local, &skip, &self.assigned) else {
                if busy.is_empty() || Instant::now() >= busy_deadline {
                    break;
                }
                tokio::time::sleep(busy_backoff).await;
                busy_backoff = (busy_backoff * 2).min(Duration::from_millis(500));
                busy.clear();
                continue;
            };
            attempt += 1;
            let started = Instant::now();
            let reply = self.session.send(&addr, &spec).await;
            self.session.release(node);
            match reply {
                Ok(TaskReply::Done(r)) => {
                    self.session.0.log.lock().push(TaskRecord {
                        stage: stage.to_string(),
                        task,
                        node: node.0,
                        attempts: attempt,
                        rows: r.rows,
                        elapsed_ms: started.elapsed().as_millis() as u64,
                        stats: r.stats.clone(),
                    });
                    return Ok(r);
                }
                Ok(TaskReply::Failed(f)) => {
                    let e = DataFrameError::Task {
                        stage: stage.to_string(),
                        task,
                        node: f.node,
                        kind: f.kind,
                        message: f.message,
                    };
                    if !f.kind.retryable() {
                        return Err(e);
                    }
                    last = Some(e);
                    if f.kind == FailureKind::Busy {
                        tracing::debug!(node = node.0, "executor busy; task offered elsewhere");
                        busy.push(node);
                        continue;
                    }
                    tracing::warn!(error = %last.as_ref().expect("set"), "task failed; retrying on another node");
                }
                Err(e) => {
                    tracing::warn!(node = node.0, error = %e, "executor unreachable; retrying on another node");
                    last = Some(DataFrameError::Task {
                        stage: stage.to_string(),
                        task,
                        node: node.0,
                        kind: FailureKind::Io,
                        message: format!("executor {addr}: {e}"),
                    });
                }
            }
            excluded.push(node);
        }
        Err(last.unwrap_or_else(|| {
            DataFrameError::NoExecutor(format!("no live executor left (tried {excluded:?})"))
        }))
    }
}

impl Session {
    /// Picks the executor for a task (see [`choose`]) and counts the task as in flight there
    /// and as assigned to it in `job`.
    fn pick(
        &self,
        local: &BTreeMap<NodeId, u64>,
        excluded: &[NodeId],
        job: &Mutex<BTreeMap<NodeId, u64>>,
    ) -> Option<(NodeId, String)> {
        let routing = self.0.client.routing();
        let executors = self.0.executors.lock();
        let mut inflight = self.0.inflight.lock();
        let mut assigned = job.lock();
        let candidates: Vec<NodeId> = executors
            .keys()
            .filter(|n| !excluded.contains(n))
            .filter(|n| routing.nodes.get(n).is_none_or(|i| i.alive))
            .copied()
            .collect();
        let node = choose(&candidates, local, &inflight, &assigned)?;
        *inflight.entry(node).or_default() += 1;
        let bytes: u64 = local.values().copied().max().unwrap_or(0).max(1);
        *assigned.entry(node).or_default() += bytes;
        Some((node, executors[&node].clone()))
    }

    fn release(&self, node: NodeId) {
        if let Some(v) = self.0.inflight.lock().get_mut(&node) {
            *v = v.saturating_sub(1);
        }
    }

    /// One round trip to an executor. Dropping the future closes the connection, which
    /// cancels the task there.
    async fn send(&self, addr: &str, spec: &TaskSpec) -> std::io::Result<TaskReply> {
        let mut sock = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        sock.set_nodelay(true)?;
        let hello = Hello {
            version: COMPUTE_PROTOCOL_VERSION,
            token: self.0.token.clone(),
        };
        wire::write_frame(&mut sock, &hello).await?;
        wire::write_frame(&mut sock, spec).await?;
        let wait = Duration::from_millis(spec.limits.deadline_ms) + REPLY_SLACK;
        tokio::time::timeout(wait, wire::read_frame(&mut sock, FRAME_BYTES_MAX))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply before the deadline")
            })?
    }
}

/// The executor for a task among `candidates`: the most bytes of the task's inputs on the node
/// (any serving replica), then the fewest tasks of this session in flight there, then the
/// fewest bytes the current job has already assigned to it (so that with every node holding
/// every byte — chains as wide as the cluster — partitions spread evenly even when tasks run
/// one after another), then the lowest node id.
pub fn choose(
    candidates: &[NodeId],
    local: &BTreeMap<NodeId, u64>,
    inflight: &BTreeMap<NodeId, u64>,
    assigned: &BTreeMap<NodeId, u64>,
) -> Option<NodeId> {
    candidates
        .iter()
        .map(|n| {
            let get = |m: &BTreeMap<NodeId, u64>| m.get(n).copied().unwrap_or(0);
            (
                get(local),
                std::cmp::Reverse(get(inflight)),
                std::cmp::Reverse(get(assigned)),
                std::cmp::Reverse(*n),
            )
        })
        .max()
        .map(|k| (k.3).0)
}

/// Files matching `glob`: a literal directory, then a last component with `*`/`?`. A path
/// without wildcards names one file.
pub async fn expand_glob(client: &Client, glob: &str) -> Result<Vec<String>> {
    if !glob.starts_with('/') {
        return Err(DataFrameError::Plan(format!(
            "{glob:?} is not an absolute pond path"
        )));
    }
    let (dir, pat) = glob.rsplit_once('/').expect("starts with '/'");
    if dir.contains(['*', '?']) {
        return Err(DataFrameError::Plan(format!(
            "{glob}: wildcards only in the last component"
        )));
    }
    if !pat.contains(['*', '?']) {
        return Ok(vec![glob.to_string()]);
    }
    let dir = if dir.is_empty() { "/" } else { dir };
    let mut out: Vec<String> = client
        .read_dir_all(dir)
        .await?
        .into_iter()
        .filter(|e| e.kind == FileType::File && wildcard(pat.as_bytes(), e.name.as_bytes()))
        .map(|e| format!("{}/{}", dir.trim_end_matches('/'), e.name))
        .collect();
    out.sort();
    Ok(out)
}

/// `*` and `?` matching, iterative (no recursion).
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::{NodeId, choose, is_host_port, wildcard};
    use std::collections::BTreeMap;

    #[test]
    fn registry_entries_that_are_not_addresses_are_skipped() {
        assert!(is_host_port("127.0.0.1:7000"));
        assert!(is_host_port("[::1]:7000"));
        assert!(is_host_port("node-a.local:7000"));
        // An entry caught between its create and its write, or junk.
        assert!(!is_host_port(""));
        assert!(!is_host_port("127.0.0.1"));
        assert!(!is_host_port(":7000"));
        assert!(!is_host_port("127.0.0.1:70000"));
    }

    #[test]
    fn equal_locality_spreads_over_nodes() {
        let nodes = [NodeId(1), NodeId(2), NodeId(3)];
        let local: BTreeMap<NodeId, u64> = nodes.iter().map(|n| (*n, 100)).collect();
        let inflight = BTreeMap::new();
        let mut assigned = BTreeMap::new();
        let mut picked = Vec::new();
        for _ in 0..6 {
            let n = choose(&nodes, &local, &inflight, &assigned).unwrap();
            *assigned.entry(n).or_insert(0) += 100;
            picked.push(n.0);
        }
        assert_eq!(picked, vec![1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn locality_wins_over_load() {
        let nodes = [NodeId(1), NodeId(2)];
        let local = BTreeMap::from([(NodeId(1), 10), (NodeId(2), 500)]);
        let inflight = BTreeMap::from([(NodeId(2), 3)]);
        let assigned = BTreeMap::from([(NodeId(2), 10_000)]);
        assert_eq!(
            choose(&nodes, &local, &inflight, &assigned),
            Some(NodeId(2))
        );
        // Fewer tasks in flight break a locality tie before job-assigned bytes do.
        let local = BTreeMap::from([(NodeId(1), 500), (NodeId(2), 500)]);
        let inflight = BTreeMap::from([(NodeId(1), 2)]);
        assert_eq!(
            choose(&nodes, &local, &inflight, &assigned),
            Some(NodeId(2))
        );
        assert_eq!(choose(&[], &local, &inflight, &assigned), None);
    }

    #[test]
    fn wildcards() {
        assert!(wildcard(b"*.parquet", b"a.parquet"));
        assert!(wildcard(b"part-?.parquet", b"part-1.parquet"));
        assert!(!wildcard(b"*.parquet", b"a.csv"));
        assert!(wildcard(b"*", b""));
        assert!(wildcard(b"a*b*c", b"axxbyyc"));
        assert!(!wildcard(b"a*b*c", b"axxbyy"));
    }
}
