//! CopyObject whose source bucket is a mount name S3's naming rules refuse
//! (`m`, `Train_v2`): s3s parses `x-amz-copy-source` with those rules and
//! would answer InvalidArgument before the operation runs, so such requests
//! are routed here (after s3s checked their signature) and handed to the
//! same copy as the others. Spark's s3a renames are copies: they must work
//! on every mount.

use crate::etag::Conditions;
use crate::keys::Domain;
use crate::s3::Gateway;
use hyper::http::{Extensions, HeaderMap, Method, Uri};
use s3s::dto::{ETagCondition, Timestamp, TimestampFormat};
use s3s::host::S3Host;
use s3s::route::S3Route;
use s3s::{s3_error, Body, S3Request, S3Response, S3Result};

pub struct CopyRoute {
    pub gw: Gateway,
    pub domain: Domain,
    pub authenticated: bool,
}

/// (bucket, key) of an `x-amz-copy-source` value: `[/]BUCKET/KEY[?versionId=..]`, percent-encoded.
fn source(h: &str) -> Option<(String, String)> {
    let path = h.split_once('?').map_or(h, |(p, _)| p);
    let decoded = percent_decode(path)?;
    let decoded = decoded.strip_prefix('/').unwrap_or(&decoded).to_string();
    let (b, k) = decoded.split_once('/')?;
    (!b.is_empty() && !k.is_empty()).then(|| (b.to_string(), k.to_string()))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn etag_cond(h: &HeaderMap, name: &str) -> S3Result<Option<ETagCondition>> {
    header(h, name)
        .map(|v| ETagCondition::parse_http_header(v.as_bytes()).map_err(|_| s3_error!(InvalidArgument, "bad {name}")))
        .transpose()
}

fn date(h: &HeaderMap, name: &str) -> S3Result<Option<Timestamp>> {
    header(h, name).map(|v| Timestamp::parse(TimestampFormat::HttpDate, v).map_err(|_| s3_error!(InvalidArgument, "bad {name}"))).transpose()
}

#[async_trait::async_trait]
impl S3Route for CopyRoute {
    fn is_match(&self, method: &Method, uri: &Uri, headers: &HeaderMap, _: &mut Extensions) -> bool {
        if method != Method::PUT || uri.query().is_some_and(|q| q.contains("uploadId")) {
            return false;
        }
        match header(headers, "x-amz-copy-source").and_then(source) {
            Some((bucket, _)) => !s3s::path::check_bucket_name(&bucket),
            None => false,
        }
    }

    async fn check_access(&self, req: &mut S3Request<Body>) -> S3Result<()> {
        if self.authenticated && req.credentials.is_none() {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        }
        Ok(())
    }

    async fn call(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let h = &req.headers;
        let (sb, sk) = header(h, "x-amz-copy-source").and_then(source).ok_or_else(|| s3_error!(InvalidArgument, "bad x-amz-copy-source"))?;
        let path = percent_decode(req.uri.path()).ok_or_else(|| s3_error!(InvalidURI))?;
        let path = path.strip_prefix('/').unwrap_or(&path);
        let vbucket = match header(h, "host") {
            Some(host) => self.domain.parse_host_header(host)?.bucket().map(str::to_string),
            None => None,
        };
        let (db, dk) = match vbucket {
            Some(b) => (b, path.to_string()),
            None => path.split_once('/').map(|(b, k)| (b.to_string(), k.to_string())).ok_or_else(|| s3_error!(InvalidRequest, "no key to copy to"))?,
        };
        let cond = Conditions {
            if_match: etag_cond(h, "x-amz-copy-source-if-match")?,
            if_none_match: etag_cond(h, "x-amz-copy-source-if-none-match")?,
            if_modified_since: date(h, "x-amz-copy-source-if-modified-since")?,
            if_unmodified_since: date(h, "x-amz-copy-source-if-unmodified-since")?,
        };
        let replace = header(h, "x-amz-metadata-directive").is_some_and(|d| d.eq_ignore_ascii_case("REPLACE"));
        let out = self.gw.copy_object_between(&sb, &sk, &db, &dk, cond, replace).await?;
        let result = out.copy_object_result.unwrap_or_default();
        let mut buf = Vec::with_capacity(256);
        {
            let mut ser = s3s::xml::Serializer::new(&mut buf);
            ser.decl().and_then(|()| s3s::xml::Serialize::serialize(&result, &mut ser)).map_err(|e| s3_error!(InternalError, "{e}"))?;
        }
        let mut resp = S3Response::new(Body::from(buf));
        resp.headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/xml"));
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources() {
        assert_eq!(source("m/a%20b/c.txt"), Some(("m".into(), "a b/c.txt".into())));
        assert_eq!(source("/Train_v2/k?versionId=3"), Some(("Train_v2".into(), "k".into())));
        assert_eq!(source("m"), None);
        assert_eq!(source("m/"), None);
        assert_eq!(percent_decode("%zz"), None);
    }
}
