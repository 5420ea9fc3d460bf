//! On-disk record format of a segment file: constants, the record header
//! (hand-written little-endian encode/decode) and whole-record verification.
//!
//! This module owns the byte layout described in docs/FORMAT.md and nothing
//! else: it never does I/O and never panics on bad input — every decode of
//! bytes read from disk returns a typed [`FormatError`].

use std::fmt;

/// First four bytes of every record ("STKB": stoker block).
pub const MAGIC: [u8; 4] = *b"STKB";
/// Version of the record layout. Bump on any incompatible change.
pub const FORMAT_VERSION: u16 = 1;
/// Records start and end on this boundary (O_DIRECT and the index unit).
pub const ALIGN: u64 = 4096;
/// Fixed size of the encoded record header.
pub const HEADER_LEN: usize = 32;
/// Largest key accepted by `put`.
pub const MAX_KEY_LEN: usize = 4096;
/// Largest block accepted by `put`: 4 MiB plus 64 KiB of slack.
pub const MAX_DATA_LEN: usize = (4 << 20) + (64 << 10);
/// Largest record on disk (header + key + data, rounded up to ALIGN).
pub const MAX_RECORD_LEN: u64 = align_up((HEADER_LEN + MAX_KEY_LEN + MAX_DATA_LEN) as u64);

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
    DataCrc,
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
            FormatError::DataCrc => write!(f, "record data crc mismatch"),
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
/// | 24  | 4   | data_crc   |
/// | 28  | 4   | header_crc (crc32c of bytes 0..28 followed by the key) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub flags: u16,
    pub key_hash: u64,
    pub key_len: u32,
    pub data_len: u32,
    pub data_crc: u32,
}

impl RecordHeader {
    /// Header for a data record.
    pub fn for_block(key_hash: u64, key: &[u8], data: &[u8]) -> RecordHeader {
        RecordHeader {
            flags: 0,
            key_hash,
            key_len: key.len() as u32,
            data_len: data.len() as u32,
            data_crc: crc32c::crc32c(data),
        }
    }

    /// Header for a tombstone of `key_hash`.
    pub fn tombstone(key_hash: u64) -> RecordHeader {
        RecordHeader { flags: FLAG_TOMBSTONE, key_hash, key_len: 0, data_len: 0, data_crc: crc32c::crc32c(&[]) }
    }

    pub const fn serialized_len() -> usize {
        HEADER_LEN
    }

    pub fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    /// Length of the whole record on disk, padding included.
    pub fn record_len(&self) -> u64 {
        align_up(HEADER_LEN as u64 + self.key_len as u64 + self.data_len as u64)
    }

    /// Writes the header into `out[..HEADER_LEN]`; `key` must be the key
    /// bytes that follow it (they are covered by the header crc).
    fn encode(&self, key: &[u8], out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.key_hash.to_le_bytes());
        out[16..20].copy_from_slice(&self.key_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.data_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.data_crc.to_le_bytes());
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
        if version != FORMAT_VERSION {
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
            flags,
            key_hash: u64::from_le_bytes(hash),
            key_len: u32_at(16),
            data_len: u32_at(20),
            data_crc: u32_at(24),
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

/// Encodes a full record (header, key, data, zero padding) into `out`, which
/// must be exactly `header.record_len()` bytes long.
pub fn encode_record(header: &RecordHeader, key: &[u8], data: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len() as u64, header.record_len());
    debug_assert_eq!(key.len(), header.key_len as usize);
    debug_assert_eq!(data.len(), header.data_len as usize);
    header.encode(key, out);
    let key_end = HEADER_LEN + key.len();
    out[HEADER_LEN..key_end].copy_from_slice(key);
    let data_end = key_end + data.len();
    out[key_end..data_end].copy_from_slice(data);
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

/// Verifies magic, version, lengths, header crc (header + key) and data crc
/// of the record at the start of `buf`. `buf` must hold the whole record.
pub fn check_record(buf: &[u8]) -> Result<RecordView, FormatError> {
    let (header, stored_header_crc) = RecordHeader::decode(buf)?;
    let key_start = HEADER_LEN;
    let data_start = key_start + header.key_len as usize;
    let data_end = data_start + header.data_len as usize;
    if buf.len() < data_end {
        return Err(FormatError::Short);
    }
    if header_crc(&buf[..HEADER_CRC_AT], &buf[key_start..data_start]) != stored_header_crc {
        return Err(FormatError::HeaderCrc);
    }
    if crc32c::crc32c(&buf[data_start..data_end]) != header.data_crc {
        return Err(FormatError::DataCrc);
    }
    Ok(RecordView { header, key_start, data_start })
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
        assert!(rec[HEADER_LEN + 6..].iter().all(|&b| b == 0));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let rec = record(b"key", b"some data");
        let used = HEADER_LEN + 3 + 9;
        for i in 0..used {
            let mut bad = rec.clone();
            bad[i] ^= 0x01;
            assert!(check_record(&bad).is_err(), "flip at {i} not detected");
        }
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
