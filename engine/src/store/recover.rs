//! Start-up: rebuilds the RAM index from the sealed segments' `.idx`
//! archives (memory-mapped, validated, zero copy) and a record-by-record scan
//! of the open segment only, whose torn tail is truncated.
//!
//! Never rescans sealed data unless its archive is missing or damaged (then
//! that one segment is scanned and its archive rewritten). Never panics on
//! bad on-disk bytes: a bad record ends the scan.

use std::collections::BTreeMap;
use std::path::Path;

use glommio::io::{DmaFile, ReadResult};

use super::format::{align_up, check_record, parse_file_name, RecordHeader, SegmentFile, ALIGN, HEADER_LEN};
use super::index::{
    entry_from_archived, IdxEntry, IndexMap, Location, MappedIdx, SegmentIndex, MAX_RECORD_UNITS, MAX_SEGMENT_BYTES,
};
use super::segment::{create_segment, open_segment, write_idx, OpenSegment, SealedSegment, Segments};
use super::{format, RecoveryReport, Result};

/// Bytes read per I/O while scanning a segment.
const SCAN_CHUNK: u64 = 1 << 20;

pub(super) async fn recover(dir: &Path, segment_bytes: u64) -> Result<(IndexMap, Segments, RecoveryReport)> {
    let mut report = RecoveryReport::default();
    let mut data_ids = Vec::new();
    let mut idx_ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_file_name) {
            Some(SegmentFile::Data(id)) => data_ids.push(id),
            Some(SegmentFile::Idx(id)) => idx_ids.push(id),
            // A crash while writing an archive; the segment is still the
            // open one (or gets scanned), so the partial archive is useless.
            Some(SegmentFile::IdxTmp(_)) => std::fs::remove_file(entry.path())?,
            None => {}
        }
    }
    data_ids.sort_unstable();
    for id in idx_ids.iter().filter(|id| data_ids.binary_search(id).is_err()) {
        std::fs::remove_file(dir.join(format::idx_file_name(*id)))?;
    }

    let mut index = IndexMap::default();
    let Some(&newest) = data_ids.last() else {
        let file = create_segment(dir, 1).await?;
        let open = OpenSegment { id: 1, file, end: 0, entries: Vec::new() };
        return Ok((index, Segments { sealed: BTreeMap::new(), sealed_bytes: 0, open }, report));
    };

    // Map every archive first so the map can be sized once.
    let mut mapped = Vec::with_capacity(data_ids.len());
    let mut total_entries = 0usize;
    for &id in &data_ids {
        let size = std::fs::metadata(dir.join(format::data_file_name(id)))?.len();
        let m = MappedIdx::open(&dir.join(format::idx_file_name(id)));
        let valid = m.as_ref().and_then(|m| m.archive()).is_some_and(|a| {
            a.seg_id.to_native() == id && a.data_bytes.to_native() <= size.min(MAX_SEGMENT_BYTES)
        });
        if valid {
            total_entries += m.as_ref().and_then(|m| m.archive()).map_or(0, |a| a.entries.len());
        }
        mapped.push((id, size, if valid { m } else { None }));
    }
    index.reserve(total_entries);

    let mut sealed = BTreeMap::new();
    let mut sealed_bytes = 0;
    let mut open = None;
    for (id, size, m) in mapped {
        if let Some(archive) = m.as_ref().and_then(|m| m.archive()) {
            let data_bytes = archive.data_bytes.to_native();
            for a in archive.entries.iter() {
                let e = entry_from_archived(a);
                if entry_in_bounds(&e, data_bytes) {
                    apply(&mut index, id, &e);
                    report.sealed_entries += 1;
                }
            }
            let file = open_segment(dir, id, false).await?;
            sealed.insert(id, SealedSegment { file, bytes: size });
            sealed_bytes += size;
            report.sealed_segments += 1;
        } else if id == newest {
            // The open segment: scan, truncate the torn tail, keep appending.
            let file = open_segment(dir, id, true).await?;
            let (entries, end) = scan_segment(&file, size, segment_bytes.max(size)).await?;
            if end < size {
                file.truncate(end).await?;
                report.torn_bytes_dropped = size - end;
                tracing::warn!(seg_id = id, dropped = size - end, "store: truncated torn tail of the open segment");
            }
            for e in &entries {
                apply(&mut index, id, e);
            }
            report.open_segment_records = entries.len() as u64;
            report.open_segment_bytes_scanned = size;
            open = Some(OpenSegment { id, file, end, entries });
        } else {
            // A sealed segment whose archive is missing or damaged: scan it
            // once and write a fresh archive for the next start.
            tracing::warn!(seg_id = id, "store: index archive missing or damaged, scanning the segment");
            let file = open_segment(dir, id, false).await?;
            let (entries, end) = scan_segment(&file, size, size).await?;
            for e in &entries {
                apply(&mut index, id, e);
            }
            report.sealed_entries += entries.len() as u64;
            report.sealed_segments += 1;
            write_idx(dir, &SegmentIndex { seg_id: id, data_bytes: end, entries }).await?;
            sealed.insert(id, SealedSegment { file, bytes: size });
            sealed_bytes += size;
        }
    }
    let open = match open {
        Some(open) => open,
        None => {
            // The newest segment was sealed (crash after its archive was
            // renamed, before the next segment existed).
            let id = newest.checked_add(1).ok_or_else(|| super::StoreError::Full("segment ids exhausted".into()))?;
            OpenSegment { id, file: create_segment(dir, id).await?, end: 0, entries: Vec::new() }
        }
    };
    Ok((index, Segments { sealed, sealed_bytes, open }, report))
}

fn entry_in_bounds(e: &IdxEntry, data_bytes: u64) -> bool {
    let end = (e.offset_units as u64 + e.len_units as u64) * ALIGN;
    e.len_units >= 1 && e.len_units as u32 <= MAX_RECORD_UNITS && end <= data_bytes
}

/// Applies one record to the index in log order: a tombstone removes the key,
/// a block record (re)points it.
fn apply(index: &mut IndexMap, seg_id: u32, e: &IdxEntry) {
    if e.flags & format::FLAG_TOMBSTONE != 0 {
        index.remove(&e.key_hash);
    } else {
        let loc = Location { seg_id, offset_units: e.offset_units, len_units: e.len_units as u32, accessed: false };
        index.insert(e.key_hash, loc.pack());
    }
}

/// Reads a segment record by record from offset 0 and stops at the first
/// record that is short, malformed or fails a crc, or would end past
/// `limit`. Returns the valid records and the end of the last one.
pub(super) async fn scan_segment(file: &DmaFile, size: u64, limit: u64) -> Result<(Vec<IdxEntry>, u64)> {
    let mut reader = ChunkReader { file, size, buf: ReadResult::default(), buf_start: 0 };
    let mut entries = Vec::new();
    let mut pos = 0u64;
    loop {
        let Some(first) = reader.get(pos, ALIGN).await? else { break };
        let Ok((header, _)) = RecordHeader::decode(&first[..HEADER_LEN]) else { break };
        let len = header.record_len();
        if pos + len > size.min(limit) || len / ALIGN > MAX_RECORD_UNITS as u64 || pos / ALIGN >= (1 << 19) {
            break;
        }
        let Some(rec) = reader.get(pos, len).await? else { break };
        if check_record(rec).is_err() {
            break;
        }
        entries.push(IdxEntry {
            key_hash: header.key_hash,
            offset_units: (pos / ALIGN) as u32,
            len_units: (len / ALIGN) as u16,
            flags: header.flags,
        });
        pos += len;
    }
    Ok((entries, pos))
}

/// Sequential reader over a DmaFile with a 1 MiB read-ahead buffer.
struct ChunkReader<'f> {
    file: &'f DmaFile,
    size: u64,
    buf: ReadResult,
    buf_start: u64,
}

impl ChunkReader<'_> {
    /// Bytes `[pos, pos + len)`, or `None` if the file ends before that.
    /// `pos` must be ALIGN-aligned.
    async fn get(&mut self, pos: u64, len: u64) -> Result<Option<&[u8]>> {
        if pos + len > self.size {
            return Ok(None);
        }
        let have = pos >= self.buf_start && pos + len <= self.buf_start + self.buf.len() as u64;
        if !have {
            let want = len.max(SCAN_CHUNK).min(align_up(self.size) - pos);
            self.buf = self.file.read_at_aligned(pos, want as usize).await?;
            self.buf_start = pos;
            if (self.buf.len() as u64) < len {
                return Ok(None);
            }
        }
        let from = (pos - self.buf_start) as usize;
        Ok(Some(&self.buf[from..from + len as usize]))
    }
}
