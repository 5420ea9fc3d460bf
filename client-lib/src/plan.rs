//! Epoch-aware prefetch: the caller hands over the order it will read files
//! in (a shuffled epoch), and every read of a planned file keeps the next
//! `window` files of the plan being fetched into the engine's cache, in plan
//! order, with no-data requests (the engine fetches and caches the block,
//! copying nothing back). The window bounds both the engine's extra under-
//! storage traffic and the cache space the plan takes ahead of the reader.
//!
//! Never: post for a session of another process (a plan inherited across
//! `fork` goes quiet), or run more than `window` files ahead of the reader.

use crate::op::check_path;
use crate::session::{Lease, Session};
use crate::error::Result;
use crossbeam_channel::{bounded, Sender};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use stoker_proto::ring::{CqEntry, FLAG_NO_DATA};

struct Cursor {
    /// Plan entries up to here have been read (or skipped past).
    read: usize,
    /// Plan entries up to here have been asked for.
    issued: usize,
}

pub struct EpochPlan {
    s: Arc<Session>,
    paths: Vec<Arc<str>>,
    index: HashMap<Arc<str>, usize>,
    window: usize,
    cursor: Mutex<Cursor>,
    /// Answers to prefetches are not awaited: the receiver is gone, so the
    /// completion thread drops them and their (path-sized) slots free.
    tx: Sender<CqEntry>,
}

impl EpochPlan {
    pub(crate) fn new<S: AsRef<str>>(s: Arc<Session>, paths: &[S], window: usize) -> Result<EpochPlan> {
        let mut v = Vec::with_capacity(paths.len());
        let mut index = HashMap::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            check_path(p.as_ref())?;
            let p: Arc<str> = Arc::from(p.as_ref());
            index.entry(p.clone()).or_insert(i);
            v.push(p);
        }
        let (tx, _) = bounded(1);
        let plan = EpochPlan { s, paths: v, index, window, cursor: Mutex::new(Cursor { read: 0, issued: 0 }), tx };
        plan.top_up(&mut plan.cursor.lock());
        Ok(plan)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn window(&self) -> usize {
        self.window
    }

    /// Plan entries asked for so far (at most `read + window`).
    pub fn issued(&self) -> usize {
        self.cursor.lock().issued
    }

    /// Note a read of `path`; fetch ahead from there.
    pub fn touch(&self, path: &str) {
        let Some(&i) = self.index.get(path) else { return };
        let mut c = self.cursor.lock();
        if i + 1 > c.read {
            c.read = i + 1;
        }
        self.top_up(&mut c);
    }

    fn top_up(&self, c: &mut Cursor) {
        if self.s.pid != std::process::id() || self.s.is_dead() {
            return;
        }
        let end = self.paths.len().min(c.read + self.window);
        c.issued = c.issued.max(c.read);
        while c.issued < end {
            let p = &self.paths[c.issued];
            // Never wait for area space: a full area means reads are busy;
            // the next read tops the window up again.
            let lease: Option<Arc<Lease>> = match self.s.lease(p.len() as u64, false) {
                Ok(Some(l)) => Some(l),
                _ => None,
            };
            let Some(lease) = lease else { break };
            if self.s.post(p, 0, self.s.chunk_bytes_for(p), FLAG_NO_DATA, &lease, 0, crate::session::Deliver::Chan(self.tx.clone())).is_err() {
                break;
            }
            c.issued += 1;
        }
    }
}
