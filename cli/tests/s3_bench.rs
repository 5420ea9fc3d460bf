//! Measurements against the local S3 server (ignored by default; run in
//! release, see docs/STORAGE.md "Measured here"):
//!
//! - cold pass of a `stoker bench gen` dataset uploaded to the server:
//!   through stoker (`stoker bench epoch --targets stoker --threads 32`)
//!   against a 32-way direct S3 reader (the same OpenDAL code, no cache),
//!   same server, same run;
//! - listing time of a 100,000-key directory, first and after a restart.
//!
//! `STOKER_BENCH_FILES` (default 20000) and `STOKER_BENCH_KEYS` (default
//! 100000) scale them down for a quick look; `STOKER_BENCH_SERVE_ARGS` adds
//! engine flags to the cold pass (e.g. `--shards 1`); `STOKER_S3_SERVER=s3s-fs`
//! runs s3s-fs instead of moto.

mod common;
mod s3_support;

use common::*;
use s3_support::*;
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Put `items` into the bucket: as files when the server is s3s-fs (it
/// serves a directory), else uploaded 32 at a time.
fn put_all(s3: &S3Server, items: Vec<(String, Vec<u8>)>) {
    match s3.bucket_dir("bench") {
        Some(root) => {
            for (rel, data) in items {
                let p = root.join(&rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, data).unwrap();
            }
        }
        None => BlockingStore_open(s3).put_many(items, 32).unwrap(),
    }
}

fn server_name() -> &'static str {
    if use_s3s_fs() { "s3s-fs" } else { "moto" }
}

/// Cold means cold: the server's files out of the page cache (root only;
/// a no-op elsewhere, said once).
fn drop_page_cache() {
    let ok = std::process::Command::new("sh")
        .args(["-c", "sync && echo 3 > /proc/sys/vm/drop_caches"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("note: cannot drop the page cache (not root?)");
    }
}

#[test]
#[ignore]
fn s3_cold_pass_stoker_vs_direct() {
    assert!(require_moto());
    let files = env_usize("STOKER_BENCH_FILES", 20_000);
    let s3 = S3Server::start();
    s3.create_bucket("bench");
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = dir.path().join("src");
    let out = run(&["bench", "gen", src.to_str().unwrap(), "--files", &files.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rels = files_under(&src);
    let bytes: u64 = rels.iter().map(|r| std::fs::metadata(src.join(r)).unwrap().len()).sum();
    let store = BlockingStore_open(&s3);
    let t = Instant::now();
    let items: Vec<_> = rels.iter().map(|r| (r.clone(), std::fs::read(src.join(r)).unwrap())).collect();
    put_all(&s3, items);
    eprintln!("upload: {} files, {:.1} MiB in {:.1}s", rels.len(), bytes as f64 / 1048576.0, t.elapsed().as_secs_f64());

    // Direct: 32 reads in flight, each a whole-object GET.
    drop_page_cache();
    let t = Instant::now();
    let got = store.read_parallel(&rels, 32).unwrap();
    let direct = t.elapsed().as_secs_f64();
    assert_eq!(got, bytes);

    // Through stoker, cold.
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mounts = s3.mount_args("s3", "s3://bench");
    let mut args: Vec<&str> = vec!["--capacity", "8G", "--metadata-sync", "never"];
    args.extend(mounts.iter().map(String::as_str));
    // `STOKER_BENCH_SERVE_ARGS="--shards 1"`: engine flags to compare.
    let extra = std::env::var("STOKER_BENCH_SERVE_ARGS").unwrap_or_default();
    args.extend(extra.split_whitespace());
    let srv = Server::start(&dir.path().join("cache"), &sock, &args);
    drop_page_cache();
    let out = stoker()
        .args(["bench", "epoch", "--source", src.to_str().unwrap(), "--prefix", "/s3", "--targets", "stoker"])
        .args(["--threads", "32", "--json", "--socket", &sock])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cold = &reports[0];
    let stoker_secs = cold["secs"].as_f64().unwrap();
    assert_eq!(cold["errors"], 0);
    let mib = bytes as f64 / 1048576.0;
    eprintln!(
        "RESULT [{}] cold pass {} files {:.1} MiB: direct-s3 32 threads {:.2}s ({:.0} files/s, {:.1} MiB/s); stoker {:.2}s ({:.0} files/s, {:.1} MiB/s); stoker/direct = {:.2}x",
        server_name(), rels.len(), mib, direct, rels.len() as f64 / direct, mib / direct,
        stoker_secs, rels.len() as f64 / stoker_secs, mib / stoker_secs, direct / stoker_secs
    );
    eprintln!("stoker report: {cold}");
    srv.stop();
}

#[allow(non_snake_case)]
fn BlockingStore_open(s3: &S3Server) -> stoker_engine::ufs::blocking::BlockingStore {
    stoker_engine::ufs::blocking::BlockingStore::open("s3://bench/", &s3.options(), 2).unwrap()
}

#[test]
#[ignore]
fn s3_listing_100k_first_and_after_restart() {
    assert!(require_moto());
    let keys = env_usize("STOKER_BENCH_KEYS", 100_000);
    let s3 = S3Server::start();
    s3.create_bucket("bench");
    let t = Instant::now();
    let items: Vec<_> = (0..keys).map(|i| (format!("many/k{i:07}"), vec![b'x'; 16])).collect();
    put_all(&s3, items);
    eprintln!("upload: {keys} keys in {:.1}s", t.elapsed().as_secs_f64());

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mounts = s3.mount_args("s3", "s3://bench");
    let mut args: Vec<&str> = vec!["--shards", "2", "--capacity", "1G", "--metadata-sync", "never"];
    args.extend(mounts.iter().map(String::as_str));
    let mut times = Vec::new();
    for start in 0..2 {
        let srv = Server::start(&dir.path().join("cache"), &sock, &args);
        let c = srv.client();
        for _ in 0..2 {
            let t = Instant::now();
            let n = c.list("/s3/many").unwrap().len();
            times.push((start, t.elapsed()));
            assert_eq!(n, keys);
        }
        srv.stop();
    }
    eprintln!(
        "RESULT [{}] listing {keys} keys: first {:?}, again {:?}; after restart: first {:?}, again {:?}",
        server_name(), times[0].1, times[1].1, times[2].1, times[3].1
    );
}
