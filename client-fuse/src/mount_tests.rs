//! Real FUSE mounts of [`StokerFs`] over the in-memory backend, in this
//! process, so the tests can count what the kernel actually sends (opens,
//! releases, flushes, reads) and change objects under the mount. They need
//! root and /dev/fuse; without them each test says so and passes.

use crate::fs::{FsConfig, StokerFs};
use crate::mock::MockBackend;
use crate::session::{mount, MountOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Fs = StokerFs<Arc<MockBackend>>;

struct Mounted {
    session: Option<fuser::BackgroundSession>,
    fs: Arc<Fs>,
    mock: Arc<MockBackend>,
    mp: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                eprintln!("unmounting {}: {e}", self.mp.display());
            }
        }
    }
}

fn can_mount() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if !(root && Path::new("/dev/fuse").exists()) {
        eprintln!("skipped: needs root and /dev/fuse");
        return false;
    }
    true
}

fn mount_mock(files: &[(&str, &[u8])], no_open: bool, ttl: Duration) -> Mounted {
    let mock = Arc::new(MockBackend::with_files(files));
    let cfg = FsConfig { metadata_ttl: ttl, ..FsConfig::default() };
    let fs = Arc::new(StokerFs::new(mock.clone(), "/m", cfg).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let opts = MountOptions { threads: 4, auto_unmount: false, no_open, ..MountOptions::default() };
    let session = mount(fs.clone(), &mp, &opts).unwrap().spawn().unwrap();
    Mounted { session: Some(session), fs, mock, mp, _dir: dir }
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().expect("an OS error")
}

fn sample_files() -> Vec<(String, Vec<u8>)> {
    (0..24usize)
        .map(|i| {
            let n = [0, 1, 4095, 4096, 4097, 70_000, 300_000][i % 7] + i;
            (format!("/m/d/f{i:02}"), (0..n).map(|b| (b * 31 + i) as u8).collect())
        })
        .collect()
}

fn read_all(m: &Mounted, files: &[(String, Vec<u8>)]) {
    for (p, want) in files {
        let got = std::fs::read(m.mp.join(p.strip_prefix("/m/").unwrap())).unwrap();
        assert!(got == *want, "bytes of {p} differ ({} vs {} bytes)", got.len(), want.len());
    }
}

fn refs(files: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    files.iter().map(|(p, v)| (p.as_str(), v.as_slice())).collect()
}

fn assert_write_opens_fail(m: &Mounted) {
    let f = m.mp.join("d/f05");
    assert_eq!(errno_of(std::fs::OpenOptions::new().write(true).open(&f)), libc::EROFS);
    assert_eq!(errno_of(std::fs::OpenOptions::new().read(true).write(true).open(&f)), libc::EROFS);
    let trunc = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_TRUNC).open(&f);
    assert_eq!(errno_of(trunc), libc::EROFS);
    assert_eq!(errno_of(std::fs::File::create(m.mp.join("d/new"))), libc::EROFS);
}

#[test]
fn no_open_reads_send_no_open_release_or_flush() {
    if !can_mount() {
        return;
    }
    let files = sample_files();
    let m = mount_mock(&refs(&files), true, Duration::from_secs(3600));
    assert_write_opens_fail(&m);
    read_all(&m, &files);
    assert_write_opens_fail(&m);
    let c = &m.fs.counters;
    assert_eq!(c.opens.load(Relaxed), 0, "no file handle was created");
    assert_eq!(c.opens_declined.load(Relaxed), 1, "only the first open of the connection reaches us");
    assert_eq!(c.releases.load(Relaxed), 0);
    assert_eq!(c.flushes.load(Relaxed), 1, "flush is asked once per connection");
    let total: u64 = files.iter().map(|(_, v)| v.len() as u64).sum();
    assert_eq!(c.bytes_read.load(Relaxed), total, "every byte read once");

    // The kernel treats no-open files as FOPEN_KEEP_CACHE: a second pass is
    // served from its page cache.
    let reads = m.mock.reads.load(Relaxed);
    read_all(&m, &files);
    assert_eq!(m.mock.reads.load(Relaxed), reads, "second pass from the page cache");
}

#[test]
fn fuse_open_mode_opens_and_releases_each_file() {
    if !can_mount() {
        return;
    }
    let files = sample_files();
    let m = mount_mock(&refs(&files), false, Duration::from_secs(3600));
    assert_write_opens_fail(&m);
    read_all(&m, &files);
    let c = &m.fs.counters;
    let n = files.len() as u64;
    assert_eq!(c.opens.load(Relaxed), n);
    assert_eq!(c.opens_declined.load(Relaxed), 0);
    // RELEASE is sent in the background after close(2) returns.
    wait_until("a release for every open", Duration::from_secs(10), || c.releases.load(Relaxed) == n);
    assert!(c.flushes.load(Relaxed) <= 1, "FOPEN_NOFLUSH, else ENOSYS once");
    assert_eq!(m.fs.open_files(), 0);
    let reads = m.mock.reads.load(Relaxed);
    read_all(&m, &files);
    assert_eq!(m.mock.reads.load(Relaxed), reads, "unchanged version: the page cache is kept");
}

/// An object replaced under the mount (same size, new bytes, new mtime) is
/// read with its new bytes once the metadata TTL has passed, in both modes.
#[test]
fn changed_object_is_read_fresh_after_the_ttl() {
    if !can_mount() {
        return;
    }
    let ttl = Duration::from_millis(300);
    for no_open in [true, false] {
        let m = mount_mock(&[("/m/d/f", &[1u8; 20_000])], no_open, ttl);
        let path = m.mp.join("d/f");
        assert_eq!(std::fs::read(&path).unwrap(), [1u8; 20_000]);
        // Held open across the change: the pages it cached are what a fresh
        // open would be served from if nothing dropped them.
        let mut held = std::fs::File::open(&path).unwrap();
        m.mock.put_at("/m/d/f", &[2u8; 20_000], "v2", 2_000_000_000);
        std::thread::sleep(ttl + Duration::from_millis(200));
        assert!(std::fs::read(&path).unwrap() == [2u8; 20_000], "no_open={no_open}: stale pages after the TTL");
        let mut buf = Vec::new();
        held.read_to_end(&mut buf).unwrap();
        assert!(buf == [2u8; 20_000], "no_open={no_open}: a file open across the change reads the new bytes");
        drop(held);

        // A size change is seen too, through stat and read.
        m.mock.put_at("/m/d/f", &[3u8; 5_000], "v3", 3_000_000_000);
        std::thread::sleep(ttl + Duration::from_millis(200));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 5_000);
        assert!(std::fs::read(&path).unwrap() == [3u8; 5_000], "no_open={no_open}: new size");
    }
}
