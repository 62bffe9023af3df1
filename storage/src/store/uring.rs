//! io_uring I/O for a target's data file: one dedicated ring thread per target, fed through a
//! bounded request queue. A request is a list of reads or writes (submitted together, so the
//! blocks of one update or one multi-block read are in flight at once) and optionally an
//! `fdatasync` that the ring thread submits only after every write of the request completed
//! (io_uring does not order an fsync after writes submitted with it unless linked; sequencing
//! in the ring thread also lets short writes be resubmitted before the sync).
//!
//! Callers are the chunk engine's blocking threads (the engine's API is synchronous): they
//! enqueue a request carrying a one-shot reply channel, wake the ring thread through an
//! eventfd it keeps polled on the ring, and block on the reply. Requests queued while the ring
//! is busy are submitted in one `io_uring_enter` with whatever else is ready.
//!
//! Why one ring per target: a target is one disk (one directory) in pond's model, so its ring
//! holds that disk's queue depth and a slow disk never delays another's completions; the
//! thread sleeps in `io_uring_enter` when idle, so idle targets cost nothing but a stack.
//! A ring per node would batch more across targets, but tests and `pond up` open targets
//! independently and dropping a target must stop its I/O thread.
//!
//! Memory safety: the kernel reads and writes callers' buffers until the completion arrives,
//! so a request is answered only after every one of its operations completed, and the ring
//! thread aborts the process if it ever unwinds or its ring fails with operations in flight
//! (freeing buffers the kernel may still fill is worse than stopping).

use io_uring::{IoUring, opcode, squeue, types};
use std::alloc::Layout;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

/// Submission-queue entries of a ring. Operations in flight are capped one below it (the
/// eventfd poll takes a slot), so the completion queue (twice as large) never overflows.
/// 128 covers a 4 MiB chunk's 64 block writes twice over and a deep read queue; the disk
/// here saturates near queue depth 32 (`/work/shared/MACHINE.md`).
pub const RING_ENTRIES: u32 = 128;
/// Requests waiting for the ring thread; a caller blocks when it is full (backpressure). Each
/// caller has at most one request queued, so this only bounds a burst of callers.
pub const QUEUE_REQUESTS_MAX: usize = 1024;
/// O_DIRECT alignment of file offsets, lengths and buffer addresses (the page and sector size
/// the engine is built on, `SECTOR_BYTES`).
pub const DIRECT_ALIGN: usize = 4096;

const WAKE: u64 = u64::MAX;
const SYNC_OP: u32 = u32::MAX;

/// A heap buffer aligned to `DIRECT_ALIGN`, with room rounded up to whole 4 KiB units, for
/// O_DIRECT transfers. Its visible length (`len`) may be shorter than its room.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    room: usize,
    /// Goes back to `POOL` when dropped (room is a pool class).
    pooled: bool,
}

/// Read buffers of at least this room come from `POOL`; smaller ones are allocated each time.
const POOL_ROOM_MIN: usize = 64 << 10;
/// Rooms above this are allocated each time.
const POOL_ROOM_MAX: usize = 16 << 20;
/// Power-of-two room classes, `POOL_ROOM_MIN..=POOL_ROOM_MAX`.
const POOL_CLASSES: usize = (POOL_ROOM_MAX / POOL_ROOM_MIN).trailing_zeros() as usize + 1;
/// Bytes of idle buffers the pool keeps; beyond it, returned buffers are freed.
const POOL_IDLE_MAX: usize = 64 << 20;

/// Idle read buffers (addresses of `AlignedBuf` allocations of their class's room). A fresh
/// heap buffer for every 1 MiB read cost the storage node a page fault per 4 KiB and a
/// zeroing pass (profile of a warm sequential read: ~8 % of its CPU); a reused one is
/// neither faulted nor zeroed again — only the parts no segment fills (holes) are.
struct BufPool {
    idle: [Vec<usize>; POOL_CLASSES],
    idle_bytes: usize,
}

static POOL: parking_lot::Mutex<BufPool> = parking_lot::const_mutex(BufPool {
    idle: [const { Vec::new() }; POOL_CLASSES],
    idle_bytes: 0,
});

fn pool_class(room: usize) -> usize {
    (room / POOL_ROOM_MIN).trailing_zeros() as usize
}

// SAFETY: an owned heap allocation with no interior sharing.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only (`AsRef`).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(room: usize) -> Layout {
        Layout::from_size_align(room, DIRECT_ALIGN).expect("aligned layout")
    }

    /// A zero-filled buffer of `len` bytes (room rounded up to 4 KiB, also zero).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let room = len.div_ceil(DIRECT_ALIGN).max(1) * DIRECT_ALIGN;
        Self::alloc(len, room, false)
    }

    fn alloc(len: usize, room: usize, pooled: bool) -> AlignedBuf {
        let layout = Self::layout(room);
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len,
            room,
            pooled,
        }
    }

    /// A buffer of `len` bytes for a read that overwrites it: its bytes are initialised but
    /// may hold an earlier read's data, so the caller must fill or zero every byte of `len`
    /// (`zero_outside`). Rooms from 64 KiB to 16 MiB are reused through a process-wide pool.
    pub fn for_overwrite(len: usize) -> AlignedBuf {
        let room = len.div_ceil(DIRECT_ALIGN).max(1) * DIRECT_ALIGN;
        if !(POOL_ROOM_MIN / 2 < room && room <= POOL_ROOM_MAX) {
            return Self::zeroed(len);
        }
        let room = room.next_power_of_two();
        let reused = {
            let mut p = POOL.lock();
            let got = p.idle[pool_class(room)].pop();
            if got.is_some() {
                p.idle_bytes -= room;
            }
            got
        };
        match reused {
            Some(addr) => AlignedBuf {
                // Non-null: it came from an `AlignedBuf` of this room.
                ptr: NonNull::new(addr as *mut u8).expect("pooled buffer"),
                len,
                room,
                pooled: true,
            },
            None => Self::alloc(len, room, true),
        }
    }

    /// Zeroes every byte of `len` outside `filled` (ranges of `len`, any order, may touch).
    pub fn zero_outside(&mut self, filled: &mut [(usize, usize)]) {
        filled.sort_unstable();
        let len = self.len;
        let room = self.room_mut();
        let mut at = 0;
        for &(s, e) in filled.iter() {
            if s > at {
                room[at..s.min(len)].fill(0);
            }
            at = at.max(e);
        }
        if at < len {
            room[at..len].fill(0);
        }
    }

    /// Aligned copy of `data`, zero-padded to whole 4 KiB units (for O_DIRECT writes).
    pub fn copy_padded(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(data.len());
        b.room_mut()[..data.len()].copy_from_slice(data);
        b
    }

    pub fn room(&self) -> usize {
        self.room
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The whole room, including padding past `len`.
    pub fn room_mut(&mut self) -> &mut [u8] {
        // SAFETY: `room` bytes were allocated (zero-initialised) and are owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.room) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len <= room` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.pooled {
            let mut p = POOL.lock();
            if p.idle_bytes + self.room <= POOL_IDLE_MAX {
                p.idle_bytes += self.room;
                p.idle[pool_class(self.room)].push(self.ptr.as_ptr() as usize);
                return;
            }
        }
        // SAFETY: allocated in `alloc` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.room)) }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    Read,
    Write,
}

/// One positional transfer. A read is complete once `need` bytes arrived (an O_DIRECT read
/// asks for whole 4 KiB units and may stop at the end of the file past `need`).
#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub dir: Dir,
    pub fd: RawFd,
    pub buf: *mut u8,
    pub len: u32,
    pub need: u32,
    pub offset: u64,
}

struct Req {
    ops: Vec<Op>,
    /// `fdatasync` this file after every op succeeded.
    sync: Option<RawFd>,
    reply: SyncSender<io::Result<()>>,
}

// SAFETY: the raw buffer pointers in `ops` are only dereferenced by the kernel; `Ring::run`'s
// contract keeps them valid until the reply is sent.
unsafe impl Send for Req {}

/// A ring thread and the queue feeding it.
pub struct Ring {
    tx: Option<SyncSender<Req>>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is owned below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd. A full counter (EAGAIN) means a
    // wake-up is pending anyway.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

impl Ring {
    /// Sets up the ring (fails with EPERM/ENOSYS where io_uring is disabled, e.g.
    /// `kernel.io_uring_disabled`) and starts its thread.
    pub fn new(name: &str) -> io::Result<Ring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let wake = Arc::new(eventfd()?);
        let (tx, rx) = sync_channel(QUEUE_REQUESTS_MAX);
        let w2 = wake.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pond-uring-{name}"))
            .spawn(move || ring_thread(ring, rx, w2))?;
        Ok(Ring {
            tx: Some(tx),
            wake,
            thread: Some(thread),
        })
    }

    /// Runs `ops` (all submitted together), then `fdatasync(sync)` if given and every op
    /// succeeded; returns the first error.
    ///
    /// # Safety
    /// Every op's `buf..buf + len` must stay valid (and, for reads, unaliased) until this
    /// returns, and `fd`s must stay open until then.
    pub unsafe fn run(&self, ops: Vec<Op>, sync: Option<RawFd>) -> io::Result<()> {
        let (reply, done) = sync_channel(1);
        let gone = || io::Error::other("io_uring thread is gone");
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(Req { ops, sync, reply })
            .map_err(|_| gone())?;
        signal(&self.wake);
        done.recv().map_err(|_| gone())?
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Closing the queue makes the thread exit once it is drained.
        self.tx = None;
        signal(&self.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Aborts the process if the ring thread unwinds: the kernel may still write into buffers of
/// requests in flight, which their callers would free.
struct AbortOnUnwind;
impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("pond: io_uring thread panicked with I/O in flight; aborting");
            std::process::abort();
        }
    }
}

struct Active {
    req: Req,
    /// Bytes transferred per op.
    done: Vec<u32>,
    /// Ops (or the sync) not completed yet.
    left: usize,
    synced: bool,
    err: Option<io::Error>,
}

struct State {
    active: Vec<Option<Active>>,
    free: Vec<usize>,
    /// (request, op) to submit: first submissions, remainders of short transfers, syncs.
    ready: VecDeque<(usize, u32)>,
}

impl State {
    fn accept(&mut self, req: Req) {
        let n = req.ops.len();
        let a = Active {
            done: vec![0; n],
            left: n,
            synced: false,
            err: None,
            req,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.active[i] = Some(a);
                i
            }
            None => {
                self.active.push(Some(a));
                self.active.len() - 1
            }
        };
        self.ready.extend((0..n as u32).map(|k| (i, k)));
        if n == 0 {
            self.ops_done(i);
        }
    }

    /// All ops of request `i` finished: sync next, or answer.
    fn ops_done(&mut self, i: usize) {
        let a = self.active[i].as_mut().expect("active request");
        if a.err.is_none() && a.req.sync.is_some() && !a.synced {
            a.synced = true;
            a.left = 1;
            self.ready.push_back((i, SYNC_OP));
            return;
        }
        let a = self.active[i].take().expect("active request");
        self.free.push(i);
        let _ = a.req.reply.send(match a.err {
            Some(e) => Err(e),
            None => Ok(()),
        });
    }

    fn entry(&self, i: usize, k: u32) -> squeue::Entry {
        let a = self.active[i].as_ref().expect("active request");
        let ud = ((i as u64) << 32) | k as u64;
        if k == SYNC_OP {
            let fd = a.req.sync.expect("sync requested");
            return opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(ud);
        }
        let op = a.req.ops[k as usize];
        let d = a.done[k as usize];
        // SAFETY (of the pointer arithmetic): `d < op.len`, inside the caller's buffer.
        let p = op.buf.wrapping_add(d as usize);
        let (len, off) = (op.len - d, op.offset + d as u64);
        match op.dir {
            Dir::Read => opcode::Read::new(types::Fd(op.fd), p, len)
                .offset(off)
                .build()
                .user_data(ud),
            Dir::Write => opcode::Write::new(types::Fd(op.fd), p, len)
                .offset(off)
                .build()
                .user_data(ud),
        }
    }

    /// Accounts a completion; a short transfer or a retryable error goes back to `ready`.
    fn complete(&mut self, i: usize, k: u32, res: i32) {
        let a = self.active[i].as_mut().expect("active request");
        if res == -libc::EINTR || res == -libc::EAGAIN {
            self.ready.push_back((i, k));
            return;
        }
        if k == SYNC_OP {
            if res < 0 {
                a.err = Some(io::Error::from_raw_os_error(-res));
            }
        } else if res < 0 {
            a.err.get_or_insert(io::Error::from_raw_os_error(-res));
        } else {
            let op = a.req.ops[k as usize];
            let d = &mut a.done[k as usize];
            *d += res as u32;
            let finished = *d >= op.need || *d >= op.len;
            if res == 0 && !finished {
                a.err.get_or_insert(match op.dir {
                    Dir::Read => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "read past the end of the data file",
                    ),
                    Dir::Write => {
                        io::Error::new(io::ErrorKind::WriteZero, "write made no progress")
                    }
                });
            } else if !finished {
                self.ready.push_back((i, k));
                return;
            }
        }
        a.left -= 1;
        if a.left == 0 {
            self.ops_done(i);
        }
    }
}

fn ring_thread(mut ring: IoUring, rx: Receiver<Req>, wake: Arc<OwnedFd>) {
    let _guard = AbortOnUnwind;
    let max_in_flight = RING_ENTRIES as usize - 1;
    let mut st = State {
        active: Vec::new(),
        free: Vec::new(),
        ready: VecDeque::new(),
    };
    let (mut armed, mut closed, mut in_flight) = (false, false, 0usize);
    let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(2 * RING_ENTRIES as usize);
    loop {
        {
            let mut sq = ring.submission();
            if !armed && !closed {
                let poll = opcode::PollAdd::new(types::Fd(wake.as_raw_fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(WAKE);
                // SAFETY: the eventfd outlives the ring (both live until this thread ends).
                if unsafe { sq.push(&poll) }.is_ok() {
                    armed = true;
                }
            }
            while in_flight < max_in_flight && !sq.is_full() {
                let Some((i, k)) = st.ready.pop_front() else {
                    break;
                };
                let e = st.entry(i, k);
                // SAFETY: the buffers and descriptors stay valid until the request is
                // answered (`Ring::run`'s contract), which happens after this completes.
                unsafe { sq.push(&e) }.expect("submission queue has room");
                in_flight += 1;
            }
        }
        if closed && in_flight == 0 && st.ready.is_empty() {
            break;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                ) => {}
            Err(e) => {
                eprintln!("pond: io_uring_enter failed ({e}) with I/O in flight; aborting");
                std::process::abort();
            }
        }
        cqes.clear();
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            if ud == WAKE {
                armed = false;
                let mut n: u64 = 0;
                // SAFETY: reads 8 bytes into a valid u64 (resets the nonblocking eventfd).
                unsafe { libc::read(wake.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
                loop {
                    match rx.try_recv() {
                        Ok(req) => st.accept(req),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                continue;
            }
            in_flight -= 1;
            st.complete((ud >> 32) as usize, ud as u32, res);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A pooled read buffer comes back with an earlier read's bytes; `zero_outside` must
    /// leave nothing of them outside the ranges the new read filled.
    #[test]
    fn reused_read_buffers_leak_nothing_outside_what_was_filled() {
        let len = 300 << 10;
        let mut seen_reuse = false;
        for round in 0..50u8 {
            let mut b = AlignedBuf::for_overwrite(len);
            assert!(b.room() >= len && b.as_ref().len() == len);
            // Fill two ranges with a marker, leave the rest to `zero_outside`.
            let (r1, r2) = ((4096, 70_000), (65_536 * 3, 65_536 * 3 + 5000));
            let old_nonzero = b.as_ref().iter().any(|&x| x != 0);
            seen_reuse |= old_nonzero;
            b.room_mut()[r1.0..r1.1].fill(0xAB);
            b.room_mut()[r2.0..r2.1].fill(0xCD);
            b.zero_outside(&mut [r2, r1]);
            let v = b.as_ref();
            assert!(v[..r1.0].iter().all(|&x| x == 0), "round {round}");
            assert!(v[r1.0..r1.1].iter().all(|&x| x == 0xAB));
            assert!(v[r1.1..r2.0].iter().all(|&x| x == 0));
            assert!(v[r2.0..r2.1].iter().all(|&x| x == 0xCD));
            assert!(v[r2.1..].iter().all(|&x| x == 0));
            // Dirty all of it before it goes back to the pool.
            b.room_mut().fill(0xEE);
        }
        assert!(seen_reuse, "the pool never handed a buffer back");
    }

    fn ring() -> Option<Ring> {
        match Ring::new("test") {
            Ok(r) => Some(r),
            // io_uring disabled on this kernel: the fallback tests cover the engine.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOSYS)) => None,
            Err(e) => panic!("ring setup: {e}"),
        }
    }

    #[test]
    fn writes_reads_sync_and_short_reads() {
        let Some(r) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join("f"))
            .unwrap();
        let fd = f.as_raw_fd();
        // More ops than the ring holds at once: they queue inside the ring thread.
        let n = 3 * RING_ENTRIES as usize;
        let bufs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 1000]).collect();
        let ops = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| Op {
                dir: Dir::Write,
                fd,
                buf: b.as_ptr() as *mut u8,
                len: b.len() as u32,
                need: b.len() as u32,
                offset: i as u64 * 1000,
            })
            .collect();
        // SAFETY: `bufs` outlives the call.
        unsafe { r.run(ops, Some(fd)) }.unwrap();
        let mut back = vec![0u8; 1000];
        f.read_exact_at(&mut back, 7000).unwrap();
        assert_eq!(back, vec![7u8; 1000]);
        // A read reaching past the end of the file: fine if `need` bytes arrived...
        let mut tail = vec![0u8; 4096];
        let end = (n as u64 - 1) * 1000;
        let op = Op {
            dir: Dir::Read,
            fd,
            buf: tail.as_mut_ptr(),
            len: 4096,
            need: 1000,
            offset: end,
        };
        // SAFETY: `tail` outlives the call.
        unsafe { r.run(vec![op], None) }.unwrap();
        assert_eq!(&tail[..1000], &vec![(n - 1) as u8; 1000][..]);
        // ...an error if not.
        let op = Op { need: 1001, ..op };
        // SAFETY: as above.
        let err = unsafe { r.run(vec![op], None) }.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // A bad descriptor fails that request only; the ring keeps serving.
        let bad = Op { fd: -1, ..op };
        // SAFETY: as above.
        assert!(unsafe { r.run(vec![bad], None) }.is_err());
        // SAFETY: no ops.
        unsafe { r.run(Vec::new(), Some(fd)) }.unwrap();
    }

    #[test]
    fn many_callers_share_one_ring() {
        let Some(r) = ring() else { return };
        let r = Arc::new(r);
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.path().join("f"))
                .unwrap(),
        );
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let (r, f) = (r.clone(), f.clone());
                std::thread::spawn(move || {
                    for round in 0..50u64 {
                        let data = vec![t ^ round as u8; 4096];
                        let off = (round * 8 + t as u64) * 4096;
                        let w = Op {
                            dir: Dir::Write,
                            fd: f.as_raw_fd(),
                            buf: data.as_ptr() as *mut u8,
                            len: 4096,
                            need: 4096,
                            offset: off,
                        };
                        // SAFETY: `data` outlives the call.
                        unsafe { r.run(vec![w], None) }.unwrap();
                        let mut back = vec![0u8; 4096];
                        let rd = Op {
                            dir: Dir::Read,
                            buf: back.as_mut_ptr(),
                            ..w
                        };
                        // SAFETY: `back` outlives the call.
                        unsafe { r.run(vec![rd], None) }.unwrap();
                        assert_eq!(back, data);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn aligned_buffers() {
        let b = AlignedBuf::copy_padded(&[1, 2, 3]);
        assert_eq!(b.as_ref(), &[1, 2, 3]);
        assert_eq!(b.room(), DIRECT_ALIGN);
        assert_eq!(b.ptr.as_ptr() as usize % DIRECT_ALIGN, 0);
        let mut z = AlignedBuf::zeroed(DIRECT_ALIGN + 1);
        assert_eq!(z.room(), 2 * DIRECT_ALIGN);
        assert!(z.room_mut().iter().all(|b| *b == 0));
    }
}
