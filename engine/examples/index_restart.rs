//! Restart benchmark for the block store: writes N small blocks (default
//! 1,000,000) into 256 MiB segments, closes the store, then reopens it in a
//! fresh process and reports the restart time and the RAM index cost per
//! block (hash-table allocation and RSS delta).
//!
//! `cargo run --release -p stoker-engine --example index_restart -- --dir /tmp/idxbench`
//! Options: `--blocks N`, `--block-bytes B` (default 100), `--keep` (leave the
//! data), `--phase write|open|both` (default both; `open` is what the child
//! process runs).

use std::path::PathBuf;
use std::time::Instant;

use futures::StreamExt;
use glommio::{LocalExecutorBuilder, Placement};
use stoker_engine::store::{Store, StoreConfig};

struct Args {
    dir: PathBuf,
    blocks: u64,
    block_bytes: usize,
    keep: bool,
    phase: String,
}

fn parse_args() -> Args {
    let mut a = Args { dir: PathBuf::from("/tmp/idxbench"), blocks: 1_000_000, block_bytes: 100, keep: false, phase: "both".into() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(val()),
            "--blocks" => a.blocks = val().parse().expect("--blocks N"),
            "--block-bytes" => a.block_bytes = val().parse().expect("--block-bytes B"),
            "--phase" => a.phase = val(),
            "--keep" => a.keep = true,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn cfg(dir: &std::path::Path) -> StoreConfig {
    // Capacity large enough that nothing is evicted.
    StoreConfig { dir: dir.to_path_buf(), segment_bytes: 256 << 20, capacity_bytes: 64 << 30 }
}

fn key(i: u64) -> Vec<u8> {
    format!("bench/mount/train/file-{i:08}.jpg#0").into_bytes()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions; it only reads a system value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

fn write_phase(a: &Args) {
    let _ = std::fs::remove_dir_all(&a.dir);
    let (dir, blocks, block_bytes) = (a.dir.clone(), a.blocks, a.block_bytes);
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let (store, _) = Store::open(cfg(&dir)).await.expect("open");
            let data = vec![0x5au8; block_bytes];
            let started = Instant::now();
            futures::stream::iter(0..blocks)
                .for_each_concurrent(256, |i| {
                    let store = &store;
                    let data = &data;
                    async move {
                        let k = key(i);
                        store.put(xxhash_rust::xxh3::xxh3_64(&k), &k, data).await.expect("put");
                    }
                })
                .await;
            store.flush().await.expect("flush");
            let secs = started.elapsed().as_secs_f64();
            let st = store.stats();
            println!(
                "write: {} blocks of {} B in {:.2} s ({:.0} puts/s, {:.0} MiB/s on disk), {} segments, {} MiB",
                st.blocks,
                block_bytes,
                secs,
                blocks as f64 / secs,
                st.used_bytes as f64 / secs / (1 << 20) as f64,
                st.segments,
                st.used_bytes >> 20
            );
        })
        .expect("executor")
        .join()
        .expect("executor thread");
}

fn open_phase(a: &Args) {
    let (dir, blocks) = (a.dir.clone(), a.blocks);
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let rss_before = rss_bytes();
            let started = Instant::now();
            let (store, report) = Store::open(cfg(&dir)).await.expect("open");
            let wall_us = started.elapsed().as_micros();
            let rss_after = rss_bytes();
            let st = store.stats();
            let table = store.index_allocated_bytes();
            println!("restart: {wall_us} us wall, report {report:?}");
            println!(
                "index: {} blocks, hash table {} MiB = {:.1} B/block (capacity x (16 B entry + 1 control byte)), RSS delta {} MiB = {:.1} B/block",
                st.blocks,
                table >> 20,
                table as f64 / st.blocks.max(1) as f64,
                (rss_after.saturating_sub(rss_before)) >> 20,
                rss_after.saturating_sub(rss_before) as f64 / st.blocks.max(1) as f64
            );
            assert_eq!(st.blocks, blocks, "blocks lost across the restart");
            for i in (0..blocks).step_by((blocks / 1000).max(1) as usize) {
                let k = key(i);
                let b = store.get(xxhash_rust::xxh3::xxh3_64(&k), &k).await.expect("get").expect("hit");
                assert!(b.data().iter().all(|&x| x == 0x5a));
            }
            println!("verified 1000 sampled blocks");
        })
        .expect("executor")
        .join()
        .expect("executor thread");
}

fn main() {
    let a = parse_args();
    match a.phase.as_str() {
        "write" => write_phase(&a),
        "open" => open_phase(&a),
        _ => {
            write_phase(&a);
            // Reopen in a fresh process so the RSS delta is not hidden by
            // memory the writer freed.
            let status = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(["--phase", "open", "--dir"])
                .arg(&a.dir)
                .args(["--blocks", &a.blocks.to_string()])
                .status()
                .expect("spawn open phase");
            if !a.keep {
                let _ = std::fs::remove_dir_all(&a.dir);
            }
            assert!(status.success(), "open phase failed");
        }
    }
}
