//! ListObjectsV2 and ListObjects on the engine's namespace. With the
//! delimiter `/` a page lists only the directory the prefix ends in (one
//! `Client::list`); any other delimiter, or none, walks the tree under it
//! (`Client::walk`, up to the engine's limit of 1,000,000 files). Either
//! way every page is cut from a fresh listing: a continuation token is the
//! last key or prefix handed out (base64), so pages never repeat or skip a
//! key that stayed put between them.

use crate::etag;
use crate::keys::bucket_path;
use crate::list::{self, Entry, Page, MAX_KEYS};
use crate::s3::Gateway;
use s3s::dto::*;
use s3s::{s3_error, S3Result};
use stoker_proto::control::Kind;

fn token_of(last: &str) -> String {
    base64_simd::URL_SAFE_NO_PAD.encode_to_string(last.as_bytes())
}

fn key_of_token(t: &str) -> S3Result<String> {
    base64_simd::URL_SAFE_NO_PAD
        .decode_to_vec(t.as_bytes())
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "bad continuation token"))
}

/// `s` for `encoding-type=url`: every byte but unreserved ones and `/`
/// percent-encoded.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A file a local-directory mount's persist is writing (`.NAME.stoker-tmp`,
/// renamed to NAME once whole): the engine's listing of under storage can
/// show it for a moment; it is never an object.
fn is_persist_tmp(key: &str) -> bool {
    let name = key.trim_end_matches('/').rsplit('/').next().unwrap_or(key);
    name.starts_with('.') && name.ends_with(".stoker-tmp")
}

fn max_keys(m: Option<i32>) -> usize {
    m.map_or(MAX_KEYS, |m| (m.max(0) as usize).min(MAX_KEYS))
}

impl Gateway {
    /// The entries a page under `prefix` is cut from, sorted by key.
    async fn entries(&self, bucket: &str, prefix: &str, delimiter: Option<&str>) -> S3Result<Vec<Entry>> {
        self.need_bucket(bucket).await?;
        let root = bucket_path(bucket)?;
        // The directory the prefix ends in ("a/b/c" -> "a/b/").
        let rel_dir = &prefix[..prefix.rfind('/').map_or(0, |i| i + 1)];
        let dir = format!("{root}/{}", rel_dir.trim_end_matches('/'));
        let dir = dir.trim_end_matches('/').to_string();
        let by_dir = delimiter == Some("/");
        let d = dir.clone();
        let got = if by_dir {
            self.engine.call(move |c| c.list(&d)).await?
        } else {
            self.engine.call(move |c| c.walk(&d)).await?
        };
        let found = match got {
            Ok(v) => v,
            Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENOTDIR) => return Ok(Vec::new()),
            Err(e) => return Err(crate::errors::from_engine(&dir, &e)),
        };
        let mut out: Vec<Entry> = Vec::with_capacity(found.len());
        for e in found {
            let key = if by_dir {
                format!("{rel_dir}{}{}", e.name, if e.attr.kind == Kind::Dir { "/" } else { "" })
            } else {
                match e.name.strip_prefix(&root).and_then(|k| k.strip_prefix('/')) {
                    Some(k) => k.to_string(),
                    None => continue,
                }
            };
            if !key.starts_with(prefix) || is_persist_tmp(&key) {
                continue;
            }
            out.push(Entry { dir: e.attr.kind == Kind::Dir, key, attr: e.attr });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn page(&self, bucket: &str, prefix: &str, delimiter: Option<&str>, after: Option<&str>, max: usize) -> S3Result<Page> {
        let entries = self.entries(bucket, prefix, delimiter).await?;
        Ok(list::page(&entries, prefix, delimiter, after, max))
    }

    pub(crate) async fn list_v2(&self, i: ListObjectsV2Input) -> S3Result<ListObjectsV2Output> {
        let prefix = i.prefix.clone().unwrap_or_default();
        let token = i.continuation_token.as_deref().map(key_of_token).transpose()?;
        // Resume after the later of the token and start-after.
        let after = match (token.as_deref(), i.start_after.as_deref()) {
            (Some(t), Some(s)) => Some(t.max(s).to_string()),
            (t, s) => t.or(s).map(str::to_string),
        };
        let max = max_keys(i.max_keys);
        let p = self.page(&i.bucket, &prefix, i.delimiter.as_deref(), after.as_deref(), max).await?;
        let url = i.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let key_count = (p.objects.len() + p.prefixes.len()) as i32;
        Ok(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: Some(enc(prefix)),
            delimiter: i.delimiter.map(enc),
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            continuation_token: i.continuation_token,
            start_after: i.start_after.map(enc),
            is_truncated: Some(p.truncated),
            next_continuation_token: if p.truncated { p.last.as_deref().map(token_of) } else { None },
            contents: Some(p.objects.into_iter().map(|o| object(o, &enc)).collect()),
            common_prefixes: Some(p.prefixes.into_iter().map(|x| CommonPrefix { prefix: Some(enc(x)) }).collect()),
            encoding_type: i.encoding_type,
            ..Default::default()
        })
    }

    pub(crate) async fn list_v1(&self, i: ListObjectsInput) -> S3Result<ListObjectsOutput> {
        let prefix = i.prefix.clone().unwrap_or_default();
        let max = max_keys(i.max_keys);
        let p = self.page(&i.bucket, &prefix, i.delimiter.as_deref(), i.marker.as_deref(), max).await?;
        let url = i.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        Ok(ListObjectsOutput {
            name: Some(i.bucket),
            prefix: Some(enc(prefix)),
            delimiter: i.delimiter.map(enc),
            marker: i.marker.map(enc),
            max_keys: Some(max as i32),
            is_truncated: Some(p.truncated),
            next_marker: if p.truncated { p.last.map(enc) } else { None },
            contents: Some(p.objects.into_iter().map(|o| object(o, &enc)).collect()),
            common_prefixes: Some(p.prefixes.into_iter().map(|x| CommonPrefix { prefix: Some(enc(x)) }).collect()),
            encoding_type: i.encoding_type,
            ..Default::default()
        })
    }
}

fn object(e: Entry, enc: &impl Fn(String) -> String) -> Object {
    Object {
        e_tag: Some(etag::etag(&e.attr)),
        last_modified: Some(etag::last_modified(&e.attr)),
        size: Some(e.attr.size as i64),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        key: Some(enc(e.key)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_url_encoding() {
        assert_eq!(key_of_token(&token_of("a/b c+ü")).unwrap(), "a/b c+ü");
        assert!(key_of_token("!!").is_err());
        assert_eq!(url_encode("a/b c+%"), "a/b%20c%2B%25");
        assert!(is_persist_tmp("a/.k1.stoker-tmp") && !is_persist_tmp("a/k1.stoker-tmp") && !is_persist_tmp(".a/k"));
        assert_eq!(max_keys(None), 1000);
        assert_eq!(max_keys(Some(5000)), 1000);
        assert_eq!(max_keys(Some(-1)), 0);
    }
}
