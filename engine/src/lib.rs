//! The stoker cache engine: shards that own NVMe segment stores, the
//! under-storage layer, the namespace cache and the server clients attach to.
//!
//! Threads: one glommio executor per shard (the data path), a small tokio
//! runtime for under-storage I/O, and one thread per control connection.
//! `Engine::start` returns once every shard has recovered its store and all
//! sockets listen, so "the socket answers" means "the cache is ready".

pub mod cluster;
pub mod config;
pub mod direct;
pub mod durable;
pub mod error;
pub mod metrics;
pub mod namespace;
pub mod policy;
pub mod server;
pub mod shard;
pub mod store;
pub mod ufs;
pub mod write;

// Paths other crates use, kept where they were before the folders.
pub use server::peer;

use crate::config::EngineConfig;
use crate::error::{io_ctx, EngineError, Result};
use crate::server::{admin, control};
use crate::shard::{readahead, supervise};
use futures::channel::oneshot;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use config::{parse_duration, parse_size, MountSpec};

/// On-disk layout version; part of the cache directory path.
pub const CACHE_LAYOUT_DIR: &str = "stoker-v1";

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq, Debug)]
struct LayoutFile {
    shards: usize,
    block_bytes: u64,
}

pub struct Engine {
    socket: String,
    stops: Vec<oneshot::Sender<()>>,
    shards: Vec<glommio::ExecutorJoinHandle<()>>,
    control: Option<std::thread::JoinHandle<()>>,
    ctx: Arc<server::ctx::ControlCtx>,
    rt: Option<tokio::runtime::Runtime>,
    /// The Prometheus endpoint, when `EngineConfig::metrics` asks for one.
    metrics: Option<metrics::http::Endpoint>,
    /// SIGTERM and SIGINT, caught from before the engine answers (a signal
    /// sent as soon as it does must stop it cleanly, not kill it).
    signals: parking_lot::Mutex<Option<Signals>>,
    _lock: File,
}

/// Take the cache directory for this engine alone, and check that it was laid
/// out with the same shard count and block size (keys depend on both).
fn prepare_cache_dir(cfg: &EngineConfig) -> Result<(PathBuf, File)> {
    let root = cfg.cache_dir.join(CACHE_LAYOUT_DIR);
    std::fs::create_dir_all(&root).map_err(io_ctx(format!("creating cache dir {}", root.display())))?;
    let lock = File::create(root.join("lock")).map_err(io_ctx("creating cache dir lock"))?;
    // An engine killed a moment ago may still hold it while it is torn down.
    let waiting = || {
        tracing::info!(cache_dir = %cfg.cache_dir.display(), "cache dir is locked by another stoker engine; waiting up to {:?} for it to exit", store::LOCK_WAIT)
    };
    if !store::flock_wait(&lock, store::LOCK_WAIT, waiting).map_err(io_ctx("locking cache dir"))? {
        return Err(EngineError::InvalidArgument(format!(
            "cache dir {} is in use by another stoker engine (waited {:?} for it to exit)",
            cfg.cache_dir.display(),
            store::LOCK_WAIT
        )));
    }
    let want = LayoutFile { shards: cfg.shards, block_bytes: cfg.block_bytes };
    let layout_path = root.join("layout.json");
    match std::fs::read(&layout_path) {
        Ok(bytes) => {
            let have: LayoutFile = serde_json::from_slice(&bytes).map_err(|e| {
                EngineError::Store(format!("{}: unreadable ({e}); remove the cache dir to start afresh", layout_path.display()))
            })?;
            if have != want {
                return Err(EngineError::InvalidArgument(format!(
                    "cache dir {} was created with --shards {} and block size {}; start with the same values or use a new cache dir",
                    cfg.cache_dir.display(), have.shards, have.block_bytes
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            durable::write(&layout_path, &serde_json::to_vec(&want).expect("layout serializes"))
                .map_err(io_ctx("writing cache layout"))?;
        }
        Err(e) => return Err(io_ctx("reading cache layout")(e)),
    }
    Ok((root, lock))
}

/// Refuse to steal the socket of a live engine; clear a stale one. The
/// socket gets mode 0660 and the socket group (peer.rs).
fn claim_socket(path: &str, group: Option<u32>) -> Result<std::os::unix::net::UnixListener> {
    if Path::new(path).exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(EngineError::InvalidArgument(format!("another stoker engine is serving on {path}")));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = Path::new(path).parent() {
        peer::make_socket_dir(dir, group).map_err(io_ctx(format!("creating the socket directory {}", dir.display())))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_ctx(format!("binding {path}")))?;
    // Until this is done the socket has the umask's mode; a peer connecting
    // meanwhile still has its credentials checked at accept.
    peer::restrict_socket(Path::new(path), group).map_err(io_ctx(format!("setting the mode and group of {path}")))?;
    Ok(listener)
}

/// Reads whose buffers the I/O memory pool cannot hold are heap
/// allocations of up to a block (4 MiB). glibc would give each one over
/// 128 KiB its own mmap, and hand freed memory back to the kernel, so every
/// such read paid an munmap, whose TLB shootdown interrupts every other
/// core (6-7% of the engine's CPU on a warm epoch). Keeping them in the heap
/// reuses the same pages; the heap then stays at its peak, which the queue
/// and in-flight bounds keep small. Process-wide; set once.
fn keep_freed_buffers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: mallopt only changes allocator thresholds; it is called
        // once, before the engine's threads allocate.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        }
    });
}

/// SIGTERM and SIGINT, caught on the I/O runtime.
type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

/// The tokio runtime for under-storage I/O, and the signals the engine
/// stops on (caught from before the engine answers).
fn start_io_runtime(cfg: &EngineConfig) -> Result<(tokio::runtime::Runtime, Signals)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.ufs_threads)
        .max_blocking_threads(64)
        .thread_name("stoker-ufs")
        .enable_all()
        .build()
        .map_err(io_ctx("starting the I/O runtime"))?;
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _in_rt = rt.enter();
        let term = signal(SignalKind::terminate()).map_err(io_ctx("installing the SIGTERM handler"))?;
        let int = signal(SignalKind::interrupt()).map_err(io_ctx("installing the SIGINT handler"))?;
        (term, int)
    };
    Ok((rt, signals))
}

/// Every mount's under storage, wrapped in throttling (if asked), timeouts,
/// retries and its concurrency limit; and each mount's latency recorder.
type Mounts = BTreeMap<String, Arc<ufs::Guarded>>;
/// (mount name, its under-storage latencies), for the metrics endpoint.
type UfsLatencies = Vec<(String, Arc<metrics::latency::OpLatency>)>;
fn open_mounts(cfg: &EngineConfig) -> Result<(Mounts, UfsLatencies)> {
    let mut mounts = BTreeMap::new();
    let mut ufs_latency = Vec::new();
    for m in &cfg.mounts {
        let raw = ufs::open_with(&m.uri, &m.options).map_err(EngineError::InvalidArgument)?;
        let raw: Arc<dyn ufs::Ufs> = if cfg.ufs_latency.is_zero() && cfg.ufs_bandwidth.is_none() {
            raw
        } else {
            Arc::new(ufs::throttle::Throttled::new(raw, cfg.ufs_latency, cfg.ufs_bandwidth))
        };
        let latency = metrics::ufs_latency();
        ufs_latency.push((m.name.clone(), latency.clone()));
        // The mount's `concurrency` option (checked by the under storage) bounds it.
        let limit = m.options.iter().find(|(k, _)| k.eq_ignore_ascii_case("concurrency")).and_then(|(_, v)| v.parse().ok());
        let guarded = ufs::Guarded::new(raw, cfg.ufs_timeout, cfg.ufs_attempts)
            .with_latency(latency)
            .with_limit(limit.unwrap_or(ufs::LIMIT_DEFAULT));
        mounts.insert(m.name.clone(), Arc::new(guarded));
    }
    Ok((mounts, ufs_latency))
}

/// Each mount's settings: its own where given, else the engine's.
fn mount_settings(cfg: &EngineConfig) -> Vec<namespace::MountSettings> {
    cfg.mounts
        .iter()
        .map(|m| namespace::MountSettings {
            sync: m.sync_or(cfg.metadata_sync),
            block_bytes: m.block_bytes.unwrap_or(cfg.block_bytes),
            readahead: m.readahead.unwrap_or(cfg.readahead_blocks),
            peer_copy: m.peer_copy,
        })
        .collect()
}

/// The namespace over `mounts`, with its attribute log in `root`.
fn open_namespace(
    cfg: &EngineConfig,
    root: &Path,
    mounts: Mounts,
    settings: &[namespace::MountSettings],
    direct: Option<Arc<direct::DirectAreas>>,
) -> Result<Arc<namespace::Namespace>> {
    let fingerprint: Vec<String> = cfg.mounts.iter().map(|m| format!("{}={} {:?}", m.name, m.uri, m.options)).collect();
    let mut ns = namespace::Namespace::new(mounts, cfg.metadata_sync).with_block_bytes(cfg.block_bytes).with_direct(direct);
    for (m, s) in cfg.mounts.iter().zip(settings) {
        tracing::info!(mount = %m.name, options = ?ufs::opendal_ufs::redacted(&m.options), settings = ?s, read_only = m.read_only, "mount");
        ns = ns.with_mount_settings(&m.name, *s);
    }
    let ns = ns
        // Only a hash of the mount list is kept on disk: URIs may carry secrets.
        .with_attr_log(&root.join("attrs.log"), &format!("{:016x}", xxhash_rust::xxh3::xxh3_64(fingerprint.join(";").as_bytes())))
        .map_err(io_ctx("opening the attribute log"))?;
    Ok(Arc::new(ns))
}

/// The write path, when any mount has a write mode: recovers what an
/// earlier run acknowledged and resumes its persists.
fn start_writes(
    cfg: &EngineConfig,
    root: &Path,
    ns: &Arc<namespace::Namespace>,
    rt: &tokio::runtime::Handle,
) -> Result<Option<Arc<write::WriteCore>>> {
    let modes: std::collections::HashMap<String, config::WriteMode> =
        cfg.mounts.iter().filter_map(|m| m.write.map(|w| (m.name.clone(), w))).collect();
    if modes.is_empty() && !root.join("writes").exists() {
        return Ok(None);
    }
    // Written data waiting for under storage may use as much disk as the cache.
    let core = write::WriteCore::start(root, ns.clone(), modes, rt.clone(), cfg.capacity_bytes)
        .map_err(io_ctx("opening the written files (writes/)"))?;
    Ok(Some(core))
}

/// Bytes each shard may hold: the asked capacity, unless the cache dir's
/// filesystem holds less. With --capacity above it the disk fills before a
/// segment does, nothing is ever evicted and caching stays paused on write
/// errors (store/pause.rs).
fn per_shard_capacity(cfg: &EngineConfig, root: &Path, shard_dirs: &[PathBuf]) -> u64 {
    let mut per_shard = cfg.per_shard_capacity();
    if let Some(room) = store::per_shard_room(root, shard_dirs) {
        if room < per_shard {
            // At least what a shard needs for a few blocks (as config checks).
            let room = room.max(4 * (cfg.block_bytes + 8192));
            tracing::warn!(
                capacity = cfg.capacity_bytes,
                using = room * cfg.shards as u64,
                "--capacity is more than the cache dir's filesystem can hold; using what it can"
            );
            per_shard = room;
        }
    }
    per_shard
}

/// What every shard shares, built once by `Engine::start`.
struct ShardsShared {
    ns: Arc<namespace::Namespace>,
    rt: tokio::runtime::Handle,
    registry: shard::Registry,
    policies: Arc<policy::Policies>,
    readahead: Arc<readahead::ReadAhead>,
    direct: Option<Arc<direct::DirectAreas>>,
    per_shard_capacity: u64,
    cluster: Option<Arc<cluster::ClusterNode>>,
}

/// The running shards: their stop senders, threads and command queues, and
/// the first reason one of them could not start.
struct Shards {
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    cmds: Vec<futures::channel::mpsc::UnboundedSender<shard::ShardCmd>>,
    failure: Option<String>,
}

/// Start every shard and wait until each has recovered its store and
/// listens (or failed to); then give their sockets the socket group.
fn start_shards(
    cfg: &EngineConfig,
    shard_dirs: &[PathBuf],
    counters: &[Arc<metrics::counters::ShardCounters>],
    shared: &ShardsShared,
) -> Result<Shards> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (cmds, mut cmd_rxs): (Vec<_>, Vec<_>) = (0..cfg.shards).map(|_| futures::channel::mpsc::unbounded()).unzip();
    let peers = Arc::new(cmds.clone());
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    for (id, shard_counters) in counters.iter().enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel();
        stops.push(stop_tx);
        let setup = shard::ShardSetup {
            id,
            store: store::StoreConfig {
                dir: shard_dirs[id].clone(),
                segment_bytes: cfg.segment_bytes,
                capacity_bytes: shared.per_shard_capacity,
            },
            socket_path: stoker_proto::shard_socket_path(&cfg.socket, id),
            write_queue_bytes_max: cfg.write_queue_bytes_max,
            ns: shared.ns.clone(),
            rt: shared.rt.clone(),
            counters: shard_counters.clone(),
            registry: shared.registry.clone(),
            policies: shared.policies.clone(),
            eviction: cfg.eviction,
            memory_cache_bytes: cfg.memory_cache_bytes / cfg.shards as u64,
            io_depth: cfg.io_depth,
            quotas: cfg.quotas.iter().map(|(m, q)| (m.clone(), q / cfg.shards as u64)).collect(),
            cmds: cmd_rxs.remove(0),
            peers: peers.clone(),
            readahead: shared.readahead.clone(),
            direct: shared.direct.clone(),
            cluster: shared.cluster.clone(),
        };
        threads.push(shard::spawn(setup, ready_tx.clone(), stop_rx).map_err(io_ctx("starting shard"))?);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..cfg.shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(m)) => failure = Some(m),
            Err(_) => failure = Some("a shard exited during start-up".into()),
        }
    }
    // The shards bound their sockets; clients learn them only in a
    // handshake on the control socket, which is not accepting yet.
    for id in 0..cfg.shards {
        let path = stoker_proto::shard_socket_path(&cfg.socket, id);
        if let Err(e) = peer::restrict_socket(Path::new(&path), cfg.socket_group) {
            failure.get_or_insert(format!("setting the mode and group of {path}: {e}"));
        }
    }
    Ok(Shards { stops, threads, cmds, failure })
}

/// Join the cluster when `--cluster` asks: serve peers (their requests go to
/// the owning shard once the shards are up, through `shard_cmds`) and
/// register in etcd.
fn join_cluster(
    cfg: &EngineConfig,
    capacity_bytes: u64,
    rt: &tokio::runtime::Handle,
    shard_cmds: Arc<std::sync::OnceLock<Vec<futures::channel::mpsc::UnboundedSender<shard::ShardCmd>>>>,
) -> Result<Option<Arc<cluster::ClusterNode>>> {
    let Some(c) = &cfg.cluster else { return Ok(None) };
    let handler: stoker_cluster::peer::Handler = Arc::new(move |req: stoker_cluster::peer::BlockRequest| {
        let cmds = shard_cmds.clone();
        Box::pin(async move {
            let Some(cmds) = cmds.get() else { return Err((libc::EAGAIN, "the engine is starting".to_string())) };
            let owner = stoker_proto::key::shard_for(&req.path, req.block, cmds.len());
            let (reply, answer) = oneshot::channel();
            if cmds[owner].unbounded_send(shard::ShardCmd::PeerRead { req, reply }).is_err() {
                return Err((libc::ESHUTDOWN, "the engine is stopping".to_string()));
            }
            answer.await.unwrap_or_else(|_| Err((libc::ESHUTDOWN, "the engine is stopping".to_string())))
        })
    });
    let node = cluster::ClusterNode::start(c, capacity_bytes, rt, handler).map_err(io_ctx("joining the cluster"))?;
    tracing::info!(node = %c.node_id, peer_listen = %c.peer_listen, endpoints = ?c.endpoints, "cluster: serving peers and joining");
    Ok(Some(node))
}

/// The mounts as `stoker stat` shows them (secrets masked).
fn mount_infos(cfg: &EngineConfig, settings: &[namespace::MountSettings]) -> Vec<stoker_proto::control::MountInfo> {
    cfg.mounts
        .iter()
        .zip(settings)
        .map(|(m, s)| stoker_proto::control::MountInfo {
            name: m.name.clone(),
            uri: m.uri.clone(),
            options: ufs::opendal_ufs::redacted(&m.options),
            sync: s.sync.map_or("never".into(), |d| format!("{d:?}")),
            read_only: m.read_only,
            write: m.write.map(|w| w.as_str().to_string()),
            block_bytes: s.block_bytes,
            readahead_blocks: s.readahead,
            peer_copy: s.peer_copy,
            inflight_limit: 0,
        })
        .collect()
}

impl Engine {
    /// Start the engine: check the config, take the cache dir, open the
    /// mounts and the namespace, claim the socket, start the shards (each
    /// recovers its store), then serve metrics and the control socket.
    pub fn start(mut cfg: EngineConfig) -> Result<Engine> {
        cfg.validate()?;
        keep_freed_buffers();
        supervise::exit_on_shard_panic();
        let (root, lock) = prepare_cache_dir(&cfg)?;
        let (rt, signals) = start_io_runtime(&cfg)?;
        let (mounts, ufs_latency) = open_mounts(&cfg)?;
        let settings = mount_settings(&cfg);
        let shard_dirs: Vec<PathBuf> = (0..cfg.shards).map(|id| root.join(format!("shard-{id:03}"))).collect();
        let direct = if cfg.direct_entries > 0 && cfg.memory_cache_bytes == 0 {
            let d = direct::DirectAreas::new(shard_dirs.clone(), cfg.direct_entries)
                .map_err(io_ctx("creating the direct-read table"))?;
            Some(Arc::new(d))
        } else {
            None
        };
        let ns = open_namespace(&cfg, &root, mounts, &settings, direct.clone())?;
        let listener = claim_socket(&cfg.socket, cfg.socket_group)?;
        // After the socket is claimed, so a start-up refused says only why.
        let per_shard_capacity = per_shard_capacity(&cfg, &root, &shard_dirs);
        let counters: Vec<Arc<metrics::counters::ShardCounters>> = (0..cfg.shards).map(|_| Arc::default()).collect();
        let shard_cmds = Arc::new(std::sync::OnceLock::new());
        let cluster = join_cluster(&cfg, per_shard_capacity * cfg.shards as u64, rt.handle(), shard_cmds.clone())?;
        let shared = ShardsShared {
            ns,
            rt: rt.handle().clone(),
            registry: Arc::default(),
            policies: Arc::new(policy::Policies::load(&root.join("policies.json")).map_err(io_ctx("loading policies"))?),
            readahead: Arc::default(),
            direct,
            per_shard_capacity,
            cluster,
        };
        let shards = start_shards(&cfg, &shard_dirs, &counters, &shared)?;
        let _ = shard_cmds.set(shards.cmds.clone());
        let ShardsShared { ns, registry, policies, direct, cluster, .. } = shared;
        let writes = start_writes(&cfg, &root, &ns, rt.handle())?;
        let ctx = Arc::new(server::ctx::ControlCtx {
            ns,
            rt: rt.handle().clone(),
            registry,
            counters,
            block_bytes: cfg.block_bytes,
            socket: cfg.socket.clone(),
            stopping: AtomicBool::new(false),
            sessions_opened: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            shard_cmds: shards.cmds,
            policies,
            capacity_bytes: per_shard_capacity * cfg.shards as u64,
            direct,
            mounts: mount_infos(&cfg, &settings),
            peers: peer::PeerPolicy::of_this_process(cfg.socket_group),
            connections_max: cfg.control_connections_max,
            io_timeout: cfg.control_timeout,
            limits: Arc::default(),
            cluster,
            writes,
        });
        let mut engine = Engine {
            socket: cfg.socket.clone(),
            stops: shards.stops,
            shards: shards.threads,
            control: None,
            ctx: ctx.clone(),
            rt: Some(rt),
            metrics: None,
            signals: parking_lot::Mutex::new(Some(signals)),
            _lock: lock,
        };
        if let Some(m) = shards.failure {
            engine.stop();
            return Err(EngineError::Store(m));
        }
        engine.serve(&cfg, listener, ufs_latency)?;
        tracing::info!(socket = %cfg.socket, shards = cfg.shards, capacity = cfg.capacity_bytes, "engine ready");
        Ok(engine)
    }

    /// The last start-up step: the metrics endpoint (if asked), pins, TTLs
    /// and quotas re-applied, then the control socket starts accepting.
    fn serve(
        &mut self,
        cfg: &EngineConfig,
        listener: std::os::unix::net::UnixListener,
        ufs_latency: UfsLatencies,
    ) -> Result<()> {
        let ctx = self.ctx.clone();
        if let Some(addr) = cfg.metrics {
            let sources = server::scrape::EngineSources { ctx: ctx.clone(), ufs: ufs_latency };
            let endpoint = metrics::http::Endpoint::start(addr, Arc::new(move || server::scrape::render_engine(&sources)))
                .map_err(io_ctx(format!("binding the metrics endpoint {addr}")))?;
            self.metrics = Some(endpoint);
        }
        admin::reapply(&ctx);
        admin::reapply_quotas(&ctx, &cfg.quotas);
        self.control = Some(
            std::thread::Builder::new()
                .name("stoker-accept".into())
                .spawn(move || control::serve(listener, ctx))
                .map_err(io_ctx("starting control thread"))?,
        );
        Ok(())
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// Where `GET /metrics` is served, if it is (the bound port when 0 was asked).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr())
    }

    pub fn stats(&self) -> stoker_proto::control::EngineStats {
        server::ctx::engine_stats(&self.ctx)
    }

    /// Block until SIGINT or SIGTERM.
    pub fn wait_for_signal(&self) {
        let (Some(rt), Some((mut term, mut int))) = (&self.rt, self.signals.lock().take()) else { return };
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        });
    }

    /// Stop accepting, flush every shard's store and join all threads.
    pub fn stop(&mut self) {
        self.ctx.stopping.store(true, Ordering::Release);
        // Leave the cluster first: the others stop asking this node at once.
        if let (Some(node), Some(rt)) = (&self.ctx.cluster, &self.rt) {
            let _ = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(3), node.leave()).await });
        }
        if let Some(mut m) = self.metrics.take() {
            m.stop();
        }
        if let Some(h) = self.control.take() {
            let _ = std::os::unix::net::UnixStream::connect(&self.socket);
            let _ = h.join();
        }
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for h in self.shards.drain(..) {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
