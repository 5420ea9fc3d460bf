//! Reading a small file while the kernel turns its lookup into a read.
//!
//! Opening and reading a file whose dentry the kernel no longer holds (a
//! trainer's next sample after the page cache was dropped, or simply one not
//! seen before) is two FUSE round trips in a row: LOOKUP, then READ. Each is
//! a hand-off to a session thread and back, and the READ then waits for the
//! device too. When a lookup finds a regular file of at most `max_file`
//! bytes whose bytes are a direct hit in the cache, the session thread that
//! answered it reads them right after its answer, while the kernel hands the
//! lookup back to the application and the application sends the READ: the
//! device read overlaps the round trip instead of following it.
//!
//! The READ is answered from the copy. One that arrives while the copy is
//! still being read is parked on it and answered by the thread that reads it
//! when its read ends, so no session thread ever waits on another.
//!
//! Bounds and costs:
//! - only direct hits are read: a lookup never fetches from under storage
//!   and never waits on the engine;
//! - at most [`SLOTS_MAX`] files and [`BYTES_MAX`] bytes are held; a copy no
//!   READ took within [`SLOT_TTL`] is dropped and counted wasted;
//! - wasted copies turn prefetching off (lookups with no read after them:
//!   `find`, `ls -l`, `stat`, or a kernel page cache already holding the
//!   bytes); one lookup in [`PROBE_EVERY`] still prefetches, and reads that
//!   take those copies turn it back on.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Files held at once.
pub const SLOTS_MAX: usize = 64;
/// Bytes held at once.
pub const BYTES_MAX: u64 = 32 << 20;
/// How long a copy waits for its READ.
pub const SLOT_TTL: Duration = Duration::from_secs(1);
/// While prefetching is off, one lookup in this many still prefetches.
pub const PROBE_EVERY: u32 = 64;
/// Score bounds: a read taken adds one, a copy wasted takes [`WASTE_COST`].
const SCORE_MAX: i32 = 8;
const WASTE_COST: i32 = 4;

/// A READ's answer: the bytes from the copy, or None when there is no copy
/// (the caller reads the usual way).
pub type Waiter = Box<dyn FnOnce(Option<&[u8]>) + Send>;

#[derive(Default, Debug)]
pub struct PrefetchCounters {
    /// Copies started (a lookup found a small file and prefetching on).
    pub started: AtomicU64,
    /// READs answered from a copy (ready, or parked until it was).
    pub reads_served: AtomicU64,
    /// READs that arrived while their copy was being read.
    pub reads_parked: AtomicU64,
    /// Copies dropped without any READ taking them.
    pub wasted: AtomicU64,
    /// Copies abandoned because the bytes were not a direct hit.
    pub not_cached: AtomicU64,
}

/// The claim a lookup makes on its file's copy before it answers.
#[derive(Debug)]
pub struct Ticket {
    pub ino: u64,
    pub size: u64,
    id: u64,
}

enum Fill {
    /// Being read; READs that came meanwhile: (offset, length, answer).
    Loading(Vec<(u64, usize, Waiter)>),
    Ready(Arc<[u8]>),
}

struct Slot {
    id: u64,
    size: u64,
    born: Instant,
    fill: Fill,
    /// Bytes handed to READs so far (the end of the furthest one).
    served_to: u64,
}

#[derive(Default)]
struct State {
    slots: HashMap<u64, Slot>,
    /// (ino, slot id) in the order copies were started; entries of slots
    /// already gone are skipped when they reach the front.
    order: VecDeque<(u64, u64)>,
    bytes: u64,
    next_id: u64,
    score: i32,
    since_probe: u32,
}

pub struct Prefetcher {
    max_file: u64,
    state: Mutex<State>,
    pub counters: PrefetchCounters,
}

impl Prefetcher {
    /// Prefetch files of 1 to `max_file` bytes (0: never).
    pub fn new(max_file: u64) -> Prefetcher {
        let state = State { score: WASTE_COST, ..State::default() };
        Prefetcher { max_file: max_file.min(BYTES_MAX), state: Mutex::new(state), counters: PrefetchCounters::default() }
    }

    pub fn enabled(&self) -> bool {
        self.max_file > 0
    }

    /// Called before a lookup of `ino` (a regular file of `size` bytes) is
    /// answered, so that a READ sent right after the answer finds the slot.
    /// None: nothing to prefetch.
    pub fn begin(&self, ino: u64, size: u64) -> Option<Ticket> {
        if size == 0 || size > self.max_file {
            return None;
        }
        let mut s = self.state.lock();
        self.drop_old(&mut s, Instant::now(), false);
        if s.slots.contains_key(&ino) {
            return None;
        }
        if s.score <= 0 {
            s.since_probe += 1;
            if s.since_probe < PROBE_EVERY {
                return None;
            }
            s.since_probe = 0;
        }
        while s.slots.len() >= SLOTS_MAX || s.bytes + size > BYTES_MAX {
            if !self.drop_old(&mut s, Instant::now(), true) {
                // Everything held is still being read.
                return None;
            }
        }
        let id = s.next_id;
        s.next_id += 1;
        s.slots.insert(ino, Slot { id, size, born: Instant::now(), fill: Fill::Loading(Vec::new()), served_to: 0 });
        s.order.push_back((ino, id));
        s.bytes += size;
        if s.order.len() > 4 * SLOTS_MAX {
            let State { order, slots, .. } = &mut *s;
            order.retain(|(ino, id)| slots.get(ino).is_some_and(|sl| sl.id == *id));
        }
        self.counters.started.fetch_add(1, Relaxed);
        Some(Ticket { ino, size, id })
    }

    /// Called after the lookup's answer: `read` appends the file's bytes to
    /// the buffer and says whether they were a direct hit. READs parked on
    /// the copy are answered here, from this thread.
    pub fn fill(&self, t: Ticket, read: impl FnOnce(&mut Vec<u8>) -> bool) {
        let mut buf = Vec::with_capacity(t.size as usize);
        let ok = read(&mut buf) && buf.len() as u64 == t.size;
        let data: Arc<[u8]> = Arc::from(buf);
        let mut s = self.state.lock();
        let Some(slot) = s.slots.get_mut(&t.ino).filter(|sl| sl.id == t.id) else {
            return;
        };
        let waiters = match std::mem::replace(&mut slot.fill, Fill::Ready(data.clone())) {
            Fill::Loading(w) => w,
            Fill::Ready(_) => unreachable!("only this ticket fills its slot"),
        };
        if !ok {
            s.slots.remove(&t.ino);
            s.bytes -= t.size;
            drop(s);
            self.counters.not_cached.fetch_add(1, Relaxed);
            for (_, _, w) in waiters {
                w(None);
            }
            return;
        }
        let end = waiters.iter().map(|(off, len, _)| off + *len as u64).max().unwrap_or(0);
        slot.served_to = slot.served_to.max(end);
        if slot.served_to >= slot.size {
            s.slots.remove(&t.ino);
            s.bytes -= t.size;
        }
        drop(s);
        for (off, len, w) in waiters {
            w(Some(&data[off as usize..off as usize + len]));
        }
    }

    /// A READ of `len` bytes at `off` of `ino`, whose size is now `size`
    /// (`off + len <= size`). Ok: answered from the copy, now or when it is
    /// read. Err gives `done` back: there is no copy of these bytes.
    pub fn read(&self, ino: u64, size: u64, off: u64, len: usize, done: Waiter) -> Result<(), Waiter> {
        let end = off + len as u64;
        let mut s = self.state.lock();
        let Some(slot) = s.slots.get_mut(&ino) else {
            return Err(done);
        };
        if slot.size != size || end > size {
            // The file changed since its lookup: the copy is stale. A copy
            // still being read keeps its slot (its READs are parked on it).
            if matches!(slot.fill, Fill::Ready(_)) {
                s.bytes -= slot.size;
                s.slots.remove(&ino);
            }
            return Err(done);
        }
        self.counters.reads_served.fetch_add(1, Relaxed);
        match &mut slot.fill {
            Fill::Loading(w) => {
                w.push((off, len, done));
                self.counters.reads_parked.fetch_add(1, Relaxed);
                s.score = (s.score + 1).min(SCORE_MAX);
                Ok(())
            }
            Fill::Ready(data) => {
                let data = data.clone();
                slot.served_to = slot.served_to.max(end);
                if slot.served_to >= slot.size {
                    s.bytes -= slot.size;
                    s.slots.remove(&ino);
                }
                s.score = (s.score + 1).min(SCORE_MAX);
                drop(s);
                done(Some(&data[off as usize..end as usize]));
                Ok(())
            }
        }
    }

    /// The kernel forgot `ino`: its copy goes (unless still being read; the
    /// read drops it at its end, once no READ can come).
    pub fn forget(&self, ino: u64) {
        let mut s = self.state.lock();
        if let Some(slot) = s.slots.get(&ino) {
            if matches!(slot.fill, Fill::Ready(_)) {
                let (size, served) = (slot.size, slot.served_to);
                s.slots.remove(&ino);
                s.bytes -= size;
                if served == 0 {
                    self.wasted(&mut s);
                }
            }
        }
    }

    /// Copies held now (for tests and the exit summary).
    pub fn held(&self) -> (usize, u64) {
        let s = self.state.lock();
        (s.slots.len(), s.bytes)
    }

    fn wasted(&self, s: &mut State) {
        self.counters.wasted.fetch_add(1, Relaxed);
        s.score -= WASTE_COST;
        s.score = s.score.max(-SCORE_MAX);
    }

    /// Drop the oldest ready copy if it has waited longer than [`SLOT_TTL`]
    /// (or at all, with `force`). Returns whether one was dropped.
    fn drop_old(&self, s: &mut State, now: Instant, force: bool) -> bool {
        while let Some(&(ino, id)) = s.order.front() {
            let Some(slot) = s.slots.get(&ino).filter(|sl| sl.id == id) else {
                s.order.pop_front();
                continue;
            };
            if matches!(slot.fill, Fill::Loading(_)) || !(force || now.duration_since(slot.born) > SLOT_TTL) {
                return false;
            }
            let (size, served) = (slot.size, slot.served_to);
            s.order.pop_front();
            s.slots.remove(&ino);
            s.bytes -= size;
            if served == 0 {
                self.wasted(s);
            }
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7) as u8).collect()
    }

    /// A waiter that sends what it got.
    fn waiter(tx: &mpsc::Sender<Option<Vec<u8>>>) -> Waiter {
        let tx = tx.clone();
        Box::new(move |b| tx.send(b.map(|b| b.to_vec())).unwrap())
    }

    #[test]
    fn a_read_after_the_copy_and_a_read_parked_on_it_get_the_bytes() {
        let p = Prefetcher::new(1 << 20);
        let (tx, rx) = mpsc::channel();
        let data = bytes(5000);
        // Ready first, then read.
        let t = p.begin(1, 5000).unwrap();
        p.fill(t, |b| {
            b.extend_from_slice(&data);
            true
        });
        assert!(p.read(1, 5000, 0, 5000, waiter(&tx)).is_ok());
        assert_eq!(rx.try_recv().unwrap().unwrap(), data);
        assert_eq!(p.held(), (0, 0), "a copy read to its end is dropped");
        // Read first (parked), then the copy: the filling thread answers.
        let t = p.begin(2, 5000).unwrap();
        assert!(p.read(2, 5000, 100, 900, waiter(&tx)).is_ok());
        assert!(rx.try_recv().is_err(), "parked until the copy is read");
        p.fill(t, |b| {
            b.extend_from_slice(&data);
            true
        });
        assert_eq!(rx.try_recv().unwrap().unwrap(), data[100..1000]);
        assert_eq!(p.held(), (1, 5000), "a copy read in part stays for the rest");
        assert!(p.read(2, 5000, 1000, 4000, waiter(&tx)).is_ok());
        assert_eq!(rx.try_recv().unwrap().unwrap(), data[1000..]);
        assert_eq!(p.held(), (0, 0));
        assert_eq!(p.counters.reads_served.load(Relaxed), 3);
        assert_eq!(p.counters.reads_parked.load(Relaxed), 1);
    }

    #[test]
    fn no_copy_gives_the_read_back_and_a_miss_answers_parked_reads_with_none() {
        let p = Prefetcher::new(1 << 20);
        let (tx, rx) = mpsc::channel();
        assert!(p.read(9, 10, 0, 10, waiter(&tx)).is_err(), "nothing prefetched");
        assert!(p.begin(3, 0).is_none(), "empty files are not prefetched");
        assert!(p.begin(3, (1 << 20) + 1).is_none(), "nor files over the limit");
        assert!(Prefetcher::new(0).begin(3, 10).is_none(), "0 is off");
        let t = p.begin(3, 10).unwrap();
        assert!(p.begin(3, 10).is_none(), "one copy per file");
        assert!(p.read(3, 10, 0, 10, waiter(&tx)).is_ok());
        p.fill(t, |_| false);
        assert_eq!(rx.try_recv().unwrap(), None, "the parked read goes the usual way");
        assert_eq!(p.held(), (0, 0));
        assert_eq!(p.counters.not_cached.load(Relaxed), 1);
        // A short read is a miss too.
        let t = p.begin(4, 10).unwrap();
        p.fill(t, |b| {
            b.extend_from_slice(&[1, 2, 3]);
            true
        });
        assert!(p.read(4, 10, 0, 10, waiter(&tx)).is_err());
        // A file whose size changed since its lookup is not served the copy.
        let t = p.begin(5, 10).unwrap();
        p.fill(t, |b| {
            b.extend_from_slice(&[7; 10]);
            true
        });
        assert!(p.read(5, 12, 0, 12, waiter(&tx)).is_err());
        assert_eq!(p.held(), (0, 0));
    }

    #[test]
    fn lookups_without_reads_turn_prefetching_off_and_reads_turn_it_back_on() {
        let p = Prefetcher::new(1 << 20);
        let fill = |t: Ticket| {
            p.fill(t, |b| {
                b.extend_from_slice(&[1; 100]);
                true
            })
        };
        // A stat-only walk: copies pile up to the bound, then each new one
        // drops an unread one; prefetching stops soon after.
        let mut started = 0;
        for ino in 0..1000 {
            if let Some(t) = p.begin(ino, 100) {
                started += 1;
                fill(t);
            }
            assert!(p.held().0 <= SLOTS_MAX && p.held().1 <= BYTES_MAX);
        }
        assert!(started < SLOTS_MAX + 1000 / PROBE_EVERY as usize + 2, "{started} copies for 1000 lookups");
        assert!(p.counters.wasted.load(Relaxed) >= 1);
        // Reads follow lookups again: the probes' copies are taken and
        // prefetching comes back for every lookup.
        let (tx, _rx) = mpsc::channel();
        let mut every = 0;
        for ino in 10_000..10_000 + 20 * PROBE_EVERY as u64 {
            if let Some(t) = p.begin(ino, 100) {
                fill(t);
                every += 1;
            }
            let _ = p.read(ino, 100, 0, 100, waiter(&tx));
        }
        assert!(every > 10 * PROBE_EVERY, "prefetching came back: {every}");
    }

    #[test]
    fn bytes_held_stay_under_the_bound() {
        let p = Prefetcher::new(BYTES_MAX);
        let big = BYTES_MAX / 2 + 1;
        let t = p.begin(1, big).unwrap();
        assert!(p.begin(2, big).is_none(), "no room while the first is being read");
        p.fill(t, |b| {
            b.resize(big as usize, 3);
            true
        });
        let t2 = p.begin(2, big).expect("the unread ready copy is dropped for room");
        assert_eq!(p.held(), (1, big));
        drop(t2);
        p.forget(2); // still loading: kept for its fill
        assert_eq!(p.held(), (1, big));
    }
}
