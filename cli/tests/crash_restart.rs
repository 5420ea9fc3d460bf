//! kill -9 the engine in the middle of `stoker load`, restart it on the same
//! cache dir: sealed segments come back from their index archives without a
//! data rescan, and every byte served afterwards is right. Then damage a
//! sealed segment on disk: the damaged record is refused and refetched.

mod common;

use common::*;
use std::time::Duration;
use stoker_client::Client;

const SEGMENT: u64 = 2 << 20;

fn verify_all(c: &Client, tree: &[(String, Vec<u8>)]) {
    for (rel, data) in tree {
        let got = c.read_file(&format!("/m/{rel}")).unwrap();
        assert!(got == *data, "wrong bytes for {rel} after restart");
    }
}

#[test]
fn kill9_during_load_then_restart_serves_right_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let sizes: Vec<usize> = (0..600).map(|i| 100_000 + (i * 7919) % 100_000).collect();
    let tree = make_tree(&src, &sizes, 3);
    let cache = dir.path().join("cache");
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mount = format!("m=file://{}", src.display());
    let args = ["--shards", "2", "--capacity", "1G", "--block-size", "1M", "--segment-size", "2M", "--mount", &mount];

    let srv = Server::start(&cache, &sock, &[&args[..], &["--ufs-latency", "5ms"]].concat());
    let mut load = stoker()
        .args(["load", "/m", "--parallel", "4", "--socket", &sock])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let c = srv.client();
    wait_for("200 cached blocks", Duration::from_secs(60), || c.engine_stats().unwrap().blocks >= 200);
    drop(c);
    srv.kill9();
    // The loader notices and fails with a message instead of hanging.
    let out = {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(st) = load.try_wait().unwrap() {
                break st;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "stoker load hung after the engine died");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(!out.success(), "load must fail when the engine dies under it");

    let srv = Server::start(&cache, &sock, &args);
    let c = srv.client();
    let s = c.engine_stats().unwrap();
    assert!(s.blocks >= 150, "blocks lost in the crash: {} left", s.blocks);
    assert!(s.recovery.sealed_segments >= 10, "sealed segments not recovered: {:?}", s.recovery);
    // Only the open segment of each shard is scanned, never sealed data.
    assert!(s.recovery.open_segment_bytes_scanned <= 2 * SEGMENT, "{:?}", s.recovery);
    let ufs_before = s.ufs_bytes_read;
    // No listing first: the attributes persisted before the crash tell which
    // version each cached block belongs to, so cached files are not refetched.
    verify_all(&c, &tree);
    let s = c.engine_stats().unwrap();
    assert!(s.hits >= 150, "recovered blocks were not served: {s:?}");
    assert!(s.ufs_bytes_read > ufs_before, "files not loaded before the crash must be fetched");
    let total: u64 = tree.iter().map(|(_, d)| d.len() as u64).sum();
    assert!(s.ufs_bytes_read - ufs_before < total, "every file was refetched after the restart");
    assert_eq!(c.walk("/m").unwrap().len(), tree.len());
    drop(c);
    srv.stop();

    // Damage one record's data in the oldest sealed segment of shard 0.
    let shard_dir = cache.join("stoker-v1/shard-000");
    let mut segs: Vec<_> = std::fs::read_dir(&shard_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .collect();
    segs.sort();
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[8192 + 100] ^= 0xff; // inside the first record's data (>= 8 KiB long)
    std::fs::write(&segs[0], &bytes).unwrap();

    let srv = Server::start(&cache, &sock, &args);
    let c = srv.client();
    verify_all(&c, &tree);
    let s = c.engine_stats().unwrap();
    let corrupt: u64 = s.shards.iter().map(|sh| sh.corrupt_records).sum();
    assert!(corrupt >= 1, "the damaged record was not detected: {s:?}");
    drop(c);
    srv.stop();
}

#[test]
fn start_waits_for_the_lock_of_an_engine_still_exiting_then_gives_up_clearly() {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, &[100], 3);
    let cache = dir.path().join("cache");
    let root = cache.join(stoker_engine::CACHE_LAYOUT_DIR);
    std::fs::create_dir_all(&root).unwrap();
    // Stand in for an engine being torn down: hold the cache dir's lock.
    let lock = std::fs::File::create(root.join("lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mount = format!("m=file://{}", src.display());
    let start = || {
        stoker()
            .args(["serve", "--log-level", "info", "--cache-dir", cache.to_str().unwrap(), "--socket", &sock, "--mount", &mount])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Released while the new engine waits: it comes up.
    let mut child = start();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("waiting up to") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "serve exited without waiting for the lock");
    }
    drop(lock);
    wait_for("the engine to come up after the lock was released", Duration::from_secs(30), || Client::connect(&sock).is_ok());
    let _ = child.kill();
    let _ = child.wait();
    // Held for good: a clear one-line error and a non-zero exit after the bounded wait.
    let lock = std::fs::File::create(root.join("lock")).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let out = start().wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is in use by another stoker engine (waited"), "{stderr}");
    drop(lock);
}
