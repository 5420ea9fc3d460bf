//! The `epoch` workload: every file once, in a seeded shuffled order, read by
//! T threads that take the next file from a shared cursor.

use crate::report::{cpu_secs, Report};
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Something files can be read from.
pub trait Target: Sync {
    fn name(&self) -> String;
    /// Read the whole file `rel` (relative path); returns its bytes.
    fn read_file(&self, rel: &str) -> std::io::Result<Vec<u8>>;
}

/// Plain reads of a local directory (ext4, NFS, or a FUSE mount).
pub struct LocalTarget {
    pub name: String,
    pub root: PathBuf,
}

impl Target for LocalTarget {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn read_file(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.root.join(rel))
    }
}

/// Direct reads of the under storage, standing in for a remote store: a local
/// directory where every request first pays `latency` (the same knob as the
/// engine's `--ufs-latency`), so "direct" and "through stoker" pay the same.
pub struct RemoteTarget {
    pub root: PathBuf,
    pub latency: std::time::Duration,
}

impl Target for RemoteTarget {
    fn name(&self) -> String {
        format!("direct ({:?}/request)", self.latency)
    }
    fn read_file(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        std::thread::sleep(self.latency);
        std::fs::read(self.root.join(rel))
    }
}

/// Reads through a stoker engine with client-lib (shared memory).
pub struct StokerTarget {
    pub name: String,
    pub client: stoker_client::Client,
    /// Namespace prefix, e.g. `/data`.
    pub prefix: String,
}

impl Target for StokerTarget {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn read_file(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        Ok(self.client.read_file(&format!("{}/{rel}", self.prefix))?)
    }
}

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

/// One pass over `files`. With `verify`, every file is also compared with the
/// same file under that directory and a mismatch counts as an error.
pub fn epoch(target: &dyn Target, pass: &str, files: &[String], threads: usize, seed: u64, verify: Option<&Path>) -> Report {
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(seed));
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let hist = Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"));
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&f) = order.get(i) else { break };
                    let t = Instant::now();
                    match target.read_file(&files[f]) {
                        Ok(data) => {
                            let _ = local.record((t.elapsed().as_micros() as u64).max(1));
                            bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                            if let Some(src) = verify {
                                if std::fs::read(src.join(&files[f])).ok().as_deref() != Some(&data[..]) {
                                    eprintln!("MISMATCH {}", files[f]);
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Err(e) => {
                            eprintln!("error reading {}: {e}", files[f]);
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                hist.lock().unwrap().add(&local).expect("same histogram bounds");
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let h = hist.into_inner().unwrap();
    let bytes = bytes.into_inner();
    Report {
        target: target.name(),
        pass: pass.to_string(),
        files: files.len() as u64,
        bytes,
        errors: errors.into_inner(),
        secs,
        files_per_s: files.len() as f64 / secs,
        mib_per_s: bytes as f64 / (1 << 20) as f64 / secs,
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        cpu_secs: cpu_secs() - cpu0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
