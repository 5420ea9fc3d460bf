//! Counters a shard publishes for `stoker stat`: plain atomics written by the
//! shard's thread and read by the control server, never locked.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use stoker_proto::control::{RecoveryStats, ShardStats};

/// Defines `ShardCounters` and its one conversion to `ShardStats` from one
/// list of counter names: each counter is an `AtomicU64` here and the
/// `u64` of the same name there, so none can be added to one and missed in
/// the other.
macro_rules! shard_counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        #[derive(Default)]
        pub struct ShardCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// 1 while caching is paused after a segment write error, else 0.
            pub caching_paused: AtomicU64,
            pub recovery: parking_lot::Mutex<RecoveryStats>,
            /// Read latencies, published by the shard every second (metrics::latency).
            pub read_latency: crate::metrics::latency::ReadLatency,
        }

        impl ShardCounters {
            pub fn snapshot(&self, shard: u32) -> ShardStats {
                ShardStats {
                    shard,
                    $($name: self.$name.load(Relaxed),)*
                    direct_hits: 0, // filled in from the direct-read feedback area
                    caching_paused: self.caching_paused.load(Relaxed) != 0,
                }
            }
        }
    };
}

shard_counters! {
    capacity_bytes,
    used_bytes,
    blocks,
    segments,
    hits,
    misses,
    ufs_bytes_read,
    bytes_served,
    device_bytes_read,
    evicted_blocks,
    reinserted_blocks,
    corrupt_records,
    write_dropped,
    inflight_requests,
    expired_blocks,
    quota_evicted_blocks,
    mem_hits,
    pending_write_bytes,
    mem_bytes,
    readahead_blocks,
    readahead_dropped,
    cache_write_errors,
    /// Ring entries taken while the session already had `ring_entries`
    /// requests in flight on this shard (a client breaking the protocol).
    session_inflight_limited,
}
