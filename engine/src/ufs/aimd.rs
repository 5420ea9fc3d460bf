//! A mount-wide limit on requests in flight that backs off when the store
//! throttles: additive increase, multiplicative decrease, as TCP does with
//! its congestion window.
//!
//! Every under-storage attempt holds a permit. A throttling answer (S3
//! `503 SlowDown`, HTTP 429) halves the limit, from the number of requests
//! in flight when it came, at most once per round (a throttle of a request
//! started before the last cut says nothing new). Each full window of
//! successes adds one permit back, up to the mount's maximum. So a store
//! that throttles sees the whole mount slow down, not just the one call
//! that was refused (that call also waits out a longer backoff, `Guarded`).

use parking_lot::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};

#[derive(Debug)]
struct State {
    /// Requests allowed in flight now.
    limit: usize,
    /// Permits to retire as they come back (the limit was cut below the
    /// number in flight).
    debt: usize,
    /// Successes since the limit last changed.
    ok: usize,
    /// Bumped at every cut; a permit remembers the round it started in.
    round: u64,
    inflight: usize,
}

pub struct Aimd {
    sem: Semaphore,
    max: usize,
    st: Mutex<State>,
}

/// One attempt's right to be in flight; hand it back with `Aimd::done`
/// (dropped without that, e.g. when the call is cancelled, it counts as an
/// attempt that ended for another reason).
pub struct Permit<'a> {
    aimd: &'a Aimd,
    permit: Option<SemaphorePermit<'a>>,
    round: u64,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.aimd.release(p, self.round, Outcome::Other);
        }
    }
}

/// How an attempt ended, as far as the limit cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Throttled,
    Other,
}

impl Aimd {
    pub fn new(max: usize) -> Aimd {
        let max = max.max(1);
        Aimd { sem: Semaphore::new(max), max, st: Mutex::new(State { limit: max, debt: 0, ok: 0, round: 0, inflight: 0 }) }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.st.lock().limit
    }

    pub async fn acquire(&self) -> Permit<'_> {
        let permit = self.sem.acquire().await.expect("the semaphore is never closed");
        let mut st = self.st.lock();
        st.inflight += 1;
        Permit { aimd: self, permit: Some(permit), round: st.round }
    }

    pub fn done(&self, mut p: Permit<'_>, outcome: Outcome) {
        if let Some(permit) = p.permit.take() {
            self.release(permit, p.round, outcome);
        }
    }

    fn release(&self, permit: SemaphorePermit<'_>, round: u64, outcome: Outcome) {
        let mut st = self.st.lock();
        match outcome {
            Outcome::Throttled if round == st.round => {
                let new = (st.limit.min(st.inflight) / 2).max(1);
                if new < st.limit {
                    st.debt += st.limit - new;
                    st.limit = new;
                    // Retire idle permits now, the rest as they come back.
                    let idle = self.sem.forget_permits(st.debt);
                    st.debt -= idle;
                    tracing::info!(limit = new, "under storage throttles: fewer requests in flight");
                }
                st.round += 1;
                st.ok = 0;
            }
            Outcome::Ok => {
                st.ok += 1;
                if st.ok >= st.limit && st.limit < self.max {
                    st.limit += 1;
                    st.ok = 0;
                    if st.debt > 0 {
                        st.debt -= 1;
                    } else {
                        self.sem.add_permits(1);
                    }
                }
            }
            _ => {}
        }
        st.inflight -= 1;
        if st.debt > 0 {
            st.debt -= 1;
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throttles_halve_once_per_round_and_successes_win_permits_back() {
        let a = Aimd::new(64);
        // 40 in flight, all throttled: one cut, to 20, however many answer.
        let mut ps = Vec::new();
        for _ in 0..40 {
            ps.push(a.acquire().await);
        }
        for p in ps.drain(..) {
            a.done(p, Outcome::Throttled);
        }
        assert_eq!(a.limit(), 20);
        assert_eq!(a.sem.available_permits(), 20, "permits beyond the new limit were retired");
        // A throttle in the next round cuts again, from what is in flight.
        let p: Vec<_> = futures::future::join_all((0..6).map(|_| a.acquire())).await;
        let mut p = p.into_iter();
        a.done(p.next().unwrap(), Outcome::Throttled);
        assert_eq!(a.limit(), 3);
        for q in p {
            a.done(q, Outcome::Other);
        }
        assert_eq!(a.sem.available_permits(), 3);
        // Each window of successes adds one permit, up to the maximum.
        for _ in 0..3 {
            let p = a.acquire().await;
            a.done(p, Outcome::Ok);
        }
        assert_eq!((a.limit(), a.sem.available_permits()), (4, 4));
        for _ in 0..10_000 {
            let p = a.acquire().await;
            a.done(p, Outcome::Ok);
        }
        assert_eq!((a.limit(), a.sem.available_permits()), (64, 64));
        // A permit dropped without `done` (a cancelled call) comes back too.
        drop(a.acquire().await);
        assert_eq!((a.st.lock().inflight, a.sem.available_permits()), (0, 64));
    }
}
