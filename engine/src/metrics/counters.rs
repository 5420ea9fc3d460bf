//! Counters a shard publishes for `stoker stat`: plain atomics written by the
//! shard's thread and read by the control server, never locked.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use stoker_proto::control::{RecoveryStats, ShardStats};

#[derive(Default)]
pub struct ShardCounters {
    pub capacity_bytes: AtomicU64,
    pub used_bytes: AtomicU64,
    pub blocks: AtomicU64,
    pub segments: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub ufs_bytes_read: AtomicU64,
    pub bytes_served: AtomicU64,
    pub device_bytes_read: AtomicU64,
    pub evicted_blocks: AtomicU64,
    pub reinserted_blocks: AtomicU64,
    pub corrupt_records: AtomicU64,
    pub write_dropped: AtomicU64,
    pub inflight_requests: AtomicU64,
    pub expired_blocks: AtomicU64,
    pub quota_evicted_blocks: AtomicU64,
    pub mem_hits: AtomicU64,
    pub pending_write_bytes: AtomicU64,
    pub mem_bytes: AtomicU64,
    pub readahead_blocks: AtomicU64,
    pub readahead_dropped: AtomicU64,
    pub cache_write_errors: AtomicU64,
    /// 1 while caching is paused after a segment write error, else 0.
    pub caching_paused: AtomicU64,
    /// Ring entries taken while the session already had `ring_entries`
    /// requests in flight on this shard (a client breaking the protocol).
    pub session_inflight_limited: AtomicU64,
    pub recovery: parking_lot::Mutex<RecoveryStats>,
    /// Read latencies, published by the shard every second (metrics::latency).
    pub read_latency: crate::metrics::latency::ReadLatency,
}

impl ShardCounters {
    pub fn snapshot(&self, shard: u32) -> ShardStats {
        ShardStats {
            shard,
            capacity_bytes: self.capacity_bytes.load(Relaxed),
            used_bytes: self.used_bytes.load(Relaxed),
            blocks: self.blocks.load(Relaxed),
            segments: self.segments.load(Relaxed),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            ufs_bytes_read: self.ufs_bytes_read.load(Relaxed),
            bytes_served: self.bytes_served.load(Relaxed),
            direct_hits: 0, // filled in from the direct-read feedback area
            device_bytes_read: self.device_bytes_read.load(Relaxed),
            evicted_blocks: self.evicted_blocks.load(Relaxed),
            reinserted_blocks: self.reinserted_blocks.load(Relaxed),
            corrupt_records: self.corrupt_records.load(Relaxed),
            write_dropped: self.write_dropped.load(Relaxed),
            inflight_requests: self.inflight_requests.load(Relaxed),
            expired_blocks: self.expired_blocks.load(Relaxed),
            quota_evicted_blocks: self.quota_evicted_blocks.load(Relaxed),
            mem_hits: self.mem_hits.load(Relaxed),
            pending_write_bytes: self.pending_write_bytes.load(Relaxed),
            mem_bytes: self.mem_bytes.load(Relaxed),
            readahead_blocks: self.readahead_blocks.load(Relaxed),
            readahead_dropped: self.readahead_dropped.load(Relaxed),
            cache_write_errors: self.cache_write_errors.load(Relaxed),
            caching_paused: self.caching_paused.load(Relaxed) != 0,
            session_inflight_limited: self.session_inflight_limited.load(Relaxed),
        }
    }
}
