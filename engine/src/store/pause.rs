//! Pausing writes after a write error.
//!
//! A failed segment write (ENOSPC on a full disk, or any other I/O error)
//! pauses caching on the store for a back-off interval: 1 s, doubling with
//! each failed retry up to 30 s. While paused, puts fail at once without
//! touching the disk; the first put after the interval tries again, and a
//! success resumes caching. The log says so once per pause: a warning when
//! caching stops, an info line when it resumes.
//!
//! This module only keeps the state; it never does I/O.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// First back-off after a write error.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest back-off between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(super) struct Pause {
    /// `Some(retry_at)` while paused.
    until: Cell<Option<Instant>>,
    backoff: Cell<Duration>,
    errors: Cell<u64>,
}

impl Pause {
    /// Whether writes are paused now (the back-off has not run out).
    pub fn holding(&self, now: Instant) -> bool {
        self.until.get().is_some_and(|at| now < at)
    }

    /// Whether caching is paused (a write failed and none succeeded since).
    pub fn paused(&self) -> bool {
        self.until.get().is_some()
    }

    /// Write errors so far.
    pub fn errors(&self) -> u64 {
        self.errors.get()
    }

    /// A segment write failed: pause (or keep paused) for the next back-off.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        self.errors.set(self.errors.get().saturating_add(1));
        let backoff = if self.paused() { (self.backoff.get() * 2).min(BACKOFF_MAX) } else { BACKOFF_MIN };
        if !self.paused() {
            tracing::warn!(%error, "store: a segment write failed; caching paused (reads are served without caching) and retried after a back-off of 1 s doubling to 30 s");
        } else {
            tracing::debug!(%error, backoff_s = backoff.as_secs(), "store: retry of a segment write failed");
        }
        self.backoff.set(backoff);
        self.until.set(Some(Instant::now() + backoff));
    }

    /// A segment write succeeded: resume if paused.
    pub fn succeeded(&self) {
        if self.until.take().is_some() {
            tracing::info!(write_errors = self.errors.get(), "store: segment writes succeed again; caching resumed");
        }
        self.backoff.set(BACKOFF_MIN);
    }
}
