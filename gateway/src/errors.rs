//! A failed engine call as an S3 error: one mapping, by errno, for every
//! operation (docs/GATEWAY.md, "Errors"). A missing path is NoSuchKey here;
//! the operations that can tell a missing bucket say NoSuchBucket.

use s3s::{S3Error, S3ErrorCode};
use stoker_client::Error;

/// `e`, from an operation on `path`, as the S3 error a client expects.
pub fn from_engine(path: &str, e: &Error) -> S3Error {
    let code = match e.errno() {
        libc::ENOENT | libc::ENOTDIR | libc::EISDIR => S3ErrorCode::NoSuchKey,
        libc::EROFS | libc::EACCES | libc::EPERM => S3ErrorCode::AccessDenied,
        libc::ENAMETOOLONG => S3ErrorCode::KeyTooLongError,
        libc::EINVAL | libc::EEXIST | libc::ENOTEMPTY => S3ErrorCode::InvalidArgument,
        libc::EOPNOTSUPP => S3ErrorCode::NotImplemented,
        libc::ETIMEDOUT | libc::ECONNREFUSED | libc::ECONNRESET | libc::EAGAIN | libc::ENOSPC | libc::EDQUOT => {
            S3ErrorCode::ServiceUnavailable
        }
        _ => S3ErrorCode::InternalError,
    };
    if code == S3ErrorCode::InternalError || code == S3ErrorCode::ServiceUnavailable {
        tracing::warn!("s3 gateway: {path}: {e}");
    }
    let msg = match code {
        S3ErrorCode::AccessDenied => format!("{path}: the mount is read-only or the write is not allowed ({e})"),
        _ => e.to_string(),
    };
    S3Error::with_message(code, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_s3_codes() {
        let code = |errno| from_engine("/m/k", &Error::new(errno, "x")).code().clone();
        assert_eq!(code(libc::ENOENT), S3ErrorCode::NoSuchKey);
        assert_eq!(code(libc::EROFS), S3ErrorCode::AccessDenied);
        assert_eq!(code(libc::ENAMETOOLONG), S3ErrorCode::KeyTooLongError);
        assert_eq!(code(libc::ETIMEDOUT), S3ErrorCode::ServiceUnavailable);
        assert_eq!(code(libc::EIO), S3ErrorCode::InternalError);
    }
}
