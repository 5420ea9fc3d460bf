//! stoker over a real S3-compatible server (moto on 127.0.0.1): read-through
//! of a generated tree byte for byte, two mounts (S3 + local dir) in one
//! namespace, ranges across block boundaries, out-of-band rewrites against
//! the metadata sync interval, a 10,000-key listing, a server killed
//! mid-read, a read-only HTTP mount, and read-ahead of a large object
//! through a mount with its own block size.

mod common;
mod s3_support;

use common::*;
use s3_support::*;
use std::time::{Duration, Instant};

fn serve_args<'a>(extra: &'a [String], base: &'a [&'a str]) -> Vec<&'a str> {
    base.iter().copied().chain(extra.iter().map(String::as_str)).collect()
}

/// Upload `tree` (relative path, bytes) under `prefix/` in the store.
fn upload(store: &stoker_engine::ufs::blocking::BlockingStore, prefix: &str, tree: &[(String, Vec<u8>)]) {
    let items = tree.iter().map(|(rel, d)| (format!("{prefix}{rel}"), d.clone())).collect();
    store.put_many(items, 16).expect("upload");
}

#[test]
fn s3_tree_reads_byte_for_byte_beside_a_local_mount() {
    if !require_moto() {
        return;
    }
    let s3 = S3Server::start();
    s3.create_bucket("data");
    let dir = tempfile::tempdir().unwrap();
    // Sizes around the 1 MiB block and 4 KiB, and a spread of small ones.
    let mut sizes = vec![0, 1, 4095, 4096, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (3 << 20) + 12345];
    sizes.extend((0..120).map(|i| (i * 7919) % 200_000));
    let tree = make_tree(&dir.path().join("gen"), &sizes, 5);
    let store = s3.store("s3://data/");
    upload(&store, "train/", &tree);
    // The local mount: a different tree.
    let local = make_tree(&dir.path().join("local"), &[10, 5000, 70_000], 9);

    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mounts = s3.mount_args("s3", "s3://data/train");
    let local_mount = format!("loc=file://{}", dir.path().join("local").display());
    let base = ["--shards", "2", "--capacity", "1G", "--segment-size", "16M", "--block-size", "1M", "--mount", &local_mount];
    let srv = Server::start(&dir.path().join("cache"), &sock, &serve_args(&mounts, &base));
    let c = srv.client();

    // One namespace: both mounts at the root.
    let names: Vec<String> = c.list("/").unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["loc", "s3"]);
    let top: Vec<String> = c.list("/s3").unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(top, ["c0", "c1", "c2", "c3", "c4", "c5", "c6"], "directories from common prefixes");

    // Every byte of every object, from 4 threads; then again (now cached).
    for pass in 0..2 {
        std::thread::scope(|s| {
            for t in 0..4 {
                let (c, tree) = (&c, &tree);
                s.spawn(move || {
                    for (rel, data) in tree.iter().skip(t).step_by(4) {
                        let got = c.read_file(&format!("/s3/{rel}")).unwrap();
                        assert!(got == *data, "pass {pass}: bytes differ for {rel} ({} vs {})", got.len(), data.len());
                    }
                });
            }
        });
    }
    for (rel, data) in &local {
        assert_eq!(c.read_file(&format!("/loc/{rel}")).unwrap(), *data, "local {rel}");
    }
    let s = c.engine_stats().unwrap();
    let total: u64 = tree.iter().map(|(_, d)| d.len() as u64).sum::<u64>() + local.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
    assert!(s.hits > 0, "second pass must hit the cache: {s:?}");
    assert!(s.ufs_bytes_read <= total, "read {} from under storage for {total} bytes", s.ufs_bytes_read);

    // Ranges across the 1 MiB block boundaries of the largest object.
    let (rel, data) = tree.iter().max_by_key(|(_, d)| d.len()).unwrap();
    let path = format!("/s3/{rel}");
    assert_eq!(c.stat(&path).unwrap().size, data.len() as u64);
    for (off, len) in [(0u64, 1u64), ((1 << 20) - 10, 20), ((2 << 20) - 1, (1 << 20) + 2), (3 << 20, 20_000), (100, 3 << 20)] {
        let got = c.read(&path, off, len).unwrap();
        let end = (off + len).min(data.len() as u64) as usize;
        assert!(got == data[off as usize..end], "range {off}+{len} differs");
    }
    // Missing object and directory errors; the version is the ETag.
    assert_eq!(c.read_file("/s3/c0/missing.bin").unwrap_err().errno(), libc::ENOENT);
    assert!(c.stat(&path).unwrap().version.starts_with('e'), "version token from the ETag");

    // `stoker stat` and the server log never show the secret.
    let out = run(&["stat", &path, "--socket", &sock]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET_KEY));
    srv.stop();
}

#[test]
fn rewritten_object_is_seen_after_the_sync_interval_and_never_with_never() {
    if !require_moto() {
        return;
    }
    let s3 = S3Server::start();
    s3.create_bucket("bkt");
    let store = s3.store("s3://bkt/");
    let old = vec![1u8; 300_000];
    let new = vec![2u8; 300_000]; // same size: only the ETag tells them apart
    let dir = tempfile::tempdir().unwrap();

    for (sync, expect_change) in [("never", false), ("1s", true)] {
        store.put("obj.bin", old.clone()).unwrap();
        let sock = dir.path().join(format!("{sync}.sock")).to_string_lossy().into_owned();
        let mounts = s3.mount_args("s3", "s3://bkt");
        let cache = dir.path().join(format!("cache-{sync}"));
        let base = ["--shards", "1", "--capacity", "256M", "--segment-size", "16M", "--metadata-sync", sync];
        let srv = Server::start(&cache, &sock, &serve_args(&mounts, &base));
        let c = srv.client();
        assert_eq!(c.read_file("/s3/obj.bin").unwrap(), old);
        let v_old = c.stat("/s3/obj.bin").unwrap().version;
        store.put("obj.bin", new.clone()).unwrap();
        assert_ne!(store.stat("obj.bin").unwrap().version, v_old, "the store itself has the new version");

        let t0 = Instant::now();
        let mut seen_new_at = None;
        // Observe for 3 s (three sync intervals) with `never`, or until the
        // new bytes show with 1s; old bytes must never come back after new.
        while t0.elapsed() < Duration::from_secs(if expect_change { 30 } else { 3 }) {
            let got = c.read_file("/s3/obj.bin").unwrap();
            if got == new {
                seen_new_at.get_or_insert(t0.elapsed());
            } else {
                assert!(got == old, "neither old nor new bytes");
                assert!(seen_new_at.is_none(), "old bytes served again after the new ones");
            }
            if expect_change && seen_new_at.is_some() && t0.elapsed() > seen_new_at.unwrap() + Duration::from_millis(500) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if expect_change {
            let at = seen_new_at.expect("the rewrite was never seen with --metadata-sync 1s");
            assert!(at < Duration::from_secs(10), "seen only after {at:?}");
            assert_ne!(c.stat("/s3/obj.bin").unwrap().version, v_old);
        } else {
            assert!(seen_new_at.is_none(), "--metadata-sync never served the rewrite");
            assert_eq!(c.stat("/s3/obj.bin").unwrap().version, v_old);
        }
        srv.stop();
    }
}

#[test]
fn listing_of_ten_thousand_keys() {
    if !require_moto() {
        return;
    }
    let s3 = S3Server::start();
    s3.create_bucket("many");
    let store = s3.store("s3://many/");
    let n = 10_050;
    let items: Vec<(String, Vec<u8>)> = (0..n).map(|i| (format!("big/k{i:06}"), i.to_string().into_bytes())).collect();
    store.put_many(items, 32).unwrap();
    store.put("big/sub/x", b"x".to_vec()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mounts = s3.mount_args("s3", "s3://many");
    let base = ["--shards", "1", "--capacity", "256M", "--segment-size", "16M", "--metadata-sync", "never"];
    let srv = Server::start(&dir.path().join("cache"), &sock, &serve_args(&mounts, &base));
    let c = srv.client();
    let t0 = Instant::now();
    let entries = c.list("/s3/big").unwrap();
    let first = t0.elapsed();
    assert_eq!(entries.len(), n + 1, "every key once, plus the sub directory");
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n + 1, "no duplicates across pages");
    assert!(entries.iter().any(|e| e.name == "sub" && e.attr.kind == stoker_client::Kind::Dir));
    assert!(entries.iter().any(|e| e.name == "k010049" && e.attr.size == 5));
    let t1 = Instant::now();
    assert_eq!(c.list("/s3/big").unwrap().len(), n + 1);
    let second = t1.elapsed();
    eprintln!("listing {} keys: first {first:?}, cached {second:?}", n + 1);
    assert!(second < first, "the second listing comes from the namespace cache");
    // A listed object reads without another stat.
    assert_eq!(c.read_file("/s3/big/k000123").unwrap(), b"123");
    srv.stop();
}

#[test]
fn server_killed_mid_read_gives_an_error_then_recovers() {
    if !require_moto() {
        return;
    }
    let mut s3 = S3Server::start();
    s3.create_bucket("bkt");
    let data: Vec<u8> = (0..(24u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    s3.store("s3://bkt/").put("big.bin", data.clone()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mounts = s3.mount_args("s3", "s3://bkt");
    let base = ["--shards", "1", "--capacity", "512M", "--segment-size", "32M", "--block-size", "1M", "--ufs-timeout", "3s"];
    let srv = Server::start(&dir.path().join("cache"), &sock, &serve_args(&mounts, &base));
    let c = srv.client();
    // The first blocks arrive; then the server dies under the reader.
    assert!(c.read("/s3/big.bin", 0, 2 << 20).unwrap() == data[..2 << 20]);
    s3.kill();
    let t0 = Instant::now();
    let err = c.read("/s3/big.bin", 10 << 20, 1 << 20).expect_err("a read with the server gone must fail");
    assert!(t0.elapsed() < Duration::from_secs(20), "error took {:?}", t0.elapsed());
    assert!(err.errno() == libc::EIO || err.errno() == libc::ETIMEDOUT, "errno {} ({err})", err.errno());
    assert!(!err.to_string().contains(SECRET_KEY));
    // Cached blocks are still served while the store is down.
    assert!(c.read("/s3/big.bin", 0, 1 << 20).unwrap() == data[..1 << 20]);

    // Back (moto starts empty: the same object is put again); reads recover.
    s3.restart();
    s3.create_bucket("bkt");
    s3.store("s3://bkt/").put("big.bin", data.clone()).unwrap();
    let mut got = None;
    wait_for("reads to recover", Duration::from_secs(30), || {
        got = c.read("/s3/big.bin", 10 << 20, 1 << 20).ok();
        got.is_some()
    });
    assert!(got.unwrap() == data[10 << 20..11 << 20]);
    assert!(c.read_file("/s3/big.bin").unwrap() == data);
    srv.stop();
}

#[test]
fn http_read_only_mount() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    let tree = make_tree(&root, &[0, 10, 4096, 100_000, (1 << 20) + 7, (2 << 20) + 3], 3);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut http = std::process::Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory", root.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    wait_for("http.server", Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mount = format!("web=http://127.0.0.1:{port}/");
    let srv = Server::start(
        &dir.path().join("cache"),
        &sock,
        &["--shards", "1", "--capacity", "256M", "--segment-size", "16M", "--block-size", "1M", "--mount", &mount],
    );
    let c = srv.client();
    for (rel, data) in &tree {
        let got = c.read_file(&format!("/web/{rel}")).unwrap();
        assert!(got == *data, "bytes differ for {rel}");
    }
    // http.server ignores Range: a block in the middle is still right.
    let (rel, data) = tree.iter().max_by_key(|(_, d)| d.len()).unwrap();
    let got = c.read(&format!("/web/{rel}"), (1 << 20) - 5, 10).unwrap();
    assert!(got == data[(1 << 20) - 5..(1 << 20) + 5]);
    assert_eq!(c.read_file("/web/nope.bin").unwrap_err().errno(), libc::ENOENT);
    // No listing over plain HTTP: one clear error, not a hang or an empty dir.
    let err = c.list("/web/c0").unwrap_err();
    assert!(err.to_string().contains("cannot list"), "{err}");
    srv.stop();
    let _ = http.kill();
    let _ = http.wait();
}

#[test]
fn bad_s3_mounts_give_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let cache = dir.path().join("cache");
    let cache_s = cache.to_str().unwrap();
    let check = |args: &[&str], needle: &str| {
        let mut a = vec!["serve", "--cache-dir", cache_s, "--socket", &sock];
        a.extend_from_slice(args);
        let out = run(&a);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected one line for {args:?}, got: {err}");
        assert!(lines[0].contains(needle), "{needle:?} not in {:?}", lines[0]);
        assert!(!err.contains("hunter2"), "a secret leaked: {err}");
    };
    check(&["--mount", "d=s3://"], "s3://bucket/prefix");
    check(&["--mount", "d=s3://b/p?secret_access_key=hunter2"], "--mount-opt");
    check(&["--mount", "d=s3://b", "--mount-opt", "d:secret_acces_key=hunter2"], "unknown option");
    check(&["--mount", "d=s3://b", "--mount-opt", "x:region=eu"], "no --mount named");
    check(&["--mount", "d=s3://b", "--mount-opt", "d-region"], "NAME:key=value");
    check(&["--mount", "d=s3://b", "--mount-opt", "d:concurrency=0"], "concurrency");
    check(&["--mount", "d=gopher://b"], "not supported");
}

/// A large object from S3 read in order: each block is one ranged GET, and
/// reading blocks 0 and 1 fetches 2 and 3 ahead (64 KiB blocks for this
/// mount only); a mount without read-ahead caches only what was read.
#[test]
fn s3_large_object_read_ahead_and_mount_block_size() {
    if !require_moto() {
        return;
    }
    let s3 = S3Server::start();
    s3.create_bucket("big");
    let data: Vec<u8> = (0..16 * 65536u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    s3.store("s3://big/").put("obj.bin", data.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mut args: Vec<String> = ["--shards", "2", "--capacity", "256M", "--block-size", "1M", "--readahead-blocks", "4"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (name, ra) in [("ra", "4"), ("plain", "0")] {
        args.extend(s3.mount_args(name, "s3://big"));
        args.extend(["--mount-opt".into(), format!("{name}:block_size=64K")]);
        args.extend(["--mount-opt".into(), format!("{name}:readahead={ra}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let srv = Server::start(&dir.path().join("cache"), &sock, &args);
    let c = srv.client();
    let cached = |p: &str| {
        let out = run(&["stat", p, "--json", "--socket", &sock]);
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (j["blocks"].as_u64().unwrap(), j["cached_blocks"].as_u64().unwrap())
    };
    let settled = || c.engine_stats().unwrap().shards.iter().all(|s| s.pending_write_bytes == 0 && s.inflight_requests == 0);
    for m in ["ra", "plain"] {
        for b in 0..2u64 {
            let got = c.read(&format!("/{m}/obj.bin"), b * 65536, 65536).unwrap();
            assert!(got == data[(b * 65536) as usize..((b + 1) * 65536) as usize], "{m} block {b}");
        }
    }
    wait_for("read-ahead from S3 to land", Duration::from_secs(30), || settled() && cached("/ra/obj.bin").1 >= 4);
    assert_eq!(cached("/ra/obj.bin"), (16, 4), "blocks 0-3 of 16");
    assert_eq!(cached("/plain/obj.bin"), (16, 2), "no read-ahead: only what was read");
    // Whole object: the rest comes in 64 KiB ranged GETs; bytes match.
    assert!(c.read_file("/ra/obj.bin").unwrap() == data);
    srv.stop();
}
