//! Errors of the filesystem layer. Typed here; turned into an errno only at
//! the FUSE edge (`fuse.rs`) through [`FsError::errno`].

/// What went wrong in one filesystem operation.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{op} on {path} refused: stoker mounts are read-only (write-back is not implemented yet)")]
    ReadOnly { op: &'static str, path: String },
    #[error("{path}: not a directory")]
    NotDir { path: String },
    #[error("{path}: is a directory")]
    IsDir { path: String },
    #[error("{path}: permission denied ({what})")]
    Access { path: String, what: &'static str },
    #[error("{path}: name longer than {max} bytes")]
    NameTooLong { path: String, max: usize },
    #[error("inode {0} is unknown (forgotten or never looked up)")]
    StaleInode(u64),
    #[error("file handle {0} is not open")]
    BadHandle(u64),
    #[error("{op} is not supported on a stoker mount")]
    Unsupported { op: &'static str },
    /// The engine (or under storage behind it) failed; `source.errno()` is kept.
    #[error("{path}: {source}")]
    Backend { path: String, source: stoker_client::Error },
}

pub type Result<T> = std::result::Result<T, FsError>;

impl FsError {
    /// The Linux errno a caller of the mount sees.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound { .. } => libc::ENOENT,
            FsError::ReadOnly { .. } => libc::EROFS,
            FsError::NotDir { .. } => libc::ENOTDIR,
            FsError::IsDir { .. } => libc::EISDIR,
            FsError::Access { .. } => libc::EACCES,
            FsError::NameTooLong { .. } => libc::ENAMETOOLONG,
            FsError::StaleInode(_) => libc::ESTALE,
            FsError::BadHandle(_) => libc::EBADF,
            // ENOSYS is what the kernel remembers as "never ask again" (xattrs).
            FsError::Unsupported { .. } => libc::ENOSYS,
            FsError::Backend { source, .. } => match source.errno() {
                0 => libc::EIO,
                // Time-outs and a lost engine are I/O errors to a reader.
                libc::ETIMEDOUT | libc::ECONNRESET | libc::ECONNREFUSED | libc::EPROTO => libc::EIO,
                e => e,
            },
        }
    }

    /// Expected outcomes (a missing file, a refused write) are not failures of
    /// the mount; they are logged quietly.
    pub fn is_expected(&self) -> bool {
        matches!(
            self.errno(),
            libc::ENOENT | libc::ENOTDIR | libc::EISDIR | libc::ENAMETOOLONG | libc::ENOSYS | libc::EACCES
        )
    }

    pub(crate) fn backend(path: &str, source: stoker_client::Error) -> FsError {
        if source.errno() == libc::ENOENT {
            FsError::NotFound { path: path.to_string() }
        } else {
            FsError::Backend { path: path.to_string(), source }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos() {
        let e = |errno| FsError::backend("/m/f", stoker_client::Error::new(errno, "x"));
        assert_eq!(e(libc::ENOENT).errno(), libc::ENOENT);
        assert!(matches!(e(libc::ENOENT), FsError::NotFound { .. }));
        assert_eq!(e(libc::EIO).errno(), libc::EIO);
        assert_eq!(e(libc::ETIMEDOUT).errno(), libc::EIO);
        assert_eq!(e(libc::EISDIR).errno(), libc::EISDIR);
        assert_eq!(FsError::ReadOnly { op: "write", path: "/m".into() }.errno(), libc::EROFS);
        assert_eq!(FsError::BadHandle(3).errno(), libc::EBADF);
        assert!(!e(libc::EIO).is_expected());
        assert!(e(libc::ENOENT).is_expected());
    }
}
