//! Batched asynchronous I/O, in the spirit of 3FS's USRBIO: submit many
//! `(file, offset, length)` reads or writes at once, get completions as they finish.
//!
//! - Reads of one submission window are planned together: every request is split into chunk
//!   pieces and all pieces of the window go out as one batched read per storage node
//!   (`DataPath::read_chunks`), so a training batch of small samples costs about one round trip
//!   per node, not one per sample.
//! - Buffers belong to the caller: `ReadInto` fills a caller's `Vec<u8>` and hands it back in
//!   the completion; the only copy is from the socket receive buffer into it. `Read` hands out
//!   the received bytes themselves (`Bytes` slices of the receive buffer, no copy at all) when
//!   a request falls inside one chunk. `Write` sends the caller's `Bytes` to the socket as is.
//! - Writes are applied directly (not through the write-behind buffer) and complete when every
//!   replica has them; the length is reported at the file's next fsync/close as usual.
//! - Bounded: at most `BATCH_REQUESTS_MAX` requests per submission, `BATCH_IN_FLIGHT_MAX`
//!   executing at once.

use crate::error::{ClientError, Result};
use crate::file::File;
use crate::io::ChunkRead;
use crate::limits;
use crate::stripe;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use pond_proto::{ChunkId, ErrorCode};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Requests planned together into one set of per-node batched reads.
const READ_WINDOW: usize = 256;

/// What one request does.
#[derive(Debug)]
pub enum Op {
    /// Read up to `len` bytes; the completion carries the bytes (zero-copy when possible).
    Read { len: usize },
    /// Read into the caller's buffer (`buf.len()` bytes wanted); it comes back in the
    /// completion with the count filled (short only at the end of the file).
    ReadInto { buf: Vec<u8> },
    /// Write the caller's bytes.
    Write { data: Bytes },
}

/// One request of a submission.
pub struct Request {
    pub file: Arc<File>,
    pub offset: u64,
    pub op: Op,
    /// Returned in the completion, to match requests.
    pub tag: u64,
}

/// The result of one request.
#[derive(Debug)]
pub enum Output {
    Read(Bytes),
    ReadInto { buf: Vec<u8>, len: usize },
    Written(usize),
}

#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub result: Result<Output>,
}

/// Completions of one submission, in the order they finish.
pub struct Completions {
    rx: mpsc::Receiver<Completion>,
    left: usize,
}

impl Completions {
    /// Requests not yet completed.
    pub fn pending(&self) -> usize {
        self.left
    }

    /// The next completion, `None` when all have been returned.
    pub async fn next_completion(&mut self) -> Option<Completion> {
        let c = self.rx.recv().await?;
        self.left -= 1;
        Some(c)
    }

    /// Waits for every completion.
    pub async fn wait_all(mut self) -> Vec<Completion> {
        let mut out = Vec::with_capacity(self.left);
        while let Some(c) = self.next_completion().await {
            out.push(c);
        }
        out
    }
}

impl Stream for Completions {
    type Item = Completion;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Completion>> {
        let p = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &p {
            self.left -= 1;
        }
        p
    }
}

/// Submits `reqs`; they start at once. Must be called inside a tokio runtime.
pub fn submit(reqs: Vec<Request>) -> Result<Completions> {
    if reqs.len() > limits::BATCH_REQUESTS_MAX {
        return Err(ClientError::new(
            ErrorCode::InvalidArgument,
            format!(
                "{} requests in one submission, limit {}",
                reqs.len(),
                limits::BATCH_REQUESTS_MAX
            ),
        ));
    }
    let n = reqs.len();
    let (tx, rx) = mpsc::channel(n.max(1));
    let (reads, writes): (Vec<Request>, Vec<Request>) = reqs
        .into_iter()
        .partition(|r| !matches!(r.op, Op::Write { .. }));
    let wtx = tx.clone();
    tokio::spawn(async move {
        let windows: Vec<Vec<Request>> = chunk_vec(reads, READ_WINDOW);
        let tx = &tx;
        futures::stream::iter(windows)
            .for_each_concurrent(
                limits::BATCH_IN_FLIGHT_MAX / READ_WINDOW + 1,
                |w| async move {
                    for c in read_window(w).await {
                        let _ = tx.send(c).await;
                    }
                },
            )
            .await;
    });
    tokio::spawn(async move {
        let wtx = &wtx;
        futures::stream::iter(writes)
            .for_each_concurrent(limits::BATCH_IN_FLIGHT_MAX, |r| async move {
                let Op::Write { data } = r.op else {
                    unreachable!("partitioned above")
                };
                let len = data.len();
                let result = r
                    .file
                    .pwrite_bytes(r.offset, data)
                    .await
                    .map(|_| Output::Written(len));
                let _ = wtx.send(Completion { tag: r.tag, result }).await;
            })
            .await;
    });
    Ok(Completions { rx, left: n })
}

fn chunk_vec<T>(v: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for x in v {
        cur.push(x);
        if cur.len() == n {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A read request after planning: its clipped length and where its pieces sit in the window.
struct Planned {
    req: Request,
    len: usize,
    pieces: Vec<(stripe::Piece, usize)>,
}

async fn read_window(window: Vec<Request>) -> Vec<Completion> {
    let mut done = Vec::new();
    let mut planned = Vec::new();
    let mut reads: Vec<ChunkRead> = Vec::new();
    // 1. Plan: clip to the file size, make earlier buffered writes visible, split into pieces.
    for req in window {
        let want = match &req.op {
            Op::Read { len } => *len,
            Op::ReadInto { buf } => buf.len(),
            Op::Write { .. } => unreachable!("reads only"),
        };
        if !req.file.mode().read {
            let e = ClientError::new(ErrorCode::AccessDenied, "file not open for reading");
            done.push(Completion {
                tag: req.tag,
                result: Err(e),
            });
            continue;
        }
        let oi = req.file.open_inode().clone();
        let size = oi.size();
        let len = if req.offset >= size {
            0
        } else {
            want.min((size - req.offset) as usize)
        };
        if let Err(e) = oi.settle(req.offset, len as u64).await {
            done.push(Completion {
                tag: req.tag,
                result: Err(e),
            });
            continue;
        }
        let layout = oi.layout();
        let mut pieces = Vec::new();
        for p in stripe::split(layout.chunk_bytes, req.offset, len) {
            pieces.push((p, reads.len()));
            reads.push(ChunkRead {
                chunk: ChunkId::new(oi.inode(), p.index),
                chain: layout.chain_of(p.index),
                offset: p.chunk_offset,
                len: p.len,
            });
        }
        planned.push(Planned { req, len, pieces });
    }
    if planned.is_empty() {
        return done;
    }
    // 2. One batched read per storage node for the whole window.
    let core = planned[0].req.file.open_inode().core().clone();
    let got = match core.data.read_chunks(&reads).await {
        Ok(g) => g,
        Err(e) => {
            let code = e.code();
            let msg = e.to_string();
            for p in planned {
                done.push(Completion {
                    tag: p.req.tag,
                    result: Err(ClientError::new(code, msg.clone())),
                });
            }
            return done;
        }
    };
    // 3. Deliver: into the caller's buffer, or the received bytes themselves.
    for p in planned {
        let result = match p.req.op {
            Op::ReadInto { mut buf } => {
                for (piece, k) in &p.pieces {
                    let dst = &mut buf[piece.buf_offset..piece.buf_offset + piece.len as usize];
                    let b = &got[*k];
                    dst[..b.len()].copy_from_slice(b);
                    dst[b.len()..].fill(0);
                }
                Ok(Output::ReadInto { buf, len: p.len })
            }
            Op::Read { .. } => {
                if p.pieces.len() == 1 && got[p.pieces[0].1].len() == p.len {
                    Ok(Output::Read(got[p.pieces[0].1].clone()))
                } else {
                    let mut out = BytesMut::zeroed(p.len);
                    for (piece, k) in &p.pieces {
                        let b = &got[*k];
                        out[piece.buf_offset..piece.buf_offset + b.len()].copy_from_slice(b);
                    }
                    Ok(Output::Read(out.freeze()))
                }
            }
            Op::Write { .. } => unreachable!("reads only"),
        };
        done.push(Completion {
            tag: p.req.tag,
            result,
        });
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use crate::{OpenMode, OpenOptions};

    #[tokio::test]
    async fn batched_reads_and_writes_complete_with_the_right_bytes() {
        let (c, _meta, storage) = testkit::client().await;
        let f = Arc::new(
            c.open(
                "/b",
                OpenOptions {
                    mode: OpenMode::READ_WRITE,
                    ..OpenOptions::write()
                },
            )
            .await
            .unwrap(),
        );
        // 64 writes of 10 KiB records.
        let rec = |k: u64| Bytes::from(vec![(k % 251) as u8; 10_240]);
        let writes: Vec<Request> = (0..64)
            .map(|k| Request {
                file: f.clone(),
                offset: k * 10_240,
                op: Op::Write { data: rec(k) },
                tag: k,
            })
            .collect();
        let done = submit(writes).unwrap().wait_all().await;
        assert_eq!(done.len(), 64);
        for d in &done {
            assert!(matches!(d.result, Ok(Output::Written(10_240))), "{d:?}");
        }
        let calls_before = storage.calls.load(std::sync::atomic::Ordering::Relaxed);
        // 500 random record reads, half into caller buffers.
        let reads: Vec<Request> = (0..500u64)
            .map(|t| {
                let k = (t * 37) % 64;
                let op = if t % 2 == 0 {
                    Op::Read { len: 10_240 }
                } else {
                    Op::ReadInto {
                        buf: vec![0xee; 10_240],
                    }
                };
                Request {
                    file: f.clone(),
                    offset: k * 10_240,
                    op,
                    tag: k,
                }
            })
            .collect();
        let mut comps = submit(reads).unwrap();
        let mut n = 0;
        while let Some(c) = comps.next_completion().await {
            n += 1;
            let want = rec(c.tag);
            match c.result.unwrap() {
                Output::Read(b) => assert_eq!(b, want),
                Output::ReadInto { buf, len } => {
                    assert_eq!(len, 10_240);
                    assert_eq!(&buf[..], &want[..]);
                }
                Output::Written(_) => panic!("no writes submitted"),
            }
        }
        assert_eq!(n, 500);
        let calls = storage.calls.load(std::sync::atomic::Ordering::Relaxed) - calls_before;
        assert!(
            calls <= 2 * 3 * 3,
            "reads batched per node and window, got {calls} calls"
        );
        // Past the end: short, then empty.
        let tail = vec![Request {
            file: f.clone(),
            offset: 64 * 10_240 - 100,
            op: Op::Read { len: 1000 },
            tag: 1,
        }];
        let d = submit(tail).unwrap().wait_all().await;
        assert!(matches!(&d[0].result, Ok(Output::Read(b)) if b.len() == 100));
        f.close().await.unwrap();
    }
}
