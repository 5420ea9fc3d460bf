//! `shard/` — the data path: one glommio executor per shard owning a block
//! store, the fetches in flight and the rings of every client attached to it.
//!
//! Owns: attaching clients' streams and serving their ring entries, reads
//! (DRAM tier `memtier.rs`, read-ahead buffer, store), fetching misses from
//! under storage once per block, writing fetched blocks back to the store,
//! sequential read-ahead (`readahead.rs`), commands from the control plane
//! and TTL expiry, publishing to direct readers, the view of a client's
//! shared area (`session.rs`) and taking the engine down on a shard panic
//! (`supervise.rs`). Must never: import the control plane (`server/`), block
//! its executor (under-storage calls go to tokio), or serve bytes the store
//! did not verify.
//!
//! One shard: a glommio executor on its own thread that owns a block store,
//! the in-flight fetch table and the rings of every attached client for this
//! shard. Nothing in here is shared with other threads except the counters,
//! the namespace (read-mostly) and the session registry (touched on attach).
//!
//! Read path for one SQ entry: check the request against the client's area,
//! resolve the path's attribute (cached, or from under storage on tokio),
//! look the block up in the store; a hit is one O_DIRECT read, a miss is one
//! under-storage fetch shared by all concurrent misses of the key, answered
//! at once and appended to the store in the background.

pub mod memtier;
pub mod readahead;
pub mod session;
pub mod supervise;

use crate::namespace::{normalise, Namespace, NsError};
use crate::shard::session::SessionArea;
use crate::metrics::counters::ShardCounters;
use crate::policy::Policies;
use crate::store::{Store, StoreConfig, StoreError};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;
use futures::channel::{mpsc, oneshot};
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use glommio::net::{UnixListener, UnixStream};
use glommio::{LocalExecutorBuilder, Placement};
use parking_lot::Mutex;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use stoker_proto::control::{Attr, Kind, RecoveryStats};
use stoker_proto::key::BlockKey;
use stoker_proto::ring::{CqEntry, Producer, SqEntry, FLAG_NO_DATA};

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
}

/// Commands from the control plane to a shard. Each carries block key hashes
/// this shard owns; a reply (where there is one) counts the blocks affected.
/// Dropping a command (shard gone) drops its reply sender: the caller sees a
/// cancelled reply and reports the shard as unavailable.
pub enum ShardCmd {
    /// Keep (or release) these blocks through reclaims.
    Pin { keys: Vec<u64>, pinned: bool, reply: oneshot::Sender<u64> },
    /// Drop these blocks now.
    Remove { keys: Vec<u64>, reply: oneshot::Sender<u64> },
    /// How many of these blocks are cached.
    Count { keys: Vec<u64>, reply: oneshot::Sender<u64> },
    /// Drop these blocks once `after` has passed (a TTL).
    Expire { keys: Vec<u64>, after: std::time::Duration },
    /// Count these (key hash, length) blocks against a mount's quota, if cached (at start-up).
    Track { mount: String, blocks: Vec<(u64, u64)> },
    /// Fetch this block ahead of a sequential reader, unless cached or on its way.
    /// With `from_cache`, a cached block is read from its segment into the
    /// shard's read-ahead buffer; without, only a block not cached is fetched.
    Prefetch { path: String, block: u64, attr: Attr, from_cache: bool },
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
                        glommio::spawn_local(attach(shard.clone(), stream)).detach();
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

/// How long a new shard connection may take to send its session id.
const ATTACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A client connected to this shard's socket: it sends its session id, and
/// the stream becomes the doorbell in both directions.
async fn attach(shard: Rc<Shard>, mut stream: UnixStream) {
    let id = {
        let read = async {
            let mut id = [0u8; 8];
            stream.read_exact(&mut id).await.map(|()| u64::from_le_bytes(id))
        }
        .fuse();
        let late = glommio::timer::sleep(ATTACH_TIMEOUT).fuse();
        futures::pin_mut!(read, late);
        futures::select! {
            r = read => match r {
                Ok(id) => id,
                Err(_) => return,
            },
            _ = late => {
                tracing::debug!(shard = shard.id, "shard connection sent no session id in time");
                return;
            }
        }
    };
    let Some(area) = shard.registry.lock().get(&id).cloned() else {
        tracing::warn!(shard = shard.id, session = id, "unknown session on shard socket");
        return;
    };
    // One stream per session per shard: a second would be a second consumer
    // of the same SQ.
    let Some(_attached) = Attached::new(&shard, id) else {
        tracing::warn!(shard = shard.id, session = id, "session attached twice to one shard; refused");
        return;
    };
    // SAFETY: one session stream per shard per session (`Attached`): this
    // task is the only consumer of the SQ and (through `cq`) the only
    // producer of the CQ.
    let (mut sq, cq) = unsafe { (area.sq(shard.id), area.cq(shard.id)) };
    let cq = Rc::new(RefCell::new(cq));
    // A client keeps at most ring_entries requests in flight per shard (so
    // its CQ never overflows); one that posts more waits here for answers
    // instead of growing this shard's task list without bound.
    let slots = Rc::new(glommio::sync::Semaphore::new(area.layout().ring_entries as u64));
    let (mut rd, mut wr) = stream.split();
    // Completions ring the client's bell through one writer task; a full
    // channel means a ring is already pending, which covers this completion.
    let (bell, mut bells) = mpsc::channel::<()>(1);
    glommio::spawn_local(async move {
        while bells.next().await.is_some() {
            if wr.write_all(&[1]).await.is_err() {
                break;
            }
        }
    })
    .detach();
    let mut buf = [0u8; 256];
    'session: loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match sq.pop() {
                Ok(Some(req)) => {
                    let permit = match slots.try_acquire_static_permit(1) {
                        Ok(p) => p,
                        Err(_) => {
                            shard.counters.session_inflight_limited.fetch_add(1, Relaxed);
                            match slots.acquire_static_permit(1).await {
                                Ok(p) => p,
                                Err(_) => break 'session,
                            }
                        }
                    };
                    let task = serve(shard.clone(), area.clone(), req, cq.clone(), bell.clone());
                    glommio::spawn_local(async move {
                        task.await;
                        drop(permit);
                    })
                    .detach();
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(shard = shard.id, session = id, "client corrupted its ring; closing session");
                    break 'session;
                }
            }
        }
    }
    tracing::debug!(shard = shard.id, session = id, "session closed");
}

/// Marks a session attached to this shard for as long as it lives.
struct Attached {
    shard: Rc<Shard>,
    id: u64,
}

impl Attached {
    fn new(shard: &Rc<Shard>, id: u64) -> Option<Attached> {
        shard.attached.borrow_mut().insert(id).then(|| Attached { shard: shard.clone(), id })
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.shard.attached.borrow_mut().remove(&self.id);
    }
}

async fn serve(
    shard: Rc<Shard>,
    area: Arc<SessionArea>,
    req: SqEntry,
    cq: Rc<RefCell<Producer<CqEntry>>>,
    mut bell: mpsc::Sender<()>,
) {
    shard.counters.inflight_requests.fetch_add(1, Relaxed);
    let cqe = match shard.read(&area, &req).await {
        Ok((len, object_size)) => {
            CqEntry { req_id: req.req_id, result: len as i64, data_off: req.buf_off, object_size }
        }
        Err(e) => {
            if e.errno != libc::ENOENT && e.errno != libc::EISDIR && e.errno != libc::EINVAL {
                tracing::warn!(shard = shard.id, error = %e.message, "read failed");
            }
            CqEntry { req_id: req.req_id, result: -(e.errno as i64), data_off: 0, object_size: 0 }
        }
    };
    shard.counters.inflight_requests.fetch_sub(1, Relaxed);
    match cq.borrow_mut().push(cqe) {
        Ok(true) => {}
        // The client keeps at most ring_entries requests in flight per shard,
        // so a full or corrupt CQ means it broke the protocol: drop the answer.
        _ => tracing::warn!(shard = shard.id, session = area.id, "completion ring full or corrupt"),
    }
    let _ = bell.try_send(());
}

/// The in-flight fetch table's key: (path, block) whatever the version, as a
/// fetch brings the attributes it read under, so every waiter gets a
/// consistent answer.
fn flight_key(path: &str, block: u64) -> Vec<u8> {
    BlockKey::new(path, "", block).bytes
}

fn invalid(m: &str) -> NsError {
    NsError::new(libc::EINVAL, m)
}

impl Shard {
    /// Serve one request into the client's slot: (bytes placed, object size).
    async fn read(&self, area: &SessionArea, req: &SqEntry) -> Result<(u64, u64), NsError> {
        let t0 = std::time::Instant::now();
        if req.path_len as u64 > req.buf_len || req.path_len == 0 || req.path_len > 4096 {
            return Err(invalid("bad path length"));
        }
        // A no-data request (prefetch) copies nothing back: its slot need
        // only hold the path.
        let copies = req.flags & FLAG_NO_DATA == 0;
        if copies && req.len > req.buf_len {
            return Err(invalid("range outside the slot"));
        }
        if req.buf_off.checked_add(req.buf_len).is_none_or(|e| e > area.layout().data_bytes) {
            return Err(invalid("slot outside the shared area"));
        }
        let raw = area.read_data(req.buf_off, req.path_len as u64).ok_or_else(|| invalid("bad slot"))?;
        let path = String::from_utf8(raw).map_err(|_| invalid("path is not UTF-8"))?;
        let path = normalise(&path).ok_or_else(|| NsError::new(libc::EINVAL, format!("bad path {path:?}")))?;
        let bs = self.ns.block_bytes(&path);
        if req.off_in_block.saturating_add(req.len) > bs {
            return Err(invalid("range outside the block"));
        }

        // Read before the attributes: a change after this voids what we publish.
        let epoch = self.direct_epoch();
        let (attr, fetched) = match self.ns.cached_attr(&path) {
            Some(a) => (a, None),
            // An object not seen yet: one under-storage call brings its
            // attributes and this block (a stat, then a read, would pay the
            // round trip twice on every cold file).
            None => {
                let f = self.fetch(&path, req.block, None).await?;
                (f.attr.clone(), Some(f))
            }
        };
        if attr.kind == Kind::Dir {
            return Err(NsError::new(libc::EISDIR, format!("{path}: is a directory")));
        }
        // The part of the block the request wants, for an object of `size`.
        let want = |size: u64| {
            let block_start = req.block.saturating_mul(bs);
            let block_len = size.saturating_sub(block_start).min(bs);
            let start = req.off_in_block.min(block_len) as usize;
            let end = (req.off_in_block + req.len).min(block_len) as usize;
            (block_len, start, end)
        };
        let serve = |data: &[u8], size: u64| {
            let (_, start, end) = want(size);
            if req.flags & FLAG_NO_DATA == 0 {
                area.write_data(req.buf_off, &data[start..end]);
                self.counters.bytes_served.fetch_add((end - start) as u64, Relaxed);
            }
            Ok(((end - start) as u64, size))
        };
        let (block_len, _, _) = want(attr.size);
        if block_len == 0 {
            return Ok((0, attr.size));
        }
        if attr.size > bs {
            self.read_ahead(&path, req.block, &attr, bs);
        }
        if let Some(f) = fetched {
            crate::metrics::record_read(false, t0);
            return serve(&f.data, f.attr.size);
        }
        let key = self.ns.block_key(&path, &attr.version, req.block);
        if let Some(data) = self.mem.get(key.hash, &key.bytes) {
            self.counters.hits.fetch_add(1, Relaxed);
            self.counters.mem_hits.fetch_add(1, Relaxed);
            crate::metrics::record_read(true, t0);
            return serve(&data, attr.size);
        }
        let staged = self.ahead.get(key.hash, &key.bytes).or_else(|| self.unwritten.borrow().get(&key.bytes).cloned());
        if let Some(data) = staged {
            self.counters.hits.fetch_add(1, Relaxed);
            crate::metrics::record_read(true, t0);
            return serve(&data, attr.size);
        }
        // Read only the asked range (the store verifies just the sub-blocks
        // it touches); the DRAM tier keeps whole blocks, so it reads whole.
        let whole = self.mem.enabled();
        let (_, start, end) = want(attr.size);
        let (roff, rlen) = if whole {
            (0, block_len)
        } else if req.flags & FLAG_NO_DATA != 0 {
            (start as u64, 0)
        } else {
            (start as u64, (end - start) as u64)
        };
        let got = self.store.get_range(key.hash, &key.bytes, block_len, roff, rlen).await;
        self.counters.device_bytes_read.store(self.store.device_bytes_read(), Relaxed);
        match got {
            Ok(Some(block)) if block.block_len() == block_len => {
                self.counters.hits.fetch_add(1, Relaxed);
                crate::metrics::record_read(true, t0);
                if let Some(p) = &self.direct {
                    p.publish(&self.store, epoch, &path, req.block, &key, &attr);
                }
                if whole {
                    self.mem.insert(key.hash, &key.bytes, Rc::new(block.data().to_vec()));
                    self.counters.mem_bytes.store(self.mem.used_bytes(), Relaxed);
                    return serve(block.data(), attr.size);
                }
                if req.flags & FLAG_NO_DATA == 0 {
                    area.write_data(req.buf_off, block.data());
                    self.counters.bytes_served.fetch_add(block.len() as u64, Relaxed);
                }
                return Ok(((end - start) as u64, attr.size));
            }
            Ok(Some(_)) => {
                // Same key, different length: cannot be the block we want.
                self.store.remove(key.hash);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(shard = self.id, error = %e, "store read failed; refetching"),
        }
        // The fetch may have been started by a request that saw another
        // version; its data and attributes agree with each other, so serve by them.
        let f = self.fetch(&path, req.block, Some(&attr)).await?;
        if f.attr.kind == Kind::Dir {
            return Err(NsError::new(libc::EISDIR, format!("{path}: is a directory")));
        }
        crate::metrics::record_read(false, t0);
        serve(&f.data, f.attr.size)
    }

    /// Fetch block `block` of `path` from under storage once, however many
    /// ask for it at the same time. With `attr` unknown, the attributes come
    /// back with the data. The block is then cached in the background.
    async fn fetch(&self, path: &str, block: u64, attr: Option<&Attr>) -> Fetched {
        let epoch = self.direct_epoch();
        let flight_key = flight_key(path, block);
        let waiter = {
            let mut inflight = self.inflight.borrow_mut();
            match inflight.get_mut(&flight_key) {
                Some(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    inflight.insert(flight_key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = waiter {
            // Joining a fetch already under way (another reader's, or a
            // prefetch) costs no under-storage call: it counts as a hit.
            self.counters.hits.fetch_add(1, Relaxed);
            return rx.await.unwrap_or_else(|_| Err(NsError::new(libc::EIO, format!("{path}: fetch abandoned"))));
        }
        self.counters.misses.fetch_add(1, Relaxed);
        let res = self.fetch_from_ufs(path, block, attr.cloned()).await;
        let waiters = self.inflight.borrow_mut().remove(&flight_key).unwrap_or_default();
        for w in waiters {
            let _ = w.send(res.clone());
        }
        if let Ok(f) = &res {
            self.counters.ufs_bytes_read.fetch_add(f.data.len() as u64, Relaxed);
            let key = self.ns.block_key(path, &f.attr.version, block);
            let known = self.store.contains(key.hash) || self.unwritten.borrow().contains_key(&key.bytes);
            if f.attr.kind == Kind::File && !f.data.is_empty() && !known {
                self.mem.insert(key.hash, &key.bytes, f.data.clone());
                self.counters.mem_bytes.store(self.mem.used_bytes(), Relaxed);
                self.cache_in_background(path, block, key, f.data.clone(), Some((epoch, f.attr.clone())));
            }
        }
        res
    }

    async fn fetch_from_ufs(&self, path: &str, block: u64, attr: Option<Attr>) -> Fetched {
        let bs = self.ns.block_bytes(path);
        let off = block.saturating_mul(bs);
        let (ns, p) = (self.ns.clone(), path.to_string());
        let known = attr.is_some();
        let (attr, data) = self
            .on_tokio(async move {
                let res = match attr {
                    Some(a) => {
                        let len = a.size.saturating_sub(off).min(bs);
                        ns.read(&p, off, len).await.map(|d| (a, d))
                    }
                    None => ns.read_versioned(&p, off, bs).await,
                };
                res.map_err(|e| NsError::new(e.errno(), format!("{p}: under storage: {e}")))
            })
            .await?;
        let expected = attr.size.saturating_sub(off).min(bs);
        if attr.kind == Kind::File && data.len() as u64 != expected {
            // The object changed under us: forget its attribute so the next
            // read sees the new version, and fail this one cleanly.
            self.ns.invalidate(path);
            return Err(NsError::new(
                libc::EIO,
                format!(
                    "{path}: object changed while reading (got {} of {expected} bytes{})",
                    data.len(),
                    if known { "" } else { " with its attributes" }
                ),
            ));
        }
        Ok(Rc::new(Fetch { attr, data: Rc::new(data) }))
    }

    /// Note a read of `block` of a large object and hand the blocks the
    /// stream should fetch ahead to the shards that own them.
    fn read_ahead(&self, path: &str, block: u64, attr: &Attr, bs: u64) {
        let max = self.ns.readahead_blocks(path);
        let (blocks, window) = self.readahead.on_read_window(path, block, attr.size.div_ceil(bs), max);
        // Cached blocks are read ahead only once the stream has gone on for
        // a few blocks: one step across a block boundary (a random reader,
        // or the kernel's own read-ahead) must not read 4 MiB for nothing.
        let from_cache = window >= 2;
        for b in blocks {
            let owner = stoker_proto::key::shard_for(path, b, self.peers.len());
            let cmd = ShardCmd::Prefetch { path: path.to_string(), block: b, attr: attr.clone(), from_cache };
            let _ = self.peers[owner].unbounded_send(cmd);
        }
    }

    /// Whether block `block` of `path` at `attr` is cached, waiting to be
    /// written, or being fetched.
    fn has_or_fetching(&self, path: &str, block: u64, attr: &Attr) -> bool {
        let key = self.ns.block_key(path, &attr.version, block);
        self.mem.get(key.hash, &key.bytes).is_some()
            || self.store.contains(key.hash)
            || self.unwritten.borrow().contains_key(&key.bytes)
            || self.inflight.borrow().contains_key(&flight_key(path, block))
    }

    /// Read cached block `block` of `path` whole from its segment into the
    /// read-ahead buffer, unless it is in memory already or too many
    /// read-aheads are in flight.
    fn stage(self: &Rc<Self>, key: BlockKey, path: &str, block: u64, attr: &Attr) {
        if self.ahead.get(key.hash, &key.bytes).is_some() || self.mem.get(key.hash, &key.bytes).is_some() {
            return;
        }
        if self.readahead_inflight.get() >= READAHEAD_INFLIGHT_MAX {
            self.counters.readahead_dropped.fetch_add(1, Relaxed);
            return;
        }
        let bs = self.ns.block_bytes(path);
        let block_len = attr.size.saturating_sub(block.saturating_mul(bs)).min(bs);
        self.readahead_inflight.set(self.readahead_inflight.get() + 1);
        self.counters.readahead_blocks.fetch_add(1, Relaxed);
        let s = self.clone();
        glommio::spawn_local(async move {
            let got = s.store.get_range(key.hash, &key.bytes, block_len, 0, block_len).await;
            s.counters.device_bytes_read.store(s.store.device_bytes_read(), Relaxed);
            if let Ok(Some(b)) = got {
                if b.block_len() == block_len {
                    s.ahead.insert(key.hash, &key.bytes, Rc::new(b.data().to_vec()));
                }
            }
            s.readahead_inflight.set(s.readahead_inflight.get() - 1);
        })
        .detach();
    }

    /// Void this shard's direct-read entries.
    fn void_direct(&self) {
        if let Some(p) = &self.direct {
            p.areas.table.bump_epoch(self.id);
        }
    }

    /// The direct-read epoch of this shard (0 without direct reads).
    fn direct_epoch(&self) -> u64 {
        self.direct.as_ref().map_or(0, |p| p.areas.table.epoch(self.id))
    }

    /// Append a fetched block to the store in the background; with
    /// `publish` (the epoch read before its attributes, and them), tell
    /// direct readers where it landed.
    fn cache_in_background(&self, path: &str, block: u64, key: BlockKey, data: Rc<Vec<u8>>, publish: Option<(u64, Attr)>) {
        let len = data.len() as u64;
        let queued = &self.write_queue_bytes;
        if queued.get() + len > self.write_queue_bytes_max || !self.store.accepts_writes() {
            // The disk is behind, or caching is paused after a write error (a
            // full disk): serve without caching rather than queue without bound.
            self.counters.write_dropped.fetch_add(1, Relaxed);
            publish_store(&self.store, &self.counters);
            return;
        }
        queued.set(queued.get() + len);
        self.counters.pending_write_bytes.store(queued.get(), Relaxed);
        self.unwritten.borrow_mut().insert(key.bytes.clone(), data.clone());
        let (store, counters, queued) = (self.store.clone(), self.counters.clone(), queued.clone());
        let unwritten = self.unwritten.clone();
        let quotas = self.quotas.clone();
        let mount = crate::policy::quota::mount_of(path).to_string();
        let publisher = self.direct.clone().zip(publish).map(|(p, (epoch, attr))| (p, epoch, attr, path.to_string()));
        let policy = self.policies.effective(path);
        if policy.pinned {
            self.store.set_pinned(key.hash, true);
        }
        if let Some(ttl) = policy.ttl {
            // A TTL past what an Instant can hold (a policy file edited by
            // hand) never expires rather than panicking the shard.
            if let Some(at) = Instant::now().checked_add(ttl) {
                self.expiry.borrow_mut().push(Reverse((at, key.hash)));
            }
        }
        glommio::spawn_local(async move {
            match store.put(key.hash, &key.bytes, &data).await {
                Ok(()) if quotas.applies(&mount) => {
                    let dropped = quotas.track(&store, &mount, key.hash, len);
                    counters.quota_evicted_blocks.fetch_add(dropped, Relaxed);
                }
                Ok(()) => {}
                // The store logs a write error once, when it pauses caching.
                Err(e @ (StoreError::Io(_) | StoreError::Glommio(_) | StoreError::Full(_) | StoreError::Closed)) => {
                    tracing::debug!(error = %e, "caching a block failed")
                }
                Err(e) => tracing::warn!(error = %e, "caching a block failed"),
            }
            if let Some((p, epoch, attr, path)) = publisher {
                p.publish(&store, epoch, &path, block, &key, &attr);
            }
            unwritten.borrow_mut().remove(&key.bytes);
            queued.set(queued.get() - len);
            counters.pending_write_bytes.store(queued.get(), Relaxed);
            publish_store(&store, &counters);
        })
        .detach();
    }

    fn publish(&self) {
        self.counters.mem_bytes.store(self.mem.used_bytes(), Relaxed);
        publish_store(&self.store, &self.counters);
    }

    /// Run a future on the tokio runtime and await its result here.
    async fn on_tokio<T: Send + 'static>(&self, f: impl Future<Output = Result<T, NsError>> + Send + 'static) -> Result<T, NsError> {
        let (tx, rx) = oneshot::channel();
        self.rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.await.unwrap_or_else(|_| Err(NsError::new(libc::EIO, "engine is shutting down")))
    }
}

/// What a shard needs to publish a block to direct readers.
#[derive(Clone)]
struct DirectPublisher {
    areas: Arc<crate::direct::DirectAreas>,
    shard: u32,
    ns: Arc<Namespace>,
}

impl DirectPublisher {
    /// Tell direct readers where block `block` of `path` (`key`, under
    /// `attr`) lives. (Clients read random ranges of multi-block objects
    /// directly and leave streams to the shard, whose read-ahead serves
    /// them.) `epoch` was read before `attr` was.
    fn publish(&self, store: &Store, epoch: u64, path: &str, block: u64, key: &BlockKey, attr: &Attr) {
        let bs = self.ns.block_bytes(path);
        let block_len = attr.size.saturating_sub(block.saturating_mul(bs)).min(bs);
        if attr.kind != Kind::File || block_len == 0 {
            return;
        }
        let Some(until) = self.ns.fresh_for(path) else { return };
        let Some(loc) = store.location(key.hash) else { return };
        let header = stoker_proto::format::RecordHeader::for_block(key.hash, &key.bytes, &[]);
        let header = stoker_proto::format::RecordHeader { data_len: block_len as u32, ..header };
        if header.record_len() != loc.len_bytes() {
            return; // not a version 2 record of this length (an old one)
        }
        let now = stoker_proto::direct::now_ns();
        let hit = stoker_proto::direct::Hit {
            key_hash: key.hash,
            seg_id: loc.seg_id,
            offset: loc.offset_bytes(),
            record_len: loc.len_bytes(),
            data_at: header.data_start() as u32,
            block_len: block_len as u32,
            object_size: attr.size,
            valid_until_ns: until.map_or(u64::MAX, |u| now.saturating_add(u.as_nanos() as u64)),
        };
        self.areas.table.publish(self.shard, stoker_proto::direct::tag(path, block), &hit, epoch, now);
    }
}

fn publish_store(store: &Store, c: &ShardCounters) {
    let s = store.stats();
    c.used_bytes.store(s.used_bytes, Relaxed);
    c.blocks.store(s.blocks, Relaxed);
    c.segments.store(s.segments, Relaxed);
    c.evicted_blocks.store(s.evicted_blocks, Relaxed);
    c.reinserted_blocks.store(s.reinserted_blocks, Relaxed);
    c.corrupt_records.store(s.corrupt_records, Relaxed);
    c.device_bytes_read.store(s.device_bytes_read, Relaxed);
    c.cache_write_errors.store(s.write_errors, Relaxed);
    c.caching_paused.store(s.caching_paused as u64, Relaxed);
}

/// Apply control-plane commands in arrival order.
async fn commands(shard: Rc<Shard>, mut cmds: mpsc::UnboundedReceiver<ShardCmd>) {
    while let Some(cmd) = cmds.next().await {
        match cmd {
            ShardCmd::Pin { keys, pinned, reply } => {
                for k in &keys {
                    shard.store.set_pinned(*k, pinned);
                }
                let _ = reply.send(keys.iter().filter(|k| shard.store.contains(**k)).count() as u64);
            }
            ShardCmd::Remove { keys, reply } => {
                for k in &keys {
                    shard.mem.remove(*k);
                    shard.ahead.remove(*k);
                }
                let n = keys.iter().filter(|k| shard.store.remove(**k)).count() as u64;
                for k in &keys {
                    shard.store.set_pinned(*k, false);
                }
                // Freed blocks are read through the engine again.
                shard.void_direct();
                shard.publish();
                let _ = reply.send(n);
            }
            ShardCmd::Count { keys, reply } => {
                let _ = reply.send(keys.iter().filter(|k| shard.store.contains(**k)).count() as u64);
            }
            ShardCmd::Track { mount, blocks } => {
                for (k, len) in blocks.into_iter().filter(|(k, _)| shard.store.contains(*k)) {
                    let dropped = shard.quotas.track(&shard.store, &mount, k, len);
                    shard.counters.quota_evicted_blocks.fetch_add(dropped, Relaxed);
                }
                shard.publish();
            }
            ShardCmd::Prefetch { path, block, attr, from_cache } => {
                let key = shard.ns.block_key(&path, &attr.version, block);
                if shard.store.contains(key.hash) {
                    // Cached: read it from the segment ahead of the reader.
                    if from_cache {
                        shard.stage(key, &path, block, &attr);
                    }
                    continue;
                }
                if shard.has_or_fetching(&path, block, &attr) {
                    continue;
                }
                // A disk behind on writes would drop what is fetched ahead.
                if shard.readahead_inflight.get() >= READAHEAD_INFLIGHT_MAX
                    || shard.write_queue_bytes.get() > shard.write_queue_bytes_max / 2
                {
                    shard.counters.readahead_dropped.fetch_add(1, Relaxed);
                    continue;
                }
                shard.readahead_inflight.set(shard.readahead_inflight.get() + 1);
                shard.counters.readahead_blocks.fetch_add(1, Relaxed);
                let s = shard.clone();
                glommio::spawn_local(async move {
                    if let Err(e) = s.fetch(&path, block, Some(&attr)).await {
                        tracing::debug!(shard = s.id, path, block, error = %e.message, "read-ahead failed");
                    }
                    s.readahead_inflight.set(s.readahead_inflight.get() - 1);
                })
                .detach();
            }
            ShardCmd::Expire { keys, after } => {
                let Some(at) = Instant::now().checked_add(after) else { continue };
                let mut heap = shard.expiry.borrow_mut();
                heap.extend(keys.into_iter().map(|k| Reverse((at, k))));
            }
        }
    }
}

/// At start-up, publish every block this shard holds of the files whose
/// attributes the namespace remembers, so clients read directly from the
/// first read after a restart rather than after one pass through the shard.
async fn publish_cached(shard: Rc<Shard>) {
    let Some(p) = shard.direct.clone() else { return };
    let epoch = shard.direct_epoch();
    let shards = shard.peers.len();
    let t0 = Instant::now();
    let mut published = 0u64;
    for (i, (path, attr)) in shard.ns.known_files_under("/").into_iter().enumerate() {
        let bs = shard.ns.block_bytes(&path).max(1);
        for block in 0..attr.size.div_ceil(bs) {
            if stoker_proto::key::shard_for(&path, block, shards) != shard.id as usize {
                continue;
            }
            let key = shard.ns.block_key(&path, &attr.version, block);
            if shard.store.contains(key.hash) {
                p.publish(&shard.store, epoch, &path, block, &key, &attr);
                published += 1;
            }
        }
        if i % 1024 == 0 {
            glommio::yield_if_needed().await;
        }
    }
    tracing::info!(shard = shard.id, published, ms = t0.elapsed().as_millis() as u64, "direct-read table filled from the cache");
}

/// Drop blocks whose TTL has passed, and mark the blocks direct readers
/// read as read; twice a second.
async fn expire_forever(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(std::time::Duration::from_millis(500)).await;
        if let Some(p) = &shard.direct {
            let (table, id) = (&p.areas.table, shard.id);
            p.areas.feedback.sweep(id, |slot| {
                if let Some((key_hash, seg_id, offset)) = table.entry_place(id, slot) {
                    shard.store.mark_read(key_hash, seg_id, offset);
                }
            });
        }
        let now = Instant::now();
        let mut dropped = 0;
        loop {
            let due = matches!(shard.expiry.borrow().peek(), Some(Reverse((at, _))) if *at <= now);
            if !due {
                break;
            }
            let Some(Reverse((_, key))) = shard.expiry.borrow_mut().pop() else { break };
            shard.mem.remove(key);
            shard.ahead.remove(key);
            if shard.store.remove(key) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            shard.void_direct();
            shard.counters.expired_blocks.fetch_add(dropped, Relaxed);
            shard.publish();
            tracing::debug!(shard = shard.id, dropped, "TTL expired blocks");
        }
    }
}
