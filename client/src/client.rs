//! [`Client`]: a connection to one cluster. Namespace operations by inode (what FUSE needs) and
//! by path (what programs and the shell tools need), file open/create, whole-file put/get.
//!
//! A `Client` is cheap to clone (shared state behind an `Arc`); clones share the routing cache,
//! the data-plane connections and the open-file table.

use crate::cache::MetaCache;
use crate::config::ClusterFile;
use crate::error::{ClientError, Result};
use crate::file::{File, OpenInode, OpenMode};
use crate::io::DataPath;
use crate::limits;
use crate::net::DataClient;
use crate::routing::RoutingCache;
use crate::service::{MetaService, expect_attr, expect_done, unexpected};
use futures::Stream;
use parking_lot::Mutex;
use pond_proto::cluster::RoutingInfo;
use pond_proto::layout::{DirLayout, PlacementHint, split_path, validate_name};
use pond_proto::meta::{
    Caller, DirEntry, FileType, InodeAttr, MetaReply, MetaRequest, RenameMode, SetAttr, StatFs,
    XattrSetMode,
};
use pond_proto::{ClientId, ErrorCode, InodeId, SessionId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Tunables of a client. `Default` is right for most programs.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Owner of inodes this client creates (FUSE passes each caller's instead).
    pub caller: Caller,
    /// Routing table poll interval.
    pub routing_poll: Duration,
    /// Deadline of one meta operation, retries of the meta client included.
    pub meta_deadline: Duration,
    /// Time one chunk operation may spend retrying across replicas and routing changes.
    pub chunk_retry_budget: Duration,
    /// How old an answer of the `*_cached` namespace reads (and set-group-ID inheritance
    /// checks) may be. Zero (the default): always ask meta. The FUSE mount sets its
    /// entry/attribute TTL here (`Client::set_cache_ttl`).
    pub cache_ttl: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        ClientOptions {
            caller: Caller { uid, gid },
            routing_poll: limits::routing_poll(),
            meta_deadline: Duration::from_millis(META_DEADLINE_MS),
            chunk_retry_budget: Duration::from_millis(limits::CHUNK_RETRY_BUDGET_MS),
            cache_ttl: Duration::ZERO,
        }
    }
}

/// Deadline of one meta operation including the meta client's own failover retries: a leader
/// election takes a few seconds; 60 s means "the metadata service is down", not "slow".
const META_DEADLINE_MS: u64 = 60_000;

/// Options of [`Client::open`], as `open(2)` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    pub mode: OpenMode,
    pub create: bool,
    /// With `create`: fail with EEXIST if the file exists (`O_EXCL`).
    pub exclusive: bool,
    /// Truncate to 0 on open (`O_TRUNC`).
    pub truncate: bool,
    /// Permission bits of a created file.
    pub perm: u32,
}

impl OpenOptions {
    pub fn read() -> OpenOptions {
        OpenOptions {
            mode: OpenMode::READ,
            ..Default::default()
        }
    }

    /// Create or truncate, write only (`O_WRONLY|O_CREAT|O_TRUNC`, 0644).
    pub fn write() -> OpenOptions {
        OpenOptions {
            mode: OpenMode::WRITE,
            create: true,
            truncate: true,
            perm: 0o644,
            ..Default::default()
        }
    }

    /// An existing file, neither created nor truncated (`open(2)` without `O_CREAT|O_TRUNC`).
    pub fn existing(mode: OpenMode) -> OpenOptions {
        OpenOptions {
            mode,
            ..Default::default()
        }
    }

    pub fn from_flags(flags: i32, perm: u32) -> OpenOptions {
        OpenOptions {
            mode: OpenMode::from_flags(flags),
            create: flags & libc::O_CREAT != 0,
            exclusive: flags & libc::O_EXCL != 0,
            truncate: flags & libc::O_TRUNC != 0,
            perm,
        }
    }
}

pub(crate) struct Core {
    pub(crate) meta: Arc<dyn MetaService>,
    pub(crate) data: DataPath,
    pub(crate) routing: Arc<RoutingCache>,
    pub(crate) client_id: ClientId,
    pub(crate) opts: ClientOptions,
    pub(crate) cache: MetaCache,
    next_session: AtomicU64,
    open: Mutex<HashMap<InodeId, Weak<OpenInode>>>,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// This client's lease on its sessions (renewed in the background; `None` in tests).
    lease: Mutex<Option<crate::meta_client::LeaseHandle>>,
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(p) = self.poller.lock().take() {
            p.abort();
        }
    }
}

impl Core {
    #[tracing::instrument(level = "debug", skip_all, fields(op = req.name()))]
    pub(crate) async fn meta_op(&self, req: MetaRequest) -> Result<MetaReply> {
        if !self.cache.enabled() {
            return self.meta_call(req).await;
        }
        let (generation, at) = (self.cache.generation(), std::time::Instant::now());
        let keep = req.clone();
        let r = self.meta_call(req).await;
        self.cache.observe(&keep, r.as_ref().ok(), generation, at);
        r
    }

    async fn meta_call(&self, req: MetaRequest) -> Result<MetaReply> {
        match tokio::time::timeout(self.opts.meta_deadline, self.meta.op(req)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClientError::new(
                ErrorCode::Timeout,
                format!("meta operation exceeded {:?}", self.opts.meta_deadline),
            )),
        }
    }

    pub(crate) fn new_session(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    fn open_inode(self: &Arc<Self>, attr: &InodeAttr) -> Result<Arc<OpenInode>> {
        let mut open = self.open.lock();
        if let Some(oi) = open.get(&attr.inode).and_then(Weak::upgrade) {
            let mut a = attr.clone();
            oi.overlay(&mut a);
            return Ok(oi);
        }
        let oi = Arc::new(OpenInode::new(self.clone(), attr)?);
        open.insert(attr.inode, Arc::downgrade(&oi));
        Ok(oi)
    }

    pub(crate) fn find_open(&self, inode: InodeId) -> Option<Arc<OpenInode>> {
        self.open.lock().get(&inode).and_then(Weak::upgrade)
    }

    pub(crate) fn forget_open(&self, oi: &OpenInode) {
        let mut open = self.open.lock();
        if let Some(w) = open.get(&oi.inode)
            && std::ptr::eq(w.as_ptr(), oi)
            && !oi.is_open()
        {
            open.remove(&oi.inode);
        }
    }
}

/// A connection to a pond cluster.
#[derive(Clone)]
pub struct Client {
    core: Arc<Core>,
}

impl Client {
    /// Connects with the cluster file `pond up` wrote (or an operator's).
    pub async fn connect(cf: &ClusterFile) -> Result<Client> {
        Client::connect_with(cf, ClientOptions::default()).await
    }

    /// Loads a cluster file and connects.
    pub async fn from_cluster_file(path: &Path) -> Result<Client> {
        let cf = ClusterFile::load(path)?;
        Client::connect(&cf).await
    }

    pub async fn connect_with(cf: &ClusterFile, opts: ClientOptions) -> Result<Client> {
        let meta = crate::meta_client::MetaClient::connect(cf.meta_addrs(), cf.token.clone())?;
        // One id for both planes: meta dedupes retried writes by it, storage retried updates.
        let client_id = meta.client_id();
        let data = DataClient::tcp(cf.token.clone(), client_id);
        // Sessions of open files die with the client: a crashed client's open-unlinked files
        // are collected once its lease runs out instead of never.
        let lease = meta
            .start_lease(Duration::from_millis(limits::SESSION_LEASE_MS))
            .await?;
        let c = Client::with_parts(Arc::new(meta), data, opts).await?;
        *c.core.lease.lock() = Some(lease);
        Ok(c)
    }

    /// Builds a client over any meta service and data-plane client (tests, simulation).
    /// Fetches the routing table once and starts polling it.
    pub async fn with_parts(
        meta: Arc<dyn MetaService>,
        data: DataClient,
        opts: ClientOptions,
    ) -> Result<Client> {
        let routing = Arc::new(RoutingCache::new(meta.clone()));
        routing.refresh(Some(pond_proto::RoutingVersion(0))).await?;
        let poller = routing.spawn_poller(opts.routing_poll);
        let client_id = data.client_id();
        let core = Arc::new(Core {
            meta,
            data: DataPath::new(data, routing.clone(), opts.chunk_retry_budget),
            routing,
            client_id,
            cache: MetaCache::new(opts.cache_ttl),
            opts,
            next_session: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
            poller: Mutex::new(Some(poller)),
            lease: Mutex::new(None),
        });
        Ok(Client { core })
    }

    pub fn client_id(&self) -> ClientId {
        self.core.client_id
    }

    /// The default owner of created inodes.
    pub fn caller(&self) -> Caller {
        self.core.opts.caller
    }

    /// The cached routing table.
    pub fn routing(&self) -> Arc<RoutingInfo> {
        self.core.routing.current()
    }

    /// Fetches the routing table now if meta has a newer one.
    pub async fn refresh_routing(&self) -> Result<Arc<RoutingInfo>> {
        self.core.routing.refresh(None).await
    }

    /// The raw meta service (admin tools).
    pub fn meta(&self) -> &Arc<dyn MetaService> {
        &self.core.meta
    }

    /// Raw namespace request.
    pub async fn meta_op(&self, req: MetaRequest) -> Result<MetaReply> {
        self.core.meta_op(req).await
    }

    async fn attr_op(&self, what: &str, req: MetaRequest) -> Result<InodeAttr> {
        let mut attr = expect_attr(what, self.core.meta_op(req).await?)?;
        self.overlay(&mut attr);
        Ok(attr)
    }

    /// Counts this client's unreported writes in `attr.size`.
    pub fn overlay(&self, attr: &mut InodeAttr) {
        if let Some(oi) = self.core.find_open(attr.inode) {
            oi.overlay(attr);
        }
    }

    // ------------------------------------------------------------------------------------
    // Namespace by inode (FUSE).
    // ------------------------------------------------------------------------------------

    pub async fn lookup(&self, parent: InodeId, name: &str) -> Result<InodeAttr> {
        validate_name(name)?;
        self.attr_op(
            "Lookup",
            MetaRequest::Lookup {
                parent,
                name: name.to_string(),
            },
        )
        .await
    }

    pub async fn getattr(&self, inode: InodeId) -> Result<InodeAttr> {
        self.attr_op("GetAttr", MetaRequest::GetAttr { inode })
            .await
    }

    /// Sets how old answers of the `*_cached` reads may be (zero: always ask meta).
    pub fn set_cache_ttl(&self, ttl: Duration) {
        self.core.cache.set_ttl(ttl);
    }

    /// `lookup`, answered from the namespace cache when it holds an answer younger than the
    /// cache TTL; returns the attributes and how long they may still be used. After two misses
    /// in one directory within the TTL that found their names, the next lists the directory
    /// into the cache (a sweep; the failed lookups before creates never do). A name missing
    /// from a directory the cache holds completely (made by this client, or listed whole
    /// within the TTL) is `NotFound` without a round trip; when that knowledge expires, the
    /// next lookup in the directory lists it again.
    pub async fn lookup_cached(
        &self,
        parent: InodeId,
        name: &str,
    ) -> Result<(InodeAttr, Duration)> {
        // A name no entry can have is ENAMETOOLONG/EINVAL, not "not found" (lookup(2) rules).
        validate_name(name)?;
        let ttl = self.core.cache.ttl();
        if let Some((mut a, left)) = self.core.cache.lookup(parent, name) {
            self.overlay(&mut a);
            return Ok((a, left));
        }
        if self.core.cache.relist_due(parent)
            && let Err(e) = self.prefetch_dir(parent).await
        {
            tracing::debug!(%parent, error = %e, "directory relisting failed");
        }
        if self.core.cache.known_missing(parent, name) {
            return Err(ClientError::new(
                ErrorCode::NotFound,
                format!("{name}: not in the cached listing of directory {parent}"),
            ));
        }
        if self.core.cache.prefetch_due(parent) {
            if let Err(e) = self.prefetch_dir(parent).await {
                tracing::debug!(%parent, error = %e, "directory prefetch failed");
            }
            if let Some((mut a, left)) = self.core.cache.lookup(parent, name) {
                self.overlay(&mut a);
                return Ok((a, left));
            }
        }
        let a = self.lookup(parent, name).await?;
        self.core.cache.note_found_miss(parent);
        Ok((a, ttl))
    }

    /// `getattr`, answered from the namespace cache when it can (see `lookup_cached`).
    pub async fn getattr_cached(&self, inode: InodeId) -> Result<(InodeAttr, Duration)> {
        let ttl = self.core.cache.ttl();
        if let Some((mut a, left)) = self.core.cache.attr(inode) {
            self.overlay(&mut a);
            return Ok((a, left));
        }
        Ok((self.getattr(inode).await?, ttl))
    }

    /// Lists `dir` with attributes into the namespace cache (up to
    /// `DIR_PREFETCH_ENTRIES_MAX` entries).
    async fn prefetch_dir(&self, dir: InodeId) -> Result<()> {
        let generation = self.core.cache.generation();
        let at = std::time::Instant::now();
        let mut after = None;
        let mut fetched = 0usize;
        loop {
            if fetched >= limits::DIR_PREFETCH_ENTRIES_MAX {
                return Ok(());
            }
            let reply = self
                .core
                .meta_call(MetaRequest::ReadDirPlus {
                    dir,
                    after: after.take(),
                    limit: limits::READDIR_PAGE,
                })
                .await?;
            let MetaReply::DirPlus { entries, more } = reply else {
                return Err(unexpected("ReadDirPlus", &reply).into());
            };
            fetched += entries.len();
            self.core.cache.put_listing(dir, &entries, generation, at);
            match entries.last() {
                Some((last, _)) if more => after = Some(last.name.clone()),
                _ => break,
            }
        }
        // The whole directory is in the cache: names missing from it do not exist.
        self.core.cache.mark_complete(dir, generation, at);
        Ok(())
    }

    /// Changes attributes. A size change truncates through the data plane first. A change of
    /// owner or group of a non-directory clears set-user-ID, and set-group-ID when the group may
    /// execute (as Linux does), unless the same call sets the mode: meta applies that rule
    /// against the inode as its log orders it, so no read of the inode precedes the change.
    pub async fn setattr(&self, inode: InodeId, mut set: SetAttr) -> Result<InodeAttr> {
        let mut attr = None;
        if (set.mtime.is_some() || set.atime.is_some())
            && let Some(oi) = self.core.find_open(inode)
        {
            // Bytes this client wrote before the call but has not reported yet would make
            // meta stamp the time of their later report (close, fsync) over the times set
            // here: `tar -xp` writes a file, sets its archived mtime, then closes it. Report
            // them first, as if the writes had reached meta when they were made: in the same
            // request when the call sets nothing but times, owner and mode.
            if set.size.is_some() {
                oi.sync().await?;
            } else if let Some(a) = oi.sync_report(false, Some(&set)).await? {
                // `set` went with the report (always asked when `set` is given).
                return Ok(a);
            }
        }
        if let Some(size) = set.size.take() {
            let cur = self.getattr(inode).await?;
            match cur.kind {
                FileType::Dir => {
                    return Err(ClientError::new(
                        ErrorCode::IsDir,
                        "truncate of a directory",
                    ));
                }
                FileType::File => {}
                // Symlinks, FIFOs, sockets, devices: no size to set.
                k => {
                    return Err(ClientError::new(
                        ErrorCode::InvalidArgument,
                        format!("truncate of a {k:?}"),
                    ));
                }
            }
            let oi = self.core.open_inode(&cur)?;
            // Hold a handle while truncating so the open-file entry stays shared.
            let f = File::new(oi.clone(), OpenMode::READ);
            let r = oi.truncate(size).await;
            f.close().await?;
            attr = Some(r?);
        }
        if set == SetAttr::default() {
            return match attr {
                Some(a) => Ok(a),
                None => self.getattr(inode).await,
            };
        }
        self.attr_op("SetAttr", MetaRequest::SetAttr { inode, set })
            .await
    }

    /// Creates a directory; inherits the group (and set-group-ID) of a set-group-ID parent.
    pub async fn mkdir(
        &self,
        parent: InodeId,
        name: &str,
        mode: u32,
        caller: Caller,
    ) -> Result<InodeAttr> {
        validate_name(name)?;
        self.attr_op(
            "Mkdir",
            MetaRequest::Mkdir {
                parent,
                name: name.to_string(),
                mode,
                caller,
            },
        )
        .await
    }

    /// Creates a file without opening it (`mknod` of a regular file).
    pub async fn create(
        &self,
        parent: InodeId,
        name: &str,
        mode: u32,
        caller: Caller,
        exclusive: bool,
    ) -> Result<InodeAttr> {
        validate_name(name)?;
        self.attr_op(
            "Create",
            MetaRequest::Create {
                parent,
                name: name.to_string(),
                mode,
                caller,
                exclusive,
                hint: PlacementHint::Any,
                session: None,
            },
        )
        .await
    }

    /// Creates (or with `!exclusive` opens an existing) file and opens it, in one meta round
    /// trip: `Create` also opens this client's session on the inode (see `open_attr`).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_open(
        &self,
        parent: InodeId,
        name: &str,
        perm: u32,
        caller: Caller,
        exclusive: bool,
        hint: PlacementHint,
        mode: OpenMode,
    ) -> Result<(InodeAttr, File)> {
        validate_name(name)?;
        let session = self.core.new_session();
        let mut attr = expect_attr(
            "Create",
            self.core
                .meta_op(MetaRequest::Create {
                    parent,
                    name: name.to_string(),
                    mode: perm,
                    caller,
                    exclusive,
                    hint,
                    session: Some((self.core.client_id, session)),
                })
                .await?,
        )?;
        let oi = self.core.open_inode(&attr)?;
        let file = File::new(oi.clone(), mode);
        if let Err(e) = oi.ensure_session(Some(session)).await {
            let _ = file.close().await;
            return Err(e);
        }
        oi.overlay(&mut attr);
        Ok((attr, file))
    }

    /// Opens an existing file by its attributes (from lookup/getattr).
    ///
    /// Every open file of a client is held by one session of that client in meta (opened by
    /// the first open, `OpenSession`, or by `Create`; closed with the last handle, with the
    /// length): a file unlinked or renamed over by anyone stays readable here until closed.
    pub async fn open_attr(
        &self,
        attr: &InodeAttr,
        mode: OpenMode,
        truncate: bool,
    ) -> Result<File> {
        self.open_with(attr, mode, truncate, None).await
    }

    async fn open_with(
        &self,
        attr: &InodeAttr,
        mode: OpenMode,
        truncate: bool,
        session: Option<SessionId>,
    ) -> Result<File> {
        let refused = match attr.kind {
            FileType::Dir if mode.write => Some(ClientError::new(
                ErrorCode::IsDir,
                "cannot open a directory for writing",
            )),
            FileType::Dir => Some(ClientError::new(ErrorCode::IsDir, "is a directory")),
            FileType::Symlink => Some(ClientError::new(
                ErrorCode::Loop,
                "open of a symlink without following",
            )),
            // FIFOs, sockets and devices are opened by the kernel of the host (a FUSE mount
            // never sends their opens here); the client library has no data path for them.
            FileType::File => None,
            k => Some(ClientError::new(
                ErrorCode::InvalidArgument,
                format!("a {k:?} node has no data in pond"),
            )),
        };
        let oi = match refused {
            None => self.core.open_inode(attr),
            Some(e) => Err(e),
        };
        let oi = match oi {
            Ok(oi) => oi,
            Err(e) => {
                if let Some(s) = session {
                    self.close_stray_session(attr.inode, s).await;
                }
                return Err(e);
            }
        };
        let file = File::new(oi.clone(), mode);
        if !mode.write && !truncate && session.is_none() {
            // Read-only: the session follows in the background (`OpenInode::session_later`).
            oi.session_later();
        } else if let Err(e) = oi.ensure_session(session).await {
            let _ = file.close().await;
            return Err(e);
        }
        // `O_TRUNC` truncates whatever the access mode: Linux does so for `O_RDONLY | O_TRUNC`
        // (the caller needs write permission), and a FUSE kernel with atomic `O_TRUNC` has
        // already dropped its cached size and pages when this open answers.
        if truncate
            && (oi.size() > 0 || attr.size > 0)
            && let Err(e) = oi.truncate(0).await
        {
            let _ = file.close().await;
            return Err(e);
        }
        Ok(file)
    }

    async fn close_stray_session(&self, inode: InodeId, session: SessionId) {
        let r = self
            .core
            .meta_op(MetaRequest::CloseSession {
                inode,
                client: self.core.client_id,
                session,
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(%inode, error = %e, "close of an unused session failed");
        }
    }

    pub async fn open_inode(&self, inode: InodeId, mode: OpenMode, truncate: bool) -> Result<File> {
        self.open_inode_fresh(inode, mode, truncate)
            .await
            .map(|(f, _)| f)
    }

    /// Opens `inode` and returns meta's current attributes with it (close-to-open), in one
    /// meta request: `OpenSession` for a write or truncating open of an inode not open here
    /// yet (it answers with the attributes), else `GetAttr` (a lease read: the session exists,
    /// or, read-only, follows in the background).
    pub async fn open_inode_fresh(
        &self,
        inode: InodeId,
        mode: OpenMode,
        truncate: bool,
    ) -> Result<(File, InodeAttr)> {
        if self.open_file_of(inode).is_none() && (mode.write || truncate) {
            let session = self.core.new_session();
            let reply = self
                .core
                .meta_op(MetaRequest::OpenSession {
                    inode,
                    client: self.core.client_id,
                    session,
                })
                .await?;
            let mut attr = expect_attr("OpenSession", reply)?;
            let file = self.open_with(&attr, mode, truncate, Some(session)).await?;
            file.open_inode().overlay(&mut attr);
            return Ok((file, attr));
        }
        // Open here already (the session exists), or read-only (its session follows in the
        // background): meta's current attributes from a lease read, no commit.
        let attr = self.getattr(inode).await?;
        let file = self.open_with(&attr, mode, truncate, None).await?;
        Ok((file, attr))
    }

    /// The open-file state of `inode` in this client, if a handle is open.
    pub fn open_file_of(&self, inode: InodeId) -> Option<Arc<OpenInode>> {
        self.core.find_open(inode).filter(|oi| oi.is_open())
    }

    /// Keeps `inode` readable while this client has it open, even after its last name goes
    /// (call before unlink or rename-over when the target may be open). No-op if not open here.
    pub async fn pin_if_open(&self, inode: InodeId) -> Result<()> {
        match self.open_file_of(inode) {
            Some(oi) => oi.pin().await,
            None => Ok(()),
        }
    }

    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &str,
        target: &str,
        caller: Caller,
    ) -> Result<InodeAttr> {
        validate_name(name)?;
        self.attr_op(
            "Symlink",
            MetaRequest::Symlink {
                parent,
                name: name.to_string(),
                target: target.to_string(),
                caller,
            },
        )
        .await
    }

    /// Creates a FIFO, socket or device node (`kind.is_special()`, else InvalidArgument;
    /// `rdev` is kept for devices only). The mode's set-group-ID and the group follow the parent as for files.
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &str,
        kind: FileType,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> Result<InodeAttr> {
        validate_name(name)?;
        // Meta refuses a kind that is not special (InvalidArgument).
        self.attr_op(
            "Mknod",
            MetaRequest::Mknod {
                parent,
                name: name.to_string(),
                kind,
                mode,
                rdev,
                caller,
            },
        )
        .await
    }

    pub async fn link(
        &self,
        inode: InodeId,
        new_parent: InodeId,
        new_name: &str,
    ) -> Result<InodeAttr> {
        validate_name(new_name)?;
        self.attr_op(
            "Link",
            MetaRequest::Link {
                inode,
                new_parent,
                new_name: new_name.to_string(),
            },
        )
        .await
    }

    pub async fn unlink(&self, parent: InodeId, name: &str) -> Result<()> {
        validate_name(name)?;
        Ok(expect_done(
            "Unlink",
            self.core
                .meta_op(MetaRequest::Unlink {
                    parent,
                    name: name.to_string(),
                })
                .await?,
        )?)
    }

    pub async fn rmdir(&self, parent: InodeId, name: &str) -> Result<()> {
        validate_name(name)?;
        Ok(expect_done(
            "Rmdir",
            self.core
                .meta_op(MetaRequest::Rmdir {
                    parent,
                    name: name.to_string(),
                })
                .await?,
        )?)
    }

    pub async fn rename(
        &self,
        src_parent: InodeId,
        src_name: &str,
        dst_parent: InodeId,
        dst_name: &str,
        mode: RenameMode,
    ) -> Result<()> {
        validate_name(src_name)?;
        validate_name(dst_name)?;
        let req = MetaRequest::Rename {
            src_parent,
            src_name: src_name.to_string(),
            dst_parent,
            dst_name: dst_name.to_string(),
            mode,
        };
        Ok(expect_done("Rename", self.core.meta_op(req).await?)?)
    }

    pub async fn readlink(&self, inode: InodeId) -> Result<String> {
        match self.core.meta_op(MetaRequest::ReadLink { inode }).await? {
            MetaReply::Link(t) => Ok(t),
            other => Err(unexpected("ReadLink", &other).into()),
        }
    }

    /// The value of extended attribute `name` (`NoData` when the inode has none by that
    /// name). Stored namespaces: `user.` and `trusted.`.
    pub async fn getxattr(&self, inode: InodeId, name: &str) -> Result<Vec<u8>> {
        let req = MetaRequest::GetXattr {
            inode,
            name: name.to_string(),
        };
        match self.core.meta_op(req).await? {
            MetaReply::Xattr(v) => Ok(v),
            other => Err(unexpected("GetXattr", &other).into()),
        }
    }

    /// The names of an inode's extended attributes, in byte order.
    pub async fn listxattr(&self, inode: InodeId) -> Result<Vec<String>> {
        match self.core.meta_op(MetaRequest::ListXattr { inode }).await? {
            MetaReply::XattrNames(n) => Ok(n),
            other => Err(unexpected("ListXattr", &other).into()),
        }
    }

    /// Sets an extended attribute (`setxattr(2)`); returns the inode's attributes (ctime
    /// moved).
    pub async fn setxattr(
        &self,
        inode: InodeId,
        name: &str,
        value: &[u8],
        mode: XattrSetMode,
    ) -> Result<InodeAttr> {
        let req = MetaRequest::SetXattr {
            inode,
            name: name.to_string(),
            value: value.to_vec(),
            mode,
        };
        self.attr_op("SetXattr", req).await
    }

    /// Removes an extended attribute (`NoData` if absent).
    pub async fn removexattr(&self, inode: InodeId, name: &str) -> Result<InodeAttr> {
        let req = MetaRequest::RemoveXattr {
            inode,
            name: name.to_string(),
        };
        self.attr_op("RemoveXattr", req).await
    }

    /// One page of entries after `after`, in name order; `more` tells whether more follow.
    pub async fn readdir_page(
        &self,
        dir: InodeId,
        after: Option<String>,
        limit: u32,
    ) -> Result<(Vec<DirEntry>, bool)> {
        match self
            .core
            .meta_op(MetaRequest::ReadDir { dir, after, limit })
            .await?
        {
            MetaReply::Dir { entries, more } => Ok((entries, more)),
            other => Err(unexpected("ReadDir", &other).into()),
        }
    }

    /// Like `readdir_page`, with every entry's attributes.
    pub async fn readdir_plus_page(
        &self,
        dir: InodeId,
        after: Option<String>,
        limit: u32,
    ) -> Result<(Vec<(DirEntry, InodeAttr)>, bool)> {
        match self
            .core
            .meta_op(MetaRequest::ReadDirPlus { dir, after, limit })
            .await?
        {
            MetaReply::DirPlus { mut entries, more } => {
                for (_, a) in entries.iter_mut() {
                    self.overlay(a);
                }
                Ok((entries, more))
            }
            other => Err(unexpected("ReadDirPlus", &other).into()),
        }
    }

    /// Streams every entry of a directory, fetching pages as the stream is consumed.
    pub fn readdir_stream(
        &self,
        dir: InodeId,
    ) -> impl Stream<Item = Result<DirEntry>> + Send + 'static {
        let me = self.clone();
        // State: the cursor of the next page to fetch (`None`: no more pages) and the current page.
        let start: (Option<Option<String>>, std::vec::IntoIter<DirEntry>) =
            (Some(None), Vec::new().into_iter());
        futures::stream::unfold(start, move |(mut cursor, mut page)| {
            let me = me.clone();
            async move {
                loop {
                    if let Some(e) = page.next() {
                        return Some((Ok(e), (cursor, page)));
                    }
                    let after = cursor.take()?;
                    match me.readdir_page(dir, after, limits::READDIR_PAGE).await {
                        Ok((entries, more)) => {
                            cursor = match entries.last() {
                                Some(last) if more => Some(Some(last.name.clone())),
                                _ => None,
                            };
                            page = entries.into_iter();
                        }
                        Err(e) => return Some((Err(e), (None, Vec::new().into_iter()))),
                    }
                }
            }
        })
    }

    pub async fn statfs(&self) -> Result<StatFs> {
        match self.core.meta_op(MetaRequest::StatFs).await? {
            MetaReply::StatFs(s) => Ok(s),
            other => Err(unexpected("StatFs", &other).into()),
        }
    }

    pub async fn get_dir_layout(&self, dir: InodeId) -> Result<DirLayout> {
        match self.core.meta_op(MetaRequest::GetDirLayout { dir }).await? {
            MetaReply::DirLayout(l) => Ok(l),
            other => Err(unexpected("GetDirLayout", &other).into()),
        }
    }

    pub async fn set_dir_layout(&self, dir: InodeId, layout: DirLayout) -> Result<()> {
        layout.validate()?;
        Ok(expect_done(
            "SetDirLayout",
            self.core
                .meta_op(MetaRequest::SetDirLayout { dir, layout })
                .await?,
        )?)
    }

    // ------------------------------------------------------------------------------------
    // Namespace by path.
    // ------------------------------------------------------------------------------------

    /// Attributes of `path`, following a final symlink.
    pub async fn stat(&self, path: &str) -> Result<InodeAttr> {
        self.attr_op(
            "Resolve",
            MetaRequest::Resolve {
                path: path.to_string(),
                follow: true,
            },
        )
        .await
    }

    /// Attributes of `path` itself (a final symlink is not followed).
    pub async fn lstat(&self, path: &str) -> Result<InodeAttr> {
        self.attr_op(
            "Resolve",
            MetaRequest::Resolve {
                path: path.to_string(),
                follow: false,
            },
        )
        .await
    }

    /// Whether `path` exists (a dangling final symlink counts).
    pub async fn exists(&self, path: &str) -> Result<bool> {
        match self.lstat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The directory holding `path`'s last component, and that component.
    pub async fn parent_of<'p>(&self, path: &'p str) -> Result<(InodeAttr, &'p str)> {
        let comps = split_path(path)?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "the root has no parent",
            ));
        };
        let dir_path = format!("/{}", dirs.join("/"));
        let dir = self.stat(&dir_path).await?;
        if dir.kind != FileType::Dir {
            return Err(ClientError::new(
                ErrorCode::NotDir,
                format!("{dir_path} is not a directory"),
            ));
        }
        Ok((dir, name))
    }

    /// Opens (and with `create`, creates) a file by path.
    #[tracing::instrument(level = "debug", skip(self), fields(client = %self.core.client_id))]
    pub async fn open(&self, path: &str, opts: OpenOptions) -> Result<File> {
        if opts.create {
            let (dir, name) = self.parent_of(path).await?;
            if !opts.exclusive {
                match self.stat(path).await {
                    Ok(attr) => return self.open_attr(&attr, opts.mode, opts.truncate).await,
                    Err(e) if e.code() == ErrorCode::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let caller = self.core.opts.caller;
            let (attr, file) = self
                .create_open(
                    dir.inode,
                    name,
                    opts.perm,
                    caller,
                    opts.exclusive,
                    PlacementHint::Any,
                    opts.mode,
                )
                .await?;
            if opts.truncate && attr.size > 0 && opts.mode.write {
                file.truncate(0).await?;
            }
            return Ok(file);
        }
        let attr = self.stat(path).await?;
        self.open_attr(&attr, opts.mode, opts.truncate).await
    }

    /// Creates or truncates `path` for writing.
    pub async fn create_file(&self, path: &str) -> Result<File> {
        self.open(path, OpenOptions::write()).await
    }

    /// [`Client::create_file`], asking meta to place a new file by `hint` (e.g. on a chain
    /// headed on the node that will read it). A hint no chain satisfies (meta answers
    /// `InvalidArgument`, e.g. every chain is headed elsewhere) falls back to any chain; an
    /// existing file keeps its chains and is truncated.
    pub async fn create_file_placed(&self, path: &str, hint: PlacementHint) -> Result<File> {
        if hint == PlacementHint::Any {
            return self.create_file(path).await;
        }
        match self.stat(path).await {
            Ok(attr) => return self.open_attr(&attr, OpenMode::WRITE, true).await,
            Err(e) if e.code() == ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
        let (dir, name) = self.parent_of(path).await?;
        let caller = self.core.opts.caller;
        match self
            .create_open(dir.inode, name, 0o644, caller, false, hint, OpenMode::WRITE)
            .await
        {
            Ok((_, file)) => Ok(file),
            Err(e) if e.code() == ErrorCode::InvalidArgument => self.create_file(path).await,
            Err(e) => Err(e),
        }
    }

    pub async fn mkdir_path(&self, path: &str, mode: u32) -> Result<InodeAttr> {
        let (dir, name) = self.parent_of(path).await?;
        self.mkdir(dir.inode, name, mode, self.core.opts.caller)
            .await
    }

    /// `mkdir -p`: creates missing directories along `path`; existing directories (and
    /// symlinks to directories) are fine.
    pub async fn mkdir_all(&self, path: &str, mode: u32) -> Result<InodeAttr> {
        let comps = split_path(path)?;
        let mut cur = self.getattr(InodeId::ROOT).await?;
        let mut prefix = String::new();
        for c in comps {
            prefix.push('/');
            prefix.push_str(c);
            cur = match self.lookup(cur.inode, c).await {
                Ok(a) if a.kind == FileType::Dir => a,
                Ok(a) if a.kind == FileType::Symlink => {
                    let t = self.stat(&prefix).await?;
                    if t.kind != FileType::Dir {
                        return Err(ClientError::new(
                            ErrorCode::NotDir,
                            format!("{prefix} is not a directory"),
                        ));
                    }
                    t
                }
                Ok(_) => {
                    return Err(ClientError::new(
                        ErrorCode::NotDir,
                        format!("{prefix} is not a directory"),
                    ));
                }
                Err(e) if e.code() == ErrorCode::NotFound => {
                    match self.mkdir(cur.inode, c, mode, self.core.opts.caller).await {
                        Ok(a) => a,
                        // Raced with another creator.
                        Err(e) if e.code() == ErrorCode::Exists => self.stat(&prefix).await?,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
        }
        Ok(cur)
    }

    /// Removes a file or symlink.
    pub async fn unlink_path(&self, path: &str) -> Result<()> {
        let (dir, name) = self.parent_of(path).await?;
        if let Ok(a) = self.lookup(dir.inode, name).await {
            self.pin_if_open(a.inode).await?;
        }
        self.unlink(dir.inode, name).await
    }

    /// Removes an empty directory.
    pub async fn rmdir_path(&self, path: &str) -> Result<()> {
        let (dir, name) = self.parent_of(path).await?;
        self.rmdir(dir.inode, name).await
    }

    /// Detaches a whole tree in one request; meta's collector deletes it in the background.
    pub async fn remove_tree(&self, path: &str) -> Result<()> {
        let (dir, name) = self.parent_of(path).await?;
        Ok(expect_done(
            "RemoveTree",
            self.core
                .meta_op(MetaRequest::RemoveTree {
                    parent: dir.inode,
                    name: name.to_string(),
                })
                .await?,
        )?)
    }

    pub async fn rename_path(&self, from: &str, to: &str, mode: RenameMode) -> Result<()> {
        let (sdir, sname) = self.parent_of(from).await?;
        let (ddir, dname) = self.parent_of(to).await?;
        if let Ok(a) = self.lookup(ddir.inode, dname).await {
            self.pin_if_open(a.inode).await?;
        }
        self.rename(sdir.inode, sname, ddir.inode, dname, mode)
            .await
    }

    /// Hard link: `new` names the inode of `existing`.
    pub async fn link_path(&self, existing: &str, new: &str) -> Result<InodeAttr> {
        let attr = self.lstat(existing).await?;
        let (dir, name) = self.parent_of(new).await?;
        self.link(attr.inode, dir.inode, name).await
    }

    pub async fn symlink_path(&self, target: &str, link: &str) -> Result<InodeAttr> {
        let (dir, name) = self.parent_of(link).await?;
        self.symlink(dir.inode, name, target, self.core.opts.caller)
            .await
    }

    pub async fn readlink_path(&self, path: &str) -> Result<String> {
        let a = self.lstat(path).await?;
        if a.kind != FileType::Symlink {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                format!("{path} is not a symlink"),
            ));
        }
        self.readlink(a.inode).await
    }

    /// Streams the entries of the directory at `path`.
    pub async fn read_dir(
        &self,
        path: &str,
    ) -> Result<impl Stream<Item = Result<DirEntry>> + Send + 'static> {
        let a = self.stat(path).await?;
        if a.kind != FileType::Dir {
            return Err(ClientError::new(
                ErrorCode::NotDir,
                format!("{path} is not a directory"),
            ));
        }
        Ok(self.readdir_stream(a.inode))
    }

    /// Every entry of the directory at `path`, in name order.
    pub async fn read_dir_all(&self, path: &str) -> Result<Vec<DirEntry>> {
        use futures::TryStreamExt;
        self.read_dir(path).await?.try_collect().await
    }

    /// Walks the tree under `root` depth-first (no recursion: an explicit stack), calling
    /// `visit(path, attr)` for every entry below `root`, directory listings fetched in pages
    /// with attributes. Symlinks are reported, not followed. For `ls -R`, `du`, `cp -r`.
    pub async fn walk(&self, root: &str, mut visit: impl FnMut(&str, &InodeAttr)) -> Result<()> {
        let top = self.stat(root).await?;
        if top.kind != FileType::Dir {
            return Err(ClientError::new(
                ErrorCode::NotDir,
                format!("{root} is not a directory"),
            ));
        }
        let base = root.trim_end_matches('/').to_string();
        let mut stack = vec![(base, top.inode)];
        while let Some((dir_path, dir)) = stack.pop() {
            let mut after = None;
            loop {
                let (page, more) = self
                    .readdir_plus_page(dir, after.take(), limits::READDIR_PAGE)
                    .await?;
                for (e, a) in &page {
                    let p = format!("{dir_path}/{}", e.name);
                    visit(&p, a);
                    if a.kind == FileType::Dir {
                        stack.push((p, a.inode));
                    }
                }
                match page.last() {
                    Some((last, _)) if more => after = Some(last.name.clone()),
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// Writes `data` as the whole content of `path` (created or truncated) and closes it.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let f = self.create_file(path).await?;
        let r = f.pwrite(0, data).await;
        let c = f.close().await;
        r?;
        c
    }

    /// The whole content of `path`.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let mut f = self.open(path, OpenOptions::read()).await?;
        let r = f.read_to_end().await;
        let c = f.close().await;
        let v = r?;
        c?;
        Ok(v)
    }

    /// Copies a local file into pond at `remote` (created or truncated). Returns bytes copied.
    /// `progress` is called with the running total after every step.
    pub async fn put(&self, local: &Path, remote: &str, progress: impl FnMut(u64)) -> Result<u64> {
        self.put_placed(local, remote, PlacementHint::Any, progress)
            .await
    }

    /// [`Client::put`] with a new file placed by `hint` ([`Client::create_file_placed`]).
    pub async fn put_placed(
        &self,
        local: &Path,
        remote: &str,
        hint: PlacementHint,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        use tokio::io::AsyncReadExt;
        let lp = local.display().to_string();
        let mut src = tokio::fs::File::open(local)
            .await
            .map_err(|source| ClientError::Local {
                path: lp.clone(),
                source,
            })?;
        let f = self.create_file_placed(remote, hint).await?;
        let mut total = 0u64;
        let r: Result<()> = async {
            loop {
                let mut buf = bytes::BytesMut::zeroed(limits::COPY_STEP_BYTES);
                let mut n = 0;
                while n < buf.len() {
                    let k = src
                        .read(&mut buf[n..])
                        .await
                        .map_err(|source| ClientError::Local {
                            path: lp.clone(),
                            source,
                        })?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                f.pwrite_bytes(total, buf.freeze()).await?;
                total += n as u64;
                progress(total);
            }
        }
        .await;
        let c = f.close().await;
        r?;
        c?;
        Ok(total)
    }

    /// Copies `remote` to a local file (created or truncated). Returns bytes copied.
    pub async fn get(
        &self,
        remote: &str,
        local: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let lp = local.display().to_string();
        let f = self.open(remote, OpenOptions::read()).await?;
        let size = f.size();
        let mut dst =
            tokio::fs::File::create(local)
                .await
                .map_err(|source| ClientError::Local {
                    path: lp.clone(),
                    source,
                })?;
        let mut total = 0u64;
        let r: Result<()> = async {
            // Two steps in flight: the next read overlaps the local write of this one.
            let mut next = (total < size).then(|| f.pread(total, limits::COPY_STEP_BYTES));
            while let Some(fut) = next.take() {
                let b = fut.await?;
                if b.is_empty() {
                    break;
                }
                let after = total + b.len() as u64;
                next = (after < size).then(|| f.pread(after, limits::COPY_STEP_BYTES));
                dst.write_all(&b)
                    .await
                    .map_err(|source| ClientError::Local {
                        path: lp.clone(),
                        source,
                    })?;
                total = after;
                progress(total);
            }
            dst.flush().await.map_err(|source| ClientError::Local {
                path: lp.clone(),
                source,
            })?;
            Ok(())
        }
        .await;
        let c = f.close().await;
        r?;
        c?;
        Ok(total)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.core.client_id)
            .finish()
    }
}
