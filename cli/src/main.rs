//! The `stoker` command. Each subcommand is a thin shell over a crate:
//! serve -> engine (and gateway, `--s3`), cat/ls/stat/load -> client-lib, mount -> client-fuse,
//! bench/demo -> bench, tune -> tuning. Errors print as one line and exit non-zero.

mod bench_cmd;
mod commands;
mod demo;
mod load;
mod mount;
mod policy_cmd;
mod serve_config;

use clap::{Args, Parser, Subcommand};


#[derive(Parser, Debug)]
#[command(name = "stoker", version, about = "A data cache for machine-learning training: reads through to remote storage, keeps hot data on local NVMe")]
struct Cli {
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long, global = true, default_value = "warn", env = "STOKER_LOG")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the engine listens.
#[derive(Args, Debug, Clone)]
pub struct SocketArg {
    /// Engine control socket [env: STOKER_SOCKET; default: /tmp/stoker.sock].
    #[arg(long)]
    pub socket: Option<String>,
}

impl SocketArg {
    pub fn path(&self) -> String {
        stoker_proto::socket_from_env(self.socket.as_deref())
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the cache engine in the foreground until SIGINT/SIGTERM.
    Serve(commands::ServeArgs),
    /// Print a file through the cache.
    Cat {
        path: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// List a directory of the namespace (`/` lists mounts).
    Ls {
        path: String,
        /// Long format: kind, size, name.
        #[arg(short, long)]
        long: bool,
        /// Every file under PATH, by full path (the engine lists the tree's
        /// directories concurrently).
        #[arg(short = 'R', long)]
        recursive: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Engine statistics, or the cached fraction, pin and TTL of PATH.
    Stat {
        path: Option<String>,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Keep the cached blocks of a file or prefix through eviction (persists).
    Pin {
        path: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Undo `stoker pin`.
    Unpin {
        path: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Drop the cached blocks of a file or prefix now.
    Free {
        path: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Wait until every file written under PATH is in under storage; exits
    /// non-zero naming each file that could not be persisted (it stays in
    /// the cache and is retried).
    Sync {
        path: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Cached blocks under PATH expire DURATION after they were cached (`never` clears; persists).
    Ttl {
        path: String,
        duration: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Preload a file or prefix into the cache, with progress (a bar on a
    /// terminal, a plain line a second otherwise). Exits non-zero with a
    /// summary naming the files that failed. Resumable: rerun with
    /// --skip-cached after an interruption and files already fully cached are
    /// skipped (the engine's cache is the record; there is no state file).
    Load {
        prefix: String,
        /// Files loaded at once.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// Skip files whose blocks are all cached already (this is how a load resumes).
        #[arg(long)]
        skip_cached: bool,
        /// After loading, read each file through the cache and compare it with
        /// a read straight from under storage; a difference fails the file.
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Mount the cache as a file system (FUSE).
    Mount(mount::MountArgs),
    /// Unmount a stoker FUSE mount.
    Umount(mount::UmountArgs),
    /// Workloads and datasets for measuring a box.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCmd),
    /// Sweep this box with short runs and write a tuned config for `serve --config`.
    Tune(bench_cmd::TuneArgs),
    /// Run the demo: synthetic dataset behind injected latency, read cold then warm.
    Demo(demo::DemoArgs),
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // Usage errors as one line, like every other error.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments").trim_start_matches("error: ");
            eprintln!("stoker: error: {first} (see --help)");
            std::process::exit(2);
        }
    };
    init_logging(&cli.log_level);
    if matches!(cli.cmd, Cmd::Cat { .. } | Cmd::Ls { .. } | Cmd::Stat { .. }) {
        // Output piped into `head` ends these quietly when the reader goes,
        // as other tools do (Rust ignores SIGPIPE, and println! would
        // panic). The rest keep ignoring it: their sockets report a gone
        // peer as an error instead.
        // SAFETY: restoring a signal's default disposition touches no memory.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let res = match cli.cmd {
        Cmd::Serve(a) => commands::serve(a),
        Cmd::Cat { path, socket } => commands::cat(&socket.path(), &path),
        Cmd::Ls { path, long, recursive, socket } => commands::ls(&socket.path(), &path, long, recursive),
        Cmd::Stat { path: Some(p), json, socket } => policy_cmd::path_stat(&socket.path(), &p, json),
        Cmd::Stat { path: None, json, socket } => commands::stat(&socket.path(), json),
        Cmd::Pin { path, socket } => policy_cmd::pin(&socket.path(), &path, true),
        Cmd::Unpin { path, socket } => policy_cmd::pin(&socket.path(), &path, false),
        Cmd::Free { path, socket } => policy_cmd::free(&socket.path(), &path),
        Cmd::Sync { path, socket } => policy_cmd::sync(&socket.path(), &path),
        Cmd::Ttl { path, duration, socket } => policy_cmd::ttl(&socket.path(), &path, &duration),
        Cmd::Load { prefix, parallel, skip_cached, verify, socket } => {
            load::load(&socket.path(), &prefix, &load::LoadOpts { parallel, skip_cached, verify })
        }
        Cmd::Mount(a) => mount::run_mount(a),
        Cmd::Umount(a) => mount::run_umount(a),
        Cmd::Bench(b) => bench_cmd::bench(b),
        Cmd::Tune(a) => bench_cmd::tune(a),
        Cmd::Demo(a) => demo::run(a),
    };
    if let Err(e) = res {
        // One line: the chain of causes joined, no backtrace.
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("stoker: error: {msg}");
        std::process::exit(1);
    }
}

