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
//! 2-vCPU VM (docs/BENCHMARKS.md, "FUSE over io_uring"): a stoker lookup
//! round trip 52 -> 37 µs; it wins at low concurrency and loses when
//! readers keep the CPUs busy, so it is off by default.
//!
//! Shape: after fuser's INIT handshake (which negotiated
//! FUSE_OVER_IO_URING), `threads_per_cpu` threads per possible CPU each own
//! a small io_uring with [`ENTRIES_PER_THREAD`] ring entry (a 288-byte
//! header and a payload buffer of the connection's max_write each),
//! registered with FUSE_IO_URING_CMD_REGISTER. The kernel switches to the
//! ring once every queue has an entry; until then, and always for FORGET
//! and INTERRUPT, fuser's /dev/fuse threads serve. A thread answers each
//! request by calling [`StokerFs`] exactly as the fuser adapter does, and
//! commits the answer with COMMIT_AND_FETCH. A read that is a direct hit is
//! answered on the spot; one that waits on the engine (a miss fetched from
//! under storage) keeps its entry until its answer comes back through a
//! channel and an eventfd read on the same ring. Read-only mounts
//! only: write-type requests get EROFS, as the `ro` mount already refuses
//! them in the VFS.

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

/// Ring entries each serving thread registers: requests a thread has in
/// hand at once (a read waiting on the engine keeps its entry until done).
/// One: the kernel gives a request to any free entry of the CPU's queue,
/// and a second entry of a thread busy with a device read would wait behind
/// it (4 KiB random reads, 4 threads: 10,000-12,700 ops/s with 4 entries
/// per thread against 15,700-16,900 with 1). Reads in flight come from
/// threads instead: `--threads` per CPU.
pub const ENTRIES_PER_THREAD: usize = 1;

/// Start serving on `fd` (the session's /dev/fuse, after INIT): per possible
/// CPU, `threads_per_cpu` threads with [`ENTRIES_PER_THREAD`] entries each.
/// Returns once every entry is registered, or with the first error.
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
            let mut q = match Queue::register(fd, qid) {
                Ok(q) => {
                    let _ = tx.send(Ok(()));
                    q
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            q.serve(&fs, no_open);
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

/// A payload buffer the kernel and a read's completion write into. Shared
/// (Arc) so that a completion arriving after its thread ended still writes
/// into live memory; at any time one side owns the bytes: the kernel until
/// it hands the entry a request, then the serving thread, then the read's
/// completion, then the thread again for the commit.
struct Payload {
    ptr: *mut u8,
    len: usize,
}
// SAFETY: see above; the hand-overs go through the ring or a mutex.
unsafe impl Send for Payload {}
// SAFETY: as above.
unsafe impl Sync for Payload {}

impl Payload {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, 4096).expect("payload layout")
    }

    fn new(len: usize) -> Payload {
        // SAFETY: a non-zero size; checked for failure below.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(Self::layout(len));
        }
        Payload { ptr, len }
    }

    fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.len)) }
    }
}

/// One ring entry: the buffers registered with the kernel, and the request
/// it holds.
struct Slot {
    header: Box<[u64; HEADER_BYTES / 8]>,
    payload: Arc<Payload>,
    iov: Box<[libc::iovec; 2]>,
    unique: u64,
    commit_id: u64,
}

impl Slot {
    fn header(&self) -> &[u8] {
        // SAFETY: a [u64; 36] is 288 initialised bytes.
        unsafe { std::slice::from_raw_parts(self.header.as_ptr().cast(), HEADER_BYTES) }
    }

    fn header_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; no other reference to it lives.
        unsafe { std::slice::from_raw_parts_mut(self.header.as_mut_ptr().cast(), HEADER_BYTES) }
    }

    /// The payload bytes, while this thread owns them.
    fn payload(&mut self) -> &mut [u8] {
        // SAFETY: called only between a request's arrival and its commit
        // with no read of it in flight (see `Payload`).
        unsafe { std::slice::from_raw_parts_mut(self.payload.ptr(), self.payload.len()) }
    }
}

/// Where a read's answer goes: back to the thread that issued it if it is
/// still waiting on the spot (a direct hit answers inline), else through
/// the thread's channel and eventfd.
enum ReadState {
    Pending,
    Inline((i32, usize)),
    Detached,
}

/// A serving thread's io_uring with its entries, all on one queue (CPU).
struct Queue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    fd: Arc<OwnedFd>,
    qid: u16,
    slots: Vec<Slot>,
    out: Vec<u8>,
    /// Reads answered on another thread: (slot, answer).
    done_tx: std::sync::mpsc::Sender<(usize, (i32, usize))>,
    done_rx: std::sync::mpsc::Receiver<(usize, (i32, usize))>,
    /// Written by those answers to wake this thread out of the ring.
    wake: Arc<OwnedFd>,
    wake_buf: Box<u64>,
}

/// user_data of the eventfd read (slots use their index).
const WAKE: u64 = u64::MAX;

impl Queue {
    fn register(fd: Arc<OwnedFd>, qid: usize) -> io::Result<Queue> {
        pin(qid);
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2 * ENTRIES_PER_THREAD as u32 + 2)?;
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened and own.
        let wake = Arc::new(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut q = Queue { ring, fd, qid: qid as u16, slots: Vec::new(), out: Vec::with_capacity(4096), done_tx, done_rx, wake, wake_buf: Box::new(0) };
        for i in 0..ENTRIES_PER_THREAD {
            let mut header = Box::new([0u64; HEADER_BYTES / 8]);
            let payload = Arc::new(Payload::new(PAYLOAD_BYTES as usize));
            let iov = Box::new([
                libc::iovec { iov_base: header.as_mut_ptr().cast(), iov_len: HEADER_BYTES },
                libc::iovec { iov_base: payload.ptr().cast(), iov_len: payload.len() },
            ]);
            q.slots.push(Slot { header, payload, iov, unique: 0, commit_id: 0 });
            q.push_cmd(i, CMD_REGISTER, 0)?;
        }
        q.arm_wake()?;
        q.ring.submit()?;
        Ok(q)
    }

    fn push(&mut self, sqe: squeue::Entry128) -> io::Result<()> {
        // SAFETY: every buffer an SQE names (iovecs, headers, payloads, the
        // eventfd word) lives in self, which the thread keeps until the
        // ring is dropped.
        if unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&sqe) }.map_err(|_| io::Error::other("ring full"))?;
        }
        Ok(())
    }

    /// Queue REGISTER or COMMIT_AND_FETCH (of `commit_id`) for slot `i`.
    fn push_cmd(&mut self, i: usize, op: u32, commit_id: u64) -> io::Result<()> {
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd.as_raw_fd()), op)
            .cmd(cmd)
            .addr(Some(self.slots[i].iov.as_ptr() as u64))
            .build()
            .user_data(i as u64);
        // The kernel wants sqe->len = 2 (the header and payload iovecs); the
        // builder has no setter for it.
        // SAFETY: Entry128 is repr(C): a 64-byte io_uring_sqe then 64 bytes.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: the same bytes back, one field changed.
        self.push(unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) })
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let buf: *mut u64 = &mut *self.wake_buf;
        let sqe = opcode::Read::new(types::Fd(self.wake.as_raw_fd()), buf.cast(), 8).build().user_data(WAKE);
        self.push(sqe.into())
    }

    /// Write slot `i`'s answer into its header and queue the commit.
    fn commit(&mut self, i: usize, (err, n): (i32, usize)) -> io::Result<()> {
        let (unique, commit_id) = (self.slots[i].unique, self.slots[i].commit_id);
        let h = self.slots[i].header_mut();
        h[0..4].copy_from_slice(&(16 + n as u32).to_ne_bytes());
        h[4..8].copy_from_slice(&(-err).to_ne_bytes());
        h[8..16].copy_from_slice(&unique.to_ne_bytes());
        h[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(n as u32).to_ne_bytes());
        self.push_cmd(i, CMD_COMMIT_AND_FETCH, commit_id)
    }

    /// Answer requests until the connection ends.
    fn serve<B: Backend>(&mut self, fs: &Arc<StokerFs<B>>, no_open: bool) {
        let mut done = Vec::new();
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("FUSE ring {}: {e}", self.qid);
                    return;
                }
            }
            done.clear();
            done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for &(ud, res) in &done {
                let r = if ud == WAKE {
                    self.drain_answers()
                } else if res < 0 {
                    // ENOTCONN and friends: unmounted or aborted.
                    tracing::debug!("FUSE ring {}: {}", self.qid, io::Error::from_raw_os_error(-res));
                    return;
                } else {
                    self.request(fs, no_open, ud as usize)
                };
                if let Err(e) = r {
                    tracing::warn!("FUSE ring {}: {e}", self.qid);
                    return;
                }
            }
        }
    }

    /// Commit the reads answered elsewhere, and wait for more.
    fn drain_answers(&mut self) -> io::Result<()> {
        while let Ok((i, answer)) = self.done_rx.try_recv() {
            self.commit(i, answer)?;
        }
        self.arm_wake()
    }

    /// Slot `i` holds a new request: answer it now, or start its read.
    fn request<B: Backend>(&mut self, fs: &Arc<StokerFs<B>>, no_open: bool, i: usize) -> io::Result<()> {
        let slot = &mut self.slots[i];
        let h = slot.header();
        let (opcode, unique, nodeid) = (u32_at(h, 4), u64_at(h, 8), u64_at(h, 16));
        let commit_id = u64_at(h, ENT_IN_OUT + 8);
        let extra_len = (u32_at(h, ENT_IN_OUT + 16) as usize).min(slot.payload.len());
        let op_in: [u8; 128] = h[OP_IN..OP_IN + 128].try_into().expect("128 bytes");
        slot.unique = unique;
        slot.commit_id = commit_id;
        if opcode == FUSE_READ {
            return match self.read(fs, i, nodeid, &op_in) {
                Some(answer) => self.commit(i, answer),
                None => Ok(()),
            };
        }
        self.out.clear();
        let r = dispatch(fs, no_open, opcode, nodeid, &op_in, &slot.payload()[..extra_len], &mut self.out);
        let answer = match r {
            Ok(()) => {
                let n = self.out.len().min(slot.payload.len());
                slot.payload()[..n].copy_from_slice(&self.out[..n]);
                (0, n)
            }
            Err(e) => (e, 0),
        };
        self.commit(i, answer)
    }

    /// Start slot `i`'s read; Some(answer) if it was answered on the spot
    /// (a direct hit), else it arrives through `done_rx`.
    fn read<B: Backend>(&mut self, fs: &Arc<StokerFs<B>>, i: usize, ino: u64, op_in: &[u8; 128]) -> Option<(i32, usize)> {
        let t = timed("read");
        let (fh, off) = (u64_at(op_in, 0), u64_at(op_in, 8));
        let payload = self.slots[i].payload.clone();
        let size = (u32_at(op_in, 16) as usize).min(payload.len());
        let state = Arc::new(parking_lot::Mutex::new(ReadState::Pending));
        let (state2, tx, wake, fs2) = (state.clone(), self.done_tx.clone(), self.wake.clone(), fs.clone());
        fs.read_async(ino, fh, off, size, move |r| {
            let answer = match r {
                Ok(b) => {
                    let n = b.len().min(size);
                    // SAFETY: the payload is this read's until it answers
                    // (see `Payload`), and holds at least `size` bytes.
                    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), payload.ptr(), n) };
                    (0, n)
                }
                Err(e) => (errno_code(&fs2, "read", e), 0),
            };
            drop(t);
            let mut st = state2.lock();
            if matches!(*st, ReadState::Detached) {
                let _ = tx.send((i, answer));
                let one = 1u64.to_ne_bytes();
                // SAFETY: writing 8 bytes to an eventfd we hold.
                unsafe { libc::write(wake.as_raw_fd(), one.as_ptr().cast(), 8) };
            } else {
                *st = ReadState::Inline(answer);
            }
        });
        let mut st = state.lock();
        match std::mem::replace(&mut *st, ReadState::Detached) {
            ReadState::Inline(answer) => Some(answer),
            _ => None,
        }
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
            // The reply goes into the payload buffer: never more than it holds.
            let (fh, offset, size) = (u64_at(op_in, 0), u64_at(op_in, 8), (u32_at(op_in, 16) as usize).min(PAYLOAD_BYTES as usize));
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
