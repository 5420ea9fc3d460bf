//! Reads as operations on the shared area. An `Op` is one contiguous lease
//! covering a byte range, posted as one ring entry per block piece, so its
//! bytes end up side by side and can be handed out in place (`View`).
//! A `Pipeline` keeps many ops in flight and never blocks for area space
//! while it could make progress by finishing one of its own ops instead:
//! the shared area can be smaller than a batch and nothing deadlocks.
//!
//! Never: hand out a view before every piece of its op has completed (the
//! engine could still be writing it), or free a lease a request still uses.

use crate::error::{Error, Result};
use crate::session::{completion_error, Deliver, Lease, Session};
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stoker_proto::ring::{CqEntry, FLAG_NO_DATA};

/// Longest path a request carries (the engine refuses longer).
const PATH_BYTES_MAX: usize = 4096;

pub(crate) fn check_path(path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(Error::Invalid(format!("bad path {path:?}: must start with /")));
    }
    if path.len() > PATH_BYTES_MAX {
        return Err(Error::NameTooLong(format!("path of {} bytes is too long", path.len())));
    }
    Ok(())
}

/// One range in flight (or done): a lease and its pieces' answers.
pub(crate) struct Op {
    pub(crate) lease: Arc<Lease>,
    pub(crate) path: Arc<str>,
    pub(crate) off: u64,
    pub(crate) len: u64,
    /// (request id, offset of the piece in the lease, piece length).
    pieces: Vec<(u64, u64, u64)>,
    got: Vec<u64>,
    remaining: usize,
    pub(crate) size: u64,
    pub(crate) err: Option<Error>,
}

impl Op {
    /// Bytes placed contiguously from the start (short at EOF).
    pub(crate) fn bytes(&self) -> u64 {
        let mut n = 0;
        for (i, &(_, _, plen)) in self.pieces.iter().enumerate() {
            n += self.got[i];
            if self.got[i] < plen {
                break;
            }
        }
        n
    }

    fn complete(&mut self, c: &CqEntry) {
        let Some(i) = self.pieces.iter().position(|p| p.0 == c.req_id) else { return };
        if c.result < 0 {
            let errno = (-c.result) as i32;
            self.err.get_or_insert(completion_error(&self.path, errno));
        } else {
            self.got[i] = (c.result as u64).min(self.pieces[i].2);
            self.size = c.object_size;
        }
        self.remaining -= 1;
    }

    pub(crate) fn finished(&self) -> bool {
        self.remaining == 0
    }

    /// Lease space for [off, off+len) of `path` and post its pieces; `None`
    /// when `wait` is false and the area is full right now.
    pub(crate) fn start(s: &Session, path: &Arc<str>, off: u64, len: u64, flags: u32, tx: &Sender<CqEntry>, wait: bool) -> Result<Option<Op>> {
        s.check_alive()?;
        let plen = path.len() as u64;
        let mut pieces = s.pieces(path, off, len);
        if pieces.is_empty() {
            pieces.push((off, 0)); // an empty read still asks, to learn the size
        }
        // A no-data request only carries its path: every piece writes it at 0.
        let no_data = flags & FLAG_NO_DATA != 0;
        let last_at = pieces.last().map(|p| p.0 - off).unwrap_or(0);
        let need = if no_data { plen } else { len.max(last_at + plen) };
        let Some(lease) = s.lease(need, wait)? else { return Ok(None) };
        let mut op = Op {
            lease,
            path: path.clone(),
            off,
            len,
            pieces: Vec::with_capacity(pieces.len()),
            got: vec![0; pieces.len()],
            remaining: 0,
            size: 0,
            err: None,
        };
        for (poff, pl) in pieces {
            let at = if no_data { 0 } else { poff - off };
            let id = s.post(path, poff, pl, flags, &op.lease, at, Deliver::Chan(tx.clone()))?;
            op.pieces.push((id, at, pl));
            op.remaining += 1;
        }
        Ok(Some(op))
    }
}

/// Many ops in flight on one completion channel, each tagged by the caller.
pub(crate) struct Pipeline {
    pub(crate) s: Arc<Session>,
    tx: Sender<CqEntry>,
    rx: Receiver<CqEntry>,
    by_req: HashMap<u64, u64>,
    live: HashMap<u64, (usize, Op)>,
    next_op: u64,
}

impl Pipeline {
    pub(crate) fn new(s: Arc<Session>) -> Pipeline {
        let (tx, rx) = unbounded();
        Pipeline { s, tx, rx, by_req: HashMap::new(), live: HashMap::new(), next_op: 0 }
    }

    pub(crate) fn idle(&self) -> bool {
        self.live.is_empty()
    }

    /// Start an op tagged `tag` for [off, off+len), or for a prefix of it:
    /// returns the bytes posted (`None`: nothing, the area is busy: finish
    /// an op first). Blocks for space only when nothing of this pipeline is in
    /// flight; then, if views held elsewhere leave the area too fragmented
    /// for the whole range, it posts the prefix that fits.
    pub(crate) fn submit(&mut self, tag: usize, path: &Arc<str>, off: u64, len: u64, flags: u32) -> Result<Option<u64>> {
        let mut op = Op::start(&self.s, path, off, len, flags, &self.tx, false)?;
        if op.is_none() && self.idle() {
            let plen = (path.len() as u64).div_ceil(4096) * 4096;
            let room = self.s.largest_free().saturating_sub(plen) / 4096 * 4096;
            op = if room >= 4096 && room < len && flags & FLAG_NO_DATA == 0 {
                Op::start(&self.s, path, off, room, flags, &self.tx, false)?
            } else {
                None
            };
            if op.is_none() {
                op = Op::start(&self.s, path, off, len, flags, &self.tx, true)?;
            }
        }
        let Some(op) = op else { return Ok(None) };
        let id = self.next_op;
        self.next_op += 1;
        for p in &op.pieces {
            self.by_req.insert(p.0, id);
        }
        let posted = op.len;
        self.live.insert(id, (tag, op));
        Ok(Some(posted))
    }

    pub(crate) fn submit_no_data(&mut self, path: &Arc<str>, off: u64, len: u64) -> Result<bool> {
        Ok(self.submit(usize::MAX, path, off, len, FLAG_NO_DATA)?.is_some())
    }

    /// Wait for the next op to finish; `None` when nothing is in flight.
    pub(crate) fn next_done(&mut self) -> Option<Result<(usize, Op)>> {
        loop {
            if self.live.is_empty() {
                return None;
            }
            let c = match self.rx.recv_timeout(self.s.opts.timeout) {
                Ok(c) => c,
                Err(_) => {
                    return Some(Err(Error::Timeout(format!("no answer from the engine in {:?}", self.s.opts.timeout))));
                }
            };
            let Some(id) = self.by_req.remove(&c.req_id) else { continue };
            let Some((_, op)) = self.live.get_mut(&id) else { continue };
            op.complete(&c);
            if op.remaining == 0 {
                return self.live.remove(&id).map(Ok);
            }
        }
    }
}

/// Bytes of one read: in place in the shared area, or a copy.
pub enum Data {
    /// A view into the shared area; the space is released on drop.
    View(View),
    Owned(Vec<u8>),
}

impl Data {
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Data::View(v) => v.to_vec(),
            Data::Owned(v) => v,
        }
    }

    /// True when the bytes are in shared memory (zero copy).
    pub fn is_view(&self) -> bool {
        matches!(self, Data::View(_))
    }
}

impl std::ops::Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Data::View(v) => v,
            Data::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for Data {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Data({} bytes, {})", self.len(), if self.is_view() { "view" } else { "owned" })
    }
}

/// Finished bytes in the shared area, held until dropped. While views hold
/// more than half the area, further reads come back as copies instead, so
/// held views can slow a loader down but never stall it.
pub struct View {
    session: Arc<Session>,
    lease: Arc<Lease>,
    len: usize,
}

impl View {
    /// A view of a finished op, or `None` (then copy) when views already
    /// hold half the area.
    #[allow(clippy::result_large_err)] // the op comes back to be copied, not propagated
    pub(crate) fn of(session: &Arc<Session>, mut op: Op) -> std::result::Result<View, Op> {
        // A whole-file probe reserves more than small files need: keep only
        // what holds the bytes (every piece has answered, so no request can
        // still write past them).
        let n = op.bytes();
        if let Some(l) = Arc::get_mut(&mut op.lease) {
            l.trim(n);
        }
        let held = &session.shared.held_bytes;
        let cap = session.layout.data_bytes / 2;
        let len = op.lease.len;
        let mut cur = held.load(Ordering::Relaxed);
        loop {
            if cur + len > cap {
                return Err(op);
            }
            match held.compare_exchange_weak(cur, cur + len, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(x) => cur = x,
            }
        }
        Ok(View { session: session.clone(), lease: op.lease, len: n as usize })
    }
}

impl std::ops::Deref for View {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: a view is made only from a finished op, and holds its lease.
        unsafe { self.session.data(self.lease.off, self.len) }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.session.shared.held_bytes.fetch_sub(self.lease.len, Ordering::AcqRel);
    }
}

/// What an asynchronous read calls when it is done: the bytes (in place in
/// the shared area, valid during the call) or the error.
pub type ReadDone = Box<dyn FnOnce(Result<&[u8]>) + Send>;

/// A read whose answer is handed to a callback on the client's completion
/// thread (no caller thread waits for it). Holds its slot and the mapping
/// until the callback has run.
pub(crate) struct AsyncOp {
    map: Arc<memmap2::MmapRaw>,
    data_offset: u64,
    lease: Arc<Lease>,
    path: Arc<str>,
    /// When the callback gets ETIMEDOUT if the engine has not answered (the
    /// slot stays reserved until it does, so a late answer lands nowhere).
    deadline: Instant,
    state: parking_lot::Mutex<AsyncState>,
}

struct AsyncState {
    /// (offset in the lease, length asked) per piece.
    pieces: Vec<(u64, u64)>,
    got: Vec<u64>,
    remaining: usize,
    err: Option<Error>,
    done: Option<ReadDone>,
}

impl AsyncOp {
    /// Post a read of `[off, off + len)` (one op's worth: see `op_ranges`)
    /// whose answer goes to `done` on the completion thread. Waits only for
    /// shared-area space and ring entries (bounded by the timeout).
    pub(crate) fn start(s: &Session, path: &Arc<str>, off: u64, len: u64, done: ReadDone) {
        let mut pieces = s.pieces(path, off, len);
        if pieces.is_empty() {
            pieces.push((off, 0));
        }
        let plen = path.len() as u64;
        let last_at = pieces.last().map(|p| p.0 - off).unwrap_or(0);
        let lease = match s.check_alive().and_then(|_| s.lease(len.max(last_at + plen), true)) {
            Ok(Some(l)) => l,
            Ok(None) => return done(Err(Error::Busy("no shared-area space".into()))),
            Err(e) => return done(Err(e)),
        };
        let n = pieces.len();
        let op = Arc::new(AsyncOp {
            map: s.map.clone(),
            data_offset: s.layout.data_offset,
            lease: lease.clone(),
            path: path.clone(),
            deadline: Instant::now() + s.opts.timeout,
            state: parking_lot::Mutex::new(AsyncState {
                pieces: pieces.iter().map(|&(poff, pl)| (poff - off, pl)).collect(),
                got: vec![0; n],
                remaining: n,
                err: None,
                done: Some(done),
            }),
        });
        for (i, &(poff, pl)) in pieces.iter().enumerate() {
            if let Err(e) = s.post(path, poff, pl, 0, &lease, poff - off, Deliver::Call(op.clone(), i)) {
                // The pieces never posted complete now, with the error.
                let errno = e.errno();
                for j in i..n {
                    op.complete(j, &CqEntry { req_id: 0, result: -(errno as i64), data_off: 0, object_size: 0 });
                }
                return;
            }
        }
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Hand the callback ETIMEDOUT, unless it has run already.
    pub(crate) fn fail_expired(&self, timeout: Duration) {
        let Some(done) = self.state.lock().done.take() else { return };
        done(Err(Error::Timeout(format!("{}: no answer from the engine in {timeout:?}", self.path))));
    }

    /// Piece `idx` finished (or failed, or will never be posted).
    pub(crate) fn complete(&self, idx: usize, c: &CqEntry) {
        let mut st = self.state.lock();
        if c.result < 0 {
            let errno = (-c.result) as i32;
            st.err.get_or_insert(completion_error(&self.path, errno));
        } else if let Some(g) = st.got.get_mut(idx) {
            *g = c.result as u64;
        }
        st.remaining = st.remaining.saturating_sub(1);
        if st.remaining > 0 {
            return;
        }
        let Some(done) = st.done.take() else { return };
        if let Some(e) = st.err.take() {
            drop(st);
            return done(Err(e));
        }
        // The bytes up to the first short piece (end of object).
        let mut n = 0;
        for (i, &(_, plen)) in st.pieces.iter().enumerate() {
            n += st.got[i].min(plen);
            if st.got[i] < plen {
                break;
            }
        }
        drop(st);
        // SAFETY: every request into the lease has completed, so the engine
        // writes nothing there any more; the lease and the mapping are held
        // by `self` for the duration of the call.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add((self.data_offset + self.lease.off) as usize), n as usize)
        };
        done(Ok(bytes));
    }
}
