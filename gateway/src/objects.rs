//! GetObject, HeadObject, PutObject, DeleteObject(s) and CopyObject on the
//! engine. Reads stream in pieces through a small bounded channel; writes
//! go create → sequential writes → close, and the object appears to every
//! reader at the close, whole (the engine acknowledges the close once the
//! file is durable on its disk, or in under storage for `write=through`).

use crate::body::{self, Target, PIECE_BYTES};
use crate::engine::Engine;
use crate::errors::from_engine;
use crate::etag::{self, Conditions};
use crate::keys::object_path;
use crate::s3::Gateway;
use bytes::Bytes;
use s3s::dto::*;
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{s3_error, S3Request, S3Result, StdError};
use std::pin::Pin;
use std::task::{Context, Poll};
use stoker_proto::control::{Attr, Kind};
use tokio::sync::mpsc;

/// Pieces of a GET read ahead of the client: with `PIECE_BYTES` each, the
/// memory one GET holds.
const READ_AHEAD_PIECES: usize = 2;

/// A GET's body: pieces from the reading task, the length known up front.
struct Pieces {
    rx: mpsc::Receiver<Result<Bytes, StdError>>,
    left: u64,
}

impl futures::Stream for Pieces {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(b))) = &r {
            self.left = self.left.saturating_sub(b.len() as u64);
        }
        r
    }
}

impl ByteStream for Pieces {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(self.left as usize)
    }
}

/// Read `[start, end)` of `path` (whose attributes are `a`) piece by piece
/// into a body. A short read, or an object replaced while it was read,
/// ends the body with an error (the client sees a broken response, never
/// a mix of two versions passed off as one).
fn read_body(engine: Engine, path: String, a: Attr, start: u64, end: u64) -> StreamingBlob {
    let (tx, rx) = mpsc::channel(READ_AHEAD_PIECES);
    tokio::spawn(async move {
        let mut off = start;
        while off < end {
            let len = (end - off).min(PIECE_BYTES as u64);
            let p = path.clone();
            let got = engine.call(move |c| c.read(&p, off, len)).await;
            let piece: Result<Bytes, StdError> = match got {
                Ok(Ok(v)) if v.len() as u64 == len => Ok(Bytes::from(v)),
                Ok(Ok(v)) => Err(format!("{path}: read {} of {len} bytes at {off}: the object changed", v.len()).into()),
                Ok(Err(e)) => Err(format!("{path}: {e}").into()),
                Err(e) => Err(format!("{path}: {e:?}").into()),
            };
            let failed = piece.is_err();
            if let Err(e) = &piece {
                tracing::warn!("s3 gateway: GET {e}");
            }
            if tx.send(piece).await.is_err() || failed {
                return;
            }
            off += len;
        }
        let p = path.clone();
        if let Ok(Ok(now)) = engine.call(move |c| c.stat(&p)).await {
            if etag::etag_of(&now) != etag::etag_of(&a) {
                let _ = tx.send(Err(format!("{path}: the object was replaced while it was read").into())).await;
            }
        }
    });
    StreamingBlob::new(Pieces { rx, left: end - start })
}

/// An engine write handle that is aborted unless closed: a request that
/// fails or is dropped midway leaves nothing behind.
pub(crate) struct Handle {
    engine: Engine,
    pub(crate) handle: u64,
    open: bool,
}

impl Handle {
    /// Close: the object is durable and visible. Its attributes are those
    /// a stat answers from now on (the close's own may carry another
    /// version token), so the ETag handed back is the one later reads see.
    pub(crate) async fn close(mut self, path: &str) -> S3Result<Attr> {
        self.open = false;
        let h = self.handle;
        let p = path.to_string();
        match self.engine.call(move |c| c.close_write(h).and_then(|_| c.stat(&p))).await? {
            Ok(a) => Ok(a),
            Err(e) => Err(from_engine(path, &e)),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.open {
            let c = self.engine.clone();
            let h = self.handle;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = c.call(move |c| c.abort_write(h)).await;
                });
            }
        }
    }
}

fn content_range(start: u64, end: u64, size: u64) -> String {
    format!("bytes {start}-{}/{size}", end - 1)
}

impl Gateway {
    /// InvalidArgument when a directory above `path` is a file: the engine
    /// would take the write and its persist could never succeed. One stat
    /// when the parent exists (the usual case), one more per missing level.
    async fn check_parents(&self, bucket: &str, path: &str) -> S3Result<()> {
        let mount = bucket.len() + 1;
        let mut at = path;
        while let Some(i) = at.rfind('/').filter(|&i| i > mount) {
            at = &path[..i];
            match self.stat(at).await? {
                Some(a) if a.kind == Kind::Dir => return Ok(()),
                Some(_) => {
                    return Err(s3_error!(InvalidArgument, "{at} is an object: a key cannot be both an object and a prefix of others (objects are files)"))
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Start writing `path` in `bucket`.
    pub(crate) async fn create(&self, bucket: &str, path: &str) -> S3Result<Handle> {
        self.check_parents(bucket, path).await?;
        let (p, uid, gid) = (path.to_string(), self.uid, self.gid);
        match self.engine.call(move |c| c.create(&p, 0o644, uid, gid)).await? {
            Ok(handle) => Ok(Handle { engine: self.engine.clone(), handle, open: true }),
            Err(e) if matches!(e.errno(), libc::ENOTDIR | libc::EISDIR) && self.stat(&format!("/{bucket}")).await?.is_some() => {
                Err(s3_error!(InvalidArgument, "{path}: a key cannot be both an object and a prefix of others (objects are files)"))
            }
            Err(e) => Err(self.engine_error(bucket, path, &e).await),
        }
    }

    /// The file object `key` of `bucket` names, and its attributes, once
    /// the request's conditional headers hold for it.
    async fn object_under(&self, bucket: &str, key: &str, cond: Conditions) -> S3Result<(String, Attr)> {
        let (path, dir) = object_path(bucket, key)?;
        if dir {
            return Err(s3_error!(NoSuchKey, "{path} is a directory"));
        }
        let a = self.stat_file(bucket, &path).await?;
        cond.check(&a)?;
        Ok((path, a))
    }

    pub(crate) async fn get(&self, i: GetObjectInput) -> S3Result<GetObjectOutput> {
        let cond = etag::conditions_of!(i);
        let (path, a) = self.object_under(&i.bucket, &i.key, cond).await?;
        if i.part_number.is_some_and(|n| n != 1) {
            return Err(s3_error!(InvalidArgument, "partNumber: an object here is one part"));
        }
        let (start, end) = match &i.range {
            Some(r) => {
                let x = r.check(a.size).map_err(|_| s3_error!(InvalidRange, "the object is {} bytes", a.size))?;
                (x.start, x.end)
            }
            None => (0, a.size),
        };
        let body = read_body(self.engine.clone(), path, a.clone(), start, end);
        Ok(GetObjectOutput {
            body: Some(body),
            content_length: Some((end - start) as i64),
            content_range: i.range.is_some().then(|| content_range(start, end, a.size)),
            accept_ranges: Some("bytes".into()),
            content_type: Some("application/octet-stream".into()),
            e_tag: Some(etag::etag(&a)),
            last_modified: Some(etag::last_modified(&a)),
            ..Default::default()
        })
    }

    pub(crate) async fn head(&self, i: HeadObjectInput) -> S3Result<HeadObjectOutput> {
        let cond = etag::conditions_of!(i);
        let (_, a) = self.object_under(&i.bucket, &i.key, cond).await?;
        Ok(HeadObjectOutput {
            content_length: Some(a.size as i64),
            accept_ranges: Some("bytes".into()),
            content_type: Some("application/octet-stream".into()),
            e_tag: Some(etag::etag(&a)),
            last_modified: Some(etag::last_modified(&a)),
            ..Default::default()
        })
    }

    /// Make `path` and every directory above it in its mount (a key ending
    /// in `/`), from the top; those there already are kept.
    async fn mkdir_all(&self, bucket: &str, path: &str) -> S3Result<()> {
        let first = bucket.len() + 2;
        let mut dirs: Vec<&str> = path[first..].match_indices('/').map(|(i, _)| &path[..first + i]).collect();
        dirs.push(path);
        for d in dirs {
            let q = d.to_string();
            match self.engine.call(move |c| c.mkdir(&q)).await? {
                Ok(()) => {}
                Err(e) if e.errno() == libc::EEXIST => {}
                Err(e) => return Err(self.engine_error(bucket, d, &e).await),
            }
        }
        Ok(())
    }

    pub(crate) async fn put(&self, req: S3Request<PutObjectInput>) -> S3Result<PutObjectOutput> {
        let trailer = req.headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()).and_then(body::algorithm_of_header);
        let trailers = req.trailing_headers;
        let i = req.input;
        let (path, dir) = object_path(&i.bucket, &i.key)?;
        if i.content_length.is_some_and(|n| n as u64 > self.bytes_max) {
            return Err(s3_error!(EntityTooLarge, "at most {} bytes in one PutObject: use a multipart upload", self.bytes_max));
        }
        if dir {
            if i.content_length.is_some_and(|n| n > 0) {
                return Err(s3_error!(InvalidArgument, "a key ending in '/' is a directory: it holds no bytes"));
            }
            self.mkdir_all(&i.bucket, &path).await?;
            let a = self.stat(&path).await?.ok_or_else(|| s3_error!(InternalError, "{path} vanished"))?;
            return Ok(PutObjectOutput { e_tag: Some(etag::etag(&a)), ..Default::default() });
        }
        if matches!(i.if_none_match, Some(ETagCondition::Any)) && self.stat(&path).await?.is_some() {
            return Err(s3_error!(PreconditionFailed, "If-None-Match: *: {} exists", i.key));
        }
        let want = crate::body::expected_of!(i, trailer, trailers);
        let h = self.create(&i.bucket, &path).await?;
        let target = Target::Engine { engine: &self.engine, handle: h.handle, path: &path };
        let got = body::receive(i.body, target, &want, self.bytes_max, self.idle).await?;
        let a = h.close(&path).await?;
        tracing::debug!("s3 gateway: PUT {path}: {} bytes", got.bytes);
        let c = got.checksum;
        Ok(PutObjectOutput {
            e_tag: Some(etag::etag(&a)),
            size: Some(a.size as i64),
            checksum_crc32: c.checksum_crc32,
            checksum_crc32c: c.checksum_crc32c,
            checksum_crc64nvme: c.checksum_crc64nvme,
            checksum_sha1: c.checksum_sha1,
            checksum_sha256: c.checksum_sha256,
            ..Default::default()
        })
    }

    /// Delete `key`: a missing key is no error (as S3); a key ending in `/`
    /// removes the directory if it is empty.
    pub(crate) async fn delete(&self, bucket: &str, key: &str) -> S3Result<()> {
        let (path, dir) = object_path(bucket, key)?;
        let p = path.clone();
        let r = if dir {
            self.engine.call(move |c| c.rmdir(&p)).await?
        } else {
            self.engine.call(move |c| c.unlink(&p)).await?
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENOTDIR | libc::EISDIR | libc::ENOTEMPTY) => {
                self.need_bucket(bucket).await
            }
            Err(e) => Err(self.engine_error(bucket, &path, &e).await),
        }
    }

    pub(crate) async fn delete_many(&self, i: DeleteObjectsInput) -> S3Result<DeleteObjectsOutput> {
        self.need_bucket(&i.bucket).await?;
        if i.delete.objects.len() > 1000 {
            return Err(s3_error!(MalformedXML, "at most 1000 keys in one DeleteObjects"));
        }
        let quiet = i.delete.quiet.unwrap_or(false);
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for o in i.delete.objects {
            match self.delete(&i.bucket, &o.key).await {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject { key: Some(o.key), ..Default::default() }),
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(o.key),
                    message: e.message().map(str::to_string),
                    version_id: None,
                }),
            }
        }
        Ok(DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() })
    }

    pub(crate) async fn copy(&self, i: CopyObjectInput) -> S3Result<CopyObjectOutput> {
        let CopySource::Bucket { bucket: sb, key: sk, .. } = &i.copy_source else {
            return Err(s3_error!(NotImplemented, "copies from access points are not supported"));
        };
        let cond = Conditions {
            if_match: i.copy_source_if_match,
            if_none_match: i.copy_source_if_none_match,
            if_modified_since: i.copy_source_if_modified_since,
            if_unmodified_since: i.copy_source_if_unmodified_since,
        };
        let replace = i.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        self.copy_object_between(sb, sk, &i.bucket, &i.key, cond, replace).await
    }

    /// Copy `sb/sk` to `db/dk` if `cond` holds for the source; `replace`:
    /// the request said `x-amz-metadata-directive: REPLACE`.
    pub(crate) async fn copy_object_between(
        &self,
        sb: &str,
        sk: &str,
        db: &str,
        dk: &str,
        cond: Conditions,
        replace: bool,
    ) -> S3Result<CopyObjectOutput> {
        let (src, sdir) = object_path(sb, sk)?;
        let (dst, ddir) = object_path(db, dk)?;
        if sdir || ddir {
            return Err(s3_error!(InvalidArgument, "keys ending in '/' are directories: nothing to copy"));
        }
        let a = self.stat_file(sb, &src).await?;
        if let Err(e) = cond.check(&a) {
            // A copy answers 412 for each of its conditions.
            return Err(s3_error!(PreconditionFailed, "{}", e.message().unwrap_or("copy condition failed")));
        }
        let result = |a: &Attr| CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag::etag(a)),
                last_modified: Some(etag::last_modified(a)),
                ..Default::default()
            }),
            ..Default::default()
        };
        if src == dst {
            // Objects here carry no metadata: a copy onto itself that
            // replaces it (rclone's way of setting an mtime) changes nothing.
            if replace {
                return Ok(result(&a));
            }
            return Err(s3_error!(InvalidRequest, "copying an object onto itself without changing its metadata"));
        }
        if a.size > self.bytes_max {
            return Err(s3_error!(InvalidRequest, "the source is larger than {} bytes", self.bytes_max));
        }
        let h = self.create(db, &dst).await?;
        let (handle, size, s, d) = (h.handle, a.size, src.clone(), dst.clone());
        let copied = self
            .engine
            .call(move |c| {
                let mut off = 0;
                while off < size {
                    let piece = c.read(&s, off, (size - off).min(PIECE_BYTES as u64))?;
                    if piece.is_empty() {
                        return Err(stoker_client::Error::new(libc::EIO, format!("{s}: shorter than {size} bytes: it changed")));
                    }
                    c.write_at(handle, off, &piece)?;
                    off += piece.len() as u64;
                }
                Ok(off)
            })
            .await?;
        if let Err(e) = copied {
            return Err(from_engine(&format!("{src} -> {d}"), &e));
        }
        let na = h.close(&dst).await?;
        Ok(result(&na))
    }
}
