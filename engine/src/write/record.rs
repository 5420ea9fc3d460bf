//! The record of one acknowledged written file (`ID.rec`, JSON, written
//! with `durable::write`: temporary file, fsync, rename, fsync of the
//! directory), and recovery of the `writes/` directory at start-up.

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
    for d in datas {
        if !have.contains(&d) {
            // Written but never closed (or its close failed): not acknowledged.
            let _ = std::fs::remove_file(dir.join(format!("{d}.data")));
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
}
