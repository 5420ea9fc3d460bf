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
    // In a cluster each owner fetches and keeps its share; the members seen
    // now tell, at the end, whether one was lost during the load.
    let mut members = cluster_members(&c);
    let n = Counts::default();
    let failed: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let again: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    // One pass over `todo` (indices into `files`); `first` counts progress.
    let pass = |todo: &[usize], first: bool| {
        let next = AtomicUsize::new(0);
        let scratch = Counts::default();
        let counts = if first { &n } else { &scratch };
        std::thread::scope(|s| {
            for _ in 0..parallel {
                s.spawn(|| {
                    while let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let (path, size) = &files[i];
                        match one_file(&c, path, *size, o, counts) {
                            Ok(()) => {}
                            // An owner in the cluster could not take its share now.
                            Err(e) if is_again(&e) => again.lock().unwrap().push(i),
                            Err(e) => failed.lock().unwrap().push(format!("{path}: {e:#}")),
                        }
                        if first {
                            n.files.fetch_add(1, Ordering::Relaxed);
                            n.bytes.fetch_add(*size, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
    };
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
        let all: Vec<usize> = (0..files.len()).collect();
        pass(&all, true);
        // A member lost during the load took its share with it, and blocks
        // it could not take were left: ask the new owners (the others
        // answer at once for blocks they hold). A few rounds at most.
        for _ in 0..3 {
            let mut retry = std::mem::take(&mut *again.lock().unwrap());
            let Some(before) = &members else { break };
            let mut now = cluster_members(&c).unwrap_or_default();
            if !retry.is_empty() && now == *before {
                // An owner did not answer but is still listed: wait (bounded)
                // for its lease to lapse and the member list to drop it.
                let deadline = Instant::now() + MEMBERS_SETTLE;
                while now == *before && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(200));
                    now = cluster_members(&c).unwrap_or_default();
                }
            }
            let lost: Vec<&String> = before.iter().filter(|m| !now.contains(m)).collect();
            if retry.is_empty() && lost.is_empty() {
                break;
            }
            if !lost.is_empty() {
                let lost: Vec<&str> = lost.iter().map(|s| s.as_str()).collect();
                eprintln!("load: {} left the cluster during the load; loading its share on the new owners", lost.join(", "));
                retry = (0..files.len()).collect();
            } else {
                eprintln!("load: asking again for {} files whose owner did not answer", retry.len());
            }
            members = Some(now);
            pass(&retry, false);
        }
        for i in std::mem::take(&mut *again.lock().unwrap()) {
            failed.lock().unwrap().push(format!("{}: its owner in the cluster could not take it", files[i].0));
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
    let skipped = n.skipped.load(Ordering::Relaxed);
    // Files loaded on a second round count once.
    let loaded = (files.len() - failed.len()).saturating_sub(skipped as usize);
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

/// How long a load waits for a member that stopped answering to leave the
/// member list (its lease to lapse) before asking its blocks again.
const MEMBERS_SETTLE: Duration = Duration::from_secs(30);

/// The ids of the engine's cluster members, sorted; None outside a cluster.
fn cluster_members(c: &Client) -> Option<Vec<String>> {
    let mut ids: Vec<String> = c.engine_stats().ok()?.cluster?.members.into_iter().map(|m| m.id).collect();
    ids.sort();
    Some(ids)
}

/// EAGAIN from the engine: a cluster member that owns a block could not
/// take it now.
fn is_again(e: &anyhow::Error) -> bool {
    e.downcast_ref::<stoker_client::Error>().is_some_and(|e| e.errno() == libc::EAGAIN)
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
    }
    if o.verify {
        if let Some(reason) = verify_file(c, path, size)? {
            bail!("{reason}");
        }
        n.verified.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
