//! Cold epoch with and without epoch-aware prefetch, same engine, same order.
//!
//! ```sh
//! stoker serve --cache-dir D/cache --mount data=file://D/data --ufs-latency 20ms --socket D/s.sock &
//! cargo run --release -p stoker-client --example prefetch_epoch -- D/s.sock /data D/data [THREADS] [WINDOW] [FILES]
//! ```
//! Before each pass the prefix is freed (`Client::free`), so both
//! passes start cold; prints files/s and p99 for each and the ratio.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use stoker_client::Client;

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).expect("reading the source dir") {
            let e = e.expect("dir entry");
            let p = rel.join(e.file_name());
            if e.file_type().expect("file type").is_dir() {
                stack.push(p);
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn pass(client: &Client, order: &[String], threads: usize) -> (f64, f64) {
    let next = AtomicUsize::new(0);
    let lat = std::sync::Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = order.get(i) else { break };
                    let t = Instant::now();
                    client.read_file(p).expect("read");
                    mine.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat.lock().unwrap().extend(mine);
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut lat = lat.into_inner().unwrap();
    lat.sort_by(f64::total_cmp);
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    (order.len() as f64 / secs, p99)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: prefetch_epoch SOCKET PREFIX SOURCE_DIR [THREADS=1] [WINDOW=64] [FILES=400]");
        std::process::exit(2);
    }
    let (socket, prefix, src) = (&args[1], args[2].trim_end_matches('/'), Path::new(&args[3]));
    let threads: usize = args.get(4).map_or(1, |v| v.parse().expect("THREADS"));
    let window: usize = args.get(5).map_or(64, |v| v.parse().expect("WINDOW"));
    let n: usize = args.get(6).map_or(400, |v| v.parse().expect("FILES"));
    let mut order: Vec<String> = files(src).into_iter().take(n).map(|f| format!("{prefix}/{f}")).collect();
    order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(7));
    let client = Client::connect(socket).expect("connect");

    client.free(prefix).expect("free");
    let (plain, plain_p99) = pass(&client, &order, threads);
    client.free(prefix).expect("free");
    client.plan_epoch(&order, window).expect("plan");
    let (planned, planned_p99) = pass(&client, &order, threads);
    client.clear_plan();

    println!("| pass | files | threads | files/s | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    println!("| cold, no plan | {} | {threads} | {plain:.0} | {plain_p99:.1} |", order.len());
    println!("| cold, plan_epoch(window={window}) | {} | {threads} | {planned:.0} | {planned_p99:.1} |", order.len());
    println!("prefetch gain: {:.1}x", planned / plain);
}
