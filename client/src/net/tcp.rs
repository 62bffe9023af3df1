//! TCP transport: a pool with one connection per node address, each carrying many pipelined
//! requests. A writer task drains a bounded queue of frames; a reader task routes replies to
//! their callers by request id. A broken connection fails every call in flight on it with
//! `Closed` and is replaced on the next call.

use super::limits::*;
use super::{NetError, Transport, bufpool};
use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use pond_proto::ClientId;
use pond_proto::data::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

/// Reads one whole frame. `Ok(None)` on a clean end of stream between frames. The header is
/// validated before any memory is reserved for the body, so a peer cannot make us allocate
/// more than one maximum frame.
///
/// A payload of at least `POOLED_PAYLOAD_MIN` bytes is read into its own buffer from the
/// receive pool (`bufpool`), sized exactly and reused across frames, instead of growing `buf`
/// (which copied what had arrived and faulted in fresh pages for every large frame). Not
/// cancel-safe once such a payload has started: callers drop the connection when they cancel.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<Frame>, NetError> {
    loop {
        if let Some(f) = decode_frame(buf)? {
            return Ok(Some(f));
        }
        let mut need = bytes_needed(buf)?;
        if buf.len() >= HEADER_BYTES {
            let h = decode_header(&buf[..HEADER_BYTES])?;
            if h.payload_len as usize >= POOLED_PAYLOAD_MIN {
                let head = HEADER_BYTES + h.meta_len as usize;
                if buf.len() >= head {
                    return read_pooled_payload(r, buf, h).await.map(Some);
                }
                // Only the message still goes through `buf`.
                need = head - buf.len();
            }
        }
        buf.reserve(need.max(READ_BUF_BYTES));
        let n = r.read_buf(buf).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(truncated());
        }
    }
}

fn truncated() -> NetError {
    NetError::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "truncated frame",
    ))
}

/// `buf` holds the header and the whole message of a frame with a large payload, and maybe the
/// payload's first bytes: moves those into a pooled buffer and reads the rest straight into it.
async fn read_pooled_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    header: FrameHeader,
) -> Result<Frame, NetError> {
    let len = header.payload_len as usize;
    buf.advance(HEADER_BYTES);
    let meta = buf.split_to(header.meta_len as usize).freeze();
    let mut payload = bufpool::PooledBuf::take(len);
    let dst = payload.bytes_mut();
    let have = buf.len().min(len);
    dst[..have].copy_from_slice(&buf[..have]);
    buf.advance(have);
    let mut filled = have;
    while filled < len {
        let n = r.read(&mut dst[filled..]).await?;
        if n == 0 {
            return Err(truncated());
        }
        filled += n;
    }
    Ok(Frame {
        header,
        meta,
        payload: payload.freeze(),
    })
}

/// Writes an encoded header+message and then the payload, without copying the payload.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    head: &Bytes,
    payload: &Bytes,
) -> std::io::Result<()> {
    w.write_all(head).await?;
    if !payload.is_empty() {
        w.write_all(payload).await?;
    }
    Ok(())
}

struct Outgoing {
    head: Bytes,
    payload: Bytes,
}

type Waiter = oneshot::Sender<Result<Frame, NetError>>;

struct Conn {
    tx: mpsc::Sender<Outgoing>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    slots: Semaphore,
    dead: AtomicBool,
}

impl Conn {
    fn fail_all(&self) {
        self.dead.store(true, Ordering::Release);
        let waiters: Vec<Waiter> = self.pending.lock().drain().map(|(_, w)| w).collect();
        for w in waiters {
            let _ = w.send(Err(NetError::Closed));
        }
    }
}

/// The default data-plane transport.
pub struct TcpTransport {
    token: String,
    client: ClientId,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
}

impl TcpTransport {
    pub fn new(token: impl Into<String>, client: ClientId) -> TcpTransport {
        TcpTransport {
            token: token.into(),
            client,
            conns: Mutex::new(HashMap::new()),
        }
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, NetError> {
        if let Some(c) = self.conns.lock().get(addr)
            && !c.dead.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        let fresh = self.connect(addr).await?;
        let mut conns = self.conns.lock();
        // Another caller may have connected meanwhile: keep the live one.
        if let Some(c) = conns.get(addr)
            && !c.dead.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        conns.insert(addr.to_string(), fresh.clone());
        Ok(fresh)
    }

    async fn connect(&self, addr: &str) -> Result<Arc<Conn>, NetError> {
        let connect = TcpStream::connect(addr);
        let stream = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect)
            .await
            .map_err(|_| NetError::Connect {
                addr: addr.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"),
            })?
            .map_err(|source| NetError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        stream.set_nodelay(true)?;
        let (mut rd, wr) = stream.into_split();
        let mut wr = BufWriter::with_capacity(64 << 10, wr);
        // 1. Hello with the token, answered before anything else is sent.
        let hello = DataRequest::Hello {
            token: self.token.clone(),
            client: self.client,
        };
        let head = encode_frame(FrameKind::Request, 0, &hello, 0)?;
        write_frame(&mut wr, &head, &Bytes::new()).await?;
        wr.flush().await?;
        let mut buf = BytesMut::with_capacity(READ_BUF_BYTES);
        let reply = read_frame(&mut rd, &mut buf)
            .await?
            .ok_or(NetError::Closed)?;
        match reply.response()? {
            DataResponse::HelloOk => {}
            DataResponse::Error(e) => return Err(NetError::Unauthenticated(e.message)),
            _ => return Err(NetError::Unexpected("hello")),
        }
        // 2. Writer and reader tasks.
        let (tx, mut rx) = mpsc::channel::<Outgoing>(SEND_QUEUE_PER_CONN);
        let conn = Arc::new(Conn {
            tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            slots: Semaphore::new(IN_FLIGHT_PER_CONN_MAX),
            dead: AtomicBool::new(false),
        });
        let wconn = Arc::downgrade(&conn);
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let mut res = write_frame(&mut wr, &out.head, &out.payload).await;
                // Coalesce whatever else is queued into the same flush.
                while res.is_ok() {
                    match rx.try_recv() {
                        Ok(more) => res = write_frame(&mut wr, &more.head, &more.payload).await,
                        Err(_) => break,
                    }
                }
                if res.is_ok() {
                    res = wr.flush().await;
                }
                if res.is_err() {
                    if let Some(c) = wconn.upgrade() {
                        c.fail_all();
                    }
                    return;
                }
            }
        });
        let rconn = Arc::downgrade(&conn);
        let peer = addr.to_string();
        tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut rd, &mut buf).await;
                let Some(conn) = rconn.upgrade() else { return };
                match frame {
                    Ok(Some(f)) if f.header.kind == FrameKind::Response => {
                        let waiter = conn.pending.lock().remove(&f.header.request_id);
                        if let Some(w) = waiter {
                            let _ = w.send(Ok(f));
                        }
                    }
                    Ok(Some(_)) => {
                        tracing::warn!(peer, "request frame from a server; closing");
                        conn.fail_all();
                        return;
                    }
                    Ok(None) => {
                        conn.fail_all();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(peer, error = %e, "data-plane connection failed");
                        conn.fail_all();
                        return;
                    }
                }
            }
        });
        Ok(conn)
    }

    async fn call_inner(
        &self,
        addr: &str,
        req: DataRequest,
        payload: Bytes,
    ) -> Result<(DataResponse, Bytes), NetError> {
        let conn = self.conn(addr).await?;
        let _slot = conn.slots.acquire().await.map_err(|_| NetError::Closed)?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let head = encode_frame(FrameKind::Request, id, &req, payload.len())?;
        let (wtx, wrx) = oneshot::channel();
        conn.pending.lock().insert(id, wtx);
        // Removes the waiter however this call ends (deadline, send failure).
        struct Forget<'a>(&'a Conn, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.pending.lock().remove(&self.1);
            }
        }
        let _forget = Forget(&conn, id);
        if conn.dead.load(Ordering::Acquire) {
            return Err(NetError::Closed);
        }
        conn.tx
            .send(Outgoing { head, payload })
            .await
            .map_err(|_| NetError::Closed)?;
        let frame = wrx.await.map_err(|_| NetError::Closed)??;
        let resp = frame.response()?;
        Ok((resp, frame.payload))
    }
}

impl Transport for TcpTransport {
    fn call<'a>(
        &'a self,
        addr: &'a str,
        req: DataRequest,
        payload: Bytes,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<(DataResponse, Bytes), NetError>> {
        let span = tracing::debug_span!("data_call", addr, req = req.name());
        Box::pin(
            async move {
                tokio::time::timeout(deadline, self.call_inner(addr, req, payload))
                    .await
                    .map_err(|_| NetError::Timeout(deadline))?
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pond_proto::data::DataResponse;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Hands out its bytes in pieces of the given sizes (cycled), like a socket would.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        k: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let step = self.sizes[self.k % self.sizes.len()];
            self.k += 1;
            let n = step.min(out.remaining()).min(self.data.len() - self.at);
            let at = self.at;
            out.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    fn frame(id: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = encode_frame(
            FrameKind::Response,
            id,
            &DataResponse::HelloOk,
            payload.len(),
        )
        .unwrap()
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn frames_of_every_size_survive_any_split_of_the_stream() {
        let payloads = [
            pattern(10, 1),
            pattern(1 << 20, 2),
            pattern(POOLED_PAYLOAD_MIN, 3),
            pattern(POOLED_PAYLOAD_MIN - 1, 4),
            Vec::new(),
            pattern(3 << 20, 5),
            pattern(7, 6),
        ];
        let mut wire = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            wire.extend(frame(i as u64, p));
        }
        for sizes in [
            vec![1usize],
            vec![7, 100_000, 13],
            vec![24, 5, 1 << 20],
            vec![usize::MAX],
        ] {
            let mut r = Trickle {
                data: wire.clone(),
                at: 0,
                sizes: sizes.clone(),
                k: 0,
            };
            let mut buf = BytesMut::new();
            for (i, p) in payloads.iter().enumerate() {
                let f = read_frame(&mut r, &mut buf)
                    .await
                    .unwrap()
                    .expect("a frame");
                assert_eq!(f.header.request_id, i as u64, "split {sizes:?}");
                assert!(matches!(f.response().unwrap(), DataResponse::HelloOk));
                assert_eq!(&f.payload[..], &p[..], "payload {i}, split {sizes:?}");
            }
            assert!(read_frame(&mut r, &mut buf).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_large_payload_cut_short_is_an_error() {
        let mut wire = frame(1, &pattern(1 << 20, 9));
        wire.truncate(wire.len() - 1);
        let mut r = Trickle {
            data: wire,
            at: 0,
            sizes: vec![64 << 10],
            k: 0,
        };
        let mut buf = BytesMut::new();
        assert!(read_frame(&mut r, &mut buf).await.is_err());
    }
}
