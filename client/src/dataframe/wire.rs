//! The executor protocol: what a client sends to a storage node's compute executor and what
//! comes back. TCP, one task per connection, frames of `u32` little-endian length + postcard
//! body (the data plane's style). Frame 1 (client): [`Hello`] with the cluster token; frame 2
//! (client): [`TaskSpec`]; frame 3 (executor): [`TaskReply`]. The client keeps the connection
//! open while the task runs; closing it cancels the task (the executor interrupts DuckDB).
//!
//! These types live here rather than in `proto` because `client` and `compute` are their only
//! users and `compute` depends on `client`; they are a compatibility promise all the same, so
//! [`COMPUTE_PROTOCOL_VERSION`] is checked in the hello.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bumped on any incompatible change of the types below.
pub const COMPUTE_PROTOCOL_VERSION: u32 = 2;

/// Largest frame either side accepts. A result bigger than this must be written as Parquet into
/// pond instead of streamed back (`TaskOutput::Parquet`).
pub const FRAME_BYTES_MAX: usize = 512 << 20;

/// Largest hello or task frame (SQL text and file lists).
pub const REQUEST_FRAME_BYTES_MAX: usize = 16 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub token: String,
}

/// One task: run `sql` with `{i}` replaced by a scan of `inputs[i]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// For logs and temp names only.
    pub job: String,
    pub task: u32,
    /// `{i}` in `sql` becomes `read_parquet([files of inputs[i]])`.
    pub inputs: Vec<TaskInput>,
    pub sql: String,
    pub output: TaskOutput,
    pub limits: TaskLimits,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInput {
    /// Absolute pond paths of Parquet files. An empty list is an empty input: the executor
    /// gives `{i}` the schema of nothing, so SQL over it must not name columns (the planner never
    /// sends empty inputs; see docs/compute.md).
    pub files: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutput {
    /// The result as an Arrow IPC stream.
    ArrowIpc,
    /// The result as rows of simple values (small results: counts, `take`, CLI output).
    Rows,
    /// The result written as one Parquet file at this pond path (created or replaced), placed on
    /// a chain whose head is the executing node.
    Parquet { path: String },
    /// The result split into `paths.len()` buckets by the SQL expression `by` (an integer in
    /// `0..paths.len()` per row), bucket `b` written as one Parquet file at `paths[b]` (empty
    /// buckets too, with the result's schema) on a chain whose head is storage node
    /// `heads[b]` — the node that will run bucket `b`'s next task.
    Buckets {
        paths: Vec<String>,
        by: String,
        heads: Vec<u32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// DuckDB `memory_limit` for this task.
    pub memory_bytes: u64,
    /// DuckDB `threads` for this task.
    pub threads: u32,
    /// Wall-clock budget including fetching the inputs.
    pub deadline_ms: u64,
}

impl Default for TaskLimits {
    fn default() -> TaskLimits {
        TaskLimits {
            memory_bytes: 1 << 30,
            threads: 2,
            deadline_ms: 300_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TaskReply {
    Done(TaskResult),
    Failed(TaskFailure),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub rows: u64,
    pub body: ResultBody,
    pub stats: TaskStats,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ResultBody {
    ArrowIpc(Vec<u8>),
    Rows(RowSet),
    Parquet {
        path: String,
        bytes: u64,
    },
    /// Bytes written per bucket (`TaskOutput::Buckets`).
    Buckets {
        bytes: Vec<u64>,
    },
}

/// What the executor measured while running one task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStats {
    /// Storage node id of the executor.
    pub node: u32,
    pub input_bytes: u64,
    /// Input bytes whose chain has a replica on the executing node (what a chunk-engine view
    /// would read locally; today every byte still goes through the client read path).
    pub input_local_bytes: u64,
    pub fetch_ms: u64,
    pub query_ms: u64,
    pub output_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub kind: FailureKind,
    pub message: String,
    /// Storage node id of the executor.
    pub node: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// Bad token or protocol version.
    Unauthorized,
    /// The SQL failed: syntax, binder, type or runtime error. Deterministic: not retried.
    Sql,
    /// The query touched something outside its inputs (files, network, settings).
    Refused,
    /// The query needed more memory than its limit. Deterministic: not retried.
    MemoryLimit,
    /// The deadline passed.
    Deadline,
    /// The caller went away or asked to stop.
    Cancelled,
    /// Reading an input or writing the output through pond failed: retry elsewhere.
    Io,
    /// The executor is at its task limit: retry elsewhere.
    Busy,
    /// Anything else on the executor's side: retry elsewhere.
    Internal,
}

impl FailureKind {
    /// Whether running the same task on another replica may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            FailureKind::Io | FailureKind::Busy | FailureKind::Internal
        )
    }
}

/// A small result as plain values. Types DuckDB has beyond these arrive as `Text` rendered by
/// DuckDB (`CAST(x AS VARCHAR)` semantics are not promised; see docs/compute.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RowSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    HugeInt(i128),
    Float(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => write!(f, "NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::UInt(v) => write!(f, "{v}"),
            Value::HugeInt(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Text(s) => write!(f, "{s}"),
            Value::Blob(b) => write!(
                f,
                "\\x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        }
    }
}

/// Writes one frame: `u32` LE length, then the postcard body.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    T: Serialize,
{
    let body = postcard::to_allocvec(msg)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {} bytes exceeds {FRAME_BYTES_MAX}", body.len()),
        ));
    }
    w.write_all(&(body.len() as u32).to_le_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await
}

/// Reads one frame of at most `max_bytes`.
pub async fn read_frame<R, T>(r: &mut R, max_bytes: usize) -> std::io::Result<T>
where
    R: tokio::io::AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max_bytes}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Replaces every `{i}` (decimal digits in braces) in `sql` with `f(i)`; other braces stay.
/// Returns the largest index seen, if any. Fails on an index `f` rejects.
pub fn substitute<E>(
    sql: &str,
    mut f: impl FnMut(usize) -> Result<String, E>,
) -> Result<String, E> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && digits <= 4 && after.as_bytes().get(digits) == Some(&b'}') {
            let i: usize = after[..digits].parse().expect("ascii digits parse");
            out.push_str(&f(i)?);
            rest = &after[digits + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitute_only_digit_braces() {
        let s = substitute::<()>("SELECT {'a': 1} FROM {0} JOIN {1} ON {x}", |i| {
            Ok(format!("T{i}"))
        })
        .unwrap();
        assert_eq!(s, "SELECT {'a': 1} FROM T0 JOIN T1 ON {x}");
    }

    #[test]
    fn frames_round_trip() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut a, mut b) = tokio::io::duplex(1 << 16);
            let h = Hello {
                version: COMPUTE_PROTOCOL_VERSION,
                token: "t".into(),
            };
            write_frame(&mut a, &h).await.unwrap();
            let got: Hello = read_frame(&mut b, 1024).await.unwrap();
            assert_eq!(got, h);
        });
    }
}
