//! The clients of a chaos run.
//!
//! - **Register workers** share a few fixed-size files cut into slots; each slot is a register.
//!   A write puts a whole slot of bytes derived from a value no other write uses (straight to
//!   storage, acknowledged when the chain has it); a read decodes which write it saw. Every
//!   call is recorded with monotonic invoke/complete times for the linearizability checker.
//! - **Log workers** each own a directory of files nobody else touches, and apply appends,
//!   overwrites, truncates, renames, unlinks and creates, each made durable (fsync/close)
//!   before it counts as acknowledged. A model of every file's exact bytes follows the
//!   acknowledged operations; another client re-reads files after acks and at the end, and
//!   every difference is a violation. An operation that failed or timed out leaves the file's
//!   content unknown: the file is retired ("tainted") and left out of the byte-exact checks.

use crate::checker::{GARBAGE, INITIAL, Op, OpKind};
use bytes::Bytes;
use parking_lot::Mutex;
use pond_client::client::{Client, OpenOptions};
use pond_client::file::OpenMode;
use pond_client::io::READ_SOURCES;
use pond_proto::meta::RenameMode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const REG_DIR: &str = "/chaos/reg";
pub const LOG_DIR: &str = "/chaos/log";
/// Bytes per register slot: a quarter of the 64 KiB chunks the chaos directory uses, so one
/// chunk holds four registers and concurrent slot writes meet in one chunk's version chain.
pub const SLOT_BYTES: usize = 16 << 10;
pub const SLOTS_PER_FILE: u64 = 16;
/// Chunk size of the chaos directories (the smallest allowed: many chunks, many chains).
pub const CHUNK_BYTES: u32 = 64 << 10;
/// Longest a single client call may take before its outcome counts as unknown. Above the
/// client's own 30 s chunk retry budget, so a call normally ends by itself.
pub const OP_TIMEOUT: Duration = Duration::from_secs(40);

/// Everything the workers record, shared with the run.
#[derive(Default)]
pub struct Shared {
    pub history: Mutex<Vec<Op>>,
    pub violations: Mutex<Vec<String>>,
    pub stats: Stats,
    /// Log files' exact expected content by path (acknowledged operations only).
    pub model: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Paths whose content or existence is unknown after a failed operation.
    pub tainted: Mutex<BTreeSet<String>>,
}

#[derive(Default)]
pub struct Stats {
    pub writes_acked: AtomicU64,
    pub writes_unknown: AtomicU64,
    pub reads_ok: AtomicU64,
    pub reads_failed: AtomicU64,
    pub log_ops_acked: AtomicU64,
    pub log_ops_failed: AtomicU64,
    pub log_checks: AtomicU64,
}

/// Monotonic nanoseconds since the start of the run (never the wall clock).
#[derive(Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

pub fn reg_file(i: u32) -> String {
    format!("{REG_DIR}/r{i}")
}

pub fn reg_key(file: u32, slot: u64) -> String {
    format!("r{file}/s{slot}")
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The slot bytes of write `value`: the value, then a stream derived from it.
pub fn encode_slot(value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(SLOT_BYTES);
    out.extend_from_slice(&value.to_le_bytes());
    let mut s = value;
    while out.len() < SLOT_BYTES {
        out.extend_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    out.truncate(SLOT_BYTES);
    out
}

/// Which write's bytes these are: `INITIAL` for zeros, `GARBAGE` for anything else.
pub fn decode_slot(b: &[u8]) -> u64 {
    if b.len() != SLOT_BYTES {
        return GARBAGE;
    }
    if b.iter().all(|&x| x == 0) {
        return INITIAL;
    }
    let v = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    if v == INITIAL || v == GARBAGE || encode_slot(v) != b {
        return GARBAGE;
    }
    v
}

/// Bytes for log files: recognisable per (worker, op) so a misplaced piece is visible.
fn log_bytes(rng: &mut StdRng, tag: u64, len: usize) -> Vec<u8> {
    let mut s = tag ^ rng.random::<u64>();
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn timed<T, E: std::fmt::Display>(
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no reply within {OP_TIMEOUT:?}")),
    }
}

/// Runs a read (with `timed`) and says which replica answered each chunk piece it got: target,
/// storage address, the chain version the client sent, and the chunk version returned with
/// the chain version it was committed under.
async fn traced_read<T, E: std::fmt::Display>(
    f: impl Future<Output = Result<T, E>>,
) -> (Result<T, String>, String) {
    let (r, sources) = READ_SOURCES
        .scope(std::cell::RefCell::new(Vec::new()), async {
            let r = timed(f).await;
            (r, READ_SOURCES.with(|s| s.take()))
        })
        .await;
    let text = sources
        .iter()
        .map(|s| {
            format!(
                "chunk {} from target {} at {} (client chain v{}): chunk v{} committed under chain v{}",
                s.chunk, s.target, s.addr, s.chain_version.0, s.version.0, s.committed_under.0
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    (r, text)
}

/// One register worker: random slot writes and reads until `stop`.
pub async fn register_worker(
    id: u32,
    client: Client,
    files: u32,
    seed: u64,
    clock: Clock,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x5EED_0000 + id as u64));
    // The log line's wall-clock stamp next to the run clock lets storage logs be lined up
    // with the history's times.
    tracing::info!(
        worker = id,
        run_clock_s = clock.now() as f64 / 1e9,
        "register worker starts"
    );
    let mut handles = Vec::new();
    for f in 0..files {
        let opts = OpenOptions {
            mode: OpenMode::READ_WRITE,
            ..Default::default()
        };
        loop {
            match timed(client.open(&reg_file(f), opts)).await {
                Ok(h) => {
                    handles.push(h);
                    break;
                }
                Err(e) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    tracing::debug!(worker = id, error = %e, "open register file; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let f = rng.random_range(0..files);
        let slot = rng.random_range(0..SLOTS_PER_FILE);
        let h = &handles[f as usize];
        let off = slot * SLOT_BYTES as u64;
        let key = reg_key(f, slot);
        if rng.random_bool(0.5) {
            seq += 1;
            let value = ((id as u64 + 1) << 40) | seq;
            let data = Bytes::from(encode_slot(value));
            let invoke = clock.now();
            let r = timed(h.open_inode().write_direct(off, data)).await;
            let complete = clock.now();
            let ok = r.is_ok();
            if ok {
                shared.stats.writes_acked.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.stats.writes_unknown.fetch_add(1, Ordering::Relaxed);
            }
            shared.history.lock().push(Op {
                key,
                client: id,
                kind: OpKind::Write(value),
                invoke_ns: invoke,
                complete_ns: ok.then_some(complete),
                source: None,
            });
        } else {
            let invoke = clock.now();
            let (r, sources) = traced_read(h.pread(off, SLOT_BYTES)).await;
            let complete = clock.now();
            match r {
                Ok(b) => {
                    shared.stats.reads_ok.fetch_add(1, Ordering::Relaxed);
                    shared.history.lock().push(Op {
                        key,
                        client: id,
                        kind: OpKind::Read(decode_slot(&b)),
                        invoke_ns: invoke,
                        complete_ns: Some(complete),
                        source: Some(sources),
                    });
                }
                Err(_) => {
                    shared.stats.reads_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    for h in handles {
        let _ = timed(h.close()).await;
    }
}

/// Reads the final value of every register with a fresh client; appended to the history.
pub async fn final_register_reads(
    client: &Client,
    files: u32,
    clock: Clock,
    shared: &Shared,
) -> Result<(), String> {
    for f in 0..files {
        let h = timed(client.open(&reg_file(f), OpenOptions::read())).await?;
        // Each slot read goes to storage itself, so a violation names the target that
        // answered (a read served from read-ahead records none).
        h.set_read_ahead(false);
        for slot in 0..SLOTS_PER_FILE {
            let invoke = clock.now();
            let (b, sources) = traced_read(h.pread(slot * SLOT_BYTES as u64, SLOT_BYTES)).await;
            let b = b?;
            let complete = clock.now();
            shared.history.lock().push(Op {
                key: reg_key(f, slot),
                client: u32::MAX,
                kind: OpKind::Read(decode_slot(&b)),
                invoke_ns: invoke,
                complete_ns: Some(complete),
                source: Some(sources),
            });
        }
        let _ = timed(h.close()).await;
    }
    Ok(())
}

/// Compares a file read by `reader` with the model; `Ok(false)` when the read itself failed.
async fn verify_file(
    reader: &Client,
    path: &str,
    want: &[u8],
    shared: &Shared,
    when: &str,
) -> bool {
    let (res, sources) = traced_read(reader.read_file(path)).await;
    match res {
        Ok(got) => {
            shared.stats.log_checks.fetch_add(1, Ordering::Relaxed);
            if got != want {
                let at = got
                    .iter()
                    .zip(want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(want.len()));
                let zeros = got.iter().filter(|&&b| b == 0).count();
                let show = |b: &[u8]| {
                    b.iter()
                        .skip(at)
                        .take(8)
                        .map(|x| format!("{x:02x}"))
                        .collect::<String>()
                };
                let v = format!(
                    "{when}: {path} read {} bytes, the acknowledged operations give {} bytes; first difference at byte {at} (got {}.., want {}..; {zeros} zero bytes read); served by: {sources}",
                    got.len(),
                    want.len(),
                    show(&got),
                    show(want)
                );
                // Logged too, so its wall-clock time lines up with the cluster's logs.
                tracing::warn!(violation = %v, "byte mismatch");
                shared.violations.lock().push(v);
            }
            true
        }
        Err(_) => false,
    }
}

/// One log worker: namespace and file-content operations in its own directory until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn log_worker(
    id: u32,
    client: Client,
    reader: Client,
    seed: u64,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x1060_0000 + id as u64));
    let dir = format!("{LOG_DIR}/w{id}");
    // name -> exact content, for this worker's live, untainted files.
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut next_name = 0u64;
    let mut tag = (id as u64 + 1) << 48;
    while !stop.load(Ordering::Relaxed) {
        tag += 1;
        let choice = if files.len() < 2 {
            0
        } else {
            rng.random_range(0..10)
        };
        let names: Vec<String> = files.keys().cloned().collect();
        let pick = if names.is_empty() {
            String::new()
        } else {
            names[rng.random_range(0..names.len())].clone()
        };
        let path = format!("{dir}/{pick}");
        // (paths touched, result, new model entries)
        let (touched, result): (Vec<String>, Result<(), String>) = match choice {
            // create
            0 if files.len() < 8 => {
                next_name += 1;
                let name = format!("f{next_name}");
                let p = format!("{dir}/{name}");
                let len = rng.random_range(0..48 << 10);
                let data = log_bytes(&mut rng, tag, len);
                let r = timed(client.write_file(&p, &data)).await;
                if r.is_ok() {
                    files.insert(name, data);
                }
                (vec![p], r)
            }
            // append
            0..=3 => {
                let len = rng.random_range(1..24 << 10);
                let data = log_bytes(&mut rng, tag, len);
                let r = async {
                    let opts = OpenOptions {
                        mode: OpenMode::WRITE,
                        ..Default::default()
                    };
                    let h = timed(client.open(&path, opts)).await?;
                    timed(h.open_inode().append(&data)).await?;
                    timed(h.fsync()).await?;
                    timed(h.close()).await
                }
                .await;
                if r.is_ok() {
                    files
                        .get_mut(&pick)
                        .expect("picked")
                        .extend_from_slice(&data);
                }
                (vec![path], r)
            }
            // overwrite inside the file
            4 | 5 => {
                let cur = files[&pick].len();
                if cur == 0 {
                    continue;
                }
                let off = rng.random_range(0..cur);
                let len = rng.random_range(1..=(cur - off).min(20 << 10));
                let data = log_bytes(&mut rng, tag, len);
                let r = async {
                    let opts = OpenOptions {
                        mode: OpenMode::WRITE,
                        ..Default::default()
                    };
                    let h = timed(client.open(&path, opts)).await?;
                    timed(h.pwrite(off as u64, &data)).await?;
                    timed(h.fsync()).await?;
                    timed(h.close()).await
                }
                .await;
                if r.is_ok() {
                    files.get_mut(&pick).expect("picked")[off..off + len].copy_from_slice(&data);
                }
                (vec![path], r)
            }
            // truncate (shrink)
            6 => {
                let cur = files[&pick].len();
                let to = if cur == 0 {
                    0
                } else {
                    rng.random_range(0..cur)
                };
                let r = async {
                    let opts = OpenOptions {
                        mode: OpenMode::WRITE,
                        ..Default::default()
                    };
                    let h = timed(client.open(&path, opts)).await?;
                    timed(h.truncate(to as u64)).await?;
                    timed(h.close()).await
                }
                .await;
                if r.is_ok() {
                    files.get_mut(&pick).expect("picked").truncate(to);
                }
                (vec![path], r)
            }
            // rename to a fresh name
            7 | 8 => {
                next_name += 1;
                let name = format!("f{next_name}");
                let to = format!("{dir}/{name}");
                let r = timed(client.rename_path(&path, &to, RenameMode::Replace)).await;
                if r.is_ok() {
                    let data = files.remove(&pick).expect("picked");
                    files.insert(name, data);
                    if matches!(timed(reader.exists(&path)).await, Ok(true)) {
                        shared.violations.lock().push(format!(
                            "{path} still exists after its rename to {to} was acknowledged"
                        ));
                    }
                }
                (vec![path, to], r)
            }
            // unlink
            _ => {
                let r = timed(client.unlink_path(&path)).await;
                if r.is_ok() {
                    files.remove(&pick);
                    if matches!(timed(reader.exists(&path)).await, Ok(true)) {
                        shared.violations.lock().push(format!(
                            "{path} still exists after its unlink was acknowledged"
                        ));
                    }
                }
                (vec![path], r)
            }
        };
        match result {
            Ok(()) => {
                shared.stats.log_ops_acked.fetch_add(1, Ordering::Relaxed);
                // Check a file this op left behind through another client, now and then.
                if rng.random_bool(0.5) {
                    for p in &touched {
                        let name = p.rsplit('/').next().unwrap_or_default();
                        if let Some(want) = files.get(name) {
                            verify_file(&reader, p, want, &shared, "after ack").await;
                        }
                    }
                }
            }
            Err(e) => {
                shared.stats.log_ops_failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(worker = id, error = %e, "log op failed; its files are tainted");
                let mut t = shared.tainted.lock();
                for p in &touched {
                    let name = p.rsplit('/').next().unwrap_or_default();
                    files.remove(name);
                    t.insert(p.clone());
                }
            }
        }
    }
    let mut m = shared.model.lock();
    for (name, data) in files {
        m.insert(format!("{dir}/{name}"), data);
    }
}

/// The end-of-run byte-exact check of every untainted log file, and of each worker
/// directory's names against the model.
pub async fn final_log_check(reader: &Client, workers: u32, shared: &Shared) -> Result<(), String> {
    let model = shared.model.lock().clone();
    let tainted = shared.tainted.lock().clone();
    for (path, want) in &model {
        if !verify_file(reader, path, want, shared, "final").await {
            return Err(format!("cannot read {path} after the faults stopped"));
        }
    }
    for w in 0..workers {
        let dir = format!("{LOG_DIR}/w{w}");
        let entries = timed(reader.read_dir_all(&dir)).await?;
        let present: BTreeSet<String> = entries
            .iter()
            .map(|e| format!("{dir}/{}", e.name))
            .collect();
        for p in model.keys().filter(|p| p.starts_with(&format!("{dir}/"))) {
            if !present.contains(p) {
                shared
                    .violations
                    .lock()
                    .push(format!("final: {p} was acknowledged but is missing"));
            }
        }
        for p in &present {
            if !model.contains_key(p) && !tainted.contains(p) {
                shared.violations.lock().push(format!(
                    "final: {p} exists but every acknowledged operation removed or never created it"
                ));
            }
        }
    }
    Ok(())
}
