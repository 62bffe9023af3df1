//! The data-plane server: accepts TCP connections, authenticates the first frame, then serves
//! pipelined requests concurrently (bounded per connection in count and payload bytes) and
//! writes replies in completion order. A malformed, truncated or oversized frame, or a wrong
//! token, closes that connection only.

use crate::limits::*;
use crate::node::Node;
use bytes::{Bytes, BytesMut};
use pond_client::net::tcp::{read_frame, write_frame};
use pond_proto::data::*;
use pond_proto::{ErrorCode, PondError};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn token_matches(given: &str, want: &str) -> bool {
    let (a, b) = (given.as_bytes(), want.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accepts connections until `stop` turns true; connection tasks end with it.
pub async fn serve(node: Arc<Node>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let conns = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut tasks = JoinSet::new();
    let stop_conns = stop.clone();
    loop {
        tokio::select! {
            _ = crate::stopped(&mut stop) => break,
            acc = listener.accept() => {
                let (stream, peer) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = conns.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many data-plane connections; refusing");
                    continue;
                };
                let node = node.clone();
                let stop = stop_conns.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    if let Err(e) = connection(node, stream, stop).await {
                        tracing::debug!(%peer, error = %e, "data-plane connection closed");
                    }
                });
                // Reap finished connection tasks so the set does not grow.
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Net(#[from] pond_client::net::NetError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Refused(&'static str),
}

async fn connection(
    node: Arc<Node>,
    stream: TcpStream,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(64 << 10);
    // 1. Authenticate: the first frame must be a Hello with the cluster token.
    let first = tokio::time::timeout(
        Duration::from_millis(HELLO_TIMEOUT_MS),
        read_frame(&mut rd, &mut buf),
    )
    .await
    .map_err(|_| ConnError::Refused("no hello in time"))??
    .ok_or(ConnError::Refused("closed before hello"))?;
    let hello_ok = first.header.kind == FrameKind::Request
        && matches!(first.request(), Ok(DataRequest::Hello { ref token, .. })
            if token.len() <= TOKEN_BYTES_MAX && token_matches(token, node.token()));
    if !hello_ok {
        let e = PondError::new(ErrorCode::Unauthenticated, "missing or wrong cluster token");
        let head = encode_frame(
            FrameKind::Response,
            first.header.request_id,
            &DataResponse::Error(e),
            0,
        )?;
        let _ = write_frame(&mut wr, &head, &Bytes::new()).await;
        let _ = wr.shutdown().await;
        return Err(ConnError::Refused("authentication failed"));
    }
    let head = encode_frame(
        FrameKind::Response,
        first.header.request_id,
        &DataResponse::HelloOk,
        0,
    )?;
    write_frame(&mut wr, &head, &Bytes::new()).await?;
    wr.flush().await?;

    // 2. Writer task: replies in completion order, coalesced into few syscalls.
    let (tx, mut rx) = mpsc::channel::<(Bytes, Bytes)>(REQUESTS_IN_FLIGHT_PER_CONN_MAX);
    let writer = tokio::spawn(async move {
        let mut wr = tokio::io::BufWriter::with_capacity(64 << 10, wr);
        while let Some((h, p)) = rx.recv().await {
            write_frame(&mut wr, &h, &p).await?;
            while let Ok((h, p)) = rx.try_recv() {
                write_frame(&mut wr, &h, &p).await?;
            }
            wr.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });

    // 3. Reader: one task per request, bounded by count and payload bytes.
    let slots = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_PER_CONN_MAX));
    let bytes = Arc::new(Semaphore::new(
        PAYLOAD_BYTES_IN_FLIGHT_PER_CONN_MAX as usize,
    ));
    let mut inflight = JoinSet::new();
    let res: Result<(), ConnError> = loop {
        let frame = tokio::select! {
            _ = crate::stopped(&mut stop) => break Ok(()),
            f = read_frame(&mut rd, &mut buf) => f,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        if frame.header.kind != FrameKind::Request {
            break Err(ConnError::Refused("response frame from a client"));
        }
        let req = match frame.request() {
            Ok(r) => r,
            Err(e) => break Err(e.into()),
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        let n = frame.payload.len().max(1) as u32;
        let Ok(mem) = bytes.clone().acquire_many_owned(n).await else {
            break Ok(());
        };
        let node = node.clone();
        let tx = tx.clone();
        let id = frame.header.request_id;
        inflight.spawn(async move {
            let (resp, payload) = node.handle(req, frame.payload).await;
            drop(mem);
            let head = match encode_frame(FrameKind::Response, id, &resp, payload.len()) {
                Ok(h) => h,
                Err(e) => {
                    let err =
                        DataResponse::Error(PondError::new(ErrorCode::Internal, e.to_string()));
                    match encode_frame(FrameKind::Response, id, &err, 0) {
                        Ok(h) => {
                            let _ = tx.send((h, Bytes::new())).await;
                        }
                        Err(_) => tracing::error!("cannot encode an error reply"),
                    }
                    return;
                }
            };
            let _ = tx.send((head, payload)).await;
            drop(slot);
        });
        while inflight.try_join_next().is_some() {}
    };
    if *stop.borrow() {
        inflight.abort_all();
    }
    while inflight.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
    }
}
