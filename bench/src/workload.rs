//! The workloads: `epoch` (every file once, shuffled), `stat` (metadata
//! storm: every file stat'ed twice, shuffled), `random` (random aligned ranges
//! in the files, meant for large ones) and `seq` (each file read front to back
//! in chunks). All run T reader threads that take the next work item from a
//! shared cursor, time every operation into an hdrhistogram and never sleep.
//! Everything random is derived from the seed, so a pass is repeatable.

use crate::report::{cpu_secs, Report};
use crate::target::Target;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Longest latency the histograms hold: 60 s in microseconds.
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    Epoch,
    Stat,
    /// `ops` reads of `range_bytes` at 4 KiB-aligned random offsets in random files.
    Random { ops: u64, range_bytes: u64 },
    /// Every file read sequentially in `chunk_bytes` reads.
    Seq { chunk_bytes: u64 },
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Epoch => "epoch",
            Workload::Stat => "stat",
            Workload::Random { .. } => "random",
            Workload::Seq { .. } => "seq",
        }
    }
}

/// One reader's counters (a thread's, or a `loader` worker process's);
/// merged into the pass's report at the end.
pub struct Recorder {
    pub(crate) hist: Histogram<u64>,
    pub(crate) ops: u64,
    pub(crate) bytes: u64,
    pub(crate) errors: u64,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            hist: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("histogram bounds"),
            ops: 0,
            bytes: 0,
            errors: 0,
        }
    }

    /// Time one operation that yields a value and a byte count; an error is
    /// printed and counted, not timed.
    pub(crate) fn op<T>(&mut self, what: &str, f: impl FnOnce() -> std::io::Result<(T, u64)>) -> Option<T> {
        let t = Instant::now();
        match f() {
            Ok((v, n)) => {
                let _ = self.hist.record((t.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX));
                self.ops += 1;
                self.bytes += n;
                Some(v)
            }
            Err(e) => {
                eprintln!("error: {what}: {e}");
                self.errors += 1;
                None
            }
        }
    }

    pub(crate) fn mismatch(&mut self, what: &str) {
        eprintln!("MISMATCH {what}");
        self.errors += 1;
    }

    /// Fold another reader's counters into these.
    pub(crate) fn add(&mut self, r: &Recorder) {
        self.hist.add(&r.hist).expect("same histogram bounds");
        self.ops += r.ops;
        self.bytes += r.bytes;
        self.errors += r.errors;
    }
}

/// Run `items` work items on `threads` threads and build the report.
#[allow(clippy::too_many_arguments)]
fn run_pass(
    workload: &str,
    target: &str,
    pass: &str,
    threads: usize,
    items: usize,
    files: u64,
    work: impl Fn(usize, &mut Recorder) + Sync,
) -> Report {
    let next = AtomicUsize::new(0);
    let total = Mutex::new(Recorder::new());
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.max(1)) {
            s.spawn(|| {
                let mut r = Recorder::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= items {
                        break;
                    }
                    work(i, &mut r);
                }
                total.lock().unwrap().add(&r);
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    report(workload, target, pass, files, &total.into_inner().unwrap(), secs, cpu_secs() - cpu0)
}

/// The report of a pass that took `secs` of wall time and `cpu_secs` of CPU.
pub(crate) fn report(workload: &str, target: &str, pass: &str, files: u64, r: &Recorder, secs: f64, cpu_secs: f64) -> Report {
    let secs = secs.max(1e-9);
    Report {
        workload: workload.to_string(),
        target: target.to_string(),
        pass: pass.to_string(),
        files,
        ops: r.ops,
        bytes: r.bytes,
        errors: r.errors,
        secs,
        files_per_s: files as f64 / secs,
        ops_per_s: r.ops as f64 / secs,
        mib_per_s: r.bytes as f64 / (1 << 20) as f64 / secs,
        p50_us: r.hist.value_at_quantile(0.50),
        p90_us: r.hist.value_at_quantile(0.90),
        p99_us: r.hist.value_at_quantile(0.99),
        p999_us: r.hist.value_at_quantile(0.999),
        cpu_secs,
        ceiling_fraction: None,
    }
}

pub(crate) fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(seed));
    order
}

fn pread_source(src: &Path, rel: &str, off: u64, len: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(src.join(rel)).ok()?;
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return None,
        }
    }
    buf.truncate(got);
    Some(buf)
}

/// One timed whole-file read of `rel` (an `epoch` or `loader` op); with
/// `verify`, the bytes are compared with the same file under that directory.
pub(crate) fn read_whole(target: &dyn Target, rel: &str, verify: Option<&Path>, r: &mut Recorder) {
    let data = r.op(rel, || target.read_file(rel).map(|d| {
        let len = d.len() as u64;
        (d, len)
    }));
    if let (Some(data), Some(src)) = (data, verify) {
        if std::fs::read(src.join(rel)).ok().as_deref() != Some(&data[..]) {
            r.mismatch(rel);
        }
    }
}

/// One pass of `workload` over `files` (relative path, size in bytes). With
/// `verify`, every byte read is compared with the same range of the same file
/// under that directory and a mismatch counts as an error.
pub fn run(
    target: &dyn Target,
    workload: &Workload,
    pass: &str,
    files: &[(String, u64)],
    threads: usize,
    seed: u64,
    verify: Option<&Path>,
) -> Report {
    let name = target.name();
    let n = files.len();
    match *workload {
        Workload::Epoch => {
            let order = shuffled(n, seed);
            run_pass("epoch", &name, pass, threads, n, n as u64, |i, r| read_whole(target, &files[order[i]].0, verify, r))
        }
        Workload::Stat => {
            // Every file twice: two independently shuffled rounds back to back.
            let mut order = shuffled(n, seed);
            order.extend(shuffled(n, seed ^ 0x5eed));
            run_pass("stat", &name, pass, threads, 2 * n, n as u64, |i, r| {
                let (rel, size) = &files[order[i]];
                let got = r.op(rel, || target.size(rel).map(|s| (s, 0)));
                if verify.is_some() && got.is_some_and(|g| g != *size) {
                    r.mismatch(rel);
                }
            })
        }
        Workload::Random { ops, range_bytes } => {
            run_pass("random", &name, pass, threads, ops as usize, ops, |i, r| {
                // Each operation has its own seed: the same ranges whatever the threading.
                let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64);
                let (rel, size) = &files[rng.gen_range(0..n)];
                let len = range_bytes.min(*size);
                let blocks = (size - len) / 4096 + 1;
                let off = rng.gen_range(0..blocks) * 4096;
                let data = r.op(rel, || target.read_at(rel, off, len).map(|d| {
                    let l = d.len() as u64;
                    (d, l)
                }));
                if let (Some(data), Some(src)) = (data, verify) {
                    if pread_source(src, rel, off, len).as_deref() != Some(&data[..]) {
                        r.mismatch(&format!("{rel}@{off}+{len}"));
                    }
                }
            })
        }
        Workload::Seq { chunk_bytes } => {
            let chunk = chunk_bytes.max(1);
            let order = shuffled(n, seed);
            run_pass("seq", &name, pass, threads, n, n as u64, |i, r| {
                let (rel, size) = &files[order[i]];
                let mut off = 0;
                while off < *size {
                    let len = chunk.min(size - off);
                    let Some(data) = r.op(rel, || target.read_at(rel, off, len).map(|d| {
                        let l = d.len() as u64;
                        (d, l)
                    })) else {
                        return;
                    };
                    if let Some(src) = verify {
                        if pread_source(src, rel, off, len).as_deref() != Some(&data[..]) {
                            r.mismatch(&format!("{rel}@{off}+{len}"));
                        }
                    }
                    if data.is_empty() {
                        r.mismatch(&format!("{rel}: short file at {off}"));
                        return;
                    }
                    off += data.len() as u64;
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::LocalTarget;

    fn dataset(files: usize, mean: u64, seed: u64) -> (tempfile::TempDir, Vec<(String, u64)>) {
        let dir = tempfile::tempdir().unwrap();
        crate::gen::generate(dir.path(), &crate::GenSpec { files, mean_size: mean, dirs: 3, seed }).unwrap();
        let list = crate::epoch::list_files_sized(dir.path()).unwrap();
        (dir, list)
    }

    #[test]
    fn stat_touches_every_file_twice() {
        let (dir, files) = dataset(30, 1000, 1);
        let t = LocalTarget { name: "local".into(), root: dir.path().into() };
        let r = run(&t, &Workload::Stat, "1", &files, 4, 3, Some(dir.path()));
        assert_eq!((r.workload.as_str(), r.files, r.ops, r.bytes, r.errors), ("stat", 30, 60, 0, 0));
        assert!(r.p50_us >= 1 && r.p50_us <= r.p999_us);
    }

    #[test]
    fn random_reads_are_aligned_verified_and_repeatable() {
        let (dir, files) = dataset(5, 200_000, 2);
        let t = LocalTarget { name: "local".into(), root: dir.path().into() };
        let w = Workload::Random { ops: 200, range_bytes: 8192 };
        let r = run(&t, &w, "1", &files, 3, 5, Some(dir.path()));
        assert_eq!((r.files, r.ops, r.errors), (200, 200, 0));
        assert!(r.bytes > 0 && r.bytes <= 200 * 8192);
        // Same seed, same ranges: the same byte count whatever the threading.
        assert_eq!(run(&t, &w, "2", &files, 1, 5, None).bytes, r.bytes);
        // Another dataset under the verify path must be caught.
        let (other, _) = dataset(5, 200_000, 3);
        let bad = run(&t, &w, "bad", &files, 3, 5, Some(other.path()));
        assert!(bad.errors > 0);
    }

    #[test]
    fn seq_reads_every_byte_in_chunks() {
        let (dir, files) = dataset(4, 100_000, 4);
        let total: u64 = files.iter().map(|f| f.1).sum();
        let chunks: u64 = files.iter().map(|f| f.1.div_ceil(16384)).sum();
        let t = LocalTarget { name: "local".into(), root: dir.path().into() };
        let r = run(&t, &Workload::Seq { chunk_bytes: 16384 }, "1", &files, 2, 1, Some(dir.path()));
        assert_eq!((r.files, r.ops, r.bytes, r.errors), (4, chunks, total, 0));
    }
}
