//! `stoker load` against a real `stoker serve`: plain progress lines when
//! stderr is not a terminal, a progress bar under a pseudo-terminal,
//! `--skip-cached`, `--verify`, and a failing file named in the summary.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const ARGS: [&str; 8] = ["--shards", "2", "--capacity", "64M", "--block-size", "1M", "--segment-size", "2M"];

struct Setup {
    _dir: tempfile::TempDir,
    src: std::path::PathBuf,
    sock: String,
    srv: Server,
    files: Vec<(String, Vec<u8>)>,
}

fn setup(sizes: &[usize], extra: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = make_tree(&src, sizes, 7);
    let cache = dir.path().join("cache");
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mount = format!("m=file://{}", src.display());
    let mut args: Vec<&str> = ARGS.to_vec();
    args.extend(["--mount", &mount]);
    args.extend(extra);
    let srv = Server::start(&cache, &sock, &args);
    Setup { _dir: dir, src, sock, srv, files }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn cached_fraction(sock: &str, path: &str) -> f64 {
    let out = run(&["stat", path, "--json", "--socket", sock]);
    assert!(out.status.success(), "stat {path}: {}", stderr_of(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["cached_fraction"].as_f64().unwrap()
}

/// Blocks are written in the background after a read: wait until all are in.
fn wait_cached(sock: &str, path: &str) {
    wait_for(&format!("{path} fully cached"), Duration::from_secs(30), || cached_fraction(sock, path) == 1.0);
}

#[test]
fn plain_lines_when_not_a_tty() {
    // 6 files of 1 block each, 400 ms per under-storage call, one at a time:
    // over two seconds, so at least one periodic progress line.
    let s = setup(&[300_000; 6], &["--ufs-latency", "400ms"]);
    let out = run(&["load", "/m", "--parallel", "1", "--socket", &s.sock]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "load failed: {err}");
    assert!(!err.contains('\x1b'), "ANSI escapes in non-TTY output: {err:?}");
    assert!(!err.contains('\r'), "carriage returns in non-TTY output: {err:?}");
    assert!(err.contains("load: /m: 6 files, 1.7 MiB (parallel 1)"), "no start line: {err}");
    let progress: Vec<&str> = err.lines().filter(|l| l.contains(" files, ") && l.contains("ETA")).collect();
    assert!(!progress.is_empty(), "no periodic progress line: {err}");
    assert!(progress[0].starts_with("load: ") && progress[0].contains("/6 files"), "{progress:?}");
    assert!(
        err.contains("load: /m: 6 files: 6 loaded, 0 skipped (already cached), 0 failed"),
        "no summary: {err}"
    );
    wait_cached(&s.sock, "/m");
}

#[test]
fn progress_bar_on_a_terminal() {
    let s = setup(&[300_000; 6], &["--ufs-latency", "400ms"]);
    let cmd = format!("{} load /m --parallel 1 --socket {}", env!("CARGO_BIN_EXE_stoker"), s.sock);
    // script(1) runs the command with a pseudo-terminal as its stdin/stdout/stderr.
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("running script(1)");
    let tty = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "load under a pty failed: {tty} {}", stderr_of(&out));
    assert!(tty.contains('\r') || tty.contains("\x1b["), "no bar redraws on a terminal: {tty:?}");
    assert!(tty.contains("[="), "no bar drawn: {tty:?}");
    assert!(tty.contains("6/6 files"), "bar does not show files: {tty:?}");
    assert!(tty.contains("ETA"), "bar does not show an ETA: {tty:?}");
    // The periodic plain lines are for pipes only.
    assert!(!tty.contains("/6 files, "), "plain progress lines on a terminal: {tty:?}");
    assert!(tty.contains("6 loaded, 0 skipped"), "no summary: {tty:?}");
}

fn ufs_bytes_read(s: &Setup) -> u64 {
    s.srv.client().engine_stats().unwrap().ufs_bytes_read
}

#[test]
fn skip_cached_skips_cached_files() {
    let s = setup(&[1_500_000, 700_000, 300_000, 2_100_000, 10, 0], &[]);
    let out = run(&["load", "/m/c0", "--socket", &s.sock]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    wait_cached(&s.sock, "/m/c0");

    // Everything: /m/c0 (file 0) is cached and the empty file 5 has nothing
    // to cache; the other 4 are not cached.
    let before = ufs_bytes_read(&s);
    let out = run(&["load", "/m", "--skip-cached", "--socket", &s.sock]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("6 files: 4 loaded, 2 skipped (already cached), 0 failed"), "{err}");
    wait_cached(&s.sock, "/m");
    let after_first = ufs_bytes_read(&s);
    assert!(after_first > before, "loading uncached files read nothing from under storage");

    // Again: all cached, nothing read from under storage.
    let out = run(&["load", "/m", "--skip-cached", "--socket", &s.sock]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("6 files: 0 loaded, 6 skipped (already cached), 0 failed"), "{err}");
    assert_eq!(ufs_bytes_read(&s), after_first, "a --skip-cached rerun read from under storage");
}

/// Overwrite a file in place with other bytes of the same length and put its
/// mtime back: size, mtime and inode (the local version token) are unchanged.
fn rewrite_in_place(p: &Path) {
    use std::io::Write;
    let meta = std::fs::metadata(p).unwrap();
    let old = std::fs::read(p).unwrap();
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
    let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all(&new).unwrap();
    f.sync_all().unwrap();
    f.set_modified(meta.modified().unwrap()).unwrap();
    drop(f);
    let now = std::fs::metadata(p).unwrap();
    assert_eq!(now.modified().unwrap(), meta.modified().unwrap());
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&now), std::os::unix::fs::MetadataExt::ino(&meta));
}

#[test]
fn verify_passes_then_catches_a_wrong_cached_block() {
    let s = setup(&[1_500_000, 700_000, 300_000, 2_100_000], &[]);
    let out = run(&["load", "/m", "--verify", "--socket", &s.sock]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("4 loaded, 0 skipped (already cached), 4 verified, 0 failed"), "{err}");
    wait_cached(&s.sock, "/m");

    let (rel, _) = &s.files[3];
    rewrite_in_place(&s.src.join(rel));
    // The cache still serves the old bytes (same version token)...
    let cached = s.srv.client().read_file(&format!("/m/{rel}")).unwrap();
    assert_eq!(cached, s.files[3].1, "the cache noticed the rewrite by itself; the test proves nothing");
    // ...and --verify catches it.
    let out = run(&["load", "/m", "--verify", "--skip-cached", "--socket", &s.sock]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "verify passed over a wrong cached block: {err}");
    assert!(err.contains("0 loaded, 4 skipped (already cached), 3 verified, 1 failed"), "{err}");
    assert!(err.contains(&format!("load: failed: /m/{rel}: cached bytes differ from under storage")), "{err}");
    assert!(err.contains("stoker: error: 1 of 4 files failed"), "{err}");
}

#[test]
fn a_failing_file_fails_the_load_and_is_named() {
    let s = setup(&[200_000, 200_000, 200_000], &[]);
    let flat = s.src.join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for n in ["a.bin", "b.bin", "c.bin"] {
        std::fs::write(flat.join(n), vec![7u8; 100_000]).unwrap();
    }
    // The engine trusts its listing for a while (metadata sync): list, then
    // remove a file behind its back, so the load finds it listed but gone.
    let out = run(&["ls", "/m/flat", "--socket", &s.sock]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    std::fs::remove_file(flat.join("b.bin")).unwrap();

    let out = run(&["load", "/m/flat", "--socket", &s.sock]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "load of a vanished file succeeded: {err}");
    assert!(err.contains("3 files: 2 loaded, 0 skipped (already cached), 1 failed"), "{err}");
    assert!(err.contains("load: failed: /m/flat/b.bin: "), "{err}");
    assert!(!err.contains("failed: /m/flat/a.bin"), "{err}");
    assert!(err.contains("stoker: error: 1 of 3 files failed"), "{err}");
}

/// "N files: L loaded, S skipped" from a summary line.
fn loaded_skipped(err: &str) -> (u64, u64) {
    let line = err.lines().find(|l| l.contains(" loaded, ")).unwrap_or_else(|| panic!("no summary: {err}"));
    let num_before = |word: &str| -> u64 {
        let head = &line[..line.find(word).unwrap()];
        head.trim_end().rsplit(' ').next().unwrap().parse().unwrap()
    };
    (num_before(" loaded"), num_before(" skipped"))
}

#[test]
fn killed_load_resumes_with_skip_cached() {
    let s = setup(&[300_000; 8], &["--ufs-latency", "300ms"]);
    let mut child = stoker()
        .args(["load", "/m", "--parallel", "1", "--socket", &s.sock])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a first file cached", Duration::from_secs(30), || cached_fraction(&s.sock, "/m") > 0.0);
    child.kill().unwrap();
    child.wait().unwrap();
    let frac = cached_fraction(&s.sock, "/m");
    assert!(frac < 1.0, "the load finished before it was killed ({frac}); the test proves nothing");

    let out = run(&["load", "/m", "--skip-cached", "--socket", &s.sock]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    let (loaded, skipped) = loaded_skipped(&err);
    assert!(skipped >= 1, "the rerun skipped nothing: {err}");
    assert!(loaded >= 1, "the rerun loaded nothing: {err}");
    assert_eq!(loaded + skipped, 8, "{err}");
    wait_cached(&s.sock, "/m");
    let out = run(&["load", "/m", "--skip-cached", "--socket", &s.sock]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(loaded_skipped(&err), (0, 8), "{err}");
}

#[test]
fn a_load_through_a_full_write_queue_still_caches_every_block() {
    // A write queue of one block per shard: a fast under storage outruns
    // the disk at once. Reads then serve without caching; a load waits for
    // room instead, so when it returns every block is on disk.
    let sizes = [300_000usize; 48];
    let s = setup(&sizes, &["--write-queue", "1M"]);
    let out = run(&["load", "/m", "--parallel", "16", "--socket", &s.sock]);
    assert!(out.status.success(), "load failed: {}", stderr_of(&out));
    let c = s.srv.client();
    let st = c.engine_stats().unwrap();
    assert_eq!(st.blocks, sizes.len() as u64, "every block cached once the load returned");
    assert!(st.shards.iter().all(|x| x.pending_write_bytes == 0), "nothing still waiting to be written");
    assert_eq!(cached_fraction(&s.sock, "/m"), 1.0);
    let misses = st.misses;
    for (rel, d) in &s.files {
        assert_eq!(&c.read_file(&format!("/m/{rel}")).unwrap(), d, "{rel}");
    }
    assert_eq!(c.engine_stats().unwrap().misses, misses, "reads after the load are all hits");
}
