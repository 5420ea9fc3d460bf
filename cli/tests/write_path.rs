//! The write path against a real `stoker serve`: write modes, durability
//! across kill -9, persisting to a slow or failing under storage, `stoker
//! sync` and the stats it is watched by (docs/SEMANTICS.md, "Writes").

mod common;
mod s3_support;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn data(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((j * 31 + i * 7 + j / 251) % 256) as u8).collect()
}

/// A local-directory mount `m` with `write=MODE` behind `latency`.
fn serve(dir: &Path, mode: &str, latency: &str) -> Server {
    let ufs = dir.join("ufs");
    std::fs::create_dir_all(&ufs).unwrap();
    let sock = dir.join("s.sock").to_string_lossy().into_owned();
    let mount = format!("m=file://{}", ufs.display());
    let opt = format!("m:write={mode}");
    Server::start(
        &dir.join("cache"),
        &sock,
        &["--shards", "2", "--capacity", "256M", "--segment-size", "16M", "--mount", &mount, "--mount-opt", &opt, "--ufs-latency", latency],
    )
}

fn sync(sock: &str, path: &str) -> std::process::Output {
    run(&["sync", "--socket", sock, path])
}

#[test]
fn async_writes_read_back_at_once_and_sync_persists_them() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), "async", "400ms");
    let c = srv.client();
    let files: Vec<(String, Vec<u8>)> = (0..6).map(|i| (format!("f{i}.bin"), data(i, [0, 1, 4095, 70_000, 1 << 20, 5 << 20][i]))).collect();
    for (name, d) in &files {
        let a = c.write_file(&format!("/m/{name}"), d).unwrap();
        assert_eq!(a.size, d.len() as u64);
    }
    // Readable and listed before under storage has them.
    let s = c.engine_stats().unwrap();
    assert!(s.persist_pending_files > 0, "the slow store has not taken them all yet: {s:?}");
    for (name, d) in &files {
        assert!(c.read_file(&format!("/m/{name}")).unwrap() == *d, "{name} read back before persisted");
        assert_eq!(c.stat(&format!("/m/{name}")).unwrap().size, d.len() as u64);
    }
    let names: Vec<String> = c.list("/m").unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, files.iter().map(|f| f.0.clone()).collect::<Vec<_>>());

    let out = sync(&srv.socket, "/m");
    assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
    for (name, d) in &files {
        assert!(std::fs::read(dir.path().join("ufs").join(name)).unwrap() == *d, "{name} in under storage");
    }
    let s = c.engine_stats().unwrap();
    assert_eq!((s.persist_pending_files, s.persist_pending_bytes), (0, 0));
    // Still readable, now from under storage; the JSON shows the counters.
    for (name, d) in &files {
        assert!(c.read_file(&format!("/m/{name}")).unwrap() == *d, "{name} after persist");
    }
    let json = run(&["stat", "--json", "--socket", &srv.socket]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["persist_pending_files"].as_u64(), Some(0));
    assert_eq!(v["persist_pending_bytes"].as_u64(), Some(0));
    assert_eq!(v["mounts"][0]["write"].as_str(), Some("async"));
    // Directories: made at once; not removed while anything is in them.
    c.mkdir("/m/dd").unwrap();
    assert_eq!(c.mkdir("/m/dd").unwrap_err().errno(), libc::EEXIST);
    assert!(dir.path().join("ufs/dd").is_dir());
    c.write_file("/m/dd/x.bin", b"x").unwrap();
    assert_eq!(c.rmdir("/m/dd").unwrap_err().errno(), libc::ENOTEMPTY);
    c.unlink("/m/dd/x.bin").unwrap();
    c.rmdir("/m/dd").unwrap();
    assert!(!dir.path().join("ufs/dd").exists());
    // Rename of a stored file, and of a written one replacing another.
    c.rename("/m/f2.bin", "/m/g2.bin").unwrap();
    assert!(std::fs::read(dir.path().join("ufs/g2.bin")).unwrap() == files[2].1);
    assert!(!dir.path().join("ufs/f2.bin").exists());
    c.write_file("/m/new.tmp", b"new").unwrap();
    c.rename("/m/new.tmp", "/m/g2.bin").unwrap();
    assert_eq!(c.read_file("/m/g2.bin").unwrap(), b"new");
    assert_eq!(c.stat("/m/new.tmp").unwrap_err().errno(), libc::ENOENT);
    assert!(sync(&srv.socket, "/m").status.success());
    assert_eq!(std::fs::read(dir.path().join("ufs/g2.bin")).unwrap(), b"new");
    assert!(!dir.path().join("ufs/new.tmp").exists());
    // Removing one removes it from under storage too.
    c.unlink("/m/f1.bin").unwrap();
    assert!(!dir.path().join("ufs/f1.bin").exists());
    assert_eq!(c.stat("/m/f1.bin").unwrap_err().errno(), libc::ENOENT);
    srv.stop();
}

#[test]
fn acknowledged_writes_survive_kill_9_and_are_persisted_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), "async", "2s");
    let c = srv.client();
    let files: Vec<(String, Vec<u8>)> = (0..8).map(|i| (format!("d/k{i}.bin"), data(i + 10, 3000 + i * 50_000))).collect();
    for (name, d) in &files {
        c.write_file(&format!("/m/{name}"), d).unwrap();
    }
    // An unfinished file (never closed) must not appear after the crash.
    let h = c.create("/m/d/unfinished.bin", 0o644, 0, 0).unwrap();
    c.write_at(h, 0, b"partial").unwrap();
    drop(c);
    srv.kill9();
    assert!(!dir.path().join("ufs/d/k0.bin").exists(), "the 2 s store cannot have been written yet");

    let srv = serve(dir.path(), "async", "50ms");
    let c = srv.client();
    for (name, d) in &files {
        assert!(c.read_file(&format!("/m/{name}")).unwrap() == *d, "{name} after kill -9");
    }
    assert_eq!(c.stat("/m/d/unfinished.bin").unwrap_err().errno(), libc::ENOENT);
    let out = sync(&srv.socket, "/m/d");
    assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
    for (name, d) in &files {
        assert!(std::fs::read(dir.path().join("ufs").join(name)).unwrap() == *d, "{name} persisted after restart");
    }
    assert!(!dir.path().join("ufs/d/unfinished.bin").exists());
    assert_eq!(c.engine_stats().unwrap().persist_pending_files, 0);
    srv.stop();
}

#[test]
fn through_mode_close_returns_once_under_storage_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), "through", "100ms");
    let c = srv.client();
    let d = data(3, 200_000);
    let t0 = Instant::now();
    c.write_file("/m/t.bin", &d).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(100), "close waited for the store");
    assert!(std::fs::read(dir.path().join("ufs/t.bin")).unwrap() == d, "in under storage when close returned");
    assert_eq!(c.engine_stats().unwrap().persist_pending_files, 0);
    assert!(c.read_file("/m/t.bin").unwrap() == d);

    // Nothing goes under a file.
    let e = c.create("/m/t.bin/inner", 0o644, 0, 0).unwrap_err();
    assert_eq!(e.errno(), libc::ENOTDIR, "{e}");

    // fsync of a file being written: under storage has the bytes so far.
    let h = c.create("/m/f.bin", 0o644, 0, 0).unwrap();
    c.write_at(h, 0, &d[..150_000]).unwrap();
    c.fsync_write(h).unwrap();
    assert!(std::fs::read(dir.path().join("ufs/f.bin")).unwrap() == d[..150_000], "fsync stored the bytes so far");
    c.write_at(h, 150_000, &d[150_000..]).unwrap();
    c.close_write(h).unwrap();
    assert!(std::fs::read(dir.path().join("ufs/f.bin")).unwrap() == d, "close stored the whole file");
    srv.stop();
}

#[test]
fn cache_only_never_reaches_under_storage_and_read_only_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), "cache-only", "0ms");
    let c = srv.client();
    let d = data(4, 100_000);
    c.write_file("/m/scratch.bin", &d).unwrap();
    assert!(sync(&srv.socket, "/m").status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!dir.path().join("ufs/scratch.bin").exists());
    assert!(c.read_file("/m/scratch.bin").unwrap() == d);
    // Writes are sequential: any other offset is refused.
    let h = c.create("/m/seq.bin", 0o644, 0, 0).unwrap();
    c.write_at(h, 0, b"abc").unwrap();
    assert_eq!(c.write_at(h, 10, b"x").unwrap_err().errno(), libc::EOPNOTSUPP);
    assert_eq!(c.write_at(h, 0, b"x").unwrap_err().errno(), libc::EOPNOTSUPP);
    c.close_write(h).unwrap();
    assert_eq!(c.read_file("/m/seq.bin").unwrap(), b"abc");
    drop(c);
    srv.stop();
    // Kept across a restart, still never persisted.
    let srv = serve(dir.path(), "cache-only", "0ms");
    let c = srv.client();
    assert!(c.read_file("/m/scratch.bin").unwrap() == d);
    assert!(!dir.path().join("ufs/scratch.bin").exists());
    drop(c);
    srv.stop();

    // Without write= the mount is read-only, as before.
    let ro = tempfile::tempdir().unwrap();
    let ufs = ro.path().join("ufs");
    std::fs::create_dir_all(&ufs).unwrap();
    let sock = ro.path().join("s.sock").to_string_lossy().into_owned();
    let srv = Server::start(&ro.path().join("cache"), &sock, &["--shards", "1", "--mount", &format!("m=file://{}", ufs.display())]);
    let e = srv.client().write_file("/m/x", b"x").unwrap_err();
    assert_eq!(e.errno(), libc::EROFS, "{e}");
    srv.stop();
}

#[test]
fn a_failing_store_keeps_files_pending_and_sync_names_them_until_it_is_back() {
    use s3_support::*;
    if !require_moto() {
        return;
    }
    let mut s3 = S3Server::start();
    s3.create_bucket("bkt");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mut args: Vec<String> = s3.mount_args("s3", "s3://bkt");
    for a in ["--shards", "1", "--ufs-timeout", "3s", "--mount-opt", "s3:write=async"] {
        args.push(a.into());
    }
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let srv = Server::start(&dir.path().join("cache"), &sock, &argv);
    let c = srv.client();
    s3.kill();
    let d = data(5, 300_000);
    c.write_file("/s3/out/part-0.bin", &d).unwrap();
    assert!(c.read_file("/s3/out/part-0.bin").unwrap() == d, "served from the cache while the store is down");
    let out = sync(&sock, "/s3/out");
    assert!(!out.status.success(), "sync must fail while the store is down");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/s3/out/part-0.bin"), "sync names the file: {err}");
    assert!(!err.contains(SECRET_KEY));
    let s = c.engine_stats().unwrap();
    assert_eq!((s.persist_pending_files, s.persist_pending_bytes), (1, d.len() as u64));
    assert_eq!(s.persist_failed_files, 1);

    s3.restart();
    s3.create_bucket("bkt");
    let out = sync(&sock, "/s3");
    assert!(out.status.success(), "sync once the store is back: {}", String::from_utf8_lossy(&out.stderr));
    let (_, got) = s3.store("s3://bkt/").read_all("out/part-0.bin").unwrap();
    assert!(got == d, "byte-exact in the bucket");
    assert_eq!(c.engine_stats().unwrap().persist_pending_files, 0);
    srv.stop();
}
