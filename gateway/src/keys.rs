//! Bucket and key to a namespace path: `/BUCKET/KEY`. A key is a relative
//! path: no empty, `.` or `..` component (S3 allows them; a file system
//! cannot hold them), at most 1,024 bytes. A key ending in `/` names a
//! directory (the "folder" objects some clients make).

use s3s::{s3_error, S3Result};

/// Longest key S3 allows.
pub const KEY_BYTES_MAX: usize = 1024;

/// The path of bucket `bucket` (a mount).
pub fn bucket_path(bucket: &str) -> S3Result<String> {
    if bucket.is_empty() || bucket.contains('/') || bucket == "." || bucket == ".." {
        return Err(s3_error!(InvalidBucketName, "bad bucket name {bucket:?}"));
    }
    Ok(format!("/{bucket}"))
}

/// The path of `key` in `bucket`, and whether the key names a directory
/// (ends in `/`; the path has no trailing `/`).
pub fn object_path(bucket: &str, key: &str) -> S3Result<(String, bool)> {
    let b = bucket_path(bucket)?;
    if key.len() > KEY_BYTES_MAX {
        return Err(s3_error!(KeyTooLongError, "a key is at most {KEY_BYTES_MAX} bytes"));
    }
    let (rel, dir) = match key.strip_suffix('/') {
        Some(r) => (r, true),
        None => (key, false),
    };
    if rel.is_empty() || rel.contains('\0') || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(s3_error!(
            InvalidArgument,
            "key {key:?} cannot be a file name: no empty, '.' or '..' component (stoker keeps objects as files)"
        ));
    }
    Ok((format!("{b}/{rel}"), dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_paths() {
        assert_eq!(object_path("m", "a/b.txt").unwrap(), ("/m/a/b.txt".into(), false));
        assert_eq!(object_path("m", "a/b/").unwrap(), ("/m/a/b".into(), true));
        for bad in ["", "/a", "a//b", "a/./b", "../x", "a/..", "/"] {
            assert!(object_path("m", bad).is_err(), "{bad:?}");
        }
        assert!(object_path("m", &"k".repeat(1025)).is_err());
        assert!(bucket_path("a/b").is_err());
    }
}

/// Bucket names are mount names, which S3's naming rules (3 to 63
/// characters, ...) would refuse for short names like `m`.
pub struct MountNames;

impl s3s::validation::NameValidation for MountNames {
    fn validate_bucket_name(&self, name: &str) -> bool {
        !name.is_empty() && name.len() <= 255 && name != "." && name != ".." && !name.contains('/') && !name.chars().any(char::is_control)
    }
}

/// Virtual-host-style requests: `BUCKET.DOMAIN[:PORT]` names the bucket;
/// any other host (`DOMAIN`, an IP address, another name of the machine)
/// is path-style. (s3s's `SingleDomain` keeps the port and takes any other
/// host for a bucket name.)
pub struct Domain(pub String);

impl s3s::host::S3Host for Domain {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<s3s::host::VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) && (!n.contains(':') || n.ends_with(']')) => n,
            _ => host,
        };
        let bucket = name.strip_suffix(self.0.as_str()).and_then(|b| b.strip_suffix('.')).filter(|b| !b.is_empty());
        Ok(match bucket {
            Some(b) => s3s::host::VirtualHost::new(self.0.as_str()).with_bucket(b),
            None => s3s::host::VirtualHost::new(name),
        })
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;
    use s3s::host::S3Host;

    #[test]
    fn hosts_name_buckets_or_not() {
        let d = Domain("localhost".into());
        assert_eq!(d.parse_host_header("data.localhost:9000").unwrap().bucket(), Some("data"));
        assert_eq!(d.parse_host_header("a.b.localhost").unwrap().bucket(), Some("a.b"));
        assert_eq!(d.parse_host_header("localhost:9000").unwrap().bucket(), None);
        assert_eq!(d.parse_host_header("gpu-7.example.com:9000").unwrap().bucket(), None);
        assert_eq!(d.parse_host_header("[::1]:9000").unwrap().domain(), "[::1]");
        assert_eq!(d.parse_host_header("[::1]").unwrap().domain(), "[::1]");
    }
}
