//! The `epoch` workload: every file once, in a seeded shuffled order, read by
//! T threads that take the next file from a shared cursor; and the dataset
//! listing every workload starts from.

use crate::report::Report;
use crate::target::Target;
use crate::workload::Workload;
use std::path::{Path, PathBuf};

/// Relative paths of all regular files under `root`, sorted.
pub fn list_files(root: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let name = rel.join(e.file_name());
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(name);
            } else if ft.is_file() {
                out.push(name.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// (relative path, size) of all regular files under `root`, sorted by path.
pub fn list_files_sized(root: &Path) -> std::io::Result<Vec<(String, u64)>> {
    list_files(root)?
        .into_iter()
        .map(|f| {
            let len = std::fs::metadata(root.join(&f))?.len();
            Ok((f, len))
        })
        .collect()
}

/// One `epoch` pass over `files` (see `workload::run`); sizes are looked up
/// only when a file is read, so this is what the demo and older callers use.
pub fn epoch(target: &dyn Target, pass: &str, files: &[String], threads: usize, seed: u64, verify: Option<&Path>) -> Report {
    let sized: Vec<(String, u64)> = files.iter().map(|f| (f.clone(), 0)).collect();
    crate::workload::run(target, &Workload::Epoch, pass, &sized, threads, seed, verify)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::LocalTarget;

    #[test]
    fn epoch_reads_every_file_and_counts_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        crate::gen::generate(dir.path(), &crate::GenSpec { files: 40, mean_size: 2000, dirs: 3, seed: 1 }).unwrap();
        let files = list_files(dir.path()).unwrap();
        assert_eq!(files.len(), 40);
        let t = LocalTarget { name: "local".into(), root: dir.path().into() };
        let r = epoch(&t, "one", &files, 4, 9, Some(dir.path()));
        let total: u64 = files.iter().map(|f| std::fs::metadata(dir.path().join(f)).unwrap().len()).sum();
        assert_eq!((r.files, r.bytes, r.errors), (40, total, 0));
        assert!(r.p50_us > 0 && r.p50_us <= r.p99_us && r.p99_us <= r.p999_us);
        // A verify directory with other bytes must be caught.
        let other = tempfile::tempdir().unwrap();
        crate::gen::generate(other.path(), &crate::GenSpec { files: 40, mean_size: 2000, dirs: 3, seed: 2 }).unwrap();
        let r = epoch(&t, "bad", &files, 4, 9, Some(other.path()));
        assert_eq!(r.errors, 40);
    }
}
