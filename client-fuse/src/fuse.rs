//! The fuser adapter: one kernel request -> one [`StokerFs`] call -> one reply.
//!
//! No filesystem logic lives here. This is the only place an [`FsError`]
//! becomes an errno; failures are logged here (unexpected ones at warn level,
//! naming the path and cause) and counted, and read-side requests are timed
//! into the hook given to [`set_op_hook`]. Write-type operations are all
//! answered with EROFS through [`StokerFs::refuse`] (on the `ro` mount the
//! kernel refuses most of them before they get here).
//!
//! Round trips that carry no information for a read-only file are switched
//! off at the kernel (fs/fuse/file.c):
//! - FLUSH is answered ENOSYS: `fuse_flush` then sets `no_flush` on the
//!   connection and returns 0 without asking again; opens also carry
//!   FOPEN_NOFLUSH, which makes kernels from 5.16 skip it per file.
//! - With `KernelTuning::no_open` and a kernel offering FUSE_NO_OPEN_SUPPORT,
//!   the first file open is answered ENOSYS: `fuse_file_open` then sets
//!   `no_open`, sends no OPEN and no RELEASE for any later file of the
//!   connection, gives every file `FOPEN_KEEP_CACHE`, and reads carry fh 0
//!   ([`NO_HANDLE`](crate::fs::NO_HANDLE)), so [`StokerFs::read`] finds the
//!   file by inode.
//!   FUSE_AUTO_INVAL_DATA keeps a changed file from being served from stale
//!   pages: the kernel drops them when fresh attributes show a new size or
//!   mtime (docs/SEMANTICS.md, "Metadata and caching").

use crate::attr::{file_type, to_file_attr};
use crate::backend::Backend;
use crate::error::FsError;
use crate::fs::StokerFs;
use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Told the latency of every timed request: (op name, kernel request to reply).
pub type OpHook = fn(&'static str, Duration);

static OP_HOOK: OnceLock<OpHook> = OnceLock::new();

/// Time FUSE requests into `hook` (process-wide; e.g. the engine's metrics).
/// Only the first call takes effect; returns whether this one did.
pub fn set_op_hook(hook: OpHook) -> bool {
    OP_HOOK.set(hook).is_ok()
}

/// Reports its op's latency to the hook when dropped, after the reply.
pub(crate) struct Timed {
    op: &'static str,
    start: Option<Instant>,
}

pub(crate) fn timed(op: &'static str) -> Timed {
    // No clock read when nobody listens.
    Timed { op, start: OP_HOOK.get().map(|_| Instant::now()) }
}

impl Drop for Timed {
    fn drop(&mut self) {
        if let (Some(hook), Some(start)) = (OP_HOOK.get(), self.start) {
            hook(self.op, start.elapsed());
        }
    }
}

/// Kernel-side tuning the adapter applies at `init`.
#[derive(Clone, Copy, Debug)]
pub struct KernelTuning {
    /// Largest readahead asked of the kernel (it may cap it lower; see
    /// `session::set_bdi_readahead` for raising the cap after mount).
    pub readahead_bytes: u32,
    /// Background requests (readahead, async reads) in flight.
    pub max_background: u16,
    /// Skip FUSE open and release for files when the kernel supports it
    /// (FUSE_NO_OPEN_SUPPORT). Off = one open and one release per file, with
    /// the page cache kept or dropped at each open by the version token.
    pub no_open: bool,
    /// Ask for FUSE over io_uring (`crate::uring`); max_write is then
    /// [`uring::PAYLOAD_BYTES`](crate::uring::PAYLOAD_BYTES).
    pub uring: bool,
}

/// What `init` agreed with the kernel, for the session to act on after the
/// handshake.
#[derive(Debug, Default)]
pub struct Negotiated {
    pub uring: std::sync::atomic::AtomicBool,
    pub no_open: std::sync::atomic::AtomicBool,
}

pub struct FuseFs<B: Backend> {
    fs: Arc<StokerFs<B>>,
    ttl: Duration,
    tuning: KernelTuning,
    /// Asked for and offered by the kernel at init: answer file opens ENOSYS.
    no_open: bool,
    negotiated: Arc<Negotiated>,
}

/// The errno a failure is answered with; unexpected failures are logged at
/// warn level (naming the path and cause) and counted.
fn errno_of<B: Backend>(fs: &StokerFs<B>, op: &str, e: FsError) -> Errno {
    Errno::from_i32(errno_code(fs, op, e))
}

/// [`errno_of`] as a plain number (the io_uring front end's replies).
pub(crate) fn errno_code<B: Backend>(fs: &StokerFs<B>, op: &str, e: FsError) -> i32 {
    if !e.is_expected() && e.errno() != libc::EROFS {
        fs.counters.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(op, errno = e.errno(), "{e}");
    } else {
        tracing::debug!(op, errno = e.errno(), "{e}");
    }
    e.errno()
}

/// The kernel's view of `ino` (mode, owner, size, times).
pub(crate) fn kernel_attr<B: Backend>(fs: &StokerFs<B>, ino: u64, a: &stoker_proto::control::Attr) -> fuser::FileAttr {
    let mut fa = to_file_attr(ino, a, &fs.config().owner);
    if fs.config().writable {
        // Writable: owner-writable, and a file written here carries its
        // writer's mode, uid and gid.
        fa.perm |= 0o200;
        if a.kind == stoker_client::Kind::Dir && fs.config().shared {
            fa.perm = 0o1777;
        }
        if let Some((mode, uid, gid)) = fs.owner_of(ino) {
            fa.perm = mode as u16;
            fa.uid = uid;
            fa.gid = gid;
        }
    }
    fa
}

impl<B: Backend> FuseFs<B> {
    pub fn new(fs: Arc<StokerFs<B>>, tuning: KernelTuning) -> FuseFs<B> {
        Self::with_negotiated(fs, tuning, Arc::default())
    }

    /// As `new`, telling `negotiated` what `init` agreed.
    pub fn with_negotiated(fs: Arc<StokerFs<B>>, tuning: KernelTuning, negotiated: Arc<Negotiated>) -> FuseFs<B> {
        let ttl = fs.config().metadata_ttl;
        FuseFs { fs, ttl, tuning, no_open: false, negotiated }
    }

    fn errno(&self, op: &str, e: FsError) -> Errno {
        errno_of(&self.fs, op, e)
    }

    fn attr(&self, ino: u64, a: &stoker_proto::control::Attr) -> fuser::FileAttr {
        kernel_attr(&self.fs, ino, a)
    }
}


/// Largest read served in one call; the kernel never asks for more than
/// max_pages (<= 16 MiB), this only bounds a corrupt request.
const READ_BYTES_MAX: usize = 32 << 20;

impl<B: Backend> Filesystem for FuseFs<B> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_readahead(self.tuning.readahead_bytes) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(self.tuning.max_background);
        let _ = config.set_congestion_threshold(self.tuning.max_background / 4 * 3);
        // Lookups in one directory run in parallel; readdirplus fills the
        // kernel's entry and attr caches while listing.
        // AUTO_INVAL_DATA: fresh attributes with a new mtime drop the file's
        // cached pages (a new size always does), which is what keeps pages
        // honest when no open is sent to decide FOPEN_KEEP_CACHE.
        let mut want = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        if self.tuning.no_open {
            want |= InitFlags::FUSE_NO_OPEN_SUPPORT;
        }
        if self.tuning.uring {
            want |= InitFlags::FUSE_OVER_IO_URING;
            // The ring's payload buffers hold max_write bytes.
            let _ = config.set_max_write(crate::uring::PAYLOAD_BYTES);
        }
        if self.fs.config().writable {
            // open(O_TRUNC) arrives as one open with O_TRUNC (the rewrite of
            // a whole file), not as an open plus a truncating setattr.
            want |= InitFlags::FUSE_ATOMIC_O_TRUNC;
        }
        let have = config.capabilities() & want;
        if let Err(missing) = config.add_capabilities(have) {
            tracing::debug!(?missing, "kernel lacks some FUSE capabilities");
        }
        // Without the capability an ENOSYS open would fail the open(2).
        self.no_open = have.contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.negotiated.no_open.store(self.no_open, Ordering::Relaxed);
        self.negotiated.uring.store(have.contains(InitFlags::FUSE_OVER_IO_URING), Ordering::Relaxed);
        if self.tuning.no_open && !self.no_open {
            tracing::info!("kernel lacks FUSE_NO_OPEN_SUPPORT: files get FUSE open and release");
        }
        tracing::debug!(abi = ?config.kernel_abi(), no_open = self.no_open, "FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = timed("lookup");
        match self.fs.lookup(parent.0, name) {
            Ok(e) => reply.entry(&self.ttl, &self.attr(e.ino, &e.attr), Generation(0)),
            Err(e) => reply.error(self.errno("lookup", e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _t = timed("forget");
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = timed("getattr");
        match self.fs.getattr(ino.0) {
            Ok(e) => reply.attr(&self.ttl, &self.attr(e.ino, &e.attr)),
            Err(e) => reply.error(self.errno("getattr", e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = timed("open");
        if self.no_open {
            // ENOSYS here means "succeeded, and send no more opens or
            // releases" to a kernel that offered FUSE_NO_OPEN_SUPPORT.
            match self.fs.open_without_handle(ino.0, flags.0) {
                Ok(()) => reply.error(Errno::ENOSYS),
                Err(e) => reply.error(self.errno("open", e)),
            }
            return;
        }
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.fs.open_as(ino.0, flags.0, req.uid(), req.gid()) {
            Ok(o) => {
                // A writer's close(2) must reach us (FLUSH closes it durably).
                let mut f = if writing { FopenFlags::empty() } else { FopenFlags::FOPEN_NOFLUSH };
                if o.keep_cache {
                    f |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(FileHandle(o.fh), f)
            }
            Err(e) => reply.error(self.errno("open", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let t = timed("read");
        let size = (size as usize).min(READ_BYTES_MAX);
        // Answered from wherever the bytes arrive (the client's completion
        // thread, straight from shared memory): this session thread goes
        // back to the kernel at once, so reads in flight are not capped by
        // the thread count and a warm read costs one thread hand-off fewer.
        let fs = self.fs.clone();
        self.fs.read_async(ino.0, fh.0, offset, size, move |r| {
            match r {
                Ok(b) => reply.data(b),
                Err(e) => reply.error(errno_of(&fs, "read", e)),
            }
            drop(t);
        });
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.fs.counters.flushes.fetch_add(1, Ordering::Relaxed);
        if !self.fs.config().writable {
            // Nothing is ever dirty. ENOSYS: close(2) still succeeds, and the
            // kernel sends no more FLUSH on this connection (no_flush).
            return reply.error(Errno::ENOSYS);
        }
        // close(2) of a file being written: answered once it is durable.
        let _t = timed("flush");
        match self.fs.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("flush", e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = timed("release");
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Nothing is ever dirty but a file being written.
        let _t = timed("fsync");
        match self.fs.fsync(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("fsync", e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = timed("opendir");
        match self.fs.opendir(ino.0) {
            // KEEP_CACHE + CACHE_DIR: the kernel may cache this listing. Not
            // on a writable mount: other writers add to its directories.
            Ok(fh) if self.fs.config().writable => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR),
            Err(e) => reply.error(self.errno("opendir", e)),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _t = timed("readdir");
        let l = match self.fs.dir_listing(fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(self.errno("readdir", e)),
        };
        for item in l.items_from(offset) {
            let ino = self.fs.dir_item_ino(&l, &item);
            if reply.add(INodeNo(ino), item.next_offset, file_type(item.attr.kind), item.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _t = timed("readdirplus");
        let l = match self.fs.dir_listing(fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(self.errno("readdirplus", e)),
        };
        for item in l.items_from(offset) {
            let ino = self.fs.remember_item(&l, &item);
            let attr = self.attr(ino, item.attr);
            if reply.add(INodeNo(ino), item.next_offset, item.name, &self.ttl, &attr, Generation(0)) {
                // Not sent: give back the reference taken for it.
                if !item.is_dot() {
                    self.fs.forget(ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _t = timed("releasedir");
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = timed("statfs");
        let s = self.fs.statfs();
        reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _t = timed("access");
        match self.fs.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("access", e)),
        }
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        // There are no symbolic links in a stoker namespace.
        reply.error(Errno::EINVAL);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(self.errno("getxattr", FsError::Unsupported { op: "getxattr" }));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(self.errno("listxattr", FsError::Unsupported { op: "listxattr" }));
    }

    // ---- write-type operations: EROFS on a read-only mount; on a writable
    // one create, write, truncate to 0, unlink (fs/write.rs), the rest
    // EOPNOTSUPP ----

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = timed("setattr");
        let chown = uid.is_some() || gid.is_some();
        match self.fs.setattr(ino.0, fh.map(|f| f.0), size, mode, chown, req.uid(), req.gid()) {
            Ok(e) => reply.attr(&self.ttl, &self.attr(e.ino, &e.attr)),
            Err(e) => reply.error(self.errno("setattr", e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.errno("mknod", self.fs.unsupported_write("mknod", parent.0, Some(name))));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _t = timed("mkdir");
        match self.fs.mkdir(parent.0, name, mode & !umask & 0o7777, req.uid(), req.gid()) {
            Ok(e) => reply.entry(&self.ttl, &self.attr(e.ino, &e.attr), Generation(0)),
            Err(e) => reply.error(self.errno("mkdir", e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = timed("unlink");
        match self.fs.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("unlink", e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = timed("rmdir");
        match self.fs.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("rmdir", e)),
        }
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, _target: &Path, reply: ReplyEntry) {
        reply.error(self.errno("symlink", self.fs.unsupported_write("symlink", parent.0, Some(link_name))));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = timed("rename");
        match self.fs.rename(parent.0, name, newparent.0, newname, flags.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno("rename", e)),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(self.errno("link", self.fs.unsupported_write("link", ino.0, None)));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = timed("write");
        match self.fs.write(ino.0, fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(self.errno("write", e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = timed("create");
        match self.fs.create(parent.0, name, mode & !umask & 0o7777, req.uid(), req.gid()) {
            Ok((e, fh)) => reply.created(
                &self.ttl,
                &self.attr(e.ino, &e.attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(self.errno("create", e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.errno("setxattr", self.fs.refuse("setxattr", ino.0, None)));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.errno("removexattr", self.fs.refuse("removexattr", ino.0, None)));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.errno("fallocate", self.fs.unsupported_write("fallocate", ino.0, None)));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(self.errno("copy_file_range", self.fs.unsupported_write("copy_file_range", ino_out.0, None)));
    }
}
