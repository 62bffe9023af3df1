//! Client-side read-ahead for sequential readers (one state per open `File` handle).
//!
//! A reader is *sequential* when each read starts near where the stream head is (the end of the
//! furthest sequential read, ± the window, so that the kernel's concurrent FUSE reads arriving
//! out of order still count) or inside a range already read ahead. A read at offset 0, or a read that starts exactly where the previous
//! one ended, turns read-ahead on.
//!
//! While on, every read keeps `window` bytes past its end requested: ranges of at most
//! [`RA_UNIT_BYTES`], aligned to the unit, each one background read of the file (so a window
//! is many requests in flight, spread over the stripe's chains and, through the routing
//! cache's least-outstanding choice, over each chain's replicas). The window starts at four
//! times the read size (at least one unit) and doubles every time a read is served entirely
//! from read-ahead, up to [`RA_WINDOW_BYTES_MAX`] — the kernel's ramp-up, in short.
//!
//! Bounds: a handle holds at most the window plus the unit it is reading; all handles of the
//! process together at most [`RA_PROCESS_BYTES_MAX`] (a semaphore of bytes; a range that gets
//! no permit is simply not read ahead, the reader then reads it itself). A random read drops
//! everything and turns read-ahead off until the pattern is sequential again.
//!
//! Freshness: the caller passes the inode's *data epoch* (bumped by every write or truncate of
//! the inode through this client, on any handle, before the call returns). Read-ahead issued
//! under another epoch is dropped before a read looks at it, so a read never returns bytes
//! older than this client's own writes that finished before the read began. A range is also
//! dropped unused once it was started more than [`RA_AGE_MAX`] ago. Writes of other clients:
//! see docs/client.md ("Read-ahead").
//!
//! This module is the state machine only (no I/O): `plan` tells the caller which parts of a
//! read are already covered by read-ahead and starts new ranges through a callback.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Size (and alignment) of one read-ahead request. 1 MiB: the size the data plane moves at
/// full speed in one round trip (larger ranges are split per chunk anyway), and what a FUSE
/// read (`max_read`) or the bench's `pread` asks for at most.
pub const RA_UNIT_BYTES: u64 = 1 << 20;

/// Largest read-ahead window of one handle. 16 MiB = 16 requests in flight: at ~1.2 ms per
/// 1 MiB round trip on this loaded machine that is >10 GiB/s worth of latency hiding, well
/// past what loopback (~3.5 GiB/s) or the disk (~1.3 GiB/s) delivers, while one sequential
/// reader costs at most 17 MiB of memory.
pub const RA_WINDOW_BYTES_MAX: u64 = 16 << 20;

/// Read-ahead bytes (in flight or waiting to be read) of all handles of the process: eight
/// readers at the full window. Bounds a FUSE mount serving many sequential readers at once;
/// beyond it readers read for themselves (no waiting for permits).
pub const RA_PROCESS_BYTES_MAX: usize = 128 << 20;

/// A range started longer ago than this is not used (it is read again): what a reader gets
/// from read-ahead is never older than this plus the read's own time. 1 s is the FUSE mount's
/// attribute and entry TTL, the staleness the mount already allows between clients, and far
/// longer than a sequential reader takes to reach the end of a 16 MiB window.
pub const RA_AGE_MAX: Duration = Duration::from_secs(1);

/// Read-ahead is on for read-only handles unless the environment has `POND_READ_AHEAD=off`
/// (read once per process): an A/B switch for benchmarks and a way out if it ever misbehaves.
pub(crate) static ENABLED: LazyLock<bool> =
    LazyLock::new(|| std::env::var("POND_READ_AHEAD").map_or(true, |v| v != "off"));

/// The process-wide read-ahead budget (permits = bytes).
pub(crate) static PROCESS_BUDGET: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(RA_PROCESS_BYTES_MAX)));

/// One range read ahead: the caller's handle on the read (`T`) and the bytes it holds of the
/// budget (shared with the read itself, so they return only when both are gone).
struct Segment<T> {
    end: u64,
    started: Instant,
    data: T,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// A part of a read, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part<T> {
    /// `[start, end)` of the file comes from the read-ahead range that starts at `seg_start`.
    Ahead {
        start: u64,
        end: u64,
        seg_start: u64,
        data: T,
    },
    /// `[start, end)` is not read ahead: the caller reads it.
    Gap { start: u64, end: u64 },
}

/// What to do with one read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Access<T> {
    /// Not sequential (or read-ahead not on yet): read as usual.
    Direct,
    /// Sequential: the read's parts, in file order, covering it exactly.
    Sequential(Vec<Part<T>>),
}

/// Counters, for tests and debugging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ranges started.
    pub issued: u64,
    /// Reads served entirely from read-ahead.
    pub hits: u64,
    /// Times everything was dropped (random access or a new data epoch).
    pub drops: u64,
    /// Ranges not started for want of budget.
    pub budget_short: u64,
    /// Ranges dropped unused because they were older than `RA_AGE_MAX`.
    pub expired: u64,
}

pub(crate) struct ReadAhead<T> {
    /// End of the furthest read of the current sequential run.
    head: Option<u64>,
    /// Sequential reads in a row.
    streak: u32,
    /// Bytes kept requested past the reader; 0 = off.
    window: u64,
    /// End of the furthest range started (ranges are started in file order).
    ahead_end: u64,
    /// Data epoch every range in `segs` was started under.
    epoch: u64,
    /// Ranges by start, disjoint.
    segs: BTreeMap<u64, Segment<T>>,
    budget: Arc<Semaphore>,
    stats: Stats,
}

impl<T: Clone> ReadAhead<T> {
    pub(crate) fn new(budget: Arc<Semaphore>) -> ReadAhead<T> {
        ReadAhead {
            head: None,
            streak: 0,
            window: 0,
            ahead_end: 0,
            epoch: 0,
            segs: BTreeMap::new(),
            budget,
            stats: Stats::default(),
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }

    #[cfg(test)]
    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    /// Bytes of the ranges this handle holds.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> u64 {
        self.segs.iter().map(|(s, g)| g.end - s).sum()
    }

    /// Drops every range and turns read-ahead off; the sequential run is remembered (a
    /// sequential reader whose ranges went stale starts again at the next read).
    pub(crate) fn invalidate(&mut self) {
        if !self.segs.is_empty() {
            self.stats.drops += 1;
        }
        self.segs.clear();
        self.ahead_end = 0;
        self.window = 0;
    }

    /// Plans the read `[offset, offset + len)` of a file of `size` bytes (`len > 0`, the range
    /// inside the file) under data epoch `epoch`. New ranges are started through
    /// `start(from, to, permit)`; the permit must live as long as the started read.
    ///
    /// `now` is the read's start (a parameter so that tests control the clock).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plan(
        &mut self,
        offset: u64,
        len: u64,
        size: u64,
        epoch: u64,
        now: Instant,
        mut start: impl FnMut(u64, u64, Arc<OwnedSemaphorePermit>) -> T,
    ) -> Access<T> {
        debug_assert!(len > 0 && offset + len <= size);
        let end = offset + len;
        if epoch != self.epoch {
            self.invalidate();
            self.epoch = epoch;
        }
        // Ranges too old to use are read again.
        let old: Vec<u64> = self
            .segs
            .iter()
            .filter(|(_, g)| now.saturating_duration_since(g.started) > RA_AGE_MAX)
            .map(|(s, _)| *s)
            .collect();
        if !old.is_empty() {
            self.stats.expired += old.len() as u64;
            let first = old[0];
            for s in old {
                self.segs.remove(&s);
            }
            // Started in file order: later ranges may be younger; start again from the first
            // expired one.
            self.ahead_end = self.ahead_end.min(first);
        }
        // While read-ahead is on, reads near the head count (concurrent reads arrive a little
        // out of order); to turn it on, a read must start exactly where the last one ended.
        // While on, anything within a window of the head is part of the run: the kernel's
        // FUSE read-ahead has many reads in flight and they reach us in any order.
        let slack = self.window.max((2 * len).min(RA_UNIT_BYTES));
        if offset == 0
            && self
                .head
                .is_some_and(|h| h > end + (2 * len).min(RA_UNIT_BYTES))
        {
            // Back to the start (a second pass over the file): a new run, as at the first read.
            self.invalidate();
            self.head = None;
            self.streak = 0;
        }
        let near = match self.head {
            Some(h) if self.window == 0 => offset == h,
            Some(h) => offset <= h.saturating_add(slack) && end + slack >= h,
            None => offset == 0,
        };
        let inside = self
            .segs
            .range(..end)
            .next_back()
            .is_some_and(|(_, g)| g.end > offset);
        if !(near || inside) {
            self.invalidate();
            self.streak = 1;
            self.head = Some(end);
            return Access::Direct;
        }
        self.streak += 1;
        self.head = Some(self.head.map_or(end, |h| h.max(end)));
        if self.window == 0 {
            if self.streak < 2 && offset != 0 {
                return Access::Direct;
            }
            self.window = (4 * len)
                .div_ceil(RA_UNIT_BYTES)
                .saturating_mul(RA_UNIT_BYTES)
                .clamp(RA_UNIT_BYTES, RA_WINDOW_BYTES_MAX);
        }
        // Ranges a unit or more behind the reader are done with (the unit just behind stays
        // for reads that arrive late).
        let done_below = offset.saturating_sub(RA_UNIT_BYTES);
        let behind: Vec<u64> = self
            .segs
            .range(..done_below)
            .filter(|(_, g)| g.end <= done_below)
            .map(|(s, _)| *s)
            .collect();
        for s in behind {
            self.segs.remove(&s);
        }
        let parts = self.parts(offset, end);
        if parts.iter().all(|p| matches!(p, Part::Ahead { .. })) {
            self.stats.hits += 1;
            self.window = (self.window * 2).min(RA_WINDOW_BYTES_MAX);
        }
        // Keep `window` bytes past the read requested, whole units only (or up to the end of
        // the file), so a reader of small pieces does not cut the window into small requests.
        let want = (end + self.window).min(size);
        let mut at = self.ahead_end.max(end);
        while at < want {
            let boundary = (at / RA_UNIT_BYTES + 1) * RA_UNIT_BYTES;
            let to = boundary.min(want);
            if to < boundary && to < size {
                break;
            }
            let Ok(permit) = self.budget.clone().try_acquire_many_owned((to - at) as u32) else {
                self.stats.budget_short += 1;
                break;
            };
            let permit = Arc::new(permit);
            let data = start(at, to, permit.clone());
            self.stats.issued += 1;
            self.segs.insert(
                at,
                Segment {
                    end: to,
                    started: now,
                    data,
                    _permit: permit,
                },
            );
            self.ahead_end = to;
            at = to;
        }
        Access::Sequential(parts)
    }

    /// `[offset, end)` as ranges read ahead and gaps, in order.
    fn parts(&self, offset: u64, end: u64) -> Vec<Part<T>> {
        let mut parts = Vec::new();
        let mut at = offset;
        let first = self
            .segs
            .range(..=offset)
            .next_back()
            .filter(|(_, g)| g.end > offset)
            .map(|(s, _)| *s)
            .unwrap_or(offset);
        for (&s, g) in self.segs.range(first..end) {
            if s > at {
                parts.push(Part::Gap { start: at, end: s });
                at = s;
            }
            let to = g.end.min(end);
            parts.push(Part::Ahead {
                start: at,
                end: to,
                seg_start: s,
                data: g.data.clone(),
            });
            at = to;
        }
        if at < end {
            parts.push(Part::Gap { start: at, end });
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: u64 = RA_UNIT_BYTES;
    const SIZE: u64 = 256 * U;

    /// A range started by `plan`, recorded as `(from, to)`.
    type Range = (u64, u64);

    /// A state whose started ranges are recorded as `(from, to)`.
    fn ra(budget_bytes: usize) -> (ReadAhead<(u64, u64)>, Arc<Semaphore>) {
        let b = Arc::new(Semaphore::new(budget_bytes));
        (ReadAhead::new(b.clone()), b)
    }

    fn plan(
        r: &mut ReadAhead<(u64, u64)>,
        offset: u64,
        len: u64,
        epoch: u64,
    ) -> (Access<Range>, Vec<Range>) {
        let mut started = Vec::new();
        let a = r.plan(offset, len, SIZE, epoch, Instant::now(), |f, t, _| {
            started.push((f, t));
            (f, t)
        });
        (a, started)
    }

    fn all_ahead(a: &Access<(u64, u64)>) -> bool {
        matches!(a, Access::Sequential(p) if p.iter().all(|p| matches!(p, Part::Ahead { .. })))
    }

    #[test]
    fn first_read_at_zero_starts_read_ahead_of_four_times_the_read() {
        let (mut r, _) = ra(1 << 30);
        let (a, started) = plan(&mut r, 0, U, 0);
        assert_eq!(
            a,
            Access::Sequential(vec![Part::Gap { start: 0, end: U }]),
            "the read itself is not read ahead"
        );
        assert_eq!(
            started,
            vec![(U, 2 * U), (2 * U, 3 * U), (3 * U, 4 * U), (4 * U, 5 * U)]
        );
        assert_eq!(r.window(), 4 * U);
    }

    #[test]
    fn a_read_elsewhere_needs_a_second_sequential_read() {
        let (mut r, _) = ra(1 << 30);
        let (a, started) = plan(&mut r, 10 * U, 4096, 0);
        assert_eq!(a, Access::Direct);
        assert!(started.is_empty());
        let (a, started) = plan(&mut r, 10 * U + 4096, 4096, 0);
        assert!(matches!(a, Access::Sequential(_)));
        // 4 × 4 KiB rounds up to one unit: read ahead up to the next unit boundary.
        assert_eq!(r.window(), U);
        assert_eq!(started, vec![(10 * U + 8192, 11 * U)]);
        // The next read is served from it; the next range is the whole next unit only.
        let (a, started) = plan(&mut r, 10 * U + 8192, 4096, 0);
        assert!(all_ahead(&a));
        assert_eq!(started, vec![(11 * U, 12 * U)]);
    }

    #[test]
    fn window_doubles_on_hits_up_to_the_limit() {
        let (mut r, _) = ra(1 << 30);
        plan(&mut r, 0, U, 0);
        let mut windows = Vec::new();
        for k in 1..40 {
            let (a, started) = plan(&mut r, k * U, U, 0);
            assert!(all_ahead(&a), "read {k} served from read-ahead");
            windows.push(r.window());
            // Started ranges are whole units, contiguous, never past the window.
            for (f, t) in &started {
                assert_eq!(t - f, U);
                assert_eq!(f % U, 0);
                assert!(*t <= (k + 1) * U + RA_WINDOW_BYTES_MAX);
            }
            assert!(r.held_bytes() <= RA_WINDOW_BYTES_MAX + 2 * U);
        }
        assert_eq!(&windows[..4], &[8 * U, 16 * U, 16 * U, 16 * U]);
        assert_eq!(r.stats().hits, 39);
        assert_eq!(r.stats().drops, 0);
    }

    #[test]
    fn small_sequential_reads_are_sliced_from_one_range() {
        const K128: u64 = 128 << 10;
        let (mut r, _) = ra(1 << 30);
        let (_, started) = plan(&mut r, 0, K128, 0);
        assert_eq!(started, vec![(K128, U)]);
        let (a, started) = plan(&mut r, K128, K128, 0);
        assert_eq!(
            a,
            Access::Sequential(vec![Part::Ahead {
                start: K128,
                end: 2 * K128,
                seg_start: K128,
                data: (K128, U)
            }])
        );
        assert_eq!(started, vec![(U, 2 * U)], "whole units only");
        for k in 2..8 {
            let (a, started) = plan(&mut r, k * K128, K128, 0);
            assert!(all_ahead(&a));
            assert!(started.iter().all(|(f, t)| t - f == U && f % U == 0));
        }
        let (a, _) = plan(&mut r, U, K128, 0);
        assert_eq!(
            a,
            Access::Sequential(vec![Part::Ahead {
                start: U,
                end: U + K128,
                seg_start: U,
                data: (U, 2 * U)
            }])
        );
    }

    #[test]
    fn reads_slightly_out_of_order_stay_sequential() {
        let (mut r, _) = ra(1 << 30);
        plan(&mut r, 0, U, 0);
        plan(&mut r, 2 * U, U, 0);
        // The kernel's concurrent reads may arrive in another order: the skipped unit is still
        // read ahead, nothing is dropped.
        let (a, _) = plan(&mut r, U, U, 0);
        assert!(matches!(a, Access::Sequential(_)));
        assert_eq!(r.stats().drops, 0);
    }

    #[test]
    fn random_access_drops_everything_and_returns_the_budget() {
        let (mut r, b) = ra(64 << 20);
        plan(&mut r, 0, U, 0);
        plan(&mut r, U, U, 0);
        assert!(b.available_permits() < 64 << 20);
        let (a, started) = plan(&mut r, 100 * U, 4096, 0);
        assert_eq!(a, Access::Direct);
        assert!(started.is_empty());
        assert_eq!(r.held_bytes(), 0);
        assert_eq!(r.window(), 0);
        assert_eq!(b.available_permits(), 64 << 20, "permits returned");
        assert_eq!(r.stats().drops, 1);
        // Random reads keep it off.
        for off in [7 * U, 50 * U, 3 * U] {
            assert_eq!(plan(&mut r, off, 4096, 0).0, Access::Direct);
        }
    }

    #[test]
    fn a_new_data_epoch_drops_ranges_read_under_the_old_one() {
        let (mut r, _) = ra(1 << 30);
        plan(&mut r, 0, U, 0);
        let (a, _) = plan(&mut r, U, U, 0);
        assert!(all_ahead(&a));
        // A write or truncate through any handle of the inode bumps the epoch.
        let (a, started) = plan(&mut r, 2 * U, U, 1);
        assert_eq!(
            a,
            Access::Sequential(vec![Part::Gap {
                start: 2 * U,
                end: 3 * U
            }]),
            "nothing read under epoch 0 is used"
        );
        assert_eq!(r.stats().drops, 1);
        // Still sequential: read-ahead starts again under the new epoch.
        assert_eq!(started.first(), Some(&(3 * U, 4 * U)));
        let (a, _) = plan(&mut r, 3 * U, U, 1);
        assert!(all_ahead(&a));
    }

    #[test]
    fn the_budget_bounds_what_is_read_ahead() {
        let (mut r1, b) = ra(3 << 20);
        let mut r2 = ReadAhead::new(b.clone());
        plan(&mut r1, 0, U, 0);
        assert_eq!(r1.held_bytes(), 3 * U, "only three of four units fit");
        assert_eq!(r1.stats().budget_short, 1);
        assert_eq!(b.available_permits(), 0);
        // Another handle gets nothing and reads for itself.
        let (a, started) = plan(&mut r2, 0, U, 0);
        assert!(started.is_empty());
        assert_eq!(a, Access::Sequential(vec![Part::Gap { start: 0, end: U }]));
        // Consumed ranges give their bytes back to whoever asks next.
        for k in 1..20 {
            plan(&mut r1, k * U, U, 0);
            assert!(r1.held_bytes() + r2.held_bytes() <= 3 * U);
        }
        drop(r1);
        drop(r2);
        assert_eq!(b.available_permits(), 3 << 20);
    }

    #[test]
    fn nothing_is_read_ahead_past_the_end_of_the_file() {
        let (mut r, _) = ra(1 << 30);
        let size = 2 * U + 100;
        let mut started = Vec::new();
        r.plan(0, U, size, 0, Instant::now(), |f, t, _| {
            started.push((f, t));
            (f, t)
        });
        assert_eq!(started, vec![(U, 2 * U), (2 * U, 2 * U + 100)]);
        let mut more = Vec::new();
        r.plan(U, U, size, 0, Instant::now(), |f, t, _| {
            more.push((f, t));
            (f, t)
        });
        assert!(more.is_empty());
    }

    #[test]
    fn ranges_older_than_the_age_limit_are_read_again() {
        let (mut r, _) = ra(1 << 30);
        let t0 = Instant::now();
        let mut started = Vec::new();
        let mut go = |r: &mut ReadAhead<(u64, u64)>, off: u64, now: Instant| {
            r.plan(off, U, SIZE, 0, now, |f, t, _| {
                started.push((f, t));
                (f, t)
            })
        };
        go(&mut r, 0, t0);
        let a = go(&mut r, U, t0 + RA_AGE_MAX / 2);
        assert!(all_ahead(&a));
        // The reader pauses: what was read ahead is too old to serve.
        let a = go(&mut r, 2 * U, t0 + RA_AGE_MAX * 3);
        assert_eq!(
            a,
            Access::Sequential(vec![Part::Gap {
                start: 2 * U,
                end: 3 * U
            }])
        );
        assert!(r.stats().expired > 0);
        // ...and is started again right away.
        assert!(started.contains(&(3 * U, 4 * U)));
        assert_eq!(started.iter().filter(|s| **s == (3 * U, 4 * U)).count(), 2);
    }

    #[test]
    fn a_second_pass_from_the_start_reads_ahead_at_once() {
        let (mut r, _) = ra(1 << 30);
        for k in 0..8 {
            plan(&mut r, k * U, U, 0);
        }
        let (a, started) = plan(&mut r, 0, U, 0);
        assert_eq!(a, Access::Sequential(vec![Part::Gap { start: 0, end: U }]));
        assert_eq!(started.first(), Some(&(U, 2 * U)));
        assert!(all_ahead(&plan(&mut r, U, U, 0).0));
    }

    #[test]
    fn a_read_near_but_not_at_the_end_of_the_last_does_not_turn_read_ahead_on() {
        let (mut r, _) = ra(1 << 30);
        assert_eq!(plan(&mut r, 10 * U, 4096, 0).0, Access::Direct);
        assert_eq!(plan(&mut r, 10 * U + 8192, 4096, 0).0, Access::Direct);
        assert_eq!(plan(&mut r, 10 * U, 4096, 0).0, Access::Direct);
        assert_eq!(r.stats().issued, 0);
    }

    #[test]
    fn reads_arriving_out_of_order_within_the_window_never_drop_it() {
        // The kernel's FUSE read-ahead: 128 KiB reads, several in flight, handled in any order.
        const K: u64 = 128 << 10;
        let (mut r, _) = ra(1 << 30);
        plan(&mut r, 0, K, 0);
        for batch in 0..64u64 {
            for i in [2u64, 0, 3, 1] {
                let off = K + (batch * 4 + i) * K;
                assert!(matches!(plan(&mut r, off, K, 0).0, Access::Sequential(_)));
            }
        }
        assert_eq!(r.stats().drops, 0);
        assert!(r.stats().hits > 200, "{:?}", r.stats());
    }
}
