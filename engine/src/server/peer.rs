//! Who may talk to the engine (docs/SECURITY.md): the sockets' mode and
//! group, and the credentials check every accepted control connection
//! passes before the engine reads a byte from it.
//!
//! The engine admits root, its own uid and — with `--socket-group` — the
//! members of that group. The kernel enforces it first (sockets are mode
//! 0660, group `--socket-group`); `SO_PEERCRED`/`SO_PEERGROUPS` enforce it
//! again, so a socket whose mode was widened by hand admits no one more.
//! This module never reads from or writes to a socket.

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Mode of every socket the engine binds: owner and group read/write.
pub const SOCKET_MODE: u32 = 0o660;
/// Mode of a socket directory the engine creates: the group may reach the
/// sockets in it, no one else may even list it.
pub const SOCKET_DIR_MODE: u32 = 0o750;

/// The peers the engine admits.
#[derive(Clone, Copy, Debug)]
pub struct PeerPolicy {
    /// The engine's own (effective) uid.
    pub uid: u32,
    /// `--socket-group`: its members are admitted too.
    pub group: Option<u32>,
}

/// A connected peer's credentials, as the kernel recorded them at connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (empty where the kernel cannot say).
    pub groups: Vec<u32>,
}

impl PeerPolicy {
    /// The policy of this process with `group` shared.
    pub fn of_this_process(group: Option<u32>) -> PeerPolicy {
        // SAFETY: geteuid has no preconditions and cannot fail.
        PeerPolicy { uid: unsafe { libc::geteuid() }, group }
    }

    pub fn admits(&self, c: &Creds) -> bool {
        c.uid == 0 || c.uid == self.uid || self.group.is_some_and(|g| c.gid == g || c.groups.contains(&g))
    }

    /// The one line a refused peer reads.
    pub fn refusal(&self, c: &Creds) -> String {
        let group = match self.group {
            Some(g) => format!(", uid {} and members of group {g}", self.uid),
            None => format!(" and uid {} (start it with --socket-group to share it)", self.uid),
        };
        format!("permission denied: this stoker engine admits root{group}; you are uid {} gid {} (docs/SECURITY.md)", c.uid, c.gid)
    }
}

/// `SO_PEERGROUPS` (Linux 4.13+); the libc crate does not export it on every target.
const SO_PEERGROUPS: libc::c_int = 59;

/// The credentials of the process at the other end of a Unix stream.
pub fn creds(sock: &impl AsRawFd) -> std::io::Result<Creds> {
    let fd = sock.as_raw_fd();
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` its size.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Creds { pid: cred.pid, uid: cred.uid, gid: cred.gid, groups: peer_groups(fd).unwrap_or_default() })
}

fn peer_groups(fd: RawFd) -> std::io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536; start small and grow once if the kernel asks.
    let mut groups = vec![0u32; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // SAFETY: `groups` is writable for `len` bytes.
        let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len) };
        if rc == 0 {
            groups.truncate(len as usize / 4);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
        groups.resize((len as usize / 4).clamp(1, 65536), 0);
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}

/// `--socket-group`: a group name or a numeric gid.
pub fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    let name = CString::new(s).map_err(|_| format!("bad group name {s:?}"))?;
    let mut grp: libc::group = zeroed_group();
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given; getgrnam_r writes
    // only into `grp` and `buf`, and sets `found` to `&grp` or null.
    let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return Err(format!("no group named {s:?} (give a group name or a numeric gid)"));
    }
    Ok(grp.gr_gid)
}

fn zeroed_group() -> libc::group {
    // SAFETY: `group` is plain old data (pointers and an integer); all-zero
    // is a valid value that getgrnam_r overwrites.
    unsafe { std::mem::zeroed() }
}

/// Give a socket file its mode ([`SOCKET_MODE`]) and group.
pub fn restrict_socket(path: &Path, group: Option<u32>) -> std::io::Result<()> {
    if let Some(g) = group {
        std::os::unix::fs::chown(path, None, Some(g))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
}

/// Create the socket's directory if it is missing, with [`SOCKET_DIR_MODE`]
/// and the socket group, so group members can reach the sockets in it. An
/// existing directory (e.g. /tmp) is left as it is.
pub fn make_socket_dir(dir: &Path, group: Option<u32>) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    if let Some(g) = group {
        std::os::unix::fs::chown(dir, None, Some(g))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(SOCKET_DIR_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(uid: u32, gid: u32, groups: &[u32]) -> Creds {
        Creds { pid: 1, uid, gid, groups: groups.to_vec() }
    }

    #[test]
    fn admits_root_owner_and_group_members_only() {
        let p = PeerPolicy { uid: 1000, group: Some(50) };
        assert!(p.admits(&creds(0, 0, &[])));
        assert!(p.admits(&creds(1000, 1000, &[])));
        assert!(p.admits(&creds(2000, 50, &[])));
        assert!(p.admits(&creds(2000, 2000, &[7, 50])));
        assert!(!p.admits(&creds(2000, 2000, &[7])));
        let alone = PeerPolicy { uid: 1000, group: None };
        assert!(!alone.admits(&creds(2000, 50, &[50])));
        assert!(alone.refusal(&creds(2000, 2000, &[])).contains("uid 2000"));
    }

    #[test]
    fn own_creds_over_a_socketpair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = super::creds(&a).unwrap();
        assert_eq!(c.pid, std::process::id() as i32);
        assert!(PeerPolicy::of_this_process(None).admits(&c));
    }

    #[test]
    fn groups_by_number_or_name() {
        assert_eq!(parse_group("4242"), Ok(4242));
        assert_eq!(parse_group("root"), Ok(0));
        assert!(parse_group("no-such-group-here").unwrap_err().contains("no group named"));
    }
}
