//! ETags and conditional requests.
//!
//! An object's ETag is derived from what the engine says identifies its
//! content: its version token (the under-storage ETag, size+mtime for a
//! file system, or the write's id for a file written through stoker), its
//! size and its mtime — 24 hex digits of their xxh3-128 hash. It is stable
//! while the object is unchanged (across restarts too) and changes when it
//! is rewritten. It is not an MD5 of the content: 24 digits, not 32, so
//! clients that check an MD5-looking ETag (rclone) see that it is not one.

use s3s::dto::{ETag, ETagCondition, Timestamp};
use s3s::{s3_error, S3Error, S3ErrorCode, S3Result};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stoker_proto::control::Attr;

/// The ETag value (unquoted) of an object with these attributes.
pub fn etag_of(a: &Attr) -> String {
    let mut buf = Vec::with_capacity(a.version.len() + 17);
    buf.extend_from_slice(a.version.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&a.size.to_le_bytes());
    buf.extend_from_slice(&a.mtime_ns.to_le_bytes());
    let h = xxhash_rust::xxh3::xxh3_128(&buf);
    format!("{:024x}", h >> 32)
}

pub fn etag(a: &Attr) -> ETag {
    ETag::Strong(etag_of(a))
}

pub fn mtime(a: &Attr) -> SystemTime {
    if a.mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(a.mtime_ns as u64)
    } else {
        UNIX_EPOCH
    }
}

pub fn last_modified(a: &Attr) -> Timestamp {
    Timestamp::from(mtime(a))
}

/// The [`Conditions`] of a GetObject or HeadObject input (the two name
/// the headers alike).
macro_rules! conditions_of {
    ($i:expr) => {
        $crate::etag::Conditions {
            if_match: $i.if_match,
            if_none_match: $i.if_none_match,
            if_modified_since: $i.if_modified_since,
            if_unmodified_since: $i.if_unmodified_since,
        }
    };
}
pub(crate) use conditions_of;

/// The conditional headers of a GET or HEAD (RFC 9110 §13.2.2 order).
#[derive(Default)]
pub struct Conditions {
    pub if_match: Option<ETagCondition>,
    pub if_none_match: Option<ETagCondition>,
    pub if_modified_since: Option<Timestamp>,
    pub if_unmodified_since: Option<Timestamp>,
}

fn matches(c: &ETagCondition, etag: &str) -> bool {
    match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

/// Whole seconds: HTTP dates carry no more.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_secs(t: &Timestamp) -> u64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp().max(0) as u64
}

impl Conditions {
    /// Ok to serve, or 412 PreconditionFailed, or 304 NotModified.
    pub fn check(&self, a: &Attr) -> S3Result<()> {
        let tag = etag_of(a);
        let modified = secs(mtime(a));
        if let Some(c) = &self.if_match {
            if !matches(c, &tag) {
                return Err(s3_error!(PreconditionFailed, "If-Match: the ETag is \"{tag}\""));
            }
        } else if let Some(t) = &self.if_unmodified_since {
            if modified > unix_secs(t) {
                return Err(s3_error!(PreconditionFailed, "If-Unmodified-Since: the object was modified since"));
            }
        }
        if let Some(c) = &self.if_none_match {
            if matches(c, &tag) {
                return Err(not_modified());
            }
        } else if let Some(t) = &self.if_modified_since {
            if modified <= unix_secs(t) {
                return Err(not_modified());
            }
        }
        Ok(())
    }
}

fn not_modified() -> S3Error {
    let mut e = S3Error::new(S3ErrorCode::NotModified);
    e.set_status_code(hyper::StatusCode::NOT_MODIFIED);
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoker_client::Kind;

    fn attr(version: &str, size: u64, mtime_s: i64) -> Attr {
        Attr { kind: Kind::File, size, mtime_ns: mtime_s * 1_000_000_000, version: version.into() }
    }

    #[test]
    fn etag_is_stable_and_changes_with_the_object() {
        let a = attr("w1", 10, 100);
        assert_eq!(etag_of(&a), etag_of(&a.clone()));
        assert_eq!(etag_of(&a).len(), 24);
        assert_ne!(etag_of(&a), etag_of(&attr("w2", 10, 100)));
        assert_ne!(etag_of(&a), etag_of(&attr("w1", 11, 100)));
        assert_ne!(etag_of(&a), etag_of(&attr("w1", 10, 101)));
    }

    #[test]
    fn conditions_follow_rfc_9110() {
        let a = attr("v", 1, 1_000);
        let tag = etag_of(&a);
        let ts = |s: u64| Timestamp::from(UNIX_EPOCH + Duration::from_secs(s));
        let code = |c: Conditions| c.check(&a).err().map(|e| e.code().clone());
        let m = |t: &str| Some(ETagCondition::ETag(ETag::Strong(t.into())));
        assert_eq!(code(Conditions { if_match: m(&tag), ..Default::default() }), None);
        assert_eq!(code(Conditions { if_match: m("x"), ..Default::default() }), Some(S3ErrorCode::PreconditionFailed));
        assert_eq!(code(Conditions { if_none_match: m(&tag), ..Default::default() }), Some(S3ErrorCode::NotModified));
        assert_eq!(code(Conditions { if_none_match: Some(ETagCondition::Any), ..Default::default() }), Some(S3ErrorCode::NotModified));
        assert_eq!(code(Conditions { if_modified_since: Some(ts(1_000)), ..Default::default() }), Some(S3ErrorCode::NotModified));
        assert_eq!(code(Conditions { if_modified_since: Some(ts(999)), ..Default::default() }), None);
        assert_eq!(code(Conditions { if_unmodified_since: Some(ts(999)), ..Default::default() }), Some(S3ErrorCode::PreconditionFailed));
        // If-Match wins over If-Unmodified-Since; If-None-Match over If-Modified-Since.
        assert_eq!(code(Conditions { if_match: m(&tag), if_unmodified_since: Some(ts(1)), ..Default::default() }), None);
        assert_eq!(code(Conditions { if_none_match: m("x"), if_modified_since: Some(ts(5_000)), ..Default::default() }), None);
    }
}
