//! Namespace attributes -> kernel attributes. Pure functions, no I/O.
//!
//! Every file is mode 0444 and every directory 0555 (the mount is read-only),
//! owned by the user that mounted. atime and ctime are the object's mtime.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stoker_client::Kind;
use stoker_proto::control::Attr;

/// Who owns every inode, and the st_blksize reported (the preferred I/O size).
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
}

pub const FILE_PERM: u16 = 0o444;
pub const DIR_PERM: u16 = 0o555;

pub fn mtime(attr: &Attr) -> SystemTime {
    if attr.mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(attr.mtime_ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(attr.mtime_ns.unsigned_abs())
    }
}

pub fn file_type(kind: Kind) -> fuser::FileType {
    match kind {
        Kind::File => fuser::FileType::RegularFile,
        Kind::Dir => fuser::FileType::Directory,
    }
}

pub fn to_file_attr(ino: u64, attr: &Attr, owner: &Owner) -> fuser::FileAttr {
    let t = mtime(attr);
    let (perm, nlink, size) = match attr.kind {
        Kind::File => (FILE_PERM, 1, attr.size),
        // Directories have no meaningful size; report one block like ext4.
        Kind::Dir => (DIR_PERM, 2, 4096),
    };
    fuser::FileAttr {
        ino: fuser::INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(attr.kind),
        perm,
        nlink,
        uid: owner.uid,
        gid: owner.gid,
        rdev: 0,
        blksize: owner.blksize,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_dir() {
        let owner = Owner { uid: 7, gid: 8, blksize: 1 << 20 };
        let f = Attr { kind: Kind::File, size: 4097, mtime_ns: 1_500_000_000_123_456_789, version: "v".into() };
        let a = to_file_attr(42, &f, &owner);
        assert_eq!(a.ino, fuser::INodeNo(42));
        assert_eq!(a.size, 4097);
        assert_eq!(a.blocks, 9);
        assert_eq!(a.perm, 0o444);
        assert_eq!(a.kind, fuser::FileType::RegularFile);
        assert_eq!((a.uid, a.gid, a.blksize), (7, 8, 1 << 20));
        assert_eq!(a.mtime.duration_since(UNIX_EPOCH).unwrap().as_nanos(), 1_500_000_000_123_456_789);
        let d = Attr { kind: Kind::Dir, size: 0, mtime_ns: -1_000_000_000, version: String::new() };
        let a = to_file_attr(1, &d, &owner);
        assert_eq!(a.kind, fuser::FileType::Directory);
        assert_eq!(a.perm, 0o555);
        assert_eq!(a.nlink, 2);
        assert_eq!(UNIX_EPOCH.duration_since(a.mtime).unwrap(), Duration::from_secs(1));
    }
}
