//! Open files.
//!
//! Every open of one inode in one `Client` shares an [`OpenInode`]: its write-behind buffer,
//! the ordering of its chunk writes, its length bookkeeping and its write session with meta.
//! So two handles of one file in one process (or two FUSE opens) see each other's writes
//! at once and never reorder each other's bytes.
//!
//! Write path, per write call:
//! 1. reserve buffer+in-flight bytes (`WRITE_INFLIGHT_BYTES_MAX`; backpressure),
//! 2. merge the bytes into the buffer,
//! 3. hand complete chunks (or everything, past `WRITE_BUFFER_BYTES_MAX`) to background writes,
//!    each chained after the previous write of the same chunk so that chunk writes apply in
//!    call order.
//!
//! A background write failure is kept and returned by the next write, flush, fsync or close.
//! fsync/close flush the buffer, wait for every write, then report the length to meta
//! (`ReportLength`, or `CloseWrite` when the last writer closes), so `stat` after `close` is
//! exact.

use crate::client::Core;
use crate::error::{ClientError, Result};
use crate::limits;
use crate::readahead::{self, Access, Part, ReadAhead};
use crate::service::expect_attr;
use crate::stripe;
use crate::wbuf::{DirtyPiece, WriteBuffer};
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use pond_proto::layout::Layout;
use pond_proto::meta::{InodeAttr, MetaRequest, SetAttr};
use pond_proto::{ErrorCode, InodeId, PondError, SessionId};
use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};

type Done = Shared<BoxFuture<'static, ()>>;

/// A range being read ahead (`readahead.rs`): its bytes, or why it could not be read.
type Prefetch = Shared<BoxFuture<'static, Result<Bytes, PondError>>>;

/// Why buffered bytes are sent to storage.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dispatch {
    /// While the file stays open (full chunk, full buffer, a read of dirty bytes, a direct
    /// write): a write session must hold the inode in meta first.
    Background,
    /// flush/fsync/close: the length report follows at once.
    Closing,
}

/// How a handle was opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct OpenMode {
    pub read: bool,
    pub write: bool,
    /// Every write goes to the end of the file.
    pub append: bool,
}

impl OpenMode {
    pub const READ: OpenMode = OpenMode {
        read: true,
        write: false,
        append: false,
    };
    pub const WRITE: OpenMode = OpenMode {
        read: false,
        write: true,
        append: false,
    };
    pub const READ_WRITE: OpenMode = OpenMode {
        read: true,
        write: true,
        append: false,
    };

    /// From `open(2)` flags.
    pub fn from_flags(flags: i32) -> OpenMode {
        let acc = flags & libc::O_ACCMODE;
        OpenMode {
            read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
        }
    }
}

struct WState {
    buf: WriteBuffer,
    /// The last write dispatched per chunk; a new write of the chunk waits for it.
    last: HashMap<u64, Done>,
    /// Highest end offset written through this client since open or the last truncate,
    /// buffered bytes included.
    written_end: u64,
    /// `written_end` as last reported to meta.
    reported_end: u64,
    /// Size and truncate version from meta, as last seen.
    meta_size: u64,
    truncate_version: u64,
    /// First failure of a background write, returned by the next write/flush/fsync/close.
    error: Option<PondError>,
    /// Bytes were written since the last report to meta (mtime must move even when the
    /// length does not).
    modified: bool,
    session: Option<SessionId>,
    writers: u32,
    handles: u32,
    /// Keep the session while any handle is open, even with no writer (open-unlinked files).
    pinned: bool,
    /// A background registration of a read session is scheduled or running.
    session_pending: bool,
    /// Reads fail with ESTALE from this instant: the file was unlinked before a session held
    /// it, so its chunks may be collected after meta's GC grace.
    held_until: Option<tokio::time::Instant>,
}

pub struct OpenInode {
    pub(crate) inode: InodeId,
    pub(crate) layout: Layout,
    core: Arc<Core>,
    st: Mutex<WState>,
    /// Permits = bytes; buffered + in-flight bytes hold them.
    budget: Arc<Semaphore>,
    /// Serialises session transitions (OpenWrite/CloseWrite) of this inode.
    session_lock: tokio::sync::Mutex<()>,
    /// Data epoch: bumped by every write or truncate through this client (any handle) before
    /// it returns, and when meta shows a truncate by another client. Read-ahead started under
    /// an older epoch is never used.
    epoch: AtomicU64,
}

impl OpenInode {
    pub(crate) fn new(core: Arc<Core>, attr: &InodeAttr) -> Result<OpenInode> {
        let layout = attr.layout.clone().ok_or_else(|| {
            ClientError::new(
                ErrorCode::InvalidArgument,
                format!("inode {} has no layout", attr.inode),
            )
        })?;
        layout.validate()?;
        Ok(OpenInode {
            inode: attr.inode,
            st: Mutex::new(WState {
                buf: WriteBuffer::new(layout.chunk_bytes),
                last: HashMap::new(),
                written_end: 0,
                reported_end: 0,
                meta_size: attr.size,
                truncate_version: attr.truncate_version,
                error: None,
                modified: false,
                session: None,
                writers: 0,
                handles: 0,
                pinned: false,
                session_pending: false,
                held_until: None,
            }),
            layout,
            core,
            budget: Arc::new(Semaphore::new(limits::WRITE_INFLIGHT_BYTES_MAX)),
            session_lock: tokio::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
        })
    }

    /// The data epoch (see the field): equal values before and after a read of storage mean
    /// no write or truncate of this client touched the file in between.
    pub(crate) fn data_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Marks the file's bytes as changed; called with the state lock held, after the change
    /// is visible to reads (buffered or dispatched), so that a reader that sees the new epoch
    /// also sees the change.
    fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn inode(&self) -> InodeId {
        self.inode
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The size as this client knows it: meta's, grown by our own writes.
    pub fn size(&self) -> u64 {
        let st = self.st.lock();
        st.meta_size.max(st.written_end)
    }

    /// Takes in a fresher attribute from meta and returns it with our local view of the size.
    pub fn overlay(&self, attr: &mut InodeAttr) {
        let mut st = self.st.lock();
        if attr.truncate_version > st.truncate_version {
            // Someone truncated: lengths we have not reported belong to the old version.
            st.truncate_version = attr.truncate_version;
            st.written_end = st.buf.end().unwrap_or(0);
            st.reported_end = 0;
            st.meta_size = attr.size;
            self.bump_epoch();
        } else if attr.truncate_version == st.truncate_version {
            st.meta_size = attr.size;
        }
        attr.size = attr.size.max(st.meta_size.max(st.written_end));
    }

    pub(crate) fn handle_opened(&self, write: bool) {
        let mut st = self.st.lock();
        st.handles += 1;
        if write {
            st.writers += 1;
        }
    }

    /// Opens this client's session on the inode if none is open (`OpenSession`; returns the
    /// attributes meta answered with), or adopts `given` (a session that `Create` or an
    /// `OpenSession` of the caller already opened). A second session is closed again.
    pub(crate) async fn ensure_session(
        &self,
        given: Option<SessionId>,
    ) -> Result<Option<InodeAttr>> {
        let _g = self.session_lock.lock().await;
        let have = self.st.lock().session;
        match (have, given) {
            (Some(_), Some(extra)) => {
                let reply = self
                    .core
                    .meta_op(MetaRequest::CloseSession {
                        inode: self.inode,
                        client: self.core.client_id,
                        session: extra,
                    })
                    .await;
                reply.map(|_| None)
            }
            (Some(_), None) => Ok(None),
            (None, Some(s)) => {
                self.st.lock().session = Some(s);
                Ok(None)
            }
            (None, None) => self.open_session_locked().await.map(Some),
        }
    }

    /// `OpenSession` for this client; the caller holds `session_lock` and saw no session.
    /// Returns meta's attributes, overlaid with this client's own writes.
    async fn open_session_locked(&self) -> Result<InodeAttr> {
        let s = self.core.new_session();
        let reply = self
            .core
            .meta_op(MetaRequest::OpenSession {
                inode: self.inode,
                client: self.core.client_id,
                session: s,
            })
            .await?;
        let mut attr = expect_attr("OpenSession", reply)?;
        self.overlay(&mut attr);
        self.st.lock().session = Some(s);
        Ok(attr)
    }

    /// A read-only open: the session that keeps the file for this client's handles is
    /// registered `READ_SESSION_DELAY_MS` later in the background, and only if a handle is
    /// still open then (a short read costs no meta commit). Until it lands, meta's GC grace
    /// keeps an unlinked file's chunks; if the file is gone by then, reads end
    /// `READ_UNREGISTERED_SAFE_MS` after this open.
    pub(crate) fn session_later(self: &Arc<Self>) {
        let opened = tokio::time::Instant::now();
        {
            let mut st = self.st.lock();
            if st.session.is_some() || st.session_pending {
                return;
            }
            st.session_pending = true;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let safe_until = opened + Duration::from_millis(limits::READ_UNREGISTERED_SAFE_MS);
            tokio::time::sleep(Duration::from_millis(limits::READ_SESSION_DELAY_MS)).await;
            let mut backoff = Duration::from_millis(limits::RETRY_BACKOFF_MIN_MS);
            loop {
                match me.register_read_session().await {
                    Ok(()) => break,
                    Err(e) => {
                        let gone = e.code() == ErrorCode::NotFound;
                        if gone || tokio::time::Instant::now() + backoff >= safe_until {
                            tracing::debug!(inode = %me.inode, error = %e,
                                "read session not registered; reads end at the GC grace");
                            let mut st = me.st.lock();
                            st.held_until =
                                Some(st.held_until.map_or(safe_until, |t| t.min(safe_until)));
                            break;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff =
                            (backoff * 2).min(Duration::from_millis(limits::RETRY_BACKOFF_MAX_MS));
                    }
                }
            }
            me.st.lock().session_pending = false;
        });
    }

    /// `OpenSession` for the handles open now, unless none is open any more or a session
    /// already holds the inode (under the session lock, so a closing handle and this never
    /// cross: no session is left open without a handle).
    async fn register_read_session(&self) -> Result<()> {
        let _g = self.session_lock.lock().await;
        {
            let st = self.st.lock();
            if st.handles == 0 || st.session.is_some() {
                return Ok(());
            }
        }
        self.open_session_locked().await.map(|_| ())
    }

    /// The size to read against (as `size`), or ESTALE once an unregistered handle's file may
    /// have been collected (`session_later`): one look at the state per read.
    fn size_for_read(&self) -> Result<u64> {
        let st = self.st.lock();
        if let Some(t) = st.held_until
            && tokio::time::Instant::now() >= t
        {
            return Err(ClientError::new(
                ErrorCode::StaleHandle,
                format!(
                    "inode {} was removed before this client's read session held it",
                    self.inode
                ),
            ));
        }
        Ok(st.meta_size.max(st.written_end))
    }

    async fn close_session(&self, s: SessionId) -> Result<()> {
        let (length, tv) = {
            let st = self.st.lock();
            (st.written_end, st.truncate_version)
        };
        let reply = self
            .core
            .meta_op(MetaRequest::CloseWrite {
                inode: self.inode,
                client: self.core.client_id,
                session: s,
                length,
                truncate_version: tv,
            })
            .await?;
        if let Ok(mut attr) = expect_attr("CloseWrite", reply) {
            self.overlay(&mut attr);
        }
        let mut st = self.st.lock();
        st.reported_end = st.reported_end.max(length);
        Ok(())
    }

    /// Keeps the inode alive in meta (a write session) until the last handle closes, so an
    /// open file stays readable after it is unlinked or renamed over.
    pub async fn pin(&self) -> Result<()> {
        self.ensure_session(None).await?;
        self.st.lock().pinned = true;
        Ok(())
    }

    /// Writes `data` at `offset` through the write-behind buffer.
    pub async fn write_at(self: &Arc<Self>, offset: u64, data: &[u8]) -> Result<()> {
        self.write_buffered(Some(offset), data).await.map(|_| ())
    }

    /// Appends `data` at the end of the file as this client knows it; returns where it went.
    /// The offset is chosen under the same lock that buffers the bytes, so concurrent appends
    /// of this client never overlap (appends over `WRITE_BUFFER_BYTES_MAX` may interleave).
    pub async fn append(self: &Arc<Self>, data: &[u8]) -> Result<u64> {
        self.write_buffered(None, data).await
    }

    async fn write_buffered(self: &Arc<Self>, offset: Option<u64>, data: &[u8]) -> Result<u64> {
        if let Some(e) = self.st.lock().error.take() {
            return Err(e.into());
        }
        let step = limits::WRITE_BUFFER_BYTES_MAX;
        let mut done = 0usize;
        let mut base = offset;
        while done < data.len() || (data.is_empty() && base.is_none()) {
            let part = &data[done..(done + step).min(data.len())];
            self.budget
                .acquire_many(part.len() as u32)
                .await
                .expect("write budget semaphore is never closed")
                .forget();
            let released = {
                let mut st = self.st.lock();
                let b = *base.get_or_insert(st.meta_size.max(st.written_end));
                let at = b + done as u64;
                if at
                    .checked_add(part.len() as u64)
                    .is_none_or(|e| e > pond_proto::limits::FILE_BYTES_MAX)
                {
                    drop(st);
                    self.budget.add_permits(part.len());
                    return Err(ClientError::new(
                        ErrorCode::FileTooBig,
                        "write beyond the largest file size",
                    ));
                }
                let before = st.buf.bytes();
                st.buf.insert(at, part);
                let replaced = before + part.len() - st.buf.bytes();
                st.written_end = st.written_end.max(at + part.len() as u64);
                st.modified |= !part.is_empty();
                self.bump_epoch();
                let mut ready = st.buf.take_ready();
                if st.buf.bytes() > limits::WRITE_BUFFER_BYTES_MAX {
                    ready.extend(st.buf.take_all());
                }
                self.dispatch_locked(&mut st, ready, false, Dispatch::Background);
                replaced
            };
            if released > 0 {
                self.budget.add_permits(released);
            }
            done += part.len();
            if data.is_empty() {
                break;
            }
        }
        Ok(base.expect("set by the first part or given"))
    }

    /// Writes `data` at `offset` straight to storage (no buffer, no copy) and waits for it.
    /// Buffered bytes of the same chunks are sent first so that order is kept.
    pub async fn write_direct(self: &Arc<Self>, offset: u64, data: Bytes) -> Result<()> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > pond_proto::limits::FILE_BYTES_MAX)
        {
            return Err(ClientError::new(
                ErrorCode::FileTooBig,
                "write beyond the largest file size",
            ));
        }
        let mut waits = Vec::new();
        for p in stripe::split(self.layout.chunk_bytes, offset, data.len()) {
            let piece = DirtyPiece {
                index: p.index,
                offset: p.chunk_offset,
                data: data.slice(p.buf_offset..p.buf_offset + p.len as usize),
            };
            self.budget
                .acquire_many(p.len)
                .await
                .expect("write budget semaphore is never closed")
                .forget();
            let mut st = self.st.lock();
            let base = p.index * self.layout.chunk_bytes as u64;
            let older = st
                .buf
                .take_overlapping(base, self.layout.chunk_bytes as u64);
            self.dispatch_locked(&mut st, older, false, Dispatch::Background);
            waits.extend(self.dispatch_locked(&mut st, vec![piece], true, Dispatch::Background));
            self.bump_epoch();
            st.written_end = st
                .written_end
                .max(p.file_offset(self.layout.chunk_bytes) + p.len as u64);
            st.modified = true;
        }
        for w in waits {
            match w.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ClientError::new(ErrorCode::Internal, "write task vanished")),
            }
        }
        Ok(())
    }

    /// Starts background writes of `pieces`, each after the previous write of its chunk.
    ///
    /// `Background` writes (the file stays open for more) first make sure a write session
    /// holds the inode in meta; a `Closing` flush does not open one: its length report follows
    /// at once (a small file written and closed costs no session at all).
    fn dispatch_locked(
        self: &Arc<Self>,
        st: &mut WState,
        pieces: Vec<DirtyPiece>,
        want_result: bool,
        why: Dispatch,
    ) -> Vec<oneshot::Receiver<Result<(), PondError>>> {
        let mut results = Vec::new();
        let need_session = why == Dispatch::Background && st.session.is_none() && st.writers > 0;
        for p in pieces {
            let prev = st.last.get(&p.index).cloned();
            let (tx, rx) = oneshot::channel::<()>();
            let done: Done = async move {
                let _ = rx.await;
            }
            .boxed()
            .shared();
            st.last.insert(p.index, done.clone());
            let (rtx, rrx) = oneshot::channel();
            if want_result {
                results.push(rrx);
            }
            let me = self.clone();
            tokio::spawn(async move {
                if let Some(prev) = prev {
                    prev.await;
                }
                let len = p.data.len();
                let r = match need_session {
                    true => me.ensure_session(None).await.map(|_| ()),
                    false => Ok(()),
                };
                let r = match r {
                    Ok(()) => me
                        .core
                        .data
                        .write_piece(me.inode, &me.layout, p.index, p.offset, p.data)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                };
                let r = r.map_err(ClientError::into_pond);
                {
                    let mut st = me.st.lock();
                    if let Err(e) = &r
                        && !want_result
                        && st.error.is_none()
                    {
                        tracing::warn!(inode = %me.inode, index = p.index, error = %e, "background write failed");
                        st.error = Some(e.clone());
                    }
                    if st.last.get(&p.index).is_some_and(|d| d.ptr_eq(&done)) {
                        st.last.remove(&p.index);
                    }
                }
                me.budget.add_permits(len);
                let _ = rtx.send(r);
                let _ = tx.send(());
            });
        }
        results
    }

    /// Sends everything buffered and waits for every write in flight. Returns (and clears) the
    /// first background failure.
    pub async fn flush(self: &Arc<Self>) -> Result<()> {
        let waits: Vec<Done> = {
            let mut st = self.st.lock();
            let all = st.buf.take_all();
            self.dispatch_locked(&mut st, all, false, Dispatch::Closing);
            st.last.values().cloned().collect()
        };
        futures::future::join_all(waits).await;
        match self.st.lock().error.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Flush, then tell meta: the length if it grew (meta stamps mtime), else the new mtime if
    /// bytes were overwritten.
    pub async fn sync(self: &Arc<Self>) -> Result<()> {
        self.sync_report(false, None).await.map(|_| ())
    }

    /// `sync`, and with `end_session` also closes the write session in the same request when
    /// no other writer or pin needs it (`CloseWrite` carries the length): what `close(2)`
    /// needs, in one meta round trip. With `set` (a `SetAttr` without a size, from
    /// `Client::setattr`), the same single request also applies `set`, after the length
    /// report's mtime stamp, so times set there win (`SetAttrReport`; tar sets the archived
    /// mtime right after writing). Returns the attributes meta answered with, if it was asked
    /// at all (nothing written, no session and no `set`: no request).
    pub(crate) async fn sync_report(
        self: &Arc<Self>,
        end_session: bool,
        set: Option<&SetAttr>,
    ) -> Result<Option<InodeAttr>> {
        debug_assert!(
            !(end_session && set.is_some()),
            "a close sets no attributes"
        );
        debug_assert!(
            set.is_none_or(|s| s.size.is_none()),
            "a size change truncates first"
        );
        self.flush().await?;
        let _g = self.session_lock.lock().await;
        let (end, reported, tv, modified, meta_size, session, sole) = {
            let mut st = self.st.lock();
            let m = std::mem::take(&mut st.modified);
            (
                st.written_end,
                st.reported_end,
                st.truncate_version,
                m,
                st.meta_size,
                st.session,
                st.handles <= 1 && !st.pinned,
            )
        };
        // A report that does not grow meta's size moves no mtime there: overwrites in place
        // send the mtime themselves.
        let grows = end > reported && end > meta_size;
        let close = session.filter(|_| end_session && sole && (grows || !modified));
        let now = || Some(pond_proto::meta::Timestamp::now());
        let req = if let Some(s) = close {
            MetaRequest::CloseWrite {
                inode: self.inode,
                client: self.core.client_id,
                session: s,
                length: end,
                truncate_version: tv,
            }
        } else if grows {
            match set {
                Some(set) => MetaRequest::SetAttrReport {
                    inode: self.inode,
                    set: set.clone(),
                    length: end,
                    truncate_version: tv,
                },
                None => MetaRequest::ReportLength {
                    inode: self.inode,
                    length: end,
                    truncate_version: tv,
                },
            }
        } else if modified || set.is_some() {
            // Overwritten bytes move mtime to now, unless `set` gives one.
            let mut set = set.cloned().unwrap_or_default();
            if modified && set.mtime.is_none() {
                set.mtime = now();
            }
            MetaRequest::SetAttr {
                inode: self.inode,
                set,
            }
        } else {
            let mut st = self.st.lock();
            st.reported_end = st.reported_end.max(end);
            return Ok(None);
        };
        let what = req.name();
        let reply = match self.core.meta_op(req).await {
            Ok(r) => r,
            Err(e) => {
                self.st.lock().modified |= modified;
                return Err(e);
            }
        };
        let mut attr = expect_attr(what, reply)?;
        let mut st = self.st.lock();
        // Meta has at least `end` now (reported, or it had more already).
        st.reported_end = st.reported_end.max(end);
        if close.is_some() {
            st.session = None;
        }
        drop(st);
        self.overlay(&mut attr);
        Ok(Some(attr))
    }

    /// Reads up to `len` bytes at `offset` (short at the end of the file).
    pub async fn read_at(self: &Arc<Self>, offset: u64, len: usize) -> Result<Bytes> {
        let size = self.size_for_read()?;
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let len = len
            .min((size - offset) as usize)
            .min(limits::IO_CALL_BYTES_MAX);
        self.settle(offset, len as u64).await?;
        let cb = self.layout.chunk_bytes;
        let pieces: Vec<stripe::Piece> = stripe::split(cb, offset, len).collect();
        let got = self
            .core
            .data
            .read_pieces(self.inode, &self.layout, &pieces)
            .await?;
        if got.len() == 1 && got[0].len() == len {
            return Ok(got.into_iter().next().expect("one piece"));
        }
        let mut out = BytesMut::zeroed(len);
        for (p, b) in pieces.iter().zip(&got) {
            out[p.buf_offset..p.buf_offset + b.len()].copy_from_slice(b);
        }
        Ok(out.freeze())
    }

    /// Reads into `buf` at `offset`; returns the bytes filled (short at the end of the file).
    pub async fn read_into(self: &Arc<Self>, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = self.size_for_read()?;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len().min((size - offset) as usize);
        self.settle(offset, len as u64).await?;
        let pieces: Vec<stripe::Piece> =
            stripe::split(self.layout.chunk_bytes, offset, len).collect();
        let got = self
            .core
            .data
            .read_pieces(self.inode, &self.layout, &pieces)
            .await?;
        for (p, b) in pieces.iter().zip(&got) {
            let dst = &mut buf[p.buf_offset..p.buf_offset + p.len as usize];
            dst[..b.len()].copy_from_slice(b);
            dst[b.len()..].fill(0);
        }
        Ok(len)
    }

    /// Makes every write to `[offset, offset + len)` visible on storage before a read.
    pub(crate) async fn settle(self: &Arc<Self>, offset: u64, len: u64) -> Result<()> {
        let cb = self.layout.chunk_bytes as u64;
        let waits: Vec<Done> = {
            let mut st = self.st.lock();
            let dirty = st.buf.take_overlapping(offset, len);
            self.dispatch_locked(&mut st, dirty, false, Dispatch::Background);
            let (first, last) = (offset / cb, (offset + len).div_ceil(cb));
            st.last
                .iter()
                .filter(|(i, _)| (first..last).contains(*i))
                .map(|(_, d)| d.clone())
                .collect()
        };
        futures::future::join_all(waits).await;
        match self.st.lock().error.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Truncates (or extends) the file to `size`: chunks beyond it are trimmed on storage, then
    /// meta records the size with a new truncate version.
    pub async fn truncate(self: &Arc<Self>, size: u64) -> Result<InodeAttr> {
        if size > pond_proto::limits::FILE_BYTES_MAX {
            return Err(ClientError::new(
                ErrorCode::FileTooBig,
                format!("size {size}"),
            ));
        }
        // 1. Drop buffered bytes beyond the new size and let in-flight writes land, so none of
        //    them lands after the trim.
        let waits: Vec<Done> = {
            let mut st = self.st.lock();
            let dropped = st.buf.truncate(size);
            self.budget.add_permits(dropped);
            self.bump_epoch();
            st.last.values().cloned().collect()
        };
        futures::future::join_all(waits).await;
        if let Some(e) = self.st.lock().error.take() {
            return Err(e.into());
        }
        // 2. Trim storage, unless this only extends the file (nothing stored beyond the end).
        let fresh = expect_attr(
            "GetAttr",
            self.core
                .meta_op(MetaRequest::GetAttr { inode: self.inode })
                .await?,
        )?;
        let known_end = fresh.size.max(self.st.lock().written_end);
        if size < known_end {
            let trimmed = self.trim(size).await;
            // Read-ahead that ran during the trim may hold bytes from before it.
            self.bump_epoch();
            trimmed?;
        }
        // 3. Record the size in meta.
        let reply = self
            .core
            .meta_op(MetaRequest::SetAttr {
                inode: self.inode,
                set: SetAttr {
                    size: Some(size),
                    ..Default::default()
                },
            })
            .await?;
        let attr = expect_attr("SetAttr", reply)?;
        {
            let mut st = self.st.lock();
            st.truncate_version = attr.truncate_version;
            st.meta_size = attr.size;
            // Bytes still buffered (all below `size`) must be reported under the new version.
            st.written_end = st.buf.end().unwrap_or(0);
            st.reported_end = 0;
            // Read-ahead that ran during the trim may hold bytes from before it.
            self.bump_epoch();
        }
        Ok(attr)
    }

    async fn trim(&self, size: u64) -> Result<()> {
        let plan = stripe::truncate_plan(self.layout.chunk_bytes, size);
        let mut chains = self.layout.chains.clone();
        chains.sort();
        chains.dedup();
        let removes = chains
            .into_iter()
            .map(|c| self.core.data.remove_from(self.inode, c, plan.remove_from));
        let results = futures::future::join_all(removes).await;
        for r in results {
            r?;
        }
        if let Some((index, len)) = plan.cut {
            self.core
                .data
                .truncate_chunk(self.inode, &self.layout, index, len)
                .await?;
        }
        Ok(())
    }

    /// One handle closes: flush; the last writer (or last handle of a pinned inode) closes the
    /// write session with the final length, others report the length.
    pub(crate) async fn handle_closed(self: &Arc<Self>, write: bool) -> Result<()> {
        let flushed = if write {
            self.sync_report(true, None).await.map(|_| ())
        } else {
            Ok(())
        };
        let _guard = self.session_lock.lock().await;
        let (session, end_session) = {
            let mut st = self.st.lock();
            assert!(st.handles > 0, "close of a handle that was not opened");
            st.handles -= 1;
            if write {
                assert!(st.writers > 0, "writer count underflow");
                st.writers -= 1;
            }
            // The session holds the inode for every handle (readers too: another client's
            // unlink must not take the file from under them).
            let keep = st.handles > 0;
            (st.session, !keep)
        };
        let reported = match session {
            Some(s) if end_session => {
                let r = self.close_session(s).await;
                let mut st = self.st.lock();
                st.session = None;
                st.pinned = false;
                r
            }
            // Writers already synced above; other handles keep the session.
            _ => Ok(()),
        };
        if self.st.lock().handles == 0 {
            self.core.forget_open(self);
        }
        flushed.and(reported)
    }

    /// Whether any handle of this inode is open in this client.
    pub fn is_open(&self) -> bool {
        self.st.lock().handles > 0
    }
}

/// An open file. Positional I/O (`pread`/`pwrite`) takes `&self` and may run concurrently;
/// `read`/`write` use the handle's cursor.
///
/// Each handle opened for reading only keeps its own read-ahead (`readahead.rs`): read
/// sequentially, it has the next ranges of the file requested in the background; see
/// docs/client.md ("Read-ahead") for what that guarantees.
pub struct File {
    oi: Arc<OpenInode>,
    mode: OpenMode,
    pos: u64,
    closed: AtomicBool,
    /// Read-ahead on (read-only handles, unless turned off with `set_read_ahead`).
    ra_on: AtomicBool,
    ra: Mutex<ReadAhead<Prefetch>>,
}

/// Starts reading `[from, to)` of `oi` in the background for read-ahead; `permit` (its bytes
/// of the read-ahead budget) is held until the read is done.
fn start_prefetch(
    oi: &Arc<OpenInode>,
    from: u64,
    to: u64,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Prefetch {
    let oi = oi.clone();
    let span = tracing::debug_span!("read_ahead", inode = %oi.inode, from, to);
    let task = tokio::spawn(tracing::Instrument::instrument(
        async move {
            let r = oi.read_at(from, (to - from) as usize).await;
            drop(permit);
            r.map_err(ClientError::into_pond)
        },
        span,
    ));
    async move {
        match task.await {
            Ok(r) => r,
            Err(_) => Err(PondError::new(
                ErrorCode::Internal,
                "read-ahead task vanished",
            )),
        }
    }
    .boxed()
    .shared()
}

impl File {
    pub(crate) fn new(oi: Arc<OpenInode>, mode: OpenMode) -> File {
        oi.handle_opened(mode.write);
        File {
            oi,
            mode,
            pos: 0,
            closed: AtomicBool::new(false),
            ra_on: AtomicBool::new(mode.read && !mode.write && *readahead::ENABLED),
            ra: Mutex::new(ReadAhead::new(readahead::PROCESS_BUDGET.clone())),
        }
    }

    /// Turns read-ahead of this handle on or off (on by default for read-only handles, off
    /// for handles that may write). Off, every read asks storage when it is issued, so it
    /// sees every write another client finished before it (not only close-to-open).
    pub fn set_read_ahead(&self, on: bool) {
        self.ra_on.store(on, Ordering::Release);
        if !on {
            self.ra.lock().invalidate();
        }
    }

    /// Read-ahead counters of this handle (ranges started, reads served from them, drops).
    pub fn read_ahead_stats(&self) -> readahead::Stats {
        self.ra.lock().stats()
    }

    /// A read through this handle's read-ahead: `None` when the read is not part of a
    /// sequential run (the caller reads as usual), else the bytes (short only at the end of
    /// the file).
    async fn read_sequential(&self, offset: u64, len: usize) -> Result<Option<Bytes>> {
        if !self.ra_on.load(Ordering::Acquire) {
            return Ok(None);
        }
        let size = self.oi.size();
        if offset >= size || len == 0 {
            return Ok(None);
        }
        let len = (len as u64)
            .min(size - offset)
            .min(limits::IO_CALL_BYTES_MAX as u64);
        let epoch = self.oi.data_epoch();
        let access = self.ra.lock().plan(
            offset,
            len,
            size,
            epoch,
            Instant::now(),
            |from, to, permit| start_prefetch(&self.oi, from, to, permit),
        );
        let parts = match access {
            Access::Direct => return Ok(None),
            Access::Sequential(parts) => parts,
        };
        let oi = &self.oi;
        let direct = |start: u64, end: u64| async move {
            let b = oi.read_at(start, (end - start) as usize).await?;
            Ok::<_, ClientError>((start, b))
        };
        let reads = parts.into_iter().map(|p| async move {
            match p {
                Part::Gap { start, end } => Ok::<_, ClientError>(vec![direct(start, end).await?]),
                Part::Ahead {
                    start,
                    end,
                    seg_start,
                    data,
                } => {
                    let b = match data.await {
                        Ok(b) => b,
                        // The read-ahead failed (its retry budget ran out, the task died): the
                        // reader tries itself and reports its own error.
                        Err(e) => {
                            tracing::debug!(inode = %oi.inode, start, error = %e, "read-ahead failed; reading directly");
                            return Ok(vec![direct(start, end).await?]);
                        }
                    };
                    // A range read ahead is short only where the file ended when it was read.
                    let have = seg_start + b.len() as u64;
                    let mut out = Vec::with_capacity(2);
                    if have > start {
                        let to = have.min(end);
                        out.push((
                            start,
                            b.slice((start - seg_start) as usize..(to - seg_start) as usize),
                        ));
                    }
                    if have < end {
                        out.push(direct(have.max(start), end).await?);
                    }
                    Ok(out)
                }
            }
        });
        let pieces: Vec<(u64, Bytes)> = futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect();
        if let [(at, b)] = pieces.as_slice()
            && *at == offset
            && b.len() as u64 == len
        {
            return Ok(Some(b.clone()));
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for (at, b) in pieces {
            // A piece short at the end of the file ends the read there.
            if at != offset + out.len() as u64 {
                break;
            }
            out.extend_from_slice(&b);
        }
        Ok(Some(out.freeze()))
    }

    pub fn inode(&self) -> InodeId {
        self.oi.inode
    }

    pub fn layout(&self) -> &Layout {
        &self.oi.layout
    }

    pub fn mode(&self) -> OpenMode {
        self.mode
    }

    /// The shared state of every open of this inode in this client.
    pub fn open_inode(&self) -> &Arc<OpenInode> {
        &self.oi
    }

    /// File size as this client sees it (meta's size grown by our own writes).
    pub fn size(&self) -> u64 {
        self.oi.size()
    }

    /// Attributes from meta, with our unreported writes counted in the size.
    pub async fn stat(&self) -> Result<InodeAttr> {
        let reply = self
            .oi
            .core
            .meta_op(MetaRequest::GetAttr {
                inode: self.oi.inode,
            })
            .await?;
        let mut attr = expect_attr("GetAttr", reply)?;
        self.oi.overlay(&mut attr);
        Ok(attr)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "file handle is closed",
            ));
        }
        Ok(())
    }

    fn check_read(&self) -> Result<()> {
        self.check_open()?;
        if !self.mode.read {
            return Err(ClientError::new(
                ErrorCode::AccessDenied,
                "file not open for reading",
            ));
        }
        Ok(())
    }

    fn check_write(&self) -> Result<()> {
        self.check_open()?;
        if !self.mode.write {
            return Err(ClientError::new(
                ErrorCode::AccessDenied,
                "file not open for writing",
            ));
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`; shorter only at the end of the file.
    #[tracing::instrument(level = "debug", skip(self), fields(inode = %self.oi.inode))]
    pub async fn pread(&self, offset: u64, len: usize) -> Result<Bytes> {
        self.check_read()?;
        self.read_any_mode(offset, len).await
    }

    /// `pread` without the open-mode check: the kernel reads pages through any handle of a
    /// file, also a write-only one (FUSE reads of an mmap).
    pub async fn read_any_mode(&self, offset: u64, len: usize) -> Result<Bytes> {
        match self.read_sequential(offset, len).await? {
            Some(b) => Ok(b),
            None => self.oi.read_at(offset, len).await,
        }
    }

    /// Reads into `buf` at `offset`; returns the bytes read (short only at the end of the file).
    pub async fn pread_into(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.check_read()?;
        match self.read_sequential(offset, buf.len()).await? {
            Some(b) => {
                buf[..b.len()].copy_from_slice(&b);
                Ok(b.len())
            }
            None => self.oi.read_into(offset, buf).await,
        }
    }

    /// Writes `data` at `offset` (at the end of the file for append handles); returns the
    /// offset written at.
    #[tracing::instrument(level = "debug", skip(self, data), fields(inode = %self.oi.inode, len = data.len()))]
    pub async fn pwrite(&self, offset: u64, data: &[u8]) -> Result<u64> {
        self.check_write()?;
        let at = if self.mode.append {
            self.oi.size()
        } else {
            offset
        };
        self.oi.write_at(at, data).await?;
        Ok(at)
    }

    /// Writes owned bytes straight to storage, waiting for them (the zero-copy path of the
    /// batched API).
    pub async fn pwrite_bytes(&self, offset: u64, data: Bytes) -> Result<u64> {
        self.check_write()?;
        let at = if self.mode.append {
            self.oi.size()
        } else {
            offset
        };
        self.oi.write_direct(at, data).await?;
        Ok(at)
    }

    /// Reads at the cursor.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = self.pread_into(self.pos, buf).await?;
        self.pos += n as u64;
        Ok(n)
    }

    /// Writes at the cursor (at the end for append handles).
    pub async fn write(&mut self, data: &[u8]) -> Result<usize> {
        let at = self.pwrite(self.pos, data).await?;
        self.pos = at + data.len() as u64;
        Ok(data.len())
    }

    /// Writes all of `data` at the cursor.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.write(data).await.map(|_| ())
    }

    /// Reads from the cursor to the end of the file.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>> {
        let size = self.size();
        let mut out = Vec::with_capacity(size.saturating_sub(self.pos) as usize);
        while self.pos < size {
            let want = ((size - self.pos) as usize).min(limits::COPY_STEP_BYTES);
            let b = self.pread(self.pos, want).await?;
            if b.is_empty() {
                break;
            }
            self.pos += b.len() as u64;
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    pub fn seek(&mut self, to: SeekFrom) -> Result<u64> {
        let base: i128 = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => self.size() as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if base < 0 || base > pond_proto::limits::FILE_BYTES_MAX as i128 {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "seek out of range",
            ));
        }
        self.pos = base as u64;
        Ok(self.pos)
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Truncates or extends the file.
    pub async fn truncate(&self, size: u64) -> Result<InodeAttr> {
        self.check_write()?;
        self.oi.truncate(size).await
    }

    /// Sends buffered writes and waits for them, without touching meta.
    pub async fn flush(&self) -> Result<()> {
        self.check_open()?;
        self.oi.flush().await
    }

    /// Makes every write durable on all replicas and the length visible in meta.
    pub async fn fsync(&self) -> Result<()> {
        self.check_open()?;
        self.oi.sync().await
    }

    /// What `close(2)` of one descriptor needs before it returns (FUSE `flush`): writes durable
    /// and the length visible in meta; when this handle is the only writer, the write session
    /// is closed in the same request. The handle stays usable (a duplicated descriptor may
    /// write on: a new session opens when needed). Returns meta's attributes if it was asked.
    pub async fn flush_for_close(&self) -> Result<Option<InodeAttr>> {
        self.check_open()?;
        if !self.mode.write {
            return Ok(None);
        }
        self.oi.sync_report(true, None).await
    }

    /// Flushes and closes the handle (the last writer closes the write session). Returns the
    /// first write failure not yet reported. Closing twice is an error.
    pub async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "file handle closed twice",
            ));
        }
        self.ra.lock().invalidate();
        self.oi.handle_closed(self.mode.write).await
    }
}

impl Drop for File {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Dropped without close: finish in the background if a runtime is around, so that
        // buffered writes and the session are not lost silently.
        let oi = self.oi.clone();
        let write = self.mode.write;
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = oi.handle_closed(write).await {
                        tracing::warn!(inode = %oi.inode, error = %e, "close of a dropped file failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(inode = %oi.inode, "file dropped outside a runtime without close; buffered writes lost");
            }
        }
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("inode", &self.oi.inode)
            .field("mode", &self.mode)
            .finish()
    }
}
