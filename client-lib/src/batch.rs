//! Batched reads: many (path, offset, length) or whole-file reads posted
//! onto the shard rings together, answered in completion order as views into
//! the shared area (or copies). Submission follows free space: a batch larger
//! than the area completes, ops being posted as earlier ones are handed out.
//!
//! When the engine goes away, every item not handed out yet is read again
//! from its start on a new session (answers already handed out, views
//! included, stay as they are).

use crate::plan::EpochPlan;
use crate::op::{check_path, Data, Op, Pipeline, View};
use crate::reconnect::{lost, Link, REISSUE_MAX};
use crate::session::Session;
use crate::error::{Error, Result};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Size of the first request of a whole-file read, before the size is known.
/// Kept small because a slot reserves its whole length while in flight.
pub(crate) const FIRST_PIECE_BYTES: u64 = 256 << 10;

/// One read of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReq {
    pub path: String,
    pub off: u64,
    /// `None`: the whole file (from `off`, which is then 0).
    pub len: Option<u64>,
}

impl ReadReq {
    pub fn file(path: impl Into<String>) -> ReadReq {
        ReadReq { path: path.into(), off: 0, len: None }
    }

    pub fn range(path: impl Into<String>, off: u64, len: u64) -> ReadReq {
        ReadReq { path: path.into(), off, len: Some(len) }
    }
}

/// An item being read in several ops: assembled into a copy.
struct Parts {
    off: u64,
    buf: Vec<u8>,
    left: usize,
    /// End of the first short op: the item's bytes stop there.
    short_at: Option<u64>,
}

enum Job {
    /// First piece of a whole file: tells the size.
    Probe,
    Single,
    Part,
}

/// An iterator over `(index in the batch, bytes or error)`, in completion
/// order. Dropping it abandons what is still in flight (slots free as the
/// engine answers).
pub struct Batch {
    pipe: Pipeline,
    reqs: Vec<ReadReq>,
    paths: Vec<Option<Arc<str>>>,
    next_item: usize,
    todo: VecDeque<(usize, u64, u64)>,
    jobs: HashMap<usize, Job>,
    parts: HashMap<usize, Parts>,
    failed: HashMap<usize, ()>,
    ready: VecDeque<(usize, Result<Data>)>,
    copy: bool,
    plan: Option<Arc<EpochPlan>>,
    link: Arc<Link>,
    /// Items to read again from their start (their session was lost),
    /// before any new item.
    redo: VecDeque<usize>,
    /// An item failed because the engine went away: move to a new session.
    lost: bool,
    /// New sessions since an answer was last handed out.
    restarts: u32,
}

impl Batch {
    pub(crate) fn new(link: Arc<Link>, s: Arc<Session>, reqs: Vec<ReadReq>, copy: bool, plan: Option<Arc<EpochPlan>>) -> Batch {
        Batch {
            plan,
            link,
            redo: VecDeque::new(),
            lost: false,
            restarts: 0,
            pipe: Pipeline::new(s),
            paths: vec![None; reqs.len()],
            reqs,
            next_item: 0,
            todo: VecDeque::new(),
            jobs: HashMap::new(),
            parts: HashMap::new(),
            failed: HashMap::new(),
            ready: VecDeque::new(),
            copy,
        }
    }

    /// Collect every answer, in request order.
    pub fn collect_ordered(self) -> Vec<Result<Data>> {
        let n = self.reqs.len();
        let mut out: Vec<Option<Result<Data>>> = (0..n).map(|_| None).collect();
        for (i, r) in self {
            out[i] = Some(r);
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(Error::Internal("read lost in batch".into())))).collect()
    }

    /// Every request of the batch fails with `e` (none is posted).
    pub(crate) fn fail_all(&mut self, e: Error) {
        for i in 0..self.reqs.len() {
            self.failed.insert(i, ());
            self.ready.push_back((i, Err(e.clone())));
        }
        self.next_item = self.reqs.len();
    }

    fn fail(&mut self, i: usize, e: Error) {
        if lost(&e) && self.restarts < REISSUE_MAX {
            // Read it again on a new session (see `restart`).
            self.pipe.s.mark_lost();
            self.lost = true;
            self.parts.remove(&i);
            self.jobs.remove(&i);
            self.redo.push_back(i);
            return;
        }
        self.failed.insert(i, ());
        self.parts.remove(&i);
        self.jobs.remove(&i);
        self.ready.push_back((i, Err(e)));
    }

    /// Every item not handed out yet goes back to its start on a new
    /// session; the old pipeline (and what is in flight on it) is dropped.
    /// Without a session within the timeout, they fail with its error.
    fn restart(&mut self) {
        self.lost = false;
        self.restarts += 1;
        let mut open: BTreeSet<usize> = self.redo.drain(..).collect();
        open.extend(self.jobs.drain().map(|(i, _)| i));
        open.extend(self.parts.drain().map(|(i, _)| i));
        open.extend(self.todo.drain(..).map(|(i, _, _)| i));
        open.retain(|i| !self.failed.contains_key(i));
        // Ops still in flight on the lost session are abandoned with it.
        let s = self.pipe.s.clone();
        drop(std::mem::replace(&mut self.pipe, Pipeline::new(s)));
        match self.link.session_until(Instant::now() + self.link.opts.timeout) {
            Ok(s) => {
                self.pipe = Pipeline::new(s);
                self.redo = open.into_iter().collect();
            }
            Err(e) => {
                for i in open.into_iter().chain(self.next_item..self.reqs.len()) {
                    self.failed.insert(i, ());
                    self.ready.push_back((i, Err(e.clone())));
                }
                self.next_item = self.reqs.len();
            }
        }
    }

    /// Expand the next request (or one to read again) into jobs.
    fn expand(&mut self) -> bool {
        let i = match self.redo.pop_front() {
            Some(i) => i,
            None if self.next_item < self.reqs.len() => {
                self.next_item += 1;
                self.next_item - 1
            }
            None => return false,
        };
        let r = &self.reqs[i];
        if let Err(e) = check_path(&r.path) {
            self.fail(i, e);
            return true;
        }
        let path: Arc<str> = Arc::from(r.path.as_str());
        let s = &self.pipe.s;
        match r.len {
            None => {
                if let Some(plan) = &self.plan {
                    plan.touch(&r.path);
                }
                let first = FIRST_PIECE_BYTES.min(s.op_bytes_max());
                self.jobs.insert(i, Job::Probe);
                self.todo.push_back((i, r.off, first));
            }
            Some(len) => {
                let ranges = s.op_ranges(&path, r.off, len);
                if ranges.len() == 1 {
                    self.jobs.insert(i, Job::Single);
                    self.todo.push_back((i, r.off, len));
                } else {
                    self.start_parts(i, r.off, len, ranges, &[]);
                }
            }
        }
        self.paths[i] = Some(path);
        true
    }

    fn start_parts(&mut self, i: usize, off: u64, len: u64, ranges: Vec<(u64, u64)>, head: &[u8]) {
        let mut buf = vec![0u8; (len + head.len() as u64) as usize];
        buf[..head.len()].copy_from_slice(head);
        self.jobs.insert(i, Job::Part);
        self.parts.insert(i, Parts { off: off - head.len() as u64, buf, left: ranges.len(), short_at: None });
        // Ahead of new items: this item already holds the caller's attention.
        for r in ranges.into_iter().rev() {
            self.todo.push_front((i, r.0, r.1));
        }
    }

    /// Only [off, off+n) of a job went out (the area is fragmented): a
    /// probe just learns less; other jobs finish the rest as more parts.
    fn posted_prefix(&mut self, i: usize, off: u64, len: u64, n: u64) {
        match self.jobs.get(&i) {
            Some(Job::Probe) | None => {}
            Some(Job::Single) => {
                self.jobs.insert(i, Job::Part);
                self.parts.insert(i, Parts { off, buf: vec![0u8; len as usize], left: 2, short_at: None });
                self.todo.push_front((i, off + n, len - n));
            }
            Some(Job::Part) => {
                if let Some(p) = self.parts.get_mut(&i) {
                    p.left += 1;
                }
                self.todo.push_front((i, off + n, len - n));
            }
        }
    }

    fn hand_out(&mut self, i: usize, op: Op) {
        self.restarts = 0;
        let s = self.pipe.s.clone();
        if self.copy {
            self.ready.push_back((i, Ok(Data::Owned(s.op_bytes(&op).to_vec()))));
            return;
        }
        match View::of(&s, op) {
            Ok(v) => self.ready.push_back((i, Ok(Data::View(v)))),
            Err(op) => self.ready.push_back((i, Ok(Data::Owned(s.op_bytes(&op).to_vec())))),
        }
    }

    fn done(&mut self, i: usize, op: Op) {
        if self.failed.contains_key(&i) {
            return;
        }
        if let Some(e) = op.err.clone() {
            return self.fail(i, e);
        }
        let s = self.pipe.s.clone();
        match self.jobs.get(&i) {
            None => {}
            Some(Job::Single) => {
                self.jobs.remove(&i);
                self.hand_out(i, op);
            }
            Some(Job::Probe) => {
                let (n, size) = (op.bytes(), op.size);
                if n < op.len || size <= n {
                    self.jobs.remove(&i);
                    return self.hand_out(i, op);
                }
                let path = self.paths[i].clone().expect("expanded");
                let whole = s.op_ranges(&path, 0, size);
                if whole.len() == 1 {
                    // Read it again whole: one view (the first part is a cache hit).
                    self.jobs.insert(i, Job::Single);
                    self.todo.push_front((i, 0, size));
                } else {
                    let rest = s.op_ranges(&path, n, size - n);
                    let head = s.op_bytes(&op).to_vec();
                    self.start_parts(i, n, size - n, rest, &head);
                }
            }
            Some(Job::Part) => {
                let Some(p) = self.parts.get_mut(&i) else { return };
                let bytes = s.op_bytes(&op);
                let at = (op.off - p.off) as usize;
                p.buf[at..at + bytes.len()].copy_from_slice(bytes);
                if (bytes.len() as u64) < op.len {
                    let end = op.off + bytes.len() as u64;
                    p.short_at = Some(p.short_at.map_or(end, |x| x.min(end)));
                }
                p.left -= 1;
                if p.left == 0 {
                    let mut p = self.parts.remove(&i).expect("present");
                    self.jobs.remove(&i);
                    if let Some(end) = p.short_at {
                        p.buf.truncate((end - p.off) as usize);
                    }
                    self.restarts = 0;
                    self.ready.push_back((i, Ok(Data::Owned(p.buf))));
                }
            }
        }
    }
}

impl Iterator for Batch {
    type Item = (usize, Result<Data>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if self.lost {
                self.restart();
                continue;
            }
            // Post everything the area has room for.
            loop {
                if self.todo.is_empty() && !self.expand() {
                    break;
                }
                let Some(&(i, off, len)) = self.todo.front() else { continue };
                if self.failed.contains_key(&i) {
                    self.todo.pop_front();
                    continue;
                }
                let path = self.paths[i].clone().expect("expanded");
                match self.pipe.submit(i, &path, off, len, 0) {
                    Ok(Some(n)) => {
                        self.todo.pop_front();
                        if n < len {
                            self.posted_prefix(i, off, len, n);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.todo.pop_front();
                        self.fail(i, e);
                    }
                }
                if !self.ready.is_empty() || self.lost {
                    break;
                }
            }
            if !self.ready.is_empty() || self.lost {
                continue;
            }
            match self.pipe.next_done() {
                None => {
                    if self.todo.is_empty() && self.redo.is_empty() && self.next_item >= self.reqs.len() {
                        return None;
                    }
                }
                Some(Ok((i, op))) => self.done(i, op),
                Some(Err(e)) => {
                    // The engine stopped answering: fail everything not handed out.
                    let open: Vec<usize> = self.jobs.keys().copied().collect();
                    for i in open {
                        self.fail(i, e.clone());
                    }
                    while self.next_item < self.reqs.len() {
                        let i = self.next_item;
                        self.next_item += 1;
                        self.fail(i, e.clone());
                    }
                    self.todo.clear();
                    self.pipe = Pipeline::new(self.pipe.s.clone());
                }
            }
        }
    }
}
