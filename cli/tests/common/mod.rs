//! Shared helpers for the CLI integration tests: generated trees and a
//! `stoker serve` child process that is killed when dropped.

#![allow(dead_code)]

use rand::{RngCore, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn stoker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stoker"))
}

pub fn run(args: &[&str]) -> Output {
    stoker().args(args).stdin(Stdio::null()).output().expect("running stoker")
}

/// Write files of the given sizes under `root` in nested directories;
/// returns (relative path, bytes).
pub fn make_tree(root: &Path, sizes: &[usize], seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let rel = format!("c{}/d{}/f{i:05}.bin", i % 7, i % 3);
        let mut data = vec![0u8; size];
        rng.fill_bytes(&mut data);
        let p = root.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &data).unwrap();
        out.push((rel, data));
    }
    out
}

/// Every file under `root`, as sorted paths relative to it.
pub fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Poll `cond` until it holds or `limit` passes (then panic with `what`).
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Server {
    pub child: Child,
    pub socket: String,
    pub cache: PathBuf,
}

impl Server {
    pub fn start(cache: &Path, socket: &str, extra: &[&str]) -> Server {
        let mut cmd = stoker();
        cmd.args(["serve", "--cache-dir", cache.to_str().unwrap(), "--socket", socket]);
        cmd.args(extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawning stoker serve");
        let t0 = Instant::now();
        loop {
            if stoker_client::Client::connect(socket).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("stoker serve exited early: {status}");
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "stoker serve did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, socket: socket.to_string(), cache: cache.to_path_buf() }
    }

    pub fn client(&self) -> stoker_client::Client {
        stoker_client::Client::connect(&self.socket).expect("connecting to stoker serve")
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "stoker serve exited with {status} on SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample (`name{labels}` exactly as exported) from a
/// `stoker serve --metrics ADDR` endpoint.
pub fn metric(addr: std::net::SocketAddr, sample: &str) -> f64 {
    metric_or(addr, sample, None)
}

/// `metric`, with `absent` for a sample not exported (yet).
pub fn metric_or(addr: std::net::SocketAddr, sample: &str, absent: Option<f64>) -> f64 {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connecting to the metrics endpoint");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    c.read_to_string(&mut body).unwrap();
    let line = body.lines().find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == sample));
    match line {
        Some(l) => l.rsplit_once(' ').unwrap().1.parse().unwrap(),
        None => absent.unwrap_or_else(|| panic!("no sample {sample} in:\n{body}")),
    }
}

/// Whether `mp` is a mount point now (/proc/self/mounts escapes spaces).
pub fn is_mounted(mp: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let want = mp.to_str().unwrap().replace(' ', "\\040");
    text.lines().any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// A foreground `stoker mount ARGS... MP`, up once `MP` is mounted;
/// SIGTERMed (and its mount cleared) when dropped.
pub struct FuseMount {
    pub child: Child,
    pub mp: PathBuf,
}

impl FuseMount {
    pub fn start(args: &[&str], mp: &Path) -> FuseMount {
        std::fs::create_dir_all(mp).unwrap();
        let mut child = stoker()
            .arg("mount")
            .args(args)
            .arg(mp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        wait_for("the mount to appear", Duration::from_secs(30), || {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("stoker mount exited early: {st}");
            }
            is_mounted(mp)
        });
        FuseMount { child, mp: mp.to_path_buf() }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        // SAFETY: signalling a child we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.mp) {
            let _ = Command::new("umount").arg("-l").arg(&self.mp).status();
        }
    }
}

// The Python binding (client-py) in a venv, for the tests that read with it.

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A venv with the binding installed (`maturin develop`), shared by runs.
fn venv(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let venv = target.join("pyenv");
    let py = venv.join("bin/python");
    // Tests run in parallel processes: one builds the venv at a time.
    use std::os::fd::AsRawFd;
    let lock = std::fs::File::create(target.join("pyenv.lock")).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if !py.exists() {
        run_ok(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv");
    }
    if !venv.join("bin/maturin").exists() {
        run_ok(Command::new(&py).args(["-m", "pip", "install", "-q", "maturin>=1.5,<2"]), "pip install maturin");
    }
    run_ok(
        Command::new(venv.join("bin/maturin"))
            .args(["develop", "-q", "-m"])
            .arg(root.join("client-py/Cargo.toml"))
            .env("VIRTUAL_ENV", &venv)
            .env("PATH", format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default())),
        "maturin develop",
    );
    py
}

/// The repository root and a venv's python with the binding built, or None
/// (said once) when STOKER_SKIP_PYTHON is set.
pub fn python_with_binding() -> Option<(PathBuf, PathBuf)> {
    if std::env::var_os("STOKER_SKIP_PYTHON").is_some() {
        eprintln!("STOKER_SKIP_PYTHON set: skipped");
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let py = venv(&root);
    Some((root, py))
}
