//! Engine configuration: what `stoker serve` flags and the TOML config set.
//! Defaults are documented on each field and validated in `EngineConfig::validate`.

use crate::error::{EngineError, Result};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Default)]
pub struct MountSpec {
    /// Namespace name: the mount is served at `/NAME/...`.
    pub name: String,
    /// `file:///abs/dir`, `s3://bucket/prefix`, `gs://`, `az://`, `oss://`,
    /// `cos://`, `webhdfs://`, `http(s)://` (docs/STORAGE.md).
    pub uri: String,
    /// Per-mount under-storage options (`--mount-opt NAME:key=value`, or a
    /// `[mounts.options]` table), e.g. endpoint, region, access_key_id.
    /// Values of secret keys never appear in logs or errors. Default none.
    /// The stoker-level keys `sync` and `read_only` are taken out of this
    /// list by `EngineConfig::validate` (into the fields below) and never
    /// reach the under storage.
    pub options: Vec<(String, String)>,
    /// Metadata sync interval of this mount (`sync=DUR|never`): None = the
    /// engine-wide `metadata_sync`; Some(None) = never re-check. Default None.
    pub sync: Option<Option<Duration>>,
    /// Read-only flag (`read_only=true`). stoker does not write to under
    /// storage at all yet, so every mount is read-only in effect; the flag is
    /// recorded and logged, and any future write path must refuse it.
    /// Default false.
    pub read_only: bool,
    /// This mount's block size (`block_size=SIZE`, a power of two from 4 KiB
    /// up to the engine's `--block-size`). Smaller blocks suit random reads
    /// of large objects (less read per small range); None = the engine's.
    pub block_bytes: Option<u64>,
    /// Blocks read ahead of a sequential reader of a large object
    /// (`readahead=N`, 0 = off); None = the engine's `--readahead`.
    pub readahead: Option<u64>,
    /// In a cluster, keep a local copy of blocks read from their owner
    /// (`peer_copy=true`): repeat reads of them on this node are local hits,
    /// at the cost of cache space held twice. Default false: each block is
    /// kept once in the cluster, by its owner, so the cluster's cache is
    /// the sum of its nodes' (docs/CLUSTER.md).
    pub peer_copy: bool,
    /// Write mode (`write=async|through|cache-only`): None = read-only,
    /// every write refused (EROFS). Default None.
    pub write: Option<WriteMode>,
}

/// How a mount takes writes (docs/SEMANTICS.md, "Writes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Acknowledged once durable on the engine's disk; persisted to under
    /// storage in the background.
    Async,
    /// Acknowledged once under storage has it.
    Through,
    /// Kept in the cache only, never persisted (scratch data).
    CacheOnly,
}

impl WriteMode {
    pub fn parse(v: &str) -> Option<WriteMode> {
        match v.trim().to_ascii_lowercase().as_str() {
            "async" => Some(WriteMode::Async),
            "through" => Some(WriteMode::Through),
            "cache-only" | "cache_only" => Some(WriteMode::CacheOnly),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Async => "async",
            WriteMode::Through => "through",
            WriteMode::CacheOnly => "cache-only",
        }
    }

    /// Whether written files go to under storage at all.
    pub fn persists(self) -> bool {
        self != WriteMode::CacheOnly
    }
}

impl MountSpec {
    /// Move the stoker-level options (`sync`, `read_only`) out of `options`
    /// into their fields; the rest are under-storage options.
    pub fn take_mount_options(&mut self) -> std::result::Result<(), String> {
        let mut rest = Vec::with_capacity(self.options.len());
        for (k, v) in std::mem::take(&mut self.options) {
            match k.as_str() {
                "sync" => {
                    let d = parse_duration(&v).map_err(|e| format!("mount {:?}: sync: {e}", self.name))?;
                    self.sync = Some(d);
                }
                "read_only" => {
                    self.read_only = parse_bool(&v).ok_or_else(|| format!("mount {:?}: read_only: expected true or false, got {v:?}", self.name))?;
                }
                "write" => {
                    self.write = Some(WriteMode::parse(&v).ok_or_else(|| {
                        format!("mount {:?}: write: expected async, through or cache-only, got {v:?}", self.name)
                    })?);
                }
                "block_size" => {
                    let b = parse_size(&v).map_err(|e| format!("mount {:?}: block_size: {e}", self.name))?;
                    self.block_bytes = Some(b);
                }
                "peer_copy" => {
                    self.peer_copy = parse_bool(&v).ok_or_else(|| format!("mount {:?}: peer_copy: expected true or false, got {v:?}", self.name))?;
                }
                "readahead" => {
                    let n: u64 = v.trim().parse().map_err(|_| {
                        format!("mount {:?}: readahead: expected a number of blocks (0 = off), got {v:?}", self.name)
                    })?;
                    self.readahead = Some(n.min(READAHEAD_MAX));
                }
                _ => rest.push((k, v)),
            }
        }
        self.options = rest;
        if self.read_only && self.write.is_some() {
            return Err(format!("mount {:?}: read_only=true and a write mode cannot go together", self.name));
        }
        Ok(())
    }

    /// This mount's sync interval given the engine-wide one.
    pub fn sync_or(&self, engine_wide: Option<Duration>) -> Option<Duration> {
        self.sync.unwrap_or(engine_wide)
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
    }
}

impl std::fmt::Debug for MountSpec {
    /// Secret option values are masked: configs get logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountSpec")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("options", &crate::ufs::opendal_ufs::redacted(&self.options))
            .field("sync", &self.sync)
            .field("read_only", &self.read_only)
            .field("block_bytes", &self.block_bytes)
            .field("readahead", &self.readahead)
            .field("peer_copy", &self.peer_copy)
            .field("write", &self.write)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where segments live. Required.
    pub cache_dir: PathBuf,
    /// Total bytes of segment files across shards. Default 10 GiB.
    pub capacity_bytes: u64,
    /// Number of shards (glommio executors). Default: number of cores.
    pub shards: usize,
    /// Control socket path; shard sockets are `{socket}.shard{N}`.
    pub socket: String,
    pub mounts: Vec<MountSpec>,
    /// Large objects are cached in blocks of this size. Default 4 MiB.
    /// A mount may use smaller blocks (`block_size=`).
    pub block_bytes: u64,
    /// Blocks fetched ahead of a sequential reader of a large object (the
    /// window starts at one block and doubles up to this). Default 4; 0 = off.
    pub readahead_blocks: u64,
    /// Segment file size. Default 256 MiB (clamped so a shard holds >= 4 segments).
    pub segment_bytes: u64,
    /// Injected latency per under-storage request (demo/test knob). Default 0.
    pub ufs_latency: Duration,
    /// Bandwidth cap on under-storage reads in bytes/s (demo/test knob). Default none.
    pub ufs_bandwidth: Option<u64>,
    /// Threads running under-storage requests (HTTP, signing, parsing).
    /// Default: half the cores, at least 1 — the shards have the rest. On 2
    /// cores 1 thread beat 2 in the S3 cold pass (docs/STORAGE.md).
    pub ufs_threads: usize,
    /// Timeout of one under-storage call. Default 30 s.
    pub ufs_timeout: Duration,
    /// Attempts per under-storage call on retryable errors. Default 3.
    pub ufs_attempts: u32,
    /// How long attributes and listings are trusted; None = never re-check
    /// (immutable datasets). Default 60 s.
    pub metadata_sync: Option<Duration>,
    /// Bytes of blocks waiting to be written per shard before new misses are
    /// served without being cached. Default 256 MiB.
    pub write_queue_bytes_max: u64,
    /// What a full cache drops first. Default `fifo-reinsert`.
    pub eviction: crate::store::Eviction,
    /// io_uring submission queue depth of each shard's executor. Default 128.
    pub io_depth: usize,
    /// DRAM tier for the most recently served blocks, split between shards.
    /// Default 0 (off).
    pub memory_cache_bytes: u64,
    /// Per-mount quotas: (mount name, bytes). Default none.
    pub quotas: Vec<(String, u64)>,
    /// Entries of the direct-read table (clients on this box read hits
    /// from the segment files themselves); 0 turns direct reads off.
    /// Default 1,048,576 (the most). Off while the DRAM tier is on.
    pub direct_entries: u64,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (docs/METRICS.md).
    /// Port 0 picks a free port (`Engine::metrics_addr`). Default none.
    pub metrics: Option<std::net::SocketAddr>,
    /// Control connections open at once at most; more are refused with an
    /// error. Default 256 (docs/SECURITY.md).
    pub control_connections_max: usize,
    /// Longest wait for the rest of a control frame once it started, and
    /// for a client to take an answer. Default 10 s.
    pub control_timeout: Duration,
    /// Membership of a cluster (`--cluster ...`, docs/CLUSTER.md). Default none: alone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// `--socket-group`: sockets are given this group, and its members are
    /// admitted besides root and the engine's own uid. Default none.
    pub socket_group: Option<u32>,
}

impl EngineConfig {
    pub fn new(cache_dir: PathBuf) -> EngineConfig {
        EngineConfig {
            cache_dir,
            capacity_bytes: 10 << 30,
            shards: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            socket: stoker_proto::socket_from_env(None),
            mounts: Vec::new(),
            block_bytes: 4 << 20,
            readahead_blocks: 4,
            segment_bytes: 256 << 20,
            ufs_latency: Duration::ZERO,
            ufs_bandwidth: None,
            ufs_threads: (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) / 2).max(1),
            ufs_timeout: Duration::from_secs(30),
            ufs_attempts: 3,
            metadata_sync: Some(Duration::from_secs(60)),
            write_queue_bytes_max: 256 << 20,
            eviction: crate::store::Eviction::default(),
            quotas: Vec::new(),
            memory_cache_bytes: 0,
            direct_entries: crate::direct::ENTRIES_DEFAULT,
            io_depth: 128,
            metrics: None,
            control_connections_max: CONTROL_CONNECTIONS_DEFAULT,
            control_timeout: CONTROL_TIMEOUT_DEFAULT,
            cluster: None,
            socket_group: None,
        }
    }

    pub fn validate(&mut self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidArgument(m));
        if self.shards == 0 || self.shards > 256 {
            return bad(format!("--shards must be 1..=256, got {}", self.shards));
        }
        // The store's records hold at most one 4 MiB block (format.rs).
        if self.block_bytes < 4096 || self.block_bytes > (4 << 20) || !self.block_bytes.is_power_of_two() {
            return bad(format!("block size must be a power of two in 4KiB..=4MiB, got {}", self.block_bytes));
        }
        if self.write_queue_bytes_max < self.block_bytes || self.write_queue_bytes_max > (64 << 30) {
            return bad(format!(
                "--write-queue must be at least the block size ({}) and at most 64G, got {}",
                self.block_bytes, self.write_queue_bytes_max
            ));
        }
        let per_shard = self.capacity_bytes / self.shards as u64;
        // A shard needs room for a few segments, and a segment for a few blocks.
        let min_per_shard = 4 * (self.block_bytes + 8192);
        if per_shard < min_per_shard {
            return bad(format!(
                "--capacity {} is too small for {} shards with {} byte blocks (need at least {} per shard)",
                self.capacity_bytes, self.shards, self.block_bytes, min_per_shard
            ));
        }
        // The engine's bounds (four segments a shard, a block record a
        // segment, at most the default), then the store's one rule.
        let asked = self.segment_bytes.min(per_shard / 4).max(self.block_bytes + 8192).min(crate::store::DEFAULT_SEGMENT_BYTES);
        self.segment_bytes = crate::store::clamp_segment_bytes(asked.div_ceil(4096) * 4096, per_shard);
        if self.mounts.is_empty() {
            return bad("no mounts: pass at least one --mount NAME=URI".into());
        }
        let mut names = std::collections::HashSet::new();
        for m in &mut self.mounts {
            m.take_mount_options().map_err(EngineError::InvalidArgument)?;
            if m.name.is_empty() || m.name.contains('/') || m.name.starts_with('.') {
                return bad(format!("bad mount name {:?}: a plain name like 'train'", m.name));
            }
            if !names.insert(m.name.clone()) {
                return bad(format!("mount name {:?} given twice", m.name));
            }
            if let Some(b) = m.block_bytes {
                if b < 4096 || b > self.block_bytes || !b.is_power_of_two() {
                    return bad(format!(
                        "mount {:?}: block_size must be a power of two from 4KiB to the engine's block size ({}), got {b}",
                        m.name, self.block_bytes
                    ));
                }
            }
        }
        for (m, q) in &self.quotas {
            if !self.mounts.iter().any(|x| &x.name == m) {
                return bad(format!("--quota {m}=...: no --mount named {m:?}"));
            }
            if *q < self.shards as u64 * (self.block_bytes + 8192) {
                return bad(format!("--quota {m}={q} is smaller than one block per shard"));
            }
        }
        if !(1..=256).contains(&self.ufs_threads) {
            return bad(format!("--ufs-threads must be 1..=256, got {}", self.ufs_threads));
        }
        if self.readahead_blocks > READAHEAD_MAX {
            return bad(format!("--readahead-blocks must be 0..={READAHEAD_MAX}, got {}", self.readahead_blocks));
        }
        if !(8..=4096).contains(&self.io_depth) || !self.io_depth.is_power_of_two() {
            return bad(format!("--io-depth must be a power of two in 8..=4096, got {}", self.io_depth));
        }
        if self.direct_entries > stoker_proto::direct::ENTRIES_MAX {
            return bad(format!("--direct-entries must be 0..={}, got {}", stoker_proto::direct::ENTRIES_MAX, self.direct_entries));
        }
        if !(1..=CONTROL_CONNECTIONS_MAX).contains(&self.control_connections_max) {
            return bad(format!(
                "--control-connections must be 1..={CONTROL_CONNECTIONS_MAX}, got {}",
                self.control_connections_max
            ));
        }
        if self.control_timeout.is_zero() || self.control_timeout > CONTROL_TIMEOUT_MAX {
            return bad(format!("--control-timeout must be over 0 and at most {CONTROL_TIMEOUT_MAX:?}, got {:?}", self.control_timeout));
        }
        if self.ufs_attempts == 0 {
            self.ufs_attempts = 1;
        }
        Ok(())
    }

    pub fn per_shard_capacity(&self) -> u64 {
        self.capacity_bytes / self.shards as u64
    }
}

/// Default cap on open control connections (`--control-connections`).
pub const CONTROL_CONNECTIONS_DEFAULT: usize = 256;
/// Default `--control-timeout`: longest wait for the rest of a frame once
/// its first byte came, and for a client to take an answer.
pub const CONTROL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Most `--control-connections` (each is a thread while open).
pub const CONTROL_CONNECTIONS_MAX: usize = 65536;
/// Longest `--control-timeout`.
pub const CONTROL_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// Largest read-ahead window, in blocks.
pub const READAHEAD_MAX: u64 = 64;

pub use stoker_proto::units::{parse_duration, parse_size, DURATION_SECS_MAX, SIZE_BYTES_MAX};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_clamps_segments_and_rejects_tiny_capacity() {
        let mut c = EngineConfig::new("/tmp/x".into());
        c.mounts.push(MountSpec { name: "m".into(), uri: "file:///tmp".into(), ..Default::default() });
        c.shards = 2;
        c.capacity_bytes = 1 << 30;
        c.validate().unwrap();
        assert!(c.segment_bytes <= (1 << 30) / 2 / 4);
        c.capacity_bytes = 1 << 20;
        assert!(c.validate().is_err());
    }

    #[test]
    fn mount_sync_and_read_only_are_taken_out_of_the_ufs_options() {
        let opts = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut m = MountSpec {
            name: "m".into(),
            uri: "s3://b".into(),
            options: opts(&[("region", "x"), ("sync", "never"), ("read_only", "true"), ("block_size", "1M"), ("readahead", "8")]),
            ..Default::default()
        };
        m.take_mount_options().unwrap();
        assert_eq!(m.options, opts(&[("region", "x")]));
        assert_eq!(m.sync, Some(None));
        assert!(m.read_only);
        assert_eq!((m.block_bytes, m.readahead), (Some(1 << 20), Some(8)));
        assert_eq!(m.sync_or(Some(Duration::from_secs(60))), None);

        let mut m = MountSpec { name: "m".into(), options: opts(&[("sync", "1s")]), ..Default::default() };
        m.take_mount_options().unwrap();
        assert_eq!(m.sync_or(None), Some(Duration::from_secs(1)));
        assert!(!m.read_only);
        let m = MountSpec::default();
        assert_eq!(m.sync_or(Some(Duration::from_secs(7))), Some(Duration::from_secs(7)));

        for bad in [("sync", "soon"), ("read_only", "maybe"), ("block_size", "big"), ("readahead", "lots")] {
            let mut m = MountSpec { name: "m".into(), options: opts(&[bad]), ..Default::default() };
            assert!(m.take_mount_options().is_err(), "{bad:?} accepted");
        }
    }
}
