//! Every metric name the engine (and a mount in the same process) exports,
//! with its type, labels and help text. This is the one place names are
//! spelled; docs/METRICS.md lists the same table for operators, and a unit
//! test checks that the two agree.

/// Prometheus metric types used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: its name, type, label names and help text.
#[derive(Clone, Copy, Debug)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(name: &'static str, kind: Kind, labels: &'static [&'static str], help: &'static str) -> Def {
    Def { name, kind, labels, help }
}

const SHARD: &[&str] = &["shard"];

// ---- counters, per shard ----
pub const HITS: Def = def("stoker_hits_total", Kind::Counter, SHARD, "Block requests served from the cache (store or write-pending table).");
pub const MISSES: Def = def("stoker_misses_total", Kind::Counter, SHARD, "Block fetches from under storage (concurrent misses of one block count once).");
pub const SERVED_BYTES: Def = def("stoker_served_bytes_total", Kind::Counter, SHARD, "Bytes copied into clients' shared areas.");
pub const DEVICE_READ_BYTES: Def = def("stoker_device_read_bytes_total", Kind::Counter, SHARD, "Bytes read from segment files to serve hits (read amplification: this / stoker_served_bytes_total).");
pub const DIRECT_HITS: Def = def("stoker_direct_hits_total", Kind::Counter, SHARD, "Hits clients read from the segment files themselves (direct reads; also in stoker_hits_total).");
pub const UFS_READ_BYTES: Def = def("stoker_ufs_read_bytes_total", Kind::Counter, SHARD, "Bytes read from under storage by block fetches.");
pub const EVICTED_BLOCKS: Def = def("stoker_evicted_blocks_total", Kind::Counter, SHARD, "Blocks dropped when their segment was reclaimed.");
pub const REINSERTED_BLOCKS: Def = def("stoker_reinserted_blocks_total", Kind::Counter, SHARD, "Hot blocks rewritten into a new segment when theirs was reclaimed.");
pub const CORRUPT_RECORDS: Def = def("stoker_corrupt_records_total", Kind::Counter, SHARD, "Records that failed their checksum or key check on read (served as misses).");
pub const WRITE_DROPPED_BLOCKS: Def = def("stoker_write_dropped_blocks_total", Kind::Counter, SHARD, "Fetched blocks served without being cached because the write queue was full.");
pub const READAHEAD_BLOCKS: Def = def("stoker_readahead_blocks_total", Kind::Counter, SHARD, "Blocks fetched ahead of a sequential reader of a large object.");
pub const CACHE_WRITE_ERRORS: Def = def("stoker_cache_write_errors_total", Kind::Counter, SHARD, "Segment writes that failed (a full disk, an I/O error); each pauses caching on the shard for a back-off of 1 s doubling to 30 s.");
pub const SESSION_INFLIGHT_LIMITED: Def = def("stoker_session_inflight_limited_total", Kind::Counter, SHARD, "Ring entries a session posted while it already had ring_entries requests in flight on the shard; the shard waits for an answer before taking more.");
pub const READAHEAD_DROPPED: Def = def("stoker_readahead_dropped_total", Kind::Counter, SHARD, "Read-ahead fetches not started: 16 already in flight on the shard, or its write queue more than half full.");

// ---- gauges, per shard ----
pub const CAPACITY_BYTES: Def = def("stoker_capacity_bytes", Kind::Gauge, SHARD, "Bytes of segment files the shard may use.");
pub const USED_BYTES: Def = def("stoker_used_bytes", Kind::Gauge, SHARD, "Bytes of segment files the shard uses now.");
pub const BLOCKS: Def = def("stoker_blocks", Kind::Gauge, SHARD, "Blocks in the shard's index.");
pub const SEGMENTS: Def = def("stoker_segments", Kind::Gauge, SHARD, "Segment files of the shard.");
pub const CACHING_PAUSED: Def = def("stoker_caching_paused", Kind::Gauge, SHARD, "1 while caching is paused after a segment write error (misses are served, not cached), else 0.");
pub const INFLIGHT_REQUESTS: Def = def("stoker_inflight_requests", Kind::Gauge, SHARD, "Requests the shard has taken off client rings and not answered yet (queue depth).");

// ---- engine-wide ----
pub const UFS_INFLIGHT_LIMIT: Def = def("stoker_ufs_inflight_limit", Kind::Gauge, &["mount"], "Under-storage requests a mount may have in flight now: its concurrency, halved while the store throttles and won back by successes.");
pub const SESSIONS: Def = def("stoker_sessions", Kind::Gauge, &[], "Client sessions attached now.");
pub const SESSIONS_OPENED: Def = def("stoker_sessions_opened_total", Kind::Counter, &[], "Client sessions accepted since start.");
pub const CONTROL_CONNECTIONS: Def = def("stoker_control_connections", Kind::Gauge, &[], "Control connections open now (at most --control-connections).");
pub const CONTROL_REFUSED: Def = def("stoker_control_refused_total", Kind::Counter, &["reason"], "Control connections refused at accept with an error: reason is peer (credentials not admitted) or connections (--control-connections reached).");
pub const CONTROL_DROPPED: Def = def("stoker_control_dropped_total", Kind::Counter, &["reason"], "Control connections the engine closed: reason is timeout (half a frame, or an answer not taken, for --control-timeout), too_large (a request frame over 64 KiB) or bad_frame.");
pub const CONTROL_FDS_CLOSED: Def = def("stoker_control_fds_closed_total", Kind::Counter, &[], "Descriptors a client sent with a message that takes fewer, closed at once.");
pub const CONTROL_ACCEPT_ERRORS: Def = def("stoker_control_accept_errors_total", Kind::Counter, &[], "Failed accepts on the control socket (EMFILE, ENFILE, ...), each followed by a back-off of 10 ms doubling to 1 s.");

// ---- latency histograms ----
pub const READ_DURATION: Def = def(
    "stoker_read_duration_seconds",
    Kind::Histogram,
    &["shard", "result"],
    "Time a shard spent on one block request, from taking it off the ring until its bytes are in hand (before the copy to the client); result is hit or miss.",
);
pub const UFS_REQUEST_DURATION: Def = def(
    "stoker_ufs_request_duration_seconds",
    Kind::Histogram,
    &["mount", "op"],
    "Under-storage calls including retries and backoff; op is stat, read or list.",
);
pub const UFS_REQUEST_ERRORS: Def = def(
    "stoker_ufs_request_errors_total",
    Kind::Counter,
    &["mount", "op"],
    "Under-storage calls that failed after their last attempt (not-found included).",
);
pub const FUSE_OP_DURATION: Def = def(
    "stoker_fuse_op_duration_seconds",
    Kind::Histogram,
    &["op"],
    "FUSE requests served by a mount in this process, from the kernel's request to the reply.",
);

/// Every family, in the order they are exported.
pub const ALL: &[Def] = &[
    HITS,
    MISSES,
    SERVED_BYTES,
    DEVICE_READ_BYTES,
    DIRECT_HITS,
    UFS_READ_BYTES,
    EVICTED_BLOCKS,
    REINSERTED_BLOCKS,
    CORRUPT_RECORDS,
    WRITE_DROPPED_BLOCKS,
    READAHEAD_BLOCKS,
    READAHEAD_DROPPED,
    CACHE_WRITE_ERRORS,
    SESSION_INFLIGHT_LIMITED,
    CAPACITY_BYTES,
    USED_BYTES,
    BLOCKS,
    SEGMENTS,
    INFLIGHT_REQUESTS,
    CACHING_PAUSED,
    UFS_INFLIGHT_LIMIT,
    SESSIONS,
    SESSIONS_OPENED,
    CONTROL_CONNECTIONS,
    CONTROL_REFUSED,
    CONTROL_DROPPED,
    CONTROL_FDS_CLOSED,
    CONTROL_ACCEPT_ERRORS,
    READ_DURATION,
    UFS_REQUEST_DURATION,
    UFS_REQUEST_ERRORS,
    FUSE_OP_DURATION,
];

/// Under-storage operations timed by `ufs::Guarded` (`read_versioned` is a read).
pub const UFS_OPS: [&str; 3] = ["stat", "read", "list"];

/// FUSE operations timed at the adapter edge; anything else is "other".
pub const FUSE_OPS: [&str; 13] = [
    "lookup", "forget", "getattr", "open", "read", "release", "opendir", "readdir", "readdirplus", "releasedir",
    "statfs", "access", "other",
];

/// Upper bounds (seconds) of the exported histogram buckets: 10 µs to 30 s,
/// roughly three per decade. `+Inf` is added on export.
pub const BUCKETS_SECONDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
