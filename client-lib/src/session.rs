//! One attached session: a pool of control connections, the shared area,
//! rings, doorbells and the completion thread that hands finished requests to
//! their callers.
//!
//! A session belongs to the process that opened it. After `fork` the child
//! must never post on (or shut down) the parent's rings and sockets: `Drop`
//! in another process only closes that process's copies of the descriptors.
//!
//! A session whose engine went away is dead for good (`is_dead`): every
//! waiting and later call fails with ECONNRESET, and `Link` (reconnect.rs)
//! replaces it with a new one. Writes to the engine use MSG_NOSIGNAL, so an
//! engine that went away is an error here, never a SIGPIPE in the host
//! process (C and Python programs do not all ignore it).

use crate::alloc::SlotAlloc;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::options::Options;
use crossbeam_channel::Sender;
use memmap2::{MmapOptions, MmapRaw};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use stoker_proto::control::{read_frame, write_frame, Request, Response, Welcome};
use stoker_proto::key::shard_for;
use stoker_proto::ring::{Consumer, CqEntry, Layout, Producer, SqEntry};

/// Idle control connections kept for reuse; more are opened on demand.
const CONTROL_IDLE_MAX: usize = 4;

pub(crate) fn unexpected(r: Response) -> Error {
    match r {
        Response::Error { errno, message } => Error::Engine { errno, message },
        other => Error::Protocol(format!("unexpected answer from engine: {other:?}")),
    }
}

/// The error of a call whose engine went away (see `reconnect::lost`).
pub(crate) fn lost_err() -> Error {
    Error::Lost("connection to the stoker engine was lost".into())
}

/// A control-socket failure: ECONNRESET when the engine closed the
/// connection (it went away: worth a new session), EIO otherwise.
fn transport_err(what: &str, e: std::io::Error) -> Error {
    use std::io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected | UnexpectedEof => {
            Error::Lost(format!("{what}: the engine closed the connection ({e})"))
        }
        _ => Error::io(what, e),
    }
}

/// Writes to a socket with MSG_NOSIGNAL: a peer that went away is EPIPE,
/// never a SIGPIPE.
pub(crate) struct NoSigpipe<'a>(pub(crate) &'a UnixStream);

impl Write for NoSigpipe<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        nix::sys::socket::send(self.0.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL).map_err(std::io::Error::from)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reserved range of the data area. Freed when the last holder drops it:
/// the caller (or a view) and every request still in flight into it.
pub(crate) struct Lease {
    shared: Arc<Shared>,
    pub(crate) off: u64,
    pub(crate) len: u64,
}

impl Lease {
    /// Give back everything past the first `keep` bytes (rounded up to a
    /// slot boundary). Only for a lease no request uses any more.
    pub(crate) fn trim(&mut self, keep: u64) {
        let keep = SlotAlloc::round(keep);
        if keep < self.len {
            self.shared.free_slot(self.off + keep, self.len - keep);
            self.len = keep;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.free_slot(self.off, self.len);
    }
}

/// Where a completion goes: a waiting caller's channel, or piece `idx` of a
/// read whose callback runs on the completion thread.
#[derive(Clone)]
pub(crate) enum Deliver {
    Chan(Sender<CqEntry>),
    Call(Arc<crate::op::AsyncOp>, usize),
}

impl Deliver {
    fn deliver(self, c: CqEntry) {
        match self {
            Deliver::Chan(tx) => {
                let _ = tx.send(c);
            }
            Deliver::Call(op, idx) => op.complete(idx, &c),
        }
    }
}

struct Pending {
    to: Deliver,
    shard: usize,
    /// Keeps the slot reserved until the engine has answered.
    _lease: Arc<Lease>,
}

/// State shared with the completion thread.
pub(crate) struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    slots: Mutex<SlotAlloc>,
    slot_freed: Condvar,
    /// Requests in flight per shard, kept <= ring_entries so a CQ never overflows.
    inflight: Vec<Mutex<u32>>,
    inflight_freed: Condvar,
    dead: AtomicBool,
    /// Bytes of the area held by views the caller still has.
    pub(crate) held_bytes: AtomicU64,
}

impl Shared {
    fn free_slot(&self, off: u64, len: u64) {
        self.slots.lock().free(off, len);
        self.slot_freed.notify_all();
    }

    fn finish(&self, shard: usize) {
        // Saturating: a lost session's completion thread zeroes the counts.
        let mut n = self.inflight[shard].lock();
        *n = n.saturating_sub(1);
        drop(n);
        self.inflight_freed.notify_all();
    }
}

struct ShardLink {
    sq: Mutex<Producer<SqEntry>>,
    bell: UnixStream,
}

pub(crate) struct Session {
    pub(crate) pid: u32,
    socket: String,
    /// The connection that said Hello: the engine ends the session when it closes.
    _hello: UnixStream,
    control_idle: Mutex<Vec<UnixStream>>,
    pub(crate) welcome: Welcome,
    pub(crate) layout: Layout,
    pub(crate) map: Arc<MmapRaw>,
    shards: Vec<ShardLink>,
    pub(crate) shared: Arc<Shared>,
    next_req: AtomicU64,
    pub(crate) opts: Options,
    completer: Option<std::thread::JoinHandle<()>>,
    /// The completion thread's copies of the doorbells (closed by hand in a
    /// forked child, where that thread does not exist).
    completer_fds: Vec<RawFd>,
    /// Direct reads of cached blocks, when the engine offers them.
    direct: Option<crate::direct::Direct>,
}

fn memfd(bytes: u64) -> Result<File> {
    let name = c"stoker-area";
    // SAFETY: plain syscalls on a descriptor we create and own.
    unsafe {
        let fd = libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
        if fd < 0 {
            return Err(Error::io("memfd_create", std::io::Error::last_os_error()));
        }
        let file = File::from(OwnedFd::from_raw_fd(fd));
        file.set_len(bytes).map_err(|e| Error::io("sizing shared area", e))?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0 {
            return Err(Error::io("sealing shared area", std::io::Error::last_os_error()));
        }
        Ok(file)
    }
}

pub(crate) fn connect_control(socket: &str, opts: &Options) -> Result<UnixStream> {
    let c = UnixStream::connect(socket).map_err(|e| {
        Error::Unreachable(format!(
            "cannot reach the stoker engine at {socket}: {e} (is `stoker serve` running? set --socket or STOKER_SOCKET)"
        ))
    })?;
    c.set_read_timeout(Some(opts.timeout)).map_err(|e| Error::io("control socket", e))?;
    Ok(c)
}

fn call(c: &mut UnixStream, req: &Request) -> Result<Response> {
    write_frame(&mut NoSigpipe(c), req).map_err(|e| transport_err("control socket", e))?;
    answer(c)
}

/// Send a request already on its wire form (a frame, and a `Write`'s
/// bytes) and read the answer.
fn call_raw(c: &mut UnixStream, wire: &[u8]) -> Result<Response> {
    NoSigpipe(c).write_all(wire).map_err(|e| transport_err("control socket", e))?;
    answer(c)
}

fn answer(c: &mut UnixStream) -> Result<Response> {
    match read_frame::<_, Response>(c) {
        Ok(Some(Response::Error { errno, message })) => Err(Error::Engine { errno, message }),
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(Error::Lost("engine closed the connection".into())),
        Err(e) => Err(transport_err("control socket", e)),
    }
}

impl Session {
    pub(crate) fn connect(socket: &str, opts: Options) -> Result<Session> {
        let mut control = connect_control(socket, &opts)?;
        // Ask the engine for its shard count first: the area layout depends on it.
        let shards = match call(&mut control, &Request::EngineStat)? {
            Response::Stats(s) => s.shards.len() as u32,
            other => return Err(unexpected(other)),
        };
        let layout = Layout::new(shards, opts.ring_entries, opts.area_bytes.max(1 << 20));
        let file = memfd(layout.total_bytes())?;
        let map = MmapOptions::new().map_raw(&file).map_err(|e| Error::io("mapping shared area", e))?;
        // SAFETY: the mapping is total_bytes() long, fresh and page aligned.
        unsafe { layout.write_header(map.as_mut_ptr()) };

        let hello = stoker_proto::control::encode(&Request::Hello {
            version: stoker_proto::PROTOCOL_VERSION,
            area_bytes: layout.data_bytes,
            ring_entries: layout.ring_entries,
        });
        let fds = [file.as_raw_fd()];
        sendmsg::<()>(control.as_raw_fd(), &[IoSlice::new(&hello)], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
            .map_err(|e| Error::io("handshake", e))?;
        let welcome = match read_frame::<_, Response>(&mut control) {
            Ok(Some(Response::Welcome(w))) => w,
            Ok(Some(other)) => return Err(unexpected(other)),
            Ok(None) => return Err(Error::Lost("engine closed the connection".into())),
            Err(e) => return Err(Error::io("handshake", e)),
        };
        if welcome.shards != shards || welcome.shard_sockets.len() != shards as usize {
            return Err(Error::Protocol("engine changed its shard count during the handshake".into()));
        }

        let mut links = Vec::new();
        let mut cqs = Vec::new();
        let mut bells_in = Vec::new();
        for (i, path) in welcome.shard_sockets.iter().enumerate() {
            let mut s = UnixStream::connect(path).map_err(|e| Error::io(&format!("connecting to shard socket {path}"), e))?;
            s.write_all(&welcome.session.to_le_bytes()).map_err(|e| Error::io("attaching to shard", e))?;
            let base = map.as_mut_ptr();
            // SAFETY: offsets come from the layout of this mapping; this client
            // is the only producer of each SQ and the only consumer of each CQ.
            let (sq, cq) = unsafe {
                (
                    Producer::<SqEntry>::new(base.add(layout.sq_offset(i as u32) as usize), layout.ring_entries),
                    Consumer::<CqEntry>::new(base.add(layout.cq_offset(i as u32) as usize), layout.ring_entries),
                )
            };
            bells_in.push(s.try_clone().map_err(|e| Error::io("shard socket", e))?);
            cqs.push(cq);
            links.push(ShardLink { sq: Mutex::new(sq), bell: s });
        }
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            slots: Mutex::new(SlotAlloc::new(layout.data_bytes)),
            slot_freed: Condvar::new(),
            inflight: (0..shards).map(|_| Mutex::new(0)).collect(),
            inflight_freed: Condvar::new(),
            dead: AtomicBool::new(false),
            held_bytes: AtomicU64::new(0),
        });
        let completer_fds = bells_in.iter().map(|b| b.as_raw_fd()).collect();
        let direct = if opts.direct { crate::direct::Direct::connect(socket, &opts, shards) } else { None };
        let completer = {
            let shared = shared.clone();
            let timeout = opts.timeout;
            std::thread::Builder::new()
                .name("stoker-completions".into())
                .spawn(move || complete_loop(bells_in, cqs, shared, timeout))
                .map_err(|e| Error::io("starting completion thread", e))?
        };
        Ok(Session {
            pid: std::process::id(),
            socket: socket.to_string(),
            _hello: control,
            control_idle: Mutex::default(),
            welcome,
            layout,
            map: Arc::new(map),
            shards: links,
            shared,
            next_req: AtomicU64::new(1),
            opts,
            completer: Some(completer),
            completer_fds,
            direct,
        })
    }

    pub(crate) fn check_alive(&self) -> Result<()> {
        if self.shared.dead.load(Ordering::Acquire) {
            return Err(lost_err());
        }
        Ok(())
    }

    /// Take this session out of use: a call of it could not reach the
    /// engine. Later calls fail with ECONNRESET (and go to a new session);
    /// requests already posted still complete, or fail when the engine's
    /// doorbells close. Wakes every thread waiting for space or a ring entry.
    pub(crate) fn mark_lost(&self) {
        self.shared.dead.store(true, Ordering::Release);
        // Lock before notifying: a waiter between its check and its wait
        // holds the lock, so it cannot miss the wake-up.
        drop(self.shared.slots.lock());
        self.shared.slot_freed.notify_all();
        for m in &self.shared.inflight {
            drop(m.lock());
        }
        self.shared.inflight_freed.notify_all();
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    /// One control call on an idle pooled connection (or a new one), so a
    /// slow stat never holds up other metadata calls.
    pub(crate) fn control(&self, req: &Request) -> Result<Response> {
        self.control_with(|c| call(c, req))
    }

    /// A request already on its wire form ([`stoker_proto::control::write_request`]).
    pub(crate) fn control_raw(&self, wire: &[u8]) -> Result<Response> {
        self.control_with(|c| call_raw(c, wire))
    }

    fn control_with(&self, f: impl FnOnce(&mut UnixStream) -> Result<Response>) -> Result<Response> {
        self.check_alive()?;
        let idle = self.control_idle.lock().pop();
        let mut c = match idle {
            Some(c) => c,
            None => connect_control(&self.socket, &self.opts)?,
        };
        let r = f(&mut c);
        // A transport error leaves the stream mid-frame: never reuse it.
        let reusable = match &r {
            Ok(_) => true,
            Err(e) => e.errno() != libc::EIO && e.errno() != libc::ECONNRESET,
        };
        if reusable {
            let mut idle = self.control_idle.lock();
            if idle.len() < CONTROL_IDLE_MAX {
                idle.push(c);
            }
        }
        r
    }

    /// Largest range one request slot holds: a quarter of the area, so reads
    /// of other threads and views the caller holds always leave room.
    pub(crate) fn op_bytes_max(&self) -> u64 {
        (self.layout.data_bytes / 4 / 4096 * 4096).max(4096)
    }

    /// Largest piece one ring entry asks for under `path`'s mount.
    pub(crate) fn chunk_bytes_for(&self, path: &str) -> u64 {
        self.welcome.block_bytes_for(path).min(self.op_bytes_max())
    }

    /// Split [off, off+len) at block boundaries and at the chunk size.
    pub(crate) fn pieces(&self, path: &str, off: u64, len: u64) -> Vec<(u64, u64)> {
        let bs = self.welcome.block_bytes_for(path);
        let chunk = self.chunk_bytes_for(path);
        let mut out = Vec::new();
        let mut at = off;
        let end = off.saturating_add(len);
        while at < end {
            let block_end = (at / bs + 1) * bs;
            let piece_end = end.min(block_end).min(at + chunk);
            out.push((at, piece_end - at));
            at = piece_end;
        }
        out
    }

    /// Cut [off, off+len) into ranges that each fit one op: at most
    /// `op_bytes_max`, and no piece but the last shorter than the path (the
    /// engine reads a piece's path from where its bytes will land).
    pub(crate) fn op_ranges(&self, path: &str, off: u64, len: u64) -> Vec<(u64, u64)> {
        let path_len = path.len() as u64;
        let max = self.op_bytes_max();
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut cur: Option<(u64, u64)> = None;
        for (poff, plen) in self.pieces(path, off, len) {
            cur = match cur {
                Some((coff, clen)) if clen + plen <= max => Some((coff, clen + plen)),
                Some(c) => {
                    out.push(c);
                    Some((poff, plen))
                }
                None => Some((poff, plen)),
            };
            if plen < path_len && poff + plen < off + len {
                out.push(cur.take().unwrap());
            }
        }
        out.extend(cur);
        if out.is_empty() {
            out.push((off, 0));
        }
        out
    }

    /// The bytes of a finished op.
    pub(crate) fn op_bytes(&self, op: &Op) -> &[u8] {
        debug_assert!(op.finished());
        // SAFETY: every piece completed, and `op` holds the lease.
        unsafe { self.data(op.lease.off, op.bytes() as usize) }
    }

    /// Reserve `len` bytes of the data area. With `wait`, block (bounded by
    /// the timeout) until space frees; without, `None` when full right now.
    pub(crate) fn lease(&self, len: u64, wait: bool) -> Result<Option<Arc<Lease>>> {
        let mut slots = self.shared.slots.lock();
        if !slots.fits_ever(len) {
            return Err(Error::Invalid("request larger than the shared area".into()));
        }
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            if let Some((off, len)) = slots.alloc(len) {
                return Ok(Some(Arc::new(Lease { shared: self.shared.clone(), off, len })));
            }
            if !wait {
                return Ok(None);
            }
            self.check_alive()?;
            if self.shared.slot_freed.wait_until(&mut slots, deadline).timed_out() {
                return Err(Error::Timeout("timed out waiting for shared-area space (are views held too long?)".into()));
            }
            self.check_alive()?;
        }
    }

    /// Largest range the area could lease right now.
    pub(crate) fn largest_free(&self) -> u64 {
        self.shared.slots.lock().largest()
    }

    /// Serve `[off, off + len)` of `path` straight from the segment file into
    /// `sink`, with no slot and no ring entry, when it lies inside one block
    /// the direct-read table knows (`whole`: only if that block is the whole
    /// object; then `off` is 0 and `len` the block size). None, with `sink`
    /// not called, when it is not a direct hit.
    pub(crate) fn direct_with(&self, path: &str, off: u64, len: u64, whole: bool, sink: &mut dyn FnMut(&[u8])) -> Option<(u64, u64)> {
        let d = self.direct.as_ref()?;
        let bs = self.welcome.block_bytes_for(path);
        let (block, off_in) = (off / bs, off % bs);
        let len = if whole { bs } else { len };
        if len == 0 || off_in.checked_add(len)? > bs {
            return None;
        }
        let shard = shard_for(path, block, self.shards.len()) as u32;
        d.read_with(shard, path, block, crate::direct::Want { off: off_in, len, max: len, whole }, sink)
    }

    /// Write `path` at `at` inside `lease` and post one piece (inside one
    /// block) whose bytes land at the same place. Returns the request id.
    #[allow(clippy::too_many_arguments)] // one ring entry's fields, said once
    pub(crate) fn post(&self, path: &str, off: u64, len: u64, flags: u32, lease: &Arc<Lease>, at: u64, to: Deliver) -> Result<u64> {
        let bs = self.welcome.block_bytes_for(path);
        let block = off / bs;
        let shard = shard_for(path, block, self.shards.len());
        let cap = lease.len - at;
        debug_assert!(cap >= path.len() as u64 && (flags & stoker_proto::ring::FLAG_NO_DATA != 0 || cap >= len));
        if let (Some(d), 0) = (&self.direct, flags) {
            // SAFETY: [lease.off + at, + cap) is inside our lease, which no
            // request in flight is writing.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add((self.layout.data_offset + lease.off + at) as usize), cap as usize)
            };
            if let Some((n, size)) = d.read(shard as u32, path, block, off - block * bs, len, dst) {
                let req_id = self.next_req.fetch_add(1, Ordering::Relaxed);
                to.deliver(CqEntry { req_id, result: n as i64, data_off: lease.off + at, object_size: size });
                return Ok(req_id);
            }
        }
        {
            let deadline = Instant::now() + self.opts.timeout;
            let mut n = self.shared.inflight[shard].lock();
            while *n >= self.layout.ring_entries {
                if self.shared.inflight_freed.wait_until(&mut n, deadline).timed_out() {
                    return Err(Error::Timeout("timed out waiting for a ring entry".into()));
                }
                if self.is_dead() {
                    return Err(lost_err());
                }
            }
            *n += 1;
        }
        // SAFETY: [lease.off + at, + path.len()) is inside our lease (checked
        // above), which no request in flight is writing.
        unsafe {
            let dst = self.map.as_mut_ptr().add((self.layout.data_offset + lease.off + at) as usize);
            std::ptr::copy_nonoverlapping(path.as_ptr(), dst, path.len());
        }
        let req_id = self.next_req.fetch_add(1, Ordering::Relaxed);
        self.shared.pending.lock().insert(req_id, Pending { to, shard, _lease: lease.clone() });
        if self.is_dead() {
            // The completion thread may have failed everything pending
            // before this entry went in: then nothing would ever answer it.
            // Whoever removes it answers it.
            if self.shared.pending.lock().remove(&req_id).is_some() {
                self.shared.finish(shard);
                return Err(lost_err());
            }
            return Ok(req_id);
        }
        let entry = SqEntry {
            req_id,
            buf_off: lease.off + at,
            buf_len: cap,
            block,
            off_in_block: off - block * bs,
            len,
            path_len: path.len() as u32,
            flags,
            _reserved: 0,
        };
        let pushed = self.shards[shard].sq.lock().push(entry);
        if pushed != Ok(true) {
            // Cannot happen while in-flight <= ring entries; fail cleanly anyway.
            self.shared.pending.lock().remove(&req_id);
            self.shared.finish(shard);
            return Err(Error::Internal("request ring full or corrupt".into()));
        }
        if NoSigpipe(&self.shards[shard].bell).write_all(&[1]).is_err() {
            // The engine went away; the completion thread fails this request.
            self.shared.dead.store(true, Ordering::Release);
        }
        Ok(req_id)
    }

    /// The bytes `[off, off+len)` of the data area.
    ///
    /// # Safety
    /// The range must be inside a lease the caller holds, with every request
    /// into it completed (the engine writes nothing there any more).
    pub(crate) unsafe fn data(&self, off: u64, len: usize) -> &[u8] {
        debug_assert!(off + len as u64 <= self.layout.data_bytes);
        // SAFETY: forwarded from the caller; the mapping lives as long as self.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add((self.layout.data_offset + off) as usize), len) }
    }
}

/// The error of a ring request answered with `-errno`: the engine's, or
/// ECONNRESET when this client failed it because the engine went away.
pub(crate) fn completion_error(path: &str, errno: i32) -> Error {
    let message = format!("{path}: {}", std::io::Error::from_raw_os_error(errno));
    match errno {
        libc::ECONNRESET => Error::Lost(message),
        _ => Error::Engine { errno, message },
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // A forked child: the completion thread exists only in the parent.
            // Close this process's copies of its doorbells and leave the
            // sockets alone (a shutdown would end the parent's session).
            for &fd in &self.completer_fds {
                // SAFETY: these descriptors belong to the thread's stream copies,
                // which in this process nothing will ever use or close.
                unsafe { libc::close(fd) };
            }
            if let Some(t) = self.completer.take() {
                std::mem::forget(t);
            }
            return;
        }
        for s in &self.shards {
            let _ = s.bell.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.completer.take() {
            // The last reference may go on the completion thread itself (in
            // a callback): it ends by itself once the doorbells are shut.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn expire_async(shared: &Shared, timeout: std::time::Duration) {
    let now = Instant::now();
    let late: Vec<Arc<crate::op::AsyncOp>> = shared
        .pending
        .lock()
        .values()
        .filter_map(|p| match &p.to {
            Deliver::Call(op, _) if op.expired(now) => Some(op.clone()),
            _ => None,
        })
        .collect();
    for op in late {
        op.fail_expired(timeout);
    }
}

/// Wait for doorbells, drain completion rings, hand each completion to its
/// caller (a caller that gave up just drops it; the slot then frees).
fn complete_loop(mut bells: Vec<UnixStream>, mut cqs: Vec<Consumer<CqEntry>>, shared: Arc<Shared>, timeout: std::time::Duration) {
    let mut buf = [0u8; 4096];
    let mut last_scan = Instant::now();
    'outer: loop {
        // Once a second: asynchronous reads past their deadline get
        // ETIMEDOUT (callers that wait time out by themselves).
        if last_scan.elapsed() >= std::time::Duration::from_secs(1) {
            last_scan = Instant::now();
            expire_async(&shared, timeout);
        }
        let mut fds: Vec<libc::pollfd> = bells
            .iter()
            .map(|b| libc::pollfd { fd: b.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            match bells[i].read(&mut buf) {
                Ok(0) | Err(_) => break 'outer,
                Ok(_) => {}
            }
            loop {
                match cqs[i].pop() {
                    Ok(Some(c)) => {
                        let p = shared.pending.lock().remove(&c.req_id);
                        if let Some(Pending { to, shard, _lease }) = p {
                            shared.finish(shard);
                            // Let go of the slot before the caller looks, so a
                            // finished op holds the only reference (see Op::trim).
                            drop(_lease);
                            to.deliver(c);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }
    // The engine is gone (or we are closing): fail everything still waiting.
    shared.dead.store(true, Ordering::Release);
    let pending: Vec<(u64, Pending)> = shared.pending.lock().drain().collect();
    for (id, p) in pending {
        p.to.deliver(CqEntry { req_id: id, result: -(libc::ECONNRESET as i64), data_off: 0, object_size: 0 });
    }
    for m in &shared.inflight {
        *m.lock() = 0;
    }
    shared.inflight_freed.notify_all();
    shared.slot_freed.notify_all();
}
