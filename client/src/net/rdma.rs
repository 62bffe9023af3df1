//! RDMA transport (cargo feature `rdma`, ibverbs): the same frames as TCP, carried as RC
//! SEND/RECV messages between registered buffers, so the same server logic and the same
//! `Transport` interface apply.
//!
//! Setup per peer: a TCP connection authenticates with `Hello` as usual, then exchanges
//! queue-pair endpoints (`RdmaConnect` / `RdmaAccept`); after the handshake every frame goes
//! over the queue pair, split into `SEGMENT_BYTES` messages and reassembled by the frame
//! header's lengths. One thread per connection owns the queue pair, its completion queue and
//! its registered buffers, and busy-polls completions.
//!
//! Where there is no RDMA device (these machines: the kernel has no RDMA support), `open`
//! fails with `NetError::NoRdmaDevice` and callers use `TcpTransport`. A server that does not
//! accept RDMA answers `RdmaConnect` with `NotSupported`, which `call` reports as is.

use super::tcp::{read_frame, write_frame};
use super::{NetError, Transport};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use pond_proto::ClientId;
use pond_proto::data::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

/// Bytes per RDMA message. 1 MiB: large enough that a 4 MiB chunk is 4 messages, small enough
/// that the registered buffers (`DEPTH` × 2 per connection) stay at 32 MiB.
pub const SEGMENT_BYTES: usize = 1 << 20;
/// Send and receive buffers per connection (work requests outstanding each way).
pub const DEPTH: usize = 16;
/// Completion-queue entries: both directions' work requests.
const CQ_ENTRIES: i32 = 2 * DEPTH as i32;

/// The opened RDMA device, shared by every connection of the process (its context lives for
/// the whole process, which lets queue pairs and memory regions borrow it as `'static`).
pub struct RdmaDevice {
    name: String,
    ctx: &'static ibverbs::Context,
}

impl RdmaDevice {
    /// Opens the first RDMA device. Fails cleanly where there is none.
    pub fn open() -> Result<RdmaDevice, NetError> {
        let list = ibverbs::devices()
            .map_err(|e| NetError::NoRdmaDevice(format!("cannot enumerate RDMA devices: {e}")))?;
        let dev = list
            .iter()
            .next()
            .ok_or_else(|| NetError::NoRdmaDevice("no RDMA device present".into()))?;
        let name = dev
            .name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "?".into());
        let ctx = dev
            .open()
            .map_err(|e| NetError::NoRdmaDevice(format!("open RDMA device {name}: {e}")))?;
        Ok(RdmaDevice {
            name,
            ctx: Box::leak(Box::new(ctx)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

type Waiter = oneshot::Sender<Result<Frame, NetError>>;

struct Conn {
    outgoing: std::sync::mpsc::SyncSender<Bytes>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    dead: AtomicBool,
}

impl Conn {
    fn fail_all(&self) {
        self.dead.store(true, Ordering::Release);
        for (_, w) in self.pending.lock().drain() {
            let _ = w.send(Err(NetError::Closed));
        }
    }
}

/// RDMA data-plane transport.
pub struct RdmaTransport {
    device: Arc<RdmaDevice>,
    token: String,
    client: ClientId,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
}

impl RdmaTransport {
    /// Opens the RDMA device; `NetError::NoRdmaDevice` where there is none.
    pub fn open(token: impl Into<String>, client: ClientId) -> Result<RdmaTransport, NetError> {
        let device = Arc::new(RdmaDevice::open()?);
        Ok(RdmaTransport {
            device,
            token: token.into(),
            client,
            conns: Mutex::new(HashMap::new()),
        })
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, NetError> {
        if let Some(c) = self.conns.lock().get(addr)
            && !c.dead.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        let c = self.connect(addr).await?;
        self.conns.lock().insert(addr.to_string(), c.clone());
        Ok(c)
    }

    async fn connect(&self, addr: &str) -> Result<Arc<Conn>, NetError> {
        // 1. Queue pair on a dedicated thread (its resources never leave it).
        let (ep_tx, ep_rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>, NetError>>(1);
        let (remote_tx, remote_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let (out_tx, out_rx) = std::sync::mpsc::sync_channel::<Bytes>(DEPTH);
        let conn = Arc::new(Conn {
            outgoing: out_tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            dead: AtomicBool::new(false),
        });
        let ctx = self.device.ctx;
        let weak = Arc::downgrade(&conn);
        std::thread::Builder::new()
            .name("pond-rdma".into())
            .spawn(move || qp_thread(ctx, ep_tx, remote_rx, out_rx, weak))
            .map_err(NetError::Io)?;
        let local = ep_rx.recv().map_err(|_| NetError::Closed)??;
        // 2. Authenticate and exchange endpoints over TCP.
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| NetError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = BytesMut::new();
        let hello = DataRequest::Hello {
            token: self.token.clone(),
            client: self.client,
        };
        write_frame(
            &mut wr,
            &encode_frame(FrameKind::Request, 0, &hello, 0)?,
            &Bytes::new(),
        )
        .await?;
        let connect = DataRequest::RdmaConnect { endpoint: local };
        write_frame(
            &mut wr,
            &encode_frame(FrameKind::Request, 1, &connect, 0)?,
            &Bytes::new(),
        )
        .await?;
        wr.flush().await?;
        for expect in [0u64, 1] {
            let f = read_frame(&mut rd, &mut buf)
                .await?
                .ok_or(NetError::Closed)?;
            if f.header.request_id != expect {
                return Err(NetError::Unexpected("rdma handshake order"));
            }
            match f.response()? {
                DataResponse::HelloOk if expect == 0 => {}
                DataResponse::RdmaAccept { endpoint } if expect == 1 => {
                    remote_tx.send(endpoint).map_err(|_| NetError::Closed)?;
                }
                DataResponse::Error(e) if expect == 0 => {
                    return Err(NetError::Unauthenticated(e.message));
                }
                DataResponse::Error(e) => return Err(NetError::Remote(e)),
                _ => return Err(NetError::Unexpected("rdma handshake")),
            }
        }
        Ok(conn)
    }

    async fn call_inner(
        &self,
        addr: &str,
        req: DataRequest,
        payload: Bytes,
    ) -> Result<(DataResponse, Bytes), NetError> {
        let conn = self.conn(addr).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let head = encode_frame(FrameKind::Request, id, &req, payload.len())?;
        let mut frame = BytesMut::with_capacity(head.len() + payload.len());
        frame.extend_from_slice(&head);
        frame.extend_from_slice(&payload);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().insert(id, tx);
        let c2 = conn.clone();
        let frame = frame.freeze();
        // The queue is bounded: wait for room off the async runtime.
        tokio::task::spawn_blocking(move || c2.outgoing.send(frame))
            .await
            .map_err(|_| NetError::Closed)?
            .map_err(|_| NetError::Closed)?;
        let f = rx.await.map_err(|_| NetError::Closed)??;
        Ok((f.response()?, f.payload))
    }
}

impl Transport for RdmaTransport {
    fn call<'a>(
        &'a self,
        addr: &'a str,
        req: DataRequest,
        payload: Bytes,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<(DataResponse, Bytes), NetError>> {
        Box::pin(async move {
            tokio::time::timeout(deadline, self.call_inner(addr, req, payload))
                .await
                .map_err(|_| NetError::Timeout(deadline))?
        })
    }
}

fn io_err(what: &str, e: std::io::Error) -> NetError {
    NetError::Io(std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Owns one queue pair: sends queued frames in segments, reassembles received frames and
/// hands them to their waiters. Ends when the connection is dropped or fails.
fn qp_thread(
    ctx: &'static ibverbs::Context,
    ep_tx: std::sync::mpsc::SyncSender<Result<Vec<u8>, NetError>>,
    remote_rx: std::sync::mpsc::Receiver<Vec<u8>>,
    out_rx: std::sync::mpsc::Receiver<Bytes>,
    conn: std::sync::Weak<Conn>,
) {
    let setup = || -> Result<_, NetError> {
        let cq = ctx
            .create_cq(CQ_ENTRIES, 0)
            .map_err(|e| io_err("create completion queue", e))?;
        let pd = ctx
            .alloc_pd()
            .map_err(|e| io_err("allocate protection domain", e))?;
        Ok((cq, pd))
    };
    let (cq, pd) = match setup() {
        Ok(x) => x,
        Err(e) => {
            let _ = ep_tx.send(Err(e));
            return;
        }
    };
    let run = || -> Result<(), NetError> {
        let mut builder = pd.create_qp(&cq, &cq, ibverbs::ibv_qp_type::IBV_QPT_RC);
        builder
            .set_max_send_wr(DEPTH as u32)
            .set_max_recv_wr(DEPTH as u32);
        // RoCE needs a GID; InfiniBand routes by LID.
        if ctx.gid_table().len() > 1 {
            builder.set_gid_index(1);
        } else if !ctx.gid_table().is_empty() {
            builder.set_gid_index(0);
        }
        let prepared = builder
            .build()
            .map_err(|e| io_err("create queue pair", e))?;
        let local = postcard::to_stdvec(&prepared.endpoint())
            .map_err(|e| NetError::Frame(FrameError::Encode(e.to_string())))?;
        ep_tx.send(Ok(local)).map_err(|_| NetError::Closed)?;
        let remote = remote_rx.recv().map_err(|_| NetError::Closed)?;
        let remote: ibverbs::QueuePairEndpoint = postcard::from_bytes(&remote)
            .map_err(|e| NetError::Frame(FrameError::Decode(e.to_string())))?;
        let mut qp = prepared
            .handshake(remote)
            .map_err(|e| io_err("connect queue pair", e))?;
        let mut send_mr = pd
            .allocate::<u8>(SEGMENT_BYTES * DEPTH)
            .map_err(|e| io_err("register send buffers", e))?;
        let mut recv_mr = pd
            .allocate::<u8>(SEGMENT_BYTES * DEPTH)
            .map_err(|e| io_err("register recv buffers", e))?;
        for i in 0..DEPTH {
            let r = i * SEGMENT_BYTES..(i + 1) * SEGMENT_BYTES;
            // SAFETY: the receive buffer slot `i` is owned by the posted work request until its
            // completion is polled below; nothing else reads or writes it meanwhile.
            unsafe { qp.post_receive(&mut recv_mr, r, (DEPTH + i) as u64) }
                .map_err(|e| io_err("post receive", e))?;
        }
        let mut free_send: Vec<usize> = (0..DEPTH).collect();
        let mut queued: std::collections::VecDeque<Bytes> = Default::default();
        let mut inbound = BytesMut::new();
        let mut completions = vec![ibverbs::ibv_wc::default(); CQ_ENTRIES as usize];
        loop {
            let Some(conn) = conn.upgrade() else {
                return Ok(());
            };
            // Segment outgoing frames into free send buffers.
            while let Ok(f) = out_rx.try_recv() {
                queued.push_back(f);
            }
            while let (Some(front), Some(&slot)) = (queued.front_mut(), free_send.last()) {
                let n = front.len().min(SEGMENT_BYTES);
                let base = slot * SEGMENT_BYTES;
                send_mr[base..base + n].copy_from_slice(&front[..n]);
                // SAFETY: send slot `slot` was free (its previous send completed) and is not
                // touched again until this send's completion returns it to `free_send`.
                unsafe { qp.post_send(&mut send_mr, base..base + n, slot as u64) }
                    .map_err(|e| io_err("post send", e))?;
                free_send.pop();
                let _ = front.split_to(n);
                if front.is_empty() {
                    queued.pop_front();
                }
            }
            let done = cq
                .poll(&mut completions)
                .map_err(|e| io_err("poll completions", e))?;
            if done.is_empty() {
                std::thread::yield_now();
                continue;
            }
            for wc in done.iter() {
                if let Some((status, vendor)) = wc.error() {
                    conn.fail_all();
                    return Err(NetError::Io(std::io::Error::other(format!(
                        "RDMA work completion failed: status {status:?}, vendor error {vendor}"
                    ))));
                }
                let id = wc.wr_id() as usize;
                if id < DEPTH {
                    free_send.push(id);
                    continue;
                }
                let slot = id - DEPTH;
                let base = slot * SEGMENT_BYTES;
                inbound.extend_from_slice(&recv_mr[base..base + wc.len()]);
                let r = base..base + SEGMENT_BYTES;
                // SAFETY: the slot's data was copied out above; it is handed back to the NIC.
                unsafe { qp.post_receive(&mut recv_mr, r, id as u64) }
                    .map_err(|e| io_err("post receive", e))?;
                while let Some(f) = decode_frame(&mut inbound)? {
                    if let Some(w) = conn.pending.lock().remove(&f.header.request_id) {
                        let _ = w.send(Ok(f));
                    }
                }
            }
        }
    };
    if let Err(e) = run() {
        tracing::warn!(error = %e, "RDMA connection failed");
        if let Some(c) = conn.upgrade() {
            c.fail_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These machines have no RDMA device: opening must fail with a clear error, not panic,
    /// and TCP must keep working alongside.
    #[test]
    fn no_device_is_a_clear_error() {
        match RdmaTransport::open("t", ClientId(1)) {
            Err(NetError::NoRdmaDevice(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("unexpected error {e}"),
            Ok(t) => eprintln!("an RDMA device exists here: {}", t.device.name()),
        }
        let _tcp = super::super::tcp::TcpTransport::new("t", ClientId(1));
    }
}
