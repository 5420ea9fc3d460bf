//! `stoker load`: preload a file or prefix into the cache with progress (a bar
//! on a terminal, a plain line a second otherwise), optionally skipping files
//! already cached and verifying cached bytes against under storage.
//!
//! Resuming: the engine is the record of what is done. A rerun with
//! `--skip-cached` after Ctrl-C or a kill skips every file whose blocks are
//! all cached and loads the rest; no state file can go stale after an
//! eviction or a `stoker free`.

use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use stoker_client::{Client, Kind};
use stoker_proto::control::checksum;

pub struct LoadOpts {
    pub parallel: usize,
    pub skip_cached: bool,
    pub verify: bool,
}

pub(crate) fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", units[i]) }
}

fn human_secs(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Walk `prefix` (a file or a directory tree) and return (path, size) of
/// every file, sorted. The engine walks it in one request, listing
/// directories concurrently; a tree too large for one answer (over a
/// million files) is walked here instead, one directory listing at a time.
pub(crate) fn walk(c: &Client, prefix: &str) -> Result<Vec<(String, u64)>> {
    match c.walk(prefix) {
        Ok(files) => Ok(files.into_iter().map(|e| (e.name, e.attr.size)).collect()),
        Err(e) if e.errno() == libc::E2BIG => walk_by_listing(c, prefix),
        Err(e) => Err(e.into()),
    }
}

fn walk_by_listing(c: &Client, prefix: &str) -> Result<Vec<(String, u64)>> {
    let attr = c.stat(prefix)?;
    if attr.kind == Kind::File {
        return Ok(vec![(prefix.to_string(), attr.size)]);
    }
    let mut out = Vec::new();
    let mut stack = vec![prefix.trim_end_matches('/').to_string()];
    while let Some(dir) = stack.pop() {
        for e in c.list(if dir.is_empty() { "/" } else { &dir })? {
            let p = format!("{dir}/{}", e.name);
            match e.attr.kind {
                Kind::Dir => stack.push(p),
                Kind::File => out.push((p, e.attr.size)),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Read `path` through the cache and compare it, range by range, with under
/// storage. `Ok(Some(reason))` on a mismatch.
fn verify_file(c: &Client, path: &str, size: u64) -> Result<Option<String>> {
    let chunk = c.block_bytes().clamp(1 << 20, 64 << 20);
    let mut off = 0;
    while off < size {
        let len = chunk.min(size - off);
        let cached = c.read(path, off, len)?;
        let (ulen, usum) = c.ufs_checksum(path, off, len)?;
        if cached.len() as u64 != ulen {
            return Ok(Some(format!(
                "cached bytes differ from under storage: {} bytes through the cache at offset {off}, {ulen} from under storage",
                cached.len()
            )));
        }
        if checksum(&cached) != usum {
            return Ok(Some(format!(
                "cached bytes differ from under storage in {off}..{} (checksum mismatch)",
                off + len
            )));
        }
        if ulen < len {
            break;
        }
        off += len;
    }
    Ok(None)
}

#[derive(Default)]
struct Counts {
    files: AtomicU64,
    bytes: AtomicU64,
    loaded: AtomicU64,
    skipped: AtomicU64,
    verified: AtomicU64,
}

pub fn load(socket: &str, prefix: &str, o: &LoadOpts) -> Result<()> {
    // A one-shot command: an engine that goes away ends it with an error
    // (run it again), rather than a wait for the engine to come back.
    let c = Client::connect_with(socket, stoker_client::Options { reconnect: false, ..Default::default() })?;
    let files = walk(&c, prefix).with_context(|| format!("listing {prefix}"))?;
    let total_bytes: u64 = files.iter().map(|f| f.1).sum();
    let parallel = o.parallel.max(1);
    let mut mode = format!("parallel {parallel}");
    if o.skip_cached {
        mode.push_str(", skip cached");
    }
    if o.verify {
        mode.push_str(", verify");
    }
    eprintln!("load: {prefix}: {} files, {} ({mode})", files.len(), human(total_bytes));
    let next = AtomicUsize::new(0);
    let n = Counts::default();
    let failed: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = indicatif::ProgressBar::with_draw_target(
            Some(total_bytes),
            indicatif::ProgressDrawTarget::stderr_with_hz(10),
        );
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {bytes}/{total_bytes} {msg} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("progress template")
            .progress_chars("=> "),
        );
        b.set_message(format!("0/{} files", files.len()));
        b.enable_steady_tick(Duration::from_millis(100));
        Some(b)
    } else {
        None
    };
    let t0 = Instant::now();
    let finished = AtomicBool::new(false);
    let progress_line = |f: u64, b: u64| {
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        let rate = b as f64 / secs;
        let eta = if b >= total_bytes {
            "0s".to_string()
        } else if rate > 0.0 {
            human_secs((total_bytes - b) as f64 / rate)
        } else {
            "?".to_string()
        };
        eprintln!(
            "load: {f}/{} files, {}/{}, {}/s, ETA {eta}",
            files.len(),
            human(b),
            human(total_bytes),
            human(rate as u64)
        );
    };
    std::thread::scope(|s| {
        // Progress: a bar on a terminal, a plain line a second otherwise.
        let progress = s.spawn(|| {
            let mut last_line = Instant::now();
            while !finished.load(Ordering::Acquire) {
                std::thread::park_timeout(Duration::from_millis(100));
                let (f, b) = (n.files.load(Ordering::Relaxed), n.bytes.load(Ordering::Relaxed));
                if let Some(bar) = &bar {
                    bar.set_position(b);
                    bar.set_message(format!("{f}/{} files", files.len()));
                } else if last_line.elapsed() >= Duration::from_secs(1) && !finished.load(Ordering::Acquire) {
                    last_line = Instant::now();
                    progress_line(f, b);
                }
            }
        });
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((path, size)) = files.get(i) else { break };
                    if let Err(e) = one_file(&c, path, *size, o, &n) {
                        failed.lock().unwrap().push(format!("{path}: {e:#}"));
                    }
                    n.files.fetch_add(1, Ordering::Relaxed);
                    n.bytes.fetch_add(*size, Ordering::Relaxed);
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        finished.store(true, Ordering::Release);
        progress.thread().unpark();
    });
    let (f, b) = (n.files.load(Ordering::Relaxed), n.bytes.load(Ordering::Relaxed));
    if let Some(bar) = &bar {
        bar.set_position(b);
        bar.set_message(format!("{f}/{} files", files.len()));
        bar.finish();
    }
    let mut failed = failed.into_inner().unwrap();
    failed.sort();
    let secs = t0.elapsed().as_secs_f64();
    let loaded = n.loaded.load(Ordering::Relaxed);
    let skipped = n.skipped.load(Ordering::Relaxed);
    let mut summary = format!(
        "load: {prefix}: {} files: {loaded} loaded, {skipped} skipped (already cached)",
        files.len()
    );
    if o.verify {
        summary.push_str(&format!(", {} verified", n.verified.load(Ordering::Relaxed)));
    }
    summary.push_str(&format!(
        ", {} failed; {} in {secs:.1}s ({}/s)",
        failed.len(),
        human(b),
        human((b as f64 / secs.max(1e-9)) as u64)
    ));
    eprintln!("{summary}");
    if !failed.is_empty() {
        const SHOWN: usize = 20;
        for f in failed.iter().take(SHOWN) {
            eprintln!("load: failed: {f}");
        }
        if failed.len() > SHOWN {
            eprintln!("load: … and {} more", failed.len() - SHOWN);
        }
        bail!("{} of {} files failed to load or verify", failed.len(), files.len());
    }
    Ok(())
}

fn one_file(c: &Client, path: &str, size: u64, o: &LoadOpts, n: &Counts) -> Result<()> {
    // Whether every block of `path` is cached (an empty file always is).
    let skip = o.skip_cached && {
        let s = c.path_stat(path)?;
        s.cached_blocks >= s.blocks
    };
    if skip {
        n.skipped.fetch_add(1, Ordering::Relaxed);
    } else {
        c.prefetch(path, size).map_err(anyhow::Error::from)?;
        n.loaded.fetch_add(1, Ordering::Relaxed);
    }
    if o.verify {
        if let Some(reason) = verify_file(c, path, size)? {
            bail!("{reason}");
        }
        n.verified.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
