//! The engine's `GET /metrics`: every shard's counters, the control
//! plane's limits, under-storage and read latencies, and this process's FUSE
//! ops, rendered at scrape time. Reads atomics and copies histograms; never
//! waits on a shard.

use crate::metrics::counters::ShardCounters;
use crate::metrics::latency::OpLatency;
use crate::metrics::names;
use crate::metrics::render_process;
use crate::metrics::text::Text;
use crate::server::ctx::ControlCtx;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// What the engine's endpoint exports.
pub struct EngineSources {
    pub ctx: Arc<ControlCtx>,
    /// (mount name, its under-storage latencies).
    pub ufs: Vec<(String, Arc<OpLatency>)>,
}

fn per_shard(t: &mut Text, counters: &[Arc<ShardCounters>], d: &names::Def, get: impl Fn(usize, &ShardCounters) -> u64) {
    t.family(d);
    for (i, c) in counters.iter().enumerate() {
        t.sample(d, &[&i.to_string()], get(i, c));
    }
}

/// The engine's metrics and those of this process (FUSE ops), as exposition text.
pub fn render_engine(s: &EngineSources) -> String {
    let mut t = Text::default();
    let cs = &s.ctx.counters;
    // What clients read directly counts as hits, bytes served and device reads of its shard.
    let direct = |i: usize| s.ctx.direct.as_ref().map(|d| d.feedback.counts(i as u32)).unwrap_or_default();
    per_shard(&mut t, cs, &names::HITS, |i, c| c.hits.load(Relaxed) + direct(i).hits);
    per_shard(&mut t, cs, &names::MISSES, |_, c| c.misses.load(Relaxed));
    per_shard(&mut t, cs, &names::SERVED_BYTES, |i, c| c.bytes_served.load(Relaxed) + direct(i).bytes_served);
    per_shard(&mut t, cs, &names::DEVICE_READ_BYTES, |i, c| c.device_bytes_read.load(Relaxed) + direct(i).device_bytes_read);
    per_shard(&mut t, cs, &names::DIRECT_HITS, |i, _| direct(i).hits);
    per_shard(&mut t, cs, &names::UFS_READ_BYTES, |_, c| c.ufs_bytes_read.load(Relaxed));
    per_shard(&mut t, cs, &names::EVICTED_BLOCKS, |_, c| c.evicted_blocks.load(Relaxed));
    per_shard(&mut t, cs, &names::REINSERTED_BLOCKS, |_, c| c.reinserted_blocks.load(Relaxed));
    per_shard(&mut t, cs, &names::CORRUPT_RECORDS, |_, c| c.corrupt_records.load(Relaxed));
    per_shard(&mut t, cs, &names::WRITE_DROPPED_BLOCKS, |_, c| c.write_dropped.load(Relaxed));
    per_shard(&mut t, cs, &names::READAHEAD_BLOCKS, |_, c| c.readahead_blocks.load(Relaxed));
    per_shard(&mut t, cs, &names::READAHEAD_DROPPED, |_, c| c.readahead_dropped.load(Relaxed));
    per_shard(&mut t, cs, &names::CACHE_WRITE_ERRORS, |_, c| c.cache_write_errors.load(Relaxed));
    per_shard(&mut t, cs, &names::SESSION_INFLIGHT_LIMITED, |_, c| c.session_inflight_limited.load(Relaxed));
    per_shard(&mut t, cs, &names::CAPACITY_BYTES, |_, c| c.capacity_bytes.load(Relaxed));
    per_shard(&mut t, cs, &names::USED_BYTES, |_, c| c.used_bytes.load(Relaxed));
    per_shard(&mut t, cs, &names::BLOCKS, |_, c| c.blocks.load(Relaxed));
    per_shard(&mut t, cs, &names::SEGMENTS, |_, c| c.segments.load(Relaxed));
    per_shard(&mut t, cs, &names::INFLIGHT_REQUESTS, |_, c| c.inflight_requests.load(Relaxed));
    per_shard(&mut t, cs, &names::CACHING_PAUSED, |_, c| c.caching_paused.load(Relaxed));
    t.family(&names::UFS_INFLIGHT_LIMIT);
    for (mount, limit) in s.ctx.ns.mount_limits() {
        t.sample(&names::UFS_INFLIGHT_LIMIT, &[&mount], limit as u64);
    }
    t.family(&names::SESSIONS);
    t.sample(&names::SESSIONS, &[], s.ctx.sessions.load(Relaxed));
    t.family(&names::SESSIONS_OPENED);
    // Session ids start at 1 and are taken once per accepted session.
    t.sample(&names::SESSIONS_OPENED, &[], s.ctx.sessions_opened.load(Relaxed));
    let l = &s.ctx.limits;
    t.family(&names::CONTROL_CONNECTIONS);
    t.sample(&names::CONTROL_CONNECTIONS, &[], l.open.load(Relaxed) as u64);
    t.family(&names::CONTROL_REFUSED);
    t.sample(&names::CONTROL_REFUSED, &["peer"], l.refused_peers.load(Relaxed));
    t.sample(&names::CONTROL_REFUSED, &["connections"], l.refused_connections.load(Relaxed));
    t.family(&names::CONTROL_DROPPED);
    t.sample(&names::CONTROL_DROPPED, &["timeout"], l.dropped_timeout.load(Relaxed));
    t.sample(&names::CONTROL_DROPPED, &["too_large"], l.dropped_too_large.load(Relaxed));
    t.sample(&names::CONTROL_DROPPED, &["bad_frame"], l.dropped_bad_frame.load(Relaxed));
    t.family(&names::CONTROL_FDS_CLOSED);
    t.sample(&names::CONTROL_FDS_CLOSED, &[], l.fds_closed.load(Relaxed));
    t.family(&names::CONTROL_ACCEPT_ERRORS);
    t.sample(&names::CONTROL_ACCEPT_ERRORS, &[], l.accept_errors.load(Relaxed));

    t.family(&names::READ_DURATION);
    for (i, c) in cs.iter().enumerate() {
        let shard = i.to_string();
        // Copy under the lock, format outside it: the shard's publish task
        // takes the same lock.
        let hit = c.read_latency.hit.lock().clone();
        t.histogram(&names::READ_DURATION, &[&shard, "hit"], &hit);
        let miss = c.read_latency.miss.lock().clone();
        t.histogram(&names::READ_DURATION, &[&shard, "miss"], &miss);
    }
    let ufs: Vec<_> = s.ufs.iter().map(|(m, l)| (m, l.snapshot())).collect();
    t.family(&names::UFS_REQUEST_DURATION);
    for (mount, ops) in &ufs {
        for (op, h, _) in ops {
            t.histogram(&names::UFS_REQUEST_DURATION, &[mount, op], h);
        }
    }
    t.family(&names::UFS_REQUEST_ERRORS);
    for (mount, ops) in &ufs {
        for (op, _, errors) in ops {
            t.sample(&names::UFS_REQUEST_ERRORS, &[mount, op], *errors);
        }
    }
    render_process(&mut t);
    t.finish()
}
