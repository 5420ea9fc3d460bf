//! The in-RAM block index and the on-disk index archive of a sealed segment.
//!
//! In RAM: `key_hash -> packed Location` in a `HashMap<u64, u64>` with a
//! cheap mixing hasher (the key is already a hash), 16 bytes per slot plus one
//! control byte. On disk: `seg-N.idx`, an rkyv archive of the segment's
//! records behind a small header carrying its own crc32c, so a torn or
//! damaged archive is detected and the caller falls back to scanning.
//!
//! This module never touches segment data files.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use super::format::ALIGN;

/// Bits of a packed location (u64), low to high:
/// bit 0 accessed | bits 1..13 record length in 4 KiB units (12 bits) |
/// bits 13..32 offset in 4 KiB units (19 bits) | bits 32..64 segment id.
const LEN_SHIFT: u32 = 1;
const LEN_BITS: u32 = 12;
const OFF_SHIFT: u32 = LEN_SHIFT + LEN_BITS;
const OFF_BITS: u32 = 19;
const SEG_SHIFT: u32 = 32;
const ACCESSED: u64 = 1;

/// Largest segment the packed location can address (2 GiB).
pub const MAX_SEGMENT_BYTES: u64 = (1u64 << OFF_BITS) * ALIGN;
/// Largest record the packed location can describe (16 MiB - 4 KiB).
pub const MAX_RECORD_UNITS: u32 = (1u32 << LEN_BITS) - 1;

/// Where a record lives. `offset_units` and `len_units` count 4 KiB units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub seg_id: u32,
    pub offset_units: u32,
    pub len_units: u32,
    pub accessed: bool,
}

impl Location {
    pub fn pack(self) -> u64 {
        debug_assert!(self.offset_units < (1 << OFF_BITS));
        debug_assert!(self.len_units <= MAX_RECORD_UNITS);
        ((self.seg_id as u64) << SEG_SHIFT)
            | ((self.offset_units as u64) << OFF_SHIFT)
            | ((self.len_units as u64) << LEN_SHIFT)
            | (self.accessed as u64)
    }

    pub fn unpack(v: u64) -> Location {
        Location {
            seg_id: (v >> SEG_SHIFT) as u32,
            offset_units: ((v >> OFF_SHIFT) & ((1 << OFF_BITS) - 1)) as u32,
            len_units: ((v >> LEN_SHIFT) & ((1 << LEN_BITS) - 1)) as u32,
            accessed: v & ACCESSED != 0,
        }
    }

    pub fn offset_bytes(&self) -> u64 {
        self.offset_units as u64 * ALIGN
    }

    pub fn len_bytes(&self) -> u64 {
        self.len_units as u64 * ALIGN
    }

    /// Same record, ignoring the accessed bit.
    pub fn same_place(a: u64, b: u64) -> bool {
        a & !ACCESSED == b & !ACCESSED
    }

    pub fn with_accessed(v: u64) -> u64 {
        v | ACCESSED
    }
}

/// Hasher for keys that are already 64-bit hashes. A folded multiply spreads
/// entropy over all bits, so even a poor caller hash (e.g. small integers)
/// gives hashbrown good bucket bits and control bytes.
#[derive(Default)]
pub struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        let m = (self.0 as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        (m as u64) ^ ((m >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for u64 keys; kept correct for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// key_hash -> packed [`Location`].
pub type IndexMap = HashMap<u64, u64, BuildHasherDefault<KeyHashHasher>>;

/// Bytes the map has allocated: buckets × (entry + 1 control byte), the
/// hashbrown layout (plus a group of trailing control bytes, ignored).
pub fn index_allocated_bytes(map: &IndexMap) -> u64 {
    let cap = map.capacity() as u64;
    if cap == 0 {
        return 0;
    }
    // hashbrown keeps capacity = buckets * 7/8 for tables of 8+ buckets.
    let buckets = if cap < 8 { (cap + 1).next_power_of_two() } else { (cap * 8 / 7).next_power_of_two() };
    buckets * (std::mem::size_of::<(u64, u64)>() as u64 + 1)
}

/// One record of a sealed segment, as stored in its `.idx` archive.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxEntry {
    pub key_hash: u64,
    pub offset_units: u32,
    pub len_units: u16,
    /// Record flags (format::FLAG_TOMBSTONE).
    pub flags: u16,
}

/// The archived root of a `.idx` file.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    pub seg_id: u32,
    /// Bytes of the data file covered by `entries` (the sealed length).
    pub data_bytes: u64,
    /// Records in file order.
    pub entries: Vec<IdxEntry>,
}

/// `.idx` file header: magic "STKI", version u16, reserved u16,
/// payload_len u32, payload crc32c u32; the rkyv payload follows at 16.
const IDX_MAGIC: [u8; 4] = *b"STKI";
const IDX_VERSION: u16 = 1;
pub const IDX_HEADER_LEN: usize = 16;

/// Encodes a `.idx` file: header + archive, zero padded to ALIGN (the file is
/// written with O_DIRECT).
pub fn encode_idx(index: &SegmentIndex) -> Vec<u8> {
    // Serializing plain integers and a Vec cannot fail; a failure would be a
    // bug in rkyv, reported as an empty archive that validation then refuses.
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(index).map(|b| b.to_vec()).unwrap_or_default();
    let total = super::format::align_up((IDX_HEADER_LEN + payload.len()) as u64) as usize;
    let mut out = vec![0u8; total];
    out[0..4].copy_from_slice(&IDX_MAGIC);
    out[4..6].copy_from_slice(&IDX_VERSION.to_le_bytes());
    out[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[12..16].copy_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out[IDX_HEADER_LEN..IDX_HEADER_LEN + payload.len()].copy_from_slice(&payload);
    out
}

/// Checks the header and crc of a `.idx` image and returns the validated
/// archive. `bytes` must start 16-byte aligned (a mapping is page aligned).
pub fn access_idx(bytes: &[u8]) -> Option<&ArchivedSegmentIndex> {
    if bytes.len() < IDX_HEADER_LEN || bytes[0..4] != IDX_MAGIC {
        return None;
    }
    if u16::from_le_bytes([bytes[4], bytes[5]]) != IDX_VERSION {
        return None;
    }
    let payload_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let payload = bytes.get(IDX_HEADER_LEN..IDX_HEADER_LEN.checked_add(payload_len)?)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    rkyv::access::<ArchivedSegmentIndex, rkyv::rancor::Error>(payload).ok()
}

/// A read-only mapping of a `.idx` file.
pub struct MappedIdx {
    map: memmap2::Mmap,
}

impl MappedIdx {
    /// Maps `path`; `None` if it cannot be opened or mapped.
    pub fn open(path: &Path) -> Option<MappedIdx> {
        let file = std::fs::File::open(path).ok()?;
        if file.metadata().ok()?.len() < IDX_HEADER_LEN as u64 {
            return None;
        }
        // SAFETY: the store owns its directory; `.idx` files are written once
        // under a temporary name, renamed into place and never modified, so
        // the mapped bytes do not change under us. Everything read through
        // the mapping is checked (crc32c + bytecheck) before use.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        Some(MappedIdx { map })
    }

    /// The validated archive, or `None` if the file is torn or damaged.
    pub fn archive(&self) -> Option<&ArchivedSegmentIndex> {
        access_idx(&self.map)
    }
}

/// Converts an archived entry to its native form.
pub fn entry_from_archived(a: &ArchivedIdxEntry) -> IdxEntry {
    IdxEntry {
        key_hash: a.key_hash.to_native(),
        offset_units: a.offset_units.to_native(),
        len_units: a.len_units.to_native(),
        flags: a.flags.to_native(),
    }
}

/// Entries of a sealed segment's archive (used by reclaim), `None` if the
/// archive is missing or damaged.
pub(super) fn load_entries(dir: &Path, seg_id: u32) -> Option<Vec<IdxEntry>> {
    let m = MappedIdx::open(&dir.join(super::format::idx_file_name(seg_id)))?;
    let a = m.archive()?;
    if a.seg_id.to_native() != seg_id {
        return None;
    }
    Some(a.entries.iter().map(entry_from_archived).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_round_trip() {
        let l = Location { seg_id: u32::MAX, offset_units: (1 << 19) - 1, len_units: MAX_RECORD_UNITS, accessed: true };
        assert_eq!(Location::unpack(l.pack()), l);
        let l = Location { seg_id: 3, offset_units: 7, len_units: 1, accessed: false };
        assert_eq!(Location::unpack(l.pack()), l);
        assert!(Location::same_place(l.pack(), Location::with_accessed(l.pack())));
    }

    #[test]
    fn idx_round_trip_and_damage() {
        let idx = SegmentIndex {
            seg_id: 9,
            data_bytes: 8192,
            entries: vec![
                IdxEntry { key_hash: 1, offset_units: 0, len_units: 1, flags: 0 },
                IdxEntry { key_hash: 2, offset_units: 1, len_units: 1, flags: 1 },
            ],
        };
        let bytes = encode_idx(&idx);
        // Copy into an aligned buffer as a mapping would be.
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        let a = access_idx(&aligned).expect("valid");
        assert_eq!(a.seg_id.to_native(), 9);
        let got: Vec<IdxEntry> = a.entries.iter().map(entry_from_archived).collect();
        assert_eq!(got, idx.entries);
        for i in 0..IDX_HEADER_LEN + 8 {
            let mut bad = rkyv::util::AlignedVec::<16>::new();
            bad.extend_from_slice(&bytes);
            bad[i] ^= 0x10;
            assert!(access_idx(&bad).is_none() || i == 6 || i == 7, "damage at {i} not detected");
        }
        assert!(access_idx(&aligned[..IDX_HEADER_LEN + 4]).is_none());
    }
}
