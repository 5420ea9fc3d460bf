//! [`StokerFs`]: the whole filesystem, minus FUSE.
//!
//! Owns the inode table, the directory-listing cache, open file and
//! directory handles, and the read-only policy. Every method takes plain
//! values and returns `Result<_, FsError>`; `fuse.rs` adapts them to fuser.
//! It must never block without a bound: every backend call is bounded by the
//! client's request timeout.
//!
//! Metadata is trusted for `metadata_ttl` (training data is immutable; the
//! default is one hour). A listing fetched for readdir also answers lookups
//! of its children, including negative ones, until it expires, so a
//! `find`/`os.walk` followed by a stat of every file costs one engine call
//! per directory, not one per file.

use crate::attr::Owner;
use crate::backend::Backend;
use crate::error::{FsError, Result};
use crate::inode::{InodeTable, NodeView, ROOT_INO};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stoker_client::Kind;
use stoker_proto::control::{Attr, DirEntry};

/// Longest name a lookup accepts (as on ext4).
pub const NAME_BYTES_MAX: usize = 255;
/// Listing entries cached across all directories before the cache is reset
/// (bounds memory on namespaces with millions of files).
pub const LISTING_ENTRIES_MAX: usize = 4_000_000;

#[derive(Clone, Debug)]
pub struct FsConfig {
    /// How long attributes, entries and listings are trusted, here and in the
    /// kernel. Default 1 h: training data does not change under a job.
    pub metadata_ttl: Duration,
    pub owner: Owner,
    /// A lookup in a directory whose listing is not cached fetches the whole
    /// listing (once, shared by concurrent lookups) instead of one stat: a
    /// trainer opening every file of a directory costs one engine call, not
    /// one per file. Off = one stat per lookup (very large directories read
    /// sparsely). Default on.
    pub list_on_lookup: bool,
    /// The engine mount has a write mode (`write=`): create, write, close,
    /// fsync, truncate to 0 and unlink go to the engine (fs/write.rs).
    /// Off: every write-type call is refused with EROFS. Default off.
    pub writable: bool,
    /// Other users may use the mount (`allow_other`; the kernel checks
    /// permissions). On a writable mount, directories nobody created
    /// through it are then mode 1777 (anyone creates files, only a file's
    /// owner removes or renames it), as /tmp. Default off.
    pub shared: bool,
}

impl Default for FsConfig {
    fn default() -> FsConfig {
        FsConfig {
            metadata_ttl: Duration::from_secs(3600),
            // SAFETY: getuid/getgid cannot fail and touch no memory.
            owner: Owner { uid: unsafe { libc::getuid() }, gid: unsafe { libc::getgid() }, blksize: 1 << 20 },
            list_on_lookup: true,
            writable: false,
            shared: false,
        }
    }
}

/// An inode and its attributes, as handed to the kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub ino: u64,
    pub attr: Attr,
}

/// A directory's entries at one moment (also the snapshot an open directory
/// handle pages through, so offsets stay valid while it is open).
pub struct Listing {
    pub dir_ino: u64,
    pub parent_ino: u64,
    pub dir_path: Arc<str>,
    pub dir_attr: Attr,
    /// Sorted by name (the engine sends them sorted; we sort again to be sure).
    pub entries: Vec<DirEntry>,
    fresh_until: Instant,
}

impl Listing {
    pub fn find(&self, name: &str) -> Option<&Attr> {
        self.entries.binary_search_by(|e| e.name.as_str().cmp(name)).ok().map(|i| &self.entries[i].attr)
    }

    /// Entries from directory offset `offset` on: 0 is ".", 1 is "..", then
    /// the children. Each item carries the offset of the one after it.
    pub fn items_from(&self, offset: u64) -> impl Iterator<Item = DirItem<'_>> {
        let dots = [(".", self.dir_ino), ("..", self.parent_ino)];
        let dots = dots.into_iter().map(|(name, ino)| DirItem { ino: Some(ino), name, attr: &self.dir_attr, next_offset: 0 });
        let kids = self.entries.iter().map(|e| DirItem { ino: None, name: &e.name, attr: &e.attr, next_offset: 0 });
        dots.chain(kids)
            .enumerate()
            .skip(offset.min(usize::MAX as u64) as usize)
            .map(|(i, mut item)| {
                item.next_offset = i as u64 + 1;
                item
            })
    }

    pub fn child_path(&self, name: &str) -> String {
        join(&self.dir_path, name)
    }
}

/// One entry of a readdir answer. `ino` is set for "." and ".."; children
/// get theirs from [`StokerFs::dir_item_ino`] or [`StokerFs::remember_item`].
pub struct DirItem<'a> {
    pub ino: Option<u64>,
    pub name: &'a str,
    pub attr: &'a Attr,
    pub next_offset: u64,
}

impl DirItem<'_> {
    pub fn is_dot(&self) -> bool {
        self.ino.is_some()
    }
}

/// The handle reads carry when the kernel did not open the file (no-open
/// connections, see `fuse.rs`): the read names the file by inode only.
/// Never handed out by [`StokerFs::open`] (handles start at 1).
pub const NO_HANDLE: u64 = 0;

#[derive(Clone)]
struct OpenFile {
    path: Arc<str>,
    size: u64,
}

/// Result of a successful open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep the pages it cached at earlier opens (the version
    /// token has not changed since).
    pub keep_cache: bool,
}

/// Answer to statfs, in the kernel's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Counters, read by `stoker mount` at exit and by tests.
#[derive(Default, Debug)]
pub struct FsCounters {
    pub lookups: AtomicU64,
    /// FUSE opens served (0 on a no-open connection, see `fuse.rs`).
    pub opens: AtomicU64,
    /// FUSE releases served (0 on a no-open connection).
    pub releases: AtomicU64,
    /// Opens answered "not implemented" so the kernel stops sending open and
    /// release (at most one per connection; see `fuse.rs`).
    pub opens_declined: AtomicU64,
    /// FLUSH requests received (at most one per connection: it is answered
    /// "not implemented" and the kernel stops sending it).
    pub flushes: AtomicU64,
    pub backend_stats: AtomicU64,
    pub backend_lists: AtomicU64,
    pub reads: AtomicU64,
    pub bytes_read: AtomicU64,
    pub refused_writes: AtomicU64,
    pub errors: AtomicU64,
}

pub struct StokerFs<B: Backend> {
    backend: B,
    cfg: FsConfig,
    inodes: InodeTable,
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
    listing_entries: AtomicU64,
    /// One lock per directory being listed, so concurrent lookups wait for
    /// one fetch instead of each listing it.
    listing_fetches: Mutex<HashMap<u64, Arc<Mutex<()>>>>,
    files: RwLock<HashMap<u64, OpenFile>>,
    /// Files open for writing (fs/write.rs), by handle.
    writers: Mutex<HashMap<u64, Arc<Mutex<write::Writer>>>>,
    /// Mode, uid and gid of files written through this mount, by path.
    owners: RwLock<HashMap<String, (u32, u32, u32)>>,
    dirs: RwLock<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
    warned: Mutex<HashSet<&'static str>>,
    pub counters: FsCounters,
}

fn join(dir: &str, name: &str) -> String {
    let mut p = String::with_capacity(dir.len() + 1 + name.len());
    p.push_str(dir);
    if !dir.ends_with('/') {
        p.push('/');
    }
    p.push_str(name);
    p
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The longest a writable mount trusts a directory listing.
pub const WRITABLE_LISTING_TTL: Duration = Duration::from_secs(1);

impl<B: Backend> StokerFs<B> {
    /// Serve namespace path `root` (`/NAME`, or `/` for every mount) as the
    /// root of the filesystem. Fails if `root` is missing or not a directory.
    pub fn new(backend: B, root: &str, cfg: FsConfig) -> Result<StokerFs<B>> {
        let root = if root.len() > 1 { root.trim_end_matches('/') } else { root };
        if !root.starts_with('/') {
            return Err(FsError::NotFound { path: root.to_string() });
        }
        let attr = backend.stat(root).map_err(|e| FsError::backend(root, e))?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotDir { path: root.to_string() });
        }
        let inodes = InodeTable::new(root, attr, Instant::now() + cfg.metadata_ttl);
        Ok(StokerFs {
            backend,
            cfg,
            inodes,
            listings: Mutex::new(HashMap::new()),
            listing_entries: AtomicU64::new(0),
            listing_fetches: Mutex::new(HashMap::new()),
            files: RwLock::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            owners: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            warned: Mutex::new(HashSet::new()),
            counters: FsCounters::default(),
        })
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.metadata_ttl
    }

    /// How long a directory listing is trusted: the metadata TTL, but at
    /// most [`WRITABLE_LISTING_TTL`] on a writable mount, whose directories
    /// other writers (another mount, the gateway, the library) add to.
    fn listing_deadline(&self) -> Instant {
        let ttl = if self.cfg.writable { self.cfg.metadata_ttl.min(WRITABLE_LISTING_TTL) } else { self.cfg.metadata_ttl };
        Instant::now() + ttl
    }

    fn node(&self, ino: u64) -> Result<NodeView> {
        self.inodes.get(ino).ok_or(FsError::StaleInode(ino))
    }

    fn stat(&self, path: &str) -> Result<Attr> {
        self.counters.backend_stats.fetch_add(1, Ordering::Relaxed);
        self.backend.stat(path).map_err(|e| FsError::backend(path, e))
    }

    fn child_name<'n>(&self, parent: &NodeView, name: &'n OsStr) -> Result<&'n str> {
        // The engine only holds UTF-8 names, so anything else cannot exist.
        let name = name.to_str().ok_or_else(|| FsError::NotFound { path: join(&parent.path, &name.to_string_lossy()) })?;
        if name.len() > NAME_BYTES_MAX {
            return Err(FsError::NameTooLong { path: join(&parent.path, name), max: NAME_BYTES_MAX });
        }
        Ok(name)
    }

    fn fresh_listing(&self, dir: u64) -> Option<Arc<Listing>> {
        let g = self.listings.lock();
        let l = g.get(&dir)?;
        (Instant::now() < l.fresh_until).then(|| l.clone())
    }

    /// Look `name` up in directory `parent`; counts one kernel reference.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let p = self.node(parent)?;
        if p.attr.kind != Kind::Dir {
            return Err(FsError::NotDir { path: p.path.to_string() });
        }
        let name = self.child_name(&p, name)?;
        let path = join(&p.path, name);
        let listing = match self.fresh_listing(parent) {
            Some(l) => Some(l),
            None if self.cfg.list_on_lookup => Some(self.listing_once(parent, p)?),
            None => None,
        };
        let attr = match listing {
            // A name another writer added shows once the listing is
            // refreshed (`listing_deadline`). Asking the engine on every miss
            // would cost each create a store stat of a name not there yet.
            Some(l) => l.find(name).cloned().ok_or_else(|| FsError::NotFound { path: path.clone() })?,
            None => self.stat(&path)?,
        };
        let ino = self.inodes.remember(&path, attr.clone(), self.deadline());
        Ok(Entry { ino, attr })
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
        if self.inodes.get(ino).is_none() {
            if let Some(l) = self.listings.lock().remove(&ino) {
                self.listing_entries.fetch_sub(l.entries.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Attributes of `ino`, re-fetched when older than the metadata TTL.
    pub fn getattr(&self, ino: u64) -> Result<Entry> {
        let n = self.node(ino)?;
        if n.fresh {
            return Ok(Entry { ino, attr: n.attr });
        }
        let attr = self.stat(&n.path)?;
        self.inodes.refresh(ino, attr.clone(), self.deadline());
        Ok(Entry { ino, attr })
    }

    /// Open a directory: snapshot its listing for readdir.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let n = self.node(ino)?;
        if n.attr.kind != Kind::Dir {
            return Err(FsError::NotDir { path: n.path.to_string() });
        }
        let listing = match self.fresh_listing(ino) {
            Some(l) => l,
            None => self.listing_once(ino, n)?,
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.write().insert(fh, listing);
        Ok(fh)
    }

    /// The cached listing of `dir`, fetching it if needed; concurrent
    /// callers for one directory share a single fetch.
    fn listing_once(&self, dir: u64, n: NodeView) -> Result<Arc<Listing>> {
        let lock = self.listing_fetches.lock().entry(dir).or_default().clone();
        let _g = lock.lock();
        let res = match self.fresh_listing(dir) {
            Some(l) => Ok(l),
            None => self.fetch_listing(dir, n),
        };
        self.listing_fetches.lock().remove(&dir);
        res
    }

    fn fetch_listing(&self, ino: u64, n: NodeView) -> Result<Arc<Listing>> {
        self.counters.backend_lists.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.backend.list(&n.path).map_err(|e| FsError::backend(&n.path, e))?;
        if !entries.is_sorted_by(|a, b| a.name < b.name) {
            entries.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let parent_ino = if ino == ROOT_INO { ROOT_INO } else { self.inodes.ino_of(parent_of(&n.path)) };
        let listing = Arc::new(Listing {
            dir_ino: ino,
            parent_ino,
            dir_path: n.path.clone(),
            dir_attr: n.attr,
            entries,
            fresh_until: self.listing_deadline(),
        });
        let added = listing.entries.len() as u64;
        let mut g = self.listings.lock();
        if self.listing_entries.load(Ordering::Relaxed) + added > LISTING_ENTRIES_MAX as u64 {
            g.clear();
            self.listing_entries.store(0, Ordering::Relaxed);
        }
        if let Some(old) = g.insert(ino, listing.clone()) {
            self.listing_entries.fetch_sub(old.entries.len() as u64, Ordering::Relaxed);
        }
        self.listing_entries.fetch_add(added, Ordering::Relaxed);
        Ok(listing)
    }

    /// The snapshot an open directory handle reads from.
    pub fn dir_listing(&self, fh: u64) -> Result<Arc<Listing>> {
        self.dirs.read().get(&fh).cloned().ok_or(FsError::BadHandle(fh))
    }

    /// Inode number of a readdir item, without taking a reference (readdir).
    pub fn dir_item_ino(&self, listing: &Listing, item: &DirItem<'_>) -> u64 {
        item.ino.unwrap_or_else(|| self.inodes.ino_of(&listing.child_path(item.name)))
    }

    /// Inode number of a readdirplus item, taking a kernel reference for
    /// children (the kernel does not count "." and "..").
    pub fn remember_item(&self, listing: &Listing, item: &DirItem<'_>) -> u64 {
        match item.ino {
            Some(ino) => ino,
            None => self.inodes.remember(&listing.child_path(item.name), item.attr.clone(), self.deadline()),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.write().remove(&fh);
    }

    /// Refuse an open with write intent (EROFS); `Ok` for a plain read open.
    fn check_read_only_open(&self, ino: u64, flags: i32) -> Result<()> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(self.refuse("open for writing", ino, None));
        }
        Ok(())
    }

    /// A read open that creates no handle (the kernel is told to stop
    /// sending opens; later reads carry [`NO_HANDLE`]). Any write intent is
    /// still refused with EROFS.
    pub fn open_without_handle(&self, ino: u64, flags: i32) -> Result<()> {
        self.check_read_only_open(ino, flags)?;
        self.counters.opens_declined.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Open a file for reading. Any write intent is refused with EROFS
    /// (on a writable mount it opens the file for rewriting: fs/write.rs).
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        self.open_as(ino, flags, uid, gid)
    }

    /// `open` for the user `uid`/`gid` (who owns a file it rewrites).
    pub fn open_as(&self, ino: u64, flags: i32, uid: u32, gid: u32) -> Result<Opened> {
        if self.cfg.writable && (flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0) {
            return self.open_for_write(ino, flags, uid, gid);
        }
        self.check_read_only_open(ino, flags)?;
        self.counters.opens.fetch_add(1, Ordering::Relaxed);
        let e = self.getattr(ino)?;
        let path = self.inodes.path(ino).ok_or(FsError::StaleInode(ino))?;
        if e.attr.kind == Kind::Dir {
            return Err(FsError::IsDir { path: path.to_string() });
        }
        let keep_cache = self.inodes.open_version(ino, &e.attr.version);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.write().insert(fh, OpenFile { path, size: e.attr.size });
        Ok(Opened { fh, keep_cache })
    }

    /// Read into `buf` at `off` from file `ino`; short (or 0) at EOF.
    ///
    /// `fh` is the handle from [`StokerFs::open`], whose size snapshot bounds
    /// the read, or [`NO_HANDLE`] when the kernel skipped the open: the file
    /// is then found by inode, bounded by the size last reported to the
    /// kernel (the kernel holds a reference to `ino` while a file is open,
    /// so it is in the table). Either way no allocation.
    pub fn read(&self, ino: u64, fh: u64, off: u64, buf: &mut [u8]) -> Result<usize> {
        let f = self.file_for_read(ino, fh)?;
        if off >= f.size || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(f.size - off) as usize;
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let n = self.backend.read_into(&f.path, off, &mut buf[..want]).map_err(|e| FsError::backend(&f.path, e))?;
        self.counters.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// The file a read of (`ino`, `fh`) is for: its open handle, or (no-open
    /// connections) the inode's path and last reported size.
    fn file_for_read(&self, ino: u64, fh: u64) -> Result<OpenFile> {
        if fh != NO_HANDLE && !self.writers.lock().contains_key(&fh) {
            return self.files.read().get(&fh).cloned().ok_or(FsError::BadHandle(fh));
        }
        let (path, kind, size) = self.inodes.file_of(ino).ok_or(FsError::StaleInode(ino))?;
        if kind == Kind::Dir {
            return Err(FsError::IsDir { path: path.to_string() });
        }
        Ok(OpenFile { path, size })
    }

    /// As `read`, without holding the calling thread: `done` gets the bytes
    /// (valid during the call) or the error, perhaps on the client's
    /// completion thread, so a session thread goes back to the kernel while
    /// the engine (or under storage) answers.
    pub fn read_async(self: &Arc<Self>, ino: u64, fh: u64, off: u64, size: usize, done: impl FnOnce(Result<&[u8]>) + Send + 'static) {
        let f = match self.file_for_read(ino, fh) {
            Ok(f) => f,
            Err(e) => return done(Err(e)),
        };
        if off >= f.size || size == 0 {
            return done(Ok(&[]));
        }
        let want = (size as u64).min(f.size - off) as usize;
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let fs = self.clone();
        let path = f.path.clone();
        self.backend.read_async(
            &f.path,
            off,
            want,
            Box::new(move |r| match r {
                Ok(b) => {
                    fs.counters.bytes_read.fetch_add(b.len() as u64, Ordering::Relaxed);
                    done(Ok(b))
                }
                Err(e) => done(Err(FsError::backend(&path, e))),
            }),
        );
    }

    pub fn release(&self, fh: u64) {
        self.counters.releases.fetch_add(1, Ordering::Relaxed);
        self.files.write().remove(&fh);
        self.release_writer(fh);
    }

    /// Open file handles (for tests and the exit summary).
    pub fn open_files(&self) -> usize {
        self.files.read().len()
    }

    pub fn statfs(&self) -> StatFs {
        const BSIZE: u64 = 4096;
        let (cap, used) = self.backend.usage().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "statfs: engine usage unavailable, reporting zero");
            (0, 0)
        });
        let free = cap.saturating_sub(used) / BSIZE;
        StatFs {
            blocks: cap / BSIZE,
            bfree: free,
            bavail: free,
            files: self.inodes.len() as u64,
            ffree: 0,
            bsize: BSIZE as u32,
            namelen: NAME_BYTES_MAX as u32,
            frsize: BSIZE as u32,
        }
    }

    /// access(2): W_OK is refused with EROFS, X_OK on a file with EACCES.
    pub fn access(&self, ino: u64, mask: i32) -> Result<()> {
        let n = self.node(ino)?;
        if mask & libc::W_OK != 0 && !self.cfg.writable {
            // Tools probe with access(W_OK) routinely; this is not worth a warning.
            return Err(FsError::ReadOnly { op: "access(W_OK)", path: n.path.to_string() });
        }
        if mask & libc::X_OK != 0 && n.attr.kind == Kind::File {
            return Err(FsError::Access { path: n.path.to_string(), what: "files are not executable" });
        }
        Ok(())
    }

    /// Refuse a write-type operation: EROFS, logged (a warning the first time
    /// for each operation, then at debug level) and counted.
    pub fn refuse(&self, op: &'static str, ino: u64, name: Option<&OsStr>) -> FsError {
        self.counters.refused_writes.fetch_add(1, Ordering::Relaxed);
        let base = self.inodes.path(ino).map(|p| p.to_string()).unwrap_or_else(|| format!("<inode {ino}>"));
        let path = match name {
            Some(n) => join(&base, &n.to_string_lossy()),
            None => base,
        };
        let err = FsError::ReadOnly { op, path };
        if self.warned.lock().insert(op) {
            tracing::warn!("{err} (further {op} refusals are logged at debug level)");
        } else {
            tracing::debug!("{err}");
        }
        err
    }
}

mod write;

#[cfg(test)]
mod tests;
