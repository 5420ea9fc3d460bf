//! A request body (PutObject, UploadPart) streamed to where it goes — an
//! engine write handle or a staged part file — in pieces of at most
//! `PIECE_BYTES`, never held whole. Its MD5 and the checksums the client
//! sent (`Content-MD5`, `x-amz-checksum-*` as headers or as `aws-chunked`
//! trailers; s3s has already decoded the chunks and checked their
//! signatures) are computed on the way and compared at the end: a mismatch
//! is BadDigest and the caller drops what was written.

use crate::engine::Engine;
use futures::StreamExt;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::{Checksum, StreamingBlob};
use s3s::{s3_error, S3Result, TrailingHeaders};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Bytes gathered before one write: one engine call or file write each.
pub const PIECE_BYTES: usize = 1 << 20;

pub enum Target<'a> {
    /// An engine write handle of `path`.
    Engine { engine: &'a Engine, handle: u64, path: &'a str },
    File(&'a mut tokio::fs::File),
}

/// What the client said the body is.
#[derive(Default)]
pub struct Expected {
    /// `Content-MD5` (base64).
    pub content_md5: Option<String>,
    /// `x-amz-checksum-*` headers given with the request.
    pub checksum: Checksum,
    /// Algorithms to compute though no value came with the headers: named
    /// by `x-amz-sdk-checksum-algorithm` or `x-amz-trailer`.
    pub algorithms: Vec<String>,
    pub trailers: Option<TrailingHeaders>,
}

/// The [`Expected`] of a PutObject or UploadPart input `$i` (the two name
/// these fields alike), with the algorithm an `x-amz-trailer` named and
/// the trailing headers that came.
macro_rules! expected_of {
    ($i:expr, $trailer:expr, $trailers:expr) => {{
        let mut algorithms: Vec<String> = $i.checksum_algorithm.iter().map(|a| a.as_str().to_string()).collect();
        algorithms.extend($trailer);
        $crate::body::Expected {
            content_md5: $i.content_md5,
            checksum: s3s::dto::Checksum {
                checksum_crc32: $i.checksum_crc32,
                checksum_crc32c: $i.checksum_crc32c,
                checksum_crc64nvme: $i.checksum_crc64nvme,
                checksum_sha1: $i.checksum_sha1,
                checksum_sha256: $i.checksum_sha256,
                checksum_type: None,
            },
            algorithms,
            trailers: $trailers,
        }
    }};
}
pub(crate) use expected_of;

pub struct Received {
    pub bytes: u64,
    pub md5: [u8; 16],
    pub checksum: Checksum,
}

fn hasher_for(e: &Expected) -> ChecksumHasher {
    let c = &e.checksum;
    let named = |alg: &str| e.algorithms.iter().any(|a| a.eq_ignore_ascii_case(alg));
    let mut h = ChecksumHasher::default();
    if c.checksum_crc32.is_some() || named("crc32") {
        h.crc32 = Some(s3s::crypto::Crc32::new());
    }
    if c.checksum_crc32c.is_some() || named("crc32c") {
        h.crc32c = Some(s3s::crypto::Crc32c::new());
    }
    if c.checksum_crc64nvme.is_some() || named("crc64nvme") {
        h.crc64nvme = Some(s3s::crypto::Crc64Nvme::new());
    }
    if c.checksum_sha1.is_some() || named("sha1") {
        h.sha1 = Some(s3s::crypto::Sha1::new());
    }
    if c.checksum_sha256.is_some() || named("sha256") {
        h.sha256 = Some(s3s::crypto::Sha256::new());
    }
    h
}

/// The algorithm a `x-amz-trailer` or `x-amz-checksum-*` header name stands for.
pub fn algorithm_of_header(name: &str) -> Option<String> {
    name.trim().strip_prefix("x-amz-checksum-").filter(|a| !a.is_empty() && *a != "mode" && *a != "type").map(str::to_string)
}

async fn put(target: &mut Target<'_>, off: u64, piece: Vec<u8>) -> S3Result<()> {
    match target {
        Target::Engine { engine, handle, path } => {
            let h = *handle;
            match engine.call(move |c| c.write_at(h, off, &piece)).await? {
                Ok(()) => Ok(()),
                Err(e) => Err(crate::errors::from_engine(path, &e)),
            }
        }
        Target::File(f) => f.write_all(&piece).await.map_err(|e| s3_error!(InternalError, "staging a part: {e}")),
    }
}

/// Stream `body` into `target`, at most `bytes_max` bytes, each piece
/// arriving within `idle`.
pub async fn receive(
    body: Option<StreamingBlob>,
    mut target: Target<'_>,
    want: &Expected,
    bytes_max: u64,
    idle: Duration,
) -> S3Result<Received> {
    let mut md5 = Md5::new();
    let mut sums = hasher_for(want);
    let mut total = 0u64;
    let mut piece: Vec<u8> = Vec::with_capacity(PIECE_BYTES);
    if let Some(mut body) = body {
        loop {
            let next = match tokio::time::timeout(idle, body.next()).await {
                Ok(n) => n,
                Err(_) => return Err(s3_error!(RequestTimeout, "no body data for {idle:?}")),
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "reading the body: {e}"))?;
            total += chunk.len() as u64;
            if total > bytes_max {
                return Err(s3_error!(EntityTooLarge, "at most {bytes_max} bytes in one request"));
            }
            md5.update(&chunk);
            sums.update(&chunk);
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                let n = rest.len().min(PIECE_BYTES - piece.len());
                piece.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if piece.len() == PIECE_BYTES {
                    let full = std::mem::replace(&mut piece, Vec::with_capacity(PIECE_BYTES));
                    put(&mut target, total - rest.len() as u64 - full.len() as u64, full).await?;
                }
            }
        }
    }
    if !piece.is_empty() {
        let n = piece.len() as u64;
        put(&mut target, total - n, piece).await?;
    }
    let md5 = md5.finalize();
    let got = sums.finalize();
    if let Some(b64) = &want.content_md5 {
        let given = base64_simd::STANDARD.decode_to_vec(b64.trim()).map_err(|_| s3_error!(InvalidDigest, "Content-MD5 is not base64"))?;
        if given.len() != 16 {
            return Err(s3_error!(InvalidDigest, "Content-MD5 is not 16 bytes"));
        }
        if given != md5 {
            return Err(s3_error!(BadDigest, "the Content-MD5 you specified did not match what was received"));
        }
    }
    let mut expected = want.checksum.clone();
    if let Some(t) = &want.trailers {
        if let Some(map) = t.take() {
            let get = |n: &str| map.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
            expected.checksum_crc32 = expected.checksum_crc32.or_else(|| get("x-amz-checksum-crc32"));
            expected.checksum_crc32c = expected.checksum_crc32c.or_else(|| get("x-amz-checksum-crc32c"));
            expected.checksum_crc64nvme = expected.checksum_crc64nvme.or_else(|| get("x-amz-checksum-crc64nvme"));
            expected.checksum_sha1 = expected.checksum_sha1.or_else(|| get("x-amz-checksum-sha1"));
            expected.checksum_sha256 = expected.checksum_sha256.or_else(|| get("x-amz-checksum-sha256"));
        }
    }
    let pairs = [
        ("CRC32", &expected.checksum_crc32, &got.checksum_crc32),
        ("CRC32C", &expected.checksum_crc32c, &got.checksum_crc32c),
        ("CRC64NVME", &expected.checksum_crc64nvme, &got.checksum_crc64nvme),
        ("SHA1", &expected.checksum_sha1, &got.checksum_sha1),
        ("SHA256", &expected.checksum_sha256, &got.checksum_sha256),
    ];
    for (name, want, got) in pairs {
        if let (Some(w), Some(g)) = (want, got) {
            if w.trim() != g {
                return Err(s3_error!(BadDigest, "the {name} you specified did not match the calculated checksum"));
            }
        }
    }
    Ok(Received { bytes: total, md5, checksum: got })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn blob(chunks: Vec<Vec<u8>>) -> StreamingBlob {
        StreamingBlob::wrap(futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, std::io::Error>(Bytes::from(c)))))
    }

    fn md5_b64(data: &[u8]) -> String {
        base64_simd::STANDARD.encode_to_string(Md5::checksum(data))
    }

    #[tokio::test]
    async fn pieces_land_in_order_and_digests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(PIECE_BYTES * 2 + 12_345)).map(|i| (i * 7 % 251) as u8).collect();
        // Odd chunk sizes that straddle piece boundaries.
        let chunks: Vec<Vec<u8>> = data.chunks(333_333).map(|c| c.to_vec()).collect();
        let crc = {
            let mut h = ChecksumHasher { crc32: Some(s3s::crypto::Crc32::new()), ..Default::default() };
            h.update(&data);
            h.finalize().checksum_crc32
        };
        let want = Expected {
            content_md5: Some(md5_b64(&data)),
            checksum: Checksum { checksum_crc32: crc.clone(), ..Default::default() },
            ..Default::default()
        };
        let path = dir.path().join("f");
        let mut f = tokio::fs::File::create(&path).await.unwrap();
        let got = receive(Some(blob(chunks.clone())), Target::File(&mut f), &want, 1 << 30, Duration::from_secs(5)).await.unwrap();
        f.flush().await.unwrap();
        assert_eq!(got.bytes, data.len() as u64);
        assert_eq!(got.checksum.checksum_crc32, crc);
        assert!(std::fs::read(&path).unwrap() == data);

        let code = |r: S3Result<Received>| r.err().map(|e| e.code().clone());
        let mut f = tokio::fs::File::create(dir.path().join("g")).await.unwrap();
        let bad_md5 = Expected { content_md5: Some(md5_b64(b"other")), ..Default::default() };
        let r = receive(Some(blob(chunks.clone())), Target::File(&mut f), &bad_md5, 1 << 30, Duration::from_secs(5)).await;
        assert_eq!(code(r), Some(s3s::S3ErrorCode::BadDigest));
        let bad_crc = Expected { checksum: Checksum { checksum_crc32: Some("AAAAAA==".into()), ..Default::default() }, ..Default::default() };
        let r = receive(Some(blob(chunks.clone())), Target::File(&mut f), &bad_crc, 1 << 30, Duration::from_secs(5)).await;
        assert_eq!(code(r), Some(s3s::S3ErrorCode::BadDigest));
        let r = receive(Some(blob(chunks)), Target::File(&mut f), &Expected::default(), 1 << 20, Duration::from_secs(5)).await;
        assert_eq!(code(r), Some(s3s::S3ErrorCode::EntityTooLarge));
        assert_eq!(algorithm_of_header("x-amz-checksum-crc32c").as_deref(), Some("crc32c"));
        assert_eq!(algorithm_of_header("x-amz-checksum-mode"), None);
    }
}
