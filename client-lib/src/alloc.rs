//! First-fit allocator of 4 KiB-aligned slots in the shared data area.
//! Adjacent free ranges are merged on free, so the area never fragments into
//! pieces smaller than what was freed.

use std::collections::BTreeMap;

pub const SLOT_ALIGN: u64 = 4096;

pub struct SlotAlloc {
    /// Free ranges: offset -> length.
    free: BTreeMap<u64, u64>,
    total: u64,
}

impl SlotAlloc {
    pub fn new(total: u64) -> SlotAlloc {
        let mut free = BTreeMap::new();
        free.insert(0, total);
        SlotAlloc { free, total }
    }

    pub fn round(len: u64) -> u64 {
        len.max(1).div_ceil(SLOT_ALIGN) * SLOT_ALIGN
    }

    /// A slot of at least `len` bytes, or None if no free range is big enough.
    pub fn alloc(&mut self, len: u64) -> Option<(u64, u64)> {
        let len = Self::round(len);
        let (&off, &flen) = self.free.iter().find(|(_, l)| **l >= len)?;
        self.free.remove(&off);
        if flen > len {
            self.free.insert(off + len, flen - len);
        }
        Some((off, len))
    }

    pub fn free(&mut self, off: u64, len: u64) {
        debug_assert!(off + len <= self.total);
        let mut start = off;
        let mut end = off + len;
        if let Some((&poff, &plen)) = self.free.range(..off).next_back() {
            debug_assert!(poff + plen <= off, "double free");
            if poff + plen == off {
                self.free.remove(&poff);
                start = poff;
            }
        }
        if let Some(&nlen) = self.free.get(&end) {
            self.free.remove(&end);
            end += nlen;
        }
        self.free.insert(start, end - start);
    }

    /// Length of the largest free range.
    pub fn largest(&self) -> u64 {
        self.free.values().copied().max().unwrap_or(0)
    }

    pub fn fits_ever(&self, len: u64) -> bool {
        Self::round(len) <= self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_coalesce() {
        let mut a = SlotAlloc::new(16 * 4096);
        let x = a.alloc(1).unwrap();
        let y = a.alloc(4097).unwrap();
        let z = a.alloc(4096 * 13).unwrap();
        assert_eq!((x.1, y.1, z.1), (4096, 8192, 13 * 4096));
        assert!(a.alloc(1).is_none(), "area is full");
        a.free(y.0, y.1);
        a.free(x.0, x.1);
        // x and y merged into one 3-page range.
        assert_eq!(a.alloc(3 * 4096).unwrap().0, 0);
        a.free(0, 3 * 4096);
        a.free(z.0, z.1);
        assert_eq!(a.alloc(16 * 4096).unwrap(), (0, 16 * 4096));
    }
}
