//! Mounting: fuser session options (read-only, threads, max_read, auto_unmount), the
//! kernel readahead knob, and finding/unmounting stoker mounts.
//!
//! A session runs `threads` event loops, each with its own /dev/fuse clone
//! (FUSE_DEV_IOC_CLONE), so requests are served concurrently. With
//! `auto_unmount` (needs `fusermount3`, package fuse3), fusermount watches the
//! process and unmounts if it dies, so a crashed mount never leaves a dead
//! mountpoint behind; without it, see docs/SEMANTICS.md ("Recovery").

use crate::backend::Backend;
use crate::fs::StokerFs;
use crate::fuse::{FuseFs, KernelTuning, Negotiated};
use fuser::{Config, MountOption, SessionACL};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Session threads serving requests. Default 16.
    pub threads: usize,
    /// Largest read the kernel sends (`max_read`). Default 1 MiB; the kernel
    /// caps it at its `max_pages` limit (1 MiB on most kernels).
    pub max_read_bytes: u32,
    /// Kernel readahead per file. Default 8 MiB (the kernel's FUSE default is 128 KiB).
    pub readahead_bytes: u32,
    /// Background requests (readahead) in flight. Default 64.
    pub max_background: u16,
    /// Have fusermount3 unmount when this process dies. Default on when
    /// fusermount3 is installed.
    pub auto_unmount: bool,
    /// Let other users read the mount (`allow_other`). Default off.
    pub allow_other: bool,
    /// Shown as the source in /proc/mounts, e.g. `stoker:/train`.
    pub fsname: String,
    /// Skip FUSE open and release for files (the kernel's no-open mode, when
    /// it offers FUSE_NO_OPEN_SUPPORT): a small file costs lookup + read
    /// instead of lookup + open + read + flush + release. Default on.
    pub no_open: bool,
    /// The engine mount has a write mode: mounted read-write (not `ro`),
    /// opens always sent (a write open must reach the mount), and with
    /// `allow_other` the kernel checks permissions (default_permissions).
    /// Default off.
    pub writable: bool,
    /// Serve requests over FUSE's io_uring (`crate::uring`) instead of
    /// /dev/fuse reads; read-only mounts only. Default off.
    pub uring: bool,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            threads: 16,
            max_read_bytes: 1 << 20,
            readahead_bytes: 8 << 20,
            max_background: 64,
            auto_unmount: fusermount_path().is_some(),
            allow_other: false,
            fsname: "stoker".into(),
            no_open: true,
            writable: false,
            uring: false,
        }
    }
}

/// The fuser session type for a stoker mount.
pub type StokerSession<B> = fuser::Session<FuseFs<B>>;

/// Mount `fs` at `mountpoint`. Returns once the kernel has accepted the
/// mount; call `run()` on the session to serve requests (until unmounted).
pub fn mount<B: Backend>(fs: Arc<StokerFs<B>>, mountpoint: &Path, opts: &MountOptions) -> io::Result<StokerSession<B>> {
    let mut options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("stoker".into()),
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        // Read-only in the VFS: write opens, creates, renames, chmod ... fail
        // with EROFS in the kernel, without a round trip, and an open with
        // write intent can never slip past a no-open connection.
        if opts.writable { MountOption::RW } else { MountOption::RO },
        MountOption::CUSTOM(format!("max_read={}", opts.max_read_bytes.max(4096))),
    ];
    if opts.auto_unmount {
        options.push(MountOption::AutoUnmount);
    }
    if opts.writable && opts.allow_other {
        // One user cannot overwrite another's files: the kernel checks modes.
        options.push(MountOption::DefaultPermissions);
    }
    let mut cfg = Config::default();
    cfg.mount_options = options;
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else if opts.auto_unmount {
        // auto_unmount needs allow_other in the kernel; fuser then admits only root and us.
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let uring = opts.uring && !opts.writable;
    // With the ring on, /dev/fuse carries only what comes before the ring is
    // ready, FORGETs and INTERRUPTs: two threads are plenty.
    cfg.n_threads = Some(if uring { 2 } else { opts.threads.clamp(1, 256) });
    cfg.clone_fd = true;
    let tuning = KernelTuning {
        readahead_bytes: opts.readahead_bytes,
        max_background: opts.max_background,
        no_open: opts.no_open && !opts.writable,
        uring,
    };
    let agreed = Arc::new(Negotiated::default());
    // A low descriptor, taken before fuser opens any /dev/fuse one, for
    // the fusermount3 socket (see `close_last`).
    let low = opts.auto_unmount.then(|| std::fs::File::open("/dev/null").ok()).flatten();
    let sockets_before = socket_fds();
    let session = fuser::Session::new(FuseFs::with_negotiated(fs.clone(), tuning, agreed.clone()), mountpoint, &cfg)?;
    if let Some(low) = low {
        close_last(sockets_before, low);
    }
    if uring {
        use std::os::fd::AsFd;
        use std::sync::atomic::Ordering;
        if !agreed.uring.load(Ordering::Relaxed) {
            return Err(io::Error::other("the kernel did not offer FUSE over io_uring at INIT"));
        }
        let fd = session.as_fd().try_clone_to_owned()?;
        // Each ring thread holds one request at a time, and a request waits
        // for an entry of its own CPU's queue: `threads` per CPU.
        crate::uring::start(fs, fd, opts.threads.clamp(1, 256), agreed.no_open.load(Ordering::Relaxed))?;
    }
    Ok(session)
}

/// This process's descriptors that are sockets.
fn socket_fds() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Vec::new() };
    dir.flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Give the socket opened since `before` (with auto_unmount: the one
/// fusermount3 watches) a second descriptor at `low`, below every /dev/fuse
/// descriptor of the session.
///
/// fusermount3 unmounts a dead mount only if the mount point already
/// answers ENOTCONN when the socket reaches end-of-file, that is, once every
/// /dev/fuse descriptor of the connection is released. When a process is
/// killed its descriptors are closed in ascending order but released last
/// first (the kernel's deferred `fput`s run newest first), and fuser's first
/// /dev/fuse descriptor sits below its socket: fusermount3 could look before
/// that one was released and leave the dead mount in place (seen under
/// load). Held below all of them, the socket is released last.
fn close_last(before: Vec<i32>, low: std::fs::File) {
    use std::os::fd::IntoRawFd;
    let low = low.into_raw_fd();
    let fresh: Vec<i32> = socket_fds().into_iter().filter(|fd| !before.contains(fd)).collect();
    let moved = match fresh.as_slice() {
        // SAFETY: dup3 onto `low`, a descriptor we own (it replaces /dev/null
        // there); the copy is meant to live until the process ends.
        [sock] => (unsafe { libc::dup3(*sock, low, libc::O_CLOEXEC) }) == low,
        _ => false,
    };
    if !moved {
        tracing::debug!(sockets = fresh.len(), "fusermount3 socket not moved below /dev/fuse");
        // SAFETY: closing the /dev/null descriptor we opened and own.
        unsafe { libc::close(low) };
    }
}

/// `fusermount3` (or `fusermount`) on PATH, if any.
pub fn fusermount_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in ["fusermount3", "fusermount"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    /// "major:minor" of the mount's device (its backing-dev-info name).
    pub dev: String,
    pub fstype: String,
    pub source: String,
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let g: Vec<&str> = post.split(' ').collect();
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(f.get(4)?)),
                dev: f.get(2)?.to_string(),
                fstype: g.first()?.to_string(),
                source: g.get(1).map(|s| unescape(s)).unwrap_or_default(),
            })
        })
        .collect()
}

/// The last (topmost) mount at `mountpoint`, if any. Reads only
/// /proc/self/mountinfo, never the mountpoint itself (which may be dead).
pub fn find_mount(mountpoint: &Path) -> io::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = absolute(mountpoint);
    Ok(parse_mountinfo(&text).into_iter().rev().find(|m| m.mountpoint == want))
}

/// Absolute path without touching the (possibly dead) mountpoint itself:
/// canonicalise the parent only.
pub fn absolute(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent.canonicalize().unwrap_or_else(|_| parent.to_path_buf()).join(name),
        _ => abs,
    }
}

/// Raise the kernel readahead of a FUSE mount (the FUSE init reply can only
/// lower it below the 128 KiB default). Needs root.
pub fn set_bdi_readahead(mountpoint: &Path, bytes: u32) -> io::Result<()> {
    let m = find_mount(mountpoint)?.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not mounted"))?;
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", m.dev);
    std::fs::write(&knob, format!("{}", bytes.div_ceil(1024)))
        .map_err(|e| io::Error::new(e.kind(), format!("{knob}: {e}")))
}

/// Unmount `mountpoint`: umount2 as root (MNT_DETACH when `lazy`),
/// otherwise `fusermount3 -u [-z]`.
pub fn unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let abs = absolute(mountpoint);
    let c = CString::new(abs.as_os_str().as_bytes())?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let bin = fusermount_path().ok_or(err)?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg(&abs).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    99 36 0:52 / /tmp/a\\040b rw,nosuid,nodev,noatime shared:5 - fuse.stoker stoker:/train rw,user_id=0\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mountpoint, PathBuf::from("/tmp/a b"));
        assert_eq!(m[1].dev, "0:52");
        assert_eq!(m[1].fstype, "fuse.stoker");
        assert_eq!(m[1].source, "stoker:/train");
        assert_eq!(m[0].fstype, "ext3");
    }
}
