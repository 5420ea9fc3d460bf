//! The block store of one engine shard: cached blocks in append-only,
//! 4 KiB-aligned segment files read and written with O_DIRECT (glommio
//! DmaFile), an in-RAM index, rkyv index archives for fast restarts and
//! segment-granularity FIFO eviction with second chance.
//!
//! A `Store` lives on one glommio executor (it is `!Send`); every method takes
//! `&self`. It must never serve bytes that failed a check: every read verifies
//! magic, version, key and crc32c, and a failure becomes a miss.
//!
//! Files: `format` (record layout, from stoker-proto), `index.rs` (RAM index
//! and `.idx` archives), `segment.rs` (segment files: I/O only), `writer.rs`
//! (the append task and segment rolls), `recover.rs` (start-up), `evict.rs`
//! (capacity and reclaim: decides, and does its I/O through `segment.rs`),
//! `heads.rs` (verified record heads), `pause.rs` (caching paused after a
//! write error). Dependencies point one way: writer → evict → segment →
//! index → format; recover → segment. The format and the policy are
//! documented in docs/FORMAT.md.
//!
//! Owns: segment files, the index, capacity eviction. Must never: know about
//! paths, mounts, sessions or the control plane (it stores opaque keys), or
//! serve a byte that failed its checks.

pub use stoker_proto::format;
pub mod index;

mod evict;
pub use evict::clamp_segment_bytes;
mod heads;
mod pause;
mod recover;
mod segment;
mod writer;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

use futures::channel::{mpsc, oneshot};
use glommio::io::ReadResult;
use glommio::sync::Semaphore;

use format::{align_down, align_up, check_head, check_record, check_sub_blocks, RecordHeader, MAX_DATA_LEN, MAX_KEY_LEN, SUB_BLOCK};
use index::{IndexMap, Location};
use segment::Segments;
use writer::{Pending, WriterMsg};

/// Errors of the block store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("store i/o: {0}")]
    Glommio(String),
    #[error("corrupt store data: {0}")]
    Corruption(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("store full: {0}")]
    Full(String),
    #[error("store closed")]
    Closed,
}

impl From<glommio::GlommioError<()>> for StoreError {
    fn from(e: glommio::GlommioError<()>) -> Self {
        match e {
            glommio::GlommioError::IoError(io) => StoreError::Io(io),
            glommio::GlommioError::EnhancedIoError { source, op, path, fd } => StoreError::Io(std::io::Error::new(
                source.kind(),
                format!("{op} {path:?} (fd {fd:?}): {source}"),
            )),
            other => StoreError::Glommio(other.to_string()),
        }
    }
}

impl StoreError {
    /// A copy for fanning one failure out to every put of a batch.
    fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Io(e) => StoreError::Io(std::io::Error::new(e.kind(), e.to_string())),
            StoreError::Glommio(s) => StoreError::Glommio(s.clone()),
            StoreError::Corruption(s) => StoreError::Corruption(s.clone()),
            StoreError::InvalidArgument(s) => StoreError::InvalidArgument(s.clone()),
            StoreError::Full(s) => StoreError::Full(s.clone()),
            StoreError::Closed => StoreError::Closed,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Default segment size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 << 20;
/// Smallest segment the store will clamp to.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;
/// Bytes of encoded records that may wait for the writer before `put` waits
/// (backpressure bound on queued memory).
const QUEUE_BYTES_MAX: u64 = 16 << 20;
/// Bytes of record heads kept in memory per store: 16 MiB holds the heads
/// (8 KiB each) of 2,048 blocks of 4 MiB, 8 GiB of large-file data.
const HEAD_CACHE_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// This shard's directory, created if missing.
    pub dir: PathBuf,
    /// Size of one segment file (default 256 MiB). Clamped so that
    /// capacity holds at least three segments (see docs/FORMAT.md).
    pub segment_bytes: u64,
    /// Total bytes of segment data files this store may keep on disk.
    pub capacity_bytes: u64,
}

impl StoreConfig {
    pub fn new(dir: impl Into<PathBuf>, capacity_bytes: u64) -> StoreConfig {
        StoreConfig { dir: dir.into(), segment_bytes: DEFAULT_SEGMENT_BYTES, capacity_bytes }
    }
}

/// What `open` found and did: the same record `stoker stat` shows (one
/// definition, in stoker-proto).
pub use stoker_proto::control::RecoveryStats as RecoveryReport;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of segment data files (sealed sizes + open segment written end).
    pub used_bytes: u64,
    pub blocks: u64,
    pub segments: u64,
    pub evicted_blocks: u64,
    pub reinserted_blocks: u64,
    pub corrupt_records: u64,
    /// Bytes read from segment files to serve `get` and `get_range`.
    pub device_bytes_read: u64,
    /// Segment writes that failed (a full disk, an I/O error).
    pub write_errors: u64,
    /// Whether caching is paused after a write error (see `accepts_writes`).
    pub caching_paused: bool,
}

/// A block (or the range of one asked of `get_range`) read from the store;
/// holds the read buffer.
pub struct Block {
    /// None for a block asked for no bytes.
    buf: Option<ReadResult>,
    start: usize,
    len: usize,
    /// Length of the whole block as its record says.
    block_len: u64,
}

impl Block {
    /// Length of the whole block the record holds (a range read returns
    /// fewer bytes in `data`).
    pub fn block_len(&self) -> u64 {
        self.block_len
    }

    pub fn data(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.start..self.start + self.len],
            None => &[],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block").field("len", &self.len).finish()
    }
}

#[derive(Default)]
struct Counters {
    evicted_blocks: Cell<u64>,
    reinserted_blocks: Cell<u64>,
    corrupt_records: Cell<u64>,
    device_bytes_read: Cell<u64>,
}

/// State shared by the `Store` handle and its writer task.
struct Shared {
    dir: PathBuf,
    segment_bytes: u64,
    capacity_bytes: u64,
    index: RefCell<IndexMap>,
    segs: RefCell<Segments>,
    counters: Counters,
    /// Key hashes that reclaim must keep (copied forward, never dropped).
    pinned: RefCell<std::collections::HashSet<u64>>,
    eviction: Cell<Eviction>,
    /// Logical clock of reads, and the last tick each segment was read at
    /// (used by `Eviction::Lru`).
    clock: Cell<u64>,
    last_read: RefCell<std::collections::HashMap<u32, u64>>,
    /// Verified heads of large records, so a range read of one reads only data.
    heads: RefCell<heads::HeadCache>,
    /// Called after segment files are deleted (clients holding descriptors
    /// of them must let go, or the space stays in use).
    on_drop: RefCell<Option<Box<dyn Fn()>>>,
    /// Whether writes are paused after a write error (a full disk), and
    /// until when.
    pause: pause::Pause,
    /// Keys whose tombstones could not be written (writes were paused or
    /// failed): written ahead of the next batch that reaches the disk, so a
    /// `free` during a full disk is not undone by a restart. Key hashes
    /// only (8 bytes each, at most one per removed block).
    owed_tombstones: RefCell<Vec<u64>>,
}

/// How a full store picks what to drop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Eviction {
    /// Oldest segment first; blocks read since they were written get one
    /// more round (copied forward, within half a segment).
    #[default]
    FifoReinsert,
    /// The segment read least recently goes first, whole (no copying but
    /// for pinned blocks): recently read data stays without being rewritten.
    Lru,
}

impl std::str::FromStr for Eviction {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Eviction, String> {
        match s {
            "fifo-reinsert" => Ok(Eviction::FifoReinsert),
            "lru" => Ok(Eviction::Lru),
            other => Err(format!("unknown eviction policy {other:?}: use fifo-reinsert or lru")),
        }
    }
}

pub struct Store {
    shared: Rc<Shared>,
    tx: mpsc::UnboundedSender<WriterMsg>,
    queue_bytes: Rc<Semaphore>,
    /// `dir/LOCK`, flock'ed exclusively for the store's lifetime.
    _lock: std::fs::File,
    /// The writer task; dropping the store cancels it (queued, unwritten
    /// puts then fail with `Closed` — the "crash" the tests simulate).
    _writer: glommio::Task<()>,
}

/// Bytes each of `dirs` (the shard directories under `root`) may plan on
/// holding on the filesystem of `root`: what is free to the engine now
/// (statvfs `f_bavail`) plus the segment files already there, less 1/16 for
/// index archives, metadata and the filesystem's own needs, split evenly.
/// None when the filesystem cannot be asked.
#[allow(clippy::unnecessary_cast)] // statvfs field types differ between platforms
pub fn per_shard_room(root: &std::path::Path, dirs: &[PathBuf]) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_root = std::ffi::CString::new(root.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: statvfs writes one struct statvfs through the pointer, which
    // points to one; the path is a valid NUL-terminated string.
    if unsafe { libc::statvfs(c_root.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled the struct (zeroed before).
    let st = unsafe { st.assume_init() };
    let free = (st.f_bavail as u64).checked_mul(st.f_frsize as u64)?;
    let mut ours: u64 = 0;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".dat") {
                ours = ours.saturating_add(e.metadata().map_or(0, |m| m.len()));
            }
        }
    }
    let room = free.saturating_add(ours);
    Some((room - room / 16) / (dirs.len().max(1) as u64))
}

/// How long opening a cache waits for a lock held by another process (one
/// killed a moment ago may still be being torn down) before giving up.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes an exclusive flock on `file`, retrying every 50 ms for up to
/// `wait` while another process holds it. Ok(false) if it is still held
/// then; `waiting` is called once, when the first try finds it held.
pub fn flock_wait(file: &std::fs::File, wait: std::time::Duration, waiting: impl FnOnce()) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + wait;
    let mut waiting = Some(waiting);
    loop {
        // SAFETY: flock only takes a file descriptor, which `file` owns and
        // keeps open for the duration of the call; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        if let Some(w) = waiting.take() {
            w();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Takes an exclusive flock on `dir/LOCK` (waiting up to [`LOCK_WAIT`]) so
/// two stores (in this process or another) never append to the same segments.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK"))?;
    if !flock_wait(&file, LOCK_WAIT, || {})? {
        return Err(StoreError::InvalidArgument(format!("{} is in use by another store", dir.display())));
    }
    Ok(file)
}

impl Store {
    /// Opens (or creates) the store in `cfg.dir`: maps the sealed segments'
    /// index archives, scans the open segment, truncates a torn tail and
    /// enforces the capacity. Must run inside a glommio executor.
    pub async fn open(cfg: StoreConfig) -> Result<(Store, RecoveryReport)> {
        let (segment_bytes, capacity_bytes) = evict::clamp_config(&cfg)?;
        let started = std::time::Instant::now();
        std::fs::create_dir_all(&cfg.dir)?;
        let lock = lock_dir(&cfg.dir)?;
        segment::probe_device(&cfg.dir).await?;
        let (index, segs, mut report) = recover::recover(&cfg.dir, segment_bytes).await?;
        let shared = Rc::new(Shared {
            dir: cfg.dir.clone(),
            segment_bytes,
            capacity_bytes,
            index: RefCell::new(index),
            segs: RefCell::new(segs),
            counters: Counters::default(),
            pinned: RefCell::default(),
            eviction: Cell::new(Eviction::default()),
            clock: Cell::new(0),
            last_read: RefCell::default(),
            heads: RefCell::new(heads::HeadCache::new(HEAD_CACHE_BYTES)),
            on_drop: RefCell::default(),
            pause: pause::Pause::default(),
            owed_tombstones: RefCell::default(),
        });
        evict::enforce_capacity(&shared).await?;
        report.elapsed_us = started.elapsed().as_micros() as u64;
        let (tx, rx) = mpsc::unbounded();
        let writer = glommio::spawn_local(writer::run_writer(shared.clone(), rx));
        let queue_bytes = Rc::new(Semaphore::new(QUEUE_BYTES_MAX));
        let store = Store { shared, tx, queue_bytes, _lock: lock, _writer: writer };
        Ok((store, report))
    }

    /// Looks `key` up. `None` on a miss or when the record fails a check
    /// (then the index entry is dropped and `corrupt_records` counted).
    /// A key_hash collision (valid record, other key) is a plain miss.
    /// Reads and verifies the whole record.
    pub async fn get(&self, key_hash: u64, key: &[u8]) -> Result<Option<Block>> {
        let Some((packed, loc, file)) = self.locate(key_hash) else { return Ok(None) };
        let buf = self.read(&file, loc.offset_bytes(), loc.len_bytes()).await?;
        let view = match check_record(&buf) {
            Ok(v) => v,
            Err(e) => {
                self.drop_corrupt(key_hash, packed, &e.to_string());
                return Ok(None);
            }
        };
        if !self.matches(key_hash, key, packed, loc, &view, &buf) {
            return Ok(None);
        }
        let block_len = view.header.data_len as u64;
        Ok(Some(Block { start: view.data_start, len: block_len as usize, buf: Some(buf), block_len }))
    }

    /// Bytes `[off, off + len)` of the block under `key`, whose length the
    /// caller expects to be `block_len`. Reads the record's head (header,
    /// key, crc table) and only the sub-blocks the range touches, and
    /// verifies exactly those: one read when they are near the head, two
    /// at once otherwise. `len` 0 checks that the block is there (head
    /// only). A block of another length comes back with no data and its
    /// own `block_len()`, for the caller to drop. A version 1 record is read
    /// and verified whole.
    pub async fn get_range(&self, key_hash: u64, key: &[u8], block_len: u64, off: u64, len: u64) -> Result<Option<Block>> {
        let Some((packed, loc, file)) = self.locate(key_hash) else { return Ok(None) };
        let d = block_len as usize;
        let off = (off as usize).min(d);
        let end = off.saturating_add(len as usize).min(d);
        // Where everything is if the record is a version 2 record of this key and length.
        let expect = RecordHeader { key_len: key.len() as u32, data_len: block_len as u32, ..RecordHeader::for_block(key_hash, key, &[]) };
        if d > MAX_DATA_LEN || expect.record_len() != loc.len_bytes() {
            return self.get_whole_as_range(key_hash, key, block_len, off, end).await;
        }
        let data_start = expect.data_start() as u64;
        let head_to = align_up(expect.head_len() as u64);
        let first = off / SUB_BLOCK;
        let subs_end = if end > off { end.div_ceil(SUB_BLOCK) } else { first };
        let data_from = data_start + (first * SUB_BLOCK) as u64;
        let data_to = data_start + (subs_end * SUB_BLOCK).min(d) as u64;
        let (disk_from, disk_to) = (align_down(data_from), align_up(data_to));
        let base = loc.offset_bytes();
        let empty = subs_end == first;
        let cached = self.shared.heads.borrow_mut().get(key_hash, packed);
        // The head from memory (large blocks read before), one read from the
        // record start when the range is near the head, or two at once.
        let (head, data, data_buf_at): (Option<Rc<[u8]>>, Option<ReadResult>, u64) = match cached {
            Some(h) if empty => (Some(h), None, 0),
            Some(h) => (Some(h), Some(self.read(&file, base + disk_from, disk_to - disk_from).await?), disk_from),
            None if empty => (None, Some(self.read(&file, base, head_to).await?), 0),
            None if disk_to <= head_to || disk_from <= head_to + (64 << 10) => {
                (None, Some(self.read(&file, base, disk_to.max(head_to)).await?), 0)
            }
            None => {
                let (h, b) = futures::join!(
                    self.read(&file, base, head_to),
                    self.read(&file, base + disk_from, disk_to - disk_from)
                );
                let h: Rc<[u8]> = Rc::from(&h?[..]);
                (Some(h), Some(b?), disk_from)
            }
        };
        let head_buf: &[u8] = match (&head, &data) {
            (Some(h), _) => h,
            (None, Some(d)) => d,
            (None, None) => unreachable!("a head is read or cached"),
        };
        let view = match check_head(head_buf) {
            Ok(v) => v,
            Err(e) => {
                self.drop_corrupt(key_hash, packed, &e.to_string());
                return Ok(None);
            }
        };
        if view.header.version == format::FORMAT_V1 {
            return self.get_whole_as_range(key_hash, key, block_len, off, end).await;
        }
        if !self.matches(key_hash, key, packed, loc, &view, head_buf) {
            return Ok(None);
        }
        if view.header.data_len as u64 != block_len {
            return Ok(Some(Block { buf: None, start: 0, len: 0, block_len: view.header.data_len as u64 }));
        }
        if let Some(h) = &head {
            self.shared.heads.borrow_mut().insert(key_hash, packed, h.clone());
        }
        let (false, Some(dbuf)) = (empty, data.as_ref()) else {
            return Ok(Some(Block { buf: None, start: 0, len: 0, block_len }));
        };
        let at = (data_from - data_buf_at) as usize;
        let sub_bytes = (data_to - data_from) as usize;
        let Some(range) = dbuf.get(at..at + sub_bytes) else {
            self.drop_corrupt(key_hash, packed, "short read of a record");
            return Ok(None);
        };
        if let Err(e) = check_sub_blocks(head_buf, &view, first, range) {
            self.drop_corrupt(key_hash, packed, &e.to_string());
            return Ok(None);
        }
        let start = at + (off - first * SUB_BLOCK);
        Ok(Some(Block { buf: data, start, len: end - off, block_len }))
    }

    /// `get_range` for a record that must be read whole (version 1, or a
    /// length that does not fit the version 2 layout).
    async fn get_whole_as_range(&self, key_hash: u64, key: &[u8], block_len: u64, off: usize, end: usize) -> Result<Option<Block>> {
        let Some(mut b) = self.get(key_hash, key).await? else { return Ok(None) };
        if b.block_len == block_len {
            b.start += off;
            b.len = end - off;
        } else {
            b.len = 0;
        }
        Ok(Some(b))
    }

    /// The index entry of `key_hash` and its segment file.
    fn locate(&self, key_hash: u64) -> Option<(u64, Location, Rc<glommio::io::DmaFile>)> {
        let packed = self.shared.index.borrow().get(&key_hash).copied()?;
        let loc = Location::unpack(packed);
        let Some(file) = self.shared.segs.borrow().file(loc.seg_id) else {
            // Should not happen: the segment went away under a live entry.
            self.drop_corrupt(key_hash, packed, "segment file missing");
            return None;
        };
        Some((packed, loc, file))
    }

    /// One O_DIRECT read, counted in `device_bytes_read`.
    async fn read(&self, file: &glommio::io::DmaFile, pos: u64, len: u64) -> Result<ReadResult> {
        let buf = file.read_at_aligned(pos, len as usize).await?;
        let c = &self.shared.counters.device_bytes_read;
        c.set(c.get() + len);
        Ok(buf)
    }

    /// Whether a record whose head passed its checks is the block of `key`
    /// the index points to; a mismatch with the index is corruption, another
    /// key with the same hash a plain miss. A match marks the block read.
    fn matches(&self, key_hash: u64, key: &[u8], packed: u64, loc: Location, view: &format::RecordView, buf: &[u8]) -> bool {
        let h = view.header;
        if h.is_tombstone() || h.key_hash != key_hash || h.record_len() != loc.len_bytes() {
            self.drop_corrupt(key_hash, packed, "record does not match its index entry");
            return false;
        }
        if view.key(buf) != key {
            // A different key with the same 64-bit hash: its record is fine.
            return false;
        }
        if let Some(v) = self.shared.index.borrow_mut().get_mut(&key_hash) {
            if Location::same_place(*v, packed) {
                *v = Location::with_accessed(*v);
            }
        }
        let tick = self.shared.clock.get() + 1;
        self.shared.clock.set(tick);
        self.shared.last_read.borrow_mut().insert(loc.seg_id, tick);
        true
    }

    fn drop_corrupt(&self, key_hash: u64, packed: u64, why: &str) {
        self.shared.heads.borrow_mut().remove(key_hash);
        let mut index = self.shared.index.borrow_mut();
        if index.get(&key_hash).is_some_and(|v| Location::same_place(*v, packed)) {
            index.remove(&key_hash);
        }
        let c = &self.shared.counters.corrupt_records;
        c.set(c.get() + 1);
        tracing::warn!(key_hash, ?packed, why, "store: refusing a record that failed its checks");
    }

    /// Appends a block. Returns once the record is written (not fsynced) and
    /// indexed. Safe to call from many tasks of the executor at once.
    pub async fn put(&self, key_hash: u64, key: &[u8], data: &[u8]) -> Result<()> {
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::InvalidArgument(format!("key of {} bytes > {MAX_KEY_LEN}", key.len())));
        }
        if data.len() > MAX_DATA_LEN {
            return Err(StoreError::InvalidArgument(format!("block of {} bytes > {MAX_DATA_LEN}", data.len())));
        }
        let header = RecordHeader::for_block(key_hash, key, data);
        let len = header.record_len();
        if len > self.shared.segment_bytes {
            return Err(StoreError::InvalidArgument(format!(
                "record of {len} bytes does not fit a {} byte segment",
                self.shared.segment_bytes
            )));
        }
        let units = len.min(QUEUE_BYTES_MAX);
        let permit = self
            .queue_bytes
            .acquire_static_permit(units)
            .await
            .map_err(|e| StoreError::Glommio(e.to_string()))?;
        let mut bytes = vec![0u8; len as usize];
        format::encode_record(&header, key, data, &mut bytes);
        let (done_tx, done_rx) = oneshot::channel();
        let pending = Pending { key_hash, flags: 0, bytes, done: Some(done_tx), _permit: Some(permit) };
        self.tx.unbounded_send(WriterMsg::Put(pending)).map_err(|_| StoreError::Closed)?;
        done_rx.await.map_err(|_| StoreError::Closed)?
    }

    pub fn is_pinned(&self, key_hash: u64) -> bool {
        self.shared.pinned.borrow().contains(&key_hash)
    }

    /// Choose the eviction policy (default `FifoReinsert`).
    pub fn set_eviction(&self, e: Eviction) {
        self.shared.eviction.set(e);
    }

    /// Keep (or stop keeping) a key through reclaims: a pinned block is
    /// copied forward when its segment is reclaimed, whether read or not.
    /// The set lives in RAM; the engine re-derives it from its policies.
    pub fn set_pinned(&self, key_hash: u64, pinned: bool) {
        let mut set = self.shared.pinned.borrow_mut();
        if pinned {
            set.insert(key_hash);
        } else {
            set.remove(&key_hash);
        }
    }

    /// Call `f` whenever segment files are deleted.
    pub fn set_on_segment_drop(&self, f: Box<dyn Fn()>) {
        *self.shared.on_drop.borrow_mut() = Some(f);
    }

    /// Where the record of `key_hash` is, if indexed.
    pub fn location(&self, key_hash: u64) -> Option<Location> {
        self.shared.index.borrow().get(&key_hash).map(|&p| Location::unpack(p))
    }

    /// A client read the record of `key_hash` at `(seg_id, offset)` itself:
    /// mark it read, as a hit through `get` would (eviction keeps it).
    pub fn mark_read(&self, key_hash: u64, seg_id: u32, offset: u64) {
        let mut index = self.shared.index.borrow_mut();
        let Some(v) = index.get_mut(&key_hash) else { return };
        let loc = Location::unpack(*v);
        if loc.seg_id != seg_id || loc.offset_bytes() != offset {
            return;
        }
        *v = Location::with_accessed(*v);
        drop(index);
        let tick = self.shared.clock.get() + 1;
        self.shared.clock.set(tick);
        self.shared.last_read.borrow_mut().insert(seg_id, tick);
    }

    pub fn contains(&self, key_hash: u64) -> bool {
        self.shared.index.borrow().contains_key(&key_hash)
    }

    /// Drops `key_hash` from the index at once and queues a tombstone record
    /// so a restart does not bring it back (a crash before the tombstone is
    /// written may). Space is reclaimed with the segment.
    pub fn remove(&self, key_hash: u64) -> bool {
        let found = self.shared.index.borrow_mut().remove(&key_hash).is_some();
        if found {
            // A closed writer means the store is being dropped; nothing to do.
            let _ = self.tx.unbounded_send(WriterMsg::Put(Pending::tombstone(key_hash)));
        }
        found
    }

    pub fn stats(&self) -> StoreStats {
        let segs = self.shared.segs.borrow();
        let c = &self.shared.counters;
        StoreStats {
            used_bytes: segs.used_bytes(),
            blocks: self.shared.index.borrow().len() as u64,
            segments: segs.count(),
            evicted_blocks: c.evicted_blocks.get(),
            reinserted_blocks: c.reinserted_blocks.get(),
            corrupt_records: c.corrupt_records.get(),
            device_bytes_read: c.device_bytes_read.get(),
            write_errors: self.shared.pause.errors(),
            caching_paused: self.shared.pause.paused(),
        }
    }

    /// False while writes are paused after a write error and the back-off
    /// has not run out: a caller should serve the block without caching it
    /// (a `put` now fails at once). True again once the back-off is over, so
    /// the next put tries the disk; a success resumes caching.
    pub fn accepts_writes(&self) -> bool {
        !self.shared.pause.holding(std::time::Instant::now())
    }

    /// Waits for every put queued before this call, then fdatasyncs the open
    /// segment.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.unbounded_send(WriterMsg::Flush(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Bytes read from segment files to serve `get` and `get_range` so far
    /// (cheap: for publishing after every read).
    pub fn device_bytes_read(&self) -> u64 {
        self.shared.counters.device_bytes_read.get()
    }

    /// Effective segment size after clamping.
    pub fn segment_bytes(&self) -> u64 {
        self.shared.segment_bytes
    }

    /// Index entries as `(key_hash, seg_id, offset_units, len_units)`, sorted,
    /// accessed bit ignored. For tests and tools; O(blocks).
    pub fn index_snapshot(&self) -> Vec<(u64, u32, u32, u32)> {
        let mut v: Vec<_> = self
            .shared
            .index
            .borrow()
            .iter()
            .map(|(&k, &p)| {
                let l = Location::unpack(p);
                (k, l.seg_id, l.offset_units, l.len_units)
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Bytes the RAM index has allocated (hash table buckets and control bytes).
    pub fn index_allocated_bytes(&self) -> u64 {
        index::index_allocated_bytes(&self.shared.index.borrow())
    }
}
