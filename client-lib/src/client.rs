//! `Client`: the public face of a session with the engine. Reads go
//! through the rings (`op`, `batch`), metadata and cache management through
//! the control connections; both run again on a new session when the
//! engine went away (`reconnect`).

use crate::batch::{Batch, ReadReq};
use crate::error::{Error, Result};
use crate::op::{check_path, AsyncOp, Data, Pipeline, ReadDone};
use crate::options::Options;
use crate::plan::EpochPlan;
use crate::reconnect::{self, lost, Link, Retry, REISSUE_MAX};
use crate::session::{unexpected, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stoker_proto::control::{Attr, DirEntry, EngineStats, PathStats, Request, Response};

/// What a `pin`, `unpin`, `free` or `ttl` applied to: the files under the
/// path and their cached blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub files: u64,
    pub blocks: u64,
}

pub struct Client {
    pub(crate) link: Arc<Link>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.link.current();
        f.debug_struct("Client").field("session", &s.welcome.session).field("shards", &s.welcome.shards).finish()
    }
}

impl Client {
    /// Attach to the engine on `socket` with default options.
    pub fn connect(socket: &str) -> Result<Client> {
        Client::connect_with(socket, Options::default())
    }

    /// Attach to the engine on `socket`; fails at once when it is not there
    /// (only a client that was attached waits for the engine to come back).
    pub fn connect_with(socket: &str, opts: Options) -> Result<Client> {
        let s = Session::connect(socket, opts.clone())?;
        Ok(Client { link: Arc::new(Link::new(socket, opts, s)) })
    }

    /// This process's live session: a new one in a forked child (the
    /// inherited session's Drop only closes this process's copies), or when
    /// the engine went away (waiting for it up to the timeout).
    fn session(&self) -> Result<Arc<Session>> {
        self.link.session_until(Instant::now() + self.link.opts.timeout)
    }

    fn control(&self, req: Request) -> Result<Response> {
        self.link.retrying(|s| s.control(&req))
    }

    /// The engine's id of this process's session.
    pub fn session_id(&self) -> Result<u64> {
        Ok(self.session()?.welcome.session)
    }

    /// Times this client opened a new session because the engine went away.
    pub fn reconnects(&self) -> u64 {
        self.link.reconnects()
    }

    pub fn shards(&self) -> usize {
        self.link.current().welcome.shards as usize
    }

    pub fn block_bytes(&self) -> u64 {
        self.link.current().welcome.block_bytes
    }

    /// Attributes of a file or directory (`/` is the root, `/NAME` a mount).
    pub fn stat(&self, path: &str) -> Result<Attr> {
        match self.control(Request::Stat { path: path.into() })? {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// Entries of a directory, sorted by name.
    pub fn list(&self, path: &str) -> Result<Vec<DirEntry>> {
        match self.control(Request::List { path: path.into() })? {
            Response::Entries { entries } => Ok(entries),
            other => Err(unexpected(other)),
        }
    }

    /// Every file at or under `path` (a file, a directory or a mount), as
    /// entries named by full path, sorted. The engine lists the tree's
    /// directories concurrently; up to 1,000,000 files.
    pub fn walk(&self, path: &str) -> Result<Vec<DirEntry>> {
        match self.control(Request::Walk { path: path.into() })? {
            Response::Entries { entries } => Ok(entries),
            other => Err(unexpected(other)),
        }
    }

    /// Engine-wide and per-shard statistics.
    pub fn engine_stats(&self) -> Result<EngineStats> {
        match self.control(Request::EngineStat)? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Keep the cached blocks of a file or prefix through eviction; the
    /// engine persists pins across restarts.
    pub fn pin(&self, path: &str) -> Result<Applied> {
        self.applied(Request::Pin { path: path.into() })
    }

    /// Undo `pin`.
    pub fn unpin(&self, path: &str) -> Result<Applied> {
        self.applied(Request::Unpin { path: path.into() })
    }

    /// Drop the cached blocks of a file or prefix now.
    pub fn free(&self, path: &str) -> Result<Applied> {
        self.applied(Request::Free { path: path.into() })
    }

    /// Cached blocks under `path` expire `ttl` after they were cached
    /// (whole seconds, at least one); `None` clears the TTL. Persists.
    pub fn ttl(&self, path: &str, ttl: Option<Duration>) -> Result<Applied> {
        if ttl.is_some_and(|d| d.is_zero()) {
            return Err(Error::Invalid("a TTL must be positive (None clears it)".into()));
        }
        self.applied(Request::Ttl { path: path.into(), secs: ttl.map(|d| d.as_secs().max(1)) })
    }

    /// Cached fraction, pin and TTL of a file or prefix.
    pub fn path_stat(&self, path: &str) -> Result<PathStats> {
        match self.control(Request::PathStat { path: path.into() })? {
            Response::PathStats(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Read `len` bytes at `off` of `path` straight from under storage,
    /// bypassing the cache, and return (bytes read, their
    /// `stoker_proto::control::checksum`): what the cached bytes should hash to.
    pub fn ufs_checksum(&self, path: &str, off: u64, len: u64) -> Result<(u64, u64)> {
        match self.control(Request::UfsChecksum { path: path.into(), off, len })? {
            Response::Checksum { len, checksum } => Ok((len, checksum)),
            other => Err(unexpected(other)),
        }
    }

    /// Start writing a new file at `path` (replacing any file there once
    /// closed) on a mount with a write mode; the handle to write and close.
    /// `mode`, `uid` and `gid` are the file's (docs/SEMANTICS.md, "Writes").
    pub fn create(&self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<u64> {
        check_path(path)?;
        match self.control(Request::Create { path: path.into(), mode, uid, gid })? {
            Response::Handle { handle } => Ok(handle),
            other => Err(unexpected(other)),
        }
    }

    /// Append `data` to an open handle; `off` must be the bytes written so
    /// far (writes are sequential: any other offset is EOPNOTSUPP).
    /// The bytes go raw after the request's frame, up to 1 MiB a request.
    pub fn write_at(&self, handle: u64, off: u64, data: &[u8]) -> Result<()> {
        use stoker_proto::control::{write_request, WRITE_BYTES_MAX};
        let mut at = off;
        for chunk in data.chunks(WRITE_BYTES_MAX) {
            let wire = write_request(handle, at, chunk);
            match self.link.retrying(|s| s.control_raw(&wire))? {
                Response::Done { .. } => at += chunk.len() as u64,
                other => return Err(unexpected(other)),
            }
        }
        Ok(())
    }

    /// Close a handle: returns once the file is durable on the engine's
    /// disk (`async`, `cache-only` mounts) or in under storage (`through`),
    /// with its attributes. Readers see it from then on.
    pub fn close_write(&self, handle: u64) -> Result<Attr> {
        match self.control(Request::Close { handle })? {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// Make what an open handle wrote so far durable on the engine's disk
    /// (after a crash the file comes back with these bytes).
    pub fn fsync_write(&self, handle: u64) -> Result<()> {
        match self.control(Request::Fsync { handle })? {
            Response::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Drop an open handle and what it wrote.
    pub fn abort_write(&self, handle: u64) -> Result<()> {
        match self.control(Request::Abort { handle })? {
            Response::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Write a whole file: create, write, close.
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<Attr> {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let h = self.create(path, 0o644, uid, gid)?;
        if let Err(e) = self.write_at(h, 0, data) {
            let _ = self.abort_write(h);
            return Err(e);
        }
        self.close_write(h)
    }

    /// Remove a file on a mount with a write mode (in under storage too,
    /// unless the mount is cache-only).
    pub fn unlink(&self, path: &str) -> Result<()> {
        check_path(path)?;
        match self.control(Request::Unlink { path: path.into() })? {
            Response::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Rename a file within one mount on a mount with a write mode
    /// (replacing `to`; directories are not renamed).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        check_path(from)?;
        check_path(to)?;
        match self.control(Request::Rename { from: from.into(), to: to.into() })? {
            Response::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Make a directory on a mount with a write mode (in under storage at once).
    pub fn mkdir(&self, path: &str) -> Result<()> {
        check_path(path)?;
        match self.control(Request::Mkdir { path: path.into() })? {
            Response::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Remove an empty directory on a mount with a write mode.
    pub fn rmdir(&self, path: &str) -> Result<()> {
        check_path(path)?;
        match self.control(Request::Rmdir { path: path.into() })? {
            Response::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Wait until every written file at or under `path` is in under
    /// storage. Returns the files persisted while waiting and those that
    /// failed (path, last error); failed ones stay in the cache, retried.
    pub fn sync(&self, path: &str) -> Result<(u64, Vec<(String, String)>)> {
        check_path(path)?;
        match self.control(Request::Sync { path: path.into() })? {
            Response::Synced { persisted, failed } => Ok((persisted, failed)),
            other => Err(unexpected(other)),
        }
    }

    fn applied(&self, req: Request) -> Result<Applied> {
        match self.control(req)? {
            Response::Done { files, blocks } => Ok(Applied { files, blocks }),
            other => Err(unexpected(other)),
        }
    }

    /// Read `len` bytes at `off`; shorter at the end of the file.
    pub fn read(&self, path: &str, off: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        let n = self.read_into(path, off, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Read a whole file.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        if let Some(v) = self.direct_whole(path) {
            return Ok(v);
        }
        self.read_batch(vec![ReadReq::file(path)]).next().expect("one answer").1.map(Data::into_vec)
    }

    /// A cached single-block file read straight from its segment file into
    /// the answer (one copy, no slot). None when it is not a direct hit, or
    /// while an epoch plan is set (its prefetches ride on whole-file reads
    /// through the area).
    fn direct_whole(&self, path: &str) -> Option<Vec<u8>> {
        if check_path(path).is_err() || self.link.plan.lock().is_some() {
            return None;
        }
        let s = self.session().ok()?;
        let mut out = Vec::new();
        s.direct_with(path, 0, 0, true, &mut |b| out.extend_from_slice(b))?;
        Some(out)
    }

    /// Read into `buf` at `off`; returns the bytes read (short at EOF).
    pub fn read_into(&self, path: &str, off: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_at(path, off, buf).map(|(n, _)| n)
    }

    /// Read `len` bytes at `off` without waiting: `done` gets the bytes (in
    /// place in shared memory, valid during the call; short at end of
    /// object) or the error, on the client's completion thread, so it must
    /// be quick and must not wait on this client. Waits only for space in
    /// the shared area and a ring entry. A range that needs more than one
    /// slot is read synchronously and handed over from a copy. A read the
    /// engine has not answered within the client's timeout gets ETIMEDOUT
    /// (checked once a second; its slot stays reserved until the engine
    /// answers, so a late answer lands nowhere). A read whose engine goes
    /// away is issued again on a new session once the engine is back (from
    /// another thread; `done` then runs there), or gets the connection
    /// error if it is not back within the timeout.
    pub fn read_async(&self, path: &str, off: u64, len: u64, done: ReadDone) {
        if let Err(e) = check_path(path) {
            return done(Err(e));
        }
        self.read_async_try(Arc::from(path), off, len, done, 0);
    }

    /// `read_async`, issued for the `tries`-th time.
    pub(crate) fn read_async_try(&self, path: Arc<str>, off: u64, len: u64, done: ReadDone, tries: u32) {
        let cur = self.link.current();
        let s = if cur.pid == std::process::id() && cur.is_dead() {
            // Never wait for the engine here: park it with the link.
            return self.park_or_fail(path, off, len, done, tries, reconnect::gave_up());
        } else if cur.pid == std::process::id() {
            cur
        } else {
            match self.session() {
                Ok(s) => s,
                Err(e) => return done(Err(e)),
            }
        };
        if s.op_ranges(&path, off, len).len() > 1 {
            return match self.read(&path, off, len) {
                Ok(v) => done(Ok(&v)),
                Err(e) => done(Err(e)),
            };
        }
        // A direct hit is answered here, straight from the read buffer.
        let mut done = Some(done);
        let direct = s.direct_with(&path, off, len, false, &mut |b| {
            if let Some(d) = done.take() {
                d(Ok(b))
            }
        });
        if direct.is_some() {
            return;
        }
        let done = done.expect("a read that was not a direct hit never called its sink");
        // The callback holds the link weakly: a dropped client issues nothing again.
        let link = Arc::downgrade(&self.link);
        let p = path.clone();
        let wrapped: ReadDone = Box::new(move |r| match r {
            Err(e) if lost(&e) => match link.upgrade() {
                Some(link) => Client { link }.park_or_fail(p, off, len, done, tries, e),
                None => done(Err(e)),
            },
            r => done(r),
        });
        AsyncOp::start(&s, &path, off, len, wrapped);
    }

    /// Keep a read that lost its engine for a new session, or fail it with
    /// `e` once it was issued again `REISSUE_MAX` times.
    fn park_or_fail(&self, path: Arc<str>, off: u64, len: u64, done: ReadDone, tries: u32, e: Error) {
        if tries >= REISSUE_MAX || !self.link.opts.reconnect {
            return done(Err(e));
        }
        let deadline = Instant::now() + self.link.opts.timeout;
        self.link.park(Retry { path, off, len, done, deadline, tries: tries + 1 });
    }

    /// Read `len` bytes at `off` and hand them to `f` in place in shared
    /// memory (one copy fewer than `read`). Ranges too large for one slot
    /// (or oddly cut) are handed over from a copy.
    pub fn read_with<R>(&self, path: &str, off: u64, len: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        check_path(path)?;
        let p: Arc<str> = Arc::from(path);
        // None: the range is read as a copy instead.
        let got = self.link.retrying(|s| {
            if s.op_ranges(path, off, len).len() > 1 {
                return Ok(None);
            }
            let mut pipe = Pipeline::new(s.clone());
            if pipe.submit(0, &p, off, len, 0)? != Some(len) {
                // Only a prefix fitted (the area is fragmented by held views).
                return Ok(None);
            }
            let (_, op) = pipe.next_done().expect("one op in flight")?;
            match op.err {
                Some(e) => Err(e),
                None => Ok(Some((s.clone(), op))),
            }
        })?;
        match got {
            Some((s, op)) => Ok(f(s.op_bytes(&op))),
            None => Ok(f(&self.read(path, off, len)?)),
        }
    }

    /// Post many reads at once; answers come in completion order as views
    /// into shared memory (released on drop) or copies when views already
    /// hold half the area.
    pub fn read_batch(&self, reqs: Vec<ReadReq>) -> Batch {
        self.batch(reqs, false)
    }

    /// As `read_batch`, but every answer is a copy (the area is free again
    /// as soon as each answer is handed out).
    pub fn read_batch_copied(&self, reqs: Vec<ReadReq>) -> Batch {
        self.batch(reqs, true)
    }

    fn batch(&self, reqs: Vec<ReadReq>, copy: bool) -> Batch {
        match self.session() {
            Ok(s) => {
                let plan = self.link.plan.lock().clone();
                Batch::new(self.link.clone(), s, reqs, copy, plan)
            }
            Err(e) => {
                // Every request fails with the connection error.
                let mut b = Batch::new(self.link.clone(), self.link.current(), reqs, copy, None);
                b.fail_all(e);
                b
            }
        }
    }

    /// Whole files, in the order given; the first failure fails the call.
    pub fn read_many<S: AsRef<str>>(&self, paths: &[S]) -> Result<Vec<Data>> {
        let reqs = paths.iter().map(|p| ReadReq::file(p.as_ref())).collect();
        self.read_batch(reqs).collect_ordered().into_iter().collect()
    }

    /// Make sure every block of `path` is cached, copying nothing back.
    /// Returns the file's size.
    pub fn prefetch(&self, path: &str, size: u64) -> Result<u64> {
        self.prefetch_range(path, 0, size.max(1))
    }

    pub(crate) fn prefetch_range(&self, path: &str, off: u64, len: u64) -> Result<u64> {
        check_path(path)?;
        self.link.retrying(|s| prefetch_on(s, path, off, len))
    }

    /// Read `buf.len()` bytes at `off`, every slot-sized range posted as
    /// the area allows. Returns (bytes read, object size).
    fn read_at(&self, path: &str, off: u64, buf: &mut [u8]) -> Result<(usize, u64)> {
        check_path(path)?;
        self.link.retrying(|s| {
            let direct = s.direct_with(path, off, buf.len() as u64, false, &mut |b| buf[..b.len()].copy_from_slice(b));
            match direct {
                Some((n, size)) => Ok((n as usize, size)),
                None => read_on(s, path, off, buf),
            }
        })
    }

    /// Hand over the order this process will read whole files in: from now
    /// on each whole-file read (`read_file`, `read_many`, whole-file batch
    /// entries) of a planned path keeps up to `window` later paths being
    /// fetched into the engine's cache, in plan order (see [`EpochPlan`]).
    /// Replaces any earlier plan. A new session (after a fork, or when the
    /// engine went away) drops the plan: hand it over again.
    pub fn plan_epoch<S: AsRef<str>>(&self, paths: &[S], window: usize) -> Result<Arc<EpochPlan>> {
        let plan = Arc::new(EpochPlan::new(self.session()?, paths, window)?);
        *self.link.plan.lock() = Some(plan.clone());
        Ok(plan)
    }

    /// Forget the epoch plan (prefetches already posted still complete).
    pub fn clear_plan(&self) {
        *self.link.plan.lock() = None;
    }
}

/// Cache every block of `[off, off + len)` of `path` on session `s`.
fn prefetch_on(s: &Arc<Session>, path: &str, off: u64, len: u64) -> Result<u64> {
    let bs = s.welcome.block_bytes_for(path);
    let p: Arc<str> = Arc::from(path);
    let mut pipe = Pipeline::new(s.clone());
    let blocks: Vec<u64> = (off / bs..=(off + len.max(1) - 1) / bs).collect();
    let mut next = 0;
    let mut size = 0;
    let mut err = None;
    loop {
        // Whole blocks: a prefetch caches what a read of the block would.
        // The slot holds only the path: nothing is copied back.
        while next < blocks.len() {
            match pipe.submit_no_data(&p, blocks[next] * bs, s.chunk_bytes_for(path)) {
                Ok(true) => next += 1,
                Ok(false) => break,
                Err(e) => {
                    err.get_or_insert(e);
                    next = blocks.len();
                }
            }
        }
        match pipe.next_done() {
            None => break,
            Some(Ok((_, op))) => match op.err {
                Some(e) => {
                    err.get_or_insert(e);
                }
                None => size = op.size,
            },
            Some(Err(e)) => return Err(e),
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(size),
    }
}

/// `Client::read_at` on session `s`.
fn read_on(s: &Arc<Session>, path: &str, off: u64, buf: &mut [u8]) -> Result<(usize, u64)> {
    let p: Arc<str> = Arc::from(path);
    let mut ranges: std::collections::VecDeque<(u64, u64)> = s.op_ranges(path, off, buf.len() as u64).into();
    let mut pipe = Pipeline::new(s.clone());
    let mut short_at: Option<u64> = None;
    let mut size = 0;
    let mut err = None;
    loop {
        while let (Some(&(roff, rlen)), None) = (ranges.front(), &err) {
            match pipe.submit(0, &p, roff, rlen, 0) {
                Ok(Some(n)) if n >= rlen => {
                    ranges.pop_front();
                }
                Ok(Some(n)) => ranges[0] = (roff + n, rlen - n),
                Ok(None) => break,
                Err(e) => err = Some(e),
            }
        }
        match pipe.next_done() {
            None => break,
            Some(Ok((_, op))) => {
                if let Some(e) = &op.err {
                    err.get_or_insert(e.clone());
                    continue;
                }
                let bytes = s.op_bytes(&op);
                let at = (op.off - off) as usize;
                buf[at..at + bytes.len()].copy_from_slice(bytes);
                size = op.size;
                if (bytes.len() as u64) < op.len {
                    let end = op.off + bytes.len() as u64;
                    short_at = Some(short_at.map_or(end, |x| x.min(end)));
                }
            }
            Some(Err(e)) => return Err(e),
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    let n = short_at.map_or(buf.len() as u64, |end| end - off);
    Ok((n as usize, size))
}
