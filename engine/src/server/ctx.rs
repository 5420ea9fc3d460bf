//! What the control plane shares between its threads: the engine's
//! handles (namespace, shards' command queues and counters, policies, the
//! session registry) and its own counters; and the engine statistics built
//! from them. Data only: nothing here serves a connection.

use crate::metrics::counters::ShardCounters;
use crate::namespace::Namespace;
use crate::server::control_limits::ControlCounters;
use crate::shard::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stoker_proto::control::EngineStats;

pub struct ControlCtx {
    pub ns: Arc<Namespace>,
    pub rt: tokio::runtime::Handle,
    pub registry: Registry,
    pub counters: Vec<Arc<ShardCounters>>,
    pub block_bytes: u64,
    pub socket: String,
    pub stopping: AtomicBool,
    /// Sessions opened since start (a count; ids are random, see `session_token`).
    pub sessions_opened: AtomicU64,
    pub sessions: AtomicU64,
    /// One command queue per shard (policies, free, per-path stats).
    pub shard_cmds: Vec<futures::channel::mpsc::UnboundedSender<crate::shard::ShardCmd>>,
    pub policies: Arc<crate::policy::Policies>,
    pub capacity_bytes: u64,
    /// The direct-read table, if direct reads are on.
    pub direct: Option<Arc<crate::direct::DirectAreas>>,
    /// The mounts as configured (secrets masked), for `stoker stat`.
    pub mounts: Vec<stoker_proto::control::MountInfo>,
    /// Who may connect.
    pub peers: crate::server::peer::PeerPolicy,
    /// Open control connections at most (`--control-connections`).
    pub connections_max: usize,
    /// `--control-timeout`: the rest of a started frame, and an answer's write.
    pub io_timeout: Duration,
    /// Limits hit (metrics).
    pub limits: Arc<ControlCounters>,
    /// This node's cluster, if it is in one.
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
    /// The write path, when a mount has a write mode (or written files remain).
    pub writes: Option<Arc<crate::write::WriteCore>>,
}

pub fn engine_stats(ctx: &ControlCtx) -> EngineStats {
    let mut s = EngineStats { sessions: ctx.sessions.load(Ordering::Relaxed), ..Default::default() };
    for (i, c) in ctx.counters.iter().enumerate() {
        let mut sh = c.snapshot(i as u32);
        // Hits clients served themselves count as hits of their shard.
        if let Some(d) = &ctx.direct {
            let dc = d.feedback.counts(i as u32);
            sh.direct_hits = dc.hits;
            sh.hits += dc.hits;
            sh.bytes_served += dc.bytes_served;
            sh.device_bytes_read += dc.device_bytes_read;
        }
        s.capacity_bytes += sh.capacity_bytes;
        s.used_bytes += sh.used_bytes;
        s.blocks += sh.blocks;
        s.hits += sh.hits;
        s.misses += sh.misses;
        s.ufs_bytes_read += sh.ufs_bytes_read;
        s.bytes_served += sh.bytes_served;
        s.device_bytes_read += sh.device_bytes_read;
        let r = c.recovery.lock();
        s.recovery.sealed_segments += r.sealed_segments;
        s.recovery.sealed_entries += r.sealed_entries;
        s.recovery.open_segment_records += r.open_segment_records;
        s.recovery.open_segment_bytes_scanned += r.open_segment_bytes_scanned;
        s.recovery.torn_bytes_dropped += r.torn_bytes_dropped;
        s.recovery.elapsed_us = s.recovery.elapsed_us.max(r.elapsed_us);
        s.shards.push(sh);
    }
    let limits: std::collections::HashMap<String, usize> = ctx.ns.mount_limits().into_iter().collect();
    s.cluster = ctx.cluster.as_ref().map(|c| c.stats());
    if let Some(w) = &ctx.writes {
        (s.persist_pending_files, s.persist_pending_bytes, s.persist_failed_files) = w.pending_totals();
    }
    s.mounts = ctx.mounts.clone();
    for m in &mut s.mounts {
        m.inflight_limit = limits.get(&m.name).copied().unwrap_or(0) as u64;
    }
    s
}
