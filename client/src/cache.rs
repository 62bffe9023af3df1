//! A time-bounded cache of namespace answers (name → inode, inode → attributes) for callers
//! that accept answers up to `ttl` old, like the kernel's own entry and attribute caches: the
//! FUSE mount, and set-group-ID inheritance checks of the parent directory.
//!
//! - **Staleness bound.** An answer is served at most `ttl` after meta gave it; callers that
//!   hand it on (FUSE replies) pass on only the time left, so the bound holds end to end.
//! - **Own changes are never stale.** Every meta request of this client passes through
//!   [`MetaCache::observe`]: replies refresh what they carry, and mutations drop what they
//!   may have changed (both parents' attributes, the names, the inodes named), also when the
//!   request failed (it may have applied).
//! - **No stale refill.** A read that started before an invalidation does not insert its
//!   (possibly older) answer (`generation`).
//! - **Directory prefetch.** After two lookups in one directory within `ttl` that missed the
//!   cache and found their name in meta, the next miss fetches the directory's entries with attributes (`ReadDirPlus`, up to `DIR_PREFETCH_ENTRIES_MAX`),
//!   so `ls -l`, `find` and stat sweeps cost one round trip per page instead of one per name.
//! - Bounded: past `META_CACHE_ENTRIES_MAX` attributes the cache starts over.

use crate::limits;
use parking_lot::Mutex;
use pond_proto::InodeId;
use pond_proto::meta::{FileType, InodeAttr, MetaReply, MetaRequest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Inner {
    attrs: HashMap<InodeId, (InodeAttr, Instant)>,
    /// (parent, name) → child, with when meta said so.
    entries: HashMap<(InodeId, String), (InodeId, Instant)>,
    /// Lookup misses per directory: (count, first miss of the window).
    misses: HashMap<InodeId, (u32, Instant)>,
    /// Directories listed by a prefetch, and when.
    listed: HashMap<InodeId, Instant>,
    /// Directories whose every name is in `entries` as of the instant given (a whole listing,
    /// or a directory this client made), kept up to date by this client's own successful
    /// changes: a name missing there does not exist (within the TTL, like every answer).
    complete: HashMap<InodeId, Instant>,
    /// Bumped by every invalidation.
    generation: u64,
}

pub(crate) struct MetaCache {
    /// Nanoseconds; 0 disables the cache.
    ttl_ns: AtomicU64,
    inner: Mutex<Inner>,
}

/// What a cached read returns: the attributes and how long they may still be used.
pub(crate) type Cached = (InodeAttr, Duration);

impl MetaCache {
    pub(crate) fn new(ttl: Duration) -> MetaCache {
        MetaCache {
            ttl_ns: AtomicU64::new(ttl.as_nanos() as u64),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn set_ttl(&self, ttl: Duration) {
        self.ttl_ns.store(ttl.as_nanos() as u64, Ordering::Relaxed);
        if ttl.is_zero() {
            let mut g = self.inner.lock();
            let generation = g.generation + 1;
            *g = Inner {
                generation,
                ..Inner::default()
            };
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.ttl_ns.load(Ordering::Relaxed) > 0
    }

    fn left(&self, at: Instant, now: Instant) -> Option<Duration> {
        self.ttl()
            .checked_sub(now.saturating_duration_since(at))
            .filter(|d| !d.is_zero())
    }

    /// The generation to pass to `observe` for a read started now.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    pub(crate) fn attr(&self, inode: InodeId) -> Option<Cached> {
        if !self.enabled() {
            return None;
        }
        let g = self.inner.lock();
        let (a, at) = g.attrs.get(&inode)?;
        let left = self.left(*at, Instant::now())?;
        Some((a.clone(), left))
    }

    pub(crate) fn lookup(&self, parent: InodeId, name: &str) -> Option<Cached> {
        if !self.enabled() {
            return None;
        }
        let now = Instant::now();
        let g = self.inner.lock();
        // One String per probe is the price of a (InodeId, String) key; it is far below a
        // round trip.
        let (child, at) = g.entries.get(&(parent, name.to_string()))?;
        let e_left = self.left(*at, now)?;
        let (a, at) = g.attrs.get(child)?;
        let a_left = self.left(*at, now)?;
        Some((a.clone(), e_left.min(a_left)))
    }

    /// True when `name` is known not to exist in `parent`: the directory is completely
    /// listed in the cache (younger than the TTL) and the name is not among its entries. The
    /// lookup before every create is answered this way in directories this client made or
    /// listed, without a round trip.
    pub(crate) fn known_missing(&self, parent: InodeId, name: &str) -> bool {
        if !self.enabled() {
            return false;
        }
        let g = self.inner.lock();
        let Some(at) = g.complete.get(&parent) else {
            return false;
        };
        self.left(*at, Instant::now()).is_some()
            && !g.entries.contains_key(&(parent, name.to_string()))
    }

    /// True (once) when `dir` was completely listed and that knowledge has expired: listing it
    /// again answers every missing name in it for another TTL for one round trip per page
    /// (a directory being filled by this client). A listing too big to be whole does not mark
    /// the directory complete again, so this stops asking.
    pub(crate) fn relist_due(&self, dir: InodeId) -> bool {
        if !self.enabled() {
            return false;
        }
        let mut g = self.inner.lock();
        let Some(at) = g.complete.get(&dir) else {
            return false;
        };
        if self.left(*at, Instant::now()).is_some() {
            return false;
        }
        g.complete.remove(&dir);
        true
    }

    /// Records that the listing of `dir` read at `at` (generation `generation`) was whole.
    pub(crate) fn mark_complete(&self, dir: InodeId, generation: u64, at: Instant) {
        if !self.enabled() {
            return;
        }
        let mut g = self.inner.lock();
        if g.generation == generation {
            g.complete.insert(dir, at);
        }
    }

    /// Counts a lookup that missed the cache and found the name in meta. Names that do not
    /// exist (the lookup before every create) do not count: listing a directory that is being
    /// filled would cost a page per create.
    pub(crate) fn note_found_miss(&self, dir: InodeId) {
        if !self.enabled() {
            return;
        }
        let now = Instant::now();
        let ttl = self.ttl();
        let mut g = self.inner.lock();
        let m = g.misses.entry(dir).or_insert((0, now));
        if now.saturating_duration_since(m.1) >= ttl {
            *m = (0, now);
        }
        m.0 += 1;
    }

    /// True (once) when `DIR_PREFETCH_MISSES` found misses in `dir` within the TTL say a sweep
    /// is going on and the directory was not listed within the TTL: list it now.
    pub(crate) fn prefetch_due(&self, dir: InodeId) -> bool {
        if !self.enabled() {
            return false;
        }
        let now = Instant::now();
        let ttl = self.ttl();
        let mut g = self.inner.lock();
        if g.listed
            .get(&dir)
            .is_some_and(|at| now.saturating_duration_since(*at) < ttl)
        {
            return false;
        }
        let due = g.misses.get(&dir).is_some_and(|(n, first)| {
            *n >= limits::DIR_PREFETCH_MISSES && now.saturating_duration_since(*first) < ttl
        });
        if due {
            g.misses.remove(&dir);
            g.listed.insert(dir, now);
        }
        due
    }

    fn bound(g: &mut Inner) {
        if g.attrs.len() >= limits::META_CACHE_ENTRIES_MAX
            || g.entries.len() >= limits::META_CACHE_ENTRIES_MAX
        {
            let generation = g.generation;
            *g = Inner {
                generation,
                ..Inner::default()
            };
        }
    }

    /// Takes in the entries of a directory listing fetched at `at` (generation `generation`).
    pub(crate) fn put_listing(
        &self,
        dir: InodeId,
        entries: &[(pond_proto::meta::DirEntry, InodeAttr)],
        generation: u64,
        at: Instant,
    ) {
        if !self.enabled() {
            return;
        }
        let mut g = self.inner.lock();
        if g.generation != generation {
            return;
        }
        Self::bound(&mut g);
        for (e, a) in entries {
            g.entries.insert((dir, e.name.clone()), (a.inode, at));
            g.attrs.insert(a.inode, (a.clone(), at));
        }
    }

    /// Records what a meta request did: replies refresh, mutations invalidate. `generation` is
    /// the value of `generation()` when the request was sent; `at` when it was sent.
    pub(crate) fn observe(
        &self,
        req: &MetaRequest,
        reply: Option<&MetaReply>,
        generation: u64,
        at: Instant,
    ) {
        if !self.enabled() {
            return;
        }
        let mut g = self.inner.lock();
        // A request that certainly made a new name in `parent` (exclusive creates, mkdir,
        // symlink, mknod) changed the parent in a way its reply tells exactly: meta stamps the
        // parent's mtime and ctime with the new node's ctime (one apply, one clock) and a
        // mkdir adds a link. Keep the parent's cached attributes (with their original age) to
        // patch below, instead of dropping them: the kernel asks for them right after every
        // create (it invalidates the directory's attributes), and answering that here saves a
        // meta round trip per create.
        let parent_before = match req {
            MetaRequest::Mkdir { parent, .. }
            | MetaRequest::Symlink { parent, .. }
            | MetaRequest::Mknod { parent, .. }
            | MetaRequest::Create {
                parent,
                exclusive: true,
                ..
            } => g.attrs.get(parent).cloned(),
            _ => None,
        };
        // Mutations first: drop what they may have changed.
        let drop_entry = |g: &mut Inner, parent: InodeId, name: &str| {
            if let Some((child, _)) = g.entries.remove(&(parent, name.to_string())) {
                g.attrs.remove(&child);
            }
            g.attrs.remove(&parent);
            g.listed.remove(&parent);
        };
        let mutation = !req.is_read();
        // Complete listings stay complete through this client's own successful changes (the
        // name is added below or removed above); a failed change may or may not have applied,
        // and a rename's new name carries no attributes to add: forget completeness there.
        let ok = reply.is_some();
        match req {
            MetaRequest::Unlink { parent, .. }
            | MetaRequest::Rmdir { parent, .. }
            | MetaRequest::RemoveTree { parent, .. }
            | MetaRequest::Mkdir { parent, .. }
            | MetaRequest::Create { parent, .. }
            | MetaRequest::Symlink { parent, .. }
            | MetaRequest::Mknod { parent, .. }
            | MetaRequest::Lookup { parent, .. }
                if !ok =>
            {
                g.complete.remove(parent);
            }
            MetaRequest::Link { new_parent, .. } if !ok => {
                g.complete.remove(new_parent);
            }
            MetaRequest::Rename {
                src_parent,
                dst_parent,
                ..
            } => {
                g.complete.remove(dst_parent);
                if !ok {
                    g.complete.remove(src_parent);
                }
            }
            _ => {}
        }
        match req {
            MetaRequest::Unlink { parent, name }
            | MetaRequest::Rmdir { parent, name }
            | MetaRequest::RemoveTree { parent, name } => drop_entry(&mut g, *parent, name),
            MetaRequest::Mkdir { parent, name, .. }
            | MetaRequest::Create { parent, name, .. }
            | MetaRequest::Symlink { parent, name, .. }
            | MetaRequest::Mknod { parent, name, .. } => drop_entry(&mut g, *parent, name),
            MetaRequest::Link {
                inode,
                new_parent,
                new_name,
            } => {
                drop_entry(&mut g, *new_parent, new_name);
                g.attrs.remove(inode);
            }
            MetaRequest::Rename {
                src_parent,
                src_name,
                dst_parent,
                dst_name,
                ..
            } => {
                drop_entry(&mut g, *src_parent, src_name);
                drop_entry(&mut g, *dst_parent, dst_name);
            }
            MetaRequest::SetAttr { inode, .. }
            | MetaRequest::SetAttrReport { inode, .. }
            | MetaRequest::SetXattr { inode, .. }
            | MetaRequest::RemoveXattr { inode, .. }
            | MetaRequest::OpenWrite { inode, .. }
            | MetaRequest::ReportLength { inode, .. }
            | MetaRequest::CloseWrite { inode, .. } => {
                g.attrs.remove(inode);
            }
            MetaRequest::SetDirLayout { dir, .. } => {
                g.attrs.remove(dir);
            }
            MetaRequest::Lookup { parent, name } if reply.is_none() => {
                // Gone (or failed): forget the name.
                g.entries.remove(&(*parent, name.clone()));
            }
            _ => {}
        }
        if mutation {
            g.generation += 1;
        } else if g.generation != generation {
            // Something changed while this read was in flight: its answer may predate it.
            return;
        }
        let Some(reply) = reply else { return };
        Self::bound(&mut g);
        match (req, reply) {
            (
                MetaRequest::Lookup { parent, name }
                | MetaRequest::Mkdir { parent, name, .. }
                | MetaRequest::Create { parent, name, .. }
                | MetaRequest::Symlink { parent, name, .. }
                | MetaRequest::Mknod { parent, name, .. },
                MetaReply::Attr(a),
            ) => {
                g.entries.insert((*parent, name.clone()), (a.inode, at));
                g.attrs.insert(a.inode, (a.clone(), at));
                if let Some((mut p, p_at)) = parent_before {
                    p.mtime = a.ctime;
                    p.ctime = a.ctime;
                    if a.kind == FileType::Dir {
                        p.nlink += 1;
                    }
                    g.attrs.insert(*parent, (p, p_at));
                }
                if matches!(req, MetaRequest::Mkdir { .. }) {
                    // A directory just made is empty: every lookup in it misses until this
                    // client (seen here) or another (within the TTL) adds a name.
                    g.complete.insert(a.inode, at);
                }
            }
            (
                MetaRequest::Link {
                    new_parent,
                    new_name,
                    ..
                },
                MetaReply::Attr(a),
            ) => {
                g.entries
                    .insert((*new_parent, new_name.clone()), (a.inode, at));
                g.attrs.insert(a.inode, (a.clone(), at));
            }
            (
                MetaRequest::GetAttr { .. }
                | MetaRequest::SetAttr { .. }
                | MetaRequest::SetAttrReport { .. }
                | MetaRequest::OpenWrite { .. }
                | MetaRequest::ReportLength { .. }
                | MetaRequest::CloseWrite { .. },
                MetaReply::Attr(a),
            ) => {
                g.attrs.insert(a.inode, (a.clone(), at));
            }
            (MetaRequest::ReadDirPlus { dir, .. }, MetaReply::DirPlus { entries, .. }) => {
                for (e, a) in entries {
                    g.entries.insert((*dir, e.name.clone()), (a.inode, at));
                    g.attrs.insert(a.inode, (a.clone(), at));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pond_proto::meta::{FileType, Timestamp};

    fn attr(inode: u64, size: u64) -> InodeAttr {
        InodeAttr {
            inode: InodeId(inode),
            kind: FileType::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            size,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            layout: None,
            truncate_version: 0,
            rdev: 0,
        }
    }

    fn lookup(parent: u64, name: &str) -> MetaRequest {
        MetaRequest::Lookup {
            parent: InodeId(parent),
            name: name.to_string(),
        }
    }

    #[test]
    fn answers_within_ttl_and_forgets_on_unlink() {
        let c = MetaCache::new(Duration::from_secs(60));
        let g = c.generation();
        c.observe(
            &lookup(1, "a"),
            Some(&MetaReply::Attr(attr(7, 10))),
            g,
            Instant::now(),
        );
        let (a, left) = c.lookup(InodeId(1), "a").expect("cached");
        assert_eq!(a.size, 10);
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
        assert_eq!(c.attr(InodeId(7)).expect("attr cached").0.size, 10);
        c.observe(
            &MetaRequest::Unlink {
                parent: InodeId(1),
                name: "a".into(),
            },
            Some(&MetaReply::Done),
            c.generation(),
            Instant::now(),
        );
        assert!(c.lookup(InodeId(1), "a").is_none(), "name dropped");
        assert!(c.attr(InodeId(7)).is_none(), "child attr dropped (nlink)");
    }

    #[test]
    fn expired_answers_are_not_served() {
        let c = MetaCache::new(Duration::from_millis(50));
        let at = Instant::now() - Duration::from_millis(60);
        c.observe(
            &MetaRequest::GetAttr { inode: InodeId(3) },
            Some(&MetaReply::Attr(attr(3, 1))),
            c.generation(),
            at,
        );
        assert!(c.attr(InodeId(3)).is_none());
    }

    #[test]
    fn a_read_racing_a_mutation_is_not_cached() {
        let c = MetaCache::new(Duration::from_secs(60));
        let before = c.generation();
        c.observe(
            &MetaRequest::SetAttr {
                inode: InodeId(3),
                set: Default::default(),
            },
            None,
            c.generation(),
            Instant::now(),
        );
        c.observe(
            &MetaRequest::GetAttr { inode: InodeId(3) },
            Some(&MetaReply::Attr(attr(3, 1))),
            before,
            Instant::now(),
        );
        assert!(
            c.attr(InodeId(3)).is_none(),
            "answer may predate the setattr"
        );
    }

    #[test]
    fn disabled_cache_keeps_nothing() {
        let c = MetaCache::new(Duration::ZERO);
        c.observe(
            &lookup(1, "a"),
            Some(&MetaReply::Attr(attr(7, 10))),
            c.generation(),
            Instant::now(),
        );
        assert!(c.lookup(InodeId(1), "a").is_none());
        c.note_found_miss(InodeId(1));
        c.note_found_miss(InodeId(1));
        assert!(!c.prefetch_due(InodeId(1)));
    }

    fn mkdir(parent: u64, name: &str) -> MetaRequest {
        MetaRequest::Mkdir {
            parent: InodeId(parent),
            name: name.to_string(),
            mode: 0o755,
            caller: Default::default(),
        }
    }

    fn create(parent: u64, name: &str) -> MetaRequest {
        MetaRequest::Create {
            parent: InodeId(parent),
            name: name.to_string(),
            mode: 0o644,
            caller: Default::default(),
            exclusive: true,
            hint: Default::default(),
            session: None,
        }
    }

    #[test]
    fn a_directory_made_here_answers_missing_names_until_a_change_fails() {
        let c = MetaCache::new(Duration::from_secs(60));
        assert!(!c.known_missing(InodeId(9), "a"), "nothing known yet");
        let mut dir = attr(9, 0);
        dir.kind = FileType::Dir;
        c.observe(
            &mkdir(1, "d"),
            Some(&MetaReply::Attr(dir)),
            c.generation(),
            Instant::now(),
        );
        assert!(c.known_missing(InodeId(9), "a"), "empty new directory");
        assert!(
            !c.known_missing(InodeId(1), "x"),
            "the parent is not listed"
        );
        c.observe(
            &create(9, "a"),
            Some(&MetaReply::Attr(attr(10, 0))),
            c.generation(),
            Instant::now(),
        );
        assert!(!c.known_missing(InodeId(9), "a"), "created here");
        assert_eq!(
            c.lookup(InodeId(9), "a").expect("cached").0.inode,
            InodeId(10)
        );
        assert!(c.known_missing(InodeId(9), "b"), "still complete");
        c.observe(
            &MetaRequest::Unlink {
                parent: InodeId(9),
                name: "a".into(),
            },
            Some(&MetaReply::Done),
            c.generation(),
            Instant::now(),
        );
        assert!(c.known_missing(InodeId(9), "a"), "unlinked here");
        // A create that failed (a timeout, say) may have applied: completeness is gone.
        c.observe(&create(9, "c"), None, c.generation(), Instant::now());
        assert!(!c.known_missing(InodeId(9), "c"));
        assert!(!c.known_missing(InodeId(9), "b"));
    }

    #[test]
    fn a_rename_into_a_complete_directory_ends_its_completeness() {
        let c = MetaCache::new(Duration::from_secs(60));
        c.mark_complete(InodeId(5), c.generation(), Instant::now());
        assert!(c.known_missing(InodeId(5), "n"));
        c.observe(
            &MetaRequest::Rename {
                src_parent: InodeId(1),
                src_name: "o".into(),
                dst_parent: InodeId(5),
                dst_name: "n".into(),
                mode: pond_proto::meta::RenameMode::Replace,
            },
            Some(&MetaReply::Done),
            c.generation(),
            Instant::now(),
        );
        assert!(!c.known_missing(InodeId(5), "n"));
        // A listing read before a change is not taken as complete.
        let before = c.generation();
        c.observe(&create(6, "x"), None, c.generation(), Instant::now());
        c.mark_complete(InodeId(6), before, Instant::now());
        assert!(!c.known_missing(InodeId(6), "y"));
    }

    #[test]
    fn completeness_expires_with_the_ttl_and_asks_for_one_new_listing() {
        let c = MetaCache::new(Duration::from_millis(50));
        c.mark_complete(
            InodeId(5),
            c.generation(),
            Instant::now() - Duration::from_millis(60),
        );
        assert!(!c.known_missing(InodeId(5), "n"));
        assert!(c.relist_due(InodeId(5)));
        assert!(!c.relist_due(InodeId(5)), "once");
        c.mark_complete(InodeId(5), c.generation(), Instant::now());
        assert!(!c.relist_due(InodeId(5)), "fresh again");
        assert!(c.known_missing(InodeId(5), "n"));
    }

    #[test]
    fn found_misses_ask_for_a_prefetch_once_and_missing_names_never() {
        let c = MetaCache::new(Duration::from_secs(60));
        assert!(!c.prefetch_due(InodeId(1)));
        c.note_found_miss(InodeId(1));
        assert!(
            !c.prefetch_due(InodeId(1)),
            "one found miss is a single stat"
        );
        c.note_found_miss(InodeId(1));
        assert!(c.prefetch_due(InodeId(1)));
        assert!(!c.prefetch_due(InodeId(1)), "listed recently");
        // A mutation in the directory makes the listing stale: prefetch again after misses.
        c.observe(
            &MetaRequest::Unlink {
                parent: InodeId(1),
                name: "x".into(),
            },
            None,
            c.generation(),
            Instant::now(),
        );
        c.note_found_miss(InodeId(1));
        c.note_found_miss(InodeId(1));
        assert!(c.prefetch_due(InodeId(1)));
        assert!(!c.prefetch_due(InodeId(2)), "other directories untouched");
    }
}

#[cfg(test)]
mod parent_patch_tests {
    use super::*;
    use pond_proto::layout::PlacementHint;
    use pond_proto::meta::{Caller, FileType, Timestamp};

    fn dir_attr(inode: u64, nlink: u32, t: i64) -> InodeAttr {
        InodeAttr {
            inode: InodeId(inode),
            kind: FileType::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            nlink,
            size: 0,
            atime: Timestamp { sec: t, nsec: 0 },
            mtime: Timestamp { sec: t, nsec: 0 },
            ctime: Timestamp { sec: t, nsec: 0 },
            layout: None,
            truncate_version: 0,
            rdev: 0,
        }
    }

    fn create(parent: u64, name: &str, exclusive: bool) -> MetaRequest {
        MetaRequest::Create {
            parent: InodeId(parent),
            name: name.into(),
            mode: 0o644,
            caller: Caller::default(),
            exclusive,
            hint: PlacementHint::Any,
            session: None,
        }
    }

    #[test]
    fn certain_creations_patch_the_cached_parent_others_drop_it() {
        let c = MetaCache::new(Duration::from_secs(60));
        // Fetched 30 s ago: a patched parent keeps that age (it must not live 60 s more).
        let fetched = Instant::now() - Duration::from_secs(30);
        c.observe(
            &MetaRequest::GetAttr { inode: InodeId(5) },
            Some(&MetaReply::Attr(dir_attr(5, 2, 100))),
            c.generation(),
            fetched,
        );
        // mkdir: times from the child, one more link; the parent keeps its age.
        c.observe(
            &MetaRequest::Mkdir {
                parent: InodeId(5),
                name: "d".into(),
                mode: 0o755,
                caller: Caller::default(),
            },
            Some(&MetaReply::Attr(dir_attr(6, 2, 200))),
            c.generation(),
            Instant::now(),
        );
        let (p, left) = c.attr(InodeId(5)).expect("parent kept");
        assert_eq!(
            (p.nlink, p.mtime.sec, p.ctime.sec, p.atime.sec),
            (3, 200, 200, 100)
        );
        assert!(left <= Duration::from_secs(30), "{left:?}");
        // An exclusive create: times only.
        let mut f = dir_attr(7, 1, 300);
        f.kind = FileType::File;
        c.observe(
            &create(5, "f", true),
            Some(&MetaReply::Attr(f.clone())),
            c.generation(),
            Instant::now(),
        );
        let (p, _) = c.attr(InodeId(5)).expect("parent kept");
        assert_eq!((p.nlink, p.mtime.sec, p.ctime.sec), (3, 300, 300));
        // A non-exclusive create may have found an existing file: the parent is dropped.
        c.observe(
            &create(5, "g", false),
            Some(&MetaReply::Attr(f.clone())),
            c.generation(),
            Instant::now(),
        );
        assert!(c.attr(InodeId(5)).is_none(), "parent dropped");
        // A failed certain creation patches nothing (and drops the parent).
        c.observe(
            &MetaRequest::GetAttr { inode: InodeId(5) },
            Some(&MetaReply::Attr(dir_attr(5, 3, 300))),
            c.generation(),
            Instant::now(),
        );
        c.observe(&create(5, "h", true), None, c.generation(), Instant::now());
        assert!(
            c.attr(InodeId(5)).is_none(),
            "parent dropped after a failure"
        );
    }
}
