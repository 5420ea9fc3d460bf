//! The direct-read table: where, in which segment file, the engine last
//! served each cached (path, block) from, in shared memory, so a client on
//! the same box reads a hit from the segment itself — one device read in
//! the caller's thread, no round trip through the engine — and verifies it
//! with the record's own checksums (docs/ARCHITECTURE.md "Direct reads").
//!
//! Two areas, both created by the engine:
//! - the **table**, mapped read-only by clients: per shard a header (an
//!   epoch and a dropped-segments generation) and `sets × WAYS` entries of
//!   64 bytes, each under a seqlock. Only that shard's thread writes its
//!   part, so writers never contend.
//! - the **feedback** area, mapped read-write by clients: per shard the
//!   counters of the hits clients served themselves, and one touch byte per
//!   table entry that the engine sweeps into its eviction clock. A client
//!   that scribbles there skews statistics and eviction choices, nothing
//!   else: it cannot change what another client reads.
//!
//! An entry is used only while its epoch equals its shard's epoch (bumped
//! whenever the engine learns that a file changed, or drops a block) and
//! before its `valid_until` (when the file's attributes go stale). A cached
//! key names immutable bytes (the version is part of it), so an entry that
//! is out of date can only point at the right bytes of an old version,
//! which the epoch rules out, or at a segment that is gone, which the
//! client notices (no such file) and reads through the engine instead.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// First word of the table ("STKDIRT1").
pub const MAGIC: u64 = u64::from_le_bytes(*b"STKDIRT1");
/// Entries per set.
pub const WAYS: usize = 4;
/// Bytes of one entry (one cache line).
pub const ENTRY_BYTES: usize = 64;
/// Bytes of the table header and of each shard's header.
const HEADER_BYTES: usize = 64;
/// Bytes of each shard's counters in the feedback area.
const COUNTER_BYTES: usize = 64;
/// Most entries a table may have in all (64 MiB of table).
pub const ENTRIES_MAX: u64 = 1 << 20;

/// Where a hit lives and what it holds, as the engine published it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Hash of the block's full key (path, version, block); checked against the record.
    pub key_hash: u64,
    pub seg_id: u32,
    /// Byte offset of the record in its segment file (4 KiB aligned).
    pub offset: u64,
    /// Bytes of the record on disk (4 KiB aligned).
    pub record_len: u64,
    /// Offset of the block's data from the record's start.
    pub data_at: u32,
    /// Bytes of data in the block.
    pub block_len: u32,
    /// Size of the whole object when the entry was published.
    pub object_size: u64,
    /// CLOCK_MONOTONIC nanoseconds after which the entry must not be used.
    pub valid_until_ns: u64,
}

#[repr(C)]
struct Entry {
    seq: AtomicU32,
    block_len: AtomicU32,
    tag: AtomicU64,
    key_hash: AtomicU64,
    seg_id: AtomicU32,
    off_units: AtomicU32,
    len_units: AtomicU32,
    data_at: AtomicU32,
    object_size: AtomicU64,
    valid_until: AtomicU64,
    epoch: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Entry>() == ENTRY_BYTES);

/// The shape of a table: shard count and sets per shard (a power of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub shards: u32,
    pub sets: u32,
}

impl Shape {
    /// A shape with about `entries` entries in all (at most ENTRIES_MAX,
    /// at least one set per shard).
    pub fn new(shards: u32, entries: u64) -> Shape {
        let shards = shards.max(1);
        let per_shard = entries.min(ENTRIES_MAX) / shards as u64 / WAYS as u64;
        let sets = per_shard.max(1).next_power_of_two().min(1 << 24) as u32;
        Shape { shards, sets }
    }

    fn entries_per_shard(&self) -> usize {
        self.sets as usize * WAYS
    }

    fn part_bytes(&self) -> usize {
        HEADER_BYTES + self.entries_per_shard() * ENTRY_BYTES
    }

    pub fn table_bytes(&self) -> usize {
        HEADER_BYTES + self.shards as usize * self.part_bytes()
    }

    fn touch_bytes(&self) -> usize {
        self.entries_per_shard().div_ceil(64) * 64
    }

    pub fn feedback_bytes(&self) -> usize {
        self.shards as usize * (COUNTER_BYTES + self.touch_bytes())
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock `Instant` uses, shared by
/// every process on the box).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The tag of (path, block): the routing hash, never 0 (0 marks a free entry).
pub fn tag(path: &str, block: u64) -> u64 {
    crate::key::route_hash(path, block).max(1)
}

/// A view of a table mapping. The engine holds it read-write; clients
/// read-only (they only call `lookup`, `epoch` and `dropped`).
pub struct Table {
    base: *mut u8,
    shape: Shape,
}

// SAFETY: every access to the mapping goes through atomics.
unsafe impl Send for Table {}
unsafe impl Sync for Table {}

/// Why a mapping was refused as a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    Short,
    BadMagic,
    BadShape,
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableError::Short => write!(f, "direct-read table shorter than its shape"),
            TableError::BadMagic => write!(f, "direct-read table has a bad magic"),
            TableError::BadShape => write!(f, "direct-read table has an impossible shape"),
        }
    }
}

impl Table {
    /// Write a fresh header for `shape` into a zeroed mapping (engine only).
    ///
    /// # Safety
    /// `base` is 64-byte aligned, zeroed, `shape.table_bytes()` long, writable,
    /// and lives as long as the returned table.
    pub unsafe fn init(base: *mut u8, shape: Shape) -> Table {
        let t = Table { base, shape };
        t.word(8).store(shape.shards as u64, Ordering::Relaxed);
        t.word(16).store(shape.sets as u64, Ordering::Relaxed);
        t.word(0).store(MAGIC, Ordering::Release);
        t
    }

    /// A table over a mapping of `len` bytes written by `init`, checking
    /// its header against the length.
    ///
    /// # Safety
    /// `base` is 64-byte aligned, `len` bytes long, readable, and lives as
    /// long as the returned table.
    pub unsafe fn open(base: *mut u8, len: usize) -> Result<Table, TableError> {
        if len < HEADER_BYTES {
            return Err(TableError::Short);
        }
        let probe = Table { base, shape: Shape { shards: 0, sets: 0 } };
        if probe.word(0).load(Ordering::Acquire) != MAGIC {
            return Err(TableError::BadMagic);
        }
        let (shards, sets) = (probe.word(8).load(Ordering::Relaxed), probe.word(16).load(Ordering::Relaxed));
        if shards == 0 || shards > 4096 || sets == 0 || sets > 1 << 24 || !sets.is_power_of_two() {
            return Err(TableError::BadShape);
        }
        let shape = Shape { shards: shards as u32, sets: sets as u32 };
        if shape.table_bytes() > len {
            return Err(TableError::Short);
        }
        Ok(Table { base, shape })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        // SAFETY: callers pass 8-aligned offsets inside the mapping.
        unsafe { &*(self.base.add(at) as *const AtomicU64) }
    }

    fn part(&self, shard: u32) -> usize {
        HEADER_BYTES + shard as usize * self.shape.part_bytes()
    }

    fn entry(&self, shard: u32, slot: usize) -> &Entry {
        debug_assert!(shard < self.shape.shards && slot < self.shape.entries_per_shard());
        // SAFETY: inside the mapping (shape checked against its length), 64-aligned.
        unsafe { &*(self.base.add(self.part(shard) + HEADER_BYTES + slot * ENTRY_BYTES) as *const Entry) }
    }

    fn set_of(&self, tag: u64) -> usize {
        ((tag >> 32) as usize & (self.shape.sets as usize - 1)) * WAYS
    }

    /// The shard's epoch: entries of another epoch are void.
    pub fn epoch(&self, shard: u32) -> u64 {
        self.word(self.part(shard)).load(Ordering::Acquire)
    }

    /// Bumped whenever the shard drops segment files: a client then lets go
    /// of the descriptors it holds for that shard.
    pub fn dropped(&self, shard: u32) -> u64 {
        self.word(self.part(shard) + 8).load(Ordering::Acquire)
    }

    /// Void every entry of `shard` (engine only).
    pub fn bump_epoch(&self, shard: u32) {
        self.word(self.part(shard)).fetch_add(1, Ordering::AcqRel);
    }

    /// Say that `shard` dropped segment files (engine only).
    pub fn bump_dropped(&self, shard: u32) {
        self.word(self.part(shard) + 8).fetch_add(1, Ordering::AcqRel);
    }

    /// The live entry for `tag` on `shard`, with its slot (for `touch`).
    pub fn lookup(&self, shard: u32, tag: u64, now_ns: u64) -> Option<(usize, Hit)> {
        if shard >= self.shape.shards {
            return None;
        }
        let epoch = self.epoch(shard);
        let first = self.set_of(tag);
        for slot in first..first + WAYS {
            let e = self.entry(shard, slot);
            if e.tag.load(Ordering::Relaxed) != tag {
                continue;
            }
            let s1 = e.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                return None;
            }
            let hit = Hit {
                key_hash: e.key_hash.load(Ordering::Relaxed),
                seg_id: e.seg_id.load(Ordering::Relaxed),
                offset: e.off_units.load(Ordering::Relaxed) as u64 * 4096,
                record_len: e.len_units.load(Ordering::Relaxed) as u64 * 4096,
                data_at: e.data_at.load(Ordering::Relaxed),
                block_len: e.block_len.load(Ordering::Relaxed),
                object_size: e.object_size.load(Ordering::Relaxed),
                valid_until_ns: e.valid_until.load(Ordering::Relaxed),
            };
            let (e_tag, e_epoch) = (e.tag.load(Ordering::Relaxed), e.epoch.load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if e.seq.load(Ordering::Relaxed) != s1 || e_tag != tag || e_epoch != epoch || now_ns >= hit.valid_until_ns {
                return None;
            }
            return Some((slot, hit));
        }
        None
    }

    /// Publish `hit` for `tag` (engine only, from `shard`'s thread): into
    /// the entry holding `tag`, else a void one, else the way `tag` picks.
    /// `epoch` is the shard's epoch read before the facts in `hit` were
    /// (so a change in between leaves the entry void).
    pub fn publish(&self, shard: u32, tag: u64, hit: &Hit, epoch: u64, now_ns: u64) {
        if shard >= self.shape.shards || tag == 0 {
            return;
        }
        let first = self.set_of(tag);
        let current = self.epoch(shard);
        let void = |e: &Entry| {
            e.tag.load(Ordering::Relaxed) == 0
                || e.epoch.load(Ordering::Relaxed) != current
                || now_ns >= e.valid_until.load(Ordering::Relaxed)
        };
        let slot = (first..first + WAYS)
            .find(|&s| self.entry(shard, s).tag.load(Ordering::Relaxed) == tag)
            .or_else(|| (first..first + WAYS).find(|&s| void(self.entry(shard, s))))
            .unwrap_or(first + (tag as usize % WAYS));
        let e = self.entry(shard, slot);
        let s = e.seq.load(Ordering::Relaxed);
        e.seq.store(s.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        e.tag.store(tag, Ordering::Relaxed);
        e.key_hash.store(hit.key_hash, Ordering::Relaxed);
        e.seg_id.store(hit.seg_id, Ordering::Relaxed);
        e.off_units.store((hit.offset / 4096) as u32, Ordering::Relaxed);
        e.len_units.store((hit.record_len / 4096) as u32, Ordering::Relaxed);
        e.data_at.store(hit.data_at, Ordering::Relaxed);
        e.block_len.store(hit.block_len, Ordering::Relaxed);
        e.object_size.store(hit.object_size, Ordering::Relaxed);
        e.valid_until.store(hit.valid_until_ns, Ordering::Relaxed);
        e.epoch.store(epoch, Ordering::Relaxed);
        e.seq.store((s | 1).wrapping_add(1), Ordering::Release);
    }

    /// The key hash and place of the entry in `slot` (engine only, for the
    /// touch sweep): (key_hash, seg_id, offset).
    pub fn entry_place(&self, shard: u32, slot: usize) -> Option<(u64, u32, u64)> {
        if shard >= self.shape.shards || slot >= self.shape.entries_per_shard() {
            return None;
        }
        let e = self.entry(shard, slot);
        (e.tag.load(Ordering::Relaxed) != 0).then(|| {
            (e.key_hash.load(Ordering::Relaxed), e.seg_id.load(Ordering::Relaxed), e.off_units.load(Ordering::Relaxed) as u64 * 4096)
        })
    }
}

/// What clients served themselves on one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectCounts {
    pub hits: u64,
    pub bytes_served: u64,
    pub device_bytes_read: u64,
}

/// A view of the feedback area (read-write for engine and clients).
pub struct Feedback {
    base: *mut u8,
    shape: Shape,
}

// SAFETY: every access to the mapping goes through atomics.
unsafe impl Send for Feedback {}
unsafe impl Sync for Feedback {}

impl Feedback {
    /// # Safety
    /// `base` is 64-byte aligned, at least `shape.feedback_bytes()` long,
    /// writable, and lives as long as the returned view.
    pub unsafe fn new(base: *mut u8, shape: Shape) -> Feedback {
        Feedback { base, shape }
    }

    fn part(&self, shard: u32) -> usize {
        shard as usize * (COUNTER_BYTES + self.shape.touch_bytes())
    }

    fn counter(&self, shard: u32, i: usize) -> &AtomicU64 {
        // SAFETY: inside the mapping, 8-aligned.
        unsafe { &*(self.base.add(self.part(shard) + i * 8) as *const AtomicU64) }
    }

    fn touch_byte(&self, shard: u32, slot: usize) -> &AtomicU8 {
        // SAFETY: inside the mapping (slot < entries per shard).
        unsafe { &*(self.base.add(self.part(shard) + COUNTER_BYTES + slot) as *const AtomicU8) }
    }

    /// A client served a hit from `slot` itself.
    pub fn count_hit(&self, shard: u32, slot: usize, bytes: u64, device_bytes: u64) {
        if shard >= self.shape.shards || slot >= self.shape.entries_per_shard() {
            return;
        }
        self.counter(shard, 0).fetch_add(1, Ordering::Relaxed);
        self.counter(shard, 1).fetch_add(bytes, Ordering::Relaxed);
        self.counter(shard, 2).fetch_add(device_bytes, Ordering::Relaxed);
        let t = self.touch_byte(shard, slot);
        if t.load(Ordering::Relaxed) == 0 {
            t.store(1, Ordering::Relaxed);
        }
    }

    pub fn counts(&self, shard: u32) -> DirectCounts {
        if shard >= self.shape.shards {
            return DirectCounts::default();
        }
        DirectCounts {
            hits: self.counter(shard, 0).load(Ordering::Relaxed),
            bytes_served: self.counter(shard, 1).load(Ordering::Relaxed),
            device_bytes_read: self.counter(shard, 2).load(Ordering::Relaxed),
        }
    }

    /// Clear every touched slot of `shard`, calling `f` with each (engine only).
    pub fn sweep(&self, shard: u32, mut f: impl FnMut(usize)) {
        if shard >= self.shape.shards {
            return;
        }
        let n = self.shape.entries_per_shard();
        let words = n.div_ceil(8);
        for w in 0..words {
            // SAFETY: 8 touch bytes at a time, inside the padded touch array.
            let word = unsafe { &*(self.base.add(self.part(shard) + COUNTER_BYTES + w * 8) as *const AtomicU64) };
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            for slot in w * 8..(w * 8 + 8).min(n) {
                if self.touch_byte(shard, slot).swap(0, Ordering::Relaxed) != 0 {
                    f(slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(bytes: usize) -> Vec<u64> {
        vec![0u64; bytes.div_ceil(8) + 8]
    }

    fn aligned(v: &mut [u64]) -> *mut u8 {
        let p = v.as_mut_ptr() as *mut u8;
        // SAFETY: moves at most 56 bytes into a buffer padded by 64.
        unsafe { p.add(p.align_offset(64)) }
    }

    fn hit(n: u64) -> Hit {
        Hit { key_hash: n, seg_id: 3, offset: 8192, record_len: 4096 * 29, data_at: 256, block_len: 110_000, object_size: 110_000, valid_until_ns: u64::MAX }
    }

    #[test]
    fn publish_then_lookup_and_epoch_voids() {
        let shape = Shape::new(2, 64);
        let mut mem = area(shape.table_bytes());
        let base = aligned(&mut mem);
        // SAFETY: zeroed, aligned, long enough.
        let t = unsafe { Table::init(base, shape) };
        let reader = unsafe { Table::open(base, shape.table_bytes()) }.unwrap();
        let tg = tag("/m/a", 0);
        assert_eq!(reader.lookup(1, tg, 0), None);
        t.publish(1, tg, &hit(7), t.epoch(1), 0);
        let (_, h) = reader.lookup(1, tg, 0).expect("published");
        assert_eq!(h, hit(7));
        assert_eq!(reader.lookup(0, tg, 0), None, "other shard");
        t.bump_epoch(1);
        assert_eq!(reader.lookup(1, tg, 0), None, "a bumped epoch voids the entry");
        let stale = t.epoch(1) - 1;
        t.publish(1, tg, &hit(9), stale, 0);
        assert_eq!(reader.lookup(1, tg, 0), None, "published under an old epoch: void");
        t.publish(1, tg, &Hit { valid_until_ns: 100, ..hit(8) }, t.epoch(1), 0);
        assert_eq!(reader.lookup(1, tg, 99).map(|x| x.1.key_hash), Some(8));
        assert_eq!(reader.lookup(1, tg, 100), None, "past valid_until");
    }

    #[test]
    fn a_full_set_replaces_and_never_mixes_entries() {
        let shape = Shape::new(1, 4); // one set of WAYS entries
        let mut mem = area(shape.table_bytes());
        let t = unsafe { Table::init(aligned(&mut mem), shape) };
        let tags: Vec<u64> = (1..=40u64).map(|i| i << 1).collect();
        for &tg in &tags {
            t.publish(0, tg, &hit(tg), 0, 0);
        }
        let live: Vec<u64> = tags.iter().filter_map(|&tg| t.lookup(0, tg, 0)).map(|(_, h)| h.key_hash).collect();
        assert!(!live.is_empty() && live.len() <= WAYS, "{live:?}");
        for (i, &tg) in tags.iter().enumerate() {
            if let Some((_, h)) = t.lookup(0, tg, 0) {
                assert_eq!(h.key_hash, tags[i], "an entry answers only for its own tag");
            }
        }
    }

    #[test]
    fn open_refuses_bad_headers() {
        let shape = Shape::new(2, 64);
        let mut mem = area(shape.table_bytes());
        let base = aligned(&mut mem);
        assert_eq!(unsafe { Table::open(base, shape.table_bytes()) }.err(), Some(TableError::BadMagic));
        unsafe { Table::init(base, shape) };
        assert_eq!(unsafe { Table::open(base, shape.table_bytes() - 1) }.err(), Some(TableError::Short));
        unsafe { &*(base.add(16) as *const AtomicU64) }.store(3, Ordering::Relaxed);
        assert_eq!(unsafe { Table::open(base, shape.table_bytes()) }.err(), Some(TableError::BadShape));
    }

    #[test]
    fn feedback_counts_and_sweeps_touches() {
        let shape = Shape::new(2, 64);
        let mut mem = area(shape.feedback_bytes());
        let f = unsafe { Feedback::new(aligned(&mut mem), shape) };
        f.count_hit(1, 5, 100, 4096);
        f.count_hit(1, 5, 100, 4096);
        f.count_hit(1, 17, 1, 4096);
        f.count_hit(1, 1 << 30, 1, 1); // out of range: ignored
        assert_eq!(f.counts(1), DirectCounts { hits: 3, bytes_served: 201, device_bytes_read: 3 * 4096 });
        assert_eq!(f.counts(0), DirectCounts::default());
        let mut seen = Vec::new();
        f.sweep(1, |s| seen.push(s));
        assert_eq!(seen, vec![5, 17]);
        seen.clear();
        f.sweep(1, |s| seen.push(s));
        assert!(seen.is_empty(), "a sweep clears what it saw");
    }
}
