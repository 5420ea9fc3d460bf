//! Real FUSE mounts of `stoker mount` (needs /dev/fuse and root or fuse3).
//!
//! Each test generates its own source tree, mounts it through the `stoker`
//! binary and checks what a reader of the mount sees against the source.
//! Waits are polls of a condition with a deadline, never bare sleeps.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod s3_support;

const BIN: &str = env!("CARGO_BIN_EXE_stoker");
/// Small blocks so that multi-block files stay small.
const BLOCK: usize = 64 << 10;

fn wait_until(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    wait_until_or(what, limit, cond, String::new)
}

/// As `wait_until`; a timeout's message ends with `detail()`.
fn wait_until_or(what: &str, limit: Duration, mut cond: impl FnMut() -> bool, detail: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}{}", detail());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes holding /dev/fuse open, and every fusermount3 with its state
/// and wait channel (for a failure message).
fn fuse_holders() -> String {
    let mut out = Vec::new();
    for pid in std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.flatten().filter(|f| std::fs::read_link(f.path()).is_ok_and(|l| l == Path::new("/dev/fuse"))).count()).unwrap_or(0);
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| s.rsplit(") ").next().map(|r| r.chars().next().unwrap_or('?')));
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        if fds > 0 || cmd.contains("fusermount") {
            out.push(format!("pid {pid} ({}) state {:?} wchan {wchan} /dev/fuse fds {fds}", cmd.trim(), state));
        }
    }
    format!("; /dev/fuse holders and fusermount3: [{}]", out.join("; "))
}

fn is_mounted(mp: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let want = mp.to_str().unwrap().replace(' ', "\\040");
    text.lines().any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// A generated source tree: relative path -> bytes.
struct Tree {
    dir: tempfile::TempDir,
    files: BTreeMap<String, Vec<u8>>,
}

impl Tree {
    fn generate(seed: u64) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut files = BTreeMap::new();
        let sizes: &[(&str, usize)] = &[
            ("empty.bin", 0),
            ("one.bin", 1),
            ("page_minus.bin", 4095),
            ("page.bin", 4096),
            ("page_plus.bin", 4097),
            ("blocks/three_and_a_bit.bin", 3 * BLOCK + 17),
            ("blocks/exact_two.bin", 2 * BLOCK),
            ("a/b/c/deep.txt", 1234),
            ("a/b/sibling.bin", 70_000),
            ("a/x.bin", 8191),
            ("images/cat 1.jpg", 110 << 10),
        ];
        for &(p, n) in sizes {
            let mut v = vec![0u8; n];
            rng.fill(&mut v[..]);
            files.insert(p.to_string(), v);
        }
        for i in 0..40 {
            let n = rng.gen_range(0..20_000);
            let mut v = vec![0u8; n];
            rng.fill(&mut v[..]);
            files.insert(format!("many/f{i:03}.dat"), v);
        }
        for (p, v) in &files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, v).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("empty_dir")).unwrap();
        Tree { dir, files }
    }

    fn uri(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A foreground `stoker mount` child; unmounted (SIGTERM) on drop.
struct Mounted {
    child: Option<Child>,
    mp: PathBuf,
}

fn spawn_mount(args: &[&str], mp: &Path) -> Mounted {
    std::fs::create_dir_all(mp).unwrap();
    let mut child = Command::new(BIN)
        .arg("mount")
        .args(args)
        .arg(mp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_until("the mount to appear", Duration::from_secs(30), || {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("stoker mount exited early: {st}");
        }
        is_mounted(mp)
    });
    Mounted { child: Some(child), mp: mp.to_path_buf() }
}

fn mount_tree(tree: &Tree, cache: &Path, socket: &Path, mp: &Path) -> Mounted {
    let cache = cache.to_str().unwrap();
    let socket = socket.to_str().unwrap();
    let uri = tree.uri();
    let args = ["--cache-dir", cache, "--capacity", "256M", "--block-size", "64K", "--socket", socket, &uri];
    spawn_mount(&args, mp)
}

impl Mounted {
    /// SIGTERM, then wait (bounded) for a clean exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling a child we own.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let mut status = None;
        wait_until("stoker mount to exit after SIGTERM", Duration::from_secs(30), || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling a child we own.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mp) {
            let _ = Command::new("umount").arg("-l").arg(&self.mp).status();
        }
    }
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().expect("an OS error")
}

fn ls_r(dir: &Path) -> String {
    let out = Command::new("ls").args(["-R", "-1", "."]).current_dir(dir).env("LC_ALL", "C").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn engine_stats(socket: &Path) -> stoker_proto::control::EngineStats {
    stoker_client::Client::connect(socket.to_str().unwrap()).unwrap().engine_stats().unwrap()
}

struct Setup {
    tree: Tree,
    work: tempfile::TempDir,
}

impl Setup {
    fn new(seed: u64) -> Setup {
        Setup { tree: Tree::generate(seed), work: tempfile::tempdir().unwrap() }
    }
    fn cache(&self) -> PathBuf {
        self.work.path().join("cache")
    }
    fn socket(&self) -> PathBuf {
        self.work.path().join("s.sock")
    }
    fn mp(&self) -> PathBuf {
        self.work.path().join("mnt")
    }
    fn mount(&self) -> Mounted {
        mount_tree(&self.tree, &self.cache(), &self.socket(), &self.mp())
    }
}

#[test]
fn fuse_tree_and_bytes_match_source() {
    let s = Setup::new(1);
    let _m = s.mount();
    let mp = s.mp();
    let listing = ls_r(&mp);
    assert!(listing.contains("deep.txt") && listing.contains("empty_dir"), "{listing}");
    assert_eq!(listing, ls_r(s.tree.path()), "ls -R of the mount differs from the source");
    for (p, want) in &s.tree.files {
        let md = std::fs::metadata(mp.join(p)).unwrap();
        assert_eq!(md.len(), want.len() as u64, "size of {p}");
        let got = std::fs::read(mp.join(p)).unwrap();
        assert!(got == *want, "bytes of {p} differ ({} vs {} bytes)", got.len(), want.len());
    }
    // A second pass (kernel page cache and engine cache warm) still matches.
    for (p, want) in &s.tree.files {
        assert!(std::fs::read(mp.join(p)).unwrap() == *want, "second read of {p}");
    }
    let df = std::fs::metadata(&mp).unwrap();
    assert!(df.is_dir());
}

#[test]
fn fuse_concurrent_random_reads_threads_and_processes() {
    let s = Setup::new(2);
    let _m = s.mount();
    let mp = s.mp();
    let files: Arc<Vec<(String, Vec<u8>)>> =
        Arc::new(s.tree.files.iter().filter(|(_, v)| !v.is_empty()).map(|(p, v)| (p.clone(), v.clone())).collect());

    // Several processes read random ranges at the same time as the threads.
    let script = r#"
import os, random, sys
mnt, src, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
paths = []
for d, _, fs in os.walk(src):
    for f in fs:
        paths.append(os.path.relpath(os.path.join(d, f), src))
paths.sort()
for _ in range(300):
    p = rng.choice(paths)
    size = os.path.getsize(os.path.join(src, p))
    off = rng.randrange(0, size + 10)
    n = rng.randrange(0, 300000)
    with open(os.path.join(mnt, p), 'rb') as a, open(os.path.join(src, p), 'rb') as b:
        a.seek(off); b.seek(off)
        if a.read(n) != b.read(n):
            print("mismatch", p, off, n); sys.exit(1)
print("ok")
"#;
    let procs: Vec<Child> = (0..4)
        .map(|i| {
            Command::new("python3")
                .args(["-c", script, mp.to_str().unwrap(), s.tree.path().to_str().unwrap(), &i.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();

    let threads: Vec<_> = (0..32u64)
        .map(|t| {
            let files = files.clone();
            let mp = mp.clone();
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(100 + t);
                let mut checked = 0u64;
                for _ in 0..200 {
                    let (p, want) = &files[rng.gen_range(0..files.len())];
                    let f = std::fs::File::open(mp.join(p)).unwrap();
                    let off = rng.gen_range(0..want.len() + 16);
                    let len = rng.gen_range(1..=(3 * BLOCK));
                    let mut buf = vec![0u8; len];
                    let mut got = 0;
                    // read_at may return less than asked; loop to EOF or len.
                    while got < len {
                        let n = f.read_at(&mut buf[got..], (off + got) as u64).unwrap();
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    let end = (off + len).min(want.len());
                    let expect = if off >= want.len() { &[][..] } else { &want[off..end] };
                    assert_eq!(got, expect.len(), "{p} at {off}+{len}: length");
                    assert!(&buf[..got] == expect, "{p} at {off}+{len}: bytes differ");
                    checked += got as u64;
                }
                checked
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().expect("reader thread failed")).sum();
    assert!(total > 0);
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "python reader failed: {}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
}

#[test]
fn fuse_errors_enoent_erofs_and_short_reads() {
    let s = Setup::new(3);
    let _m = s.mount();
    let mp = s.mp();
    assert_eq!(errno_of(std::fs::metadata(mp.join("nope"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::read(mp.join("a/b/missing.bin"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::read_dir(mp.join("one.bin"))), libc::ENOTDIR);
    // Every write-type operation is refused with EROFS.
    let existing = mp.join("one.bin");
    assert_eq!(errno_of(std::fs::OpenOptions::new().write(true).open(&existing)), libc::EROFS);
    assert_eq!(errno_of(std::fs::OpenOptions::new().append(true).open(&existing)), libc::EROFS);
    assert_eq!(errno_of(std::fs::File::create(mp.join("new.bin"))), libc::EROFS);
    assert_eq!(errno_of(std::fs::write(mp.join("a/new.txt"), b"x")), libc::EROFS);
    assert_eq!(errno_of(std::fs::remove_file(&existing)), libc::EROFS);
    assert_eq!(errno_of(std::fs::create_dir(mp.join("newdir"))), libc::EROFS);
    assert_eq!(errno_of(std::fs::remove_dir(mp.join("empty_dir"))), libc::EROFS);
    assert_eq!(errno_of(std::fs::rename(&existing, mp.join("moved.bin"))), libc::EROFS);
    assert_eq!(errno_of(std::os::unix::fs::symlink("one.bin", mp.join("link"))), libc::EROFS);
    let perms = std::fs::metadata(&existing).unwrap().permissions();
    assert_eq!(errno_of(std::fs::set_permissions(&existing, perms)), libc::EROFS);
    // The refused file is untouched.
    assert_eq!(std::fs::read(&existing).unwrap(), s.tree.files["one.bin"]);

    // Reads past EOF are short, then empty.
    let f = std::fs::File::open(mp.join("page_plus.bin")).unwrap();
    let mut buf = vec![0u8; 1000];
    assert_eq!(f.read_at(&mut buf, 4000).unwrap(), 97);
    assert_eq!(&buf[..97], &s.tree.files["page_plus.bin"][4000..]);
    assert_eq!(f.read_at(&mut buf, 4097).unwrap(), 0);
    assert_eq!(f.read_at(&mut buf, 1 << 40).unwrap(), 0);
    let e = std::fs::File::open(mp.join("empty.bin")).unwrap();
    assert_eq!(e.read_at(&mut buf, 0).unwrap(), 0);
}

/// `--fuse-open` (an open and a release per file) serves the same bytes and
/// refusals as the default no-open mode; both mounts are `ro` in the VFS.
#[test]
fn fuse_open_flag_reads_the_same_and_mount_is_ro() {
    let s = Setup::new(9);
    let cache = s.cache();
    let socket = s.socket();
    let uri = s.tree.uri();
    for extra in [None, Some("--fuse-open")] {
        let mut args = vec!["--cache-dir", cache.to_str().unwrap(), "--capacity", "256M", "--block-size", "64K"];
        args.extend(["--socket", socket.to_str().unwrap()]);
        args.extend(extra);
        args.push(&uri);
        let mut m = spawn_mount(&args, &s.mp());
        let mp = s.mp();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts.lines().find(|l| l.split(' ').nth(1) == mp.to_str()).unwrap();
        let opts = line.split(' ').nth(3).unwrap();
        assert!(opts.split(',').any(|o| o == "ro"), "{extra:?}: not mounted ro: {line}");
        for (p, want) in &s.tree.files {
            assert!(std::fs::read(mp.join(p)).unwrap() == *want, "{extra:?}: bytes of {p}");
        }
        let existing = mp.join("one.bin");
        assert_eq!(errno_of(std::fs::OpenOptions::new().write(true).open(&existing)), libc::EROFS);
        assert_eq!(errno_of(std::fs::OpenOptions::new().read(true).write(true).open(&existing)), libc::EROFS);
        assert!(m.terminate().success());
        let _ = std::fs::remove_file(&socket);
    }
}

#[test]
fn fuse_sigterm_unmounts_and_remount_serves_warm_data() {
    let s = Setup::new(4);
    let mut m = s.mount();
    let mp = s.mp();
    for (p, want) in &s.tree.files {
        assert!(std::fs::read(mp.join(p)).unwrap() == *want, "{p}");
    }
    let cold = engine_stats(&s.socket());
    assert!(cold.ufs_bytes_read > 0, "first pass reads under storage: {cold:?}");
    let status = m.terminate();
    assert!(status.success(), "stoker mount exit status after SIGTERM: {status}");
    assert!(!is_mounted(&mp), "mountpoint still in /proc/mounts after SIGTERM");
    assert!(!s.socket().exists(), "embedded engine socket left behind");

    let _m2 = s.mount();
    for (p, want) in &s.tree.files {
        assert!(std::fs::read(mp.join(p)).unwrap() == *want, "{p} after remount");
    }
    let warm = engine_stats(&s.socket());
    assert!(warm.hits > 0, "remount served from cache: {warm:?}");
    assert_eq!(warm.ufs_bytes_read, 0, "remount read nothing from under storage: {warm:?}");
}

#[test]
fn fuse_python_open_read_and_walk() {
    let s = Setup::new(5);
    let _m = s.mount();
    let script = r#"
import hashlib, os, sys
mnt, src = sys.argv[1], sys.argv[2]
def walk(root):
    out = []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        out += [(rel, sorted(dirs), sorted(files))]
    return sorted(out)
assert walk(mnt) == walk(src), "os.walk differs"
n = 0
for d, _, files in os.walk(src):
    for f in files:
        rel = os.path.relpath(os.path.join(d, f), src)
        a = open(os.path.join(mnt, rel), 'rb').read()
        b = open(os.path.join(src, rel), 'rb').read()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), rel
        n += 1
try:
    open(os.path.join(mnt, 'nope.txt')).read()
    sys.exit("missing file opened")
except FileNotFoundError:
    pass
try:
    open(os.path.join(mnt, 'new.txt'), 'w')
    sys.exit("write allowed")
except OSError as e:
    assert e.errno == 30, e  # EROFS
print(n)
"#;
    let out = Command::new("python3")
        .args(["-c", script, s.mp().to_str().unwrap(), s.tree.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), s.tree.files.len().to_string());
}

#[test]
fn fuse_attach_to_running_engine_and_daemon_umount() {
    let s = Setup::new(6);
    let mut cfg = stoker_engine::config::EngineConfig::new(s.cache());
    cfg.socket = s.socket().to_str().unwrap().to_string();
    cfg.capacity_bytes = 256 << 20;
    cfg.block_bytes = BLOCK as u64;
    cfg.mounts = vec![stoker_engine::MountSpec { name: "train".into(), uri: s.tree.uri(), ..Default::default() }];
    let engine = stoker_engine::Engine::start(cfg).unwrap();
    let mp = s.mp();
    std::fs::create_dir_all(&mp).unwrap();

    // --daemon returns only once the mount answers.
    let st = Command::new(BIN)
        .args(["mount", "--daemon", "--socket", engine.socket(), "/train"])
        .arg(&mp)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(is_mounted(&mp), "--daemon returned before the mount was there");
    let guard = Mounted { child: None, mp: mp.clone() };
    assert_eq!(std::fs::read(mp.join("a/b/c/deep.txt")).unwrap(), s.tree.files["a/b/c/deep.txt"]);
    assert_eq!(ls_r(&mp), ls_r(s.tree.path()));
    let sessions = engine.stats().sessions;
    assert!(sessions >= 1, "the mount is a client session of the engine");

    // A second mount on the same mountpoint is refused with a clear message.
    let out = Command::new(BIN).args(["mount", "--socket", engine.socket(), "/train"]).arg(&mp).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already"), "{}", String::from_utf8_lossy(&out.stderr));

    let st = Command::new(BIN).arg("umount").arg(&mp).status().unwrap();
    assert!(st.success());
    assert!(!is_mounted(&mp));
    // The daemon notices the unmount and detaches from the engine.
    wait_until("the daemon to leave the engine", Duration::from_secs(20), || engine.stats().sessions < sessions);
    let out = Command::new(BIN).arg("umount").arg(&mp).output().unwrap();
    assert!(!out.status.success(), "umount of a plain directory must fail");
    drop(guard);

    // A missing namespace fails before mounting.
    let out = Command::new(BIN).args(["mount", "--socket", engine.socket(), "/nope"]).arg(&mp).output().unwrap();
    assert!(!out.status.success());
    assert!(!is_mounted(&mp));
}

/// SIGKILL the mount process: with auto_unmount (fusermount3) the mount
/// disappears by itself; without it, callers get ENOTCONN at once (no hang)
/// and `stoker umount` clears the dead mountpoint. Either way a remount on
/// the same cache dir works.
#[test]
fn fuse_killed_mount_never_hangs_callers() {
    let s = Setup::new(7);
    let mp = s.mp();
    let uri = s.tree.uri();
    let cache = s.cache();
    let socket = s.socket();
    for auto in [true, false] {
        let mut args = vec!["--cache-dir", cache.to_str().unwrap(), "--capacity", "256M", "--block-size", "64K"];
        args.extend(["--socket", socket.to_str().unwrap()]);
        if !auto {
            args.push("--no-auto-unmount");
        }
        args.push(&uri);
        let mut m = spawn_mount(&args, &mp);
        assert_eq!(std::fs::read(mp.join("one.bin")).unwrap(), s.tree.files["one.bin"]);
        let mut child = m.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        if auto && stoker_fuse::session::fusermount_path().is_some() {
            // fusermount3 unmounts only once opening the mount point fails
            // with ENOTCONN, i.e. once every /dev/fuse descriptor of the
            // connection is closed: a timeout names whoever still holds one.
            wait_until_or("fusermount3 to unmount the dead mount", Duration::from_secs(60), || !is_mounted(&mp), fuse_holders);
        } else {
            assert!(is_mounted(&mp), "without auto_unmount the dead mount stays until cleared");
            let t0 = Instant::now();
            // A name the kernel has not cached needs the dead daemon. (The
            // attributes of one.bin, read above, are still served from the
            // kernel's cache: on the ro mount a read does not invalidate atime.)
            assert_eq!(errno_of(std::fs::metadata(mp.join("page.bin"))), libc::ENOTCONN);
            assert!(t0.elapsed() < Duration::from_secs(5), "a dead mount must fail fast, not hang");
            let st = Command::new(BIN).arg("umount").arg(&mp).status().unwrap();
            assert!(st.success(), "stoker umount clears a dead mount");
            assert!(!is_mounted(&mp));
        }
        let _ = std::fs::remove_file(&socket);
    }
    // The cache dir is free again (its lock died with the process).
    let _m = s.mount();
    assert_eq!(std::fs::read(mp.join("page.bin")).unwrap(), s.tree.files["page.bin"]);
}

/// A mount with its own (smaller) block size, read through the kernel: the
/// bytes match everywhere, including ranges across its block boundaries,
/// and the engine caches the file in that mount's blocks.
#[test]
fn fuse_mount_with_its_own_block_size() {
    let s = Setup::new(8);
    let mut cfg = stoker_engine::config::EngineConfig::new(s.cache());
    cfg.socket = s.socket().to_str().unwrap().to_string();
    cfg.capacity_bytes = 256 << 20;
    cfg.block_bytes = BLOCK as u64;
    cfg.mounts = vec![stoker_engine::MountSpec {
        name: "small".into(),
        uri: s.tree.uri(),
        options: vec![("block_size".into(), "4K".into())],
        ..Default::default()
    }];
    let engine = stoker_engine::Engine::start(cfg).unwrap();
    let mp = s.mp();
    std::fs::create_dir_all(&mp).unwrap();
    let st = Command::new(BIN).args(["mount", "--daemon", "--socket", engine.socket(), "/small"]).arg(&mp).status().unwrap();
    assert!(st.success());
    let _guard = Mounted { child: None, mp: mp.clone() };

    let rel = "blocks/three_and_a_bit.bin";
    let want = &s.tree.files[rel];
    let f = std::fs::File::open(mp.join(rel)).unwrap();
    for (off, len) in [(4090usize, 20usize), (8191, 4098), (100_000, 50_000), (want.len() - 10, 10)] {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off as u64).unwrap();
        assert_eq!(buf, want[off..off + len], "{off}+{len}");
    }
    assert_eq!(&std::fs::read(mp.join(rel)).unwrap(), want);
    assert_eq!(ls_r(&mp), ls_r(s.tree.path()));

    let out = Command::new(BIN).args(["stat", &format!("/small/{rel}"), "--json", "--socket", engine.socket()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["blocks"].as_u64(), Some(want.len().div_ceil(4096) as u64), "{j}");
    wait_until("every 4 KiB block cached", Duration::from_secs(20), || {
        let out = Command::new(BIN).args(["stat", &format!("/small/{rel}"), "--json", "--socket", engine.socket()]).output().unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        j["cached_blocks"] == j["blocks"]
    });
}

/// The headline use: `stoker mount s3://bucket MP` (an embedded engine)
/// over a real S3-compatible server, its endpoint and credentials given with
/// `--mount-opt`; every file reads back through the kernel byte for byte.
#[test]
fn fuse_mount_of_an_s3_bucket() {
    if !s3_support::require_moto() {
        return;
    }
    let s3 = s3_support::S3Server::start();
    s3.create_bucket("dset");
    let tree = Tree::generate(11);
    let items: Vec<(String, Vec<u8>)> = tree.files.iter().map(|(p, d)| (p.clone(), d.clone())).collect();
    s3.store("s3://dset/").put_many(items, 8).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (cache, sock, mp) = (work.path().join("cache"), work.path().join("s.sock"), work.path().join("mnt"));
    let mut args: Vec<String> = ["s3://dset", "--cache-dir", cache.to_str().unwrap(), "--capacity", "256M"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--block-size".into(), "64K".into(), "--socket".into(), sock.to_str().unwrap().into()]);
    for (k, v) in s3.options() {
        args.extend(["--mount-opt".into(), format!("{k}={v}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _m = spawn_mount(&args, &mp);
    for (rel, want) in &tree.files {
        assert!(std::fs::read(mp.join(rel)).unwrap() == *want, "{rel} differs through the mount");
    }
    let f = std::fs::File::open(mp.join("blocks/three_and_a_bit.bin")).unwrap();
    let mut buf = vec![0u8; 100];
    f.read_exact_at(&mut buf, BLOCK as u64 - 50).unwrap();
    assert_eq!(buf, tree.files["blocks/three_and_a_bit.bin"][BLOCK - 50..BLOCK + 50]);
    // S3 has no empty directories; every directory with objects is there.
    let mut names: Vec<String> = std::fs::read_dir(mp.join("a")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["b", "x.bin"]);

    // A bad option is one line and no mount.
    let mp2 = work.path().join("mnt2");
    std::fs::create_dir_all(&mp2).unwrap();
    let out = Command::new(BIN)
        .args(["mount", "s3://dset", "--cache-dir", work.path().join("c2").to_str().unwrap(), "--mount-opt", "endpiont=x"])
        .arg(&mp2)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("endpiont") && !is_mounted(&mp2), "{err}");
}

#[test]
fn fuse_reads_in_flight_are_not_capped_by_session_threads() {
    // One session thread, an under storage that takes 2 s per request: a
    // thread that waited for each read would keep at most one in the engine.
    let src = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..4u8).map(|i| (format!("f{i}.bin"), vec![i + 1; 50_000 + i as usize])).collect();
    for (name, bytes) in &files {
        std::fs::write(src.path().join(name), bytes).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let (cache, socket, mp) = (work.path().join("cache"), work.path().join("s.sock"), work.path().join("mnt"));
    let uri = format!("file://{}", src.path().display());
    let args = [
        "--cache-dir",
        cache.to_str().unwrap(),
        "--capacity",
        "64M",
        "--socket",
        socket.to_str().unwrap(),
        "--threads",
        "1",
        "--ufs-latency",
        "2s",
        &uri,
    ];
    let _m = spawn_mount(&args, &mp);
    // Learn the names first (one listing), so the reads below are the only waits.
    assert_eq!(std::fs::read_dir(&mp).unwrap().count(), files.len());
    let readers: Vec<_> = files
        .iter()
        .map(|(name, _)| {
            let p = mp.join(name);
            std::thread::spawn(move || std::fs::read(p).unwrap())
        })
        .collect();
    let mut most = 0;
    wait_until("several reads in flight in the engine at once", Duration::from_secs(10), || {
        most = most.max(engine_stats(&socket).shards.iter().map(|s| s.inflight_requests).sum::<u64>());
        most >= 2
    });
    for (r, (name, bytes)) in readers.into_iter().zip(&files) {
        assert!(r.join().unwrap() == *bytes, "{name} read back wrong");
    }
}

/// Voluntary context switches of `pid`'s threads whose name starts with
/// `prefix`: each is one wait for (and so at least one answer to) a request.
fn waits_of(pid: u32, prefix: &str) -> (usize, u64) {
    let mut threads = 0;
    let mut waits = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        threads += 1;
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let n = status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")).map(|v| v.trim().parse::<u64>().unwrap());
        waits += n.unwrap_or(0);
    }
    (threads, waits)
}

/// `--fuse-uring`: requests are answered from per-CPU io_uring entries, not
/// /dev/fuse reads, with the same bytes, listings, errors and refusals.
#[test]
fn fuse_uring_serves_the_same_tree_from_ring_threads() {
    const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
    if !Path::new(PARAM).exists() {
        eprintln!("skipped: this kernel has no FUSE over io_uring ({PARAM} missing)");
        return;
    }
    // Root may switch it on; mounts that do not ask for the ring are unaffected.
    std::fs::write(PARAM, "Y").expect("enable FUSE over io_uring (needs root)");
    let s = Setup::new(11);
    let cache = s.cache();
    let socket = s.socket();
    let uri = s.tree.uri();
    let args = ["--cache-dir", cache.to_str().unwrap(), "--capacity", "256M", "--block-size", "64K", "--socket", socket.to_str().unwrap(), "--fuse-uring", &uri];
    let mut m = spawn_mount(&args, &s.mp());
    let pid = m.child.as_ref().unwrap().id();
    let mp = s.mp();
    let (rings, ring_before) = waits_of(pid, "fuse-ring-");
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    assert!(rings >= 1, "no fuse-ring threads in the mount (possible CPUs {cpus})");
    let (_, dev_before) = waits_of(pid, "fuser-");

    assert_eq!(ls_r(&mp), ls_r(s.tree.path()), "ls -R through the ring differs from the source");
    let mut requests = 0;
    for (p, want) in &s.tree.files {
        let md = std::fs::metadata(mp.join(p)).unwrap();
        assert_eq!(md.len(), want.len() as u64, "size of {p}");
        assert!(std::fs::read(mp.join(p)).unwrap() == *want, "bytes of {p} through the ring");
        requests += 1;
    }
    {
        // Closed before the unmount below (an open file keeps a mount busy).
        let f = std::fs::File::open(mp.join("blocks/three_and_a_bit.bin")).unwrap();
        let mut buf = vec![0u8; 100];
        assert_eq!(f.read_at(&mut buf, 3 * BLOCK as u64 - 50).unwrap(), 67);
        assert_eq!(&buf[..67], &s.tree.files["blocks/three_and_a_bit.bin"][3 * BLOCK - 50..]);
    }
    assert_eq!(errno_of(std::fs::metadata(mp.join("no/such/file"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::OpenOptions::new().write(true).open(mp.join("one.bin"))), libc::EROFS);
    assert_eq!(errno_of(std::fs::create_dir(mp.join("new_dir"))), libc::EROFS);

    // Every file cost at least a lookup and a read: ring threads waited for
    // them, the /dev/fuse threads (FORGETs and INTERRUPTs only) did not.
    let (_, ring_after) = waits_of(pid, "fuse-ring-");
    let (_, dev_after) = waits_of(pid, "fuser-");
    assert!(ring_after - ring_before >= requests, "ring threads waited {} times for {requests} files", ring_after - ring_before);
    assert!(dev_after - dev_before < requests / 4, "/dev/fuse threads served {} requests for {requests} files", dev_after - dev_before);
    assert!(m.terminate().success());
    assert!(!is_mounted(&mp), "still mounted after SIGTERM");
}
