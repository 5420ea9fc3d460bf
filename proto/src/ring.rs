//! Layout of the shared-memory area between a client and the engine, and the
//! single-producer/single-consumer rings that live in it.
//!
//! ```text
//! offset 0            AreaHeader (one 4 KiB page)
//! for each shard s:   SQ ring (client -> shard s), CQ ring (shard s -> client)
//! data_offset         data area: slots the client allocates, 4 KiB aligned
//! ```
//!
//! A ring is a 128-byte header (head and tail on their own cache lines) and
//! `entries` fixed-size slots. Each side keeps its own cursor privately and
//! only publishes it, so a misbehaving peer can make a ring look full or
//! corrupt, but can never make this side read or write outside the ring.
//!
//! Nothing here owns the memory; callers map it and keep it mapped for as
//! long as a `Producer`/`Consumer` built over it lives.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

pub const AREA_MAGIC: u64 = 0x5354_4b52_4e47_0001; // "STKRNG" v1
pub const PAGE: u64 = 4096;
/// Most shards an area may be laid out for (an engine runs one per core).
pub const SHARDS_MAX: u32 = 4096;
const RING_HEADER_BYTES: u64 = 128;

/// The request asks the engine to cache the block but copy nothing back
/// (preload); the completion still carries the byte count.
pub const FLAG_NO_DATA: u32 = 1;

/// A read request posted by a client on a shard's SQ.
///
/// The client writes the path bytes at `buf_off` in the data area; the engine
/// copies the path out before it writes data into the same slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SqEntry {
    pub req_id: u64,
    /// Slot in the data area (offset from the data area start), 4 KiB aligned.
    pub buf_off: u64,
    /// Slot capacity in bytes.
    pub buf_len: u64,
    /// Block index of the object (offset / block_bytes).
    pub block: u64,
    /// Offset inside the block.
    pub off_in_block: u64,
    /// Bytes wanted; at most up to the block end.
    pub len: u64,
    pub path_len: u32,
    pub flags: u32,
    pub _reserved: u64,
}

/// A completion posted by a shard on its CQ.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CqEntry {
    pub req_id: u64,
    /// Bytes placed at `data_off` (may be short at end of object), or -errno.
    pub result: i64,
    /// Where the bytes start, as an offset from the data area start.
    pub data_off: u64,
    /// Size of the whole object, so the client knows where EOF is.
    pub object_size: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AreaHeader {
    pub magic: u64,
    pub version: u32,
    pub shards: u32,
    pub ring_entries: u32,
    pub _pad: u32,
    pub data_offset: u64,
    pub data_bytes: u64,
}

/// Offsets of everything in an area with `shards` shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shards: u32,
    pub ring_entries: u32,
    pub data_offset: u64,
    pub data_bytes: u64,
}

fn ring_bytes<T>(entries: u32) -> u64 {
    RING_HEADER_BYTES + entries as u64 * std::mem::size_of::<T>() as u64
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl Layout {
    /// `ring_entries` is rounded up to a power of two; `data_bytes` to pages.
    pub fn new(shards: u32, ring_entries: u32, data_bytes: u64) -> Layout {
        let ring_entries = ring_entries.clamp(2, 1 << 16).next_power_of_two();
        let per_shard = ring_bytes::<SqEntry>(ring_entries) + ring_bytes::<CqEntry>(ring_entries);
        let data_offset = round_up(PAGE + per_shard * shards as u64, PAGE);
        Layout { shards, ring_entries, data_offset, data_bytes: round_up(data_bytes, PAGE) }
    }

    pub fn total_bytes(&self) -> u64 {
        self.data_offset + self.data_bytes
    }

    pub fn sq_offset(&self, shard: u32) -> u64 {
        let per_shard =
            ring_bytes::<SqEntry>(self.ring_entries) + ring_bytes::<CqEntry>(self.ring_entries);
        PAGE + per_shard * shard as u64
    }

    pub fn cq_offset(&self, shard: u32) -> u64 {
        self.sq_offset(shard) + ring_bytes::<SqEntry>(self.ring_entries)
    }

    pub fn header(&self) -> AreaHeader {
        AreaHeader {
            magic: AREA_MAGIC,
            version: crate::PROTOCOL_VERSION,
            shards: self.shards,
            ring_entries: self.ring_entries,
            _pad: 0,
            data_offset: self.data_offset,
            data_bytes: self.data_bytes,
        }
    }

    /// Write the header at the start of a mapped area.
    ///
    /// # Safety
    /// `base` must point to at least `total_bytes()` writable, page-aligned bytes.
    pub unsafe fn write_header(&self, base: *mut u8) {
        // SAFETY: the caller guarantees the area is mapped, writable and aligned.
        unsafe { std::ptr::write_volatile(base as *mut AreaHeader, self.header()) }
    }

    /// Read and check the header of an area of `len` bytes mapped at `base`.
    ///
    /// # Safety
    /// `base` must point to `len` readable, page-aligned bytes.
    pub unsafe fn read_header(base: *const u8, len: u64) -> Result<Layout, String> {
        if len < PAGE {
            return Err(format!("shared area too small: {len} bytes"));
        }
        // SAFETY: the caller guarantees at least one page is mapped and readable.
        let h = unsafe { std::ptr::read_volatile(base as *const AreaHeader) };
        if h.magic != AREA_MAGIC || h.version != crate::PROTOCOL_VERSION {
            return Err("shared area has a wrong magic or version".into());
        }
        // Every value comes from the client: bound them before any arithmetic
        // (a data_bytes near 2^64 would wrap the layout's offsets).
        if h.shards == 0 || h.shards > SHARDS_MAX || h.data_bytes > len || h.ring_entries > 1 << 16 {
            return Err("shared area header does not match its size".into());
        }
        let layout = Layout::new(h.shards, h.ring_entries, h.data_bytes);
        if layout.header() != h || layout.data_offset.checked_add(layout.data_bytes).is_none_or(|t| t > len) {
            return Err("shared area header does not match its size".into());
        }
        Ok(layout)
    }
}

/// Shared part of a producer or consumer: the ring header and its slots.
struct Ring<T> {
    head: *const AtomicU32,
    tail: *const AtomicU32,
    slots: *mut T,
    mask: u32,
    _t: PhantomData<T>,
}

impl<T: Copy> Ring<T> {
    /// # Safety
    /// `base` points to a ring of `entries` slots laid out by `Layout` and
    /// stays mapped for the life of the ring.
    unsafe fn new(base: *mut u8, entries: u32) -> Ring<T> {
        debug_assert!(entries.is_power_of_two());
        Ring {
            head: base as *const AtomicU32,
            // SAFETY: the tail lives 64 bytes in, inside the 128-byte header.
            tail: unsafe { base.add(64) } as *const AtomicU32,
            // SAFETY: slots start right after the header, inside the mapping.
            slots: unsafe { base.add(RING_HEADER_BYTES as usize) } as *mut T,
            mask: entries - 1,
            _t: PhantomData,
        }
    }

    fn head(&self) -> &AtomicU32 {
        // SAFETY: points into the mapping, 4-byte aligned, valid while self lives.
        unsafe { &*self.head }
    }

    fn tail(&self) -> &AtomicU32 {
        // SAFETY: as for head().
        unsafe { &*self.tail }
    }
}

/// The writing side of a ring.
pub struct Producer<T> {
    ring: Ring<T>,
    tail: u32,
}

/// The reading side of a ring.
pub struct Consumer<T> {
    ring: Ring<T>,
    head: u32,
}

// SAFETY: a Producer/Consumer is the only user of its side of the ring; the
// memory it points to is shared memory kept mapped by the owner.
unsafe impl<T: Send> Send for Producer<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Consumer<T> {}

/// The peer published a cursor that cannot be right; the session must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt;

impl<T: Copy> Producer<T> {
    /// # Safety
    /// As for the ring: `base` is the ring's start in a live mapping, and no
    /// other producer exists for it.
    pub unsafe fn new(base: *mut u8, entries: u32) -> Producer<T> {
        // SAFETY: forwarded from the caller.
        let ring = unsafe { Ring::new(base, entries) };
        let tail = ring.tail().load(Ordering::Acquire);
        Producer { ring, tail }
    }

    /// Post one entry; `Ok(false)` when the ring is full.
    pub fn push(&mut self, entry: T) -> Result<bool, Corrupt> {
        let head = self.ring.head().load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > self.ring.mask + 1 {
            return Err(Corrupt);
        }
        if used == self.ring.mask + 1 {
            return Ok(false);
        }
        let idx = (self.tail & self.ring.mask) as usize;
        // SAFETY: idx <= mask, so the slot is inside the ring.
        unsafe { std::ptr::write_volatile(self.ring.slots.add(idx), entry) };
        self.tail = self.tail.wrapping_add(1);
        self.ring.tail().store(self.tail, Ordering::Release);
        Ok(true)
    }
}

impl<T: Copy> Consumer<T> {
    /// # Safety
    /// As for `Producer::new`, for the single consumer.
    pub unsafe fn new(base: *mut u8, entries: u32) -> Consumer<T> {
        // SAFETY: forwarded from the caller.
        let ring = unsafe { Ring::new(base, entries) };
        let head = ring.head().load(Ordering::Acquire);
        Consumer { ring, head }
    }

    /// Take one entry, if any.
    pub fn pop(&mut self) -> Result<Option<T>, Corrupt> {
        let tail = self.ring.tail().load(Ordering::Acquire);
        let avail = tail.wrapping_sub(self.head);
        if avail > self.ring.mask + 1 {
            return Err(Corrupt);
        }
        if avail == 0 {
            return Ok(None);
        }
        let idx = (self.head & self.ring.mask) as usize;
        // SAFETY: idx <= mask, so the slot is inside the ring.
        let entry = unsafe { std::ptr::read_volatile(self.ring.slots.add(idx)) };
        self.head = self.head.wrapping_add(1);
        self.ring.head().store(self.head, Ordering::Release);
        Ok(Some(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(align(4096))]
    struct Page([u8; 8192]);

    #[test]
    fn ring_round_trip_and_full() {
        let mut mem = Box::new(Page([0; 8192]));
        let base = mem.0.as_mut_ptr();
        // SAFETY: the page box outlives both ends; one producer, one consumer.
        let (mut p, mut c) =
            unsafe { (Producer::<CqEntry>::new(base, 4), Consumer::<CqEntry>::new(base, 4)) };
        for round in 0..3u64 {
            for i in 0..4 {
                assert_eq!(p.push(CqEntry { req_id: round * 10 + i, ..Default::default() }), Ok(true));
            }
            assert_eq!(p.push(CqEntry::default()), Ok(false), "fifth push must see a full ring");
            for i in 0..4 {
                assert_eq!(c.pop().unwrap().unwrap().req_id, round * 10 + i);
            }
            assert_eq!(c.pop(), Ok(None));
        }
    }

    #[test]
    fn corrupt_cursor_detected() {
        let mut mem = Box::new(Page([0; 8192]));
        let base = mem.0.as_mut_ptr();
        // SAFETY: as above.
        let mut c = unsafe { Consumer::<SqEntry>::new(base, 4) };
        // The peer claims 100 entries in a 4-entry ring.
        // SAFETY: writing the tail word inside the page.
        unsafe { (*(base.add(64) as *const AtomicU32)).store(100, Ordering::Release) };
        assert_eq!(c.pop(), Err(Corrupt));
    }

    #[test]
    fn layout_header_round_trip() {
        let l = Layout::new(3, 1000, 1 << 20);
        assert_eq!(l.ring_entries, 1024);
        assert_eq!(l.data_offset % PAGE, 0);
        let mut mem = vec![0u8; l.total_bytes() as usize + PAGE as usize];
        let off = mem.as_ptr().align_offset(PAGE as usize);
        // SAFETY: `base` is page aligned with total_bytes() bytes after it.
        let got = unsafe {
            let base = mem.as_mut_ptr().add(off);
            l.write_header(base);
            Layout::read_header(base, l.total_bytes())
        };
        assert_eq!(got, Ok(l));
    }

    #[test]
    fn forged_header_sizes_are_refused() {
        let l = Layout::new(2, 64, 1 << 20);
        let mem = vec![0u8; l.total_bytes() as usize + PAGE as usize];
        let off = mem.as_ptr().align_offset(PAGE as usize);
        let forge = |f: &dyn Fn(&mut AreaHeader)| {
            let mut h = l.header();
            f(&mut h);
            // SAFETY: `base` is page aligned with total_bytes() bytes after it.
            unsafe {
                let base = mem.as_ptr().add(off) as *mut u8;
                std::ptr::write(base as *mut AreaHeader, h);
                Layout::read_header(base, l.total_bytes())
            }
        };
        // data_bytes chosen so that data_offset + data_bytes wraps to a small number.
        let wrap = u64::MAX - l.data_offset + 1 + PAGE;
        assert!(forge(&|h| h.data_bytes = wrap).is_err());
        assert!(forge(&|h| h.data_bytes = u64::MAX).is_err());
        assert!(forge(&|h| h.shards = u32::MAX).is_err());
        assert!(forge(&|h| h.shards = 0).is_err());
        assert!(forge(&|h| h.data_bytes += PAGE).is_err(), "larger than the mapping");
        assert_eq!(forge(&|_| {}), Ok(l));
    }
}
