//! O_DIRECT read buffers in huge pages: an anonymous mapping aligned to
//! 2 MiB and advised for transparent huge pages. A read into physically
//! contiguous memory is one segment per 2 MiB rather than one per 4 KiB
//! page; on a virtio disk (max_segments 254) a 1 MiB O_DIRECT read into
//! 4 KiB pages is split in two and every page costs a descriptor: random
//! 128 KiB reads ran at 1.1 GiB/s into 4 KiB pages against 2.6 GiB/s into
//! huge pages (docs/BENCHMARKS.md, read path, huge-page buffers). Without huge
//! pages (THP off, memory fragmented) the mapping is plain pages and
//! everything still works.

/// Huge page size the buffers are aligned and sized to.
pub const HUGE: usize = 2 << 20;

/// A growable O_DIRECT read buffer at a 2 MiB boundary, advised for huge
/// pages. Not shared between threads (one per thread, or per owner).
pub struct HugeBuf {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it to another
// thread moves that ownership.
unsafe impl Send for HugeBuf {}

impl HugeBuf {
    /// An empty buffer; nothing is mapped until the first `get`.
    pub const fn new() -> HugeBuf {
        HugeBuf { ptr: std::ptr::null_mut(), cap: 0 }
    }

    /// Bytes mapped now (a multiple of [`HUGE`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The first `len` bytes, growing first if needed (contents are
    /// whatever the last read left).
    pub fn get(&mut self, len: usize) -> &mut [u8] {
        if len > self.cap {
            self.release();
            let cap = len.div_ceil(HUGE) * HUGE;
            self.ptr = map_huge(cap);
            self.cap = cap;
        }
        if len == 0 {
            return &mut [];
        }
        // SAFETY: ptr holds cap >= len bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }

    fn release(&mut self) {
        if self.cap > 0 {
            // SAFETY: mapped by map_huge with exactly this length.
            unsafe { libc::munmap(self.ptr.cast(), self.cap) };
            self.cap = 0;
        }
    }
}

impl Default for HugeBuf {
    fn default() -> HugeBuf {
        HugeBuf::new()
    }
}

impl Drop for HugeBuf {
    fn drop(&mut self) {
        self.release();
    }
}

/// `cap` bytes (a multiple of [`HUGE`]) of anonymous memory at a 2 MiB
/// boundary, advised for huge pages.
fn map_huge(cap: usize) -> *mut u8 {
    let over = cap + HUGE;
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let raw = unsafe {
        libc::mmap(std::ptr::null_mut(), over, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    if raw == libc::MAP_FAILED {
        std::alloc::handle_alloc_error(std::alloc::Layout::from_size_align(cap, HUGE).expect("valid layout"));
    }
    let base = raw as usize;
    let start = base.next_multiple_of(HUGE);
    // SAFETY: both pieces trimmed lie inside the mapping made above and
    // outside [start, start + cap), which is what is kept.
    unsafe {
        if start > base {
            libc::munmap(raw, start - base);
        }
        let tail = base + over - (start + cap);
        if tail > 0 {
            libc::munmap((start + cap) as *mut libc::c_void, tail);
        }
        // Advice only: refused (THP off) means 4 KiB pages, still correct.
        libc::madvise(start as *mut libc::c_void, cap, libc::MADV_HUGEPAGE);
    }
    start as *mut u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_huge_page_aligned_and_grow() {
        let mut a = HugeBuf::new();
        let b = a.get(110_000);
        assert_eq!((b.as_ptr() as usize % HUGE, b.len()), (0, 110_000));
        b.fill(7);
        assert_eq!(a.capacity(), HUGE);
        let b = a.get(HUGE + 1);
        assert_eq!((b.as_ptr() as usize % HUGE, b.len()), (0, HUGE + 1));
        b[HUGE] = 1;
        assert_eq!(a.capacity(), 2 * HUGE);
        assert_eq!(a.get(10).len(), 10, "a smaller read keeps the buffer");
        assert_eq!(a.capacity(), 2 * HUGE);
    }
}
