//! The device ceiling: what the disk under a directory does with O_DIRECT
//! reads through io_uring, sequential 1 MiB and random 4 KiB / 128 KiB reads
//! at a sweep of queue depths. Every workload result can then be stated as a
//! fraction of the ceiling that fits it.
//!
//! It reads one scratch file it writes itself (and removes afterwards); it
//! never writes to anything else. Reads land in huge-page buffers
//! (`stoker_client::hugebuf`), the best the device does: on a virtio disk
//! reads into 4 KiB pages cost a descriptor per page and reached less than
//! half of it (docs/BENCHMARKS.md, read path, huge-page buffers). Nothing is
//! registered with the ring, so no locked memory is needed.

use crate::report::{cpu_secs, Report};
use anyhow::{Context, Result};
use io_uring::{opcode, types, IoUring};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use stoker_client::hugebuf::HugeBuf;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Name of the scratch file the ceiling reads, in `CeilingSpec::dir`.
pub const SCRATCH_FILE: &str = "stoker-ceiling.dat";
/// Bound on queue depth (the ring's size and the buffers kept: 128 MiB at 1 MiB reads).
pub const QUEUE_DEPTH_MAX: usize = 128;

#[derive(Clone, Debug)]
pub struct CeilingSpec {
    /// A directory on the device to measure (the cache dir's device, usually).
    pub dir: PathBuf,
    /// Size of the scratch file read; larger than the device's own cache.
    pub file_bytes: u64,
    /// How long each (pattern, queue depth) point runs.
    pub duration_per_point: Duration,
    /// Bound on reads per point (tests use a small one).
    pub ops_per_point_max: u64,
    pub queue_depths: Vec<usize>,
}

impl Default for CeilingSpec {
    fn default() -> CeilingSpec {
        CeilingSpec {
            dir: std::env::temp_dir(),
            file_bytes: 1 << 30,
            duration_per_point: Duration::from_secs(2),
            ops_per_point_max: u64::MAX,
            queue_depths: vec![1, 4, 16, 32],
        }
    }
}

/// The best of each pattern over the queue-depth sweep, and every point.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ceiling {
    pub seq_mib_per_s: f64,
    pub seq_queue_depth: usize,
    pub rand128k_mib_per_s: f64,
    pub rand128k_queue_depth: usize,
    pub rand4k_iops: f64,
    pub rand4k_mib_per_s: f64,
    pub rand4k_queue_depth: usize,
    pub points: Vec<Report>,
}

impl Ceiling {
    /// `r.mib_per_s` over the ceiling that fits it: `seq` and reads of 1 MiB
    /// or more against sequential, reads of 64 KiB or more against random
    /// 128 KiB, smaller ones against random 4 KiB. None for `stat`, ceiling
    /// points themselves, passes without reads, or an unmeasured ceiling.
    pub fn fraction(&self, r: &Report) -> Option<f64> {
        if r.workload == "stat" || r.workload == "ceiling" || r.ops == 0 || r.bytes == 0 {
            return None;
        }
        let op_bytes = r.bytes / r.ops;
        let ceiling = if r.workload == "seq" || op_bytes >= 1 << 20 {
            self.seq_mib_per_s
        } else if op_bytes >= 64 << 10 {
            self.rand128k_mib_per_s
        } else {
            self.rand4k_mib_per_s
        };
        (ceiling > 0.0).then(|| r.mib_per_s / ceiling)
    }

    /// Fill in `ceiling_fraction` of every report.
    pub fn annotate(&self, reports: &mut [Report]) {
        for r in reports {
            r.ceiling_fraction = self.fraction(r);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Pattern {
    Seq,
    Random,
}

/// Write the scratch file (random bytes, synced, then dropped from the page
/// cache so nothing of it is served from memory).
fn write_scratch(path: &std::path::Path, bytes: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, &f);
    let mut rng = SmallRng::seed_from_u64(7);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    drop(w);
    f.sync_all()?;
    // SAFETY: fadvise on a descriptor we own; advice only, no memory is touched.
    unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

/// One point: `queue_depth` reads kept in flight on one ring until the
/// time or op bound is reached.
fn point(file: &std::fs::File, spec: &CeilingSpec, pattern: Pattern, block: u64, queue_depth: usize) -> Result<Report> {
    let blocks = (spec.file_bytes / block).max(1);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut ring = IoUring::new(queue_depth.next_power_of_two() as u32).context("creating an io_uring")?;
    let mut bufs = HugeBuf::new();
    let base = bufs.get(queue_depth * block as usize).as_mut_ptr();
    let mut rng = SmallRng::seed_from_u64(queue_depth as u64);
    let (mut next, mut started, mut inflight, mut bytes) = (0u64, 0u64, 0usize, 0u64);
    let mut since = vec![Instant::now(); queue_depth];
    let deadline = Instant::now() + spec.duration_per_point;
    let (cpu0, t0) = (cpu_secs(), Instant::now());
    let fd = types::Fd(file.as_raw_fd());
    let mut submit = |ring: &mut IoUring, slot: usize, since: &mut [Instant]| -> Result<()> {
        let idx = match pattern {
            Pattern::Seq => {
                let i = next;
                next = (i + 1) % blocks;
                i
            }
            Pattern::Random => rng.gen_range(0..blocks),
        };
        // SAFETY: slot < queue_depth, so [slot * block, + block) is inside
        // `bufs`, which outlives every read (all are reaped before return)
        // and is not touched while this read is in flight.
        let dst = unsafe { base.add(slot * block as usize) };
        let sqe = opcode::Read::new(fd, dst, block as u32).offset(idx * block).build().user_data(slot as u64);
        since[slot] = Instant::now();
        // SAFETY: the entry's buffer stays valid until its completion (above).
        unsafe { ring.submission().push(&sqe) }.map_err(|_| anyhow::anyhow!("io_uring submission queue full"))?;
        Ok(())
    };
    for slot in 0..queue_depth {
        if started < spec.ops_per_point_max {
            submit(&mut ring, slot, &mut since)?;
            (started, inflight) = (started + 1, inflight + 1);
        }
    }
    while inflight > 0 {
        ring.submit_and_wait(1).context("io_uring submit")?;
        let done: Vec<(usize, i32)> = ring.completion().map(|c| (c.user_data() as usize, c.result())).collect();
        for (slot, res) in done {
            inflight -= 1;
            anyhow::ensure!(res >= 0, "O_DIRECT read: {}", std::io::Error::from_raw_os_error(-res));
            let _ = hist.record((since[slot].elapsed().as_micros() as u64).max(1));
            bytes += res as u64;
            if started < spec.ops_per_point_max && Instant::now() < deadline {
                submit(&mut ring, slot, &mut since)?;
                (started, inflight) = (started + 1, inflight + 1);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let h = &hist;
    let ops = h.len();
    let kind = match pattern {
        Pattern::Seq => "seq",
        Pattern::Random => "rand",
    };
    let size = if block >= 1 << 20 { format!("{}M", block >> 20) } else { format!("{}K", block >> 10) };
    Ok(Report {
        workload: "ceiling".into(),
        target: "device (O_DIRECT, io_uring)".into(),
        pass: format!("{kind} {size} qd{queue_depth}"),
        files: ops,
        ops,
        bytes,
        errors: 0,
        secs,
        files_per_s: ops as f64 / secs,
        ops_per_s: ops as f64 / secs,
        mib_per_s: bytes as f64 / (1 << 20) as f64 / secs,
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        cpu_secs: cpu_secs() - cpu0,
        ceiling_fraction: None,
    })
}

/// Measure the device under `spec.dir`. `progress` is called with each point.
pub fn measure(spec: &CeilingSpec, progress: &(dyn Fn(&Report) + Sync)) -> Result<Ceiling> {
    anyhow::ensure!(spec.file_bytes >= 1 << 20, "the ceiling scratch file must be at least 1 MiB");
    anyhow::ensure!(
        !spec.queue_depths.is_empty() && spec.queue_depths.iter().all(|&q| (1..=QUEUE_DEPTH_MAX).contains(&q)),
        "queue depths must be 1..={QUEUE_DEPTH_MAX}"
    );
    std::fs::create_dir_all(&spec.dir).with_context(|| format!("creating {}", spec.dir.display()))?;
    let path = spec.dir.join(SCRATCH_FILE);
    write_scratch(&path, spec.file_bytes)?;
    let sweep = || -> Result<Vec<Report>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .with_context(|| format!("opening {} with O_DIRECT", path.display()))?;
        let mut points = Vec::new();
        for (pattern, block) in [(Pattern::Seq, 1u64 << 20), (Pattern::Random, 128 << 10), (Pattern::Random, 4 << 10)] {
            for &qd in &spec.queue_depths {
                let r = point(&file, spec, pattern, block, qd)?;
                progress(&r);
                points.push(r);
            }
        }
        Ok(points)
    };
    let result = sweep();
    let _ = std::fs::remove_file(&path);
    let points = result?;
    let mut c = Ceiling::default();
    for p in &points {
        if p.pass.starts_with("seq") && p.mib_per_s > c.seq_mib_per_s {
            (c.seq_mib_per_s, c.seq_queue_depth) = (p.mib_per_s, qd_of(p));
        } else if p.pass.starts_with("rand 128K") && p.mib_per_s > c.rand128k_mib_per_s {
            (c.rand128k_mib_per_s, c.rand128k_queue_depth) = (p.mib_per_s, qd_of(p));
        } else if p.pass.starts_with("rand 4K") && p.ops_per_s > c.rand4k_iops {
            (c.rand4k_iops, c.rand4k_mib_per_s, c.rand4k_queue_depth) = (p.ops_per_s, p.mib_per_s, qd_of(p));
        }
    }
    c.points = points;
    Ok(c)
}

fn qd_of(r: &Report) -> usize {
    r.pass.rsplit("qd").next().and_then(|q| q.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_sweeps_every_pattern_and_depth_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let spec = CeilingSpec {
            dir: dir.path().into(),
            file_bytes: 4 << 20,
            duration_per_point: Duration::from_secs(30),
            ops_per_point_max: 16,
            queue_depths: vec![1, 4],
        };
        let c = measure(&spec, &|_| {}).unwrap();
        let passes: Vec<&str> = c.points.iter().map(|p| p.pass.as_str()).collect();
        assert_eq!(passes, ["seq 1M qd1", "seq 1M qd4", "rand 128K qd1", "rand 128K qd4", "rand 4K qd1", "rand 4K qd4"]);
        for p in &c.points {
            assert_eq!(p.ops, 16, "{}", p.pass);
            let block = if p.pass.starts_with("seq") { 1 << 20 } else if p.pass.contains("128K") { 128 << 10 } else { 4096 };
            assert_eq!(p.bytes, 16 * block, "{}", p.pass);
            assert!(p.p50_us >= 1 && p.p50_us <= p.p999_us);
        }
        assert!(c.seq_mib_per_s > 0.0 && c.rand128k_mib_per_s > 0.0 && c.rand4k_iops > 0.0);
        assert!([1, 4].contains(&c.seq_queue_depth));
        assert!(!dir.path().join(SCRATCH_FILE).exists());
        // Fractions: a seq report against the seq ceiling, stat has none.
        let r = Report { workload: "seq".into(), ops: 1, bytes: 1 << 20, mib_per_s: c.seq_mib_per_s / 2.0, ..Default::default() };
        assert!((c.fraction(&r).unwrap() - 0.5).abs() < 1e-9);
        let st = Report { workload: "stat".into(), ops: 10, ..Default::default() };
        assert_eq!(c.fraction(&st), None);
    }
}
