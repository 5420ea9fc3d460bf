//! Writes through the mount, on an engine mount with a write mode
//! (`FsConfig::writable`): create, sequential write, flush/release (=
//! close: the engine acknowledges once the file is durable), fsync,
//! truncate to 0 (O_TRUNC, or truncate(2) to 0), unlink, utimens (accepted,
//! ignored), chmod of what was created here, mkdir, rmdir and rename of a
//! file. Refused with EOPNOTSUPP: a write at any offset but the end of what
//! was written, an open for writing of a non-empty file without O_TRUNC (a
//! random overwrite or an append), truncation to another size, chown,
//! chmod of what under storage holds, rename of a directory, link
//! (docs/SEMANTICS.md, "Writes").

use super::{join, parent_of, Entry, Listing, Opened, StokerFs};
use crate::backend::Backend;
use crate::error::{FsError, Result};
use parking_lot::Mutex;
use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use stoker_client::Kind;
use stoker_proto::control::{Attr, DirEntry};

/// One file open for writing.
pub struct Writer {
    path: Arc<str>,
    ino: u64,
    /// The engine's write handle; None once closed (by a flush: a write
    /// after it on the same open file reopens, see `reopen`).
    handle: Option<u64>,
    written: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn unsupported(path: &str, why: &str) -> FsError {
    FsError::backend(path, stoker_client::Error::new(libc::EOPNOTSUPP, format!("{path}: {why}")))
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl<B: Backend> StokerFs<B> {
    fn check_writable(&self, op: &'static str, ino: u64, name: Option<&OsStr>) -> Result<()> {
        if self.cfg.writable {
            Ok(())
        } else {
            Err(self.refuse(op, ino, name))
        }
    }

    /// Put `attr` for `path` into its directory's cached listing, or take it
    /// out (None): a lookup after a write costs no new listing.
    fn patch_listing(&self, path: &str, attr: Option<Attr>) {
        let dir = parent_of(path);
        let name = &path[dir.len() + usize::from(dir != "/")..];
        let ino = self.inodes.ino_of(dir);
        let mut g = self.listings.lock();
        let Some(l) = g.get(&ino) else { return };
        let mut entries: Vec<DirEntry> = l.entries.iter().filter(|e| e.name != name).cloned().collect();
        if let Some(a) = attr {
            let at = entries.partition_point(|e| e.name.as_str() < name);
            entries.insert(at, DirEntry { name: name.to_string(), attr: a });
        }
        let before = l.entries.len() as u64;
        let after = entries.len() as u64;
        let patched = Listing {
            dir_ino: l.dir_ino,
            parent_ino: l.parent_ino,
            dir_path: l.dir_path.clone(),
            dir_attr: l.dir_attr.clone(),
            entries,
            fresh_until: l.fresh_until,
        };
        g.insert(ino, Arc::new(patched));
        self.listing_entries.fetch_add(after, Ordering::Relaxed);
        self.listing_entries.fetch_sub(before, Ordering::Relaxed);
    }

    fn new_writer(&self, path: Arc<str>, ino: u64, mode: u32, uid: u32, gid: u32) -> Result<u64> {
        let handle = self.backend.create(&path, mode, uid, gid).map_err(|e| FsError::backend(&path, e))?;
        self.owners.write().insert(path.to_string(), (mode & 0o7777, uid, gid));
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.writers.lock().insert(fh, Arc::new(Mutex::new(Writer { path, ino, handle: Some(handle), written: 0, mode, uid, gid })));
        Ok(fh)
    }

    /// Create `name` in `parent` and open it for writing (one kernel
    /// reference, as a lookup). The file appears to readers at close.
    pub fn create(&self, parent: u64, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<(Entry, u64)> {
        self.check_writable("create", parent, Some(name))?;
        let p = self.node(parent)?;
        if p.attr.kind != Kind::Dir {
            return Err(FsError::NotDir { path: p.path.to_string() });
        }
        let name = self.child_name(&p, name)?;
        let path = join(&p.path, name);
        let attr = Attr { kind: Kind::File, size: 0, mtime_ns: now_ns(), version: String::new() };
        let ino = self.inodes.remember(&path, attr.clone(), self.deadline());
        self.patch_listing(&path, Some(attr.clone()));
        let fh = match self.new_writer(Arc::from(path.as_str()), ino, mode, uid, gid) {
            Ok(fh) => fh,
            Err(e) => {
                self.inodes.forget(ino, 1);
                return Err(e);
            }
        };
        Ok((Entry { ino, attr }, fh))
    }

    /// Open an existing file for writing: only to rewrite it whole (O_TRUNC,
    /// or a file that is empty).
    pub(super) fn open_for_write(&self, ino: u64, flags: i32, uid: u32, gid: u32) -> Result<Opened> {
        let e = self.getattr(ino)?;
        let path = self.inodes.path(ino).ok_or(FsError::StaleInode(ino))?;
        if e.attr.kind == Kind::Dir {
            return Err(FsError::IsDir { path: path.to_string() });
        }
        if flags & libc::O_TRUNC == 0 && e.attr.size > 0 {
            return Err(unsupported(&path, "files are written whole: open a non-empty file for writing with O_TRUNC"));
        }
        let mode = self.owners.read().get(&*path).map_or(0o644, |o| o.0);
        let fh = self.new_writer(path, ino, mode, uid, gid)?;
        let attr = Attr { kind: Kind::File, size: 0, mtime_ns: now_ns(), version: String::new() };
        self.inodes.refresh(ino, attr, self.deadline());
        Ok(Opened { fh, keep_cache: false })
    }

    fn writer(&self, fh: u64) -> Option<Arc<Mutex<Writer>>> {
        self.writers.lock().get(&fh).cloned()
    }

    /// Append `data` at `off`, which must be where the file's writing is.
    pub fn write(&self, ino: u64, fh: u64, off: u64, data: &[u8]) -> Result<u32> {
        let Some(w) = self.writer(fh) else {
            return Err(self.refuse_or_badf("write", ino, fh));
        };
        let mut w = w.lock();
        if off != w.written {
            return Err(unsupported(
                &w.path,
                &format!("writes must be sequential: this file is at {} bytes, the write is at {off}", w.written),
            ));
        }
        let h = match w.handle {
            Some(h) => h,
            None => self.reopen(&mut w)?,
        };
        self.backend.write_at(h, off, data).map_err(|e| FsError::backend(&w.path, e))?;
        w.written += data.len() as u64;
        let attr = Attr { kind: Kind::File, size: w.written, mtime_ns: now_ns(), version: String::new() };
        self.inodes.refresh(w.ino, attr, self.deadline());
        Ok(data.len() as u32)
    }

    /// A write on an open file a flush has closed: a close(2) of one of
    /// several descriptors of it (`sh -c 'echo x > f'` dups the file onto
    /// stdout and closes the original before writing). The file is written
    /// anew under a new handle, starting with the bytes closed so far.
    fn reopen(&self, w: &mut Writer) -> Result<u64> {
        let h = self.backend.create(&w.path, w.mode, w.uid, w.gid).map_err(|e| FsError::backend(&w.path, e))?;
        let mut buf = vec![0u8; (w.written as usize).min(1 << 20)];
        let mut off = 0u64;
        while off < w.written {
            let want = ((w.written - off) as usize).min(buf.len());
            let copied = self.backend.read_into(&w.path, off, &mut buf[..want]).and_then(|n| {
                if n == 0 {
                    return Err(stoker_client::Error::new(libc::EIO, format!("{}: changed while open for writing", w.path)));
                }
                self.backend.write_at(h, off, &buf[..n]).map(|()| n)
            });
            match copied {
                Ok(n) => off += n as u64,
                Err(e) => {
                    let _ = self.backend.abort_write(h);
                    return Err(FsError::backend(&w.path, e));
                }
            }
        }
        w.handle = Some(h);
        Ok(h)
    }

    fn refuse_or_badf(&self, op: &'static str, ino: u64, fh: u64) -> FsError {
        if self.cfg.writable {
            FsError::BadHandle(fh)
        } else {
            self.refuse(op, ino, None)
        }
    }

    /// Close a writer: the engine answers once the file is durable (or in
    /// under storage, `through`). Later calls on the handle see it closed.
    fn close_writer(&self, w: &mut Writer) -> Result<()> {
        let Some(h) = w.handle.take() else { return Ok(()) };
        let attr = self.backend.close_write(h).map_err(|e| FsError::backend(&w.path, e))?;
        self.inodes.refresh(w.ino, attr.clone(), self.deadline());
        self.patch_listing(&w.path, Some(attr));
        Ok(())
    }

    /// flush (every close(2) of a descriptor): closes a writer, so close(2)
    /// returns once the file is durable, with the error if it is not.
    pub fn flush(&self, fh: u64) -> Result<()> {
        match self.writer(fh) {
            Some(w) => self.close_writer(&mut w.lock()),
            None => Ok(()),
        }
    }

    /// The last reference to a handle went: a writer not closed by a flush
    /// is closed now (its error has no one to go to but the log).
    pub(super) fn release_writer(&self, fh: u64) {
        let Some(w) = self.writers.lock().remove(&fh) else { return };
        let mut w = w.lock();
        if let Err(e) = self.close_writer(&mut w) {
            tracing::warn!("closing {} at release: {e}", w.path);
        }
    }

    /// fsync: a writer's bytes so far are made durable on the engine.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        let Some(w) = self.writer(fh) else { return Ok(()) };
        let w = w.lock();
        match w.handle {
            Some(h) => self.backend.fsync_write(h).map_err(|e| FsError::backend(&w.path, e)),
            None => Ok(()),
        }
    }

    /// setattr: truncation to 0 (rewrites the file empty) or to its size;
    /// chmod of a file or directory created through this mount (its mode
    /// lives here, for the mount's life: under storage keeps no modes);
    /// times (accepted, ignored: a written file's mtime is its close).
    /// chown (to anyone else), and chmod of what under storage holds, are
    /// EOPNOTSUPP.
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(&self, ino: u64, fh: Option<u64>, size: Option<u64>, mode: Option<u32>, chown: bool, uid: u32, gid: u32) -> Result<Entry> {
        self.check_writable("setattr (chmod/chown/truncate/utimes)", ino, None)?;
        let path = self.inodes.path(ino).ok_or(FsError::StaleInode(ino))?;
        if chown {
            return Err(unsupported(&path, "chown is not supported"));
        }
        if let Some(mode) = mode {
            // With allow_other the kernel has checked that the caller owns it.
            let mut owners = self.owners.write();
            match owners.get_mut(&*path) {
                Some(o) => o.0 = mode & 0o7777,
                None => return Err(unsupported(&path, "chmod works on what was created through this mount only")),
            }
        }
        if let Some(size) = size {
            let writer = fh.and_then(|fh| self.writer(fh));
            match writer {
                Some(w) => {
                    let w = w.lock();
                    if size != w.written {
                        return Err(unsupported(&path, "a file being written can only be truncated to its size"));
                    }
                }
                None => {
                    let cur = self.getattr(ino)?;
                    if cur.attr.kind == Kind::Dir {
                        return Err(FsError::IsDir { path: path.to_string() });
                    }
                    if size != cur.attr.size {
                        if size != 0 {
                            return Err(unsupported(&path, "files can only be truncated to 0"));
                        }
                        // truncate(2) to 0: the file is rewritten empty.
                        let mode = self.owners.read().get(&*path).map_or(0o644, |o| o.0);
                        let fh = self.new_writer(path.clone(), ino, mode, uid, gid)?;
                        let res = self.flush(fh);
                        self.writers.lock().remove(&fh);
                        res?;
                    }
                }
            }
        }
        let n = self.node(ino)?;
        Ok(Entry { ino, attr: n.attr })
    }

    /// The path of `name` in directory `parent`, for a write-type `op`
    /// (EROFS on a read-only mount).
    fn writable_child(&self, op: &'static str, parent: u64, name: &OsStr) -> Result<String> {
        self.check_writable(op, parent, Some(name))?;
        let p = self.node(parent)?;
        let name = self.child_name(&p, name)?;
        Ok(join(&p.path, name))
    }

    /// Remove `name` from `parent` (and from under storage).
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let path = self.writable_child("unlink", parent, name)?;
        self.backend.unlink(&path).map_err(|e| FsError::backend(&path, e))?;
        self.owners.write().remove(&path);
        self.patch_listing(&path, None);
        Ok(())
    }

    /// Make directory `name` in `parent` (one kernel reference).
    /// The directory carries its creator's `mode`, `uid` and `gid` here.
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<Entry> {
        let path = self.writable_child("mkdir", parent, name)?;
        self.backend.mkdir(&path).map_err(|e| FsError::backend(&path, e))?;
        self.owners.write().insert(path.clone(), (mode & 0o7777, uid, gid));
        let attr = Attr { kind: Kind::Dir, size: 0, mtime_ns: now_ns(), version: String::new() };
        let ino = self.inodes.remember(&path, attr.clone(), self.deadline());
        self.patch_listing(&path, Some(attr.clone()));
        Ok(Entry { ino, attr })
    }

    /// Remove the empty directory `name` from `parent`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let path = self.writable_child("rmdir", parent, name)?;
        self.backend.rmdir(&path).map_err(|e| FsError::backend(&path, e))?;
        self.owners.write().remove(&path);
        self.patch_listing(&path, None);
        Ok(())
    }

    /// Rename file `name` in `parent` to `newname` in `newparent` (plain
    /// rename only: RENAME_NOREPLACE and RENAME_EXCHANGE are EINVAL).
    pub fn rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> Result<()> {
        self.check_writable("rename", parent, Some(name))?;
        let p = self.node(parent)?;
        let np = self.node(newparent)?;
        let name = self.child_name(&p, name)?;
        let newname = self.child_name(&np, newname)?;
        let (from, to) = (join(&p.path, name), join(&np.path, newname));
        if flags != 0 {
            return Err(FsError::backend(&from, stoker_client::Error::new(libc::EINVAL, format!("{from}: rename flags {flags:#x} are not supported"))));
        }
        self.backend.rename(&from, &to).map_err(|e| FsError::backend(&from, e))?;
        let attr = self.backend.stat(&to).map_err(|e| FsError::backend(&to, e))?;
        {
            let mut owners = self.owners.write();
            if let Some(o) = owners.remove(&from) {
                owners.insert(to.clone(), o);
            }
        }
        self.patch_listing(&from, None);
        self.patch_listing(&to, Some(attr.clone()));
        self.inodes.rename(&from, &to);
        let ino = self.inodes.ino_of(&to);
        self.inodes.refresh(ino, attr, self.deadline());
        Ok(())
    }

    /// A write-type operation this mount does not do, even when writable.
    pub fn unsupported_write(&self, op: &'static str, ino: u64, name: Option<&OsStr>) -> FsError {
        if !self.cfg.writable {
            return self.refuse(op, ino, name);
        }
        let base = self.inodes.path(ino).map(|p| p.to_string()).unwrap_or_default();
        let path = match name {
            Some(n) => join(&base, &n.to_string_lossy()),
            None => base,
        };
        unsupported(&path, &format!("{op} is not supported (docs/SEMANTICS.md, \"Writes\")"))
    }

    /// Mode, uid and gid of a file written through this mount (None: the
    /// mount's defaults).
    pub fn owner_of(&self, ino: u64) -> Option<(u32, u32, u32)> {
        let owners = self.owners.read();
        if owners.is_empty() {
            return None;
        }
        let path = self.inodes.path(ino)?;
        owners.get(&*path).copied()
    }
}
