//! `stoker serve` as a process on a generated tree, read through client-lib
//! from several threads and several processes, every byte compared; the CLI's
//! read commands and its one-line errors.

mod common;

use common::*;
use std::time::Duration;

fn sizes() -> Vec<usize> {
    // Hundreds of files from 0 B to 9 MiB: boundaries around 4 KiB and the
    // 4 MiB block, and a spread of small ones.
    let mut v = vec![0, 1, 4095, 4096, 4097, (4 << 20) - 1, 4 << 20, (4 << 20) + 1, 9 << 20];
    v.extend((0..300).map(|i| (i * 7919) % 300_000));
    v
}

#[test]
fn serve_reads_every_byte_from_threads_and_processes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src, &sizes(), 11);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let srv = Server::start(
        &dir.path().join("cache"),
        &sock,
        &["--shards", "2", "--capacity", "1G", "--segment-size", "16M", "--mount", &format!("m=file://{}", src.display())],
    );

    // Several processes at once, each verifying every byte of every file.
    let procs: Vec<_> = (0..3)
        .map(|i| {
            stoker()
                .args(["bench", "epoch", "--source", src.to_str().unwrap(), "--prefix", "/m", "--targets", "stoker"])
                .args(["--verify", "--threads", "4", "--seed", &i.to_string(), "--json", "--socket", &sock])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // And several threads in this process.
    let c = srv.client();
    std::thread::scope(|s| {
        for t in 0..6 {
            let (c, tree) = (&c, &tree);
            s.spawn(move || {
                for (rel, data) in tree.iter().skip(t).step_by(2) {
                    let got = c.read_file(&format!("/m/{rel}")).unwrap();
                    assert!(got == *data, "bytes differ for {rel} ({} vs {} bytes)", got.len(), data.len());
                }
            });
        }
    });
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "reader process failed: {}", String::from_utf8_lossy(&out.stderr));
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reports[0]["files"], tree.len());
        assert_eq!(reports[0]["errors"], 0);
    }

    let s = c.engine_stats().unwrap();
    let total: u64 = tree.iter().map(|(_, d)| d.len() as u64).sum();
    assert!(s.hits > 0 && s.misses > 0, "{s:?}");
    assert!(s.ufs_bytes_read <= total, "under storage read {} for a {total}-byte tree", s.ufs_bytes_read);
    assert!(s.used_bytes >= total, "cache holds {} of {total}", s.used_bytes);

    // stoker stat --json carries the documented fields, engine-wide and per shard.
    let out = run(&["stat", "--json", "--socket", &sock]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for f in ["capacity_bytes", "used_bytes", "blocks", "hits", "misses", "ufs_bytes_read"] {
        assert!(j[f].as_u64().is_some(), "stat --json lacks {f}: {j}");
        assert!(j["shards"][1][f].as_u64().is_some(), "per-shard stat lacks {f}");
    }
    // The asked capacity, unless the cache dir's filesystem holds less
    // (then it is clamped to what it holds at start-up).
    let cap = j["capacity_bytes"].as_u64().unwrap();
    let free = nix::sys::statvfs::statvfs(dir.path()).map(|v| v.blocks_available() as u64 * v.fragment_size() as u64).unwrap();
    if free > 4 << 30 {
        assert_eq!(cap, 1u64 << 30);
    } else {
        assert!(cap > 0 && cap <= 1u64 << 30, "capacity {cap}");
    }

    // cat and ls.
    let (rel, data) = &tree[7];
    let out = run(&["cat", &format!("/m/{rel}"), "--socket", &sock]);
    assert!(out.status.success());
    assert!(out.stdout == *data, "cat returned other bytes");
    let out = run(&["ls", "/m", "--socket", &sock]);
    let names: Vec<_> = String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
    assert_eq!(names, ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]);
    // ls -R: every file by full path, sorted, sizes with -l.
    let out = run(&["ls", "-R", "-l", "/m", "--socket", &sock]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
    let mut want: Vec<(String, usize)> = tree.iter().map(|(r, d)| (format!("/m/{r}"), d.len())).collect();
    want.sort();
    let want: Vec<String> = want.iter().map(|(p, n)| format!("- {n:>14} {p}")).collect();
    assert_eq!(got, want);
    drop(c);
    srv.stop();
}

fn one_line_error(out: &std::process::Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].contains(needle), "{needle:?} not in {:?}", lines[0]);
}

#[test]
fn bad_input_gives_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, &[10, 20], 1);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let cache = dir.path().join("cache");
    let cache_s = cache.to_str().unwrap();
    let mount = format!("m=file://{}", src.display());

    // Engine not running.
    one_line_error(&run(&["stat", "--socket", &sock]), "is `stoker serve` running");
    // Bad size, bad URI, bad mount syntax.
    one_line_error(&run(&["serve", "--cache-dir", cache_s, "--socket", &sock, "--capacity", "12X", "--mount", &mount]), "unknown unit");
    one_line_error(&run(&["serve", "--cache-dir", cache_s, "--socket", &sock, "--mount", "m=ftp://x/y"]), "not supported");
    one_line_error(&run(&["serve", "--cache-dir", cache_s, "--socket", &sock, "--mount", "m=/data"]), "file:///data");
    one_line_error(&run(&["serve", "--cache-dir", cache_s, "--socket", &sock, "--mount", "nomount"]), "NAME=URI");
    one_line_error(&run(&["serve", "--cache-dir", cache_s, "--socket", &sock, "--mount", "m=file:///does/not/exist"]), "No such file");

    let srv = Server::start(&cache, &sock, &["--shards", "2", "--capacity", "256M", "--mount", &mount]);
    // Missing path, directory, bad path.
    one_line_error(&run(&["cat", "/m/missing", "--socket", &sock]), "No such file");
    one_line_error(&run(&["cat", "/nope/x", "--socket", &sock]), "no such mount");
    one_line_error(&run(&["cat", "/m/c0", "--socket", &sock]), "directory");
    one_line_error(&run(&["ls", "relative", "--socket", &sock]), "must start with /");
    // A second engine on the same socket or the same cache dir is refused.
    one_line_error(&run(&["serve", "--cache-dir", "/tmp/other-cache-x", "--socket", &sock, "--mount", &mount]), "another stoker engine");
    let sock2 = dir.path().join("s2.sock").to_string_lossy().into_owned();
    one_line_error(&run(&["serve", "--cache-dir", cache_s, "--socket", &sock2, "--shards", "2", "--mount", &mount]), "in use");
    // The engine is unharmed by all of that.
    assert_eq!(srv.client().read_file("/m/c0/d0/f00000.bin").unwrap().len(), 10);
    srv.stop();
    // A restart with another shard count is refused rather than mis-routed.
    one_line_error(&run(&["serve", "--cache-dir", cache_s, "--socket", &sock, "--shards", "1", "--mount", &mount]), "--shards 2");
    let _ = Duration::ZERO;
}

#[test]
fn relative_cache_dir_and_socket_work() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ufs")).unwrap();
    std::fs::write(dir.path().join("ufs/a.txt"), b"relative").unwrap();
    let child = stoker()
        .current_dir(dir.path())
        .args(["serve", "--cache-dir", "cache", "--socket", "s.sock", "--capacity", "64M", "--segment-size", "16M"])
        .args(["--mount", &format!("m=file://{}", dir.path().join("ufs").display())])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mut srv = Server { child, socket, cache: dir.path().join("cache") };
    wait_for("the engine on a relative socket", Duration::from_secs(30), || {
        assert!(srv.child.try_wait().unwrap().is_none(), "stoker serve with a relative --cache-dir exited");
        stoker_client::Client::connect(&srv.socket).is_ok()
    });
    assert_eq!(srv.client().read_file("/m/a.txt").unwrap(), b"relative");
    assert!(dir.path().join("cache/stoker-v1").is_dir());
    srv.stop();
}
