//! Latency recording backed by hdrhistogram.
//!
//! Two kinds of recorder, by how hot the path is:
//! - Shard reads (every block request): recorded into a thread-local
//!   `RefCell` on the shard's own thread — no lock, no atomic — and merged
//!   into the shard's shared [`ReadLatency`] by a task on the same thread
//!   every [`PUBLISH_INTERVAL`]. A scrape therefore lags by up to that long.
//! - Under-storage calls and FUSE ops (microseconds to seconds each, from
//!   several threads): recorded straight into a `Mutex`ed histogram per
//!   operation ([`OpLatency`]); a lock per call is noise next to the call.
//!
//! Nothing here ever blocks a shard on a scrape: the shard only takes its
//! shared histogram's lock once per interval, for a merge.

use super::names;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// How often a shard merges its local read histograms into the shared ones.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Highest value tracked: one hour in nanoseconds (larger values saturate).
const MAX_NS: u64 = 3_600 * 1_000_000_000;

/// A latency histogram in nanoseconds plus the exact sum (hdrhistogram keeps
/// only bucketed values, Prometheus wants `_sum`).
#[derive(Clone)]
pub struct Hist {
    pub(super) h: Histogram<u64>,
    pub(super) sum_ns: u64,
}

impl Default for Hist {
    fn default() -> Hist {
        // 2 significant figures: ~1% bucket error, ~40 KiB per histogram.
        Hist { h: Histogram::new_with_bounds(1, MAX_NS, 2).expect("valid histogram bounds"), sum_ns: 0 }
    }
}

impl Hist {
    pub fn record(&mut self, d: Duration) {
        let ns = (d.as_nanos().min(MAX_NS as u128) as u64).max(1);
        self.h.saturating_record(ns);
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// Merge `other` in (same bounds, so this cannot fail short of overflow,
    /// which saturates).
    fn add(&mut self, other: &Hist) {
        if self.h.add(&other.h).is_err() {
            tracing::warn!("latency histogram merge out of range; dropping a snapshot");
            return;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    fn clear(&mut self) {
        self.h.reset();
        self.sum_ns = 0;
    }

    /// Cumulative counts at each bound of `names::BUCKETS_SECONDS` (the
    /// `+Inf` bucket is `count()`). A recorded value is placed by the middle
    /// of its hdrhistogram bucket, so bounds are honoured to ~1%.
    pub fn cumulative(&self) -> Vec<u64> {
        let bounds = names::BUCKETS_SECONDS;
        let mut per = vec![0u64; bounds.len()];
        for v in self.h.iter_recorded() {
            let secs = self.h.median_equivalent(v.value_iterated_to()) as f64 / 1e9;
            if let Some(i) = bounds.iter().position(|&b| secs <= b) {
                per[i] += v.count_at_value();
            }
        }
        let mut acc = 0;
        per.iter()
            .map(|c| {
                acc += c;
                acc
            })
            .collect()
    }
}

/// The shared read histograms of one shard, split by hit and miss. Lives in
/// `counters::ShardCounters`; written only by the shard's publish task.
#[derive(Default)]
pub struct ReadLatency {
    pub hit: Mutex<Hist>,
    pub miss: Mutex<Hist>,
}

struct LocalRead {
    hit: Hist,
    miss: Hist,
}

thread_local! {
    /// The current shard thread's unpublished read latencies (a shard is one
    /// thread, so thread-local is per shard). Allocated on first use.
    static LOCAL_READ: RefCell<Option<LocalRead>> = const { RefCell::new(None) };
}

/// Record one block request served on this (shard) thread since `start`.
pub fn record_read(hit: bool, start: Instant) {
    let d = start.elapsed();
    LOCAL_READ.with_borrow_mut(|l| {
        let l = l.get_or_insert_with(|| LocalRead { hit: Hist::default(), miss: Hist::default() });
        if hit { l.hit.record(d) } else { l.miss.record(d) }
    });
}

/// Merge this thread's unpublished read latencies into `shared` and clear them.
pub fn publish_reads(shared: &ReadLatency) {
    LOCAL_READ.with_borrow_mut(|l| {
        let Some(l) = l.as_mut() else { return };
        if l.hit.count() > 0 {
            shared.hit.lock().add(&l.hit);
            l.hit.clear();
        }
        if l.miss.count() > 0 {
            shared.miss.lock().add(&l.miss);
            l.miss.clear();
        }
    });
}

/// One histogram per operation of a fixed set (`names::UFS_OPS`,
/// `names::FUSE_OPS`), plus a count of failed calls.
pub struct OpLatency {
    ops: &'static [&'static str],
    hists: Vec<Mutex<Hist>>,
    errors: Vec<std::sync::atomic::AtomicU64>,
}

impl OpLatency {
    pub fn new(ops: &'static [&'static str]) -> OpLatency {
        OpLatency {
            ops,
            hists: ops.iter().map(|_| Mutex::default()).collect(),
            errors: ops.iter().map(|_| Default::default()).collect(),
        }
    }

    fn index(&self, op: &str) -> usize {
        // The last op is the catch-all when the set has an "other".
        self.ops.iter().position(|&o| o == op).unwrap_or(self.ops.len() - 1)
    }

    pub fn record(&self, op: &str, d: Duration, ok: bool) {
        let i = self.index(op);
        self.hists[i].lock().record(d);
        if !ok {
            self.errors[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// (op, histogram copy, errors) for every op with at least one call.
    pub fn snapshot(&self) -> Vec<(&'static str, Hist, u64)> {
        self.ops
            .iter()
            .zip(&self.hists)
            .zip(&self.errors)
            .filter_map(|((op, h), e)| {
                let h = h.lock().clone();
                (h.count() > 0).then(|| (*op, h, e.load(std::sync::atomic::Ordering::Relaxed)))
            })
            .collect()
    }
}

/// FUSE op latencies of this process (one mount per process).
static FUSE_OPS: std::sync::LazyLock<OpLatency> = std::sync::LazyLock::new(|| OpLatency::new(&names::FUSE_OPS));

/// The hook `stoker_fuse::fuse::set_op_hook` takes: record one FUSE op.
pub fn record_fuse_op(op: &'static str, d: Duration) {
    FUSE_OPS.record(op, d, true);
}

pub fn fuse_ops() -> &'static OpLatency {
    &FUSE_OPS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets_place_values_by_bound() {
        let mut h = Hist::default();
        h.record(Duration::from_micros(5)); // <= 10 µs
        h.record(Duration::from_micros(700)); // <= 1 ms
        h.record(Duration::from_millis(2)); // <= 2.5 ms
        h.record(Duration::from_secs(100)); // only +Inf
        let c = h.cumulative();
        let at = |b: f64| c[names::BUCKETS_SECONDS.iter().position(|&x| x == b).unwrap()];
        assert_eq!(at(0.000_01), 1);
        assert_eq!(at(0.000_5), 1);
        assert_eq!(at(0.001), 2);
        assert_eq!(at(0.002_5), 3);
        assert_eq!(at(30.0), 3);
        assert_eq!(h.count(), 4);
        assert!((h.sum_seconds() - 100.002_705).abs() < 1e-9);
    }

    #[test]
    fn local_reads_reach_the_shared_histograms_only_when_published() {
        let shared = ReadLatency::default();
        let t0 = Instant::now();
        record_read(true, t0);
        record_read(true, t0);
        record_read(false, t0);
        assert_eq!(shared.hit.lock().count(), 0);
        publish_reads(&shared);
        assert_eq!(shared.hit.lock().count(), 2);
        assert_eq!(shared.miss.lock().count(), 1);
        publish_reads(&shared); // nothing new: no double counting
        assert_eq!(shared.hit.lock().count(), 2);
    }

    #[test]
    fn unknown_ops_fall_into_other() {
        let l = OpLatency::new(&names::FUSE_OPS);
        l.record("read", Duration::from_micros(3), true);
        l.record("mkdir", Duration::from_micros(3), false);
        let s = l.snapshot();
        assert_eq!(s.iter().map(|x| (x.0, x.1.count(), x.2)).collect::<Vec<_>>(), [("read", 1, 0), ("other", 1, 1)]);
    }
}
