//! pin / unpin / free / ttl / stat PATH against a real `stoker serve`:
//! a pin survives an eviction storm and a restart, pinning beyond capacity is
//! refused, free drops exactly the prefix, a TTL expires blocks.

mod common;

use common::*;
use std::time::Duration;
use stoker_client::Client;

fn write_dir(root: &std::path::Path, dir: &str, n: usize, size: usize) {
    let sizes = vec![size; n];
    let tmp = root.join(format!(".gen-{dir}"));
    for (rel, data) in make_tree(&tmp, &sizes, dir.len() as u64) {
        let name = rel.replace('/', "_");
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join(name), data).unwrap();
    }
    std::fs::remove_dir_all(tmp).unwrap();
}

fn read_dir(c: &Client, dir: &str) {
    for e in c.list(dir).unwrap() {
        c.read_file(&format!("{dir}/{}", e.name)).unwrap();
    }
}

fn path_stat(sock: &str, path: &str) -> serde_json::Value {
    let out = run(&["stat", path, "--json", "--socket", sock]);
    assert!(out.status.success(), "stat {path}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Blocks are written in the background after a read: wait until all are in.
fn wait_cached(sock: &str, path: &str) {
    wait_for(&format!("{path} fully cached"), Duration::from_secs(20), || path_stat(sock, path)["cached_fraction"] == 1.0);
}

/// Wait until every fetched block has been written (or dropped) by the store,
/// so eviction has really happened before anything is checked.
fn settle(c: &Client) {
    wait_for("background writes", Duration::from_secs(30), || {
        c.engine_stats().unwrap().shards.iter().all(|s| s.pending_write_bytes == 0)
    });
}

fn ok(args: &[&str]) {
    let out = run(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn pin_free_ttl_and_path_stat() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_dir(&src, "hot", 10, 500_000);
    write_dir(&src, "hot2", 10, 500_000);
    write_dir(&src, "cold", 200, 500_000);
    for d in ["a", "ab", "t", "u"] {
        write_dir(&src, d, 3, 100_000);
    }
    let cache = dir.path().join("cache");
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mount = format!("m=file://{}", src.display());
    let args = ["--shards", "2", "--capacity", "64M", "--block-size", "1M", "--segment-size", "2M", "--mount", &mount];
    let srv = Server::start(&cache, &sock, &args);
    let c = srv.client();

    // Pinning more than half the capacity is refused, with a reason.
    let out = run(&["pin", "/m", "--socket", &sock]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than half the cache capacity"));

    ok(&["pin", "/m/hot", "--socket", &sock]);
    read_dir(&c, "/m/hot");
    read_dir(&c, "/m/hot2");
    wait_cached(&sock, "/m/hot");
    wait_cached(&sock, "/m/hot2");
    // Eviction storm: 100 MB through a 64 MB cache.
    read_dir(&c, "/m/cold");
    settle(&c);
    let evicted: u64 = c.engine_stats().unwrap().shards.iter().map(|s| s.evicted_blocks).sum();
    assert!(evicted > 0, "no eviction storm happened ({evicted} evicted)");
    let hot = path_stat(&sock, "/m/hot");
    assert_eq!(hot["pinned"], true);
    assert_eq!(hot["cached_fraction"], 1.0, "pinned blocks were evicted: {hot}");
    let hot2 = path_stat(&sock, "/m/hot2")["cached_fraction"].as_f64().unwrap();
    assert!(hot2 < 1.0, "the unpinned twin survived too, so the storm proves nothing");

    // Restart: the pin persists and still holds through another storm.
    drop(c);
    srv.stop();
    let srv = Server::start(&cache, &sock, &args);
    let c = srv.client();
    assert_eq!(path_stat(&sock, "/m/hot")["pinned"], true);
    read_dir(&c, "/m/cold");
    read_dir(&c, "/m/hot2");
    read_dir(&c, "/m/cold");
    settle(&c);
    assert_eq!(path_stat(&sock, "/m/hot")["cached_fraction"], 1.0, "pin lost across restart");

    // free drops exactly the prefix (/m/a, not /m/ab).
    read_dir(&c, "/m/a");
    read_dir(&c, "/m/ab");
    wait_cached(&sock, "/m/a");
    wait_cached(&sock, "/m/ab");
    ok(&["free", "/m/a", "--socket", &sock]);
    assert_eq!(path_stat(&sock, "/m/a")["cached_fraction"], 0.0);
    assert_eq!(path_stat(&sock, "/m/ab")["cached_fraction"], 1.0);
    // Freed data is read again correctly from under storage.
    read_dir(&c, "/m/a");
    wait_cached(&sock, "/m/a");

    // TTL: /m/t expires, /m/u (no TTL) stays.
    ok(&["ttl", "/m/t", "3s", "--socket", &sock]);
    read_dir(&c, "/m/u");
    wait_cached(&sock, "/m/u");
    read_dir(&c, "/m/t");
    wait_cached(&sock, "/m/t");
    assert_eq!(path_stat(&sock, "/m/t")["ttl_secs"], 3);
    let expired = || c.engine_stats().unwrap().shards.iter().map(|s| s.expired_blocks).sum::<u64>();
    wait_for("TTL expiry", Duration::from_secs(30), || expired() >= 3);
    assert_eq!(path_stat(&sock, "/m/t")["cached_fraction"], 0.0);
    assert_eq!(path_stat(&sock, "/m/u")["cached_fraction"], 1.0);

    // unpin, then errors are one line.
    ok(&["unpin", "/m/hot", "--socket", &sock]);
    assert_eq!(path_stat(&sock, "/m/hot")["pinned"], false);
    let out = run(&["ttl", "/m/t", "soon", "--socket", &sock]);
    assert!(!out.status.success());
    let out = run(&["free", "/m/missing", "--socket", &sock]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
    drop(c);
    srv.stop();
}
