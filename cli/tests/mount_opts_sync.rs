//! Per-mount options that belong to stoker, not to the under storage:
//! `--mount-opt NAME:sync=DUR|never` and `NAME:read_only=BOOL`.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Replace `rel` under `root` out of band: a new file renamed over the old
/// one (new inode and mtime, so a new version token; same size).
fn rewrite(root: &Path, rel: &str, data: &[u8]) {
    let tmp = root.join(format!(".{rel}.tmp"));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, root.join(rel)).unwrap();
}

fn names(c: &stoker_client::Client, path: &str) -> Vec<String> {
    let mut v: Vec<String> = c.list(path).unwrap().into_iter().map(|e| e.name).collect();
    v.sort();
    v
}

#[test]
fn two_mounts_one_never_one_1s_see_an_out_of_band_rewrite_differently() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let old = vec![1u8; 200_000];
    let new = vec![2u8; 200_000];
    std::fs::write(src.join("obj.bin"), &old).unwrap();
    let uri = format!("file://{}", src.display());
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    // `frozen` goes through OpenDAL (via=opendal), which refuses unknown
    // keys: serve starting at all shows `sync`/`read_only` never reach it.
    let args = [
        "--shards", "1", "--capacity", "256M", "--segment-size", "16M",
        // The engine-wide interval would re-check both mounts within the test.
        "--metadata-sync", "200ms",
        "--mount", &format!("frozen={uri}"),
        "--mount", &format!("live={uri}"),
        "--mount-opt", "frozen:via=opendal",
        "--mount-opt", "frozen:sync=never",
        "--mount-opt", "frozen:read_only=true",
        "--mount-opt", "live:sync=1s",
    ];
    let srv = Server::start(&dir.path().join("cache"), &sock, &args);
    let c = srv.client();
    assert_eq!(c.read_file("/frozen/obj.bin").unwrap(), old);
    assert_eq!(c.read_file("/live/obj.bin").unwrap(), old);
    assert_eq!(names(&c, "/frozen"), ["obj.bin"]);
    assert_eq!(names(&c, "/live"), ["obj.bin"]);
    let v_old = c.stat("/frozen/obj.bin").unwrap().version;
    // Both blocks in the cache before the rewrite: a miss would read the new
    // object whatever the interval.
    wait_for("both objects cached", Duration::from_secs(20), || c.engine_stats().unwrap().blocks >= 2);

    rewrite(&src, "obj.bin", &new);
    std::fs::write(src.join("added.bin"), b"late").unwrap();

    // `live` (1s) shows the rewrite and the new file after its interval.
    let t0 = Instant::now();
    wait_for("the rewrite on the 1s mount", Duration::from_secs(20), || {
        let got = c.read_file("/live/obj.bin").unwrap();
        assert!(got == old || got == new, "neither old nor new bytes on /live");
        got == new
    });
    let took = t0.elapsed();
    wait_for("the new file in the 1s mount's listing", Duration::from_secs(20), || {
        names(&c, "/live") == ["added.bin", "obj.bin"]
    });
    assert!(took < Duration::from_secs(10), "1s mount took {took:?} to see the rewrite");
    assert_ne!(c.stat("/live/obj.bin").unwrap().version, v_old);

    // `frozen` (never), checked after `live` has shown the change and after
    // more than one engine-wide interval (200ms) and one `live` interval: the
    // old bytes, version and listing, still.
    assert_eq!(c.read_file("/frozen/obj.bin").unwrap(), old, "sync=never served the rewrite");
    assert_eq!(c.stat("/frozen/obj.bin").unwrap().version, v_old);
    assert_eq!(names(&c, "/frozen"), ["obj.bin"], "sync=never relisted");
    srv.stop();
}

#[test]
fn bad_mount_options_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("file://{}", dir.path().display());
    let cache = dir.path().join("cache");
    let sock = dir.path().join("s.sock");
    for (opt, word) in [("m:sync=soon", "sync"), ("m:read_only=maybe", "read_only")] {
        let out = run(&[
            "serve", "--cache-dir", cache.to_str().unwrap(), "--socket", sock.to_str().unwrap(),
            "--shards", "1", "--capacity", "256M", "--mount", &format!("m={uri}"), "--mount-opt", opt,
        ]);
        assert!(!out.status.success(), "serve accepted --mount-opt {opt}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word) && err.contains("\"m\""), "error names the mount and key: {err}");
    }
}

#[test]
fn stat_shows_each_mount_with_its_settings_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let secret = "hunter2-DO-NOT-PRINT";
    // An S3 mount is built without contacting its endpoint: nothing need listen.
    let args = [
        "--shards", "1", "--capacity", "256M", "--block-size", "1M", "--metadata-sync", "5s",
        "--mount", &format!("local=file://{}", src.display()),
        "--mount", "remote=s3://bucket/prefix",
        "--mount-opt", "remote:endpoint=http://127.0.0.1:1",
        "--mount-opt", "remote:access_key_id=AKIDEXAMPLE",
        "--mount-opt", &format!("remote:secret_access_key={secret}"),
        "--mount-opt", "remote:read_only=true",
        "--mount-opt", "remote:sync=never",
        "--mount-opt", "remote:block_size=256K",
        "--mount-opt", "remote:concurrency=32",
    ];
    let srv = Server::start(&dir.path().join("cache"), &sock, &args);
    let out = run(&["stat", "--json", "--socket", &sock]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains(secret), "secret in stat --json: {text}");
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mounts = j["mounts"].as_array().unwrap();
    let m = |n: &str| mounts.iter().find(|m| m["name"] == n).unwrap().clone();
    let (l, r) = (m("local"), m("remote"));
    assert_eq!((l["read_only"].as_bool(), l["sync"].as_str(), l["block_bytes"].as_u64()), (Some(false), Some("5s"), Some(1 << 20)));
    assert_eq!((r["read_only"].as_bool(), r["sync"].as_str(), r["block_bytes"].as_u64()), (Some(true), Some("never"), Some(256 << 10)));
    assert_eq!(r["inflight_limit"].as_u64(), Some(32));
    assert_eq!(r["uri"], "s3://bucket/prefix");
    let opts = r["options"].as_array().unwrap();
    assert!(opts.iter().any(|o| o[0] == "secret_access_key" && o[1] == "***"), "{opts:?}");
    assert!(opts.iter().any(|o| o[0] == "access_key_id" && o[1] == "AKIDEXAMPLE"), "{opts:?}");
    let human = run(&["stat", "--socket", &sock]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(!human.contains(secret) && human.contains("mount /remote = s3://bucket/prefix") && human.contains("read-only"), "{human}");
    srv.stop();
}
