//! On-disk record format of a segment file: constants, the record header
//! (hand-written little-endian encode/decode), whole-record verification and
//! the checks of a partial read (a range of sub-blocks).
//!
//! This module owns the byte layout described in docs/FORMAT.md and nothing
//! else: it never does I/O and never panics on bad input — every decode of
//! bytes read from disk returns a typed [`FormatError`].
//!
//! Version 2 (written now) keeps one crc32c per [`SUB_BLOCK`] of data in a
//! table after the key, so a read of a range verifies only the sub-blocks it
//! touches. Version 1 records (one crc over the whole data) are still read.

use std::fmt;

/// First four bytes of every record ("STKB": stoker block).
pub const MAGIC: [u8; 4] = *b"STKB";
/// Version of the record layout written. Bump on any incompatible change.
pub const FORMAT_VERSION: u16 = 2;
/// The previous layout: still read, never written.
pub const FORMAT_V1: u16 = 1;
/// Records start and end on this boundary (O_DIRECT and the index unit).
pub const ALIGN: u64 = 4096;
/// Fixed size of the encoded record header.
pub const HEADER_LEN: usize = 32;
/// Bytes of data each entry of a version 2 crc table covers.
pub const SUB_BLOCK: usize = 4096;
/// A version 2 block of at least this many bytes starts its data on an
/// ALIGN boundary (the head is zero padded), so its sub-blocks are whole
/// device pages: a 4 KiB read reads one page, not two. Smaller blocks keep
/// the data right after the head (a small file pays no padding page).
pub const ALIGNED_DATA_MIN: usize = 256 << 10;
/// Largest key accepted by `put`.
pub const MAX_KEY_LEN: usize = 4096;
/// Largest block accepted by `put`: 4 MiB plus 64 KiB of slack.
pub const MAX_DATA_LEN: usize = (4 << 20) + (64 << 10);
/// Largest record on disk (header + key + crc table + data, rounded up to ALIGN).
pub const MAX_RECORD_LEN: u64 =
    align_up((HEADER_LEN + MAX_KEY_LEN + table_len(MAX_DATA_LEN) + MAX_DATA_LEN) as u64);

/// Record flag: the record is a tombstone (no key, no data); at recovery it
/// removes any earlier record of the same key_hash.
pub const FLAG_TOMBSTONE: u16 = 1;
/// All flags this version understands; any other bit set is corruption.
const KNOWN_FLAGS: u16 = FLAG_TOMBSTONE;

/// Byte range of the header covered by `header_crc` (everything before it).
const HEADER_CRC_AT: usize = 28;

/// Rounds `v` up to the next multiple of [`ALIGN`].
pub const fn align_up(v: u64) -> u64 {
    (v + ALIGN - 1) & !(ALIGN - 1)
}

/// Rounds `v` down to a multiple of [`ALIGN`].
pub const fn align_down(v: u64) -> u64 {
    v & !(ALIGN - 1)
}

/// Bytes of the version 2 crc table for `data_len` bytes of data.
pub const fn table_len(data_len: usize) -> usize {
    data_len.div_ceil(SUB_BLOCK) * 4
}

/// Why a record read from disk was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the header or the record says.
    Short,
    BadMagic,
    BadVersion(u16),
    UnknownFlags(u16),
    /// key_len or data_len out of bounds.
    BadLength,
    HeaderCrc,
    /// The crc table (version 2) does not match its crc.
    TableCrc,
    /// The data (version 1) or one sub-block of it (version 2, the index given) failed its crc.
    DataCrc,
    SubBlockCrc(usize),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Short => write!(f, "short record"),
            FormatError::BadMagic => write!(f, "bad record magic"),
            FormatError::BadVersion(v) => write!(f, "unknown record format version {v}"),
            FormatError::UnknownFlags(x) => write!(f, "unknown record flags {x:#x}"),
            FormatError::BadLength => write!(f, "record length out of bounds"),
            FormatError::HeaderCrc => write!(f, "record header crc mismatch"),
            FormatError::TableCrc => write!(f, "record crc table mismatch"),
            FormatError::DataCrc => write!(f, "record data crc mismatch"),
            FormatError::SubBlockCrc(i) => write!(f, "record sub-block {i} crc mismatch"),
        }
    }
}

/// The fixed part of a record. Layout (little-endian):
///
/// | off | len | field      |
/// |-----|-----|------------|
/// | 0   | 4   | magic      |
/// | 4   | 2   | version    |
/// | 6   | 2   | flags      |
/// | 8   | 8   | key_hash   |
/// | 16  | 4   | key_len    |
/// | 20  | 4   | data_len   |
/// | 24  | 4   | body_crc: v2 crc32c of the crc table; v1 crc32c of the data |
/// | 28  | 4   | header_crc (crc32c of bytes 0..28 followed by the key) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub version: u16,
    pub flags: u16,
    pub key_hash: u64,
    pub key_len: u32,
    pub data_len: u32,
    pub body_crc: u32,
}

impl RecordHeader {
    /// Header for a data record of the current version. `body_crc` is
    /// filled in by [`encode_record`], which computes the crc table.
    pub fn for_block(key_hash: u64, key: &[u8], data: &[u8]) -> RecordHeader {
        RecordHeader {
            version: FORMAT_VERSION,
            flags: 0,
            key_hash,
            key_len: key.len() as u32,
            data_len: data.len() as u32,
            body_crc: 0,
        }
    }

    /// Header for a tombstone of `key_hash`.
    pub fn tombstone(key_hash: u64) -> RecordHeader {
        RecordHeader {
            version: FORMAT_VERSION,
            flags: FLAG_TOMBSTONE,
            key_hash,
            key_len: 0,
            data_len: 0,
            body_crc: crc32c::crc32c(&[]),
        }
    }

    pub const fn serialized_len() -> usize {
        HEADER_LEN
    }

    pub fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    /// Bytes of the crc table (0 for version 1).
    pub fn table_len(&self) -> usize {
        if self.version == FORMAT_V1 {
            0
        } else {
            table_len(self.data_len as usize)
        }
    }

    /// Offset of the crc table in the record (right after the key).
    pub fn table_start(&self) -> usize {
        HEADER_LEN + self.key_len as usize
    }

    /// End of the head: header, key and crc table.
    pub fn head_len(&self) -> usize {
        self.table_start() + self.table_len()
    }

    /// Offset of the first data byte in the record: right after the head,
    /// or at the next ALIGN boundary for blocks of [`ALIGNED_DATA_MIN`] or more.
    pub fn data_start(&self) -> usize {
        let head = self.head_len();
        if self.version != FORMAT_V1 && self.data_len as usize >= ALIGNED_DATA_MIN {
            align_up(head as u64) as usize
        } else {
            head
        }
    }

    /// Length of the whole record on disk, padding included.
    pub fn record_len(&self) -> u64 {
        align_up((self.data_start() + self.data_len as usize) as u64)
    }

    /// Writes the header into `out[..HEADER_LEN]`; `key` must be the key
    /// bytes that follow it (they are covered by the header crc).
    fn encode(&self, key: &[u8], out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.key_hash.to_le_bytes());
        out[16..20].copy_from_slice(&self.key_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.data_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = header_crc(&out[..HEADER_CRC_AT], key);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and bounds-checks the fixed header. Returns the header and
    /// the stored header crc (checked by [`check_record`] once the key is
    /// available).
    pub fn decode(buf: &[u8]) -> Result<(RecordHeader, u32), FormatError> {
        if buf.len() < HEADER_LEN {
            return Err(FormatError::Short);
        }
        if buf[0..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16::from_le_bytes([buf[4], buf[5]]);
        if version != FORMAT_VERSION && version != FORMAT_V1 {
            return Err(FormatError::BadVersion(version));
        }
        let flags = u16::from_le_bytes([buf[6], buf[7]]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::UnknownFlags(flags));
        }
        let u32_at = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let mut hash = [0u8; 8];
        hash.copy_from_slice(&buf[8..16]);
        let header = RecordHeader {
            version,
            flags,
            key_hash: u64::from_le_bytes(hash),
            key_len: u32_at(16),
            data_len: u32_at(20),
            body_crc: u32_at(24),
        };
        if header.key_len as usize > MAX_KEY_LEN || header.data_len as usize > MAX_DATA_LEN {
            return Err(FormatError::BadLength);
        }
        if header.is_tombstone() && (header.key_len != 0 || header.data_len != 0) {
            return Err(FormatError::BadLength);
        }
        Ok((header, u32_at(28)))
    }
}

fn header_crc(fixed: &[u8], key: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(fixed), key)
}

/// Encodes a full record (header, key, crc table, data, zero padding) of
/// the current version into `out`, which must be exactly
/// `header.record_len()` bytes long. The crc table and `body_crc` are
/// computed here, in one pass over the data.
pub fn encode_record(header: &RecordHeader, key: &[u8], data: &[u8], out: &mut [u8]) {
    debug_assert_eq!(header.version, FORMAT_VERSION);
    debug_assert_eq!(out.len() as u64, header.record_len());
    debug_assert_eq!(key.len(), header.key_len as usize);
    debug_assert_eq!(data.len(), header.data_len as usize);
    let table_start = header.table_start();
    let head_len = header.head_len();
    let data_start = header.data_start();
    out[HEADER_LEN..table_start].copy_from_slice(key);
    out[head_len..data_start].fill(0);
    for (i, sub) in data.chunks(SUB_BLOCK).enumerate() {
        let at = table_start + 4 * i;
        out[at..at + 4].copy_from_slice(&crc32c::crc32c(sub).to_le_bytes());
    }
    let mut h = *header;
    h.body_crc = crc32c::crc32c(&out[table_start..head_len]);
    h.encode(key, out);
    let data_end = data_start + data.len();
    out[data_start..data_end].copy_from_slice(data);
    out[data_end..].fill(0);
}

/// A record that passed every check, as offsets into the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView {
    pub header: RecordHeader,
    pub key_start: usize,
    pub data_start: usize,
}

impl RecordView {
    pub fn key<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.key_start..self.key_start + self.header.key_len as usize]
    }

    pub fn data<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.data_start..self.data_start + self.header.data_len as usize]
    }
}

/// Verifies magic, version, lengths, header crc (header + key) and, for
/// version 2, the crc table's own crc. `buf` holds the record from its
/// start; it must reach at least to the end of the crc table (the head).
pub fn check_head(buf: &[u8]) -> Result<RecordView, FormatError> {
    let (header, stored_header_crc) = RecordHeader::decode(buf)?;
    let key_start = HEADER_LEN;
    let table_start = header.table_start();
    let head_len = header.head_len();
    let data_start = header.data_start();
    if buf.len() < head_len {
        return Err(FormatError::Short);
    }
    if header_crc(&buf[..HEADER_CRC_AT], &buf[key_start..table_start]) != stored_header_crc {
        return Err(FormatError::HeaderCrc);
    }
    if header.version != FORMAT_V1 && crc32c::crc32c(&buf[table_start..head_len]) != header.body_crc {
        return Err(FormatError::TableCrc);
    }
    Ok(RecordView { header, key_start, data_start })
}

/// Verifies the version 2 sub-blocks `first..` that `data` holds: `data`
/// starts at the first byte of sub-block `first` and ends at a sub-block
/// boundary or at the end of the data. `head` is the buffer `view` was
/// checked in (it holds the crc table).
pub fn check_sub_blocks(head: &[u8], view: &RecordView, first: usize, data: &[u8]) -> Result<(), FormatError> {
    let h = &view.header;
    let subs = (h.data_len as usize).div_ceil(SUB_BLOCK);
    let count = data.len().div_ceil(SUB_BLOCK);
    if h.version == FORMAT_V1 || first + count > subs {
        return Err(FormatError::Short);
    }
    let end_of_data = first * SUB_BLOCK + data.len();
    if data.len() % SUB_BLOCK != 0 && end_of_data != h.data_len as usize {
        return Err(FormatError::Short);
    }
    let table = h.table_start();
    for (j, sub) in data.chunks(SUB_BLOCK).enumerate() {
        let at = table + 4 * (first + j);
        let stored = u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        if crc32c::crc32c(sub) != stored {
            return Err(FormatError::SubBlockCrc(first + j));
        }
    }
    Ok(())
}

/// Verifies a whole record at the start of `buf` (either version): the head
/// as [`check_head`], then every byte of data against its crc(s).
pub fn check_record(buf: &[u8]) -> Result<RecordView, FormatError> {
    let view = check_head(buf)?;
    let data_end = view.data_start + view.header.data_len as usize;
    if buf.len() < data_end {
        return Err(FormatError::Short);
    }
    let data = &buf[view.data_start..data_end];
    if view.header.version == FORMAT_V1 {
        if crc32c::crc32c(data) != view.header.body_crc {
            return Err(FormatError::DataCrc);
        }
    } else {
        check_sub_blocks(buf, &view, 0, data)?;
    }
    Ok(view)
}

/// Encodes a version 1 record (one crc over the data, no table), as the
/// previous release wrote it. Only for upgrade tests and tools.
pub fn encode_record_v1(key_hash: u64, key: &[u8], data: &[u8]) -> Vec<u8> {
    let header = RecordHeader {
        version: FORMAT_V1,
        flags: 0,
        key_hash,
        key_len: key.len() as u32,
        data_len: data.len() as u32,
        body_crc: crc32c::crc32c(data),
    };
    let mut out = vec![0u8; header.record_len() as usize];
    header.encode(key, &mut out);
    out[HEADER_LEN..HEADER_LEN + key.len()].copy_from_slice(key);
    out[HEADER_LEN + key.len()..HEADER_LEN + key.len() + data.len()].copy_from_slice(data);
    out
}

/// File name of a segment's data file.
pub fn data_file_name(seg_id: u32) -> String {
    format!("seg-{seg_id:08}.dat")
}

/// File name of a sealed segment's index archive.
pub fn idx_file_name(seg_id: u32) -> String {
    format!("seg-{seg_id:08}.idx")
}

/// Temporary name an index archive is written under before the rename.
pub fn idx_tmp_file_name(seg_id: u32) -> String {
    format!("seg-{seg_id:08}.idx.tmp")
}

/// What a directory entry is, parsed from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentFile {
    Data(u32),
    Idx(u32),
    IdxTmp(u32),
}

/// Parses a file name produced by the functions above.
pub fn parse_file_name(name: &str) -> Option<SegmentFile> {
    let rest = name.strip_prefix("seg-")?;
    let (id, ext) = rest.split_once('.')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u32 = id.parse().ok()?;
    match ext {
        "dat" => Some(SegmentFile::Data(id)),
        "idx" => Some(SegmentFile::Idx(id)),
        "idx.tmp" => Some(SegmentFile::IdxTmp(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &[u8], data: &[u8]) -> Vec<u8> {
        let h = RecordHeader::for_block(7, key, data);
        let mut out = vec![0xAA; h.record_len() as usize];
        encode_record(&h, key, data, &mut out);
        out
    }

    #[test]
    fn round_trip_and_padding() {
        let rec = record(b"k", b"hello");
        assert_eq!(rec.len(), ALIGN as usize);
        let v = check_record(&rec).unwrap();
        assert_eq!(v.key(&rec), b"k");
        assert_eq!(v.data(&rec), b"hello");
        assert!(rec[HEADER_LEN + 1 + 4 + 5..].iter().all(|&b| b == 0));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let rec = record(b"key", b"some data");
        let used = HEADER_LEN + 3 + 4 + 9;
        for i in 0..used {
            let mut bad = rec.clone();
            bad[i] ^= 0x01;
            assert!(check_record(&bad).is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn version_1_records_still_check() {
        let data: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
        let rec = encode_record_v1(9, b"old", &data);
        let v = check_record(&rec).unwrap();
        assert_eq!(v.header.version, FORMAT_V1);
        assert_eq!(v.data(&rec), &data[..]);
        let mut bad = rec.clone();
        bad[HEADER_LEN + 3 + 5000] ^= 0x10;
        assert_eq!(check_record(&bad), Err(FormatError::DataCrc));
    }

    #[test]
    fn sub_blocks_check_alone_and_catch_any_flip() {
        let data: Vec<u8> = (0..(3 * SUB_BLOCK + 100) as u32).map(|i| (i * 7) as u8).collect();
        let rec = record(b"k2", &data);
        let view = check_head(&rec).unwrap();
        assert_eq!(view.data_start, HEADER_LEN + 2 + 16);
        let d = |from: usize, to: usize| &rec[view.data_start + from..view.data_start + to];
        // Each sub-block alone, the short last one included.
        for i in 0..4 {
            let end = ((i + 1) * SUB_BLOCK).min(data.len());
            check_sub_blocks(&rec, &view, i, d(i * SUB_BLOCK, end)).unwrap();
        }
        // A range that does not end on a sub-block boundary (nor at the end) is refused.
        assert_eq!(check_sub_blocks(&rec, &view, 0, d(0, 100)), Err(FormatError::Short));
        // One flipped byte in any sub-block fails that sub-block, and the whole record.
        for i in 0..4 {
            let mut bad = rec.clone();
            bad[view.data_start + i * SUB_BLOCK + 17] ^= 0x01;
            let end = ((i + 1) * SUB_BLOCK).min(data.len());
            let sub = &bad[view.data_start + i * SUB_BLOCK..view.data_start + end];
            assert_eq!(check_sub_blocks(&bad, &view, i, sub), Err(FormatError::SubBlockCrc(i)));
            assert!(check_record(&bad).is_err());
        }
        // A flip in the table is caught by the head check.
        let mut bad = rec.clone();
        bad[HEADER_LEN + 2 + 5] ^= 0x01;
        assert_eq!(check_head(&bad), Err(FormatError::TableCrc));
    }

    #[test]
    fn large_blocks_start_their_data_on_a_page() {
        let data = vec![3u8; ALIGNED_DATA_MIN];
        let rec = record(b"big", &data);
        let v = check_record(&rec).unwrap();
        assert_eq!(v.data_start, ALIGN as usize);
        assert_eq!(rec.len(), ALIGN as usize + ALIGNED_DATA_MIN);
        assert!(rec[v.header.head_len()..v.data_start].iter().all(|&b| b == 0));
        let small = record(b"small", &data[..ALIGNED_DATA_MIN - 1]);
        assert_eq!(check_record(&small).unwrap().data_start, HEADER_LEN + 5 + table_len(ALIGNED_DATA_MIN - 1));
    }

    #[test]
    fn truncated_record_is_short() {
        let rec = record(b"key", &[5u8; 5000]);
        assert_eq!(check_record(&rec[..4096]), Err(FormatError::Short));
        assert_eq!(check_record(&rec[..10]), Err(FormatError::Short));
    }

    #[test]
    fn file_names_parse() {
        assert_eq!(parse_file_name(&data_file_name(42)), Some(SegmentFile::Data(42)));
        assert_eq!(parse_file_name(&idx_file_name(42)), Some(SegmentFile::Idx(42)));
        assert_eq!(parse_file_name(&idx_tmp_file_name(3)), Some(SegmentFile::IdxTmp(3)));
        assert_eq!(parse_file_name("seg-.dat"), None);
        assert_eq!(parse_file_name("other"), None);
    }
}
