//! `stoker bench` (datasets, workloads against targets, the device ceiling)
//! and `stoker tune`: argument handling over the bench and tuning crates.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use stoker_bench::{Ceiling, CeilingSpec, Report, Workload};
use stoker_client::Client;
use stoker_engine::{parse_duration, parse_size};

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)?.ok_or_else(|| format!("bad duration {s:?}: `never` is not allowed here"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
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
        /// Make the large-file set instead: --large-files files of --large-size (DIR/large/).
        #[arg(long)]
        large: bool,
        #[arg(long, default_value_t = 4)]
        large_files: usize,
        #[arg(long, value_parser = size_arg, default_value = "1G")]
        large_size: u64,
    },
    /// Read every file once in a shuffled order with T threads, per target.
    Epoch(EpochArgs),
    /// DataLoader-shaped: N worker processes each read whole files, one at a
    /// time, worker k taking items k, k+N, ... of one shuffle; per target and N
    /// (--threads is not used).
    Loader {
        #[command(flatten)]
        run: EpochArgs,
        /// Worker process counts; one pass (per --passes) for each.
        #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
        procs: Vec<usize>,
    },
    /// One `loader` worker process (started by `bench loader`; talks over stdin/stdout).
    #[command(hide = true)]
    LoaderWorker(LoaderWorkerArgs),
    /// Metadata storm: stat every file twice (shuffled), per target.
    Stat(EpochArgs),
    /// Random aligned ranges in the files (meant for the --large set), per target.
    Random {
        #[command(flatten)]
        run: EpochArgs,
        /// Ranges read per pass.
        #[arg(long, default_value_t = 20_000)]
        ops: u64,
        #[arg(long, value_parser = size_arg, default_value = "128K")]
        range_size: u64,
    },
    /// Each file read front to back in --chunk reads (meant for the --large set), per target.
    Seq {
        #[command(flatten)]
        run: EpochArgs,
        #[arg(long, value_parser = size_arg, default_value = "1M")]
        chunk: u64,
    },
    /// The device itself: O_DIRECT reads through io_uring, sequential 1 MiB and
    /// random 128 KiB / 4 KiB, over a queue-depth sweep.
    Ceiling {
        #[command(flatten)]
        ceiling: CeilingArgs,
        /// Print the ceiling as JSON (the form --ceiling-json reads).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct CeilingArgs {
    /// A directory on the device to measure (a scratch file is written there and removed).
    #[arg(long = "ceiling-dir")]
    pub dir: Option<PathBuf>,
    /// Size of the scratch file.
    #[arg(long, value_parser = size_arg, default_value = "1G")]
    pub ceiling_size: u64,
    /// Time per (pattern, queue depth) point.
    #[arg(long, value_parser = duration_arg, default_value = "2s")]
    pub ceiling_time: Duration,
    /// Reads per point at most (keeps test runs tiny).
    #[arg(long)]
    pub ceiling_ops: Option<u64>,
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32")]
    pub queue_depths: Vec<usize>,
    /// A ceiling saved earlier with `stoker bench ceiling --json > FILE`, instead of measuring.
    #[arg(long)]
    pub ceiling_json: Option<PathBuf>,
}

impl CeilingArgs {
    /// The ceiling to compare with: loaded, measured, or none.
    fn get(&self, json_out: bool) -> Result<Option<Ceiling>> {
        if let Some(p) = &self.ceiling_json {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            return Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))?));
        }
        let Some(dir) = &self.dir else { return Ok(None) };
        let spec = CeilingSpec {
            dir: dir.clone(),
            file_bytes: self.ceiling_size,
            duration_per_point: self.ceiling_time,
            ops_per_point_max: self.ceiling_ops.unwrap_or(u64::MAX),
            queue_depths: self.queue_depths.clone(),
        };
        eprintln!("bench ceiling: writing a {:.0} MiB scratch file in {}", mib(spec.file_bytes), dir.display());
        let c = stoker_bench::ceiling::measure(&spec, &|r| {
            if !json_out {
                eprintln!("bench ceiling: {}: {:.1} MiB/s, {:.0} IOPS, p99 {:.2} ms", r.pass, r.mib_per_s, r.ops_per_s, r.p99_us as f64 / 1e3);
            }
        })?;
        Ok(Some(c))
    }
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
    /// read with injected latency per request, like remote storage), or a
    /// directory path (e.g. a FUSE mount point: /mnt/stoker/NAME).
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
    pub ceiling: CeilingArgs,
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

/// What `bench loader` passes to each worker it starts.
#[derive(Args, Debug)]
pub struct LoaderWorkerArgs {
    /// One target, as in --targets.
    #[arg(long)]
    pub target: String,
    #[arg(long)]
    pub source: PathBuf,
    #[arg(long)]
    pub prefix: Option<String>,
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

pub fn bench(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Gen { dir, files, mean_size, dirs, seed, large, large_files, large_size } => {
            let sum = if large {
                stoker_bench::generate_large(&dir, large_files, large_size, seed)?
            } else {
                stoker_bench::generate(&dir, &stoker_bench::GenSpec { files, mean_size, dirs, seed })?
            };
            eprintln!("bench gen: {} files, {:.1} MiB in {}", sum.files, mib(sum.bytes), dir.display());
            Ok(())
        }
        BenchCmd::Epoch(a) => run(a, Workload::Epoch),
        BenchCmd::Loader { run: a, procs } => loader(a, procs),
        BenchCmd::LoaderWorker(w) => loader_worker(w),
        BenchCmd::Stat(a) => run(a, Workload::Stat),
        BenchCmd::Random { run: a, ops, range_size } => run(a, Workload::Random { ops, range_bytes: range_size }),
        BenchCmd::Seq { run: a, chunk } => run(a, Workload::Seq { chunk_bytes: chunk }),
        BenchCmd::Ceiling { ceiling: c, json } => ceiling(c, json),
    }
}

fn ceiling(a: CeilingArgs, json: bool) -> Result<()> {
    if a.dir.is_none() && a.ceiling_json.is_none() {
        bail!("bench ceiling needs --ceiling-dir DIR (a directory on the device to measure)");
    }
    let c = a.get(json)?.expect("dir or json given");
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", stoker_bench::markdown_table(&c.points));
        println!("{}", ceiling_summary(&c));
    }
    Ok(())
}

fn ceiling_summary(c: &Ceiling) -> String {
    format!(
        "ceiling: seq 1M {:.0} MiB/s (qd{}), rand 128K {:.0} MiB/s (qd{}), rand 4K {:.0} IOPS = {:.1} MiB/s (qd{})",
        c.seq_mib_per_s, c.seq_queue_depth, c.rand128k_mib_per_s, c.rand128k_queue_depth, c.rand4k_iops, c.rand4k_mib_per_s, c.rand4k_queue_depth
    )
}

/// The target named `t` (an entry of --targets) over the dataset at `source`
/// (in stoker at `prefix`, through the engine at `socket`).
fn target(t: &str, source: &std::path::Path, prefix: Option<&str>, socket: &str) -> Result<Box<dyn stoker_bench::Target>> {
    Ok(match t {
        "local" => Box::new(stoker_bench::LocalTarget { name: "local".into(), root: source.to_path_buf() }),
        "stoker" => {
            let Some(prefix) = prefix else { bail!("target stoker needs --prefix /NAME") };
            Box::new(stoker_bench::StokerTarget {
                name: "stoker (client-lib)".into(),
                client: Client::connect(socket)?,
                prefix: prefix.trim_end_matches('/').to_string(),
            })
        }
        direct if direct.starts_with("direct:") => {
            let latency = parse_duration(&direct["direct:".len()..]).map_err(anyhow::Error::msg)?.unwrap_or_default();
            Box::new(stoker_bench::RemoteTarget { root: source.to_path_buf(), latency })
        }
        dir if dir.starts_with('/') => Box::new(stoker_bench::LocalTarget { name: dir.into(), root: dir.into() }),
        other => bail!("unknown target {other:?}: use local, stoker, direct:20ms or a directory path"),
    })
}

fn dataset(a: &EpochArgs) -> Result<Vec<(String, u64)>> {
    let files = stoker_bench::list_files_sized(&a.source).with_context(|| format!("listing {}", a.source.display()))?;
    if files.is_empty() {
        bail!("{}: no files", a.source.display());
    }
    Ok(files)
}

fn run(a: EpochArgs, workload: Workload) -> Result<()> {
    let files = dataset(&a)?;
    let verify = a.verify.then_some(a.source.as_path());
    run_passes(&a, &[()], |t, _, (), pass, seed| Ok(stoker_bench::run(t, &workload, pass, &files, a.threads, seed, verify)))
}

fn loader(a: EpochArgs, procs: Vec<usize>) -> Result<()> {
    if procs.is_empty() || procs.contains(&0) {
        bail!("--procs takes worker process counts of at least 1, e.g. 1,4,8");
    }
    let files = dataset(&a)?;
    let exe = std::env::current_exe().context("finding the stoker binary")?;
    let socket = a.socket.path();
    run_passes(&a, &procs, |t, spec, &n, pass, seed| {
        let name = t.name();
        let p = stoker_bench::loader::LoaderPass { target: &name, pass, procs: n, files: &files, seed };
        stoker_bench::loader::run(&p, &|_| {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["bench", "loader-worker", "--target", spec, "--socket", socket.as_str()]).arg("--source").arg(&a.source);
            if let Some(prefix) = &a.prefix {
                cmd.args(["--prefix", prefix]);
            }
            if a.verify {
                cmd.arg("--verify");
            }
            cmd
        })
    })
}

fn loader_worker(w: LoaderWorkerArgs) -> Result<()> {
    let t = target(&w.target, &w.source, w.prefix.as_deref(), &w.socket.path())?;
    let verify = w.verify.then_some(w.source.as_path());
    stoker_bench::loader::worker(t.as_ref(), verify, &mut std::io::stdin().lock(), &mut std::io::stdout().lock())
}

/// Every target in --targets, every variant (e.g. a worker count), --passes
/// passes each, in that order; `one(target, its --targets entry, variant,
/// pass label, seed)` runs a pass. Prints the reports (and the ceiling);
/// read errors in any pass fail the command after everything is printed.
fn run_passes<V>(a: &EpochArgs, variants: &[V], mut one: impl FnMut(&dyn stoker_bench::Target, &str, &V, &str, u64) -> Result<Report>) -> Result<()> {
    let ceiling = a.ceiling.get(a.json)?;
    let mut reports: Vec<Report> = Vec::new();
    let mut errors = 0;
    for spec in &a.targets {
        let target = target(spec, &a.source, a.prefix.as_deref(), &a.socket.path())?;
        for v in variants {
            for p in 0..a.passes {
                if a.cold {
                    stoker_bench::drop_page_cache().context("dropping the page cache (needs root)")?;
                }
                let r = one(target.as_ref(), spec, v, &format!("{}", p + 1), a.seed + p as u64)?;
                if !a.json {
                    eprintln!("bench {}: {} pass {}: {:.0} ops/s, {:.1} MiB/s", r.workload, r.target, r.pass, r.ops_per_s, r.mib_per_s);
                }
                errors += r.errors;
                reports.push(r);
            }
        }
    }
    if let Some(c) = &ceiling {
        c.annotate(&mut reports);
        reports.extend(c.points.iter().cloned());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", stoker_bench::markdown_table(&reports));
        if let Some(c) = &ceiling {
            println!("{}", ceiling_summary(c));
        }
    }
    if errors > 0 {
        bail!("{errors} read errors or mismatches");
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Where the tuned config is written.
    #[arg(long, default_value = "stoker-tuned.toml")]
    pub out: PathBuf,
    /// Dataset, trial caches and the resumable state (reuse it to resume).
    #[arg(long, default_value = "stoker-tune")]
    pub work_dir: PathBuf,
    /// Time budget for the sweep, e.g. 10m (the baseline trial always runs).
    #[arg(long, value_parser = duration_arg, default_value = "10m")]
    pub budget: Duration,
    /// Files in the tuning dataset.
    #[arg(long, default_value_t = 2000)]
    pub files: usize,
    #[arg(long, value_parser = size_arg, default_value = "110K")]
    pub mean_size: u64,
    /// Large files added to the dataset (block size matters only for files larger than a block).
    #[arg(long, default_value_t = 2)]
    pub large_files: usize,
    #[arg(long, value_parser = size_arg, default_value = "16M")]
    pub large_size: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Warm passes per trial (the best scores).
    #[arg(long, default_value_t = 2)]
    pub passes: usize,
    /// Cache capacity of each trial engine.
    #[arg(long, value_parser = size_arg, default_value = "4G")]
    pub capacity: u64,
    /// Ignore saved trials and measure everything again.
    #[arg(long)]
    pub fresh: bool,
    /// Sweep only these knobs (comma-separated): shards, readers, block_size, segment_size,
    /// fuse_threads, readahead (the last two mount the trial engine: need /dev/fuse).
    #[arg(long, value_delimiter = ',')]
    pub knobs: Vec<String>,
    /// The binary trials run as `EXE serve --config ...` (default: this one); for tests.
    #[arg(long, hide = true)]
    pub serve_exe: Option<PathBuf>,
}

pub fn tune(a: TuneArgs) -> Result<()> {
    let exe = match &a.serve_exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("finding the stoker binary")?,
    };
    let work_dir = std::path::absolute(&a.work_dir)?;
    let spec = stoker_tuning::TuneSpec {
        exe,
        work_dir,
        out: a.out.clone(),
        budget: a.budget,
        files: a.files,
        mean_size: a.mean_size,
        large_files: a.large_files,
        large_bytes: a.large_size,
        seed: a.seed,
        passes: a.passes,
        capacity_bytes: a.capacity,
        fresh: a.fresh,
        knobs: a.knobs.clone(),
    };
    let o = stoker_tuning::tune(&spec)?;
    eprintln!(
        "tune: {} trials run, {} reused, {} failed; default {:.0} files/s, tuned {:.0} files/s ({:.2}x); wrote {}",
        o.trials_run,
        o.trials_reused,
        o.trials_failed,
        o.default_trial.files_per_s,
        o.best_trial.files_per_s,
        o.best_trial.files_per_s / o.default_trial.files_per_s.max(1e-9),
        a.out.display()
    );
    Ok(())
}
