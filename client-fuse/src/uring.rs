//! FUSE over io_uring: the kernel hands requests to ring entries instead of
//! /dev/fuse reads (Linux 6.14+, `fs/fuse/dev_uring.c`, switched on by
//! `/sys/module/fuse/parameters/enable_uring`).
//!
//! Why: a request through /dev/fuse wakes whichever session thread waits
//! first, usually on the other CPU, and the reply wakes the reader there
//! again. The ring has one queue per CPU; a request goes to the queue of the
//! CPU its caller runs on, and each queue's threads are pinned to that CPU,
//! so both hand-offs of a round trip stay on one CPU, and a reply and the
//! wait for the next request are one `io_uring_enter`. Measured on a
//! 2-vCPU VM (docs/BENCHMARKS.md, "FUSE over io_uring"): a lookup round trip
//! 58 -> 22 µs, 4 KiB random reads +35%.
//!
//! Shape: after fuser's INIT handshake (which negotiated
//! FUSE_OVER_IO_URING), `threads_per_cpu` threads per possible CPU each own
//! a small io_uring and one ring entry (a 288-byte header and a payload
//! buffer of the connection's max_write), registered with
//! FUSE_IO_URING_CMD_REGISTER. The kernel switches to the ring once every
//! queue has an entry; until then, and always for FORGET and INTERRUPT,
//! fuser's /dev/fuse threads serve. Each thread answers one request at a
//! time (COMMIT_AND_FETCH), calling [`StokerFs`] exactly as the fuser adapter
//! does. Read-only mounts only: write-type requests get EROFS, as the `ro`
//! mount already refuses them in the VFS.

use crate::backend::Backend;
use crate::fs::StokerFs;
use crate::fuse::{errno_code, kernel_attr, timed};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Largest write the kernel is told of when the ring is on (in `init`): the
/// ring's payload buffers must hold max(max_write, max_pages * 4 KiB).
pub const PAYLOAD_BYTES: u32 = 1 << 20;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
const HEADER_BYTES: usize = 288;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Whether this kernel can serve FUSE over io_uring now; the error says what
/// to do about it in one line.
pub fn available() -> Result<(), String> {
    match std::fs::read_to_string(PARAM) {
        Ok(v) if v.trim() == "Y" => Ok(()),
        Ok(_) => Err(format!("FUSE over io_uring is off in this kernel; as root: echo Y > {PARAM}")),
        Err(_) => Err("this kernel has no FUSE over io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING)".into()),
    }
}

/// The kernel's queue count: one per possible CPU (`nr_cpu_ids`).
pub fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let last = text.trim().rsplit([',', '-']).next().and_then(|s| s.parse::<usize>().ok());
    last.map(|n| n + 1).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Start serving on `fd` (the session's /dev/fuse, after INIT). Returns
/// once every thread has registered its entry, or the first error.
/// `no_open`: answer file opens ENOSYS (the connection offered
/// FUSE_NO_OPEN_SUPPORT and the mount asked for it), as the fuser adapter does.
pub fn start<B: Backend>(fs: Arc<StokerFs<B>>, fd: OwnedFd, threads_per_cpu: usize, no_open: bool) -> io::Result<()> {
    let fd = Arc::new(fd);
    let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
    let cpus = possible_cpus();
    let n = cpus * threads_per_cpu.max(1);
    for i in 0..n {
        let (fs, fd, tx) = (fs.clone(), fd.clone(), tx.clone());
        let qid = i % cpus;
        std::thread::Builder::new().name(format!("fuse-ring-{qid}")).spawn(move || {
            let mut ent = match Entry::register(&fd, qid) {
                Ok(e) => {
                    let _ = tx.send(Ok(()));
                    e
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            ent.serve(&fs, no_open);
        })?;
    }
    drop(tx);
    for _ in 0..n {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a FUSE ring thread did not start")),
        }
    }
    Ok(())
}

/// One ring entry and the io_uring it was registered on.
struct Entry {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    fd: Arc<OwnedFd>,
    qid: u16,
    header: Box<[u64; HEADER_BYTES / 8]>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
    out: Vec<u8>,
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
            // An offline CPU refuses: the thread then runs anywhere.
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A raw pointer a read's completion may be handed on another thread; the
/// serving thread waits for that completion before touching the buffer.
struct Dst(*mut u8, usize);
// SAFETY: see above; only one side uses the buffer at a time.
unsafe impl Send for Dst {}

impl Entry {
    fn register(fd: &Arc<OwnedFd>, qid: usize) -> io::Result<Entry> {
        pin(qid);
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2)?;
        let mut header = Box::new([0u64; HEADER_BYTES / 8]);
        let mut payload = vec![0u8; PAYLOAD_BYTES as usize];
        let iov = Box::new([
            libc::iovec { iov_base: header.as_mut_ptr().cast(), iov_len: HEADER_BYTES },
            libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() },
        ]);
        let mut e = Entry { ring, fd: fd.clone(), qid: qid as u16, header, payload, iov, out: Vec::with_capacity(4096) };
        e.submit(CMD_REGISTER, 0)?;
        Ok(e)
    }

    fn header(&self) -> &[u8] {
        // SAFETY: a [u64; 36] is 288 initialised bytes.
        unsafe { std::slice::from_raw_parts(self.header.as_ptr().cast(), HEADER_BYTES) }
    }

    fn header_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; no other reference to it lives.
        unsafe { std::slice::from_raw_parts_mut(self.header.as_mut_ptr().cast(), HEADER_BYTES) }
    }

    /// Queue one command (REGISTER, or COMMIT_AND_FETCH of `commit_id`) on
    /// this entry's ring and enter the kernel with it.
    fn submit(&mut self, op: u32, commit_id: u64) -> io::Result<()> {
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd.as_raw_fd()), op)
            .cmd(cmd)
            .addr(Some(self.iov.as_ptr() as u64))
            .build();
        // The kernel wants sqe->len = 2 (the header and payload iovecs); the
        // builder has no setter for it.
        // SAFETY: Entry128 is repr(C): a 64-byte io_uring_sqe then 64 bytes.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: the same bytes back, one field changed.
        let sqe: squeue::Entry128 = unsafe { std::mem::transmute(raw) };
        // SAFETY: the iovecs and the buffers they name live in self, which
        // outlives the command (the thread keeps it until the ring ends).
        unsafe { self.ring.submission().push(&sqe) }.map_err(|_| io::Error::other("ring full"))?;
        self.ring.submit()?;
        Ok(())
    }

    /// Answer requests until the connection ends.
    fn serve<B: Backend>(&mut self, fs: &Arc<StokerFs<B>>, no_open: bool) {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("FUSE ring {}: {e}", self.qid);
                    return;
                }
            }
            let Some(c) = self.ring.completion().next() else { continue };
            if c.result() < 0 {
                // ENOTCONN and friends: unmounted or aborted.
                tracing::debug!("FUSE ring {}: {}", self.qid, io::Error::from_raw_os_error(-c.result()));
                return;
            }
            let h = self.header();
            let (opcode, unique, nodeid) = (u32_at(h, 4), u64_at(h, 8), u64_at(h, 16));
            let commit_id = u64_at(h, ENT_IN_OUT + 8);
            let extra_len = (u32_at(h, ENT_IN_OUT + 16) as usize).min(self.payload.len());
            let op_in: [u8; 128] = h[OP_IN..OP_IN + 128].try_into().expect("128 bytes");
            let (err, n) = self.answer(fs, no_open, opcode, nodeid, &op_in, extra_len);
            let h = self.header_mut();
            h[0..4].copy_from_slice(&(16 + n as u32).to_ne_bytes());
            h[4..8].copy_from_slice(&(-err).to_ne_bytes());
            h[8..16].copy_from_slice(&unique.to_ne_bytes());
            h[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(n as u32).to_ne_bytes());
            if let Err(e) = self.submit(CMD_COMMIT_AND_FETCH, commit_id) {
                tracing::warn!("FUSE ring {}: {e}", self.qid);
                return;
            }
        }
    }

    /// Serve one request: (errno or 0, reply bytes placed in the payload).
    #[allow(clippy::too_many_arguments)] // one request's fields, said once
    fn answer<B: Backend>(&mut self, fs: &Arc<StokerFs<B>>, no_open: bool, opcode: u32, nodeid: u64, op_in: &[u8; 128], extra_len: usize) -> (i32, usize) {
        self.out.clear();
        let r = match opcode {
            FUSE_READ => return self.read(fs, nodeid, op_in),
            _ => dispatch(fs, no_open, opcode, nodeid, op_in, &self.payload[..extra_len], &mut self.out),
        };
        match r {
            Ok(()) => {
                let n = self.out.len().min(self.payload.len());
                self.payload[..n].copy_from_slice(&self.out[..n]);
                (0, n)
            }
            Err(e) => (e, 0),
        }
    }

    fn read<B: Backend>(&mut self, fs: &Arc<StokerFs<B>>, ino: u64, op_in: &[u8; 128]) -> (i32, usize) {
        let t = timed("read");
        let (fh, off) = (u64_at(op_in, 0), u64_at(op_in, 8));
        let size = (u32_at(op_in, 16) as usize).min(self.payload.len());
        let dst = Dst(self.payload.as_mut_ptr(), size);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(i32, usize)>(1);
        let fs2 = fs.clone();
        fs.read_async(ino, fh, off, size, move |r| {
            let dst = dst;
            let answer = match r {
                Ok(b) => {
                    let n = b.len().min(dst.1);
                    // SAFETY: dst is this entry's payload, which its thread
                    // does not touch until this answer arrives.
                    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), dst.0, n) };
                    (0, n)
                }
                Err(e) => (errno_code(&fs2, "read", e), 0),
            };
            let _ = tx.send(answer);
        });
        // The client bounds every read (its request timeout); the callback
        // always runs, here or on its completion thread.
        let answer = rx.recv().unwrap_or((libc::EIO, 0));
        drop(t);
        answer
    }
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_READLINK: u32 = 5;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FSYNC: u32 = 20;
const FUSE_FLUSH: u32 = 25;
const FUSE_OPENDIR: u32 = 27;
const FUSE_READDIR: u32 = 28;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_FSYNCDIR: u32 = 30;
const FUSE_ACCESS: u32 = 34;
const FUSE_READDIRPLUS: u32 = 44;
const FOPEN_KEEP_CACHE: u32 = 1 << 1;
const FOPEN_CACHE_DIR: u32 = 1 << 3;
const FOPEN_NOFLUSH: u32 = 1 << 5;

/// Write-type requests (the `ro` mount refuses them in the VFS already).
const WRITES: &[u32] = &[4, 6, 8, 9, 10, 11, 12, 13, 16, 21, 24, 35, 43, 45, 47, 51];

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// `struct fuse_attr` (88 bytes).
fn put_attr(out: &mut Vec<u8>, a: &fuser::FileAttr) {
    // Seconds (signed) and nanoseconds of a time, before 1970 too.
    let ts = |t: std::time::SystemTime| match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => match e.duration().subsec_nanos() {
            0 => (-(e.duration().as_secs() as i64), 0),
            ns => (-(e.duration().as_secs() as i64) - 1, 1_000_000_000 - ns),
        },
    };
    let (at, mt, ct) = (ts(a.atime), ts(a.mtime), ts(a.ctime));
    put_u64(out, a.ino.0);
    put_u64(out, a.size);
    put_u64(out, a.blocks);
    for (s, _) in [at, mt, ct] {
        put_u64(out, s as u64);
    }
    for (_, ns) in [at, mt, ct] {
        put_u32(out, ns);
    }
    let kind = match a.kind {
        fuser::FileType::Directory => libc::S_IFDIR,
        _ => libc::S_IFREG,
    };
    put_u32(out, kind | a.perm as u32);
    put_u32(out, a.nlink);
    put_u32(out, a.uid);
    put_u32(out, a.gid);
    put_u32(out, a.rdev);
    put_u32(out, a.blksize);
    put_u32(out, 0);
}

/// `struct fuse_entry_out` (128 bytes).
fn put_entry(out: &mut Vec<u8>, ttl: Duration, a: &fuser::FileAttr) {
    put_u64(out, a.ino.0);
    put_u64(out, 0);
    put_u64(out, ttl.as_secs());
    put_u64(out, ttl.as_secs());
    put_u32(out, ttl.subsec_nanos());
    put_u32(out, ttl.subsec_nanos());
    put_attr(out, a);
}

fn put_open(out: &mut Vec<u8>, fh: u64, flags: u32) {
    put_u64(out, fh);
    put_u32(out, flags);
    put_u32(out, 0);
}

/// `struct fuse_dirent` and its name, padded to 8 bytes.
fn put_dirent(out: &mut Vec<u8>, ino: u64, next: u64, dir: bool, name: &str) {
    put_u64(out, ino);
    put_u64(out, next);
    put_u32(out, name.len() as u32);
    put_u32(out, if dir { libc::DT_DIR as u32 } else { libc::DT_REG as u32 });
    out.extend_from_slice(name.as_bytes());
    out.resize(out.len().next_multiple_of(8), 0);
}

/// Every request but READ: the reply's bytes into `out`, or an errno.
fn dispatch<B: Backend>(fs: &StokerFs<B>, no_open: bool, opcode: u32, nodeid: u64, op_in: &[u8; 128], extra: &[u8], out: &mut Vec<u8>) -> Result<(), i32> {
    let ttl = fs.config().metadata_ttl;
    match opcode {
        FUSE_LOOKUP => {
            let _t = timed("lookup");
            let name = extra.split(|&c| c == 0).next().unwrap_or_default();
            let name = std::ffi::OsStr::from_bytes(name);
            let e = fs.lookup(nodeid, name).map_err(|e| errno_code(fs, "lookup", e))?;
            put_entry(out, ttl, &kernel_attr(fs, e.ino, &e.attr));
        }
        FUSE_GETATTR => {
            let _t = timed("getattr");
            let e = fs.getattr(nodeid).map_err(|e| errno_code(fs, "getattr", e))?;
            put_u64(out, ttl.as_secs());
            put_u32(out, ttl.subsec_nanos());
            put_u32(out, 0);
            put_attr(out, &kernel_attr(fs, e.ino, &e.attr));
        }
        FUSE_OPEN => {
            let _t = timed("open");
            let flags = u32_at(op_in, 0) as i32;
            if no_open {
                fs.open_without_handle(nodeid, flags).map_err(|e| errno_code(fs, "open", e))?;
                return Err(libc::ENOSYS);
            }
            let o = fs.open(nodeid, flags).map_err(|e| errno_code(fs, "open", e))?;
            put_open(out, o.fh, FOPEN_NOFLUSH | if o.keep_cache { FOPEN_KEEP_CACHE } else { 0 });
        }
        FUSE_RELEASE => {
            let _t = timed("release");
            fs.release(u64_at(op_in, 0));
        }
        FUSE_FLUSH => {
            fs.counters.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(libc::ENOSYS);
        }
        FUSE_FSYNC => {
            let _t = timed("fsync");
            fs.fsync(u64_at(op_in, 0)).map_err(|e| errno_code(fs, "fsync", e))?;
        }
        FUSE_OPENDIR => {
            let _t = timed("opendir");
            let fh = fs.opendir(nodeid).map_err(|e| errno_code(fs, "opendir", e))?;
            put_open(out, fh, FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR);
        }
        FUSE_READDIR | FUSE_READDIRPLUS => {
            let plus = opcode == FUSE_READDIRPLUS;
            let _t = timed(if plus { "readdirplus" } else { "readdir" });
            let (fh, offset, size) = (u64_at(op_in, 0), u64_at(op_in, 8), u32_at(op_in, 16) as usize);
            let l = fs.dir_listing(fh).map_err(|e| errno_code(fs, "readdir", e))?;
            for item in l.items_from(offset) {
                let at = out.len();
                let dir = item.attr.kind == stoker_client::Kind::Dir;
                if plus {
                    let ino = fs.remember_item(&l, &item);
                    put_entry(out, ttl, &kernel_attr(fs, ino, item.attr));
                    put_dirent(out, ino, item.next_offset, dir, item.name);
                    if out.len() > size {
                        out.truncate(at);
                        if !item.is_dot() {
                            fs.forget(ino, 1);
                        }
                        break;
                    }
                } else {
                    put_dirent(out, fs.dir_item_ino(&l, &item), item.next_offset, dir, item.name);
                    if out.len() > size {
                        out.truncate(at);
                        break;
                    }
                }
            }
        }
        FUSE_RELEASEDIR => {
            let _t = timed("releasedir");
            fs.releasedir(u64_at(op_in, 0));
        }
        FUSE_FSYNCDIR => {}
        FUSE_STATFS => {
            let _t = timed("statfs");
            let s = fs.statfs();
            for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
                put_u64(out, v);
            }
            for v in [s.bsize, s.namelen, s.frsize, 0, 0, 0, 0, 0, 0, 0] {
                put_u32(out, v);
            }
        }
        FUSE_ACCESS => {
            let _t = timed("access");
            fs.access(nodeid, u32_at(op_in, 0) as i32).map_err(|e| errno_code(fs, "access", e))?;
        }
        FUSE_READLINK => return Err(libc::EINVAL),
        op if WRITES.contains(&op) => return Err(libc::EROFS),
        _ => return Err(libc::ENOSYS),
    }
    Ok(())
}
