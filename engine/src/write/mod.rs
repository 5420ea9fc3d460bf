//! `write/` — the write path: files clients create, write sequentially and
//! close on a mount with a write mode (`--mount-opt NAME:write=MODE`), kept
//! durably on the engine's disk and persisted to under storage.
//!
//! Owns: open write handles (bounded in number and bytes), the local copy
//! of every written file and its record (`cache-dir/stoker-v1/writes/`:
//! `ID.data`, fsynced at close, and `ID.rec`, written by `durable::write`
//! before a close is acknowledged), recovery of both at start-up, the
//! persist queue (bounded concurrency, retries with backoff, an error state
//! for a file that keeps failing) and `sync`.
//! Must never: acknowledge a close before the bytes and the record are
//! fsynced; drop a written file that is not in under storage (a failing
//! persist keeps it, however long it fails, unless the client removes it);
//! run on a shard's executor (blocking file I/O runs on control threads,
//! persists on the tokio runtime); write to a mount without a write mode.
//!
//! Readers see a closed file through `namespace::written` (entered there
//! at close, removed once persisted); the segment store never holds the
//! only copy of a written byte, so eviction cannot lose one.

mod persist;
mod record;

use crate::config::WriteMode;
use crate::namespace::written::WrittenFile;
use crate::namespace::{normalise, resolve, Namespace, NsError, Resolved};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stoker_proto::control::{Attr, Kind};

pub use record::Record;

/// Open write handles, engine-wide, at most.
pub const HANDLES_MAX: usize = 4096;
/// A handle not written to for this long is dropped (its writer is gone).
pub const HANDLE_IDLE_MAX: Duration = Duration::from_secs(600);
/// Persists under way at once.
pub const PERSISTS_MAX: usize = 16;
/// Longest wait of `sync` (and of a `through` close) for under storage.
pub const SYNC_WAIT_MAX: Duration = Duration::from_secs(240);

/// One file being written.
struct Open {
    path: String,
    file: File,
    id: u64,
    written: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    touched: Instant,
    /// An fsync wrote `ID.rec`: the close rewrites it (a trailer would be
    /// older than it).
    synced: bool,
}

/// One closed file not yet in under storage.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub path: String,
    pub size: u64,
    pub version: String,
    /// Attempts made, and the last one's error (None after a success or
    /// before any attempt).
    pub attempts: u32,
    pub last_error: Option<String>,
    pub in_flight: bool,
}

pub struct WriteCore {
    dir: PathBuf,
    ns: Arc<Namespace>,
    modes: HashMap<String, WriteMode>,
    rt: tokio::runtime::Handle,
    handles: Mutex<HashMap<u64, Open>>,
    next_id: AtomicU64,
    /// Closed files waiting for (or in) a persist, by id.
    pub(crate) pending: Mutex<BTreeMap<u64, Pending>>,
    queue: tokio::sync::mpsc::UnboundedSender<u64>,
    /// Bytes written and not yet persisted (open handles included) at most.
    bytes_max: u64,
    /// Bytes of open handles (pending files' bytes are summed from `pending`).
    open_bytes: AtomicU64,
    /// Empty data files whose directory entries are durable already, by
    /// id, oldest first: a create takes one, so a close fsyncs one file.
    spares: Mutex<std::collections::VecDeque<(u64, File)>>,
}

/// Spare data files made at once (one directory fsync for all).
const SPARES_BATCH: usize = 16;

impl Open {
    /// The record of this file as written so far; `open` while its writer
    /// has not closed it (an fsync).
    fn record(&self, mode: WriteMode, open: bool) -> Record {
        Record {
            id: self.id,
            path: self.path.clone(),
            size: self.written,
            mtime_ns: now_ns(),
            version: format!("w{:x}", self.id),
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            persist: mode.persists(),
            open,
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

pub(crate) fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn io_err(what: &str, e: std::io::Error) -> NsError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        NsError::NoSpace(format!("{what}: {e}"))
    } else {
        NsError::Engine(format!("{what}: {e}"))
    }
}

/// A refusal with its own errno (EROFS, EBADF, EOPNOTSUPP, ...), carried
/// as the under-storage kind whose errno the client receives as is.
fn refused(errno: i32, message: String) -> NsError {
    NsError::Ufs { errno, message }
}

impl WriteCore {
    /// Open the write path over `root/writes`: recover what an earlier run
    /// acknowledged (entered into the namespace; persists resumed) and
    /// start the persist queue on `rt`.
    pub fn start(
        root: &Path,
        ns: Arc<Namespace>,
        modes: HashMap<String, WriteMode>,
        rt: tokio::runtime::Handle,
        bytes_max: u64,
    ) -> std::io::Result<Arc<WriteCore>> {
        let dir = root.join("writes");
        std::fs::create_dir_all(&dir)?;
        let recovered = record::recover(&dir)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let max_id = recovered.iter().map(|r| r.id).max().unwrap_or(0);
        let core = Arc::new(WriteCore {
            dir,
            ns,
            modes,
            rt: rt.clone(),
            handles: Mutex::default(),
            next_id: AtomicU64::new((now_ns() as u64).max(max_id + 1)),
            pending: Mutex::default(),
            queue: tx,
            bytes_max,
            open_bytes: AtomicU64::new(0),
            spares: Mutex::default(),
        });
        let mut resumed = 0;
        for r in recovered {
            let Some(m) = core.mode_of(&r.path) else {
                // The mount lost its write mode (or is gone): keep the file
                // on disk, unserved, until it is started with one again.
                tracing::warn!(path = %r.path, "a written file's mount has no write mode now: kept on disk, not served");
                continue;
            };
            core.enter(&r);
            if m.persists() && r.persist {
                core.pending.lock().insert(r.id, Pending::of(&r));
                let _ = core.queue.send(r.id);
                resumed += 1;
            }
        }
        if resumed > 0 {
            tracing::info!(files = resumed, "resuming persists of written files");
        }
        rt.spawn(persist::run(core.clone(), rx));
        Ok(core)
    }

    fn data_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.data"))
    }

    fn record_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.rec"))
    }

    /// The write mode of the mount `norm` is under (None: read-only).
    pub fn mode_of(&self, norm: &str) -> Option<WriteMode> {
        match resolve(norm) {
            Resolved::Mount { mount, rel } if !rel.is_empty() => self.modes.get(mount).copied(),
            _ => None,
        }
    }

    fn writable(&self, path: &str) -> Result<(String, WriteMode), NsError> {
        let norm = normalise(path).ok_or_else(|| NsError::Invalid(format!("bad path {path:?}: must start with /")))?;
        match self.mode_of(&norm) {
            Some(m) => Ok((norm, m)),
            None => Err(refused(libc::EROFS, format!("{norm}: read-only (the mount has no write= mode)"))),
        }
    }

    /// Make a closed file visible to readers.
    fn enter(&self, r: &Record) {
        let attr = Attr { kind: Kind::File, size: r.size, mtime_ns: r.mtime_ns, version: r.version.clone() };
        let f = WrittenFile { attr, data: self.data_path(r.id), mode: r.mode, uid: r.uid, gid: r.gid };
        self.ns.written().insert(&r.path, f);
        self.ns.invalidate(&r.path);
    }

    /// Files and bytes waiting to be persisted, and files whose last attempt failed.
    pub fn pending_totals(&self) -> (u64, u64, u64) {
        let p = self.pending.lock();
        let bytes = p.values().map(|f| f.size).sum();
        let failed = p.values().filter(|f| f.last_error.is_some()).count() as u64;
        (p.len() as u64, bytes, failed)
    }

    /// Start writing `path`; the handle's id.
    pub fn create(&self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<u64, NsError> {
        let (norm, _) = self.writable(path)?;
        if let Some(w) = self.ns.cached_attr(&norm) {
            if w.kind == Kind::Dir {
                return Err(NsError::IsDir(format!("{norm}: is a directory")));
            }
        }
        // A file under a file could never be persisted. What is known here
        // (written files, cached attributes) is checked; no store call.
        let mut dir = parent_of(&norm);
        while dir.matches('/').count() > 1 {
            if self.ns.cached_attr(dir).is_some_and(|a| a.kind == Kind::File) {
                return Err(refused(libc::ENOTDIR, format!("{norm}: {dir} is a file")));
            }
            dir = parent_of(dir);
        }
        self.reap_idle();
        // Taken before the handles' lock: making a batch fsyncs a directory.
        let (id, file) = self.spare().map_err(|e| io_err("creating the local copy", e))?;
        let mut handles = self.handles.lock();
        if handles.len() >= HANDLES_MAX {
            self.spares.lock().push_front((id, file));
            return Err(refused(libc::EMFILE, format!("{norm}: {HANDLES_MAX} files are open for writing already")));
        }
        handles.insert(id, Open { path: norm, file, id, written: 0, mode: mode & 0o7777, uid, gid, touched: Instant::now(), synced: false });
        Ok(id)
    }

    /// An empty data file whose directory entry is durable; a batch is
    /// made (and the directory fsynced once) when none is left. Spares
    /// left at a stop hold no record and are removed at the next start.
    fn spare(&self) -> std::io::Result<(u64, File)> {
        let mut spares = self.spares.lock();
        if spares.is_empty() {
            let mut made = Vec::with_capacity(SPARES_BATCH);
            for _ in 0..SPARES_BATCH {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                match std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(self.data_path(id)) {
                    Ok(f) => made.push((id, f)),
                    Err(e) if made.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            // Only spares whose entries are durable are handed out.
            crate::durable::fsync_dir(&self.dir)?;
            spares.extend(made);
        }
        Ok(spares.pop_front().expect("filled above"))
    }

    /// Drop handles whose writer went quiet (a client that died mid-file).
    fn reap_idle(&self) {
        let stale: Vec<Open> = {
            let mut h = self.handles.lock();
            let ids: Vec<u64> = h.iter().filter(|(_, o)| o.touched.elapsed() > HANDLE_IDLE_MAX).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| h.remove(&id)).collect()
        };
        for o in stale {
            tracing::warn!(path = %o.path, "dropping a write handle idle for {HANDLE_IDLE_MAX:?}");
            self.discard(o);
        }
    }

    fn discard(&self, o: Open) {
        self.open_bytes.fetch_sub(o.written, Ordering::Relaxed);
        self.remove_files(o.id);
    }

    /// Append `data` at `off` (which must be the bytes written so far).
    pub fn write(&self, handle: u64, off: u64, data: &[u8]) -> Result<(), NsError> {
        use std::os::unix::fs::FileExt;
        let mut h = self.handles.lock();
        let o = h.get_mut(&handle).ok_or_else(|| refused(libc::EBADF, format!("no open write handle {handle}")))?;
        if off != o.written {
            return Err(refused(
                libc::EOPNOTSUPP,
                format!("{}: writes must be sequential (at offset {}, not {off})", o.path, o.written),
            ));
        }
        let (files, pending_bytes, _) = self.pending_totals();
        let _ = files;
        if pending_bytes + self.open_bytes.load(Ordering::Relaxed) + data.len() as u64 > self.bytes_max {
            return Err(NsError::NoSpace(format!(
                "{}: written data waiting for under storage would pass {} bytes",
                o.path, self.bytes_max
            )));
        }
        o.file.write_all_at(data, off).map_err(|e| io_err("writing the local copy", e))?;
        o.written += data.len() as u64;
        o.touched = Instant::now();
        self.open_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Make an open handle's bytes so far durable (a record marked open).
    pub fn fsync(&self, handle: u64) -> Result<(), NsError> {
        let mut h = self.handles.lock();
        let o = h.get_mut(&handle).ok_or_else(|| refused(libc::EBADF, format!("no open write handle {handle}")))?;
        let mode = self.mode_of(&o.path).ok_or_else(|| refused(libc::EROFS, format!("{}: read-only", o.path)))?;
        o.file.sync_all().map_err(|e| io_err("syncing the local copy", e))?;
        let r = o.record(mode, true);
        record::write(&self.record_path(o.id), &r).map_err(|e| io_err("writing the record", e))?;
        o.synced = true;
        if mode != WriteMode::Through {
            return Ok(());
        }
        // `through`: under storage has the bytes so far when fsync returns
        // (the close stores the whole file again).
        let (path, data, len) = (o.path.clone(), self.data_path(o.id), o.written);
        drop(h);
        self.store_now(&path, &data, len)
    }

    /// Store the first `len` bytes of `data` as `path` in under storage
    /// now: up to 3 attempts, each bounded by `SYNC_WAIT_MAX`.
    fn store_now(&self, path: &str, data: &Path, len: u64) -> Result<(), NsError> {
        let (ufs, rel) = self.ns.mount_of(path)?;
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            let ufs = ufs.inner().clone();
            match self.rt.block_on(async { tokio::time::timeout(SYNC_WAIT_MAX, ufs.write_file(rel, data, len)).await }) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("timed out after {SYNC_WAIT_MAX:?}"),
            }
        }
        Err(NsError::Ufs { errno: libc::EIO, message: format!("{path}: under storage refused the bytes so far ({last}); they are durable here") })
    }

    /// Drop a handle and its bytes.
    pub fn abort(&self, handle: u64) -> Result<(), NsError> {
        let o = self.handles.lock().remove(&handle).ok_or_else(|| refused(libc::EBADF, format!("no open write handle {handle}")))?;
        self.discard(o);
        Ok(())
    }

    /// Close a handle: fsync its bytes, write its record durably, make it
    /// visible, queue its persist; in `through` mode, wait for it.
    pub fn close(&self, handle: u64) -> Result<Attr, NsError> {
        let o = self.handles.lock().remove(&handle).ok_or_else(|| refused(libc::EBADF, format!("no open write handle {handle}")))?;
        let mode = self.mode_of(&o.path).ok_or_else(|| refused(libc::EROFS, format!("{}: read-only", o.path)))?;
        let r = o.record(mode, false);
        if let Err((what, e)) = self.make_durable(&o, &r) {
            let msg = format!("{}: {what}", o.path);
            self.discard(o);
            return Err(io_err(&msg, e));
        }
        // Acknowledged from here on: the record and the bytes are durable.
        self.open_bytes.fetch_sub(o.written, Ordering::Relaxed);
        drop(o);
        self.supersede(&r.path, r.id);
        self.enter(&r);
        let attr = Attr { kind: Kind::File, size: r.size, mtime_ns: r.mtime_ns, version: r.version.clone() };
        if mode.persists() {
            self.pending.lock().insert(r.id, Pending::of(&r));
            let _ = self.queue.send(r.id);
        }
        if mode == WriteMode::Through {
            let out = self.wait_persisted(&[r.id], SYNC_WAIT_MAX);
            if let Some((p, e)) = out.failed.first() {
                return Err(NsError::Ufs {
                    errno: libc::EIO,
                    message: format!("{p}: under storage refused it ({e}); kept in the cache and retried"),
                });
            }
        }
        Ok(attr)
    }

    /// Make a closed file's bytes and record `r` durable: the record as a
    /// trailer and one fsync; or, after an fsync wrote `ID.rec`, the bytes
    /// then the record rewritten in place.
    fn make_durable(&self, o: &Open, r: &Record) -> Result<(), (&'static str, std::io::Error)> {
        use std::os::unix::fs::FileExt;
        if o.synced {
            o.file.sync_all().map_err(|e| ("syncing the local copy", e))?;
            return record::write(&self.record_path(o.id), r).map_err(|e| ("writing its record", e));
        }
        o.file.write_all_at(&record::trailer(r), o.written).map_err(|e| ("writing its record", e))?;
        o.file.sync_data().map_err(|e| ("syncing the local copy", e))
    }

    /// Older written versions of `path` than `id` are replaced: drop those
    /// not being persisted now (a persist under way finishes, then its
    /// files go; the newer version is persisted after it).
    fn supersede(&self, path: &str, id: u64) {
        let old: Vec<u64> = {
            let mut p = self.pending.lock();
            let ids: Vec<u64> = p.iter().filter(|(i, f)| **i < id && f.path == path && !f.in_flight).map(|(i, _)| *i).collect();
            for i in &ids {
                p.remove(i);
            }
            ids
        };
        for i in old {
            self.remove_files(i);
        }
        // A cache-only (never pending) older version: its files go too.
        if let Some(w) = self.ns.written().get(path) {
            if let Some(old_id) = id_of_version(&w.attr.version).filter(|o| *o < id) {
                if !self.pending.lock().contains_key(&old_id) {
                    self.remove_files(old_id);
                }
            }
        }
    }

    /// Remove the record (durably) and the local copy of `id`.
    fn remove_files(&self, id: u64) {
        let _ = std::fs::remove_file(self.record_path(id));
        let _ = crate::durable::fsync_dir(&self.dir);
        let _ = std::fs::remove_file(self.data_path(id));
    }

    /// Remove a file: a written one (and its local copy), and its copy in
    /// under storage unless the mount is cache-only.
    pub fn unlink(&self, path: &str) -> Result<(), NsError> {
        let (norm, mode) = self.writable(path)?;
        // A persist of it under way finishes first, so it cannot land after the delete.
        self.wait_not_in_flight(&norm)?;
        let ids: Vec<u64> = {
            let mut p = self.pending.lock();
            let ids: Vec<u64> = p.iter().filter(|(_, f)| f.path == norm).map(|(i, _)| *i).collect();
            for i in &ids {
                p.remove(i);
            }
            ids
        };
        let was_written = self.ns.written().remove(&norm, None);
        let mut found = was_written.is_some();
        for i in ids {
            self.remove_files(i);
        }
        if let Some(w) = &was_written {
            if let Some(i) = id_of_version(&w.attr.version) {
                self.remove_files(i);
            }
        }
        if mode.persists() {
            let (ufs, rel) = self.ns.mount_of(&norm)?;
            let ufs = ufs.inner().clone();
            let rel = rel.to_string();
            match self.rt.block_on(async move { ufs.delete(&rel).await }) {
                Ok(()) => found = true,
                Err(crate::ufs::UfsError::NotFound) => {}
                Err(e) => return Err(NsError::ufs(&norm, e)),
            }
        }
        self.ns.invalidate(&norm);
        self.ns.patch_listing(&norm, None);
        if !found {
            return Err(NsError::NotFound(format!("{norm}: no such file")));
        }
        Ok(())
    }

    /// Wait (bounded) until no persist of `norm` is under way.
    fn wait_not_in_flight(&self, norm: &str) -> Result<(), NsError> {
        let t0 = Instant::now();
        while self.pending.lock().values().any(|p| p.path == norm && p.in_flight) {
            if t0.elapsed() > SYNC_WAIT_MAX {
                return Err(NsError::Engine(format!("{norm}: a persist of it is still under way")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Rename a file within one mount, replacing `to`. A written file moves
    /// locally (its record rewritten durably under the new path) and is
    /// persisted under the new name, and an older copy at `from` in under
    /// storage is removed; a stored file is moved in under storage.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), NsError> {
        let (f, mode) = self.writable(from)?;
        let (t, _) = self.writable(to)?;
        let mount = |p: &str| p.trim_start_matches('/').split('/').next().unwrap_or("").to_string();
        if mount(&f) != mount(&t) {
            return Err(refused(libc::EXDEV, format!("{f} -> {t}: a rename stays within one mount")));
        }
        if f == t {
            return Ok(());
        }
        // Claim `from`'s pending persists (marked in flight, so the persist
        // queue leaves them alone) once nothing of either path is under way;
        // they are queued again, under the new name, at the end.
        let t0 = Instant::now();
        let claimed: Vec<u64> = loop {
            let mut p = self.pending.lock();
            if !p.values().any(|x| (x.path == f || x.path == t) && x.in_flight) {
                let ids: Vec<u64> = p.iter().filter(|(_, x)| x.path == f).map(|(i, _)| *i).collect();
                for i in &ids {
                    if let Some(x) = p.get_mut(i) {
                        x.in_flight = true;
                    }
                }
                break ids;
            }
            drop(p);
            if t0.elapsed() > SYNC_WAIT_MAX {
                return Err(NsError::Engine(format!("{f}: a persist of it is still under way")));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let res = self.rename_claimed(&f, &t, mode);
        {
            let mut p = self.pending.lock();
            for i in &claimed {
                if let Some(x) = p.get_mut(i) {
                    x.in_flight = false;
                }
            }
        }
        for i in claimed {
            let _ = self.queue.send(i);
        }
        res
    }

    fn rename_claimed(&self, from: &str, to: &str, mode: WriteMode) -> Result<(), NsError> {
        let (f, t) = (from.to_string(), to.to_string());
        let attr = self.rt.block_on(self.ns.stat(&f))?;
        if attr.kind == Kind::Dir {
            return Err(refused(libc::EOPNOTSUPP, format!("{f}: renaming a directory is not supported")));
        }
        if let Ok(a) = self.rt.block_on(self.ns.stat(&t)) {
            if a.kind == Kind::Dir {
                return Err(NsError::IsDir(format!("{t}: is a directory")));
            }
        }
        match self.ns.written().get(&f) {
            Some(w) => {
                let id = id_of_version(&w.attr.version)
                    .ok_or_else(|| NsError::Engine(format!("{f}: written file without an id")))?;
                let mut r: Record = record::read(&self.dir, id)
                    .ok_or_else(|| NsError::Engine(format!("{f}: its record is unreadable")))?;
                r.path = t.clone();
                record::write(&self.record_path(id), &r).map_err(|e| io_err("rewriting the record", e))?;
                // `to`'s older written versions go; this one replaces them.
                self.supersede(&t, id);
                if let Some(old) = self.ns.written().remove(&t, None) {
                    if let Some(i) = id_of_version(&old.attr.version).filter(|i| *i != id) {
                        self.pending.lock().remove(&i);
                        self.remove_files(i);
                    }
                }
                if let Some(p) = self.pending.lock().get_mut(&id) {
                    p.path = t.clone();
                    p.attempts = 0;
                    p.last_error = None;
                }
                self.ns.written().remove(&f, Some(&w.attr.version));
                self.ns.written().insert(&t, w.clone());
                self.ns.invalidate(&f);
                self.ns.invalidate(&t);
                self.ns.patch_listing(&f, None);
                self.ns.patch_listing(&t, Some(w.attr.clone()));
                if mode.persists() {
                    // A copy persisted earlier under the old name goes too.
                    let (ufs, rel) = self.ns.mount_of(&f)?;
                    let (ufs, rel) = (ufs.inner().clone(), rel.to_string());
                    match self.rt.block_on(async move { ufs.delete(&rel).await }) {
                        Ok(()) | Err(crate::ufs::UfsError::NotFound) => {}
                        Err(e) => return Err(NsError::ufs(&f, e)),
                    }
                }
            }
            None => {
                if !mode.persists() {
                    return Err(refused(libc::EOPNOTSUPP, format!("{f}: renaming a stored file on a cache-only mount")));
                }
                let (ufs, from_rel) = self.ns.mount_of(&f)?;
                let (_, to_rel) = self.ns.mount_of(&t)?;
                let (ufs, from_rel, to_rel) = (ufs.inner().clone(), from_rel.to_string(), to_rel.to_string());
                self.rt
                    .block_on(async move { ufs.rename(&from_rel, &to_rel).await })
                    .map_err(|e| NsError::ufs(&f, e))?;
                self.ns.invalidate(&f);
                self.ns.invalidate(&t);
                self.ns.patch_listing(&f, None);
                self.ns.forget_listing(parent_of(&t));
            }
        }
        Ok(())
    }

    /// Make a directory: in under storage at once (a directory is not
    /// data to persist later). Refused on cache-only mounts.
    pub fn mkdir(&self, path: &str) -> Result<(), NsError> {
        let (norm, mode) = self.writable(path)?;
        if !mode.persists() {
            return Err(refused(libc::EOPNOTSUPP, format!("{norm}: mkdir on a cache-only mount")));
        }
        if self.rt.block_on(self.ns.stat(&norm)).is_ok() {
            return Err(refused(libc::EEXIST, format!("{norm}: exists")));
        }
        let (ufs, rel) = self.ns.mount_of(&norm)?;
        let (ufs, rel) = (ufs.inner().clone(), rel.to_string());
        self.rt.block_on(async move { ufs.create_dir(&rel).await }).map_err(|e| NsError::ufs(&norm, e))?;
        self.ns.invalidate(&norm);
        self.ns.patch_listing(&norm, Some(Attr { kind: Kind::Dir, size: 0, mtime_ns: 0, version: String::new() }));
        Ok(())
    }

    /// Remove an empty directory (ENOTEMPTY while anything, written or
    /// stored, is in it).
    pub fn rmdir(&self, path: &str) -> Result<(), NsError> {
        let (norm, mode) = self.writable(path)?;
        let attr = self.rt.block_on(self.ns.stat(&norm))?;
        if attr.kind != Kind::Dir {
            return Err(refused(libc::ENOTDIR, format!("{norm}: not a directory")));
        }
        // Listed afresh: a file persisted a moment ago is in under storage's listing.
        self.ns.forget_listing(&norm);
        if !self.rt.block_on(self.ns.list(&norm))?.is_empty() {
            return Err(refused(libc::ENOTEMPTY, format!("{norm}: directory not empty")));
        }
        if !mode.persists() {
            return Err(refused(libc::EOPNOTSUPP, format!("{norm}: rmdir on a cache-only mount")));
        }
        let (ufs, rel) = self.ns.mount_of(&norm)?;
        let (ufs, rel) = (ufs.inner().clone(), rel.to_string());
        match self.rt.block_on(async move { ufs.delete_dir(&rel).await }) {
            Ok(()) | Err(crate::ufs::UfsError::NotFound) => {}
            Err(e) => return Err(NsError::ufs(&norm, e)),
        }
        self.ns.invalidate(&norm);
        self.ns.forget_listing(&norm);
        self.ns.patch_listing(&norm, None);
        Ok(())
    }

    /// Wait until every written file at or under `path` is in under
    /// storage, or has failed an attempt made after this call began
    /// (failed files are retried at once rather than after their backoff).
    pub fn sync(&self, path: &str) -> Result<SyncOutcome, NsError> {
        let norm = normalise(path).ok_or_else(|| NsError::Invalid(format!("bad path {path:?}: must start with /")))?;
        let ids: Vec<u64> =
            self.pending.lock().iter().filter(|(_, f)| crate::policy::covers(&norm, &f.path)).map(|(i, _)| *i).collect();
        Ok(self.wait_persisted(&ids, SYNC_WAIT_MAX))
    }

    fn wait_persisted(&self, ids: &[u64], max: Duration) -> SyncOutcome {
        let start: HashMap<u64, u32> = {
            let p = self.pending.lock();
            ids.iter().filter_map(|i| p.get(i).map(|f| (*i, f.attempts))).collect()
        };
        // Failed files are tried again now.
        for (i, _) in start.iter() {
            let retry = self.pending.lock().get(i).is_some_and(|f| f.last_error.is_some() && !f.in_flight);
            if retry {
                let _ = self.queue.send(*i);
            }
        }
        let t0 = Instant::now();
        let mut out = SyncOutcome::default();
        let mut left: Vec<u64> = ids.to_vec();
        loop {
            let p = self.pending.lock();
            left.retain(|i| match (p.get(i), start.get(i)) {
                (None, _) => {
                    out.persisted += 1;
                    false
                }
                (Some(f), Some(a0)) if f.attempts > *a0 && !f.in_flight && f.last_error.is_some() => {
                    out.failed.push((f.path.clone(), f.last_error.clone().unwrap_or_default()));
                    false
                }
                _ => true,
            });
            if left.is_empty() {
                break;
            }
            if t0.elapsed() > max {
                for i in &left {
                    if let Some(f) = p.get(i) {
                        out.failed.push((f.path.clone(), format!("not persisted within {max:?}")));
                    }
                }
                break;
            }
            drop(p);
            std::thread::sleep(Duration::from_millis(20));
        }
        out.failed.sort();
        out
    }
}

/// What a `sync` found.
#[derive(Default, Debug)]
pub struct SyncOutcome {
    pub persisted: u64,
    pub failed: Vec<(String, String)>,
}

impl Pending {
    fn of(r: &Record) -> Pending {
        Pending { path: r.path.clone(), size: r.size, version: r.version.clone(), attempts: 0, last_error: None, in_flight: false }
    }
}

/// The id in a written file's version token (`w{id:x}`).
pub(crate) fn id_of_version(v: &str) -> Option<u64> {
    u64::from_str_radix(v.strip_prefix('w')?, 16).ok()
}
