//! `stoker demo`: the main job end to end on an embedded default. A synthetic
//! dataset in a local directory plays remote storage (every request pays the
//! injected latency); an engine serves it; the same files are read directly,
//! then through stoker twice (cold, then warm), every byte checked.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use stoker_bench::Report;
use stoker_engine::config::EngineConfig;
use stoker_engine::{Engine, MountSpec};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory: dataset in data/, cache in cache/.
    #[arg(long, default_value = "/tmp/stoker-demo")]
    pub workdir: PathBuf,
    /// Files in the synthetic dataset.
    #[arg(long, default_value_t = 2000)]
    pub files: usize,
    /// Latency injected into every remote request.
    #[arg(long, default_value = "20ms")]
    pub latency: String,
    /// Reader threads.
    #[arg(long, default_value_t = 32)]
    pub threads: usize,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let latency = stoker_engine::parse_duration(&a.latency)
        .map_err(anyhow::Error::msg)?
        .context("--latency never makes no sense here")?;
    let data = a.workdir.join("data");
    let cache = a.workdir.join("cache");
    let spec = stoker_bench::GenSpec { files: a.files, ..Default::default() };
    let marker = a.workdir.join(format!("data-{}-{}-{}.done", spec.files, spec.mean_size, spec.seed));
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&data);
        eprintln!("demo: generating {} files of ~110 KiB in {}", spec.files, data.display());
        stoker_bench::generate(&data, &spec)?;
        std::fs::write(&marker, b"")?;
    }
    // A fresh cache so the first pass is really cold.
    let _ = std::fs::remove_dir_all(&cache);
    let files = stoker_bench::list_files(&data)?;
    let socket = a.workdir.join("stoker.sock").to_string_lossy().into_owned();

    let mut cfg = EngineConfig::new(cache.clone());
    cfg.capacity_bytes = 4 << 30;
    cfg.socket = socket.clone();
    cfg.ufs_latency = latency;
    cfg.mounts = vec![MountSpec { name: "data".into(), uri: format!("file://{}", std::fs::canonicalize(&data)?.display()), ..Default::default() }];
    let t0 = Instant::now();
    let mut engine = Engine::start(cfg)?;
    eprintln!("demo: engine ready in {:.0} ms on {socket}", t0.elapsed().as_secs_f64() * 1e3);

    let mut reports: Vec<Report> = Vec::new();
    let remote = stoker_bench::RemoteTarget { root: data.clone(), latency };
    eprintln!("demo: pass 1/3: direct reads from remote storage");
    reports.push(stoker_bench::epoch(&remote, "direct", &files, a.threads, 1, Some(&data)));
    let stoker = stoker_bench::StokerTarget {
        name: "stoker (client-lib)".into(),
        client: stoker_client::Client::connect(&socket)?,
        prefix: "/data".into(),
    };
    eprintln!("demo: pass 2/3: through stoker, cold cache");
    reports.push(stoker_bench::epoch(&stoker, "first (cold)", &files, a.threads, 2, Some(&data)));
    // Let the blocks fetched in the cold pass land on disk first, so the warm
    // pass measures reads, not reads competing with the cold pass's writes.
    let t_settle = Instant::now();
    while stoker.client.engine_stats()?.shards.iter().any(|s| s.pending_write_bytes > 0) {
        if t_settle.elapsed() > std::time::Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = stoker_bench::drop_page_cache(); // best effort: stoker reads with O_DIRECT anyway
    eprintln!("demo: pass 3/3: through stoker, warm cache");
    reports.push(stoker_bench::epoch(&stoker, "second (warm)", &files, a.threads, 3, Some(&data)));
    let stats = stoker.client.engine_stats()?;
    drop(stoker);
    engine.stop();

    println!();
    println!("{}", stoker_bench::markdown_table(&reports));
    let direct = reports[0].files_per_s;
    println!(
        "warm pass: {:.1}x direct remote reads; cold pass: {:.1}x; engine: {} hits, {} misses, {} blocks cached",
        reports[2].files_per_s / direct,
        reports[1].files_per_s / direct,
        stats.hits,
        stats.misses,
        stats.blocks
    );
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    if errors > 0 {
        bail!("{errors} files read wrong bytes or failed");
    }
    println!("all {} files matched byte for byte on every pass", files.len());
    Ok(())
}
