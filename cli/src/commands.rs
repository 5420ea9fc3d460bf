//! serve, cat, ls, stat, load and bench.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use stoker_client::{Client, Kind};
use stoker_engine::config::EngineConfig;
use stoker_engine::{parse_duration, parse_size, Engine, MountSpec};

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)?.ok_or_else(|| format!("bad duration {s:?}: `never` is not allowed here"))
}

fn mount_arg(s: &str) -> Result<MountSpec, String> {
    let (name, uri) = s
        .split_once('=')
        .ok_or_else(|| format!("bad --mount {s:?}: expected NAME=URI, e.g. train=file:///data/train"))?;
    Ok(MountSpec { name: name.to_string(), uri: uri.to_string(), ..Default::default() })
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory for cached segments (local NVMe).
    #[arg(long)]
    pub cache_dir: PathBuf,
    /// Most bytes the cache may use on disk, e.g. 100G.
    #[arg(long, value_parser = size_arg, default_value = "10G")]
    pub capacity: u64,
    /// Shards (one thread each) [default: number of cores].
    #[arg(long)]
    pub shards: Option<usize>,
    /// A namespace mount NAME=URI, served at /NAME (repeatable).
    #[arg(long = "mount", value_parser = mount_arg)]
    pub mounts: Vec<MountSpec>,
    /// An under-storage option for one mount, NAME:key=value (repeatable),
    /// e.g. data:endpoint=http://127.0.0.1:9000 (docs/STORAGE.md).
    #[arg(long = "mount-opt", value_name = "NAME:KEY=VALUE")]
    pub mount_opts: Vec<String>,
    /// Cache block size for large files.
    #[arg(long, value_parser = size_arg, default_value = "4M")]
    pub block_size: u64,
    /// Segment file size.
    #[arg(long, value_parser = size_arg, default_value = "256M")]
    pub segment_size: u64,
    /// Inject this latency into every under-storage request (demos, tests), e.g. 20ms.
    #[arg(long, value_parser = duration_arg, default_value = "0ms")]
    pub ufs_latency: Duration,
    /// Cap under-storage reads at this many bytes per second (demos, tests).
    #[arg(long, value_parser = size_arg)]
    pub ufs_bandwidth: Option<u64>,
    /// Timeout of one under-storage call.
    #[arg(long, value_parser = duration_arg, default_value = "30s")]
    pub ufs_timeout: Duration,
    /// How long attributes and listings are trusted (`never` re-checks for immutable data).
    #[arg(long, default_value = "60s")]
    pub metadata_sync: String,
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let mut cfg = EngineConfig::new(a.cache_dir);
    cfg.capacity_bytes = a.capacity;
    if let Some(n) = a.shards {
        cfg.shards = n;
    }
    cfg.socket = a.socket.path();
    cfg.mounts = a.mounts;
    for opt in &a.mount_opts {
        // The value is never echoed back: it may be a secret.
        let Some((name, kv)) = opt.split_once(':') else {
            bail!("bad --mount-opt: expected NAME:key=value, e.g. data:region=us-east-1");
        };
        let Some((key, value)) = kv.split_once('=') else {
            bail!("bad --mount-opt for {name:?}: expected NAME:key=value, e.g. data:region=us-east-1");
        };
        let Some(m) = cfg.mounts.iter_mut().find(|m| m.name == name) else {
            bail!("--mount-opt {name}:{key}=…: no --mount named {name:?}");
        };
        m.options.push((key.trim().to_string(), value.to_string()));
    }
    cfg.block_bytes = a.block_size;
    cfg.segment_bytes = a.segment_size;
    cfg.ufs_latency = a.ufs_latency;
    cfg.ufs_bandwidth = a.ufs_bandwidth;
    cfg.ufs_timeout = a.ufs_timeout;
    cfg.metadata_sync = parse_duration(&a.metadata_sync).map_err(anyhow::Error::msg)?;
    let mut engine = Engine::start(cfg)?;
    eprintln!("stoker: serving on {} (Ctrl-C to stop)", engine.socket());
    engine.wait_for_signal();
    eprintln!("stoker: stopping");
    engine.stop();
    Ok(())
}

fn connect(socket: &str) -> Result<Client> {
    Ok(Client::connect(socket)?)
}

pub fn cat(socket: &str, path: &str) -> Result<()> {
    let c = connect(socket)?;
    let attr = c.stat(path)?;
    if attr.kind == Kind::Dir {
        bail!("{path}: is a directory");
    }
    let mut out = std::io::stdout().lock();
    let chunk = c.block_bytes().max(1 << 20);
    let mut off = 0;
    while off < attr.size {
        let data = c.read(path, off, chunk.min(attr.size - off))?;
        if data.is_empty() {
            break;
        }
        if let Err(e) = out.write_all(&data) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e).context("writing to stdout");
        }
        off += data.len() as u64;
    }
    out.flush().ok();
    Ok(())
}

pub fn ls(socket: &str, path: &str, long: bool) -> Result<()> {
    let c = connect(socket)?;
    let attr = c.stat(path)?;
    let entries = if attr.kind == Kind::Dir {
        c.list(path)?
    } else {
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        vec![stoker_proto::control::DirEntry { name, attr }]
    };
    let mut out = std::io::stdout().lock();
    for e in entries {
        let r = if long {
            let kind = if e.attr.kind == Kind::Dir { 'd' } else { '-' };
            writeln!(out, "{kind} {:>14} {}", e.attr.size, e.name)
        } else {
            writeln!(out, "{}", e.name)
        };
        if r.is_err() {
            break;
        }
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", units[i]) }
}

pub fn stat(socket: &str, path: Option<&str>, json: bool) -> Result<()> {
    let c = connect(socket)?;
    if let Some(p) = path {
        let a = c.stat(p)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&a)?);
        } else {
            let kind = if a.kind == Kind::Dir { "directory" } else { "file" };
            println!("{p}: {kind}, {} bytes, version {:?}", a.size, a.version);
        }
        return Ok(());
    }
    let s = c.engine_stats()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let ratio = if s.hits + s.misses > 0 { 100.0 * s.hits as f64 / (s.hits + s.misses) as f64 } else { 0.0 };
    println!("capacity   {}", human(s.capacity_bytes));
    println!("used       {} ({} blocks)", human(s.used_bytes), s.blocks);
    println!("hits       {} ({ratio:.1}%)", s.hits);
    println!("misses     {}", s.misses);
    println!("ufs read   {}", human(s.ufs_bytes_read));
    println!("served     {}", human(s.bytes_served));
    println!("sessions   {}", s.sessions);
    println!("shard   used         blocks     hits       misses");
    for sh in &s.shards {
        println!("{:<7} {:<12} {:<10} {:<10} {}", sh.shard, human(sh.used_bytes), sh.blocks, sh.hits, sh.misses);
    }
    Ok(())
}

/// Walk `prefix` (a file or a directory tree) and return (path, size) of every file.
fn walk(c: &Client, prefix: &str) -> Result<Vec<(String, u64)>> {
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

pub fn load(socket: &str, prefix: &str, parallel: usize) -> Result<()> {
    let c = connect(socket)?;
    let files = walk(&c, prefix)?;
    let total_bytes: u64 = files.iter().map(|f| f.1).sum();
    let next = AtomicUsize::new(0);
    let done_files = AtomicU64::new(0);
    let done_bytes = AtomicU64::new(0);
    let failed = std::sync::Mutex::new(Vec::new());
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = indicatif::ProgressBar::new(total_bytes);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {bytes}/{total_bytes} {msg} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("progress template")
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let t0 = Instant::now();
    let finished = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Progress: a bar on a terminal, a plain line a second otherwise.
        s.spawn(|| {
            let mut last_line = Instant::now();
            while !finished.load(Ordering::Acquire) {
                std::thread::park_timeout(Duration::from_millis(100));
                let (f, b) = (done_files.load(Ordering::Relaxed), done_bytes.load(Ordering::Relaxed));
                if let Some(bar) = &bar {
                    bar.set_position(b);
                    bar.set_message(format!("{f}/{} files", files.len()));
                } else if last_line.elapsed() >= Duration::from_secs(1) {
                    last_line = Instant::now();
                    let rate = b as f64 / t0.elapsed().as_secs_f64() / (1 << 20) as f64;
                    eprintln!("load: {f}/{} files, {}/{}, {rate:.1} MiB/s", files.len(), human(b), human(total_bytes));
                }
            }
        });
        let workers: Vec<_> = (0..parallel.max(1))
            .map(|_| {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((path, size)) = files.get(i) else { break };
                    match c.prefetch(path, *size) {
                        Ok(_) => {
                            done_bytes.fetch_add(*size, Ordering::Relaxed);
                        }
                        Err(e) => failed.lock().unwrap().push(format!("{e}")),
                    }
                    done_files.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        finished.store(true, Ordering::Release);
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let failed = failed.into_inner().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let loaded = files.len() - failed.len();
    eprintln!(
        "load: {loaded}/{} files, {} in {secs:.1}s ({:.1} MiB/s), {} failed",
        files.len(),
        human(done_bytes.load(Ordering::Relaxed)),
        done_bytes.load(Ordering::Relaxed) as f64 / secs.max(1e-9) / (1 << 20) as f64,
        failed.len()
    );
    if !failed.is_empty() {
        for f in failed.iter().take(10) {
            eprintln!("load: failed: {f}");
        }
        bail!("{} of {} files failed to load", failed.len(), files.len());
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Make a synthetic dataset (deterministic for a seed).
    Gen {
        dir: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        files: usize,
        #[arg(long, value_parser = size_arg, default_value = "110K")]
        mean_size: u64,
        #[arg(long, default_value_t = 100)]
        dirs: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Read every file once in a shuffled order with T threads, per target.
    Epoch(EpochArgs),
}

#[derive(Args, Debug)]
pub struct EpochArgs {
    /// The dataset as a local directory (the `local` target, and what --verify compares with).
    #[arg(long)]
    pub source: PathBuf,
    /// Namespace prefix of the same dataset in stoker, e.g. /data (the `stoker` target).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Targets to run, in order: local, stoker, direct:LATENCY (the source
    /// read with injected latency per file, like remote storage), or a
    /// directory path (e.g. a FUSE mount).
    #[arg(long, value_delimiter = ',', default_value = "local")]
    pub targets: Vec<String>,
    #[arg(long, default_value_t = 32)]
    pub threads: usize,
    /// Passes per target.
    #[arg(long, default_value_t = 1)]
    pub passes: usize,
    /// Drop the page cache before every pass (needs root).
    #[arg(long)]
    pub cold: bool,
    /// Compare every byte read with the source.
    #[arg(long)]
    pub verify: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

pub fn bench(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Gen { dir, files, mean_size, dirs, seed } => {
            let sum = stoker_bench::generate(&dir, &stoker_bench::GenSpec { files, mean_size, dirs, seed })?;
            eprintln!("bench gen: {} files, {} in {}", sum.files, human(sum.bytes), dir.display());
            Ok(())
        }
        BenchCmd::Epoch(a) => epoch(a),
    }
}

fn epoch(a: EpochArgs) -> Result<()> {
    let files = stoker_bench::list_files(&a.source).with_context(|| format!("listing {}", a.source.display()))?;
    if files.is_empty() {
        bail!("{}: no files", a.source.display());
    }
    let mut reports = Vec::new();
    let mut errors = 0;
    for t in &a.targets {
        let target: Box<dyn stoker_bench::Target> = match t.as_str() {
            "local" => Box::new(stoker_bench::LocalTarget { name: "local".into(), root: a.source.clone() }),
            "stoker" => {
                let Some(prefix) = &a.prefix else { bail!("target stoker needs --prefix /NAME") };
                Box::new(stoker_bench::StokerTarget {
                    name: "stoker (client-lib)".into(),
                    client: Client::connect(&a.socket.path())?,
                    prefix: prefix.trim_end_matches('/').to_string(),
                })
            }
            direct if direct.starts_with("direct:") => {
                let latency = stoker_engine::parse_duration(&direct["direct:".len()..])
                    .map_err(anyhow::Error::msg)?
                    .unwrap_or_default();
                Box::new(stoker_bench::RemoteTarget { root: a.source.clone(), latency })
            }
            dir if dir.starts_with('/') => Box::new(stoker_bench::LocalTarget { name: dir.into(), root: dir.into() }),
            other => bail!("unknown target {other:?}: use local, stoker, direct:20ms or a directory path"),
        };
        for p in 0..a.passes {
            if a.cold {
                stoker_bench::drop_page_cache().context("dropping the page cache (needs root)")?;
            }
            let verify = a.verify.then_some(a.source.as_path());
            let r = stoker_bench::epoch(target.as_ref(), &format!("{}", p + 1), &files, a.threads, a.seed + p as u64, verify);
            errors += r.errors;
            reports.push(r);
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", stoker_bench::markdown_table(&reports));
    }
    if errors > 0 {
        bail!("{errors} read errors or mismatches");
    }
    Ok(())
}
