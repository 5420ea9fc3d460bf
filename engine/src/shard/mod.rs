//! `shard/` — the data path: one glommio executor per shard owning a block
//! store, the fetches in flight and the rings of every client attached to it.
//!
//! Owns: attaching clients' streams and serving their ring entries, reads
//! (DRAM tier, read-ahead buffer, store), fetching misses from under storage
//! once per block, writing fetched blocks back to the store, sequential
//! read-ahead, commands from the control plane and TTL expiry, publishing to
//! direct readers, the view of a client's shared area and taking the engine
//! down on a shard panic. Must never: import the control plane (`server/`),
//! block its executor (under-storage calls go to tokio), or serve bytes the
//! store did not verify.
//!
//! Files: `mod.rs` (the shard's state and start-up), `attach.rs` (a client's
//! stream and ring), `read.rs` (one ring entry, step by step), `fetch.rs`
//! (one under-storage fetch per block in flight), `writeback.rs` (fetched
//! blocks into the store), `readahead.rs` (sequential streams), `memtier.rs`
//! (the DRAM tier), `publish.rs` (direct-read entries), `commands.rs`
//! (`ShardCmd`, TTL expiry), `session.rs` (a client's shared area),
//! `supervise.rs` (a panicking shard stops the engine).
//!
//! Nothing in here is shared with other threads except the counters, the
//! namespace (read-mostly) and the session registry (touched on attach).
//!
//! Read path for one SQ entry: check the request against the client's area,
//! resolve the path's attribute (cached, or from under storage on tokio),
//! look the block up in the store; a hit is one O_DIRECT read, a miss is one
//! under-storage fetch shared by all concurrent misses of the key, answered
//! at once and appended to the store in the background.

mod attach;
mod commands;
mod fetch;
pub mod memtier;
mod publish;
mod read;
pub mod readahead;
pub mod session;
pub mod supervise;
mod serve_peer;
mod writeback;

pub use commands::ShardCmd;
use commands::{commands, expire_forever};
use publish::{publish_cached, DirectPublisher};

use crate::namespace::{Namespace, NsError};
use crate::shard::session::SessionArea;
use crate::metrics::counters::ShardCounters;
use crate::policy::Policies;
use crate::store::{Store, StoreConfig};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;
use futures::channel::{mpsc, oneshot};
use futures::FutureExt;
use glommio::net::UnixListener;
use glommio::{LocalExecutorBuilder, Placement};
use parking_lot::Mutex;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use stoker_proto::control::{Attr, RecoveryStats};

pub type Registry = Arc<Mutex<HashMap<u64, Arc<SessionArea>>>>;

/// What a shard needs from the engine to start.
pub struct ShardSetup {
    pub id: usize,
    pub store: StoreConfig,
    pub socket_path: String,
    pub write_queue_bytes_max: u64,
    pub ns: Arc<Namespace>,
    pub rt: tokio::runtime::Handle,
    pub counters: Arc<ShardCounters>,
    pub registry: Registry,
    pub policies: Arc<Policies>,
    pub cmds: mpsc::UnboundedReceiver<ShardCmd>,
    pub eviction: crate::store::Eviction,
    /// Per-mount quotas: this shard's share, in bytes.
    pub quotas: HashMap<String, u64>,
    /// This shard's share of the DRAM tier (0 = off).
    pub memory_cache_bytes: u64,
    /// io_uring submission queue depth of this shard's executor.
    pub io_depth: usize,
    /// Every shard's command queue (this one's included), for read-ahead
    /// of blocks other shards own.
    pub peers: Arc<Vec<mpsc::UnboundedSender<ShardCmd>>>,
    /// Sequential streams over large objects, shared by all shards.
    pub readahead: Arc<crate::shard::readahead::ReadAhead>,
    /// The direct-read table, if direct reads are on.
    pub direct: Option<Arc<crate::direct::DirectAreas>>,
    /// This node's cluster, if it is in one: misses of blocks another
    /// member owns are asked of that member first.
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
}

/// Read-ahead fetches in flight per shard at most; more are dropped (the
/// reader then fetches the block itself when it gets there).
const READAHEAD_INFLIGHT_MAX: usize = 16;

/// Bytes of cached blocks a shard holds in memory ahead of sequential
/// readers (read from its segments before the reader asks; least recently
/// used dropped first).
const READAHEAD_BUFFER_BYTES: u64 = 64 << 20;

/// A block fetched from under storage, with the attributes it was read under.
struct Fetch {
    attr: Attr,
    data: Rc<Vec<u8>>,
}

type Fetched = Result<Rc<Fetch>, NsError>;

/// Full block key -> bytes fetched but not yet in the store.
type Unwritten = HashMap<Vec<u8>, Rc<Vec<u8>>>;

struct Shard {
    id: u32,
    store: Rc<Store>,
    ns: Arc<Namespace>,
    rt: tokio::runtime::Handle,
    counters: Arc<ShardCounters>,
    registry: Registry,
    /// Misses being fetched, by full key: later misses of the key wait here.
    inflight: RefCell<HashMap<Vec<u8>, Vec<oneshot::Sender<Fetched>>>>,
    /// Bytes of fetched blocks waiting to be written to the store.
    write_queue_bytes: Rc<Cell<u64>>,
    /// Fetched blocks until their background write lands: a read in that
    /// window is served from here instead of fetching the block again.
    unwritten: Rc<RefCell<Unwritten>>,
    /// Told (all at once) whenever a background write finishes: loads
    /// waiting for room in the write queue or for their block to land.
    written: Rc<RefCell<Vec<oneshot::Sender<()>>>>,
    write_queue_bytes_max: u64,
    policies: Arc<Policies>,
    /// (expiry time, key hash) of blocks under a TTL, soonest first.
    expiry: RefCell<BinaryHeap<Reverse<(Instant, u64)>>>,
    quotas: Rc<crate::policy::quota::Quotas>,
    mem: crate::shard::memtier::MemTier,
    /// Cached blocks read from the segments ahead of sequential readers.
    ahead: crate::shard::memtier::MemTier,
    peers: Arc<Vec<mpsc::UnboundedSender<ShardCmd>>>,
    readahead: Arc<crate::shard::readahead::ReadAhead>,
    readahead_inflight: Rc<Cell<usize>>,
    direct: Option<DirectPublisher>,
    /// Sessions with a stream attached to this shard now.
    attached: RefCell<std::collections::HashSet<u64>>,
    cluster: Option<Arc<crate::cluster::ClusterNode>>,
}

/// Start a shard thread. `ready` gets the recovery report once the store is
/// open and the shard socket listens (or the reason it could not start);
/// the shard stops, flushing its store, when `stop` fires or is dropped.
pub fn spawn(
    setup: ShardSetup,
    ready: std::sync::mpsc::Sender<Result<RecoveryStats, String>>,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<glommio::ExecutorJoinHandle<()>> {
    let name = crate::shard::supervise::shard_thread_name(setup.id);
    LocalExecutorBuilder::new(Placement::Unbound)
        .name(&name)
        // The memlock limit is small on many boxes; DMA buffers beyond this
        // come from the heap, which O_DIRECT accepts just as well.
        .io_memory(512 << 10)
        .ring_depth(setup.io_depth)
        .spawn(move || run(setup, ready, stop))
        .map_err(|e| std::io::Error::other(format!("starting {name}: {e}")))
}

async fn run(
    setup: ShardSetup,
    ready: std::sync::mpsc::Sender<Result<RecoveryStats, String>>,
    stop: oneshot::Receiver<()>,
) {
    let (store, report) = match Store::open(setup.store.clone()).await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(format!("shard {}: opening {}: {e}", setup.id, setup.store.dir.display())));
            return;
        }
    };
    store.set_eviction(setup.eviction);
    let _ = std::fs::remove_file(&setup.socket_path);
    let listener = match UnixListener::bind(&setup.socket_path) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("binding {}: {e}", setup.socket_path)));
            return;
        }
    };
    let recovery = report;
    *setup.counters.recovery.lock() = recovery.clone();
    setup.counters.capacity_bytes.store(setup.store.capacity_bytes, Relaxed);
    let ns = setup.ns.clone();
    let shard = Rc::new(Shard {
        id: setup.id as u32,
        store: Rc::new(store),
        ns: ns.clone(),
        rt: setup.rt,
        counters: setup.counters,
        registry: setup.registry,
        inflight: RefCell::default(),
        write_queue_bytes: Rc::new(Cell::new(0)),
        unwritten: Rc::default(),
        written: Rc::default(),
        write_queue_bytes_max: setup.write_queue_bytes_max,
        policies: setup.policies,
        expiry: RefCell::default(),
        quotas: Rc::new(crate::policy::quota::Quotas::new(setup.quotas)),
        mem: crate::shard::memtier::MemTier::new(setup.memory_cache_bytes),
        ahead: crate::shard::memtier::MemTier::new(READAHEAD_BUFFER_BYTES),
        peers: setup.peers,
        readahead: setup.readahead,
        readahead_inflight: Rc::default(),
        // Direct reads bypass the DRAM tier, so they are off beside it.
        direct: setup
            .direct
            .filter(|_| setup.memory_cache_bytes == 0)
            .map(|areas| DirectPublisher { areas, shard: setup.id as u32, ns: ns.clone() }),
        attached: RefCell::default(),
        cluster: setup.cluster.clone(),
    });
    if let Some(p) = shard.direct.clone() {
        shard.store.set_on_segment_drop(Box::new(move || p.areas.table.bump_dropped(p.shard)));
    }
    glommio::spawn_local(commands(shard.clone(), setup.cmds)).detach();
    glommio::spawn_local(expire_forever(shard.clone())).detach();
    glommio::spawn_local(publish_cached(shard.clone())).detach();
    shard.publish();
    glommio::spawn_local(publish_latency_forever(shard.counters.clone())).detach();
    tracing::info!(shard = shard.id, ?recovery, "shard ready");
    let _ = ready.send(Ok(recovery));

    let accept = {
        let shard = shard.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        glommio::spawn_local(attach::attach(shard.clone(), stream)).detach();
                    }
                    Err(e) => {
                        tracing::warn!(shard = shard.id, error = %e, "accept failed");
                        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        }
    };
    futures::select! {
        _ = accept.fuse() => {},
        _ = stop.fuse() => {},
    }
    if let Err(e) = shard.store.flush().await {
        tracing::error!(shard = shard.id, error = %e, "flushing store at shutdown");
    }
    let _ = std::fs::remove_file(&setup.socket_path);
}

/// Merge this shard's read latencies into its counters every
/// `latency::PUBLISH_INTERVAL`, for as long as the shard lives.
async fn publish_latency_forever(counters: Arc<ShardCounters>) {
    loop {
        glommio::timer::sleep(crate::metrics::latency::PUBLISH_INTERVAL).await;
        crate::metrics::latency::publish_reads(&counters.read_latency);
    }
}


