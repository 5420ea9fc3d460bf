//! The record of one acknowledged written file, and recovery of the
//! `writes/` directory at start-up. A record is kept one of two ways:
//!
//! - a trailer after the file's bytes in `ID.data` (a close: the record is
//!   written at the end and made durable with the bytes by one fsync; the
//!   data file was made, and its directory entry fsynced, ahead of time);
//! - `ID.rec`, JSON, written with `durable::write` (temporary file, fsync,
//!   rename, fsync of the directory): an fsync of a file still open, a
//!   rename, and a close after either. When both exist, `ID.rec` is newer.
//!
//! Trailer: the record's JSON, its length (u32 LE), its crc32c (u32 LE)
//! and [`TRAILER_MAGIC`]. A data file with neither a valid trailer nor a
//! record was never acknowledged.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    /// Normalised namespace path, `/NAME/rel`.
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub version: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// False on a cache-only mount: never persisted.
    pub persist: bool,
    /// Written by an fsync of a file still open: `size` bytes were durable
    /// then (the local copy may hold more, not acknowledged). A crash
    /// brings the file back at that size; its close rewrites the record.
    #[serde(default)]
    pub open: bool,
}

pub fn write(path: &Path, r: &Record) -> std::io::Result<()> {
    crate::durable::write(path, &serde_json::to_vec(r).expect("records serialize"))
}

/// Ends every record trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"stkwrec1";

/// The trailer of `r`, to write at offset `r.size` of its data file.
pub fn trailer(r: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(r).expect("records serialize");
    let mut out = json.clone();
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&TRAILER_MAGIC);
    out
}

/// The record in the trailer of the data file `path`, if it ends in a
/// whole, valid one that starts right after the record's `size` bytes.
pub fn read_trailer(path: &Path) -> Option<Record> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut tail = [0u8; 16];
    f.read_exact_at(&mut tail, len.checked_sub(16)?).ok()?;
    if tail[8..] != TRAILER_MAGIC {
        return None;
    }
    let json_len = u64::from(u32::from_le_bytes(tail[..4].try_into().ok()?));
    let crc = u32::from_le_bytes(tail[4..8].try_into().ok()?);
    if json_len > 1 << 20 {
        return None;
    }
    let mut json = vec![0u8; json_len as usize];
    f.read_exact_at(&mut json, len.checked_sub(16 + json_len)?).ok()?;
    if crc32c::crc32c(&json) != crc {
        return None;
    }
    let r: Record = serde_json::from_slice(&json).ok()?;
    (r.size + json_len + 16 == len).then_some(r)
}

/// The current record of `id` in `dir`: its `ID.rec`, else its trailer.
pub fn read(dir: &Path, id: u64) -> Option<Record> {
    let rec = dir.join(format!("{id:016x}.rec"));
    std::fs::read(rec)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .or_else(|| read_trailer(&dir.join(format!("{id:016x}.data"))))
}

/// Every acknowledged file in `dir`, newest version of each path only.
/// What a crash left half-done is removed: data without a record (a close
/// that was never acknowledged), temporary records, records of older
/// versions of a path. A record whose data is missing or short is logged
/// and kept on disk (never silently dropped) but not served.
pub fn recover(dir: &Path) -> std::io::Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut datas = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".rec") {
            match std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok()) {
                Some(r) if format!("{:016x}", r.id) == stem => records.push(r),
                _ => tracing::error!(file = %e.path().display(), "unreadable write record: kept, not served"),
            }
        } else if let Some(stem) = name.strip_suffix(".data") {
            datas.push(stem.to_string());
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let have: std::collections::HashSet<String> = records.iter().map(|r| format!("{:016x}", r.id)).collect();
    let mut trailed = std::collections::HashSet::new();
    for d in datas {
        if have.contains(&d) {
            continue;
        }
        match read_trailer(&dir.join(format!("{d}.data"))) {
            Some(r) if format!("{:016x}", r.id) == d => {
                trailed.insert(r.id);
                records.push(r);
            }
            // Written but never closed (or its close failed), or a spare
            // never used: not acknowledged.
            _ => {
                let _ = std::fs::remove_file(dir.join(format!("{d}.data")));
            }
        }
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.id));
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for r in records {
        let data = dir.join(format!("{:016x}.data", r.id));
        if !seen.insert(r.path.clone()) {
            // An older version a newer close replaced.
            let _ = std::fs::remove_file(dir.join(format!("{:016x}.rec", r.id)));
            let _ = std::fs::remove_file(data);
            continue;
        }
        match std::fs::metadata(&data) {
            Ok(m) if m.len() == r.size => out.push(r),
            // Closed with a trailer (and renamed since, if it has a record too).
            _ if trailed.contains(&r.id) || read_trailer(&data).is_some_and(|t| t.size == r.size) => out.push(r),
            Ok(m) if m.len() > r.size && r.open => {
                // Bytes written after the last fsync were never acknowledged.
                std::fs::OpenOptions::new().write(true).open(&data)?.set_len(r.size)?;
                out.push(r)
            }
            _ => tracing::error!(path = %r.path, file = %data.display(), "a written file's local copy is missing or short: kept, not served"),
        }
    }
    crate::durable::fsync_dir(dir)?;
    out.sort_by_key(|r| r.id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, path: &str, size: u64) -> Record {
        Record { id, path: path.into(), size, mtime_ns: 1, version: format!("w{id:x}"), mode: 0o644, uid: 1, gid: 2, persist: true, open: false }
    }

    #[test]
    fn recovery_keeps_acknowledged_files_only() {
        let d = tempfile::tempdir().unwrap();
        let put = |r: &Record, data: &[u8]| {
            std::fs::write(d.path().join(format!("{:016x}.data", r.id)), data).unwrap();
            write(&d.path().join(format!("{:016x}.rec", r.id)), r).unwrap();
        };
        put(&rec(1, "/m/a", 3), b"abc");
        put(&rec(2, "/m/a", 2), b"xy"); // newer version of /m/a
        put(&rec(3, "/m/b", 5), b"abc"); // short: not served
        std::fs::write(d.path().join(format!("{:016x}.data", 9)), b"never closed").unwrap();
        let got = recover(d.path()).unwrap();
        assert_eq!(got, vec![rec(2, "/m/a", 2)]);
        assert!(!d.path().join(format!("{:016x}.data", 9)).exists());
        assert!(!d.path().join(format!("{:016x}.rec", 1)).exists());
        assert!(d.path().join(format!("{:016x}.rec", 3)).exists(), "kept on disk");
    }

    #[test]
    fn trailers_are_records_and_torn_ones_are_not() {
        let d = tempfile::tempdir().unwrap();
        let data_path = |id: u64| d.path().join(format!("{id:016x}.data"));
        let closed = |r: &Record, data: &[u8]| {
            let mut b = data.to_vec();
            b.extend_from_slice(&trailer(r));
            std::fs::write(data_path(r.id), b).unwrap();
        };
        closed(&rec(1, "/m/a", 5), b"hello");
        assert_eq!(read_trailer(&data_path(1)), Some(rec(1, "/m/a", 5)));
        // Torn: the trailer lost its last byte; and a spare never written.
        closed(&rec(2, "/m/b", 3), b"abc");
        let f = std::fs::OpenOptions::new().write(true).open(data_path(2)).unwrap();
        f.set_len(f.metadata().unwrap().len() - 1).unwrap();
        std::fs::write(data_path(3), b"").unwrap();
        // A bit flipped inside the JSON: the crc catches it.
        closed(&rec(4, "/m/c", 2), b"xy");
        let mut b = std::fs::read(data_path(4)).unwrap();
        b[5] ^= 1;
        std::fs::write(data_path(4), b).unwrap();
        // Closed with a trailer, then renamed: its record wins.
        closed(&rec(5, "/m/old", 4), b"data");
        write(&d.path().join(format!("{:016x}.rec", 5)), &rec(5, "/m/new", 4)).unwrap();
        assert_eq!(read(d.path(), 5).unwrap().path, "/m/new");
        let got = recover(d.path()).unwrap();
        assert_eq!(got, vec![rec(1, "/m/a", 5), rec(5, "/m/new", 4)]);
        for id in [2, 3, 4] {
            assert!(!data_path(id).exists(), "{id}: never acknowledged, removed");
        }
    }
}
