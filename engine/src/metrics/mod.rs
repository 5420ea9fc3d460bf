//! `metrics/` — counters and latencies, and their Prometheus text.
//!
//! Owns: the per-shard counters (`counters.rs`, atomics a shard writes and
//! anyone reads), latency histograms (`latency.rs`), metric names (`names.rs`),
//! the exposition format (`text.rs`) and the HTTP responder (`http.rs`).
//! Must never: import the control plane, a shard or the store (they depend
//! on this, not the reverse: the read path records into counters here, and
//! `server/scrape.rs` renders the engine's endpoint), block a shard, or do
//! I/O on the data path.
//!
//! Metrics: the Prometheus endpoint (`--metrics ADDR`, `GET /metrics`) and
//! the latency histograms behind it.
//!
//! - `names` — every metric name, type, label set and help text (the one
//!   place they are spelled; docs/METRICS.md mirrors it).
//! - `latency` — hdrhistogram recorders: lock-free thread-local ones for the
//!   shard hot path, mutexed ones for under-storage calls and FUSE ops.
//! - `text` — the exposition format.
//! - `http` — the tiny HTTP responder on its own thread.
//!
//! Counters and gauges are read from `counters::ShardCounters` (atomics the
//! shards already keep) at scrape time, by `server/scrape.rs`. This module never blocks a shard
//! and never does I/O on the data path.
pub mod counters;
pub mod http;
pub mod latency;
pub mod names;
pub mod text;

use latency::OpLatency;
use std::sync::Arc;
use text::Text;

pub use latency::{fuse_ops, record_fuse_op, record_read};

/// Under-storage latencies of one mount, shared by its `ufs::Guarded`.
pub fn ufs_latency() -> Arc<OpLatency> {
    Arc::new(OpLatency::new(&names::UFS_OPS))
}

/// Metrics of this process that do not belong to an engine: FUSE ops of a
/// mount. Exported only once a mount has served a request.
pub fn render_process(t: &mut Text) {
    let ops = fuse_ops().snapshot();
    if ops.is_empty() {
        return;
    }
    t.family(&names::FUSE_OP_DURATION);
    for (op, h, _) in &ops {
        t.histogram(&names::FUSE_OP_DURATION, &[op], h);
    }
}

/// An endpoint for a process without an engine (`stoker mount --socket`):
/// FUSE op latencies only.
pub fn start_process_endpoint(addr: std::net::SocketAddr) -> std::io::Result<http::Endpoint> {
    http::Endpoint::start(
        addr,
        Arc::new(|| {
            let mut t = Text::default();
            render_process(&mut t);
            t.finish()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::names;

    /// docs/METRICS.md lists every name defined here, and nothing else.
    #[test]
    fn docs_list_every_metric() {
        let doc = include_str!("../../../docs/METRICS.md");
        for d in names::ALL {
            let row = format!("| `{}` | {} |", d.name, d.kind.as_str());
            assert!(doc.contains(&row), "docs/METRICS.md lacks the row for {} (expected `{row}`)", d.name);
        }
        let documented = doc.lines().filter(|l| l.starts_with("| `stoker_")).count();
        assert_eq!(documented, names::ALL.len(), "docs/METRICS.md lists metrics that names.rs does not define");
    }
}
