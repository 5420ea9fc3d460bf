//! The sweep: coordinate descent over the knobs, one at a time, each trial a
//! `stoker serve` child with a trial config and a fresh cache dir, scored by
//! the files/s of a warm `epoch` pass through the shared-memory client.
//!
//! Bounded: a trial starts only if the time spent plus the mean trial time
//! fits the budget (the baseline always runs, so a config is always written).
//! Resumable: every finished trial is saved in `work_dir/tune-state.json`; a
//! rerun with the same dataset reuses them instead of measuring again.
//! Failure-tolerant: a trial that fails (the engine exits, the client loses
//! its connection, a read errors, a panic) is recorded in the state file and
//! in the config's comments with its error, and the sweep goes on; a failed
//! trial is measured again on a resume, never reused.

use crate::config::ConfigFile;
use crate::fmt_size;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stoker_bench::{StokerTarget, Workload};

/// A candidate must beat the current value by this factor to replace it:
/// short runs on a shared box are noisy, and ties keep the default.
pub const NOISE_MARGIN: f64 = 1.03;
/// Longest wait for a trial engine to answer on its socket.
const START_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct TuneSpec {
    /// The `stoker` binary: trials run `stoker serve --config`.
    pub exe: PathBuf,
    /// Dataset, trial cache dirs, trial configs and the state file.
    pub work_dir: PathBuf,
    /// Where the tuned config is written.
    pub out: PathBuf,
    pub budget: Duration,
    pub files: usize,
    pub mean_size: u64,
    /// Large files added to the dataset (block size matters only for them).
    pub large_files: usize,
    pub large_bytes: u64,
    pub seed: u64,
    /// Warm passes per trial; the best one scores (load from other work on
    /// the box only ever slows a pass down).
    pub passes: usize,
    /// Cache capacity of each trial engine.
    pub capacity_bytes: u64,
    /// Ignore a saved state and measure everything again.
    pub fresh: bool,
    /// Sweep only these knobs (empty: all of them, see [`KNOB_NAMES`]).
    pub knobs: Vec<String>,
}

/// The knobs `tune` can sweep, in the order it sweeps them. The FUSE knobs
/// come last: they are swept on the best engine settings found, through a
/// `stoker mount --daemon` of one trial engine.
pub const KNOB_NAMES: [&str; 7] = [
    "shards",
    "io_depth",
    "readers",
    "block_size",
    "segment_size",
    "fuse_threads",
    "readahead",
];

fn default_io_depth() -> usize {
    128
}

/// `stoker mount` settings of a FUSE trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuseSettings {
    /// `stoker mount --threads`.
    pub threads: usize,
    /// `stoker mount --readahead`, bytes.
    pub readahead_bytes: u64,
}

impl FuseSettings {
    /// What `stoker mount` uses without flags.
    pub fn defaults() -> FuseSettings {
        FuseSettings {
            threads: 16,
            readahead_bytes: 8 << 20,
        }
    }
}

/// One point in the space: what a trial runs with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub shards: usize,
    pub block_bytes: u64,
    pub segment_bytes: u64,
    /// Reads in flight from the client: the queue depth the engine and its
    /// io_uring rings see (the engine has no ring-depth knob of its own).
    pub readers: usize,
    /// io_uring submission queue depth of each shard (`[serve] io_depth`).
    #[serde(default = "default_io_depth")]
    pub io_depth: usize,
    /// Set for a FUSE trial: the epoch reads a `stoker mount` of the engine
    /// (a directory target) instead of the shared-memory client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse: Option<FuseSettings>,
}

impl Settings {
    /// What `stoker serve` and `stoker bench epoch` use without flags.
    pub fn defaults() -> Settings {
        Settings {
            shards: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            block_bytes: 4 << 20,
            segment_bytes: 256 << 20,
            readers: 32,
            io_depth: default_io_depth(),
            fuse: None,
        }
    }

    /// The engine part alone (what the trial engine is started with).
    fn engine(&self) -> Settings {
        Settings {
            fuse: None,
            ..self.clone()
        }
    }

    fn describe(&self) -> String {
        let mut d = format!(
            "shards={} io_depth={} readers={} block={} segment={}",
            self.shards,
            self.io_depth,
            self.readers,
            fmt_size(self.block_bytes),
            fmt_size(self.segment_bytes)
        );
        if let Some(f) = &self.fuse {
            d += &format!(
                " fuse: threads={} readahead={}",
                f.threads,
                fmt_size(f.readahead_bytes)
            );
        }
        d
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trial {
    pub settings: Settings,
    pub files_per_s: f64,
    pub mib_per_s: f64,
    pub p99_us: u64,
    /// Wall time of the whole trial (start, fill, passes, stop).
    pub secs: f64,
    /// Why the trial failed (then the numbers above are 0); None when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Trial {
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }
}

/// The first line of an error, short enough for a config comment.
fn short(e: &str) -> String {
    let line = e
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > 160 {
        format!("{}...", line.chars().take(160).collect::<String>())
    } else {
        line.to_string()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    fingerprint: String,
    trials: Vec<Trial>,
}

struct Knob {
    name: &'static str,
    what: &'static str,
    candidates: Vec<u64>,
    get: fn(&Settings) -> u64,
    set: fn(&mut Settings, u64),
    size: bool,
    /// Swept through a FUSE mount; written to `[mount]` as `key`.
    fuse: bool,
    /// The config key it is written as.
    key: &'static str,
}

fn knobs(cores: usize) -> Vec<Knob> {
    let mut shards: Vec<u64> = vec![1, 2, 4, 8]
        .into_iter()
        .filter(|&s| s <= 2 * cores as u64)
        .collect();
    if !shards.contains(&(cores as u64)) {
        shards.push(cores as u64);
    }
    shards.sort();
    vec![
        Knob {
            name: "shards",
            what: "glommio executors, one thread each",
            candidates: shards,
            get: |s| s.shards as u64,
            set: |s, v| s.shards = v as usize,
            size: false,
            fuse: false,
            key: "",
        },
        Knob {
            name: "io_depth",
            what: "io_uring submission queue depth of each shard's executor",
            candidates: vec![32, 64, 128, 256],
            get: |s| s.io_depth as u64,
            set: |s, v| s.io_depth = v as usize,
            size: false,
            fuse: false,
            key: "",
        },
        Knob {
            name: "readers",
            what:
                "reads in flight from the client = the queue depth the engine's io_uring rings see",
            candidates: vec![4, 8, 16, 32, 64],
            get: |s| s.readers as u64,
            set: |s, v| s.readers = v as usize,
            size: false,
            fuse: false,
            key: "",
        },
        Knob {
            name: "block_size",
            what: "cache block of a large file (a small file is one block)",
            candidates: vec![1 << 20, 2 << 20, 4 << 20],
            get: |s| s.block_bytes,
            set: |s, v| s.block_bytes = v,
            size: true,
            fuse: false,
            key: "",
        },
        Knob {
            name: "segment_size",
            what: "segment file size (clamped so a shard holds at least 4)",
            candidates: vec![32 << 20, 64 << 20, 256 << 20],
            get: |s| s.segment_bytes,
            set: |s, v| s.segment_bytes = v,
            size: true,
            fuse: false,
            key: "",
        },
        Knob {
            name: "fuse_threads",
            what: "threads serving FUSE requests (`stoker mount --threads`)",
            candidates: vec![4, 8, 16, 32],
            get: |s| s.fuse.unwrap_or(FuseSettings::defaults()).threads as u64,
            set: |s, v| s.fuse.get_or_insert(FuseSettings::defaults()).threads = v as usize,
            size: false,
            fuse: true,
            key: "threads",
        },
        Knob {
            name: "readahead",
            what: "kernel readahead per open file on the mount (`stoker mount --readahead`)",
            candidates: vec![1 << 20, 4 << 20, 8 << 20],
            get: |s| s.fuse.unwrap_or(FuseSettings::defaults()).readahead_bytes,
            set: |s, v| {
                s.fuse
                    .get_or_insert(FuseSettings::defaults())
                    .readahead_bytes = v
            },
            size: true,
            fuse: true,
            key: "readahead",
        },
    ]
}

/// What one knob's sweep found.
#[derive(Clone, Debug, Serialize)]
pub struct KnobResult {
    pub name: String,
    pub chosen: u64,
    /// (value, files/s) of every candidate measured, in order.
    pub tried: Vec<(u64, f64)>,
    /// (value, error) of every candidate whose trial failed.
    pub failed: Vec<(u64, String)>,
    /// Why candidates were left out, if any were.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub default_trial: Trial,
    pub best_trial: Trial,
    pub knobs: Vec<KnobResult>,
    pub trials_run: usize,
    pub trials_reused: usize,
    /// Trials that failed in this run (recorded and skipped).
    pub trials_failed: usize,
    pub toml: String,
}

/// Progress: a bar on a terminal, one plain line per trial otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "tune [{bar:30}] {pos}/{len} trials {elapsed} {msg}",
                )
                .expect("progress template")
                .progress_chars("=> "),
            );
            b
        });
        Progress { bar }
    }
    fn line(&self, msg: String) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
    fn step(&self, msg: String) {
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(msg);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A `stoker serve` child, stopped with SIGTERM (killed if that fails).
struct ServeChild {
    child: Child,
}

impl ServeChild {
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn trial_config(s: &Settings) -> String {
    format!(
        "[serve]\nshards = {}\nio_depth = {}\nblock_size = \"{}\"\nsegment_size = \"{}\"\n[client]\nreaders = {}\n",
        s.shards,
        s.io_depth,
        fmt_size(s.block_bytes),
        fmt_size(s.segment_bytes),
        s.readers
    )
}

/// Run one trial; a failure (an error or a panic) comes back as a Trial with
/// `error` set, and the trial engine's log is kept as `trial-failed-N.log`.
fn run_trial_recorded(
    spec: &TuneSpec,
    data: &Path,
    files: &[(String, u64)],
    s: &Settings,
    n: usize,
    fuse_engine: &mut Option<FuseEngine>,
) -> Trial {
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match s.fuse {
        None => run_trial(spec, data, files, s),
        Some(f) => run_fuse_trial(spec, data, files, s, f, fuse_engine),
    }));
    let err = match r {
        Ok(Ok(t)) => return t,
        Ok(Err(e)) => format!("{e:#}"),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            format!("panic: {}", msg.unwrap_or_default())
        }
    };
    let kept = spec.work_dir.join(format!("trial-failed-{n}.log"));
    let log = if s.fuse.is_some() {
        // The engine may be the culprit too: it is restarted if it died.
        std::fs::copy(spec.work_dir.join("trial-mount.log"), &kept)
            .map(|_| format!(" (mount log: {})", kept.display()))
            .unwrap_or_default()
    } else {
        let _ = std::fs::remove_dir_all(spec.work_dir.join("trial-cache"));
        std::fs::copy(spec.work_dir.join("trial-serve.log"), &kept)
            .map(|_| format!(" (engine log: {})", kept.display()))
            .unwrap_or_default()
    };
    Trial {
        settings: s.clone(),
        files_per_s: 0.0,
        mib_per_s: 0.0,
        p99_us: 0,
        secs: t0.elapsed().as_secs_f64(),
        error: Some(format!("{}{log}", short(&err))),
    }
}

/// Start a trial engine with `s` (its engine part) on `WORK/{tag}.sock` with
/// a fresh `WORK/{tag}-cache`; returns once it answers.
fn start_engine(
    spec: &TuneSpec,
    data: &Path,
    s: &Settings,
    tag: &str,
) -> Result<(ServeChild, String, stoker_client::Client)> {
    let t0 = Instant::now();
    let cache = spec.work_dir.join(format!("{tag}-cache"));
    let _ = std::fs::remove_dir_all(&cache);
    let conf = spec.work_dir.join(format!("{tag}.toml"));
    std::fs::write(&conf, trial_config(s))?;
    // The trial config must be one the operator's `serve --config` accepts.
    ConfigFile::load(&conf)?;
    let socket = spec
        .work_dir
        .join(format!("{tag}.sock"))
        .display()
        .to_string();
    let log = std::fs::File::create(spec.work_dir.join("trial-serve.log"))?;
    let child = Command::new(&spec.exe)
        .arg("serve")
        .arg("--config")
        .arg(&conf)
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--mount")
        .arg(format!("data=file://{}", data.display()))
        .args([
            "--socket",
            &socket,
            "--capacity",
            &spec.capacity_bytes.to_string(),
            "--metadata-sync",
            "never",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} serve", spec.exe.display()))?;
    let mut child = ServeChild { child };
    let client = loop {
        if let Ok(c) = stoker_client::Client::connect(&socket) {
            break c;
        }
        if let Some(status) = child.child.try_wait()? {
            let log =
                std::fs::read_to_string(spec.work_dir.join("trial-serve.log")).unwrap_or_default();
            bail!("trial engine exited ({status}): {}", log.trim());
        }
        if t0.elapsed() > START_LIMIT {
            bail!("trial engine did not answer on {socket} within {START_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((child, socket, client))
}

/// Fill (the cold pass), then the best of `spec.passes` warm passes.
fn score(
    spec: &TuneSpec,
    target: &dyn stoker_bench::Target,
    data: &Path,
    files: &[(String, u64)],
    readers: usize,
) -> Result<stoker_bench::Report> {
    let fill = stoker_bench::run(
        target,
        &Workload::Epoch,
        "fill",
        files,
        readers,
        spec.seed,
        None,
    );
    if fill.errors > 0 {
        bail!("{} read errors while filling the trial cache", fill.errors);
    }
    let mut best: Option<stoker_bench::Report> = None;
    for p in 0..spec.passes.max(1) {
        let r = stoker_bench::run(
            target,
            &Workload::Epoch,
            "warm",
            files,
            readers,
            spec.seed + 1 + p as u64,
            Some(data),
        );
        if r.errors > 0 {
            bail!("{} read errors or mismatches in a warm pass", r.errors);
        }
        if best.as_ref().is_none_or(|b| r.files_per_s > b.files_per_s) {
            best = Some(r);
        }
    }
    Ok(best.expect("at least one pass"))
}

fn run_trial(spec: &TuneSpec, data: &Path, files: &[(String, u64)], s: &Settings) -> Result<Trial> {
    let t0 = Instant::now();
    let cache = spec.work_dir.join("trial-cache");
    let (child, _socket, client) = start_engine(spec, data, s, "trial")?;
    let target = StokerTarget {
        name: "stoker".into(),
        client,
        prefix: "/data".into(),
    };
    let best = score(spec, &target, data, files, s.readers)?;
    drop(target);
    child.stop();
    let _ = std::fs::remove_dir_all(&cache);
    Ok(Trial {
        settings: s.clone(),
        files_per_s: best.files_per_s,
        mib_per_s: best.mib_per_s,
        p99_us: best.p99_us,
        secs: t0.elapsed().as_secs_f64(),
        error: None,
    })
}

/// The one trial engine every FUSE trial mounts (started with the best
/// engine settings; restarted if those change or it died).
struct FuseEngine {
    settings: Settings,
    child: ServeChild,
    socket: String,
}

impl FuseEngine {
    fn stop(self) {
        self.child.stop();
    }
}

/// A trial mount: unmounted on drop (`stoker umount`, then `--lazy`).
struct TrialMount<'a> {
    exe: &'a Path,
    mp: PathBuf,
}

impl TrialMount<'_> {
    fn umount(&self) -> Result<()> {
        let o = Command::new(self.exe)
            .arg("umount")
            .arg(&self.mp)
            .stdin(Stdio::null())
            .output()?;
        if !o.status.success() {
            bail!(
                "stoker umount {}: {}",
                self.mp.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for TrialMount<'_> {
    fn drop(&mut self) {
        if is_mounted(&self.mp) && self.umount().is_err() {
            let _ = Command::new(self.exe)
                .args(["umount", "--lazy"])
                .arg(&self.mp)
                .stdin(Stdio::null())
                .output();
        }
    }
}

fn is_mounted(mp: &Path) -> bool {
    let Ok(m) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let mp = mp.display().to_string();
    m.lines()
        .any(|l| l.split_whitespace().nth(1) == Some(mp.as_str()))
}

/// One FUSE trial: `stoker mount --socket S /data MP --daemon --threads T
/// --readahead R` of the shared trial engine, the same epoch as the engine
/// trials read through the mount point (a directory target), unmount.
fn run_fuse_trial(
    spec: &TuneSpec,
    data: &Path,
    files: &[(String, u64)],
    s: &Settings,
    f: FuseSettings,
    engine: &mut Option<FuseEngine>,
) -> Result<Trial> {
    let t0 = Instant::now();
    let keep = engine
        .as_mut()
        .is_some_and(|e| e.settings == s.engine() && matches!(e.child.child.try_wait(), Ok(None)));
    if !keep {
        if let Some(e) = engine.take() {
            e.stop();
        }
        let (child, socket, _client) = start_engine(spec, data, &s.engine(), "trial-fuse")?;
        *engine = Some(FuseEngine {
            settings: s.engine(),
            child,
            socket,
        });
    }
    let e = engine.as_ref().expect("engine started");
    let mp = spec.work_dir.join("trial-mnt");
    std::fs::create_dir_all(&mp)?;
    let mount = TrialMount {
        exe: &spec.exe,
        mp: mp.clone(),
    };
    // A mount left behind by an interrupted run.
    if is_mounted(&mp) {
        mount.umount()?;
    }
    let log = spec.work_dir.join("trial-mount.log");
    let _ = std::fs::remove_file(&log);
    let o = Command::new(&spec.exe)
        .arg("mount")
        .args(["--socket", &e.socket, "/data"])
        .arg(&mp)
        .arg("--daemon")
        .args(["--threads", &f.threads.to_string()])
        .args(["--readahead", &f.readahead_bytes.to_string()])
        .arg("--log-file")
        .arg(&log)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {} mount", spec.exe.display()))?;
    if !o.status.success() {
        let _ = std::fs::write(&log, &o.stderr);
        bail!(
            "stoker mount failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    if !is_mounted(&mp) {
        bail!("stoker mount returned but {} is not mounted", mp.display());
    }
    let target = stoker_bench::LocalTarget {
        name: "fuse".into(),
        root: mp.clone(),
    };
    let best = score(spec, &target, data, files, s.readers)?;
    mount.umount()?;
    Ok(Trial {
        settings: s.clone(),
        files_per_s: best.files_per_s,
        mib_per_s: best.mib_per_s,
        p99_us: best.p99_us,
        secs: t0.elapsed().as_secs_f64(),
        error: None,
    })
}

fn fingerprint(spec: &TuneSpec) -> String {
    format!(
        "v1 files={} mean={} large={}x{} seed={} passes={} capacity={} cores={}",
        spec.files,
        spec.mean_size,
        spec.large_files,
        spec.large_bytes,
        spec.seed,
        spec.passes,
        spec.capacity_bytes,
        Settings::defaults().shards
    )
}

/// Whole or not at all: a fsynced temporary file renamed over the old state.
fn save_state(path: &Path, st: &State) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(st)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Make (or reuse) the tuning dataset under `work_dir/data`.
fn dataset(spec: &TuneSpec) -> Result<PathBuf> {
    let data = spec.work_dir.join("data");
    let marker = spec.work_dir.join("data.done");
    let want = fingerprint(spec);
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
        let _ = std::fs::remove_dir_all(&data);
        let gen = stoker_bench::GenSpec {
            files: spec.files,
            mean_size: spec.mean_size,
            dirs: 20,
            seed: spec.seed,
        };
        stoker_bench::generate(&data, &gen)?;
        if spec.large_files > 0 {
            stoker_bench::generate_large(&data, spec.large_files, spec.large_bytes, spec.seed)?;
        }
        std::fs::write(&marker, &want)?;
    }
    Ok(data)
}

/// Sweep, write `spec.out`, return what was found.
pub fn tune(spec: &TuneSpec) -> Result<Outcome> {
    let started = Instant::now();
    std::fs::create_dir_all(&spec.work_dir)
        .with_context(|| format!("creating {}", spec.work_dir.display()))?;
    let data = dataset(spec)?;
    let files = stoker_bench::list_files_sized(&data)?;
    let state_path = spec.work_dir.join("tune-state.json");
    let fp = fingerprint(spec);
    let mut state: State = match std::fs::read(&state_path) {
        Ok(b) if !spec.fresh => serde_json::from_slice(&b).unwrap_or_default(),
        _ => State::default(),
    };
    if state.fingerprint != fp {
        state = State {
            fingerprint: fp,
            trials: Vec::new(),
        };
    }
    let cores = Settings::defaults().shards;
    let mut knobs = knobs(cores);
    if let Some(bad) = spec
        .knobs
        .iter()
        .find(|n| !KNOB_NAMES.contains(&n.as_str()))
    {
        bail!(
            "unknown knob {bad:?}: the knobs are {}",
            KNOB_NAMES.join(", ")
        );
    }
    if !spec.knobs.is_empty() {
        knobs.retain(|k| spec.knobs.iter().any(|n| n == k.name));
    }
    let has_fuse = knobs.iter().any(|k| k.fuse);
    let total: u64 = 1
        + has_fuse as u64
        + knobs
            .iter()
            .map(|k| k.candidates.len() as u64 - 1)
            .sum::<u64>();
    let progress = Progress::new(total);
    progress.line(format!(
        "tune: {} files ({:.0} MiB) in {}, budget {:?}, {} saved trials",
        files.len(),
        files.iter().map(|f| f.1).sum::<u64>() as f64 / (1 << 20) as f64,
        data.display(),
        spec.budget,
        state.trials.len()
    ));
    let (mut run, mut reused, mut failed, mut run_secs) = (0usize, 0usize, 0usize, 0.0f64);
    let mut budget_hit = false;
    let mut fuse_engine: Option<FuseEngine> = None;
    // Measure `s` (or reuse a saved trial that ran). None when the budget is
    // spent; a failed trial comes back with `error` set, already recorded.
    let mut measure = |s: &Settings, force: bool, state: &mut State| -> Result<Option<Trial>> {
        if let Some(t) = state
            .trials
            .iter()
            .find(|t| &t.settings == s && !t.failed())
        {
            reused += 1;
            progress.step(format!("reused {s:?}"));
            return Ok(Some(t.clone()));
        }
        let mean = if run > 0 { run_secs / run as f64 } else { 0.0 };
        if !force && started.elapsed().as_secs_f64() + mean > spec.budget.as_secs_f64() {
            budget_hit = true;
            return Ok(None);
        }
        let n = state.trials.iter().filter(|t| t.failed()).count() + 1;
        let t = run_trial_recorded(spec, &data, &files, s, n, &mut fuse_engine);
        run += 1;
        run_secs += t.secs;
        let what = s.describe();
        match &t.error {
            Some(e) => {
                failed += 1;
                progress.step("trial failed".into());
                progress.line(format!(
                    "tune: {what}: FAILED, skipped: {e} ({:.1}s)",
                    t.secs
                ));
            }
            None => {
                progress.step(format!("{:.0} files/s", t.files_per_s));
                progress.line(format!(
                    "tune: {what}: {:.0} files/s, {:.1} MiB/s, p99 {:.2} ms ({:.1}s)",
                    t.files_per_s,
                    t.mib_per_s,
                    t.p99_us as f64 / 1000.0,
                    t.secs
                ));
            }
        }
        state.trials.push(t.clone());
        save_state(&state_path, state)?;
        Ok(Some(t))
    };
    let current = Settings::defaults();
    // The baseline is retried once: without it nothing can be compared.
    let mut default_trial = measure(&current, true, &mut state)?.expect("forced trial");
    if default_trial.failed() {
        default_trial = measure(&current, true, &mut state)?.expect("forced trial");
    }
    let mut best_trial = default_trial.clone();
    // FUSE trials score through a mount, so they compare only with each
    // other: the first FUSE knob measures a baseline mount (the mount's
    // defaults on the best engine settings) and the FUSE knobs descend from it.
    let mut fuse_best: Option<Trial> = None;
    let mut fuse_default: Option<Trial> = None;
    let mut results = Vec::new();
    for k in &knobs {
        if k.fuse && fuse_best.is_none() {
            let mut s = best_trial.settings.clone();
            s.fuse = Some(FuseSettings::defaults());
            match measure(&s, false, &mut state)? {
                Some(t) => {
                    fuse_default = Some(t.clone());
                    fuse_best = Some(t);
                }
                None => {
                    results.push(KnobResult {
                        name: k.name.into(),
                        chosen: (k.get)(&s),
                        tried: vec![],
                        failed: vec![],
                        note: Some("not measured: budget spent before the FUSE sweep".into()),
                    });
                    continue;
                }
            }
        }
        let best = if k.fuse {
            fuse_best.as_mut().expect("fuse baseline measured")
        } else {
            &mut best_trial
        };
        let mut current = best.settings.clone();
        let mut tried = Vec::new();
        let mut fails = Vec::new();
        match &best.error {
            None => tried.push(((k.get)(&current), best.files_per_s)),
            Some(e) => fails.push(((k.get)(&current), e.clone())),
        }
        let mut skipped = 0;
        for &v in &k.candidates {
            if v == (k.get)(&current) {
                continue;
            }
            let mut s = current.clone();
            (k.set)(&mut s, v);
            match measure(&s, false, &mut state)? {
                Some(t) if t.failed() => fails.push((v, t.error.clone().unwrap_or_default())),
                Some(t) => {
                    tried.push((v, t.files_per_s));
                    // A failed current value (score 0) loses to any candidate that ran.
                    if best.failed() || t.files_per_s > best.files_per_s * NOISE_MARGIN {
                        *best = t;
                    }
                }
                None => skipped += 1,
            }
        }
        current = best.settings.clone();
        tried.sort_by_key(|t| t.0);
        fails.sort_by_key(|t| t.0);
        let note =
            (skipped > 0).then(|| format!("{skipped} candidate(s) not measured: budget spent"));
        results.push(KnobResult {
            name: k.name.into(),
            chosen: (k.get)(&current),
            tried,
            failed: fails,
            note,
        });
    }
    let _ = measure;
    if let Some(e) = fuse_engine.take() {
        e.stop();
        let _ = std::fs::remove_dir_all(spec.work_dir.join("trial-fuse-cache"));
    }
    progress.finish();
    let fuse = fuse_default.zip(fuse_best);
    let toml = render(
        spec,
        &files,
        &default_trial,
        &best_trial,
        fuse.as_ref().map(|(d, b)| (d, b)),
        &knobs,
        &results,
        budget_hit,
    );
    if let Some(dir) = spec.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::File::create(&spec.out)
        .and_then(|mut f| f.write_all(toml.as_bytes()))
        .with_context(|| format!("writing {}", spec.out.display()))?;
    Ok(Outcome {
        default_trial,
        best_trial,
        knobs: results,
        trials_run: run,
        trials_reused: reused,
        trials_failed: failed,
        toml,
    })
}

// Every argument is a separate piece of the report; bundling them in a
// struct would only move the list.
#[allow(clippy::too_many_arguments)]
fn render(
    spec: &TuneSpec,
    files: &[(String, u64)],
    default: &Trial,
    best: &Trial,
    fuse: Option<(&Trial, &Trial)>,
    knobs: &[Knob],
    results: &[KnobResult],
    budget_hit: bool,
) -> String {
    let mut o = String::new();
    let total: u64 = files.iter().map(|f| f.1).sum();
    o += "# stoker tuned config, written by `stoker tune`.\n";
    o += &format!(
        "# box: {} cores; dataset: {} files, {:.0} MiB (mean {} + {} x {}), seed {}\n",
        Settings::defaults().shards,
        files.len(),
        total as f64 / (1 << 20) as f64,
        fmt_size(spec.mean_size),
        spec.large_files,
        fmt_size(spec.large_bytes),
        spec.seed
    );
    o += &format!(
        "# score: files/s of a warm `epoch` pass through the shared-memory client, best of {} passes\n",
        spec.passes.max(1)
    );
    o += &format!(
        "# a value replaces the current one only when it is more than {:.0}% faster\n",
        (NOISE_MARGIN - 1.0) * 100.0
    );
    o += &score_line("default settings", "every trial FAILED, these are the defaults", default, best);
    let fails: usize = results.iter().map(|r| r.failed.len()).sum();
    if fails > 0 {
        o += &format!(
            "# {fails} trial(s) failed and were skipped (errors below, state in tune-state.json)\n"
        );
    }
    let swept: Vec<&str> = knobs.iter().map(|k| k.name).collect();
    let unswept: Vec<&str> = KNOB_NAMES
        .iter()
        .copied()
        .filter(|n| !swept.contains(n))
        .collect();
    if !unswept.is_empty() {
        o += &format!(
            "# not swept (--knobs): {} (defaults apply)\n",
            unswept.join(", ")
        );
    }
    if budget_hit {
        o += "# the budget ran out before every candidate was measured (see the notes below);\n";
        o += "# rerun with the same --work-dir and a larger --budget to resume.\n";
    }
    o += "#\n# use: stoker serve --config THIS_FILE --cache-dir DIR --mount NAME=URI\n";
    o += "# (flags given on the command line override values here)\n\n";
    let mut section = "";
    let section_of = |k: &Knob| {
        if k.fuse {
            "mount"
        } else if k.name == "readers" {
            "client"
        } else {
            "serve"
        }
    };
    let rank = |s: &str| match s {
        "serve" => 0,
        "client" => 1,
        _ => 2,
    };
    let mut order: Vec<(&Knob, &KnobResult)> = knobs.iter().zip(results).collect();
    order.sort_by_key(|(k, _)| rank(section_of(k))); // stable: [serve], [client], [mount]
    for (k, r) in order {
        let want = section_of(k);
        if want != section {
            if !section.is_empty() {
                o += "\n";
            }
            o += &format!("[{want}]\n");
            if want == "mount" {
                o += &mount_header(fuse);
            }
            section = want;
        }
        let show = |v: u64| if k.size { fmt_size(v) } else { v.to_string() };
        o += &format!("# {}: {}\n", k.name, k.what);
        let tried: Vec<String> = r
            .tried
            .iter()
            .map(|(v, fps)| {
                format!(
                    "{} -> {:.0} files/s{}",
                    show(*v),
                    fps,
                    if *v == r.chosen { " (chosen)" } else { "" }
                )
            })
            .collect();
        o += &format!("#   {}\n", tried.join(", "));
        for (v, e) in &r.failed {
            o += &format!("#   {} -> FAILED, skipped: {}\n", show(*v), e);
        }
        if let Some(n) = &r.note {
            o += &format!("#   {n}\n");
        }
        let key = if k.key.is_empty() { k.name } else { k.key };
        if k.size {
            o += &format!("{key} = \"{}\"\n", show(r.chosen));
        } else {
            o += &format!("{key} = {}\n", r.chosen);
        }
    }
    let swept_fuse: Vec<&str> = knobs.iter().filter(|k| k.fuse).map(|k| k.key).collect();
    if section != "mount" {
        o += "\n[mount]\n";
        o += &mount_header(None);
    }
    if !swept_fuse.contains(&"threads") {
        o += "# threads: not swept (--knobs); the mount's default, uncomment to change\n# threads = 16\n";
    }
    if !swept_fuse.contains(&"readahead") {
        o += "# readahead: not swept (--knobs); the mount's default, uncomment to change\n# readahead = \"8M\"\n";
    }
    o += "# max_read: not swept; the mount's default (the kernel caps it, usually at 1M)\n# max_read = \"1M\"\n";
    o
}

/// One comment line comparing the default trial with the chosen one.
fn score_line(default_label: &str, all_failed: &str, default: &Trial, best: &Trial) -> String {
    match (&default.error, &best.error) {
        (None, None) => format!(
            "# {default_label}: {:.0} files/s; these settings: {:.0} files/s ({:.2}x)\n",
            default.files_per_s,
            best.files_per_s,
            best.files_per_s / default.files_per_s.max(1e-9)
        ),
        (Some(e), None) => format!(
            "# {default_label}: trial FAILED ({e}); these settings: {:.0} files/s\n",
            best.files_per_s
        ),
        (_, Some(e)) => format!("# {all_failed} (last error: {e})\n"),
    }
}

/// The comment opening `[mount]`: how it is read and what the FUSE sweep scored.
fn mount_header(fuse: Option<(&Trial, &Trial)>) -> String {
    let mut o = String::new();
    o += "# read by `stoker mount --config THIS_FILE` (flags override)\n";
    if let Some((d, b)) = fuse {
        o += "# FUSE score: files/s of the same warm `epoch` pass read through a\n";
        o += "# `stoker mount --daemon` of one trial engine with this file's engine settings\n";
        o += &score_line("mount defaults", "every FUSE trial FAILED, these are the mount's defaults", d, b);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_config_parses_and_records_each_choice() {
        let spec = TuneSpec {
            exe: "stoker".into(),
            work_dir: "/tmp".into(),
            out: "/tmp/x.toml".into(),
            budget: Duration::from_secs(1),
            files: 3,
            mean_size: 1000,
            large_files: 0,
            large_bytes: 0,
            seed: 1,
            passes: 1,
            capacity_bytes: 1 << 30,
            fresh: false,
            knobs: vec![],
        };
        let t = |shards, fps| Trial {
            settings: Settings {
                shards,
                ..Settings::defaults()
            },
            files_per_s: fps,
            mib_per_s: 1.0,
            p99_us: 10,
            secs: 1.0,
            error: None,
        };
        let ks = knobs(2);
        let results: Vec<KnobResult> = ks
            .iter()
            .map(|k| KnobResult {
                name: k.name.into(),
                chosen: if k.name == "shards" {
                    1
                } else {
                    (k.get)(&Settings::defaults())
                },
                tried: if k.name == "shards" {
                    vec![(1, 200.0), (2, 100.0)]
                } else {
                    vec![]
                },
                failed: if k.name == "shards" {
                    vec![(4, "trial engine exited".into())]
                } else {
                    vec![]
                },
                note: (k.name == "segment_size").then(|| "budget".to_string()),
            })
            .collect();
        let files = vec![("a".to_string(), 10u64)];
        let text = render(
            &spec,
            &files,
            &t(2, 100.0),
            &t(1, 200.0),
            None,
            &ks,
            &results,
            true,
        );
        let f = ConfigFile::parse(&text).unwrap();
        assert_eq!(f.serve.shards, Some(1));
        assert_eq!(f.client.readers, Some(32));
        let size = |v: &Option<crate::config::Size>, key| v.as_ref().unwrap().bytes(key).unwrap();
        assert_eq!((size(&f.serve.block_size, "block_size"), size(&f.serve.segment_size, "segment_size")), (4 << 20, 256 << 20));
        assert!(
            text.contains("1 -> 200 files/s (chosen), 2 -> 100 files/s"),
            "{text}"
        );
        assert!(text.contains("(2.00x)"), "{text}");
        assert!(text.contains("budget ran out"), "{text}");
        assert!(
            text.contains("#   4 -> FAILED, skipped: trial engine exited\n"),
            "{text}"
        );
        assert!(text.contains("1 trial(s) failed"), "{text}");
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(fmt_size(4 << 20), "4M");
        assert_eq!(fmt_size(128 << 10), "128K");
        assert_eq!(fmt_size(1 << 30), "1G");
        assert_eq!(fmt_size(1000), "1000");
    }
}
