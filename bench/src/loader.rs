//! The `loader` workload: a PyTorch DataLoader's shape. N worker *processes*
//! (not threads) each read whole files, one at a time, from one seeded
//! shuffle of the dataset.
//!
//! Work is split by index, as DataLoader's sampler hands out batches of one:
//! worker k reads items k, k+N, k+2N, ... of the shuffled list, in that order.
//! There is no shared cursor, so a slow worker is not helped by the others
//! (as in DataLoader, where each worker owns its share of the indices).
//!
//! This module owns both ends of the worker protocol; it never builds a
//! worker's command line (the caller does, usually by re-running its own
//! binary) and never reads anything itself in the parent:
//!
//! 1. the parent spawns N workers with piped stdin/stdout (stderr inherited,
//!    so a worker's errors reach the user as they happen);
//! 2. it writes each worker its share, one relative path a line, then an
//!    empty line; the worker sets up (e.g. connects its own client) before
//!    reading it and answers `ready`;
//! 3. once every worker is ready the clock starts and each gets `go`;
//! 4. each worker reads its share and prints one JSON line, a [`Tally`]:
//!    counts, its own CPU seconds over the reads, and its latency histogram
//!    (hdrhistogram's V2 serialization); the clock stops when the last tally
//!    is in, and the tallies are merged into one `Report`.
//!
//! Start-up (exec, listing, connecting) is therefore outside the timed pass.
//! A worker that dies or says something else is a one-line error naming it;
//! the other workers are killed, never left behind.

use crate::report::{cpu_secs, Report};
use crate::target::Target;
use crate::workload::{read_whole, report, shuffled, Recorder};
use anyhow::{bail, ensure, Context, Result};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

/// What one worker sends back after its share.
#[derive(Debug, Serialize, Deserialize)]
pub struct Tally {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    /// User + system CPU seconds of the worker process over its reads (all
    /// its threads; start-up not included).
    pub cpu_secs: f64,
    /// Per-file latencies in µs: an hdrhistogram in its V2 serialization.
    pub hist_v2: Vec<u8>,
}

impl Tally {
    fn from_recorder(r: &Recorder, cpu_secs: f64) -> Tally {
        let mut hist_v2 = Vec::new();
        V2Serializer::new().serialize(&r.hist, &mut hist_v2).expect("serializing into memory");
        Tally { ops: r.ops, bytes: r.bytes, errors: r.errors, cpu_secs, hist_v2 }
    }

    fn to_recorder(&self) -> Result<Recorder> {
        let hist: hdrhistogram::Histogram<u64> = Deserializer::new().deserialize(&mut &self.hist_v2[..]).map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
        let mut r = Recorder::new();
        r.hist.add(&hist).map_err(|e| anyhow::anyhow!("histogram out of range: {e:?}"))?;
        (r.ops, r.bytes, r.errors) = (self.ops, self.bytes, self.errors);
        Ok(r)
    }
}

/// The report name for N worker processes: `loader-4p`.
pub fn workload_name(procs: usize) -> String {
    format!("loader-{procs}p")
}

/// Worker k's share of `order` among `procs`: items k, k+N, k+2N, ...
fn share(order: &[usize], k: usize, procs: usize) -> impl Iterator<Item = usize> + '_ {
    order.iter().copied().skip(k).step_by(procs)
}

/// One `loader` pass.
pub struct LoaderPass<'a> {
    /// The target's name in the report (each worker builds its own target).
    pub target: &'a str,
    pub pass: &'a str,
    /// Worker processes, at least 1.
    pub procs: usize,
    /// (relative path, size) of every file in the dataset.
    pub files: &'a [(String, u64)],
    pub seed: u64,
}

/// Spawned workers; any still running when this is dropped (an error path)
/// are killed and reaped.
struct Workers(Vec<(Child, BufReader<ChildStdout>)>);

impl Drop for Workers {
    fn drop(&mut self) {
        for (c, _) in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Workers {
    /// Worker k is gone or broke the protocol: say which, and how it ended.
    fn failed(&mut self, k: usize, what: &str) -> anyhow::Error {
        let n = self.0.len();
        let c = &mut self.0[k].0;
        // Give a worker that is exiting a moment to be reaped, so its status shows.
        let status = (0..50)
            .find_map(|_| match c.try_wait() {
                Ok(None) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                }
                Ok(Some(s)) => Some(s.to_string()),
                Err(e) => Some(e.to_string()),
            })
            .unwrap_or_else(|| "still running".into());
        anyhow::anyhow!("loader worker {k} of {n} {what} ({status}; its own error, if any, is above)")
    }

    fn read_line(&mut self, k: usize, what: &str) -> Result<String> {
        let mut line = String::new();
        match self.0[k].1.read_line(&mut line) {
            Ok(n) if n > 0 => Ok(line.trim_end().to_string()),
            _ => Err(self.failed(k, &format!("exited {what}"))),
        }
    }

    fn send(&mut self, k: usize, text: &[u8], what: &str) -> Result<()> {
        let stdin = self.0[k].0.stdin.as_mut().expect("piped stdin");
        match stdin.write_all(text).and_then(|()| stdin.flush()) {
            Ok(()) => Ok(()),
            Err(_) => Err(self.failed(k, what)),
        }
    }
}

/// Run one pass with `spec.procs` workers; `spawn(k)` is the command line of
/// worker k (it must end up in [`worker`]). Read errors inside the workers
/// are counted in the report; a worker that fails is an error.
pub fn run(spec: &LoaderPass, spawn: &dyn Fn(usize) -> Command) -> Result<Report> {
    let n = spec.procs;
    ensure!(n >= 1, "--procs must be at least 1");
    if let Some((rel, _)) = spec.files.iter().find(|(rel, _)| rel.contains('\n') || rel.is_empty()) {
        bail!("loader: cannot hand {rel:?} to a worker (one path a line)");
    }
    let order = shuffled(spec.files.len(), spec.seed);
    let mut workers = Workers(Vec::with_capacity(n));
    for k in 0..n {
        let mut cmd = spawn(k);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().with_context(|| format!("starting loader worker {k} of {n}: {cmd:?}"))?;
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        workers.0.push((child, out));
    }
    for k in 0..n {
        let mut list = String::new();
        for i in share(&order, k, n) {
            list.push_str(&spec.files[i].0);
            list.push('\n');
        }
        list.push('\n');
        workers.send(k, list.as_bytes(), "exited before taking its files")?;
    }
    for k in 0..n {
        let line = workers.read_line(k, "before starting")?;
        if line != "ready" {
            return Err(workers.failed(k, &format!("said {line:?} instead of ready")));
        }
    }
    let t0 = Instant::now();
    for k in 0..n {
        workers.send(k, b"go\n", "exited before starting")?;
    }
    let mut total = Recorder::new();
    let mut cpu = 0.0;
    for k in 0..n {
        let line = workers.read_line(k, "during the pass")?;
        let tally: Tally = serde_json::from_str(&line).map_err(|e| workers.failed(k, &format!("sent a bad tally ({e})")))?;
        total.add(&tally.to_recorder().map_err(|e| workers.failed(k, &format!("sent a bad tally ({e})")))?);
        cpu += tally.cpu_secs;
    }
    let secs = t0.elapsed().as_secs_f64();
    for k in 0..n {
        let status = workers.0[k].0.wait().with_context(|| format!("waiting for loader worker {k} of {n}"))?;
        if !status.success() {
            return Err(workers.failed(k, "failed after its tally"));
        }
    }
    let name = workload_name(n);
    Ok(report(&name, spec.target, spec.pass, spec.files.len() as u64, &total, secs, cpu))
}

/// A worker's side: take the share from `input` (one path a line, then an
/// empty line), say `ready`, wait for `go`, read every file whole in order
/// (verified against `verify` if given) and write the [`Tally`] as one line.
pub fn worker(target: &dyn Target, verify: Option<&Path>, input: &mut impl BufRead, out: &mut impl Write) -> Result<()> {
    let mut items = Vec::new();
    loop {
        let mut line = String::new();
        ensure!(input.read_line(&mut line)? > 0, "loader worker: the list ended without its empty line");
        let rel = line.trim_end_matches('\n');
        if rel.is_empty() {
            break;
        }
        items.push(rel.to_string());
    }
    out.write_all(b"ready\n")?;
    out.flush()?;
    let mut go = String::new();
    input.read_line(&mut go)?;
    ensure!(go.trim_end() == "go", "loader worker: expected go, got {go:?}");
    let mut r = Recorder::new();
    let cpu0 = cpu_secs();
    for rel in &items {
        read_whole(target, rel, verify, &mut r);
    }
    let tally = Tally::from_recorder(&r, cpu_secs() - cpu0);
    serde_json::to_writer(&mut *out, &tally)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::LocalTarget;

    #[test]
    fn shares_cover_the_shuffle_once_by_stride() {
        let order = shuffled(10, 3);
        let shares: Vec<Vec<usize>> = (0..3).map(|k| share(&order, k, 3).collect()).collect();
        assert_eq!(shares[1], [order[1], order[4], order[7]]);
        let mut all: Vec<usize> = shares.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn worker_reads_its_share_and_tallies() {
        let dir = tempfile::tempdir().unwrap();
        crate::gen::generate(dir.path(), &crate::GenSpec { files: 6, mean_size: 3000, dirs: 2, seed: 1 }).unwrap();
        let files = crate::epoch::list_files_sized(dir.path()).unwrap();
        let t = LocalTarget { name: "local".into(), root: dir.path().into() };
        let mut input = String::new();
        for (rel, _) in &files[..4] {
            input.push_str(rel);
            input.push('\n');
        }
        input.push_str("\ngo\n");
        let mut out = Vec::new();
        worker(&t, Some(dir.path()), &mut input.as_bytes(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (ready, tally) = text.split_once('\n').unwrap();
        assert_eq!(ready, "ready");
        let tally: Tally = serde_json::from_str(tally.trim_end()).unwrap();
        let bytes: u64 = files[..4].iter().map(|f| f.1).sum();
        assert_eq!((tally.ops, tally.bytes, tally.errors), (4, bytes, 0));
        let r = tally.to_recorder().unwrap();
        assert_eq!(r.hist.len(), 4);
        // Another dataset under the verify path: every file is a mismatch.
        let other = tempfile::tempdir().unwrap();
        crate::gen::generate(other.path(), &crate::GenSpec { files: 6, mean_size: 3000, dirs: 2, seed: 2 }).unwrap();
        let mut out = Vec::new();
        worker(&t, Some(other.path()), &mut input.as_bytes(), &mut out).unwrap();
        let tally: Tally = serde_json::from_str(String::from_utf8(out).unwrap().lines().nth(1).unwrap()).unwrap();
        assert_eq!(tally.errors, 4);
    }

    #[test]
    fn a_worker_that_dies_is_a_clear_error() {
        let files = vec![("a".to_string(), 1), ("b".to_string(), 1)];
        let spec = LoaderPass { target: "local", pass: "1", procs: 2, files: &files, seed: 1 };
        let err = run(&spec, &|_| Command::new("false")).unwrap_err().to_string();
        // Either worker may be the first seen gone.
        assert!(err.starts_with("loader worker 0 of 2 exited") || err.starts_with("loader worker 1 of 2 exited"), "{err}");
        assert!(err.contains("exit status: 1"), "{err}");
    }
}
