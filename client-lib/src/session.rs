//! One attached session: control connection, shared area, rings, doorbells
//! and the completion thread that hands finished requests to their callers.

use crate::alloc::SlotAlloc;
use crate::{Error, Options, Result};
use crossbeam_channel::{bounded, Sender};
use memmap2::{MmapOptions, MmapRaw};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use stoker_proto::control::{read_frame, write_frame, Request, Response, Welcome};
use stoker_proto::key::shard_for;
use stoker_proto::ring::{Consumer, CqEntry, Layout, Producer, SqEntry, FLAG_NO_DATA};

pub(crate) fn unexpected(r: Response) -> Error {
    match r {
        Response::Error { errno, message } => Error::new(errno, message),
        other => Error::new(libc::EPROTO, format!("unexpected answer from engine: {other:?}")),
    }
}

struct Pending {
    tx: Sender<CqEntry>,
    slot: (u64, u64),
    shard: usize,
}

/// State shared with the completion thread.
struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    slots: Mutex<SlotAlloc>,
    slot_freed: Condvar,
    /// Requests in flight per shard, kept <= ring_entries so a CQ never overflows.
    inflight: Vec<Mutex<u32>>,
    inflight_freed: Condvar,
    dead: AtomicBool,
}

impl Shared {
    fn free_slot(&self, slot: (u64, u64)) {
        self.slots.lock().free(slot.0, slot.1);
        self.slot_freed.notify_all();
    }

    fn finish(&self, shard: usize) {
        *self.inflight[shard].lock() -= 1;
        self.inflight_freed.notify_all();
    }
}

struct ShardLink {
    sq: Mutex<Producer<SqEntry>>,
    bell: UnixStream,
}

pub struct Client {
    control: Mutex<UnixStream>,
    welcome: Welcome,
    layout: Layout,
    map: MmapRaw,
    shards: Vec<ShardLink>,
    shared: Arc<Shared>,
    next_req: AtomicU64,
    pid: u32,
    opts: Options,
    completer: Option<std::thread::JoinHandle<()>>,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(libc::EIO, format!("{what}: {e}"))
}

fn memfd(bytes: u64) -> Result<File> {
    let name = c"stoker-area";
    // SAFETY: plain syscalls on a descriptor we create and own.
    unsafe {
        let fd = libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
        if fd < 0 {
            return Err(io_err("memfd_create", std::io::Error::last_os_error()));
        }
        let file = File::from(OwnedFd::from_raw_fd(fd));
        file.set_len(bytes).map_err(|e| io_err("sizing shared area", e))?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0 {
            return Err(io_err("sealing shared area", std::io::Error::last_os_error()));
        }
        Ok(file)
    }
}

impl Client {
    pub fn connect_with(socket: &str, opts: Options) -> Result<Client> {
        let mut control = UnixStream::connect(socket).map_err(|e| {
            Error::new(
                libc::ECONNREFUSED,
                format!("cannot reach the stoker engine at {socket}: {e} (is `stoker serve` running? set --socket or STOKER_SOCKET)"),
            )
        })?;
        control.set_read_timeout(Some(opts.timeout)).map_err(|e| io_err("control socket", e))?;
        // Ask the engine for its shard count first: the area layout depends on it.
        write_frame(&mut control, &Request::EngineStat).map_err(|e| io_err("control socket", e))?;
        let shards = match read_frame::<_, Response>(&mut control) {
            Ok(Some(Response::Stats(s))) => s.shards.len() as u32,
            Ok(Some(other)) => return Err(unexpected(other)),
            Ok(None) => return Err(Error::new(libc::ECONNRESET, "engine closed the connection")),
            Err(e) => return Err(io_err("control socket", e)),
        };
        let layout = Layout::new(shards, opts.ring_entries, opts.area_bytes.max(1 << 20));
        let file = memfd(layout.total_bytes())?;
        let map = MmapOptions::new().map_raw(&file).map_err(|e| io_err("mapping shared area", e))?;
        // SAFETY: the mapping is total_bytes() long, fresh and page aligned.
        unsafe { layout.write_header(map.as_mut_ptr()) };

        let hello = stoker_proto::control::encode(&Request::Hello {
            version: stoker_proto::PROTOCOL_VERSION,
            area_bytes: layout.data_bytes,
            ring_entries: layout.ring_entries,
        });
        let fds = [file.as_raw_fd()];
        sendmsg::<()>(control.as_raw_fd(), &[IoSlice::new(&hello)], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
            .map_err(|e| io_err("handshake", e))?;
        let welcome = match read_frame::<_, Response>(&mut control) {
            Ok(Some(Response::Welcome(w))) => w,
            Ok(Some(other)) => return Err(unexpected(other)),
            Ok(None) => return Err(Error::new(libc::ECONNRESET, "engine closed the connection")),
            Err(e) => return Err(io_err("handshake", e)),
        };
        if welcome.shards != shards || welcome.shard_sockets.len() != shards as usize {
            return Err(Error::new(libc::EPROTO, "engine changed its shard count during the handshake"));
        }

        let mut links = Vec::new();
        let mut cqs = Vec::new();
        let mut bells_in = Vec::new();
        for (i, path) in welcome.shard_sockets.iter().enumerate() {
            let mut s = UnixStream::connect(path).map_err(|e| io_err(&format!("connecting to shard socket {path}"), e))?;
            s.write_all(&welcome.session.to_le_bytes()).map_err(|e| io_err("attaching to shard", e))?;
            let base = map.as_mut_ptr();
            // SAFETY: offsets come from the layout of this mapping; this client
            // is the only producer of each SQ and the only consumer of each CQ.
            let (sq, cq) = unsafe {
                (
                    Producer::<SqEntry>::new(base.add(layout.sq_offset(i as u32) as usize), layout.ring_entries),
                    Consumer::<CqEntry>::new(base.add(layout.cq_offset(i as u32) as usize), layout.ring_entries),
                )
            };
            bells_in.push(s.try_clone().map_err(|e| io_err("shard socket", e))?);
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
        });
        let completer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("stoker-completions".into())
                .spawn(move || complete_loop(bells_in, cqs, shared))
                .map_err(|e| io_err("starting completion thread", e))?
        };
        Ok(Client {
            control: Mutex::new(control),
            welcome,
            layout,
            map,
            shards: links,
            shared,
            next_req: AtomicU64::new(1),
            pid: std::process::id(),
            opts,
            completer: Some(completer),
        })
    }

    fn check_alive(&self) -> Result<()> {
        if std::process::id() != self.pid {
            return Err(Error::new(libc::EINVAL, "stoker client used after fork: connect again in the child"));
        }
        if self.shared.dead.load(Ordering::Acquire) {
            return Err(Error::new(libc::ECONNRESET, "connection to the stoker engine was lost"));
        }
        Ok(())
    }

    pub(crate) fn control(&self, req: Request) -> Result<Response> {
        self.check_alive()?;
        let mut c = self.control.lock();
        write_frame(&mut *c, &req).map_err(|e| io_err("control socket", e))?;
        match read_frame::<_, Response>(&mut *c) {
            Ok(Some(Response::Error { errno, message })) => Err(Error::new(errno, message)),
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Error::new(libc::ECONNRESET, "engine closed the connection")),
            Err(e) => Err(io_err("control socket", e)),
        }
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    pub fn block_bytes(&self) -> u64 {
        self.welcome.block_bytes
    }

    /// Largest piece one request asks for: a block, or less if the area is small.
    pub(crate) fn chunk_bytes(&self) -> u64 {
        self.welcome.block_bytes.min(self.layout.data_bytes / 4).max(4096)
    }

    /// Post one piece; returns (req_id, slot).
    fn submit(&self, path: &str, off: u64, len: u64, flags: u32, tx: &Sender<CqEntry>) -> Result<u64> {
        let bs = self.welcome.block_bytes;
        let block = off / bs;
        let shard = shard_for(path, block, self.shards.len());
        let need = len.max(path.len() as u64);
        {
            let mut slots = self.shared.slots.lock();
            if !slots.fits_ever(need) {
                return Err(Error::new(libc::EINVAL, "request larger than the shared area"));
            }
            let slot = loop {
                if let Some(s) = slots.alloc(need) {
                    break s;
                }
                if self.shared.slot_freed.wait_for(&mut slots, self.opts.timeout).timed_out() {
                    return Err(Error::new(libc::ETIMEDOUT, "timed out waiting for shared-area space"));
                }
                self.check_alive()?;
            };
            drop(slots);
            {
                let mut n = self.shared.inflight[shard].lock();
                while *n >= self.layout.ring_entries {
                    if self.shared.inflight_freed.wait_for(&mut n, self.opts.timeout).timed_out() {
                        drop(n);
                        self.shared.free_slot(slot);
                        return Err(Error::new(libc::ETIMEDOUT, "timed out waiting for a ring entry"));
                    }
                }
                *n += 1;
            }
            // SAFETY: the slot is inside the data area and ours until its completion.
            unsafe {
                let dst = self.map.as_mut_ptr().add((self.layout.data_offset + slot.0) as usize);
                std::ptr::copy_nonoverlapping(path.as_ptr(), dst, path.len());
            }
            let req_id = self.next_req.fetch_add(1, Ordering::Relaxed);
            self.shared.pending.lock().insert(req_id, Pending { tx: tx.clone(), slot, shard });
            let entry = SqEntry {
                req_id,
                buf_off: slot.0,
                buf_len: slot.1,
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
                self.shared.free_slot(slot);
                return Err(Error::new(libc::EIO, "request ring full or corrupt"));
            }
            if (&self.shards[shard].bell).write_all(&[1]).is_err() {
                self.shared.dead.store(true, Ordering::Release);
            }
            Ok(req_id)
        }
    }

    /// Read `buf.len()` bytes at `off`, in block-sized pieces posted at once.
    /// Returns (bytes read, object size).
    pub(crate) fn read_at(&self, path: &str, off: u64, buf: &mut [u8]) -> Result<(usize, u64)> {
        self.check_alive()?;
        if !path.starts_with('/') {
            return Err(Error::new(libc::EINVAL, format!("bad path {path:?}: must start with /")));
        }
        let pieces = self.pieces(off, buf.len() as u64);
        let (tx, rx) = bounded(pieces.len().max(1));
        let mut ids = HashMap::new();
        let mut first_err = None;
        for (i, &(poff, plen)) in pieces.iter().enumerate() {
            match self.submit(path, poff, plen, 0, &tx) {
                Ok(id) => {
                    ids.insert(id, i);
                }
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            }
        }
        let mut lens = vec![0u64; pieces.len()];
        let mut size = 0;
        for _ in 0..ids.len() {
            let c = rx
                .recv_timeout(self.opts.timeout)
                .map_err(|_| Error::new(libc::ETIMEDOUT, format!("{path}: no answer from the engine in {:?}", self.opts.timeout)))?;
            let i = ids[&c.req_id];
            if c.result < 0 {
                first_err.get_or_insert(Error::new(-c.result as i32, errno_message(path, -c.result as i32)));
            } else if first_err.is_none() {
                let (poff, plen) = pieces[i];
                let n = (c.result as u64).min(plen);
                let at = (poff - off) as usize;
                // SAFETY: data_off/n lie in the data area (the slot we gave, n <= slot).
                unsafe {
                    let src = self.map.as_ptr().add((self.layout.data_offset + c.data_off) as usize);
                    std::ptr::copy_nonoverlapping(src, buf[at..].as_mut_ptr(), n as usize);
                }
                lens[i] = n;
                size = c.object_size;
            }
            let p = self.shared.pending.lock().remove(&c.req_id);
            if let Some(p) = p {
                self.shared.free_slot(p.slot);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        // Bytes are contiguous up to the first short piece.
        let mut n = 0u64;
        for (i, &(_, plen)) in pieces.iter().enumerate() {
            n += lens[i];
            if lens[i] < plen {
                break;
            }
        }
        Ok((n as usize, size))
    }

    pub(crate) fn prefetch_range(&self, path: &str, off: u64, len: u64) -> Result<u64> {
        self.check_alive()?;
        let pieces = self.pieces(off, len);
        let (tx, rx) = bounded(pieces.len().max(1));
        let mut sent = 0;
        let mut err = None;
        for &(poff, _) in &pieces {
            // Whole blocks: a prefetch caches what a read of the block would.
            let bs = self.welcome.block_bytes;
            let block_start = poff / bs * bs;
            match self.submit(path, block_start, self.chunk_bytes().min(bs), FLAG_NO_DATA, &tx) {
                Ok(_) => sent += 1,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let mut size = 0;
        for _ in 0..sent {
            let c = rx.recv_timeout(self.opts.timeout).map_err(|_| Error::new(libc::ETIMEDOUT, format!("{path}: no answer from the engine")))?;
            if c.result < 0 {
                err.get_or_insert(Error::new(-c.result as i32, errno_message(path, -c.result as i32)));
            } else {
                size = c.object_size;
            }
            if let Some(p) = self.shared.pending.lock().remove(&c.req_id) {
                self.shared.free_slot(p.slot);
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(size),
        }
    }

    /// Split [off, off+len) at block boundaries and at the chunk size.
    fn pieces(&self, off: u64, len: u64) -> Vec<(u64, u64)> {
        let bs = self.welcome.block_bytes;
        let chunk = self.chunk_bytes();
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
}

pub(crate) fn errno_message(path: &str, errno: i32) -> String {
    let what = std::io::Error::from_raw_os_error(errno);
    format!("{path}: {what}")
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("session", &self.welcome.session).field("shards", &self.shards.len()).finish()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            return; // the session is the parent's; leave its sockets alone
        }
        for s in &self.shards {
            let _ = s.bell.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.completer.take() {
            let _ = t.join();
        }
    }
}

/// Wait for doorbells, drain completion rings, hand each completion to its
/// caller (or free its slot if the caller gave up).
fn complete_loop(mut bells: Vec<UnixStream>, mut cqs: Vec<Consumer<CqEntry>>, shared: Arc<Shared>) {
    let mut buf = [0u8; 4096];
    'outer: loop {
        let mut fds: Vec<libc::pollfd> = bells
            .iter()
            .map(|b| libc::pollfd { fd: b.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
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
                        let p = shared.pending.lock().get(&c.req_id).map(|p| (p.tx.clone(), p.shard));
                        if let Some((tx, shard)) = p {
                            shared.finish(shard);
                            if tx.send(c).is_err() {
                                if let Some(p) = shared.pending.lock().remove(&c.req_id) {
                                    shared.free_slot(p.slot);
                                }
                            }
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
        let _ = p.tx.send(CqEntry { req_id: id, result: -(libc::ECONNRESET as i64), data_off: 0, object_size: 0 });
    }
    for m in &shared.inflight {
        *m.lock() = 0;
    }
    shared.inflight_freed.notify_all();
    shared.slot_freed.notify_all();
}
