//! `namespace/` — what the paths under `/NAME/...` are: mounts, the
//! attribute and listing cache in front of their under storage, and its
//! persisted half (`attrlog.rs`, the attribute log `attrs.log`).
//!
//! Owns: path normalisation, attributes with their version tokens (which name
//! the blocks cached under them), listings, the metadata sync interval.
//! Must never: hold block data, touch a shard's store or executor, or block
//! a shard (under-storage calls run on the tokio runtime).
//!
//! The namespace: mounts under `/NAME/...` and a cache of attributes and
//! listings in front of their under storage.
//!
//! Attributes and listings are trusted for the metadata sync interval
//! (`None` = forever, for immutable datasets). The version token in an
//! attribute names the object's content; blocks are cached under it, so an
//! object changed out of band is read afresh once its attribute is re-synced.
//!
//! Callable from any thread; under-storage calls must be awaited on the
//! engine's tokio runtime.

pub mod attrlog;
pub mod written;

use crate::namespace::attrlog::{AttrLog, PathMap};
use crate::ufs::{Guarded, UfsError, UfsResult};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stoker_proto::control::{Attr, DirEntry, Kind};

/// A failure as a client sees it: its kind, and one line for people.
/// `errno()` is the one place the errno a client receives is chosen
/// (`Response::Error` and the completion ring carry it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NsError {
    /// A request that cannot be right: a bad path, range or value (EINVAL).
    #[error("{0}")]
    Invalid(String),
    /// No such mount or file (ENOENT).
    #[error("{0}")]
    NotFound(String),
    /// A file operation on a directory (EISDIR).
    #[error("{0}")]
    IsDir(String),
    /// A listing or tree larger than the engine holds (E2BIG).
    #[error("{0}")]
    TooBig(String),
    /// The cache has no room for what was asked (ENOSPC).
    #[error("{0}")]
    NoSpace(String),
    /// The engine could not do it: a shard not answering, a fetch
    /// abandoned, shutting down, an object that changed mid-read (EIO).
    #[error("{0}")]
    Engine(String),
    /// Not done now, may be asked again: a cluster member that owns the
    /// block could not be reached for a preload (EAGAIN).
    #[error("{0}")]
    Again(String),
    /// Under storage failed; `errno` is the one `UfsError::errno` chose.
    #[error("{message}")]
    Ufs { errno: i32, message: String },
}

impl NsError {
    /// The errno a client receives.
    pub fn errno(&self) -> i32 {
        match self {
            NsError::Invalid(_) => libc::EINVAL,
            NsError::NotFound(_) => libc::ENOENT,
            NsError::IsDir(_) => libc::EISDIR,
            NsError::TooBig(_) => libc::E2BIG,
            NsError::NoSpace(_) => libc::ENOSPC,
            NsError::Engine(_) => libc::EIO,
            NsError::Again(_) => libc::EAGAIN,
            NsError::Ufs { errno, .. } => *errno,
        }
    }

    /// An under-storage failure at `path`.
    pub fn ufs(path: &str, e: UfsError) -> NsError {
        NsError::Ufs { errno: e.errno(), message: format!("{path}: {e}") }
    }
}

/// Slots of the per-directory listing generations.
const LIST_GEN_SLOTS: usize = 256;
/// Fetches of one listing while its directory keeps changing.
const LIST_TRIES: u32 = 4;
/// Pages fetched per listing call.
const LIST_PAGE: usize = 1000;
/// Listings larger than this are refused rather than held in memory.
const LIST_ENTRIES_MAX: usize = 10_000_000;
/// Directories listed at once by a tree walk.
pub const WALK_CONCURRENCY: usize = 16;

/// A directory's entries as last listed.
type Listing = Arc<Vec<DirEntry>>;

pub struct Namespace {
    mounts: BTreeMap<String, Arc<Guarded>>,
    log: Option<AttrLog>,
    attrs: RwLock<PathMap<(Attr, Instant)>>,
    lists: RwLock<PathMap<(Listing, Instant)>>,
    /// The engine-wide sync interval, for mounts without their own.
    sync: Option<Duration>,
    /// The engine's block size (a mount's may be smaller).
    block_bytes: u64,
    /// Each mount's settings, resolved against the engine's.
    settings: PathMap<MountSettings>,
    /// The direct-read table, voided whenever a file is seen to change.
    direct: Option<Arc<crate::direct::DirectAreas>>,
    /// Files written through the engine, served ahead of under storage.
    written: written::Written,
    /// Per directory (hashed into a fixed set of slots), bumped whenever a
    /// file of it changes where it is listed from (a written file moving to
    /// under storage, a patch or a forget of the cached listing). A listing
    /// fetched across a bump may miss such a file: it is not cached, and
    /// `list` fetches it again.
    list_gens: Box<[std::sync::atomic::AtomicU64]>,
}

/// A mount's settings as the namespace applies them (its own, else the
/// engine's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountSettings {
    /// Metadata sync interval; None = never re-check.
    pub sync: Option<Duration>,
    pub block_bytes: u64,
    /// Blocks read ahead of a sequential reader (0 = off).
    pub readahead: u64,
    /// Keep a local copy of blocks read from their cluster owner.
    pub peer_copy: bool,
}

/// A normalised namespace path: `/` or `/mount` or `/mount/rel/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved<'a> {
    Root,
    Mount { mount: &'a str, rel: &'a str },
}

/// Normalise a client path: leading `/`, no empty, `.` or `..` components,
/// no trailing slash. Returns None for a path that is not acceptable.
pub fn normalise(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.len() > 4096 || path.contains('\0') {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." {
            return None;
        }
        out.push('/');
        out.push_str(comp);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Split a normalised path into mount and relative path.
pub fn resolve(norm: &str) -> Resolved<'_> {
    let rest = &norm[1..];
    if rest.is_empty() {
        return Resolved::Root;
    }
    match rest.split_once('/') {
        Some((mount, rel)) => Resolved::Mount { mount, rel },
        None => Resolved::Mount { mount: rest, rel: "" },
    }
}

fn child_path(dir: &str, name: &str) -> String {
    if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") }
}

/// Whether `listed` (a size+mtime token: no ETag in the listing) describes
/// the same object as `known` (an ETag token with the same size and mtime).
fn same_object_weaker_token(known: &Attr, listed: &Attr) -> bool {
    known.kind == Kind::File
        && listed.kind == Kind::File
        && known.version.starts_with('e')
        && listed.version.starts_with('s')
        && known.size == listed.size
        && known.mtime_ns == listed.mtime_ns
}

fn dir_attr() -> Attr {
    Attr { kind: Kind::Dir, size: 0, mtime_ns: 0, version: String::new() }
}

impl Namespace {
    pub fn new(mounts: BTreeMap<String, Arc<Guarded>>, sync: Option<Duration>) -> Namespace {
        Namespace {
            mounts,
            log: None,
            attrs: RwLock::default(),
            lists: RwLock::default(),
            sync,
            block_bytes: 4 << 20,
            settings: PathMap::default(),
            direct: None,
            written: written::Written::default(),
            list_gens: (0..LIST_GEN_SLOTS).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
        }
    }

    /// The engine's block size.
    pub fn with_block_bytes(mut self, block_bytes: u64) -> Namespace {
        self.block_bytes = block_bytes;
        self
    }

    /// Mount `name`'s settings (a mount without them gets the engine-wide
    /// sync interval, the engine's block size and no read-ahead).
    pub fn with_mount_settings(mut self, name: &str, settings: MountSettings) -> Namespace {
        self.settings.insert(name.to_string(), settings);
        self
    }

    /// The settings of the mount `norm` is under (None for `/` or a mount
    /// without its own).
    fn settings_of(&self, norm: &str) -> Option<&MountSettings> {
        match resolve(norm) {
            Resolved::Root => None,
            Resolved::Mount { mount, .. } => self.settings.get(mount),
        }
    }

    /// Each mount's under-storage attempts allowed in flight now (lowered
    /// while its store throttles).
    pub fn mount_limits(&self) -> Vec<(String, usize)> {
        self.mounts.iter().map(|(n, g)| (n.clone(), g.limit())).collect()
    }

    /// The mounts whose block size is not the engine's (for the handshake).
    pub fn mount_block_bytes(&self) -> BTreeMap<String, u64> {
        self.settings
            .iter()
            .filter(|(_, s)| s.block_bytes != self.block_bytes)
            .map(|(n, s)| (n.clone(), s.block_bytes))
            .collect()
    }

    /// The block size of the mount `norm` is under.
    pub fn block_bytes(&self, norm: &str) -> u64 {
        self.settings_of(norm).map_or(self.block_bytes, |s| s.block_bytes)
    }

    /// The name of block `block` of `norm` at `version`. Blocks of a mount
    /// with its own block size carry the size in the key, so changing a
    /// mount's block size can never serve a block cut at the old size.
    pub fn block_key(&self, norm: &str, version: &str, block: u64) -> stoker_proto::key::BlockKey {
        let bs = self.block_bytes(norm);
        if bs == self.block_bytes {
            stoker_proto::key::BlockKey::new(norm, version, block)
        } else {
            stoker_proto::key::BlockKey::new(norm, &format!("{version}#bs{bs}"), block)
        }
    }

    /// Blocks to read ahead of a sequential reader under `norm` (0 = off).
    pub fn readahead_blocks(&self, norm: &str) -> u64 {
        self.settings_of(norm).map_or(0, |s| s.readahead)
    }

    /// Whether blocks under `norm` read from their cluster owner are kept here too.
    pub fn peer_copy(&self, norm: &str) -> bool {
        self.settings_of(norm).is_some_and(|s| s.peer_copy)
    }

    /// The sync interval that applies to `norm` (its mount's, else the
    /// engine-wide one).
    fn sync_of(&self, norm: &str) -> Option<Duration> {
        self.settings_of(norm).map_or(self.sync, |s| s.sync)
    }

    /// Persist file attributes and listings in `path` and load what an
    /// earlier run kept there (if it served the same mounts). Loaded
    /// attributes and listings count as synced now: they are trusted for one
    /// more sync interval of their mount (forever with `never`), so a restart
    /// does not relist. A listing naming a file whose attribute was dropped
    /// (invalidated) is not loaded.
    pub fn with_attr_log(mut self, path: &std::path::Path, fingerprint: &str) -> std::io::Result<Namespace> {
        let t0 = Instant::now();
        let (log, loaded) = AttrLog::open(path, fingerprint)?;
        let read_ms = t0.elapsed().as_millis();
        let now = Instant::now();
        let lists = self.lists.get_mut();
        let mut child = String::new();
        'dirs: for (dir, l) in loaded.lists {
            let mut entries = Vec::with_capacity(l.len());
            for (name, attr) in l {
                let attr = match attr {
                    Some(a) => a,
                    None => match loaded.attrs.get({
                        // One buffer for every lookup: no allocation per entry.
                        child.clear();
                        child.push_str(&dir);
                        if dir != "/" {
                            child.push('/');
                        }
                        child.push_str(&name);
                        child.as_str()
                    }) {
                        Some(a) => a.clone(),
                        None => continue 'dirs,
                    },
                };
                entries.push(DirEntry { name, attr });
            }
            lists.insert(dir, (Arc::new(entries), now));
        }
        let attrs = self.attrs.get_mut();
        attrs.reserve(loaded.attrs.len());
        attrs.extend(loaded.attrs.into_iter().map(|(p, a)| (p, (a, now))));
        tracing::info!(
            attrs = attrs.len(),
            listings = self.lists.get_mut().len(),
            read_ms,
            total_ms = t0.elapsed().as_millis() as u64,
            "attribute log loaded"
        );
        self.log = Some(log);
        Ok(self)
    }

    /// Void direct-read entries when `old` (what was cached) differs from `new`.
    fn changed(&self, old: Option<&Attr>, new: Option<&Attr>) {
        if let (Some(d), Some(o)) = (&self.direct, old) {
            if Some(o) != new {
                d.bump_all();
            }
        }
    }

    /// Use `d` as the direct-read table (voided on every change seen).
    pub fn with_direct(mut self, d: Option<Arc<crate::direct::DirectAreas>>) -> Self {
        self.direct = d;
        self
    }

    /// How much longer the cached attributes of `norm` stay fresh: None if
    /// they are not cached and fresh (or the mount re-checks on every open),
    /// Some(None) if they never go stale.
    pub fn fresh_for(&self, norm: &str) -> Option<Option<Duration>> {
        let g = self.attrs.read();
        let (_, at) = g.get(norm)?;
        match self.sync_of(norm) {
            None => Some(None),
            Some(d) => d.checked_sub(at.elapsed()).filter(|r| !r.is_zero()).map(Some),
        }
    }

    /// Cache `attr` for `norm`, and log it if it is news.
    fn remember(&self, norm: &str, attr: &Attr) {
        let old = self.attrs.write().insert(norm.to_string(), (attr.clone(), Instant::now()));
        self.changed(old.as_ref().map(|(o, _)| o), Some(attr));
        if let Some(log) = &self.log {
            if attr.kind == Kind::File && old.is_none_or(|(o, _)| o != *attr) {
                log.append(norm, Some(attr));
            }
        }
    }

    fn fresh(&self, norm: &str, at: Instant) -> bool {
        match self.sync_of(norm) {
            None => true,
            Some(d) => at.elapsed() < d,
        }
    }

    fn mount<'a>(&'a self, norm: &'a str) -> Result<Option<(&'a Guarded, &'a str)>, NsError> {
        match resolve(norm) {
            Resolved::Root => Ok(None),
            Resolved::Mount { mount, rel } => match self.mounts.get(mount) {
                Some(m) => Ok(Some((m, rel))),
                None => Err(NsError::NotFound(format!("{norm}: no such mount {mount:?}"))),
            },
        }
    }

    /// The written files (`write/` enters and removes them).
    pub fn written(&self) -> &written::Written {
        &self.written
    }

    fn list_gen(&self, dir: &str) -> &std::sync::atomic::AtomicU64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        dir.hash(&mut h);
        &self.list_gens[(h.finish() % LIST_GEN_SLOTS as u64) as usize]
    }

    /// A file of directory `dir` is about to change where it is listed from
    /// (a written file leaving the written table for under storage): a
    /// listing being fetched now must not be cached or answered as it is.
    pub fn listing_changes(&self, dir: &str) {
        self.list_gen(dir).fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Forget the cached listing of directory `dir` (a file in it was
    /// written or removed).
    pub fn forget_listing(&self, dir: &str) {
        self.listing_changes(dir);
        self.lists.write().remove(dir);
    }

    /// Put `attr` for file `norm` into the cached listing of its directory,
    /// or take it out (None), so a write does not cost a new listing.
    pub fn patch_listing(&self, norm: &str, attr: Option<Attr>) {
        let (dir, name) = match norm.rfind('/') {
            Some(0) => ("/", &norm[1..]),
            Some(i) => (&norm[..i], &norm[i + 1..]),
            None => return,
        };
        self.listing_changes(dir);
        let mut lists = self.lists.write();
        let Some((l, _)) = lists.get_mut(dir) else { return };
        let mut v = (**l).clone();
        v.retain(|e| e.name != name);
        if let Some(a) = attr {
            v.push(DirEntry { name: name.to_string(), attr: a });
        }
        *l = Arc::new(v);
    }

    /// Cache `attr` as under storage's for `norm` (a file just persisted).
    pub fn note_stored(&self, norm: &str, attr: &Attr) {
        self.remember(norm, attr);
    }

    /// Under storage of the mount `norm` is under, and the path in it.
    pub fn mount_of<'a>(&'a self, norm: &'a str) -> Result<(&'a Guarded, &'a str), NsError> {
        self.mount(norm)?.ok_or_else(|| NsError::Invalid(format!("{norm}: not a path in a mount")))
    }

    /// The attribute if cached and fresh; the shards' fast path.
    pub fn cached_attr(&self, norm: &str) -> Option<Attr> {
        if let Some(w) = self.written.get(norm) {
            return Some(w.attr);
        }
        let g = self.attrs.read();
        let (a, at) = g.get(norm)?;
        self.fresh(norm, *at).then(|| a.clone())
    }

    /// Files at or under `prefix` whose attributes are cached (fresh or not).
    pub fn known_files_under(&self, prefix: &str) -> Vec<(String, Attr)> {
        self.attrs
            .read()
            .iter()
            .filter(|(p, (a, _))| a.kind == Kind::File && crate::policy::covers(prefix, p))
            .map(|(p, (a, _))| (p.clone(), a.clone()))
            .collect()
    }

    /// Attributes learned from the cluster member that owns a block of
    /// `norm` (it read them from under storage): cached as if read here.
    pub fn learned(&self, norm: &str, attr: &Attr) {
        self.remember(norm, attr);
    }

    /// Forget what is cached about `norm` (after a read found it changed).
    pub fn invalidate(&self, norm: &str) {
        let old = self.attrs.write().remove(norm);
        self.changed(old.as_ref().map(|(o, _)| o), None);
        if old.is_some() {
            if let Some(log) = &self.log {
                log.append(norm, None);
            }
        }
    }

    pub async fn stat(&self, norm: &str) -> Result<Attr, NsError> {
        if let Some(a) = self.cached_attr(norm) {
            return Ok(a);
        }
        let Some((ufs, rel)) = self.mount(norm)? else {
            return Ok(dir_attr());
        };
        let attr = match ufs.stat(rel).await {
            // A directory under storage does not have yet: written files are in it.
            Err(UfsError::NotFound) if !self.written.children(norm).is_empty() || !self.written.child_dirs(norm).is_empty() => {
                return Ok(dir_attr());
            }
            r => r.map_err(|e| NsError::ufs(norm, e))?,
        };
        self.remember(norm, &attr);
        Ok(attr)
    }

    pub async fn list(&self, norm: &str) -> Result<Arc<Vec<DirEntry>>, NsError> {
        let gen = self.list_gen(norm);
        let mut tries = 0;
        loop {
            // A file persisted while this listing was fetched may be in
            // neither the written table nor under storage's answer: fetch
            // again (a few times; under constant change, the last answer).
            let before = gen.load(std::sync::atomic::Ordering::SeqCst);
            let listed = match self.list_ufs(norm, before).await {
                Err(NsError::Ufs { errno, .. }) if errno == libc::ENOENT && self.stat(norm).await.is_ok_and(|a| a.kind == Kind::Dir) => {
                    Arc::new(Vec::new())
                }
                r => r?,
            };
            let out = self.with_written(norm, listed);
            tries += 1;
            if gen.load(std::sync::atomic::Ordering::SeqCst) == before || tries >= LIST_TRIES {
                return Ok(out);
            }
        }
    }

    /// `listed` with the written files of `norm` in it (replacing what
    /// under storage has under their names), sorted by name.
    fn with_written(&self, norm: &str, listed: Arc<Vec<DirEntry>>) -> Arc<Vec<DirEntry>> {
        let files = self.written.children(norm);
        let dirs = self.written.child_dirs(norm);
        if files.is_empty() && dirs.is_empty() {
            return listed;
        }
        let mut by_name: BTreeMap<String, Attr> = listed.iter().map(|e| (e.name.clone(), e.attr.clone())).collect();
        for d in dirs {
            by_name.entry(d).or_insert_with(dir_attr);
        }
        for f in files {
            by_name.insert(f.name, f.attr);
        }
        Arc::new(by_name.into_iter().map(|(name, attr)| DirEntry { name, attr }).collect())
    }

    /// Under storage's listing of `norm` (cached); cached only if `norm`'s
    /// listing generation is still `gen`.
    async fn list_ufs(&self, norm: &str, gen: u64) -> Result<Arc<Vec<DirEntry>>, NsError> {
        if let Some((l, at)) = self.lists.read().get(norm) {
            if self.fresh(norm, *at) {
                return Ok(l.clone());
            }
        }
        let Some((ufs, rel)) = self.mount(norm)? else {
            let entries = self.mounts.keys().map(|m| DirEntry { name: m.clone(), attr: dir_attr() });
            return Ok(Arc::new(entries.collect()));
        };
        let mut entries = Vec::new();
        let mut token = None;
        loop {
            let page = ufs.list(rel, token, LIST_PAGE).await.map_err(|e| NsError::ufs(norm, e))?;
            entries.extend(page.entries.into_iter().map(|(name, attr)| DirEntry { name, attr }));
            if entries.len() > LIST_ENTRIES_MAX {
                return Err(NsError::TooBig(format!("{norm}: more than {LIST_ENTRIES_MAX} entries")));
            }
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        // Listing attributes warm the attribute cache: a walk then stats nothing.
        let now = Instant::now();
        let mut news = Vec::new();
        {
            // A listing without ETags (some S3-compatible servers) describes
            // the object a GET named by its ETag: keep that name, so its
            // cached blocks stay found.
            let attrs = self.attrs.read();
            for e in &mut entries {
                if let Some((known, _)) = attrs.get(&child_path(norm, &e.name)) {
                    if same_object_weaker_token(known, &e.attr) {
                        e.attr = known.clone();
                    }
                }
            }
        }
        {
            let mut attrs = self.attrs.write();
            for e in &entries {
                let child = child_path(norm, &e.name);
                let old = attrs.insert(child.clone(), (e.attr.clone(), now));
                self.changed(old.as_ref().map(|(o, _)| o), Some(&e.attr));
                if e.attr.kind == Kind::File && old.is_none_or(|(o, _)| o != e.attr) {
                    news.push((child, &e.attr));
                }
            }
        }
        if let Some(log) = &self.log {
            log.append_listing(news.into_iter(), norm, &entries);
        }
        let entries = Arc::new(entries);
        let mut lists = self.lists.write();
        if self.list_gen(norm).load(std::sync::atomic::Ordering::SeqCst) == gen {
            lists.insert(norm.to_string(), (entries.clone(), now));
        }
        Ok(entries)
    }

    /// Every file at or under `norm` with its attributes, sorted by path.
    /// Directories are listed `WALK_CONCURRENCY` at a time (each listing
    /// paginated, cached and persisted like any other), so a tree of many
    /// prefixes costs about one listing round trip per level, not one per
    /// prefix. More than `max_files` files is an error (E2BIG).
    pub async fn walk(&self, norm: &str, max_files: usize) -> Result<Vec<(String, Attr)>, NsError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let attr = self.stat(norm).await?;
        if attr.kind == Kind::File {
            return Ok(vec![(norm.to_string(), attr)]);
        }
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::from([norm.to_string()]);
        let mut listing = FuturesUnordered::new();
        loop {
            while listing.len() < WALK_CONCURRENCY {
                let Some(dir) = queue.pop_front() else { break };
                listing.push(async move {
                    let l = self.list(&dir).await;
                    (dir, l)
                });
            }
            let Some((dir, entries)) = listing.next().await else { break };
            for e in entries?.iter() {
                let p = child_path(&dir, &e.name);
                match e.attr.kind {
                    Kind::Dir => queue.push_back(p),
                    Kind::File => out.push((p, e.attr.clone())),
                }
            }
            if out.len() > max_files {
                return Err(NsError::TooBig(format!("{norm}: more than {max_files} files")));
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Read a range and the object's attributes in one under-storage call,
    /// caching the attributes.
    pub async fn read_versioned(&self, norm: &str, off: u64, len: u64) -> UfsResult<(Attr, Vec<u8>)> {
        if let Some(w) = self.written.get(norm) {
            // Gone (persisted and removed meanwhile): read under storage's copy.
            match read_local(w.data, w.attr.size, off, len).await {
                Err(UfsError::NotFound) => {}
                r => return r.map(|data| (w.attr, data)),
            }
        }
        let (attr, data) = match self.mount(norm) {
            Ok(Some((ufs, rel))) => ufs.read_versioned(rel, off, len).await?,
            Ok(None) => return Err(UfsError::IsDir),
            Err(_) => return Err(UfsError::NotFound),
        };
        self.remember(norm, &attr);
        Ok((attr, data))
    }

    /// Read a range of a file from under storage.
    pub async fn read(&self, norm: &str, off: u64, len: u64) -> UfsResult<Vec<u8>> {
        if let Some(w) = self.written.get(norm) {
            match read_local(w.data, w.attr.size, off, len).await {
                Err(UfsError::NotFound) => {}
                r => return r,
            }
        }
        match self.mount(norm) {
            Ok(Some((ufs, rel))) => ufs.read(rel, off, len).await,
            Ok(None) => Err(UfsError::IsDir),
            Err(_) => Err(UfsError::NotFound),
        }
    }
}

/// Bytes `[off, off+len)` of a written file's local copy of `size` bytes
/// (short at its end; the record's trailer after them is not data).
async fn read_local(path: std::path::PathBuf, size: u64, off: u64, len: u64) -> UfsResult<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&path)?;
        let n = len.min(size.saturating_sub(off)) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, off)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(|e| UfsError::Io { message: format!("worker failed: {e}"), retryable: false })?
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => UfsError::NotFound,
        _ => UfsError::Io { message: format!("written file's local copy: {e}"), retryable: false },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ufs::{BoxFut, ListPage, Ufs};

    /// A tree of `dirs` directories of two files each under the root. Every
    /// listing of a directory waits until `together` listings are under
    /// way at once: a walk that lists one directory at a time never
    /// finishes (the test's timeout fails it).
    struct Tree {
        dirs: usize,
        gate: tokio::sync::Barrier,
    }

    impl Ufs for Tree {
        fn stat<'a>(&'a self, _rel: &'a str) -> BoxFut<'a, UfsResult<Attr>> {
            Box::pin(async move { Ok(dir_attr()) })
        }
        fn read<'a>(&'a self, _: &'a str, _: u64, _: u64) -> BoxFut<'a, UfsResult<Vec<u8>>> {
            Box::pin(async move { Err(UfsError::NotFound) })
        }
        fn list<'a>(&'a self, rel: &'a str, _: Option<String>, _: usize) -> BoxFut<'a, UfsResult<ListPage>> {
            Box::pin(async move {
                let file = |n: &str| (n.to_string(), Attr { kind: Kind::File, size: 1, mtime_ns: 0, version: "v".into() });
                if rel.is_empty() {
                    let mut entries: Vec<_> = (0..self.dirs).map(|i| (format!("d{i:02}"), dir_attr())).collect();
                    entries.push(file("top"));
                    return Ok(ListPage { entries, next: None });
                }
                self.gate.wait().await;
                Ok(ListPage { entries: vec![file("a"), file("b")], next: None })
            })
        }
    }

    #[tokio::test]
    async fn a_walk_lists_prefixes_concurrently_and_finds_every_file() {
        let tree = Arc::new(Tree { dirs: 32, gate: tokio::sync::Barrier::new(8) });
        let g = Arc::new(Guarded::new(tree, Duration::from_secs(30), 1));
        let ns = Namespace::new(BTreeMap::from([("m".to_string(), g)]), None);
        let files = tokio::time::timeout(Duration::from_secs(20), ns.walk("/m", 1000))
            .await
            .expect("the walk listed fewer than 8 prefixes at once")
            .unwrap();
        assert_eq!(files.len(), 32 * 2 + 1);
        assert_eq!(files[0].0, "/m/d00/a");
        assert_eq!(files.last().unwrap().0, "/m/top");
        let e = ns.walk("/m", 10).await.unwrap_err();
        assert_eq!(e.errno(), libc::E2BIG);
    }

    /// A directory whose listing is taken, then held at a gate, while a
    /// file lands in it (as a written file being persisted does).
    struct Landing {
        files: parking_lot::Mutex<Vec<String>>,
        held: tokio::sync::Notify,
        go: tokio::sync::Notify,
        hold_first: std::sync::atomic::AtomicBool,
    }

    impl Ufs for Landing {
        fn stat<'a>(&'a self, _rel: &'a str) -> BoxFut<'a, UfsResult<Attr>> {
            Box::pin(async move { Ok(dir_attr()) })
        }
        fn read<'a>(&'a self, _: &'a str, _: u64, _: u64) -> BoxFut<'a, UfsResult<Vec<u8>>> {
            Box::pin(async move { Err(UfsError::NotFound) })
        }
        fn list<'a>(&'a self, _rel: &'a str, _: Option<String>, _: usize) -> BoxFut<'a, UfsResult<ListPage>> {
            Box::pin(async move {
                let attr = Attr { kind: Kind::File, size: 1, mtime_ns: 0, version: "v".into() };
                let entries = self.files.lock().iter().map(|n| (n.clone(), attr.clone())).collect();
                if self.hold_first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    self.held.notify_one();
                    self.go.notified().await;
                }
                Ok(ListPage { entries, next: None })
            })
        }
    }

    #[tokio::test]
    async fn a_file_persisted_while_its_directory_is_listed_is_in_the_listing() {
        let ufs = Arc::new(Landing {
            files: parking_lot::Mutex::new(vec!["a".into()]),
            held: tokio::sync::Notify::new(),
            go: tokio::sync::Notify::new(),
            hold_first: std::sync::atomic::AtomicBool::new(true),
        });
        let g = Arc::new(Guarded::new(ufs.clone(), Duration::from_secs(30), 1));
        let ns = Arc::new(Namespace::new(BTreeMap::from([("m".to_string(), g)]), Some(Duration::from_secs(3600))));
        let lister = {
            let ns = ns.clone();
            tokio::spawn(async move { ns.list("/m").await })
        };
        // The listing has been taken (without "b") and is held.
        ufs.held.notified().await;
        // "b" lands in under storage and leaves the written table, as
        // `write::persist` does it.
        ufs.files.lock().push("b".into());
        ns.listing_changes("/m");
        ns.patch_listing("/m/b", Some(Attr { kind: Kind::File, size: 1, mtime_ns: 0, version: "v".into() }));
        ufs.go.notify_one();
        let names = |l: &[DirEntry]| l.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        let first = lister.await.unwrap().unwrap();
        assert_eq!(names(&first), ["a", "b"], "the listing fetched across the change");
        let again = ns.list("/m").await.unwrap();
        assert_eq!(names(&again), ["a", "b"], "the cached listing");
    }

    #[test]
    fn normalise_paths() {
        assert_eq!(normalise("/a//b/").as_deref(), Some("/a/b"));
        assert_eq!(normalise("/").as_deref(), Some("/"));
        assert_eq!(normalise("///").as_deref(), Some("/"));
        assert_eq!(normalise("a/b"), None);
        assert_eq!(normalise("/a/../etc"), None);
        assert_eq!(resolve("/"), Resolved::Root);
        assert_eq!(resolve("/m"), Resolved::Mount { mount: "m", rel: "" });
        assert_eq!(resolve("/m/x/y"), Resolved::Mount { mount: "m", rel: "x/y" });
    }

    /// GETs name objects by ETag, listings (on some servers) by size and
    /// mtime only; `size` is what the listing reports for `f`.
    struct NoEtagListing {
        size: u64,
    }

    impl Ufs for NoEtagListing {
        fn stat<'a>(&'a self, _rel: &'a str) -> BoxFut<'a, UfsResult<Attr>> {
            Box::pin(async move { Ok(Attr { kind: Kind::File, size: 10, mtime_ns: 5, version: "eabc".into() }) })
        }
        fn read<'a>(&'a self, _: &'a str, _: u64, _: u64) -> BoxFut<'a, UfsResult<Vec<u8>>> {
            Box::pin(async move { Err(UfsError::NotFound) })
        }
        fn list<'a>(&'a self, _: &'a str, _: Option<String>, _: usize) -> BoxFut<'a, UfsResult<ListPage>> {
            Box::pin(async move {
                let a = Attr { kind: Kind::File, size: self.size, mtime_ns: 5, version: format!("s{}-m5", self.size) };
                Ok(ListPage { entries: vec![("f".into(), a)], next: None })
            })
        }
    }

    #[tokio::test]
    async fn a_listing_without_etags_keeps_the_etag_of_the_same_object() {
        let ns = |size| {
            let g = Arc::new(Guarded::new(Arc::new(NoEtagListing { size }), Duration::from_secs(5), 1));
            Namespace::new(BTreeMap::from([("m".to_string(), g)]), Some(Duration::ZERO))
        };
        // Same size and mtime: the ETag name stays, in the listing too.
        let same = ns(10);
        assert_eq!(same.stat("/m/f").await.unwrap().version, "eabc");
        assert_eq!(same.list("/m").await.unwrap()[0].attr.version, "eabc");
        // Another size: another object; the listing's token wins.
        let changed = ns(11);
        assert_eq!(changed.stat("/m/f").await.unwrap().version, "eabc");
        assert_eq!(changed.list("/m").await.unwrap()[0].attr.version, "s11-m5");
    }
}
