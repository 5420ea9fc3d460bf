//! `stoker mount` and `stoker umount`.
//!
//! `stoker mount URI MOUNTPOINT` starts an engine inside this process (cache
//! in `--cache-dir`, control socket private unless `--socket` names one) and
//! mounts its namespace `/NAME`; `stoker mount --socket PATH /NAME MOUNTPOINT`
//! attaches to a running engine instead. Foreground by default: the command
//! returns when the mount is unmounted (SIGINT/SIGTERM unmount cleanly, then
//! the embedded engine is stopped and flushed). `--daemon` returns as soon as
//! the mount answers, leaving a detached process serving it.

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stoker_engine::config::EngineConfig;
use stoker_engine::{parse_duration, parse_size, Engine, MountSpec};
use stoker_fuse::session::{find_mount, set_bdi_readahead, unmount};
use stoker_fuse::{FsConfig, MountOptions, StokerFs};

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)?.ok_or_else(|| format!("bad duration {s:?}: `never` is not allowed here"))
}

/// `never` means "as long as the kernel allows" (immutable data).
fn ttl_arg(s: &str) -> Result<Duration, String> {
    Ok(parse_duration(s)?.unwrap_or(Duration::from_secs(u32::MAX as u64)))
}

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// What to mount: a URI (file:///abs/dir, ...) served by an embedded
    /// engine, or /NAME of the running engine named by --socket.
    pub source: String,
    /// Where to mount (an existing directory).
    pub mountpoint: PathBuf,
    /// Engine control socket. With /NAME: the engine to attach to [env:
    /// STOKER_SOCKET; default /tmp/stoker.sock]. With a URI: where the embedded
    /// engine listens, so other clients can share it [default: private].
    #[arg(long)]
    pub socket: Option<String>,
    /// With a URI: the namespace name the source is served under.
    #[arg(long, default_value = "data")]
    pub name: String,
    /// With a URI: directory for cached segments [default: $STOKER_CACHE_DIR,
    /// else /var/cache/stoker as root, else ~/.cache/stoker].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// With a URI: an option of the mount, KEY=VALUE (repeatable), as for
    /// `stoker serve --mount-opt`: under-storage options (endpoint, region,
    /// credentials, ...; values never printed) and stoker's own (sync,
    /// block_size, readahead, write=async|through|cache-only for a writable
    /// mount), e.g. --mount-opt endpoint=http://10.0.0.5:9000.
    #[arg(long = "mount-opt", value_name = "KEY=VALUE")]
    pub mount_opts: Vec<String>,
    /// With a URI: most bytes the cache may use on disk.
    #[arg(long, value_parser = size_arg, default_value = "10G")]
    pub capacity: u64,
    /// With a URI: engine shards [default: number of cores].
    #[arg(long)]
    pub shards: Option<usize>,
    /// With a URI: cache block size for large files.
    #[arg(long, value_parser = size_arg, default_value = "4M")]
    pub block_size: u64,
    /// With a URI: blocks fetched ahead of a sequential reader of a large
    /// file (0 = off).
    #[arg(long, default_value_t = 4)]
    pub readahead_blocks: u64,
    /// With a URI: inject this latency into every under-storage request (demos, tests).
    #[arg(long, value_parser = duration_arg, default_value = "0ms")]
    pub ufs_latency: Duration,
    /// With a URI: timeout of one under-storage call.
    #[arg(long, value_parser = duration_arg, default_value = "30s")]
    pub ufs_timeout: Duration,
    /// How long attributes, entries and listings are trusted by the kernel and
    /// the mount (and, with a URI, the engine). Training data is immutable, so
    /// the default is long; `never` = until unmount.
    #[arg(long, value_parser = ttl_arg, default_value = "1h")]
    pub metadata_ttl: Duration,
    /// Answer a lookup with one stat of the file instead of fetching (once)
    /// the listing of its directory. For very large directories read sparsely.
    #[arg(long)]
    pub no_list_on_lookup: bool,
    /// Longest wait for one answer from the engine before the read fails with EIO.
    #[arg(long, value_parser = duration_arg, default_value = "60s")]
    pub request_timeout: Duration,
    /// A TOML config file (e.g. written by `stoker tune`): its `[mount]`
    /// section sets threads, readahead and max_read; flags given here override
    /// it. Other sections are ignored.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Threads serving FUSE requests [default: 16].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Largest single read the kernel sends (capped by the kernel, usually at 1 MiB) [default: 1M].
    #[arg(long, value_parser = size_arg)]
    pub max_read: Option<u64>,
    /// Kernel readahead per open file (needs root to raise above 128 KiB) [default: 8M].
    #[arg(long, value_parser = size_arg)]
    pub readahead: Option<u64>,
    /// Have the kernel send a FUSE open and release for every file opened
    /// (the default skips both when the kernel supports it; docs/SEMANTICS.md).
    #[arg(long)]
    pub fuse_open: bool,
    /// Serve FUSE requests over io_uring (Linux 6.14+, with
    /// /sys/module/fuse/parameters/enable_uring set to Y): per-CPU queues, so
    /// a request and its reply stay on the reader's CPU. Read-only mounts only.
    #[arg(long)]
    pub fuse_uring: bool,
    /// Let other users read the mount (FUSE allow_other).
    #[arg(long)]
    pub allow_other: bool,
    /// Do not ask fusermount3 to unmount if this process dies.
    #[arg(long)]
    pub no_auto_unmount: bool,
    /// Detach: return once the mount answers, keep serving in the background.
    #[arg(long)]
    pub daemon: bool,
    /// With --daemon: append logs here instead of discarding them.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464:
    /// FUSE op latencies, and with a URI the embedded engine's metrics
    /// (a bare port is on 127.0.0.1; port 0 picks a free port; docs/METRICS.md).
    #[arg(long, value_name = "ADDR", value_parser = crate::commands::metrics_addr_arg)]
    pub metrics: Option<std::net::SocketAddr>,
}

#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// The mountpoint of a stoker mount.
    pub mountpoint: PathBuf,
    /// Detach now even if busy (files open, a shell's cwd inside); the mount
    /// goes away when the last user leaves.
    #[arg(long, short = 'l')]
    pub lazy: bool,
}

fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STOKER_CACHE_DIR") {
        return d.into();
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return "/var/cache/stoker".into();
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/stoker"),
        None => std::env::temp_dir().join("stoker-cache"),
    }
}

/// What the command will serve, checked before anything starts.
enum Source {
    Uri { uri: String, root: String },
    Namespace { socket: String, root: String },
}

fn plan(a: &MountArgs) -> Result<Source> {
    if a.source.contains("://") {
        if a.name.is_empty() || a.name.contains('/') || a.name.starts_with('.') {
            bail!("bad --name {:?}: a plain name like 'train'", a.name);
        }
        Ok(Source::Uri { uri: a.source.clone(), root: format!("/{}", a.name) })
    } else if a.source.starts_with('/') {
        if !a.mount_opts.is_empty() {
            bail!("--mount-opt applies to a URI source; the engine behind --socket has its mounts' options already");
        }
        Ok(Source::Namespace { socket: stoker_proto::socket_from_env(a.socket.as_deref()), root: a.source.clone() })
    } else {
        bail!("bad source {:?}: expected a URI such as file:///data/train, or /NAME with --socket", a.source)
    }
}

fn check_mountpoint(mp: &Path) -> Result<()> {
    if let Some(m) = find_mount(mp).context("reading /proc/self/mountinfo")? {
        if m.fstype.starts_with("fuse") {
            bail!(
                "{} is already a {} mount ({}); run `stoker umount {}` first (add --lazy if it is busy)",
                mp.display(),
                m.fstype,
                m.source,
                mp.display()
            );
        }
    }
    let md = std::fs::metadata(mp).with_context(|| format!("mountpoint {}", mp.display()))?;
    if !md.is_dir() {
        bail!("mountpoint {} is not a directory", mp.display());
    }
    Ok(())
}

/// The FUSE knobs: flags, then `--config`'s `[mount]`, then the defaults.
struct FuseKnobs {
    threads: usize,
    max_read: u64,
    readahead: u64,
}

fn fuse_knobs(a: &MountArgs) -> Result<FuseKnobs> {
    let m = match &a.config {
        Some(p) => stoker_tuning::ConfigFile::load(p)?.mount,
        None => Default::default(),
    };
    let size = |v: &Option<stoker_tuning::config::Size>, key| v.as_ref().map(|s| s.bytes_in("mount", key)).transpose();
    Ok(FuseKnobs {
        threads: a.threads.or(m.threads).unwrap_or(16),
        max_read: a.max_read.or(size(&m.max_read, "max_read")?).unwrap_or(1 << 20),
        readahead: a.readahead.or(size(&m.readahead, "readahead")?).unwrap_or(8 << 20),
    })
}

pub fn run_mount(a: MountArgs) -> Result<()> {
    // A bad config file fails here, before anything is mounted.
    fuse_knobs(&a)?;
    let source = plan(&a)?;
    check_mountpoint(&a.mountpoint)?;
    let ready = if a.daemon { Some(daemonize()?) } else { None };
    match serve_mount(&a, source, ready.as_ref()) {
        Ok(()) => Ok(()),
        Err(e) => {
            if let Some(r) = &ready {
                r.failed(&format!("{e:#}"));
            }
            Err(e)
        }
    }
}

fn serve_mount(a: &MountArgs, source: Source, ready: Option<&Ready>) -> Result<()> {
    // Every thread started from here on inherits this mask, so SIGINT/SIGTERM
    // reach only the waiter thread below, which unmounts cleanly.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking signals")?;

    let (mut engine, socket, root) = match source {
        Source::Namespace { socket, root } => (None, socket, root),
        Source::Uri { uri, root } => {
            let cache_dir = a.cache_dir.clone().unwrap_or_else(default_cache_dir);
            let socket = a.socket.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("stoker-mount-{}.sock", std::process::id())).display().to_string()
            });
            let mut cfg = EngineConfig::new(cache_dir);
            cfg.capacity_bytes = a.capacity;
            if let Some(n) = a.shards {
                cfg.shards = n;
            }
            cfg.socket = socket.clone();
            // NAME:KEY=VALUE is accepted too, for symmetry with `serve`.
            let prefix = format!("{}:", a.name);
            let opts: Vec<&str> = a.mount_opts.iter().map(|o| o.strip_prefix(&prefix).unwrap_or(o)).collect();
            let options = stoker_engine::ufs::opendal_ufs::parse_options(&opts)
                .map_err(|e| anyhow!("--mount-opt: {e}"))?;
            cfg.mounts = vec![MountSpec { name: a.name.clone(), uri, options, ..Default::default() }];
            cfg.block_bytes = a.block_size;
            cfg.readahead_blocks = a.readahead_blocks;
            cfg.ufs_latency = a.ufs_latency;
            cfg.ufs_timeout = a.ufs_timeout;
            cfg.metadata_sync = Some(a.metadata_ttl);
            cfg.metrics = a.metrics;
            let engine = Engine::start(cfg).context("starting the embedded engine")?;
            (Some(engine), socket, root)
        }
    };

    // With an embedded engine its endpoint also exports the FUSE ops;
    // attached to another engine, this process serves only those.
    let mut own_endpoint = None;
    if let Some(addr) = a.metrics {
        stoker_fuse::fuse::set_op_hook(stoker_engine::metrics::record_fuse_op);
        let bound = match engine.as_ref().and_then(|e| e.metrics_addr()) {
            Some(bound) => bound,
            None => {
                let ep = stoker_engine::metrics::start_process_endpoint(addr)
                    .with_context(|| format!("binding the metrics endpoint {addr}"))?;
                let bound = ep.addr();
                own_endpoint = Some(ep);
                bound
            }
        };
        eprintln!("stoker: metrics on http://{bound}/metrics");
    }

    let knobs = fuse_knobs(a)?;
    if a.config.is_some() {
        tracing::info!("FUSE threads {} max_read {} readahead {}", knobs.threads, knobs.max_read, knobs.readahead);
    }
    let opts = stoker_client::Options { timeout: a.request_timeout, ..Default::default() };
    let client = stoker_client::Client::connect_with(&socket, opts)?;
    // Writable exactly when the engine mount under `root` (or, for `/`,
    // any mount) has a write mode; the engine refuses the rest with EROFS.
    let writable = {
        let mount = root.trim_start_matches('/').split('/').next().unwrap_or("");
        client.engine_stats()?.mounts.iter().any(|m| m.write.is_some() && (mount.is_empty() || m.name == mount))
    };
    let mut cfg = FsConfig {
        metadata_ttl: a.metadata_ttl,
        list_on_lookup: !a.no_list_on_lookup,
        writable,
        shared: a.allow_other,
        ..FsConfig::default()
    };
    cfg.owner.blksize = knobs.max_read.clamp(4096, 16 << 20) as u32;
    let fs = Arc::new(StokerFs::new(client, &root, cfg).with_context(|| format!("cannot mount {root}"))?);
    let mopts = MountOptions {
        threads: knobs.threads,
        max_read_bytes: knobs.max_read.clamp(4096, u32::MAX as u64) as u32,
        readahead_bytes: knobs.readahead.clamp(4096, u32::MAX as u64) as u32,
        auto_unmount: !a.no_auto_unmount && stoker_fuse::session::fusermount_path().is_some(),
        allow_other: a.allow_other,
        fsname: format!("stoker:{root}"),
        no_open: !a.fuse_open,
        writable,
        uring: a.fuse_uring,
        ..MountOptions::default()
    };
    if a.fuse_uring {
        if writable {
            bail!("--fuse-uring serves read-only mounts only ({root} has a write mode)");
        }
        stoker_fuse::uring::available().map_err(|e| anyhow!("--fuse-uring: {e}"))?;
    }
    if !a.no_auto_unmount && !mopts.auto_unmount {
        tracing::warn!("fusermount3 not found (package fuse3): a crashed mount will need `stoker umount`");
    }
    let mut session = stoker_fuse::mount(fs.clone(), &a.mountpoint, &mopts)
        .with_context(|| format!("mounting at {}", a.mountpoint.display()))?;
    if knobs.readahead > 128 << 10 {
        if let Err(e) = set_bdi_readahead(&a.mountpoint, mopts.readahead_bytes) {
            tracing::warn!("could not raise kernel readahead to {} bytes: {e}", mopts.readahead_bytes);
        }
    }

    let mut unmounter = session.unmount_callable();
    let mountpoint = a.mountpoint.clone();
    std::thread::Builder::new().name("stoker-signals".into()).spawn(move || {
        if let Ok(sig) = signals.wait() {
            tracing::info!("{sig:?}: unmounting {}", mountpoint.display());
            // Release fusermount's auto-unmount watch, then unmount ourselves:
            // fusermount3 (3.14) may decline to, and the caller of SIGTERM
            // expects the mountpoint gone when this process exits.
            let _ = unmounter.unmount();
            match unmount(&mountpoint, false) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {} // already unmounted
                Err(e) => {
                    // Busy (a process has its cwd inside): detach now, the
                    // kernel finishes when the last user leaves.
                    tracing::warn!("unmount of {} failed ({e}); detaching lazily", mountpoint.display());
                    if let Err(e) = unmount(&mountpoint, true) {
                        tracing::error!("lazy unmount of {} failed: {e}", mountpoint.display());
                    }
                }
            }
        }
    })?;

    match ready {
        Some(r) => r.succeeded(a.log_file.as_deref()),
        None => eprintln!("stoker: {root} mounted at {} (Ctrl-C or `stoker umount` to stop)", a.mountpoint.display()),
    }
    let served = session.run();
    let c = &fs.counters;
    let ld = std::sync::atomic::Ordering::Relaxed;
    tracing::info!(
        reads = c.reads.load(ld),
        bytes_read = c.bytes_read.load(ld),
        lookups = c.lookups.load(ld),
        opens = c.opens.load(ld),
        errors = c.errors.load(ld),
        refused_writes = c.refused_writes.load(ld),
        "unmounted {}",
        a.mountpoint.display()
    );
    drop(fs);
    drop(own_endpoint);
    if let Some(e) = engine.as_mut() {
        e.stop();
    }
    served.context("FUSE session")?;
    Ok(())
}

/// The daemon child's line back to the waiting parent.
struct Ready {
    tx: std::fs::File,
}

impl Ready {
    fn succeeded(&self, log_file: Option<&Path>) {
        let _ = (&self.tx).write_all(b"0");
        // Detach from the terminal's stdio now that the caller has its answer.
        let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null");
        let log = log_file.and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
        if let Ok(null) = null {
            let err = log.as_ref().map(|f| f.as_raw_fd()).unwrap_or(null.as_raw_fd());
            // SAFETY: dup2 onto the standard descriptors from files we hold open.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(null.as_raw_fd(), 1);
                libc::dup2(err, 2);
            }
        }
    }

    fn failed(&self, msg: &str) {
        let _ = (&self.tx).write_all(format!("1{msg}").as_bytes());
    }
}

/// Fork; the parent waits for the child's verdict and exits with it. Must run
/// before any thread is started.
fn daemonize() -> Result<Ready> {
    // CLOEXEC: fusermount3 and other children must not hold the write end,
    // or the parent would never see the pipe close.
    let (rx, tx): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // SAFETY: no other thread exists yet (nothing has been started), so the
    // child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(tx);
            // The child writes "0" once mounted (and keeps serving, pipe open),
            // or "1<message>" and exits.
            let mut rx = std::fs::File::from(rx);
            let mut msg = vec![0u8; 1];
            if rx.read_exact(&mut msg).is_err() {
                msg.clear();
            } else if msg[0] != b'0' {
                let _ = rx.read_to_end(&mut msg);
            }
            match msg.split_first() {
                Some((b'0', _)) => std::process::exit(0),
                Some((_, m)) => bail!("{}", String::from_utf8_lossy(m)),
                None => bail!("the mount process exited before mounting"),
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(rx);
            let _ = nix::unistd::setsid();
            Ok(Ready { tx: std::fs::File::from(tx) })
        }
    }
}

pub fn run_umount(a: UmountArgs) -> Result<()> {
    let mp = &a.mountpoint;
    let m = find_mount(mp)
        .context("reading /proc/self/mountinfo")?
        .ok_or_else(|| anyhow!("{} is not mounted", mp.display()))?;
    if !(m.fstype == "fuse.stoker" || m.source.starts_with("stoker")) {
        bail!("{} is a {} mount of {}, not a stoker mount", mp.display(), m.fstype, m.source);
    }
    match unmount(mp, a.lazy) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => bail!(
            "{} is busy (a process has a file open or its working directory inside); close them, or use --lazy",
            mp.display()
        ),
        Err(e) => Err(anyhow!("unmounting {}: {e}", mp.display())),
    }
}
