//! Surviving an engine restart: the client's current session, replaced by a
//! new one when it is dead (the engine went away, or a control call could
//! not reach it) or belongs to the parent of a forked process.
//!
//! A `Link` owns the current session and the epoch plan. A call that failed
//! because the engine went away (`lost`: ECONNRESET or ECONNREFUSED, errnos
//! the engine itself never sends) marks its session lost, waits for a new
//! one and runs again — reads are idempotent. At most one thread opens a
//! session at a time; the others wait for it. Opening backs off from 50 ms,
//! doubling to 1 s, for at most the client's timeout from when the loss was
//! seen; a call is run again at most `REISSUE_MAX` times in a row.
//!
//! Asynchronous reads that failed that way are parked here and re-issued
//! from one thread of the link's own ("stoker-reconnect"), so the completion
//! thread that reported the loss never waits for the engine.
//!
//! Never: post on a session of another process, drop a session while
//! holding a lock (its Drop joins a completion thread that may call back
//! here), or wait for the engine past a caller's deadline.

use crate::plan::EpochPlan;
use crate::session::{lost_err, Session};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::op::ReadDone;
use crate::options::Options;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First wait between attempts to reach the engine again.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Times one call is run again on a new session before its error stands
/// (an engine that comes back and goes away again and again).
pub(crate) const REISSUE_MAX: u32 = 3;

/// True for the errors of a call whose engine went away.
pub(crate) fn lost(e: &Error) -> bool {
    matches!(e.errno(), libc::ECONNRESET | libc::ECONNREFUSED)
}

/// An asynchronous read waiting for a new session.
pub(crate) struct Retry {
    pub(crate) path: Arc<str>,
    pub(crate) off: u64,
    pub(crate) len: u64,
    pub(crate) done: ReadDone,
    /// Fails with the connection error if no session is there by then.
    pub(crate) deadline: Instant,
    /// Times this read was issued again.
    pub(crate) tries: u32,
}

#[derive(Default)]
struct Parked {
    reads: Vec<Retry>,
    /// The re-issuing thread is running.
    worker: bool,
}

pub(crate) struct Link {
    socket: String,
    pub(crate) opts: Options,
    current: Mutex<Arc<Session>>,
    /// Held while a new session is opened: one at a time.
    reconnecting: Mutex<()>,
    /// Posts on its own session: dropped when that one is replaced.
    pub(crate) plan: Mutex<Option<Arc<EpochPlan>>>,
    parked: Mutex<Parked>,
    /// Sessions opened after the first one lost its engine.
    reconnects: AtomicU64,
}

impl Link {
    pub(crate) fn new(socket: &str, opts: Options, s: Session) -> Link {
        Link {
            socket: socket.to_string(),
            opts,
            current: Mutex::new(Arc::new(s)),
            reconnecting: Mutex::new(()),
            plan: Mutex::new(None),
            parked: Mutex::default(),
            reconnects: AtomicU64::new(0),
        }
    }

    /// The current session, as it is (perhaps dead, perhaps the parent's).
    pub(crate) fn current(&self) -> Arc<Session> {
        self.current.lock().clone()
    }

    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// A live session of this process, waiting for a new one until `deadline`.
    pub(crate) fn session_until(&self, deadline: Instant) -> Result<Arc<Session>> {
        let cur = self.current();
        if usable(&cur) {
            return Ok(cur);
        }
        drop(cur);
        let Some(_one) = self.reconnecting.try_lock_until(deadline) else {
            return Err(Error::Unreachable(format!(
                "lost the stoker engine at {} and it did not come back within {:?}",
                self.socket, self.opts.timeout
            )));
        };
        // Another thread may have opened one while this one waited.
        let cur = self.current();
        if usable(&cur) {
            return Ok(cur);
        }
        let forked = cur.pid != std::process::id();
        drop(cur);
        if !forked && !self.opts.reconnect {
            return Err(lost_err());
        }
        let mut wait = BACKOFF_MIN;
        loop {
            match Session::connect(&self.socket, self.opts.clone()) {
                Ok(s) => {
                    let s = Arc::new(s);
                    let old = std::mem::replace(&mut *self.current.lock(), s.clone());
                    let plan = self.plan.lock().take();
                    if !forked {
                        self.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    // Outside the locks: a last reference joins its completion
                    // thread (views and reads of other threads may keep it).
                    drop((old, plan));
                    return Ok(s);
                }
                Err(e) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::Reconnect { within: self.opts.timeout, last: Box::new(e) });
                    }
                    std::thread::sleep(wait.min(deadline - now));
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Run `f` on a live session; when it fails because the engine went
    /// away, run it again on a new one (at most `REISSUE_MAX` times).
    pub(crate) fn retrying<T>(&self, mut f: impl FnMut(&Arc<Session>) -> Result<T>) -> Result<T> {
        let mut s = self.session_until(Instant::now() + self.opts.timeout)?;
        let mut tries = 0;
        loop {
            match f(&s) {
                Err(e) if lost(&e) && tries < REISSUE_MAX => {
                    tries += 1;
                    s.mark_lost();
                    s = self.session_until(Instant::now() + self.opts.timeout)?;
                }
                r => return r,
            }
        }
    }

    /// Keep an asynchronous read until a new session is there, then issue
    /// it again (from the re-issuing thread, started when needed).
    pub(crate) fn park(self: &Arc<Self>, r: Retry) {
        let mut p = self.parked.lock();
        p.reads.push(r);
        if p.worker {
            return;
        }
        p.worker = true;
        drop(p);
        let link = self.clone();
        let spawned = std::thread::Builder::new().name("stoker-reconnect".into()).spawn(move || link.reissue_parked());
        if let Err(e) = spawned {
            let reads = {
                let mut p = self.parked.lock();
                p.worker = false;
                std::mem::take(&mut p.reads)
            };
            let e = Error::io("starting the reconnect thread", e);
            for r in reads {
                (r.done)(Err(e.clone()));
            }
        }
    }

    /// The re-issuing thread: wait for a session, issue every parked read
    /// on it; those whose deadline passed first get the connection error.
    fn reissue_parked(self: Arc<Self>) {
        let client = Client { link: self };
        loop {
            let reads = {
                let mut p = client.link.parked.lock();
                if p.reads.is_empty() {
                    p.worker = false;
                    return;
                }
                std::mem::take(&mut p.reads)
            };
            let first = reads.iter().map(|r| r.deadline).min().expect("not empty");
            match client.link.session_until(first) {
                Ok(_) => {
                    for r in reads {
                        client.read_async_try(r.path, r.off, r.len, r.done, r.tries);
                    }
                }
                Err(e) => {
                    let now = Instant::now();
                    let mut keep = Vec::new();
                    for r in reads {
                        if r.deadline <= now {
                            (r.done)(Err(e.clone()));
                        } else {
                            keep.push(r);
                        }
                    }
                    client.link.parked.lock().reads.extend(keep);
                }
            }
        }
    }
}

fn usable(s: &Session) -> bool {
    s.pid == std::process::id() && !s.is_dead()
}

/// The error a read gets when it may not be issued again.
pub(crate) fn gave_up() -> Error {
    Error::Lost(format!("{} (and again after {REISSUE_MAX} new sessions)", lost_err()))
}
